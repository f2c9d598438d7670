{{- define "controller.selectorLabels" -}}
app.kubernetes.io/name: {{ .Values.name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "controller.labels" -}}
{{ include "controller.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "controlPlane.selectorLabels" -}}
app.kubernetes.io/name: {{ .Values.controlPlane.name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "controlPlane.labels" -}}
{{ include "controlPlane.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "controller.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "controller.leaseNamespace" -}}
{{- .Values.leaseNamespace | default .Release.Namespace -}}
{{- end -}}

{{/* Whether the controller campaigns for its Lease (flags.leaderElect; null is the binary's default, true). */}}
{{- define "controller.leaderElect" -}}
{{- if or (kindIs "invalid" .Values.flags.leaderElect) (eq (toString .Values.flags.leaderElect) "true") -}}true{{- end -}}
{{- end -}}

{{/* controlPlane.flags.source, checked: kube (default) | dir. */}}
{{- define "controlPlane.source" -}}
{{- $s := .Values.controlPlane.flags.source | default "kube" | toString -}}
{{- if not (has $s (list "dir" "kube")) -}}
{{- fail (printf "controlPlane.flags.source must be dir or kube, not %q" $s) -}}
{{- end -}}
{{- $s -}}
{{- end -}}

{{/* The bundled control plane's URL, for the generated waypoints' --control-plane: its Service
     (<controlPlane.name>.<release namespace>.svc, port of controlPlane.flags.listen), https when its certs are set
     (mutual TLS), http otherwise. */}}
{{- define "controlPlane.url" -}}
{{- $cp := .Values.controlPlane -}}
{{- $scheme := ternary "https" "http" (not (empty $cp.certs.secretName)) -}}
{{- printf "%s://%s.%s.svc:%s" $scheme $cp.name .Release.Namespace (include "controller.port" (list $cp.flags.listen 15010)) -}}
{{- end -}}

{{/* The bundled control plane's SPIFFE id (its ServiceAccount, its trust domain), for --control-plane-identity. */}}
{{- define "controlPlane.identity" -}}
{{- $cp := .Values.controlPlane -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" ($cp.flags.trustDomain | default "cluster.local") .Release.Namespace $cp.name -}}
{{- end -}}

{{/* The controller's `flags`, with flags.controlPlane (and, over https, flags.controlPlaneIdentity) defaulted
     to the bundled control plane when controlPlane.enabled and they are null; as YAML (fromYaml it). */}}
{{- define "controller.flags" -}}
{{- $flags := deepCopy .Values.flags -}}
{{- if and .Values.controlPlane.enabled (kindIs "invalid" $flags.controlPlane) -}}
{{- $_ := set $flags "controlPlane" (include "controlPlane.url" .) -}}
{{- if and .Values.controlPlane.certs.secretName (kindIs "invalid" $flags.controlPlaneIdentity) -}}
{{- $_ := set $flags "controlPlaneIdentity" (include "controlPlane.identity" .) -}}
{{- end -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $flags.controlPlaneIdentity)) (kindIs "invalid" $flags.controlPlane) -}}
{{- fail "flags.controlPlaneIdentity needs flags.controlPlane (or controlPlane.enabled)" -}}
{{- end -}}
{{- toYaml $flags -}}
{{- end -}}

{{/* The port of an `ip:port` flag value, else the default given: (list value default). */}}
{{- define "controller.port" -}}
{{- $v := index . 0 | default "" | toString -}}
{{- if $v -}}
{{- splitList ":" $v | last -}}
{{- else -}}
{{- index . 1 -}}
{{- end -}}
{{- end -}}

{{/* `flags` → `--kebab-case=value`, one per key, skipping nulls; lists repeat the flag. */}}
{{- define "controller.flagArgs" -}}
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

{{/* The pod-level scheduling values shared by both Deployments. */}}
{{- define "controller.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
