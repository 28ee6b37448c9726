"""The interface every dynamic-credential provider implements.

A provider never has to remember anything: every credential it mints is findable again at the provider
through the scope's deterministic `tag` (an IAM user name, a role name prefix, a key's friendly name...).
That is what makes the operator crash-safe: a credential minted just before a crash is found by `list`
and revoked as an orphan, and deleting a workspace revokes whatever `list` finds, recorded or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Protocol

from workspace_secrets.credentials.ledger import AccessRule
from workspace_secrets.runtime.names import short_hash
from workspace_secrets.runtime.sensitive import Sensitive


@dataclass(frozen=True)
class Scope:
    """Where one WorkspaceSecret entry's credentials live at the provider."""

    tag: str  # deterministic, short, lowercase: "wso-<12 hex>"; safe in names of every provider
    namespace: str = ""
    workspace: str = ""
    workspace_uid: str = ""
    entry: str = ""

    @classmethod
    def of(cls, namespace: str, workspace: str, workspace_uid: str, entry: str) -> Scope:
        return cls(f"wso-{short_hash(namespace, workspace_uid, entry, length=12)}", namespace, workspace, workspace_uid, entry)

    @property
    def description(self) -> str:
        """Human-readable origin, for provider-side descriptions and tags (no secret)."""
        return f"workspace-secrets-operator {self.namespace}/{self.workspace} entry {self.entry}"


@dataclass(frozen=True)
class FileRef:
    """An env var whose value is the path of one of the credential's files in the mounted Secret."""

    suffix: str


@dataclass(frozen=True)
class FileContext:
    """Where one entry's files appear in the workspace: the workspace Secret mounted at `directory`, every key
    "<entry>.<suffix>" a file of that name."""

    entry: str
    directory: str
    namespace: str = ""

    def path(self, suffix: str) -> str:
        return f"{self.directory.rstrip('/')}/{self.entry}.{suffix}"


@dataclass(frozen=True)
class Issued:
    id: str  # provider-side identifier: safe to show in status
    values: Mapping[str, Sensitive]  # Secret key suffix -> value (the Secret key is "<entry>.<suffix>")
    expires_at: datetime | None = None


class ProviderError(Exception):
    """A provider call failed. The message names the provider's error, never a secret value."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class CredentialProvider(Protocol):
    type_name: ClassVar[str]
    name: str  # the platform's name for this configured instance, used in WorkspaceSecret specs
    # The platform's `allow` rule for this instance, set by credentials/setup.py after building it
    # (None: nobody may use it). Checked by the CredentialManager before anything is minted.
    access: AccessRule | None

    def env(self) -> Mapping[str, str | FileRef]:
        """delivery Env: env var name -> value suffix (secretKeyRef) or FileRef (the file's path). These are
        fixed when a container starts: a rotation reaches them only by restarting the workspace."""
        ...

    def file_env(self) -> Mapping[str, str | FileRef]:
        """delivery Files (and Env): env vars that never go stale -- a FileRef (the path of one of the
        credential's files, which kubelet updates in place) or the suffix of a value that never changes for
        this provider instance (a region, an account id)."""
        ...

    def files(self, values: Mapping[str, Sensitive], where: FileContext) -> Mapping[str, Sensitive]:
        """The files the provider's tools read, rendered from one credential's values (suffix -> content):
        e.g. an AWS shared credentials file, a kubeconfig. Pure; called on every reconcile."""
        ...

    def validate(self, parameters: Mapping[str, str]) -> str | None:
        """The platform's policy: an error message if these entry parameters are not allowed."""
        ...

    async def issue(self, scope: Scope, parameters: Mapping[str, str], generation: int) -> Issued: ...

    async def revoke(self, scope: Scope, credential_id: str) -> None:
        """Idempotent: a credential that is already gone is revoked."""
        ...

    async def list(self, scope: Scope) -> list[str]:
        """Ids of the live credentials in this scope."""
        ...

    async def release(self, scope: Scope) -> None:
        """Remove per-scope resources (per-workspace user, service account...) once nothing is live."""
        ...

    async def sweep(self) -> list[str]:
        """Tags of every scope this operator created at the provider (for the orphan sweep)."""
        ...

