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
# Annotations the operator sets on the objects it creates (never a secret value).
ANNOTATION_ROTATION_REQUEST: Final = f"{GROUP}/rotation-request"
ANNOTATION_SSH_FINGERPRINT: Final = f"{GROUP}/ssh-key-fingerprint"

# Keys of the workspace Secret (documented in the README and in the CRD's descriptions).
KEY_SSH_PRIVATE: Final = "ssh-privatekey"  # kubernetes.io/ssh-auth's required key
KEY_SSH_PUBLIC: Final = "ssh-publickey"
KEY_KNOWN_HOSTS: Final = "known_hosts"
KEY_GIT_SSH_COMMAND: Final = "GIT_SSH_COMMAND"

DEFAULT_MOUNT_PATH: Final = "/var/run/workspace-secrets"

# Condition types.
CONDITION_READY: Final = "Ready"
CONDITION_SSH_KEY_READY: Final = "SSHKeyReady"
CONDITION_WORKSPACE_BOUND: Final = "WorkspaceBound"

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
