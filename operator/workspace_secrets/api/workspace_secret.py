"""Typed view of a WorkspaceSecret. Parsing is defensive: the CRD schema and CEL rules reject bad input at
admission, but an object stored under an older schema (or applied to a cluster without our CRD version)
must still produce a clear Condition rather than a traceback."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.durations import parse_duration

WORKSPACE_KINDS: dict[str, tuple[str, str]] = {
    # kind -> (apiVersion, plural). The lifecycle anchors a WorkspaceSecret may bind to.
    "Pod": ("v1", "pods"),
    "Deployment": ("apps/v1", "deployments"),
    "StatefulSet": ("apps/v1", "statefulsets"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
}

#: spec.credentials[].lifecycle: minted while the workspace runs (the default), or while the WorkspaceSecret exists.
LIFECYCLE_WHILE_RUNNING = "WhileRunning"
LIFECYCLE_WHILE_EXISTS = "WhileExists"
LIFECYCLES = (LIFECYCLE_WHILE_RUNNING, LIFECYCLE_WHILE_EXISTS)
#: spec.credentials[].delivery: files only (env vars name them; the default), or the values as env vars too.
DELIVERY_FILES = "Files"
DELIVERY_ENV = "Env"
DELIVERIES = (DELIVERY_FILES, DELIVERY_ENV)

HOST_KEY_POLICIES = {"Strict": "yes", "AcceptNew": "accept-new", "Off": "no"}

#: spec.credentials[].name values whose keys ("<name>.<FIELD>") would share a prefix with the Secret's other parts.
RESERVED_ENTRY_NAMES = {"token": "the user tokens", "tool": "the tools' files of the user tokens", "user": "the user's own secrets"}

#: Top-level directories a workspace Secret (spec.mountPath) or the user files (spec.userSecrets.mountPath)
#: may not be mounted in: mounting over them replaces what programs load and run. `lib*` covers lib64, libx32.
SYSTEM_DIRECTORIES = ("proc", "sys", "dev", "etc", "bin", "sbin", "usr", "boot", "lib*")
_MOUNT_PATH = re.compile(r"^(/[-A-Za-z0-9_.]+){2,}$")
_SYSTEM = re.compile(r"^/(proc|sys|dev|etc|bin|sbin|usr|boot|lib[^/]*)(/|$)")
_HOME = re.compile(r"^/(root|home/[^/]+)$")


def mount_path_problem(path: str) -> str | None:
    """Why `path` may not be a mount path, or None. Same rules as the CRD's CEL rules on the two fields:
    absolute and normalized, at least two components, not in a system directory, not a home directory."""
    if not _MOUNT_PATH.match(path) or any(part in (".", "..") for part in path.split("/")):
        return (f"{path!r} must be an absolute, normalized path of at least two components (like "
                f"{c.DEFAULT_MOUNT_PATH}): no '.', '..', '//' or trailing '/'")
    if _SYSTEM.match(path):
        return f"{path!r} is in a system directory (/{', /'.join(SYSTEM_DIRECTORIES)}); choose a path under /var/run or the workspace's own directories"
    if _HOME.match(path):
        return f"{path!r} is a home directory; mounting there would hide the user's files: choose a subdirectory"
    return None


class SpecError(ValueError):
    """The spec cannot be acted on. `field` is the JSON path, the message says how to fix it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class WorkspaceRef:
    api_version: str
    kind: str
    name: str

    @property
    def plural(self) -> str:
        return WORKSPACE_KINDS[self.kind][1]


@dataclass(frozen=True)
class ExistingKeyRef:
    name: str
    private_key_key: str = c.KEY_SSH_PRIVATE
    passphrase_key: str | None = None


@dataclass(frozen=True)
class SSHSpec:
    key_type: str = "ed25519"
    rsa_bits: int | None = None
    existing_secret_ref: ExistingKeyRef | None = None
    known_hosts: tuple[str, ...] = ()
    host_key_policy: str = "Strict"


@dataclass(frozen=True)
class DisplayItem:
    key: str
    value: str | None = None
    secret_key: str | None = None  # valueFrom.secretKeyRef.key: a key of the workspace Secret
    sensitive: bool = False


@dataclass(frozen=True)
class CredentialSpec:
    """One dynamic credential: minted for the workspace's lifetime by a platform-configured provider."""

    name: str
    provider: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    rotate_after: timedelta | None = None
    overlap: timedelta = timedelta(minutes=5)
    env_prefix: str = ""
    # WhileRunning: minted only while the workspace runs, revoked when it stops. WhileExists: for the
    # WorkspaceSecret's whole life.
    lifecycle: str = "WhileRunning"
    # Files: env vars only name the credential's files (which kubelet keeps current). Env: the values as env
    # vars too; a rotation restarts the workspace Deployment/StatefulSet.
    delivery: str = "Files"


