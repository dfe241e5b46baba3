{{/* The name of every object of the release. */}}
{{- define "keepalive-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "keepalive-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keepalive-operator.labels" -}}
{{ include "keepalive-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keepalive-operator.webhookService" -}}
{{- printf "%s-webhook" (include "keepalive-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "keepalive-operator.certSecret" -}}
{{- printf "%s-webhook-tls" (include "keepalive-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The rules of the generated manager role (config/rbac/role.yaml), by kind. */}}
{{- define "keepalive-operator.rules" -}}
{{- $kind := .kind -}}
{{- range $doc := splitList "---" (.root.Files.Get "files/role.yaml") -}}
{{- $obj := fromYaml $doc -}}
{{- if eq (get $obj "kind") $kind -}}
{{- toYaml (get $obj "rules") -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* matchExpressions as a label selector in kubectl syntax, for the operator's
flags: it leaves alone what the webhook's selectors leave out. */}}
{{- define "keepalive-operator.selector" -}}
{{- $parts := list -}}
{{- range . -}}
{{- if eq .operator "In" -}}
{{- $parts = append $parts (printf "%s in (%s)" .key (join "," .values)) -}}
{{- else if eq .operator "NotIn" -}}
{{- $parts = append $parts (printf "%s notin (%s)" .key (join "," .values)) -}}
{{- else if eq .operator "Exists" -}}
{{- $parts = append $parts .key -}}
{{- else -}}
{{- $parts = append $parts (printf "!%s" .key) -}}
{{- end -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}
