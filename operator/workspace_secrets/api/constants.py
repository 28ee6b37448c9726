"""Names shared by the CRDs, the operator and the tests: group, versions, labels, annotations, reasons."""

from typing import Final

GROUP: Final = "workspace-secrets.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

WORKSPACE_SECRET_KIND: Final = "WorkspaceSecret"
WORKSPACE_SECRET_PLURAL: Final = "workspacesecrets"

OPERATOR_NAME: Final = "workspace-secrets-operator"

# Labels on every object the operator creates. The operator's own Secret watch selects on
# MANAGED_BY=OPERATOR_NAME, so it never sees (or caches) Secrets it does not own.
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_USER: Final = f"{GROUP}/user"

COMPONENT_WORKSPACE_SECRET: Final = "workspace-secret"
COMPONENT_USER_SSH_KEY: Final = "user-ssh-key"

MANAGED_SELECTOR: Final = f"{LABEL_MANAGED_BY}={OPERATOR_NAME}"

# Annotations a user or platform sets on a WorkspaceSecret.
ANNOTATION_ROTATE_SSH_KEY: Final = f"{GROUP}/rotate-ssh-key"
ANNOTATION_ABANDON_CLEANUP: Final = f"{GROUP}/abandon-cleanup"  # "true": give up revoking credentials on delete
# Annotations a user sets on their own Secrets (user secrets) to declare what is delivered, and how.
ANNOTATION_USER_ENV: Final = f"{GROUP}/env"
ANNOTATION_USER_FILES: Final = f"{GROUP}/files"
# Annotations the operator sets on the objects it creates (never a secret value).
ANNOTATION_ROTATION_REQUEST: Final = f"{GROUP}/rotation-request"
ANNOTATION_SSH_FINGERPRINT: Final = f"{GROUP}/ssh-key-fingerprint"
ANNOTATION_CREDENTIALS: Final = f"{GROUP}/credentials"  # ledger of issued credential ids (never values)
COMPONENT_TOKEN_ANCHOR: Final = "token-anchor"
#: The finalizer on every object the operator must clean up after before it goes: WorkspaceSecrets with dynamic
#: credentials (set and removed by the controller itself) and UserTokens (kopf's, under the same name).
FINALIZER: Final = f"{GROUP}/finalizer"

# Keys of the workspace Secret (documented in docs/users/workspacesecret.md and in the CRD's descriptions).
KEY_SSH_PRIVATE: Final = "ssh-privatekey"  # kubernetes.io/ssh-auth's required key
KEY_SSH_PUBLIC: Final = "ssh-publickey"
KEY_KNOWN_HOSTS: Final = "known_hosts"
KEY_GIT_SSH_COMMAND: Final = "GIT_SSH_COMMAND"

# Dynamic-credential fields that are identifiers, not secrets ("<entry>.<FIELD>" in the workspace Secret): the
# operator shows them in status.credentials[].id, Events and logs, as providers' own consoles do.
PUBLIC_CREDENTIAL_FIELDS: Final = frozenset({
    "AWS_ACCESS_KEY_ID", "AWS_REGION",
    "TWILIO_API_KEY", "TWILIO_ACCOUNT_SID",
    "PGHOST", "PGPORT", "PGDATABASE", "PGUSER",
    "GOOGLE_APPLICATION_CREDENTIALS",
    # delivery Files: env vars whose value is the path of one of the entry's mounted files
    "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "KUBECONFIG", "PGSERVICEFILE", "PGPASSFILE", "TWILIO_ENV_FILE",
})

DEFAULT_MOUNT_PATH: Final = "/var/run/workspace-secrets"
DEFAULT_USER_FILES_PATH: Final = "/var/run/workspace-secrets-user"  # user-secret files, by declared relative path

# Condition types.
CONDITION_READY: Final = "Ready"
CONDITION_SSH_KEY_READY: Final = "SSHKeyReady"
CONDITION_WORKSPACE_BOUND: Final = "WorkspaceBound"
CONDITION_CREDENTIALS_READY: Final = "CredentialsReady"
CONDITION_USER_SECRETS_READY: Final = "UserSecretsReady"

# User secrets: the user's own Secrets, labelled with LABEL_USER and not created by the operator.
USER_SECRETS_SELECTOR: Final = f"{LABEL_USER},{LABEL_MANAGED_BY}!={OPERATOR_NAME}"

# --- Pod injection (the mutating admission webhook) ---------------------------------------------
# The opt-in label on a workspace Pod (or a Deployment's pod template): the name of a WorkspaceSecret in
# the pod's own namespace. The webhook configuration's objectSelector selects on this key only, so an
# operator outage can never block an unlabelled pod.
LABEL_WORKSPACE_SECRET: Final = f"{GROUP}/workspace-secret"
# Optional pod annotations read by the webhook.
ANNOTATION_CONTAINERS: Final = f"{GROUP}/containers"  # "a,b": only these (init) containers
ANNOTATION_MOUNT_PATH: Final = f"{GROUP}/mount-path"  # must equal the WorkspaceSecret's spec.mountPath
# The volume the webhook adds (the same name the manual example uses, so the two paths agree).
POD_VOLUME_NAME: Final = "workspace-secrets"
POD_USER_FILES_VOLUME_NAME: Final = "workspace-secrets-user-files"
# Secret volume file modes: owner-only, or group-readable when the pod sets fsGroup (the files are
# root-owned; a non-root user reads them through the fsGroup, and ssh accepts a key it does not own).
MODE_OWNER_ONLY: Final = 0o400
MODE_GROUP_READABLE: Final = 0o440
# Default name of the MutatingWebhookConfiguration the operator manages (also the webhooks' name suffix).
WEBHOOK_CONFIGURATION_NAME: Final = GROUP
WEBHOOK_ID: Final = "mount-workspace-secret"
EVENT_POD_INJECTION_CONFLICT: Final = "PodInjectionConflict"

