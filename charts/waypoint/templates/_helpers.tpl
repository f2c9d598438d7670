{{/* The waypoint's name: Gateway, Deployment, Service, ServiceAccount. */}}
{{- define "waypoint.name" -}}
{{- if .Values.name -}}
{{- .Values.name -}}
{{- else if eq .Values.scope "namespace" -}}
waypoint
{{- else if eq .Values.scope "serviceAccount" -}}
{{- required "scope=serviceAccount needs serviceAccount (the workloads' service account)" .Values.serviceAccount -}}-waypoint
{{- else -}}
{{- fail (printf "scope must be namespace or serviceAccount, not %q" .Values.scope) -}}
{{- end -}}
{{- end -}}

{{- define "waypoint.selectorLabels" -}}
gateway.networking.k8s.io/gateway-name: {{ include "waypoint.name" . }}
{{- end -}}

{{- define "waypoint.labels" -}}
{{ include "waypoint.selectorLabels" . }}
app.kubernetes.io/name: waypoint
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "waypoint.configMap" -}}
{{- .Values.config.existingConfigMap | default (printf "%s-manifests" (include "waypoint.name" .)) -}}
{{- end -}}

{{- define "waypoint.certSecret" -}}
{{- .Values.certs.secretName | default (printf "%s-certs" (include "waypoint.name" .)) -}}
{{- end -}}

{{/* The port of an `ip:port` flag value, else the default given: (list value default). */}}
{{- define "waypoint.port" -}}
{{- $v := index . 0 | default "" | toString -}}
{{- if and $v (ne $v "off") -}}
{{- splitList ":" $v | last -}}
{{- else -}}
{{- index . 1 -}}
{{- end -}}
{{- end -}}

{{/* A humantime duration ("5s", "500ms", "1m 30s") in whole seconds, rounded up. */}}
{{- define "waypoint.seconds" -}}
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
{{- define "waypoint.flagArgs" -}}
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
{{- define "waypoint.source" -}}
{{- $s := .Values.flags.source | default "dir" | toString -}}
{{- if not (has $s (list "dir" "kube" "push")) -}}
{{- fail (printf "flags.source must be dir, kube or push, not %q" $s) -}}
{{- end -}}
{{- $s -}}
{{- end -}}

{{/* Whether the waypoint campaigns for the status Lease (flags.leaderElect; null is the binary's default, true). */}}
{{- define "waypoint.leaderElect" -}}
{{- if or (kindIs "invalid" .Values.flags.leaderElect) (eq (toString .Values.flags.leaderElect) "true") -}}true{{- end -}}
{{- end -}}
