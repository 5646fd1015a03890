{{/*
Chart name, truncated to the 63 characters Kubernetes names allow.
*/}}
{{- define "unirec.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: release-chart unless the release name already contains the chart name.
Truncated at 52 so that suffixes such as "-inference" and "-trainer-headless" still fit in 63.
*/}}
{{- define "unirec.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "unirec.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "unirec.labels" -}}
helm.sh/chart: {{ include "unirec.chart" . }}
{{ include "unirec.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: unirec
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels (immutable: never add to them on upgrade).
*/}}
{{- define "unirec.selectorLabels" -}}
app.kubernetes.io/name: {{ include "unirec.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per component: labels and selector labels with app.kubernetes.io/component. */}}
{{- define "unirec.trainer.labels" -}}
{{ include "unirec.labels" . }}
app.kubernetes.io/component: trainer
{{- end }}
{{- define "unirec.trainer.selectorLabels" -}}
{{ include "unirec.selectorLabels" . }}
app.kubernetes.io/component: trainer
{{- end }}
{{- define "unirec.inference.labels" -}}
{{ include "unirec.labels" . }}
app.kubernetes.io/component: inference
{{- end }}
{{- define "unirec.inference.selectorLabels" -}}
{{ include "unirec.selectorLabels" . }}
app.kubernetes.io/component: inference
{{- end }}

{{- define "unirec.trainer.fullname" -}}
{{- printf "%s-trainer" (include "unirec.fullname" .) }}
{{- end }}
{{- define "unirec.trainer.headless" -}}
{{- printf "%s-trainer-headless" (include "unirec.fullname" .) }}
{{- end }}
{{- define "unirec.inference.fullname" -}}
{{- printf "%s-inference" (include "unirec.fullname" .) }}
{{- end }}

{{- define "unirec.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "unirec.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference. The tag defaults to "<appVersion>-<variant>" (cpu or gpu); a digest wins over both.
Usage: include "unirec.image" (dict "root" . "variant" "gpu")
*/}}
{{- define "unirec.image" -}}
{{- $img := .root.Values.image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default (printf "%s-%s" .root.Chart.AppVersion .variant) $img.tag) }}
{{- end }}
{{- end }}

{{/* Trainer image variant: gpu when the trainer asks for GPUs. */}}
{{- define "unirec.trainer.variant" -}}
{{- if gt (int .Values.trainer.gpusPerNode) 0 }}gpu{{ else }}cpu{{ end }}
{{- end }}

{{/* Worker processes per trainer pod: one per GPU, else trainer.cpuProcsPerNode. */}}
{{- define "unirec.trainer.nproc" -}}
{{- if gt (int .Values.trainer.gpusPerNode) 0 }}{{ int .Values.trainer.gpusPerNode }}{{ else }}{{ int .Values.trainer.cpuProcsPerNode }}{{ end }}
{{- end }}

{{/* Names of the Secret and key holding the inference API key. */}}
{{- define "unirec.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "unirec.fullname" .)) .Values.inference.apiKey.existingSecret }}
{{- end }}
{{- define "unirec.apiKeySecretKey" -}}
{{- if .Values.inference.apiKey.existingSecret }}{{ .Values.inference.apiKey.existingSecretKey }}{{ else }}api-key{{ end }}
{{- end }}

{{- define "unirec.modelStoreClaim" -}}
{{- default (printf "%s-store" (include "unirec.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}

{{/*
Environment shared by the trainer and the service: Kafka, Redis, home, schema, store backend.
*/}}
{{- define "unirec.commonEnv" -}}
- name: UNIREC_HOME
  value: {{ .Values.home | quote }}
- name: UNIREC_KAFKA_BOOTSTRAP
  value: {{ required "kafka.bootstrap is required: host:port[,host:port...] of the Kafka brokers" .Values.kafka.bootstrap | quote }}
- name: UNIREC_REDIS_URL
  {{- include "unirec.redisUrlSource" . | nindent 2 }}
- name: UNIREC_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- if eq .Values.modelStore.backend "redis" }}
# exporter's store (registry/settings.py RegistrySettings): artifacts in Redis instead of <home>/models
- name: UNIREC_MODEL_STORE
  {{- include "unirec.redisUrlSource" . | nindent 2 }}
{{- end }}
{{- end }}

{{/* UNIREC_REDIS_URL's value source, reused where another setting takes the same URL. */}}
{{- define "unirec.redisUrlSource" -}}
{{- if .Values.redis.existingSecret -}}
valueFrom:
  secretKeyRef:
    name: {{ .Values.redis.existingSecret }}
    key: {{ .Values.redis.existingSecretKey }}
{{- else -}}
value: {{ required "redis.url is required (or redis.existingSecret)" .Values.redis.url | quote }}
{{- end }}
{{- end }}

{{/* Path or name the trainer reads the feature schema from. */}}
{{- define "unirec.schemaRef" -}}
{{- if .Values.featureSchema.inline }}/etc/unirec/schema/{{ .Values.featureSchema.name }}.yaml{{ else }}{{ .Values.featureSchema.name }}{{ end }}
{{- end }}

{{/* Container security context shared by every container. */}}
{{- define "unirec.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/*
checkov policies a workload skips, each with its reason (checkov reads `checkov.io/skip<n>: ID=reason`).
Usage: include "unirec.checkovSkips" (dict "extra" (list "CKV_K8S_35=reason"))
*/}}
{{- define "unirec.checkovSkips" -}}
{{- $skips := list
  "CKV_K8S_43=tags by default so one values file serves both image variants; set image.digest to pin by digest"
  "CKV_K8S_15=image.pullPolicy IfNotPresent: release tags are immutable and Always makes every pod start need the registry" }}
{{- range $i, $skip := concat $skips (default (list) .extra) }}
checkov.io/skip{{ add1 $i }}: {{ $skip | quote }}
{{- end }}
{{- end }}