# --- UserToken (git-provider OAuth tokens) ---------------------------------------------------------
USER_TOKEN_KIND: Final = "UserToken"
USER_TOKEN_PLURAL: Final = "usertokens"
COMPONENT_USER_TOKEN: Final = "user-token"

# Annotations a user or platform sets on a UserToken: a new value asks for one refresh / one validation now.
# Under their own subdomain: kopf leaves every `<its storage prefix>/...` annotation (workspace-secrets.io/)
# out of the object's essence, so changes to such annotations would trigger no update handler.
USER_TOKEN_ANNOTATION_PREFIX: Final = f"usertoken.{GROUP}"
ANNOTATION_REFRESH_TOKEN: Final = f"{USER_TOKEN_ANNOTATION_PREFIX}/refresh"
ANNOTATION_VALIDATE_TOKEN: Final = f"{USER_TOKEN_ANNOTATION_PREFIX}/validate"
# Lets an administrator finish deleting a UserToken whose provider is gone for good (revocation skipped).
ANNOTATION_SKIP_REVOCATION: Final = f"{USER_TOKEN_ANNOTATION_PREFIX}/skip-revocation"
# Stamped on the token Secret: which OAuth grant wrote it (a random id, never derived from the token).
ANNOTATION_TOKEN_GENERATION: Final = f"{GROUP}/token-generation"

# Keys of the token Secret.
KEY_TOKEN: Final = "token"  # the access token (a Vault token for type vault)
KEY_REFRESH_TOKEN: Final = "refresh-token"
KEY_TOKEN_TYPE: Final = "token-type"
KEY_EXPIRES_AT: Final = "expires-at"
KEY_GIT_USERNAME: Final = "git-username"
KEY_GIT_CREDENTIALS: Final = "git-credentials"  # git-credential-store format: https://user:token@host
KEY_VAULT_ADDR: Final = "vault-addr"

# UserToken phases (status.phase) and condition types.
PHASE_AWAITING_AUTHORIZATION: Final = "AwaitingAuthorization"
PHASE_VALID: Final = "Valid"
PHASE_REFRESHING: Final = "Refreshing"
PHASE_EXPIRED: Final = "Expired"
PHASE_REVOKED: Final = "Revoked"
PHASE_ERROR: Final = "Error"
CONDITION_AUTHORIZED: Final = "Authorized"
CONDITION_SSH_KEY_UPLOADED: Final = "SSHKeyUploaded"
# Ready reasons of a UserToken whose provider answered unusably: its TLS certificate is not trusted (the platform's to
# fix: the OAuthApplication's caBundle or --ca-bundle-file), or anything else; ProviderError is a credential's too.
REASON_TLS_VERIFICATION_FAILED: Final = "TLSVerificationFailed"
REASON_PROVIDER_ERROR: Final = "ProviderError"

# --- workspace restarts (credentials delivered as env vars: spec.credentials[].delivery Env) -----------
# On the pod template of a workspace Deployment/StatefulSet: a new value rolls its pods (like kubectl rollout restart).
ANNOTATION_RESTARTED_AT: Final = f"{GROUP}/restartedAt"

# --- the workspace gate (pods wait for what their WorkspaceSecret requires) -------------------------------
# The scheduling gate the webhook adds to the pods of a WorkspaceSecret with a required userToken or a
# WhileRunning credential; the controller removes it once the workspace Secret holds everything.
SCHEDULING_GATE: Final = f"{GROUP}/ready"
EVENT_WAITING_FOR_TOKEN: Final = "WaitingForToken"
EVENT_WAITING_FOR_CREDENTIALS: Final = "WaitingForCredentials"
EVENT_WAITING_FOR_SECRET: Final = "WaitingForSecret"
EVENT_GATE_REMOVED: Final = "WorkspaceReleased"
# On a waiting pod: its WorkspaceSecret is invalid (its spec, a reserved Secret name); it waits until that is fixed.
EVENT_WORKSPACE_SECRET_INVALID: Final = "WorkspaceSecretInvalid"

# --- user tokens in workspaces (WorkspaceSecret spec.userTokens) ------------------------------------------
CONDITION_TOKENS_READY: Final = "TokensReady"
# Keys of the workspace Secret for tokens (documented in docs/users/workspacesecret.md, "User tokens").
KEY_WORKSPACE_GIT_CREDENTIALS: Final = "git-credentials"  # every git token, git-credential-store format
KEY_GIT_CONFIG_COUNT: Final = "GIT_CONFIG_COUNT"  # git >= 2.31 reads config from env: credential.helper=store
KEY_GIT_CONFIG_KEY_0: Final = "GIT_CONFIG_KEY_0"
KEY_GIT_CONFIG_VALUE_0: Final = "GIT_CONFIG_VALUE_0"
