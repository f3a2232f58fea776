{{/* Selector labels of this chart's own objects: minimal, free of versions. */}}
{{- define "kpi.selectorLabels" -}}
app.kubernetes.io/name: kpi-platform
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object of the umbrella's own templates. */}}
{{- define "kpi.labels" -}}
{{ include "kpi.selectorLabels" . }}
app.kubernetes.io/part-of: kpi-platform
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* A value of an existing Secret (kept across upgrades), else a new random one; base64-encoded. */}}
{{- define "kpi.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .namespace .secret -}}
{{- if and $existing (hasKey (default dict $existing.data) .key) -}}
{{- index $existing.data .key -}}
{{- else if .fernet -}}
{{- /* a Fernet key is url-safe base64 of 32 bytes; Secret data adds one more base64 layer */ -}}
{{- randAlphaNum 32 | b64enc | b64enc -}}
{{- else -}}
{{- randAlphaNum (default 32 .length) | b64enc -}}
{{- end -}}
{{- end -}}

{{/* Host names of the first-party services, as every client sees them. */}}
{{- define "kpi.postgresHost" -}}{{ printf "%s-postgres" .Release.Name }}{{- end -}}
{{- define "kpi.minioUrl" -}}{{ printf "http://%s-minio:9000" .Release.Name }}{{- end -}}
{{- define "kpi.mlflowUrl" -}}{{ printf "http://%s-mlflow:5000" .Release.Name }}{{- end -}}

{{/* The Airflow worker service account: the name the Airflow chart gives the one it creates. */}}
{{- define "kpi.airflowWorkerServiceAccount" -}}
{{- printf "%s-airflow-worker" .Release.Name -}}
{{- end -}}

{{/* Image of the worker pods and the bootstrap Job: the Airflow chart's image unless set. */}}
{{- define "kpi.airflowImage" -}}
{{- $image := .Values.airflow.images.airflow -}}
{{- .Values.airflowWorker.image | default (printf "%s:%s" $image.repository (toString $image.tag)) -}}
{{- end -}}

{{/* Its pull policy: the Airflow chart's unless set. */}}
{{- define "kpi.airflowImagePullPolicy" -}}
{{- .Values.airflowWorker.imagePullPolicy | default .Values.airflow.images.airflow.pullPolicy | default "IfNotPresent" -}}
{{- end -}}
