{{/* Name of every object of this chart: <release>-mlflow. */}}
{{- define "mlflow.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels: minimal and free of versions so upgrades keep matching. */}}
{{- define "mlflow.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "mlflow.labels" -}}
{{ include "mlflow.selectorLabels" . }}
app.kubernetes.io/part-of: kpi-platform
app.kubernetes.io/component: tracking
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Host headers MLflow accepts: its Service names (short, namespaced, FQDN, with and without port). */}}
{{- define "mlflow.allowedHosts" -}}
{{- $name := include "mlflow.fullname" . -}}
{{- $port := .Values.server.port | toString -}}
{{- $hosts := list -}}
{{- range $host := list $name (printf "%s.%s" $name .Release.Namespace) (printf "%s.%s.svc" $name .Release.Namespace) (printf "%s.%s.svc.cluster.local" $name .Release.Namespace) -}}
{{- $hosts = append $hosts $host -}}
{{- $hosts = append $hosts (printf "%s:%s" $host $port) -}}
{{- end -}}
{{- join "," (concat $hosts .Values.server.extraAllowedHosts) -}}
{{- end -}}
