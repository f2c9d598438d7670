{{- define "ztunnel.selectorLabels" -}}
app.kubernetes.io/name: ztunnel
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ztunnel.labels" -}}
{{ include "ztunnel.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The port of an `ip:port` flag value, else the default given: (list value default). */}}
{{- define "ztunnel.port" -}}
{{- $v := index . 0 | default "" | toString -}}
{{- if and $v (ne $v "off") -}}
{{- splitList ":" $v | last -}}
{{- else -}}
{{- index . 1 -}}
{{- end -}}
{{- end -}}

{{/* A humantime duration ("5s", "500ms", "1m 30s") in whole seconds, rounded up. */}}
{{- define "ztunnel.seconds" -}}
{{- $ms := 0 -}}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" (toString .) -1 -}}
{{- $n := regexFind "[0-9]+" . | atoi -}}
{{- if hasSuffix "ms" . -}}{{- $ms = add $ms $n -}}
{{- else if hasSuffix "s" . -}}{{- $ms = add $ms (mul $n 1000) -}}
{{- else if hasSuffix "m" . -}}{{- $ms = add $ms (mul $n 60000) -}}
{{- else -}}{{- $ms = add $ms (mul $n 3600000) -}}
{{- end -}}
{{- end -}}
{{- div (add $ms 999) 1000 -}}
{{- end -}}

{{/* `flags` → `--kebab-case=value`, one per key, skipping nulls; lists repeat the flag. */}}
{{- define "ztunnel.flagArgs" -}}
{{- range $k, $v := . }}
{{- if kindIs "slice" $v }}
{{- range $v }}
- {{ printf "--%s=%v" (kebabcase $k) . | quote }}
{{- end }}
{{- else if not (kindIs "invalid" $v) }}
- {{ printf "--%s=%v" (kebabcase $k) $v | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* flags.source, checked: dir (default) | kube | push. */}}
{{- define "ztunnel.source" -}}
{{- $s := .Values.flags.source | default "dir" | toString -}}
{{- if not (has $s (list "dir" "kube" "push")) -}}
{{- fail (printf "flags.source must be dir, kube or push, not %q" $s) -}}
{{- end -}}
{{- $s -}}
{{- end -}}

{{- define "ztunnel.serviceAccount" -}}
{{- .Values.serviceAccount.name | default .Release.Name -}}
{{- end -}}
