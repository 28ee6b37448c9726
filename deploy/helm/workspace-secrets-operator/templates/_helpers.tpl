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

{{/* Secrets in the release namespace the operator may read by name (provider admin credentials, OAuth
     clients). Sorted and de-duplicated, one name per line. */}}
{{- define "wso.referencedSecrets" -}}
{{- $names := list -}}
{{- range .Values.providers -}}
{{- with .credentialsSecret -}}
{{- $names = append $names . -}}
{{- end -}}
{{- end -}}
{{- if .Values.connect.enabled -}}
{{- $names = concat $names .Values.connect.oauthClientSecrets -}}
{{- end -}}
{{- range ($names | uniq | sortAlpha) }}
{{ . }}
{{- end -}}
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
# key Secrets are read. list/watch are only ever used with the operator's label selector, but RBAC
# cannot express a label restriction.
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
# Workspace anchors: read to bind the WorkspaceSecret to its workspace by ownerReference. Never written.
- apiGroups: [""]
  resources: ["pods", "persistentvolumeclaims"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets"]
  verbs: ["get"]
{{- if include "wso.tokenProvider" . }}
# A kubernetes-token provider is configured: it mints tokens with the TokenRequest API (bound to an anchor
# Secret it creates, which the Secret rules above already allow).
- apiGroups: [""]
  resources: ["serviceaccounts/token"]
  verbs: ["create"]
{{- end }}
{{- end -}}
