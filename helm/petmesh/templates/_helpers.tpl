{{/* === Names and labels === */}}

{{- define "petmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-petmesh`, or the release name alone when it contains the chart name. */}}
{{- define "petmesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's resources: (list $ "node") → `<fullname>-node`. */}}
{{- define "petmesh.componentName" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" (include "petmesh.fullname" $ctx) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "petmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: (list $ "node"); (list $ "") for what all components share. */}}
{{- define "petmesh.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "petmesh.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
{{- with index . 1 }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* Standard labels of a component's resources: (list $ "node"). */}}
{{- define "petmesh.labels" -}}
{{- $ctx := index . 0 -}}
helm.sh/chart: {{ include "petmesh.chart" $ctx }}
{{ include "petmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: petmesh
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
{{- end -}}

{{- define "petmesh.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "petmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "petmesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "petmesh.clusterName" -}}
{{- default .Release.Name .Values.clusterName -}}
{{- end -}}

{{/* === Ports (fixed: the probes, Services and advertised address depend on them) === */}}

{{- define "petmesh.node.port" -}}8080{{- end -}}
{{- define "petmesh.balancer.port" -}}8080{{- end -}}
{{- define "petmesh.balancer.adminPort" -}}8081{{- end -}}

{{/* === Shutdown === */}}

{{/*
The node's terminationGracePeriodSeconds: everything its shutdown may take after the pod is
deleted, i.e. the preStop pause, the drain delay, the grace period of in-flight requests and
the margin for running payment jobs. The one place this sum is written.
*/}}
{{- define "petmesh.node.terminationGracePeriodSeconds" -}}
{{- $d := .Values.node.drain -}}
{{- add $d.preStopSeconds $d.drainDelaySeconds $d.gracePeriodSeconds $d.jobsMarginSeconds -}}
{{- end -}}

{{- define "petmesh.balancer.terminationGracePeriodSeconds" -}}
{{- $d := .Values.balancer.drain -}}
{{- add $d.preStopSeconds $d.gracePeriodSeconds $d.marginSeconds -}}
{{- end -}}

{{/* A preStop hook pausing for (int) seconds before Kubernetes sends SIGTERM. */}}
{{- define "petmesh.preStop" -}}
preStop:
  exec:
    command: ["/bin/sleep", {{ . | int64 | toString | quote }}]
{{- end -}}

{{/* === Configuration (ConfigMaps: key = environment variable) === */}}

{{/*
A value as an environment variable's text. Numbers from values files arrive as float64, which
toString would print as 1e+06: whole numbers are printed as integers.
*/}}
{{- define "petmesh.envValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* Fails when a free-form config map sets what the chart sets itself: (list $map "node.config" $managedKeys). */}}
{{- define "petmesh.refuseManaged" -}}
{{- $config := index . 0 -}}
{{- range (index . 2) -}}
{{- if hasKey $config . -}}
{{- fail (printf "%s.%s is set by the chart (see values.yaml: ports, drain, cluster name, secrets); remove it from %s" (index $ 1) . (index $ 1)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The node's ConfigMap data (YAML, values quoted). */}}
{{- define "petmesh.node.configData" -}}
{{- include "petmesh.refuseManaged" (list .Values.node.config "node.config" (list
  "PETMESH_NODE__SERVER__PORT" "PETMESH_NODE__SERVER__DRAIN_DELAY_MS" "PETMESH_NODE__SERVER__GRACE_PERIOD_SECS"
  "PETMESH_NODE__NODE_ID" "PETMESH_NODE__CLUSTER__NAME" "PETMESH_NODE__CLUSTER__ADVERTISE_ADDR" "PETMESH_NODE__CLUSTER__ZONE"
  "PETMESH_NODE__AUTH__JWT_SECRET" "PETMESH_NODE__DATABASE__URL" "DATABASE_URL" "PETMESH_NODE__REDIS__URL" "REDIS_URL"
  "PETMESH_NODE__REDIS__MODE" "PETMESH_NODE__BOOTSTRAP__ADMIN_PASSWORD" "PETMESH_ADMIN_PASSWORD")) -}}
PETMESH_NODE__SERVER__PORT: {{ include "petmesh.node.port" . | quote }}
PETMESH_NODE__SERVER__DRAIN_DELAY_MS: {{ mul .Values.node.drain.drainDelaySeconds 1000 | quote }}
PETMESH_NODE__SERVER__GRACE_PERIOD_SECS: {{ include "petmesh.envValue" .Values.node.drain.gracePeriodSeconds | quote }}
PETMESH_NODE__CLUSTER__NAME: {{ include "petmesh.clusterName" . | quote }}
PETMESH_NODE__REDIS__MODE: {{ .Values.redis.mode | quote }}
{{- range $key, $value := .Values.node.config }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }}: {{ include "petmesh.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The balancer's ConfigMap data (YAML, values quoted). */}}
{{- define "petmesh.balancer.configData" -}}
{{- include "petmesh.refuseManaged" (list .Values.balancer.config "balancer.config" (list
  "PETMESH_BALANCER__LISTEN__PORT" "PETMESH_BALANCER__ADMIN__PORT" "PETMESH_BALANCER__CLUSTER__NAME"
  "PETMESH_BALANCER__SHUTDOWN__GRACE_PERIOD_SECS" "PETMESH_BALANCER__REDIS__URL" "REDIS_URL"
  "PETMESH_BALANCER__REDIS__MODE")) -}}
PETMESH_BALANCER__LISTEN__PORT: {{ include "petmesh.balancer.port" . | quote }}
PETMESH_BALANCER__ADMIN__PORT: {{ include "petmesh.balancer.adminPort" . | quote }}
PETMESH_BALANCER__CLUSTER__NAME: {{ include "petmesh.clusterName" . | quote }}
PETMESH_BALANCER__REDIS__MODE: {{ .Values.redis.mode | quote }}
PETMESH_BALANCER__SHUTDOWN__GRACE_PERIOD_SECS: {{ include "petmesh.envValue" .Values.balancer.drain.gracePeriodSeconds | quote }}
{{- range $key, $value := .Values.balancer.config }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }}: {{ include "petmesh.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* === Secrets === */}}

{{/* The Secret the pods read: existingSecret, or the chart's. */}}
{{- define "petmesh.secretName" -}}
{{- default (include "petmesh.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* A value kept across upgrades: (list $ secretName key generatedLength) → the existing Secret's value, or a new random one. */}}
{{- define "petmesh.keptRandom" -}}
{{- $ctx := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace (index . 1) -}}
{{- $data := dig "data" (dict) $existing -}}
{{- if hasKey $data (index . 2) -}}
{{- index $data (index . 2) | b64dec -}}
{{- else -}}
{{- randAlphaNum (index . 3) -}}
{{- end -}}
{{- end -}}

{{/*
The data of the chart's Secret (base64), checked for the required values: (list $ includeAdmin).
The migration Job's hook copy leaves the admin password out (a generated one would differ).
*/}}
{{- define "petmesh.secretData" -}}
{{- $ctx := index . 0 -}}
{{- $v := $ctx.Values -}}
{{- $keys := $v.secrets.keys -}}
{{ $keys.jwtSecret }}: {{ required "secrets.jwtSecret is required (at least 32 bytes), or name your own Secret in secrets.existingSecret" $v.secrets.jwtSecret | b64enc | quote }}
{{- if not $v.postgresql.bundled.enabled }}
{{ $keys.databaseUrl }}: {{ required "secrets.databaseUrl is required (postgres://user:password@host:5432/db), or set secrets.existingSecret, or postgresql.bundled.enabled=true" $v.secrets.databaseUrl | b64enc | quote }}
{{- end }}
{{- if not $v.redis.bundled.enabled }}
{{ $keys.redisUrl }}: {{ required "secrets.redisUrl is required (redis://host:6379), or set secrets.existingSecret, or redis.bundled.enabled=true" $v.secrets.redisUrl | b64enc | quote }}
{{- end }}
{{- if index . 1 }}
{{ $keys.adminPassword }}: {{ default (include "petmesh.keptRandom" (list $ctx (include "petmesh.fullname" $ctx) $keys.adminPassword 24)) $v.secrets.adminPassword | b64enc | quote }}
{{- end }}
{{- end -}}

{{/* Refuses URLs given for a bundled database (one of the two would be ignored). */}}
{{- define "petmesh.checkBundled" -}}
{{- if and .Values.postgresql.bundled.enabled .Values.secrets.databaseUrl -}}
{{- fail "secrets.databaseUrl must be empty with postgresql.bundled.enabled=true (the URL of the bundled PostgreSQL is derived)" -}}
{{- end -}}
{{- if and .Values.redis.bundled.enabled .Values.secrets.redisUrl -}}
{{- fail "secrets.redisUrl must be empty with redis.bundled.enabled=true (the URL of the bundled Redis is derived)" -}}
{{- end -}}
{{- if and .Values.redis.bundled.enabled (eq .Values.redis.mode "cluster") -}}
{{- fail "redis.mode=cluster needs a Redis Cluster, and the bundled Redis is one server: set secrets.redisUrl to the cluster's seed URLs and redis.bundled.enabled=false" -}}
{{- end -}}
{{- end -}}

{{/*
REDIS_URL for nodes and balancers: (list $ secretName). With the bundled Redis the URL is built
from its password by Kubernetes' $(VAR) expansion, so the password lives in one Secret only.
*/}}
{{- define "petmesh.redisEnv" -}}
{{- $ctx := index . 0 -}}
{{- if $ctx.Values.redis.bundled.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "petmesh.componentName" (list $ctx "redis") }}
      key: password
- name: REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379" (include "petmesh.componentName" (list $ctx "redis")) | quote }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ index . 1 }}
      key: {{ $ctx.Values.secrets.keys.redisUrl }}
{{- end }}
{{- end -}}

{{/* The secret environment of petmesh-node (serve and migrate): (list $ secretName). */}}
{{- define "petmesh.node.secretEnv" -}}
{{- $ctx := index . 0 -}}
{{- $v := $ctx.Values -}}
{{- $secret := index . 1 -}}
- name: PETMESH_NODE__AUTH__JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.jwtSecret }}
{{- if $v.postgresql.bundled.enabled }}
{{- $pg := $v.postgresql.bundled }}
- name: POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "petmesh.componentName" (list $ctx "postgresql") }}
      key: password
- name: DATABASE_URL
  value: {{ printf "postgres://%s:$(POSTGRES_PASSWORD)@%s:5432/%s" $pg.username (include "petmesh.componentName" (list $ctx "postgresql")) $pg.database | quote }}
{{- else }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $v.secrets.keys.databaseUrl }}
{{- end }}
{{- include "petmesh.redisEnv" . }}
{{- end -}}

{{/* === Scheduling === */}}

{{/* affinity and topologySpreadConstraints of a component: (list $ "node" .Values.node). */}}
{{- define "petmesh.scheduling" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $v := index . 2 -}}
{{- if $v.affinity }}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if eq $v.podAntiAffinity "soft" }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "petmesh.selectorLabels" (list $ctx $component) | nindent 14 }}
{{- else if eq $v.podAntiAffinity "hard" }}
affinity:
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "petmesh.selectorLabels" (list $ctx $component) | nindent 12 }}
{{- end }}
{{- if $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml $v.topologySpreadConstraints | nindent 2 }}
{{- else if $v.topologySpread.enabled }}
topologySpreadConstraints:
  - topologyKey: {{ $v.topologySpread.topologyKey }}
    maxSkew: {{ $v.topologySpread.maxSkew }}
    whenUnsatisfiable: {{ $v.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "petmesh.selectorLabels" (list $ctx $component) | nindent 8 }}
    # Count only the pods of the same rollout, not those being replaced.
    matchLabelKeys: ["pod-template-hash"]
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* An HTTP probe: (list path port timings). */}}
{{- define "petmesh.httpProbe" -}}
httpGet:
  path: {{ index . 0 }}
  port: {{ index . 1 }}
{{ toYaml (index . 2) }}
{{- end -}}

{{/* The PodDisruptionBudget of a component: (list $ "node" .Values.node.pdb); minAvailable, when set, wins. */}}
{{- define "petmesh.pdb" -}}
{{- $ctx := index . 0 -}}
{{- $pdb := index . 2 -}}
{{- if $pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "petmesh.componentName" (list $ctx (index . 1)) }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "petmesh.labels" (list $ctx (index . 1)) | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $pdb.minAvailable) }}
  minAvailable: {{ $pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ $pdb.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "petmesh.selectorLabels" (list $ctx (index . 1)) | nindent 6 }}
{{- end }}
{{- end -}}

{{/* === Migration hook === */}}

{{/*
When the migration runs: before install and upgrade, except with the bundled PostgreSQL, which
the install itself creates: then after install (the Job retries until PostgreSQL answers).
*/}}
{{- define "petmesh.migration.hook" -}}
{{- if .Values.postgresql.bundled.enabled -}}
post-install,pre-upgrade
{{- else -}}
pre-install,pre-upgrade
{{- end -}}
{{- end -}}

{{/* The Secret the migration Job reads: the hook copy, or existingSecret. */}}
{{- define "petmesh.migration.secretName" -}}
{{- default (include "petmesh.componentName" (list . "migrate")) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "petmesh.migration.serviceAccountName" -}}
{{- if .Values.migration.serviceAccountName -}}
{{- .Values.migration.serviceAccountName -}}
{{- else if not .Values.serviceAccount.create -}}
{{- include "petmesh.serviceAccountName" . -}}
{{- else -}}
default
{{- end -}}
{{- end -}}
