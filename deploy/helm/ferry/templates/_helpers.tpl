{{/* Names: the release's full name, trimmed to the 63 characters a label value allows. */}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ferry.fullname" -}}
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

{{/* A role's resource name: <fullname>-<role>, the role kept whole when the name is long. */}}
{{- define "ferry.componentName" -}}
{{- $root := index . 0 }}{{- $component := index . 1 -}}
{{- printf "%s-%s" (include "ferry.fullname" $root | trunc (int (sub 62 (len $component)))) $component | trimSuffix "-" }}
{{- end }}

{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferry
{{- end }}

{{/* Selector labels of one role (api, worker, beat, migrate): never change once installed (selectors are immutable). */}}
{{- define "ferry.selectorLabels" -}}
{{- $root := index . 0 }}{{- $component := index . 1 -}}
app.kubernetes.io/name: {{ include "ferry.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ $component }}
{{- end }}

{{- define "ferry.componentLabels" -}}
{{- $root := index . 0 }}{{- $component := index . 1 -}}
{{ include "ferry.labels" $root }}
app.kubernetes.io/component: {{ $component }}
{{- end }}

{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ferry.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The settings ConfigMap and Secret of the running release. */}}
{{- define "ferry.configMapName" -}}
{{- include "ferry.componentName" (list . "config") }}
{{- end }}

{{- define "ferry.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "ferry.componentName" (list . "secrets") }}
{{- end }}
{{- end }}

{{/* The migration hook's own copies: hooks run before the release's resources exist on a first install. */}}
{{- define "ferry.migrateConfigMapName" -}}
{{- include "ferry.componentName" (list . "migrate-config") }}
{{- end }}

{{- define "ferry.migrateSecretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "ferry.componentName" (list . "migrate-secrets") }}
{{- end }}
{{- end }}

{{- define "ferry.migrateServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- include "ferry.componentName" (list . "migrate") }}
{{- else }}
{{- include "ferry.serviceAccountName" . }}
{{- end }}
{{- end }}

{{/* Keys that are secrets: refused in `config`, rendered only into the Secret. */}}
{{- define "ferry.secretKeys" -}}
FERRY_DATABASE_URL FERRY_REDIS_URL FERRY_SECRET_KEY FERRY_SECRET_KEY_FILE FERRY_METRICS_TOKEN
{{- end }}

{{/*
The non-secret settings as ConfigMap data, checked: no secret key, every value a string (a bare number in values
would render as a float such as 1e+06). FERRY_SETTINGS_DIR is the chart's, not the user's.
*/}}
{{- define "ferry.configData" -}}
{{- $secretKeys := splitList " " (include "ferry.secretKeys" .) }}
{{- range $key, $value := .Values.config }}
{{- if has $key $secretKeys }}
{{- fail (printf "config.%s is a secret: set it in secrets (or existingSecret), not in config, which renders a ConfigMap" $key) }}
{{- end }}
{{- if eq $key "FERRY_SETTINGS_DIR" }}
{{- fail "config.FERRY_SETTINGS_DIR is set by the chart (settingsDir)" }}
{{- end }}
{{- if not (hasPrefix "FERRY_" $key) }}
{{- fail (printf "config.%s: only FERRY_* settings belong in config (use extraEnv for other variables)" $key) }}
{{- end }}
{{ $key }}: {{ toString $value | quote }}
{{- end }}
{{- end }}

{{/* The secret settings as Secret stringData; `required` stops a render that lacks one, naming it. */}}
{{- define "ferry.secretData" -}}
{{- $s := .Values.secrets }}
FERRY_DATABASE_URL: {{ required "secrets.databaseUrl is required (FERRY_DATABASE_URL, postgresql+psycopg://...), or set existingSecret" $s.databaseUrl | quote }}
FERRY_REDIS_URL: {{ required "secrets.redisUrl is required (FERRY_REDIS_URL, redis:// or rediss://...), or set existingSecret" $s.redisUrl | quote }}
FERRY_SECRET_KEY: {{ required "secrets.secretKey is required (FERRY_SECRET_KEY, at least 32 characters: openssl rand -hex 32), or set existingSecret" $s.secretKey | quote }}
{{- if $s.metricsToken }}
FERRY_METRICS_TOKEN: {{ $s.metricsToken | quote }}
{{- end }}
{{- end }}

{{/*
The worker's shortest acceptable grace period: a hand-off's last writes end within a lease (a worker stops writing
a margin before its lease would expire) plus the write timeout; 10 s more for Celery's own shutdown.
*/}}
{{- define "ferry.workerMinimumGraceSeconds" -}}
{{- $lease := float64 (default "10" (index .Values.config "FERRY_FLEET_LEASE_SECONDS")) }}
{{- $writeTimeout := float64 (default "5" (index .Values.config "FERRY_FLEET_WRITE_TIMEOUT_SECONDS")) }}
{{- addf $lease $writeTimeout 10 | ceil | int }}
{{- end }}

{{/* Environment every Ferry container gets: the ConfigMap, where the secret files are, and extraEnv. */}}
{{- define "ferry.env" -}}
{{- $root := index . 0 }}{{- $configMap := index . 1 -}}
envFrom:
  - configMapRef:
      name: {{ $configMap }}
env:
  - name: FERRY_SETTINGS_DIR
    value: {{ $root.Values.settingsDir | quote }}
  {{- with $root.Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Volumes every Ferry pod has: the secret settings as files, and a writable /tmp (the root filesystem is read-only). */}}
{{- define "ferry.volumes" -}}
{{- $secretName := index . 0 -}}
- name: settings
  secret:
    secretName: {{ $secretName }}
    # Owner and group only: kubelet gives the files podSecurityContext.fsGroup, the image's user's group here.
    defaultMode: 0440
- name: tmp
  emptyDir:
    medium: Memory
    sizeLimit: 64Mi
{{- end }}

{{- define "ferry.volumeMounts" -}}
{{- $root := index . 0 -}}
- name: settings
  mountPath: {{ $root.Values.settingsDir }}
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* A role's scheduling: its own nodeSelector/tolerations/affinity when set, else the chart-wide ones. */}}
{{- define "ferry.scheduling" -}}
{{- $root := index . 0 }}{{- $role := index . 1 -}}
{{- with (default $root.Values.nodeSelector $role.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.tolerations $role.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $root.Values.affinity $role.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The pod annotations of a role: chart-wide, the role's, and a checksum of the settings so a change rolls the pods. */}}
{{- define "ferry.podAnnotations" -}}
{{- $root := index . 0 }}{{- $role := index . 1 -}}
checksum/config: {{ include "ferry.configData" $root | sha256sum }}
{{- if not $root.Values.existingSecret }}
checksum/secrets: {{ include "ferry.secretData" $root | sha256sum }}
{{- end }}
{{- with $root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with $role.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "ferry.podDisruptionBudgetSpec" -}}
{{- $budget := index . 0 -}}
{{- if not (kindIs "invalid" $budget.minAvailable) }}
minAvailable: {{ $budget.minAvailable }}
{{- else }}
maxUnavailable: {{ $budget.maxUnavailable }}
{{- end }}
{{- end }}

{{/* Combinations of values that render but cannot work: refused at render time, with what to change. */}}
{{- define "ferry.validate" -}}
{{- if and .Values.existingSecret (or .Values.secrets.databaseUrl .Values.secrets.redisUrl .Values.secrets.secretKey .Values.secrets.metricsToken) }}
{{- fail "existingSecret is set, so secrets.* would be ignored: put those values in the existing Secret (or unset existingSecret)" }}
{{- end }}
{{- $minimumGrace := int (include "ferry.workerMinimumGraceSeconds" .) }}
{{- if lt (int .Values.worker.terminationGracePeriodSeconds) $minimumGrace }}
{{- fail (printf "worker.terminationGracePeriodSeconds (%d) must be at least %d: FERRY_FLEET_LEASE_SECONDS + FERRY_FLEET_WRITE_TIMEOUT_SECONDS + 10 s, so a worker hands its partitions over before it is killed" (int .Values.worker.terminationGracePeriodSeconds) $minimumGrace) }}
{{- end }}
{{- if le (int .Values.api.terminationGracePeriodSeconds) 30 }}
{{- fail "api.terminationGracePeriodSeconds must exceed 30: uvicorn drains requests in flight for up to 30 s after SIGTERM" }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if not (has .Values.autoscaling.mode (list "keda" "hpa")) }}
{{- fail (printf "autoscaling.mode must be keda or hpa, not %q" .Values.autoscaling.mode) }}
{{- end }}
{{- if and (eq .Values.autoscaling.mode "keda") (not .Values.autoscaling.keda.prometheusServerAddress) }}
{{- fail "autoscaling.keda.prometheusServerAddress is required with autoscaling.mode=keda: the Prometheus that scrapes the API's /metrics" }}
{{- end }}
{{- if or (lt (int .Values.autoscaling.minReplicas) 1) (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must be at least 1 and at most autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.existingSecret) (not .Values.secrets.metricsToken) (not .Values.serviceMonitor.tokenSecret.name) }}
{{- fail "serviceMonitor.enabled needs a metrics token: set secrets.metricsToken (FERRY_METRICS_TOKEN), or serviceMonitor.tokenSecret, or existingSecret with that key" }}
{{- end }}
{{- end }}

{{/* The pod-level fields every Ferry pod shares. */}}
{{- define "ferry.podCommon" -}}
{{- $root := index . 0 }}{{- $serviceAccount := index . 1 -}}
serviceAccountName: {{ $serviceAccount }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountServiceAccountToken }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* The container-level fields every Ferry container shares. */}}
{{- define "ferry.containerCommon" -}}
{{- $root := index . 0 -}}
image: {{ include "ferry.image" $root }}
imagePullPolicy: {{ $root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml $root.Values.securityContext | nindent 2 }}
{{- end }}

{{/* topologySpreadConstraints with the role's labelSelector filled in where an entry has none. */}}
{{- define "ferry.spreadConstraints" -}}
{{- $root := index . 0 }}{{- $component := index . 1 }}{{- $constraints := index . 2 -}}
{{- range $constraints }}
{{- $entry := deepCopy . }}
{{- if not $entry.labelSelector }}
{{- $_ := set $entry "labelSelector" (dict "matchLabels" (include "ferry.selectorLabels" (list $root $component) | fromYaml)) }}
{{- end }}
- {{ toYaml $entry | nindent 2 | trim }}
{{- end }}
{{- end }}
