{{/* Names: the chart, and the release's resources (63 characters at most). */}}
{{- define "inference-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "inference-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "inference-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The standard labels (app.kubernetes.io/*), and the selector subset. */}}
{{- define "inference-gateway.labels" -}}
helm.sh/chart: {{ include "inference-gateway.chart" . }}
{{ include "inference-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: inference-gateway
{{- end }}

{{- define "inference-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inference-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "inference-gateway.redis.fullname" -}}
{{- printf "%s-redis" (include "inference-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "inference-gateway.redis.labels" -}}
helm.sh/chart: {{ include "inference-gateway.chart" . }}
{{ include "inference-gateway.redis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.redis.bundled.image.tag | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: inference-gateway
{{- end }}

{{- define "inference-gateway.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "inference-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "inference-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "inference-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "inference-gateway.secretName" -}}
{{- printf "%s-env" (include "inference-gateway.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The container image: the GPU build with gpu.enabled. */}}
{{- define "inference-gateway.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.gpu.enabled -}}
{{- printf "%s:%s" (.Values.gpu.image.repository | default .Values.image.repository) (.Values.gpu.image.tag | default (printf "%s-gpu" $tag)) -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end }}

{{/* The Redis URL the gateway is given ("" without Redis). */}}
{{- define "inference-gateway.redisURL" -}}
{{- $r := .Values.redis -}}
{{- if eq $r.mode "external" -}}
{{- if $r.external.existingSecret.name -}}
${REDIS_URL}
{{- else -}}
{{- required "redis.mode external needs redis.external.url or redis.external.existingSecret.name" $r.external.url -}}
{{- end -}}
{{- else if eq $r.mode "bundled" -}}
{{- $host := printf "%s.%s.svc" (include "inference-gateway.redis.fullname" .) .Release.Namespace -}}
{{- if $r.bundled.auth.existingSecret -}}
{{- printf "redis://:${REDIS_PASSWORD}@%s:6379/0" $host -}}
{{- else -}}
{{- printf "redis://%s:6379/0" $host -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/*
The gateway config, as the ConfigMap holds it: config.gateway with what the
chart owns written in (listeners, shutdown, redis, GPU providers).
*/}}
{{- define "inference-gateway.gatewayConfig" -}}
{{- $cfg := deepCopy (.Values.config.gateway | default dict) -}}
{{- $server := get $cfg "server" | default dict -}}
{{- $_ := set $server "host" "0.0.0.0" -}}
{{- $_ := set $server "http_port" (int .Values.ports.http) -}}
{{- $_ := set $server "grpc_port" (int .Values.ports.grpc) -}}
{{- $_ := set $server "shutdown" (dict "drain_s" .Values.shutdown.drainSeconds "grace_s" .Values.shutdown.graceSeconds) -}}
{{- if and (eq .Values.config.reload "rollout") (not (hasKey $server "watch_config_s")) -}}
{{- $_ := set $server "watch_config_s" 0 -}}
{{- end -}}
{{- $_ := set $cfg "server" $server -}}
{{- if ne .Values.redis.mode "none" -}}
{{- $_ := set $cfg "redis" (dict "url" (include "inference-gateway.redisURL" .) "timeout_ms" .Values.redis.timeoutMs) -}}
{{- end -}}
{{- if .Values.gpu.enabled -}}
{{- range $name, $backend := (get $cfg "backends" | default dict) -}}
{{- if eq (get $backend "type" | toString) "onnx" -}}
{{- $_ := set $backend "providers" $.Values.gpu.providers -}}
{{- $_ := set $backend "require_gpu" $.Values.gpu.requireGpu -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end }}

{{/* Names of the env vars the container gets, one a line. */}}
{{- define "inference-gateway.envNames" -}}
{{- range .Values.secretEnv }}
{{ .name }}
{{- end }}
{{- range $k, $v := .Values.secret.stringData }}
{{ $k }}
{{- end }}
{{- range .Values.extraEnv }}
{{ .name }}
{{- end }}
{{- if and (eq .Values.redis.mode "external") .Values.redis.external.existingSecret.name }}
REDIS_URL
{{- end }}
{{- if and (eq .Values.redis.mode "bundled") .Values.redis.bundled.auth.existingSecret }}
REDIS_PASSWORD
{{- end }}
{{- end }}

{{/*
Fail when the config names a secret variable that no env entry provides:
the gateway would refuse the config at start (or on reload).
*/}}
{{- define "inference-gateway.checkSecretEnv" -}}
{{- if .Values.config.requireSecretEnv -}}
{{- $have := splitList "\n" (include "inference-gateway.envNames" .) -}}
{{- $cfg := .Values.config.gateway | default dict -}}
{{- $want := list -}}
{{- $server := get $cfg "server" | default dict -}}
{{- with get $server "admin_key_env" }}{{ $want = append $want (list "server.admin_key_env" .) }}{{ end -}}
{{- $cache := get $cfg "cache" | default dict -}}
{{- with get $cache "signing_key_env" }}{{ $want = append $want (list "cache.signing_key_env" .) }}{{ end -}}
{{- range $name, $backend := (get $cfg "backends" | default dict) -}}
{{- with get $backend "api_key_env" }}{{ $want = append $want (list (printf "backends.%s.api_key_env" $name) .) }}{{ end -}}
{{- end -}}
{{- range $i, $tenant := (get $cfg "tenants" | default list) -}}
{{- $keys := get $tenant "key_env" -}}
{{- range (kindIs "slice" $keys | ternary $keys (list $keys)) -}}
{{- $want = append $want (list (printf "tenants[%d].key_env" $i) .) -}}
{{- end -}}
{{- end -}}
{{- range $want -}}
{{- if not (has (index . 1) $have) -}}
{{- fail (printf "config.gateway %s names the environment variable %s, which no env entry provides: add it to secretEnv (or secret.stringData, extraEnv), or set config.requireSecretEnv: false" (index . 0) (index . 1)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* The probes' scheme: HTTPS when the gateway serves TLS. */}}
{{- define "inference-gateway.probeScheme" -}}
{{- $server := get (.Values.config.gateway | default dict) "server" | default dict -}}
{{- if get $server "tls" }}HTTPS{{ else }}HTTP{{ end -}}
{{- end }}

{{/* terminationGracePeriodSeconds: longer than drain + grace. */}}
{{- define "inference-gateway.terminationGracePeriodSeconds" -}}
{{- $needed := addf .Values.shutdown.drainSeconds .Values.shutdown.graceSeconds -}}
{{- $set := .Values.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $set -}}
{{- add (int (ceil $needed)) .Values.shutdown.marginSeconds -}}
{{- else if le (float64 $set) $needed -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed shutdown.drainSeconds + shutdown.graceSeconds (%v), or the kubelet kills requests the gateway is still finishing" $set $needed) -}}
{{- else -}}
{{- int $set -}}
{{- end -}}
{{- end }}
