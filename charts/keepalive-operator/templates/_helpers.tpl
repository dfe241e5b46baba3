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

{{/* The rules of the generated manager role (config/rbac/role.yaml), by kind.
The rules naming objects (resourceNames) are certificate rotation's: they get
the release's names for config/default's, and are left out when cert-manager
provides the certificate, since nothing rotates it then. */}}
{{- define "keepalive-operator.rules" -}}
{{- $root := .root -}}
{{- $names := dict
  "keepalive-operator-webhook-tls" (include "keepalive-operator.certSecret" $root)
  "keepalive-operator-webhook-configuration" (include "keepalive-operator.fullname" $root) -}}
{{- $rules := list -}}
{{- range $doc := splitList "---" ($root.Files.Get "files/role.yaml") -}}
{{- $obj := fromYaml $doc -}}
{{- if eq (get $obj "kind") $.kind -}}
{{- range $rule := get $obj "rules" -}}
{{- if not (hasKey $rule "resourceNames") -}}
{{- $rules = append $rules $rule -}}
{{- else if not $root.Values.certManager.enabled -}}
{{- $renamed := list -}}
{{- range $rule.resourceNames -}}
{{- if not (hasKey $names .) -}}
{{- fail (printf "files/role.yaml names %s, which the chart does not map to a release name" .) -}}
{{- end -}}
{{- $renamed = append $renamed (get $names .) -}}
{{- end -}}
{{- $rules = append $rules (set (deepCopy $rule) "resourceNames" $renamed) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $rules -}}
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
