{{/* Name of the chart. */}}
{{- define "handover.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name: the release name, or <release>-handover when the release name lacks "handover". */}}
{{- define "handover.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "handover.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "handover.selectorLabels" . }}
{{- /* A label value: at most 63 characters, alphanumeric at both ends (an image tag may be 128
long and start with "_" or end with "-" or "."). */}}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | trunc 63 | trimAll "-_." | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: handover
{{- end -}}

{{/* Labels that select the operator pods. */}}
{{- define "handover.selectorLabels" -}}
app.kubernetes.io/name: {{ include "handover.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "handover.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "handover.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "handover.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The sidecar image the operator injects: sidecar.image, else the operator's own image. */}}
{{- define "handover.sidecarImage" -}}
{{- .Values.sidecar.image | default (include "handover.image" .) -}}
{{- end -}}

{{/* The operator's rules, in the ClusterRole or in the Role of each watched namespace. Server-side
apply of an object that does not exist yet is authorized as create as well as patch. */}}
{{- define "handover.operatorRules" -}}
# The controller's watch; the finalizer is added by server-side apply and removed with a JSON patch.
- apiGroups: ["handover.dev"]
  resources: ["serverpools"]
  verbs: ["get", "list", "watch", "patch"]
# Status: server-side apply.
- apiGroups: ["handover.dev"]
  resources: ["serverpools/status"]
  verbs: ["patch"]
# The member registry (pod watch).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Not used by the operator itself: the pool's Role grants its sidecars pods/status patch (each
# writes its handover.dev/PeersReachable condition), and RBAC lets the operator grant only what
# it holds (no escalate).
- apiGroups: [""]
  resources: ["pods/status"]
  verbs: ["patch"]
# Sidecar injection and removal in annotated Deployments (server-side apply; never created).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "patch"]
# The pool's Service (server-side apply; read by name first, the first time: one under that name
# that the pool does not own is left as it is).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch"]
# The key Secret, by name only: read, create once, rotate (update with resourceVersion). No list
# or watch: the operator never sees a Secret it does not name. Never deleted by the operator (the
# garbage collector deletes it with its pool).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "update"]
# Role + RoleBinding letting each pool's sidecars read their own ServerPool and write their pod's
# peer condition (server-side apply). That Role grants get/list/watch on serverpools and patch on
# pods/status, both held above: no escalate or bind needed.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Each pool's NetworkPolicy letting its pods reach each other's sidecar (server-side apply),
# deleted when the pool opts out (spec.networkPolicy.enabled: false).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Events on pools and Deployments.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
