{{/*
The step services as shared/domain/steps.py has them (tests/chart/test_chart.py checks the
two agree): each one's consumer groups with their input topics (a worker also reads each
input's `.retry` topic, left out of KEDA's lag: a retry waits there on purpose), whether it
holds the secret key (services/specs.py SECRET_STEPS) and whether it reaches the tenant
clusters.
*/}}
{{- define "provisioning.steps" -}}
database:
  secretKey: true
  tenantCluster: true
  groups:
    - {group: provisioning-database, topic: provisioning.requested}
    - {group: deprovisioning-database, topic: deprovisioning.schema.completed}
    - {group: purge-database, topic: purge.requested}
schema:
  tenantCluster: true
  groups:
    - {group: provisioning-schema, topic: provisioning.database.completed}
    - {group: deprovisioning-schema, topic: deprovisioning.auth.completed}
auth:
  groups:
    - {group: provisioning-auth, topic: provisioning.schema.completed}
    - {group: deprovisioning-auth, topic: deprovisioning.realtime.completed}
realtime:
  groups:
    - {group: provisioning-realtime, topic: provisioning.auth.completed}
    - {group: deprovisioning-realtime, topic: deprovisioning.storage.completed}
storage:
  groups:
    - {group: provisioning-storage, topic: provisioning.realtime.completed}
    - {group: deprovisioning-storage, topic: deprovisioning.keys.completed}
keys:
  secretKey: true
  groups:
    - {group: provisioning-keys, topic: provisioning.storage.completed}
    - {group: deprovisioning-keys, topic: deprovisioning.requested}
verify:
  secretKey: true
  tenantCluster: true
  groups:
    - {group: provisioning-verify, topic: provisioning.keys.completed}
    - {group: deprovisioning-verify, topic: deprovisioning.database.completed}
{{- end -}}

{{- define "provisioning.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "provisioning.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "provisioning.labels" -}}
app.kubernetes.io/name: {{ include "provisioning.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The selector of one component (a step, api, migrate, topics): (dict "root" $ "component" name). */}}
{{- define "provisioning.selector" -}}
app.kubernetes.io/name: {{ include "provisioning.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The Secret the workers and the API read. */}}
{{- define "provisioning.secretName" -}}
{{- .Values.existingSecret | default (include "provisioning.fullname" .) -}}
{{- end -}}

{{/* The Secret the hooks read: theirs while the chart's own does not exist yet. */}}
{{- define "provisioning.hookSecretName" -}}
{{- .Values.existingSecret | default (printf "%s-hooks" (include "provisioning.fullname" .)) -}}
{{- end -}}

{{/* A principal's name: kafka.usernames.<name>, else provision-<name>. */}}
{{- define "provisioning.username" -}}
{{- index .root.Values.kafka.usernames .name | default (printf "provision-%s" .name) -}}
{{- end -}}

{{- define "provisioning.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* The non-secret settings every process reads (the ConfigMap; the hooks inline them). */}}
{{- define "provisioning.config" -}}
KAFKA_BOOTSTRAP_SERVERS: {{ required "kafka.bootstrapServers is required" .Values.kafka.bootstrapServers | quote }}
PROVISION_KAFKA_SECURITY_PROTOCOL: {{ .Values.kafka.securityProtocol | quote }}
PROVISION_KAFKA_SASL_MECHANISM: {{ .Values.kafka.saslMechanism | quote }}
{{- if .Values.kafka.caSecret }}
PROVISION_KAFKA_SSL_CA_LOCATION: {{ printf "/etc/provision/kafka-ca/%s" .Values.kafka.caKey | quote }}
{{- end }}
PROVISION_TOPIC_PARTITIONS: {{ .Values.kafka.partitions | quote }}
PROVISION_TOPIC_REPLICATION: {{ .Values.kafka.replication | quote }}
{{- with .Values.kafka.minInsyncReplicas }}
PROVISION_TOPIC_MIN_INSYNC_REPLICAS: {{ . | quote }}
{{- end }}
PROVISION_LOG_FORMAT: "json"
PROVISION_STATE_DIR: "/tmp/provision"
{{- range $name, $value := .Values.config }}
{{ $name }}: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* An environment variable from one key of a Secret: (dict "name" VAR "secret" S "key" K "optional" bool). */}}
{{- define "provisioning.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/* The Kafka login of one principal: (dict "root" $ "name" principal "secret" S). */}}
{{- define "provisioning.kafkaLogin" -}}
- name: PROVISION_KAFKA_SASL_USERNAME
  value: {{ include "provisioning.username" . | quote }}
{{ include "provisioning.secretEnv" (dict "name" "PROVISION_KAFKA_SASL_PASSWORD" "secret" .secret "key" (printf "KAFKA_%s_PASSWORD" (upper .name)) "optional" true) }}
{{- end -}}

{{- define "provisioning.podSpecCommon" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
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

{{/* /tmp (the only place a process writes), the Kafka CA and extraVolumes, as volumes and their mounts. */}}
{{- define "provisioning.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.caSecret }}
    items:
      - key: {{ .Values.kafka.caKey }}
        path: {{ .Values.kafka.caKey }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "provisioning.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  mountPath: /etc/provision/kafka-ca
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* KEDA's Kafka scaler's sasl and tls, from the clients' security. */}}
{{- define "provisioning.kedaSasl" -}}
{{- $mechanisms := dict "PLAIN" "plaintext" "SCRAM-SHA-256" "scram_sha256" "SCRAM-SHA-512" "scram_sha512" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}
{{- $sasl := get $mechanisms .Values.kafka.saslMechanism -}}
{{- if not $sasl -}}
{{- fail (printf "keda: kafka.saslMechanism %q is not one the chart gives KEDA (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)" .Values.kafka.saslMechanism) -}}
{{- end -}}
{{- $sasl -}}
{{- else -}}
none
{{- end -}}
{{- end -}}
