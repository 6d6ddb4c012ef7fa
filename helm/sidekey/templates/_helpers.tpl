{{/*
=============================================================================
sidekey chart helpers
=============================================================================

Every helper takes a "sidekey context": a map with
  .Values   this chart's values
  .Release  the release
  .Chart    this chart's Chart object (optional; only image.tag's default
            needs it)
Inside this chart that is the root context `.`. An app chart that depends on
this chart passes `.Subcharts.sidekey` (the subchart's own context, values
already merged with the parent's overrides), e.g.

  initContainers:
    {{- include "sidekey.sidecar" .Subcharts.sidekey | nindent 8 }}
  volumes:
    {{- include "sidekey.volumes" .Subcharts.sidekey | nindent 8 }}

Public templates (stable, documented in README.md):
  sidekey.sidecar              container list item, native sidecar
  sidekey.volumes              volume list items for that container
  sidekey.checksumAnnotation   "checksum/sidekey-config: <sha256>"
  sidekey.url                  "http://127.0.0.1:<ports.proxy>"
Everything else is internal.
*/}}

{{/* ---------------------------------------------------------------- names */}}

{{/* Base name. Deliberately not .Chart.Name: the helpers must give the same
names when called from an app chart, whose .Chart is not ours. */}}
{{- define "sidekey.name" -}}
{{- default "sidekey" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-sidekey, or the release name when it already contains the
name. Names the ConfigMap and the gateway's resources. */}}
{{- define "sidekey.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "sidekey.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap holding sidekey.toml. */}}
{{- define "sidekey.configMapName" -}}
{{- include "sidekey.fullname" . -}}
{{- end -}}

{{- define "sidekey.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of this chart's own resources (not used by the sidecar
templates, which render no objects). */}}
{{- define "sidekey.labels" -}}
helm.sh/chart: {{ include "sidekey.chart" . }}
{{ include "sidekey.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end -}}

{{- define "sidekey.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sidekey.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sidekey.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sidekey.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository[:tag][@digest]; tag defaults to this chart's appVersion. */}}
{{- define "sidekey.image" -}}
{{- $appVersion := "" -}}
{{- with .Chart -}}{{- $appVersion = .AppVersion -}}{{- end -}}
{{- $tag := .Values.image.tag | default $appVersion | toString -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else if $tag -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- else -}}
{{- fail "sidekey: set image.tag (or image.digest): no chart appVersion in this context" -}}
{{- end -}}
{{- end -}}

{{/* ------------------------------------------------------------ addresses */}}

{{- define "sidekey.isGateway" -}}
{{- if eq .Values.mode "gateway" }}true{{ end -}}
{{- end -}}

{{- define "sidekey.proxyListen" -}}
{{- $host := ternary "0.0.0.0" "127.0.0.1" (eq .Values.mode "gateway") -}}
{{- .Values.listen.proxy | default (printf "%s:%d" $host (int .Values.ports.proxy)) -}}
{{- end -}}

{{- define "sidekey.adminListen" -}}
{{- .Values.listen.admin | default (printf "0.0.0.0:%d" (int .Values.ports.admin)) -}}
{{- end -}}

{{/* What an app in the same pod puts in front of "/<route>/...". */}}
{{- define "sidekey.url" -}}
{{- printf "http://127.0.0.1:%d" (int .Values.ports.proxy) -}}
{{- end -}}

{{/* Mount path and location of the gateway's inbound token. */}}
{{- define "sidekey.inboundTokenDir" -}}
{{- printf "%s/inbound" (trimSuffix "/" .Values.secretsMountPath) -}}
{{- end -}}

{{- define "sidekey.hasInboundToken" -}}
{{- if and (eq .Values.mode "gateway") .Values.gateway.inboundToken.secretName }}true{{ end -}}
{{- end -}}

{{/* ----------------------------------------------------------- validation */}}

{{/* Fails rendering with a readable message on settings that would make
sidekey refuse to start, or start insecurely. values.schema.json checks the
shapes; this checks the combinations. */}}
{{- define "sidekey.validate" -}}
{{- $v := .Values -}}
{{- if not (has $v.mode (list "sidecar" "gateway")) -}}
{{- fail (printf "sidekey: mode must be \"sidecar\" or \"gateway\", not %q" (toString $v.mode)) -}}
{{- end -}}
{{- range $k := list "listen" "admin_listen" "inbound_token" "allow_unauthenticated" -}}
{{- if hasKey ($v.config | default dict) $k -}}
{{- fail (printf "sidekey: do not set config.%s; the chart sets it from mode, listen.*, ports.* and gateway.*" $k) -}}
{{- end -}}
{{- end -}}
{{- if eq $v.mode "gateway" -}}
{{- if and (not $v.gateway.inboundToken.secretName) (not $v.gateway.allowUnauthenticated) -}}
{{- fail "sidekey: gateway mode needs gateway.inboundToken.secretName (a Secret holding the token clients must present), or gateway.allowUnauthenticated=true to let anyone who can reach the Service use your provider keys" -}}
{{- end -}}
{{- else -}}
{{- $host := include "sidekey.proxyListen" . | regexFind "^(\\[[^\\]]*\\]|[^:]*)" -}}
{{- if not (or (hasPrefix "127." $host) (eq $host "[::1]")) -}}
{{- fail (printf "sidekey: sidecar mode listens on loopback only, not %q; use mode=gateway (with an inbound token) to serve other pods" (include "sidekey.proxyListen" .)) -}}
{{- end -}}
{{- end -}}
{{- $seen := dict -}}
{{- range $c := $v.credentials -}}
{{- if hasKey $seen $c.name -}}
{{- fail (printf "sidekey: credentials: the name %q is used twice" $c.name) -}}
{{- end -}}
{{- if and (eq $c.name "inbound") (include "sidekey.hasInboundToken" $) -}}
{{- fail "sidekey: credentials: the name \"inbound\" is taken by the gateway's inbound token mount" -}}
{{- end -}}
{{- $_ := set $seen $c.name true -}}
{{- end -}}
{{- end -}}

{{/* -------------------------------------------------------------- config */}}

{{/* The rendered sidekey.toml: `config` plus the keys the chart owns, with
every string passed through tpl (so "{{ .Values.secretsMountPath }}" works).
Deterministic: toToml sorts keys, so the checksum only changes with the
content. */}}
{{- define "sidekey.config" -}}
{{- include "sidekey.validate" . -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- $_ := set $cfg "listen" (include "sidekey.proxyListen" .) -}}
{{- $_ := set $cfg "admin_listen" (include "sidekey.adminListen" .) -}}
{{- if eq .Values.mode "gateway" -}}
{{- if include "sidekey.hasInboundToken" . -}}
{{- $_ := set $cfg "inbound_token" (printf "path::%s/%s" (include "sidekey.inboundTokenDir" .) .Values.gateway.inboundToken.key) -}}
{{- else -}}
{{- $_ := set $cfg "allow_unauthenticated" true -}}
{{- end -}}
{{- /* Readiness fails at once on SIGTERM; keep accepting while endpoints
     catch up, unless config sets its own drain_delay. */ -}}
{{- $shutdown := get $cfg "shutdown" | default dict -}}
{{- if not (hasKey $shutdown "drain_delay") -}}
{{- $_ := set $shutdown "drain_delay" .Values.gateway.drainDelay -}}
{{- $_ := set $cfg "shutdown" $shutdown -}}
{{- end -}}
{{- end -}}
{{- /* tpl needs .Template on Helm 3; an app chart's .Subcharts.sidekey has
     none, so build the context here. */ -}}
{{- $ctx := dict "Values" .Values "Release" .Release "Chart" .Chart "Template" (dict "Name" "sidekey/templates/_helpers.tpl" "BasePath" "sidekey/templates") -}}
# sidekey.toml, rendered by the sidekey Helm chart (mode: {{ .Values.mode }}).
# Edit the chart values, not this file.
{{ tpl (toToml $cfg) $ctx }}
{{- end -}}

{{- define "sidekey.configChecksum" -}}
{{- include "sidekey.config" . | sha256sum -}}
{{- end -}}

{{/* Pod-template annotation that rolls the pods when sidekey.toml changes.
sidekey would also hot-reload the ConfigMap, but a chart-driven config change
is better a visible, revertible rollout. */}}
{{- define "sidekey.checksumAnnotation" -}}
checksum/sidekey-config: {{ include "sidekey.configChecksum" . }}
{{- end -}}

{{/* ------------------------------------------------------- pod fragments */}}

{{/* Volumes for the sidekey container: the ConfigMap, one whole-Secret
volume per credential (no subPath anywhere: the kubelet only updates
whole-volume mounts, which is what sidekey's hot reload relies on), the
inbound token in gateway mode, and extraVolumes. */}}
{{- define "sidekey.volumes" -}}
{{- include "sidekey.validate" . -}}
- name: sidekey-config
  configMap:
    name: {{ include "sidekey.configMapName" . }}
{{- range .Values.credentials }}
- name: sidekey-cred-{{ .name }}
  secret:
    secretName: {{ .secretName }}
    {{- with .items }}
    items:
      {{- range . }}
      - key: {{ .key | quote }}
        path: {{ .path | default .key | quote }}
      {{- end }}
    {{- end }}
    {{- if .optional }}
    optional: true
    {{- end }}
{{- end }}
{{- if include "sidekey.hasInboundToken" . }}
- name: sidekey-inbound-token
  secret:
    secretName: {{ .Values.gateway.inboundToken.secretName }}
    items:
      - key: {{ .Values.gateway.inboundToken.key | quote }}
        path: {{ .Values.gateway.inboundToken.key | quote }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sidekey.volumeMounts" -}}
- name: sidekey-config
  mountPath: /etc/sidekey
  readOnly: true
{{- range .Values.credentials }}
- name: sidekey-cred-{{ .name }}
  mountPath: {{ printf "%s/%s" (trimSuffix "/" $.Values.secretsMountPath) .name }}
  readOnly: true
{{- end }}
{{- if include "sidekey.hasInboundToken" . }}
- name: sidekey-inbound-token
  mountPath: {{ include "sidekey.inboundTokenDir" . }}
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* One probe: the values map minus `enabled`, plus the httpGet handler.
Arguments: (dict "probe" <values map> "path" "/readyz" "port" <name>). */}}
{{- define "sidekey.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
{{- with omit .probe "enabled" }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The sidekey container, shared by both modes.
Arguments: (dict "ctx" <sidekey context> "sidecar" true|false). */}}
{{- define "sidekey.container" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- /* Port names are 15 chars max and unique per pod: prefix them when we
     live in somebody else's pod. */ -}}
{{- $adminPort := ternary "sidekey-admin" "admin" .sidecar -}}
- name: sidekey
  image: {{ include "sidekey.image" $ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .sidecar }}
  # Native sidecar: starts before the app containers (which wait for the
  # startup probe), stops after them.
  restartPolicy: Always
  {{- end }}
  args:
    - --config
    - /etc/sidekey/sidekey.toml
    - --log-format
    - {{ $v.logFormat | quote }}
  env:
    - name: SIDEKEY_LOG
      value: {{ $v.logLevel | quote }}
    {{- if $v.workerThreads }}
    - name: SIDEKEY_WORKER_THREADS
      value: {{ $v.workerThreads | toString | quote }}
    {{- end }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- if not .sidecar }}
    - name: http
      containerPort: {{ $v.ports.proxy }}
      protocol: TCP
    {{- end }}
    - name: {{ $adminPort }}
      containerPort: {{ $v.ports.admin }}
      protocol: TCP
  {{- with $v.probes.startup }}
  {{- if .enabled }}
  startupProbe:
    {{- include "sidekey.probe" (dict "probe" . "path" "/healthz" "port" $adminPort) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with $v.probes.readiness }}
  {{- if .enabled }}
  readinessProbe:
    {{- include "sidekey.probe" (dict "probe" . "path" "/readyz" "port" $adminPort) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with $v.probes.liveness }}
  {{- if .enabled }}
  livenessProbe:
    {{- include "sidekey.probe" (dict "probe" . "path" "/healthz" "port" $adminPort) | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "sidekey.volumeMounts" $ctx | nindent 4 }}
{{- end -}}

{{/* PUBLIC: the sidekey container as a native sidecar, for an app chart's
pod `initContainers` list. Pair it with "sidekey.volumes". */}}
{{- define "sidekey.sidecar" -}}
{{- include "sidekey.validate" . -}}
{{- if ne .Values.mode "sidecar" -}}
{{- fail "sidekey: \"sidekey.sidecar\" needs mode=sidecar in the sidekey values" -}}
{{- end -}}
{{- include "sidekey.container" (dict "ctx" . "sidecar" true) -}}
{{- end -}}

{{/*
PromQL label matchers in braces, from a list of strings (empty ones are
skipped); nothing when all are empty. Used by the PrometheusRule so that
`monitoring.selector` joins each alert's own matchers.
*/}}
{{- define "sidekey.matchers" -}}
{{- $parts := list -}}
{{- range . }}{{ if . }}{{ $parts = append $parts . }}{{ end }}{{ end -}}
{{- if $parts }}{{ printf "{%s}" (join "," $parts) }}{{ end -}}
{{- end }}
