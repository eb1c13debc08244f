{{- define "lineguard.fullname" -}}
{{- printf "%s" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lineguard.labels" -}}
app.kubernetes.io/name: lineguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lineguard.selector" -}}
app.kubernetes.io/name: lineguard
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The most processor workers that get partitions: every line's frame partitions, one each. */}}
{{- define "lineguard.maxProcessors" -}}
{{- mul (len .Values.lines) .Values.kafka.framePartitions -}}
{{- end -}}

{{/* Pod spec parts every lineguard container shares: the config file and the secret files. */}}
{{- define "lineguard.podCommon" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  fsGroup: 10001
volumes:
  - name: config
    configMap:
      name: {{ include "lineguard.fullname" . }}-config
  - name: secrets
    secret:
      secretName: {{ required "existingSecret: the name of a Secret holding lineguard's credentials" .Values.existingSecret }}
      defaultMode: 0440
  - name: state
    emptyDir: {}
  - name: tmp
    emptyDir: {}
{{- end -}}

{{/* Where each container finds its settings (the secrets are files the config names). */}}
{{- define "lineguard.env" -}}
- name: LINEGUARD_CONFIG
  value: /etc/lineguard/lineguard.yaml
{{- end -}}

{{- define "lineguard.containerCommon" -}}
image: "{{ .Values.image.repository }}:{{ .Values.image.tag }}"
imagePullPolicy: {{ .Values.image.pullPolicy }}
volumeMounts:
  - name: config
    mountPath: /etc/lineguard/lineguard.yaml
    subPath: lineguard.yaml
    readOnly: true
  - name: secrets
    mountPath: /etc/lineguard/secrets
    readOnly: true
  - name: state
    mountPath: /var/lib/lineguard
  - name: tmp
    mountPath: /tmp
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
{{- end -}}

{{/* /live answers while the process serves (cheap); /ready once it consumes (and has a model). */}}
{{- define "lineguard.metricsProbes" -}}
ports:
  - name: metrics
    containerPort: {{ .Values.metricsPort }}
livenessProbe:
  httpGet: {path: /live, port: metrics}
  periodSeconds: 15
  timeoutSeconds: 5
  failureThreshold: 4
readinessProbe:
  httpGet: {path: /ready, port: metrics}
  initialDelaySeconds: 10
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}