@dataclass(frozen=True)
class TokenRef:
    """One entry of spec.userTokens: a UserToken of the WorkspaceSecret's user, in its namespace, whose current
    access token the workspace gets. A required one (optional false) holds the workspace back until it is valid."""

    name: str
    optional: bool = False


#: At most this many spec.userTokens entries (the CRD says so too).
MAX_USER_TOKENS = 8
_TOKEN_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True)
class WorkspaceSecret:
    namespace: str
    name: str
    uid: str
    generation: int
    user: str
    workspace_ref: WorkspaceRef
    secret_name: str
    mount_path: str
    ssh: SSHSpec
    display: tuple[DisplayItem, ...] = ()
    credentials: tuple[CredentialSpec, ...] = ()
    user_tokens: tuple[TokenRef, ...] = ()
    user_secrets_enabled: bool = True
    user_secret_names: tuple[str, ...] | None = None  # None: every user secret of the user
    user_files_path: str = c.DEFAULT_USER_FILES_PATH
    abandon_cleanup: bool = False
    rotate_ssh_key: str | None = None  # value of the rotate annotation, if any
    deleting: bool = False
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def required_tokens(self) -> tuple[str, ...]:
        """Names of the userTokens the workspace cannot start without (optional: false)."""
        return tuple(t.name for t in self.user_tokens if not t.optional)

    @property
    def while_running_credentials(self) -> tuple[str, ...]:
        return tuple(cr.name for cr in self.credentials if cr.lifecycle == LIFECYCLE_WHILE_RUNNING)

    @property
    def requires_gate(self) -> bool:
        """Whether its pods wait at the scheduling gate (workspace-secrets.io/ready) until its Secret holds a required
        token or a WhileRunning credential; also whether the controller looks at its pods."""
        return bool(self.required_tokens or self.while_running_credentials)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WorkspaceSecret:
        meta = body.get("metadata", {})
        spec = body.get("spec") or {}
        name = meta["name"]
        user = spec.get("user")
        if not isinstance(user, str) or not user:
            raise SpecError("spec.user", "is required: the user who owns the workspace")
        ref = spec.get("workspaceRef") or {}
        kind = ref.get("kind")
        if kind not in WORKSPACE_KINDS:
            raise SpecError("spec.workspaceRef.kind", f"must be one of {', '.join(WORKSPACE_KINDS)}, got {kind!r}")
        if not ref.get("name"):
            raise SpecError("spec.workspaceRef.name", "is required")
        expected_api = WORKSPACE_KINDS[kind][0]
        api_version = ref.get("apiVersion") or expected_api
        if api_version != expected_api:
            raise SpecError("spec.workspaceRef.apiVersion", f"{kind} is served as {expected_api}, got {api_version}")
        mount_path = spec.get("mountPath") or c.DEFAULT_MOUNT_PATH
        user_files_path = (spec.get("userSecrets") or {}).get("mountPath") or c.DEFAULT_USER_FILES_PATH
        for where, path in (("spec.mountPath", mount_path), ("spec.userSecrets.mountPath", user_files_path)):
            if (problem := mount_path_problem(path)) is not None:
                raise SpecError(where, problem)
        return cls(
            namespace=meta["namespace"],
            name=name,
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 0)),
            user=user,
            workspace_ref=WorkspaceRef(api_version, kind, ref["name"]),
            secret_name=spec.get("secretName") or name,
            mount_path=mount_path,
            ssh=_ssh(spec.get("ssh") or {}),
            display=tuple(_display(item) for item in spec.get("display") or ()),
            credentials=_credentials(spec.get("credentials") or ()),
            user_tokens=_user_tokens(spec.get("userTokens") or ()),
            user_secrets_enabled=(spec.get("userSecrets") or {}).get("enabled", True),
            user_files_path=user_files_path,
            user_secret_names=tuple((spec.get("userSecrets") or {})["names"]) if "names" in (spec.get("userSecrets") or {}) else None,
            abandon_cleanup=(meta.get("annotations") or {}).get(c.ANNOTATION_ABANDON_CLEANUP) == "true",
            rotate_ssh_key=(meta.get("annotations") or {}).get(c.ANNOTATION_ROTATE_SSH_KEY) or None,
            deleting=bool(meta.get("deletionTimestamp")),
            status=body.get("status") or {},
        )


