{{/* Names and labels. */}}
{{- define "nodewave.fullname" -}}
{{- if contains "nodewave" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-nodewave" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nodewave.selectorLabels" -}}
app.kubernetes.io/name: nodewave
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nodewave.labels" -}}
{{ include "nodewave.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nodewave.serviceAccountName" -}}
{{- default (include "nodewave.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "nodewave.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Checks values that would otherwise give a pod that cannot start or RBAC that
does not fit: called from the Deployment.
*/}}
{{- define "nodewave.validate" -}}
{{- if not (has .Values.rbac.mode (list "cluster" "namespaced")) -}}
{{- fail (printf "rbac.mode must be cluster or namespaced, not %q" .Values.rbac.mode) -}}
{{- end -}}
{{- if and (eq .Values.rbac.mode "namespaced") (empty .Values.allowedNamespaces) -}}
{{- fail "rbac.mode=namespaced needs allowedNamespaces: the namespaces nodewave gets a Role in (and watches)" -}}
{{- end -}}
{{- if and (eq .Values.rbac.mode "namespaced") .Values.createNamespaces -}}
{{- fail "createNamespaces needs rbac.mode=cluster: in namespaced mode the allowed namespaces must exist (their Roles live there)" -}}
{{- end -}}
{{- $known := include "nodewave.kindResources" . | fromYaml -}}
{{- range .Values.allowedKinds -}}
{{- if and (not (hasKey $known .)) (not (hasPrefix "*." .)) -}}
{{- fail (printf "allowedKinds: the chart cannot grant %q: name a kind it knows (see values.yaml) or a whole API group as *.group" .) -}}
{{- end -}}
{{- end -}}
{{- if not (has .Values.podAntiAffinity (list "soft" "hard" "none")) -}}
{{- fail (printf "podAntiAffinity must be soft, hard or none, not %q" .Values.podAntiAffinity) -}}
{{- end -}}
{{- if and .Values.verifyCommits.enabled (not .Values.verifyCommits.configMapName) -}}
{{- fail "verifyCommits.enabled needs verifyCommits.configMapName (a ConfigMap with the trusted public keys)" -}}
{{- end -}}
{{- if and .Values.verifyCommits.enabled (not (or .Values.verifyCommits.gpgKeysKey .Values.verifyCommits.sshSignersKey)) -}}
{{- fail "verifyCommits.enabled needs verifyCommits.gpgKeysKey and/or verifyCommits.sshSignersKey" -}}
{{- end -}}
{{- if gt (len (compact (list .Values.credentials.token.secretName .Values.credentials.basicAuth.secretName .Values.credentials.ssh.secretName))) 1 -}}
{{- fail "credentials: set at most one of token.secretName, basicAuth.secretName, ssh.secretName" -}}
{{- end -}}
{{- end -}}

{{/*
RBAC rules for the namespaces nodewave manages DaemonSets in: a ClusterRole in
cluster mode, a Role per allowed namespace in namespaced mode. Only verbs
nodewave uses (tests/rbac.rs runs nodewave with exactly these rules).
*/}}
{{- define "nodewave.namespacedRules" -}}
# Watch (shared stores), apply with server-side apply (and its dry run for
# diffs), prune, and remove 0.1 state annotations after migrating them.
- apiGroups: [apps]
  resources: [daemonsets]
  verbs: [list, watch, create, patch, delete]
# Which template revision new pods get: watched (metadata only) for the
# DaemonSet controller taking a new template, listed when a rollout starts.
- apiGroups: [apps]
  resources: [controllerrevisions]
  verbs: [list, watch]
# Observe rollouts and replace pods stage by stage.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, delete]
# Events on DaemonSets and namespaces.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# The rollout records, written before every action.
- apiGroups: [nodewave.io]
  resources: [daemonsetrollouts]
  verbs: [list, watch, create, delete]
- apiGroups: [nodewave.io]
  resources: [daemonsetrollouts/status]
  verbs: [update]
# Companion objects of namespaced kinds (allowedKinds).
{{- include "nodewave.companionRules" (dict "root" . "scope" "namespaced") }}
{{- end -}}

{{/* Cluster-scoped rules, in both modes: read-only. */}}
{{- define "nodewave.clusterRules" -}}
# Node pools (labels only, metadata watch).
- apiGroups: [""]
  resources: [nodes]
  verbs: [list, watch]
# Check that the record CRD is installed (nodewave runs with --no-install-crds
# and needs no write access to CRDs).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  resourceNames: [daemonsetrollouts.nodewave.io]
  verbs: [get]
{{- if eq .Values.rbac.mode "cluster" }}
# Companion objects of cluster-scoped kinds (allowedKinds), and Events about
# them (in "default").
{{- include "nodewave.companionRules" (dict "root" . "scope" "cluster") }}
{{- end }}
{{- if .Values.createNamespaces }}
# Create a DaemonSet's namespace (createNamespaces: --create-namespaces).
- apiGroups: [""]
  resources: [namespaces]
  verbs: [create, patch]
{{- end }}
{{- end -}}


{{/*
Companion kinds (allowedKinds, nodewave's --allow-kind notation) and what RBAC
grants each: "apiGroup/resource/scope". *.group entries grant every resource of
the group (custom resources), cluster-wide.
*/}}
{{- define "nodewave.kindResources" -}}
Namespace: "/namespaces/cluster"
ServiceAccount: "/serviceaccounts/namespaced"
ConfigMap: "/configmaps/namespaced"
Secret: "/secrets/namespaced"
Service: "/services/namespaced"
Role.rbac.authorization.k8s.io: "rbac.authorization.k8s.io/roles/namespaced"
RoleBinding.rbac.authorization.k8s.io: "rbac.authorization.k8s.io/rolebindings/namespaced"
ClusterRole.rbac.authorization.k8s.io: "rbac.authorization.k8s.io/clusterroles/cluster"
ClusterRoleBinding.rbac.authorization.k8s.io: "rbac.authorization.k8s.io/clusterrolebindings/cluster"
PodDisruptionBudget.policy: "policy/poddisruptionbudgets/namespaced"
NetworkPolicy.networking.k8s.io: "networking.k8s.io/networkpolicies/namespaced"
PriorityClass.scheduling.k8s.io: "scheduling.k8s.io/priorityclasses/cluster"
RuntimeClass.node.k8s.io: "node.k8s.io/runtimeclasses/cluster"
StorageClass.storage.k8s.io: "storage.k8s.io/storageclasses/cluster"
CSIDriver.storage.k8s.io: "storage.k8s.io/csidrivers/cluster"
CustomResourceDefinition.apiextensions.k8s.io: "apiextensions.k8s.io/customresourcedefinitions/cluster"
Deployment.apps: "apps/deployments/namespaced"
ValidatingWebhookConfiguration.admissionregistration.k8s.io: "admissionregistration.k8s.io/validatingwebhookconfigurations/cluster"
MutatingWebhookConfiguration.admissionregistration.k8s.io: "admissionregistration.k8s.io/mutatingwebhookconfigurations/cluster"
{{- end -}}

{{/*
The companion kinds this release lets nodewave manage: allowedKinds, without
the cluster-scoped ones in namespaced mode (a Role cannot grant them).
*/}}
{{- define "nodewave.companionKinds" -}}
{{- $known := include "nodewave.kindResources" . | fromYaml -}}
{{- $out := list -}}
{{- range .Values.allowedKinds -}}
{{- $scope := "cluster" -}}
{{- if hasKey $known . }}{{ $scope = (splitList "/" (get $known .)) | last }}{{ end -}}
{{- if or (eq $.Values.rbac.mode "cluster") (eq $scope "namespaced") -}}
{{- $out = append $out . -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
RBAC rules for companion objects of scope "namespaced" or "cluster": apply
(server-side, and its dry run), read for drift, watch (metadata), prune.
Granting RBAC objects needs escalate and bind: nodewave applies the Roles a
vendor file ships without holding every permission they grant.
*/}}
{{- define "nodewave.companionRules" -}}
{{- $scope := .scope -}}
{{- $known := include "nodewave.kindResources" .root | fromYaml -}}
{{- range (include "nodewave.companionKinds" .root | fromJsonArray) -}}
{{- if hasKey $known . -}}
{{- $parts := splitList "/" (get $known .) -}}
{{- if eq (index $parts 2) $scope }}
- apiGroups: [{{ index $parts 0 | quote }}]
  resources: [{{ index $parts 1 }}]
  verbs: [get, list, watch, create, patch, delete{{ if has (index $parts 1) (list "roles" "clusterroles") }}, escalate, bind{{ end }}]
{{- end -}}
{{- else if eq $scope "cluster" }}
- apiGroups: [{{ trimPrefix "*." . | quote }}]
  resources: ["*"]
  verbs: [get, list, watch, create, patch, delete]
{{- end -}}
{{- end -}}
{{- end -}}
