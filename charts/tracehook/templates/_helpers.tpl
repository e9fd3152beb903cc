{{- define "tracehook.labels" -}}
app.kubernetes.io/name: tracehook
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.extraLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tracehook.selector" -}}
app.kubernetes.io/name: tracehook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tracehook.annotations" -}}
{{- with .Values.extraAnnotations }}
annotations:
{{ toYaml . | indent 2 }}
{{- end }}
{{- end }}

{{- define "tracehook.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "tracehook.excluded" -}}
{{- $names := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace -}}
{{- toJson (concat $names .Values.webhook.excludedNamespaces | uniq) -}}
{{- end }}

{{- define "tracehook.validate" -}}
{{- if not (has .Values.certificates.mode (list "self-signed" "cert-manager" "files")) }}
{{- fail "certificates.mode must be self-signed, cert-manager or files" }}
{{- end }}
{{- if not (has .Values.webhook.injectionScope (list "labeled-namespaces" "all-namespaces")) }}
{{- fail "webhook.injectionScope must be labeled-namespaces or all-namespaces" }}
{{- end }}
{{- if not (has (toString .Values.sidecar.nativeSidecars) (list "auto" "true" "false")) }}
{{- fail "sidecar.nativeSidecars must be auto, true or false" }}
{{- end }}
{{- if not (has .Values.webhook.failurePolicy (list "Ignore" "Fail")) }}
{{- fail "webhook.failurePolicy must be Ignore or Fail" }}
{{- end }}
{{- if not (has .Values.sidecar.defaultFlavor (list "jaeger-agent" "otel-collector")) }}
{{- fail "sidecar.defaultFlavor must be jaeger-agent or otel-collector" }}
{{- end }}
{{- end }}

{{/*
healMissing, validated: off (also YAML 1.1's unquoted `off`, read as false), report or
evict.
*/}}
{{- define "tracehook.healMissing" -}}
{{- $heal := toString .Values.healMissing -}}
{{- if eq $heal "false" -}}{{- $heal = "off" -}}{{- end -}}
{{- if not (has $heal (list "off" "report" "evict")) -}}
{{- fail (printf "healMissing must be off, report or evict, not %q" $heal) -}}
{{- end -}}
{{- $heal -}}
{{- end -}}