def _ssh(ssh: Mapping[str, Any]) -> SSHSpec:
    key_type = ssh.get("keyType", "ed25519")
    if key_type not in ("ed25519", "ecdsa", "rsa"):
        raise SpecError("spec.ssh.keyType", f"must be ed25519, ecdsa or rsa, got {key_type!r}")
    bits = ssh.get("rsaBits")
    if key_type == "rsa":
        bits = bits or 3072
        if bits not in (3072, 4096):
            raise SpecError("spec.ssh.rsaBits", f"rsa needs 3072 or 4096 bits, got {bits}")
    elif bits is not None:
        raise SpecError("spec.ssh.rsaBits", f"applies to keyType rsa only, not {key_type}")
    existing = ssh.get("existingSecretRef")
    policy = ssh.get("hostKeyPolicy", "Strict")
    if policy not in HOST_KEY_POLICIES:
        raise SpecError("spec.ssh.hostKeyPolicy", f"must be one of {', '.join(HOST_KEY_POLICIES)}, got {policy!r}")
    return SSHSpec(
        key_type=key_type,
        rsa_bits=bits,
        existing_secret_ref=ExistingKeyRef(
            name=existing["name"],
            private_key_key=existing.get("privateKeyKey") or c.KEY_SSH_PRIVATE,
            passphrase_key=existing.get("passphraseKey") or None,
        )
        if existing
        else None,
        known_hosts=tuple(ssh.get("knownHosts") or ()),
        host_key_policy=policy,
    )


def _display(item: Mapping[str, Any]) -> DisplayItem:
    ref = ((item.get("valueFrom") or {}).get("secretKeyRef") or {}).get("key")
    return DisplayItem(key=item["key"], value=item.get("value"), secret_key=ref, sensitive=bool(item.get("sensitive")))


def _credentials(items: Any) -> tuple[CredentialSpec, ...]:
    out: list[CredentialSpec] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"spec.credentials[{index}]"
        name, provider = item.get("name"), item.get("provider")
        if not name:
            raise SpecError(f"{where}.name", "is required")
        if name in seen:
            raise SpecError(f"{where}.name", f"{name!r} is used twice; entry names must be unique")
        if name in RESERVED_ENTRY_NAMES:
            raise SpecError(f"{where}.name", f"{name!r} is reserved (the Secret's keys \"{name}.*\" hold "
                            f"{RESERVED_ENTRY_NAMES[name]}); choose another name")
        seen.add(name)
        if not provider:
            raise SpecError(f"{where}.provider", "is required: the name of a provider configured by the platform")
        try:
            rotate = parse_duration(item["rotateAfter"]) if item.get("rotateAfter") else None
            overlap = parse_duration(item.get("overlap") or "5m")
        except ValueError as exc:
            raise SpecError(f"{where}.rotateAfter", str(exc)) from None
        params = item.get("parameters") or {}
        lifecycle = item.get("lifecycle") or LIFECYCLE_WHILE_RUNNING
        if lifecycle not in LIFECYCLES:
            raise SpecError(f"{where}.lifecycle", f"must be one of {', '.join(LIFECYCLES)}, got {lifecycle!r}")
        delivery = item.get("delivery") or DELIVERY_FILES
        if delivery not in DELIVERIES:
            raise SpecError(f"{where}.delivery", f"must be one of {', '.join(DELIVERIES)}, got {delivery!r}")
        out.append(CredentialSpec(name=name, provider=provider, parameters={str(k): str(v) for k, v in params.items()},
                                  rotate_after=rotate, overlap=overlap, env_prefix=item.get("envPrefix") or "",
                                  lifecycle=lifecycle, delivery=delivery))
    return tuple(out)


def _user_tokens(items: Any) -> tuple[TokenRef, ...]:
    out: list[TokenRef] = []
    seen: set[str] = set()
    if len(items) > MAX_USER_TOKENS:
        raise SpecError("spec.userTokens", f"at most {MAX_USER_TOKENS} entries, got {len(items)}")
    for index, item in enumerate(items):
        where = f"spec.userTokens[{index}]"
        name = item.get("name") if isinstance(item, Mapping) else None
        if not isinstance(name, str) or not _TOKEN_NAME.match(name) or len(name) > 253:
            raise SpecError(f"{where}.name", "is required: the name of a UserToken of this user in this namespace")
        if name in seen:
            raise SpecError(f"{where}.name", f"{name!r} is named twice; entry names must be unique")
        seen.add(name)
        out.append(TokenRef(name=name, optional=bool(item.get("optional", False))))
    return tuple(out)
