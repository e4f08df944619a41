{{/* Names, labels and small shared values. */}}

{{- define "thaw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thaw.fullname" -}}
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

{{- define "thaw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object; pass (dict "ctx" $ "component" "webhook"). */}}
{{- define "thaw.labels" -}}
helm.sh/chart: {{ include "thaw.chart" .ctx }}
{{ include "thaw.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: thaw
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "thaw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "thaw.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "thaw.webhookName" -}}
{{- printf "%s-webhook" (include "thaw.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thaw.agentName" -}}
{{- printf "%s-agent" (include "thaw.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the MutatingWebhookConfiguration (cluster-scoped, so it carries the namespace). */}}
{{- define "thaw.webhookConfigurationName" -}}
{{- printf "%s-%s" (include "thaw.webhookName" .) .Release.Namespace | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thaw.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "thaw.webhookName" .)) .Values.certificates.secretName }}
{{- end }}

{{- define "thaw.leaseName" -}}
{{- printf "%s-leader" (include "thaw.webhookName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "thaw.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) }}
{{- end }}

{{- define "thaw.webhookImage" -}}
{{- include "thaw.image" (dict "repository" .Values.image.repository "tag" .Values.image.tag "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "thaw.agentImage" -}}
{{- include "thaw.image" (dict "repository" .Values.agent.image.repository "tag" .Values.agent.image.tag "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* PodDisruptionBudget moved to policy/v1 in Kubernetes 1.21. */}}
{{- define "thaw.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}
policy/v1
{{- else -}}
policy/v1beta1
{{- end }}
{{- end }}

{{/* Namespaces the webhook never mutates. */}}
{{- define "thaw.excludedNamespaces" -}}
{{- $ns := list "kube-system" .Release.Namespace }}
{{- range .Values.webhook.excludeNamespaces }}{{ $ns = append $ns . }}{{ end }}
{{- toJson ($ns | uniq | sortAlpha) }}
{{- end }}

{{/* Security context of every container except the privileged agent. */}}
{{- define "thaw.restrictedContainerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Native sidecars (init containers with restartPolicy Always) are on by default from 1.29. */}}
{{- define "thaw.sidecarMode" -}}
{{- if ne .Values.webhook.sidecarMode "auto" -}}
{{- .Values.webhook.sidecarMode }}
{{- else if semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version -}}
native
{{- else -}}
container
{{- end }}
{{- end }}
