{{/* Name of every object of this chart: <release>-minio. */}}
{{- define "minio.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: minimal and free of versions so upgrades keep matching. */}}
{{- define "minio.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "minio.labels" -}}
{{ include "minio.selectorLabels" . }}
app.kubernetes.io/part-of: kpi-platform
app.kubernetes.io/component: object-storage
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Name of the Secret holding the keys (the value may reference the release). */}}
{{- define "minio.secretName" -}}
{{- tpl .Values.auth.existingSecret . -}}
{{- end -}}

{{/* Idempotent bootstrap: wait for MinIO, create the buckets, give the pipelines a readwrite user. */}}
{{- define "minio.bootstrapScript" -}}
until mc alias set kpi "$MINIO_URL" "$ROOT_USER" "$ROOT_PASSWORD"; do echo waiting for MinIO; sleep 3; done
for bucket in $BUCKETS; do mc mb --ignore-existing "kpi/$bucket"; done
mc admin user add kpi "$PIPELINES_ACCESS_KEY" "$PIPELINES_SECRET_KEY"
mc admin policy attach kpi readwrite --user "$PIPELINES_ACCESS_KEY" || echo "policy readwrite already attached"
echo "buckets ready: $BUCKETS"
{{- end -}}
