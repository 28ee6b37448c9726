{{/* Names ----------------------------------------------------------------------------------------- */}}

{{- define "wso.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wso.fullname" -}}
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

{{- define "wso.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wso.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "wso.peeringName" -}}
{{- default (include "wso.fullname" .) .Values.peering.name -}}
{{- end -}}

{{/* The webhook's Service, and also the name of the MutatingWebhookConfiguration (--webhook-configuration),
     which the operator keeps in sync (caBundle). */}}
{{- define "wso.webhookName" -}}
{{- printf "%s-webhook" (include "wso.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "true" when the operator runs with --leader-elect: leaderElection.enabled if set (true/false), else
     replicaCount > 1 without peering (the deprecated alternative). */}}
{{- define "wso.leaderElect" -}}
{{- if kindIs "bool" .Values.leaderElection.enabled -}}
{{- if .Values.leaderElection.enabled -}}true{{- end -}}
{{- else if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) -}}
true
{{- end -}}
{{- end -}}

{{/* The Lease's name (--leader-election-id): one per release, so two releases never share a leader. */}}
{{- define "wso.leaseName" -}}
{{- include "wso.fullname" . -}}
{{- end -}}

{{/* cert-manager (webhook.certManager): the serving Certificate, its Secret, and the self-signed chain. */}}
{{- define "wso.webhookCertificate" -}}
{{- include "wso.webhookName" . -}}
{{- end -}}
{{- define "wso.webhookCertificateSecret" -}}
{{- printf "%s-tls" (include "wso.webhookName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret mounted as the webhook's certificate directory: cert-manager's, webhook.certSecret, or none
     (the operator's own CA in an emptyDir). */}}
{{- define "wso.webhookCertSecretName" -}}
{{- if .Values.webhook.certManager.enabled -}}
{{- include "wso.webhookCertificateSecret" . -}}
{{- else -}}
{{- .Values.webhook.certSecret -}}
{{- end -}}
{{- end -}}

{{/* Where the trusted CA bundle (trustedCABundle.configMap) is mounted (--ca-bundle-file=<dir>/<key>). */}}
{{- define "wso.caBundleDir" -}}
/etc/workspace-secrets-operator/ca-bundle
{{- end -}}

{{/* Where the webhook's certificate directory is mounted (--webhook-cert-dir). */}}
{{- define "wso.webhookCertDir" -}}
/var/run/workspace-secrets-operator/webhook-certs
{{- end -}}

{{/* The providers ConfigMap, its mount and the file passed as --providers-config. */}}
{{- define "wso.providersConfigMap" -}}
{{- printf "%s-providers" (include "wso.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "wso.providersDir" -}}
/etc/workspace-secrets-operator/providers
{{- end -}}
{{- define "wso.providersFile" -}}
providers.yaml
{{- end -}}

{{/* The --providers-config file's content: the `providers` value as the operator reads it
     (controllers/provider_setup.py). Fails on a duplicate provider name, which the operator would
     otherwise resolve silently (the last one wins). */}}
{{- define "wso.providersConfig" -}}
{{- $seen := dict -}}
{{- range .Values.providers -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "providers: the name %q is used twice; each provider needs its own name (WorkspaceSecrets reference it in spec.credentials[].provider)" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- end -}}
{{- toYaml (dict "providers" .Values.providers) -}}
{{- end -}}

{{/* "true" if a provider of type kubernetes-token is configured (it needs TokenRequest RBAC). */}}
{{- define "wso.tokenProvider" -}}
{{- range .Values.providers -}}
{{- if eq .type "kubernetes-token" -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{- define "wso.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Labels ---------------------------------------------------------------------------------------- */}}

{{- define "wso.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wso.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wso.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "wso.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: workspace-secrets-operator
{{- end -}}

{{/* Labels the chart adds to its CRDs (templates/crds/, generated from crds/ which sets app.kubernetes.io/name
     and part-of itself). */}}
{{- define "wso.crdLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Secrets in the release namespace the operator may read by name (provider admin credentials, the OAuth
     applications' client credentials). Sorted and de-duplicated, one name per line. */}}
{{- define "wso.referencedSecrets" -}}
{{- $names := list -}}
{{- range .Values.providers -}}
{{- with .credentialsSecret -}}
{{- $names = append $names . -}}
{{- end -}}
{{- end -}}
{{- range .Values.connect.applications -}}
{{- with .clientSecretRef -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- end -}}
{{- range ($names | uniq | sortAlpha) }}
{{ . }}
{{- end -}}
{{- end -}}

{{/* Tenant-isolation policies ------------------------------------------------------------------------ */}}

{{/* The policies' parameters ConfigMap (release namespace). */}}
{{- define "wso.tenancyParams" -}}
{{- printf "%s-tenancy" (include "wso.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* platformUsers: the operator's own ServiceAccount, the Kubernetes controllers that must act for every
     user (garbage collector, namespace controller, or the controller-manager itself without
     --use-service-account-credentials), then policies.platformUsers. Comma-separated. */}}
{{- define "wso.platformUsers" -}}
{{- $users := list (printf "system:serviceaccount:%s:%s" .Release.Namespace (include "wso.serviceAccountName" .))
      "system:serviceaccount:kube-system:generic-garbage-collector"
      "system:serviceaccount:kube-system:namespace-controller"
      "system:kube-controller-manager" -}}
{{- join ", " (concat $users .Values.policies.platformUsers | uniq) -}}
{{- end -}}

{{/* platformGroups: system:masters (bypasses RBAC anyway), then policies.platformGroups. */}}
{{- define "wso.platformGroups" -}}
{{- join ", " (concat (list "system:masters") .Values.policies.platformGroups | uniq) -}}
{{- end -}}

{{/* Where the policies' bindings apply: every namespace but the release namespace in cluster-wide mode,
     the watched namespaces (but the release namespace) in namespaced mode. The release namespace is the
     platform's (the operator, its credentials, Helm's release records; tenants have no rights there), and
     excluding it keeps `helm uninstall` working: Helm deletes the parameters ConfigMap before the policies,
     and for that moment the policies refuse what they match -- Helm's own release Secret among it. */}}
{{- define "wso.policyMatchResources" -}}
matchResources:
  namespaceSelector:
    matchExpressions:
      {{- if .Values.watchNamespaces }}
      - key: kubernetes.io/metadata.name
        operator: In
        values:
          {{- toYaml (sortAlpha .Values.watchNamespaces) | nindent 10 }}
      {{- end }}
      - key: kubernetes.io/metadata.name
        operator: NotIn
        values: [{{ .Release.Namespace | quote }}, "kube-system", "kube-public", "kube-node-lease"]
{{- end -}}

{{/* The workspace users' ClusterRole (userRole.enabled). */}}
{{- define "wso.userRoleName" -}}
{{- default (printf "%s-user" (include "wso.fullname" .)) .Values.userRole.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Where the connect page's signing key is mounted (--connect-signing-key-file=<dir>/signing-key). */}}
{{- define "wso.connectSigningKeyDir" -}}
/var/run/workspace-secrets-operator/connect-signing-key
{{- end -}}

{{/* RBAC rules ------------------------------------------------------------------------------------
     The operator's namespaced permissions, shared by the ClusterRole (cluster-wide mode) and the Role in
     each watched namespace (namespaced mode), so the two modes can never drift apart. */}}
{{- define "wso.namespacedRules" -}}
# WorkspaceSecrets: kopf watches them and patches its bookkeeping annotations; the operator patches
# ownerReferences (the workspace binding) and status.
- apiGroups: ["workspace-secrets.io"]
  resources: ["workspacesecrets"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["workspace-secrets.io"]
  resources: ["workspacesecrets/status"]
  verbs: ["get", "patch", "update"]
# The Secrets the operator owns carry a blockOwnerDeletion ownerReference to their WorkspaceSecret; with
# the OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters) that needs
# update on the owner's finalizers subresource.
- apiGroups: ["workspace-secrets.io"]
  resources: ["workspacesecrets/finalizers"]
  verbs: ["update"]
# UserTokens: the operator always reconciles them (refresh, validation, revocation); only the connect page
# that starts new authorizations is optional (connect.enabled).
- apiGroups: ["workspace-secrets.io"]
  resources: ["usertokens"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["workspace-secrets.io"]
  resources: ["usertokens/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["workspace-secrets.io"]
  resources: ["usertokens/finalizers"]
  verbs: ["update"]
# Secrets: per-user key Secrets and workspace Secrets are created, repaired and deleted; bring-your-own
# key Secrets and user secrets are read. This is the widest grant of the chart and cannot be narrowed by
# RBAC: the operator creates Secrets under names derived from its objects (RBAC cannot name an object
# before it exists, and `create` takes no resourceNames), and lists/watches them by label selector (RBAC
# has no label restrictions). What limits it: watchNamespaces (only those namespaces), the operator's own
# checks (it reads a bring-your-own key or user secret only if labelled for the WorkspaceSecret's user, and
# never writes at a reserved name), and the admission policies (tenants cannot forge its labels, names or
# ownerReferences).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
# Events on our objects (the operator posts core/v1 Events; events.k8s.io for newer recorders).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create"]
# Workspace anchors: read to bind the WorkspaceSecret to its workspace by ownerReference.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# The workspaces' pods: watched and listed by label (is the workspace running; which pods wait at the
# scheduling gate workspace-secrets.io/ready) and patched to remove that gate -- a JSON patch that removes
# only that gate, refused by the API server unless the pod still carries the WorkspaceSecret's and its user's
# labels and the gates the operator saw. Deleted only when still waiting at that gate but admitted before the
# WorkspaceSecret published its env vars/files, and only when a ReplicaSet/StatefulSet/Job re-creates it (DELETE
# with preconditions uid and resourceVersion: only the incarnation the operator looked at; it never ran).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# Workspace Deployments/StatefulSets: read to bind; patched to restart them (a pod-template annotation) when a
# credential delivered as env vars rotates (spec.credentials[].delivery Env).
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get", "patch"]
{{- if include "wso.tokenProvider" . }}
# A kubernetes-token provider is configured: it mints tokens with the TokenRequest API (bound to an anchor
# Secret it creates, which the Secret rules above already allow).
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
{{- end -}}
