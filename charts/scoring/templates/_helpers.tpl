{{/* Name of every object of this chart: <release>-scoring. */}}
{{- define "scoring.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: minimal and free of versions so upgrades keep matching. */}}
{{- define "scoring.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "scoring.labels" -}}
{{ include "scoring.selectorLabels" . }}
app.kubernetes.io/part-of: kpi-platform
app.kubernetes.io/component: scoring-api
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
