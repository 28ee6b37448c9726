"""Typed view of a UserToken. The CRD's schema and CEL rules reject bad input at admission; parsing is
still defensive so that an object stored under an older schema produces a clear Condition, not a traceback."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import constants as c
from .workspacesecret import SpecError

# type -> whether spec.host is required. Cloud services default to their public host.
PROVIDER_TYPES: dict[str, bool] = {
    "github": False,
    "github-enterprise": True,
    "gitlab": False,
    "gitlab-self-managed": True,
    "bitbucket-cloud": False,
    "bitbucket-server": True,
    "vault": True,
    "oidc": True,
}
# Types that are git providers with an SSH-key API (spec.addSSHKey).
SSH_KEY_TYPES = frozenset({"github", "github-enterprise", "gitlab", "gitlab-self-managed", "bitbucket-cloud", "bitbucket-server"})
FLOWS = ("AuthorizationCode", "Device")
# Types whose provider offers the device flow (RFC 8628); oidc: when discovery lists the endpoint.
DEVICE_FLOW_TYPES = frozenset({"github", "github-enterprise", "gitlab", "gitlab-self-managed", "oidc"})

_HOST = re.compile(r"^(https://[^/?#@]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?)(/[^?#]*)?$")


@dataclass(frozen=True)
class ClientSecretRef:
    name: str
    client_id_key: str = "client-id"
    client_secret_key: str = "client-secret"


@dataclass(frozen=True)
class VaultSpec:
    mount: str = "oidc"
    role: str | None = None


@dataclass(frozen=True)
class UserToken:
    namespace: str
    name: str
    uid: str
    generation: int
    user: str
    type: str
    host: str | None
    client_secret_ref: ClientSecretRef | None
    scopes: tuple[str, ...]
    add_ssh_key: bool
    flow: str
    secret_name: str
    vault: VaultSpec = VaultSpec()
    refresh_request: str | None = None  # value of the refresh annotation, if any
    validate_request: str | None = None
    skip_revocation: bool = False
    deleting: bool = False
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def provider_key(self) -> tuple[str, str, str, str]:
        """(namespace, user, type, host): the unit refreshes are serialized on."""
        return (self.namespace, self.user, self.type, self.host or "")

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> UserToken:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        annotations = meta.get("annotations") or {}
        user = spec.get("user")
        if not isinstance(user, str) or not user:
            raise SpecError("spec.user", "is required: the platform user this token belongs to")
        type_ = spec.get("type")
        if type_ not in PROVIDER_TYPES:
            raise SpecError("spec.type", f"must be one of {', '.join(PROVIDER_TYPES)}, got {type_!r}")
        host = spec.get("host") or None
        if host is None and PROVIDER_TYPES[type_]:
            raise SpecError("spec.host", f"is required for type {type_}: set it to the server's https URL")
        if host is not None and not _HOST.match(host):
            raise SpecError("spec.host", f"must be an https URL (http only for loopback addresses), got {host!r}")
        ref = spec.get("clientSecretRef")
        if ref is None and type_ != "vault":
            raise SpecError("spec.clientSecretRef", "is required: name the Secret holding the OAuth client-id and client-secret")
        add_ssh_key = bool(spec.get("addSSHKey", False))
        if add_ssh_key and type_ not in SSH_KEY_TYPES:
            raise SpecError("spec.addSSHKey", f"is not supported for type {type_}")
        flow = spec.get("flow") or "AuthorizationCode"
        if flow not in FLOWS:
            raise SpecError("spec.flow", f"must be one of {', '.join(FLOWS)}, got {flow!r}")
        if flow == "Device" and type_ not in DEVICE_FLOW_TYPES:
            raise SpecError("spec.flow", f"Device is not offered by type {type_}; use AuthorizationCode")
        vault = spec.get("vault") or {}
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 0)),
            user=user,
            type=type_,
            host=host.rstrip("/") if host else None,
            client_secret_ref=ClientSecretRef(
                name=ref["name"],
                client_id_key=ref.get("clientIDKey") or "client-id",
                client_secret_key=ref.get("clientSecretKey") or "client-secret",
            )
            if ref
            else None,
            scopes=tuple(spec.get("scopes") or ()),
            add_ssh_key=add_ssh_key,
            flow=flow,
            secret_name=spec.get("secretName") or f"{meta['name']}-token",
            vault=VaultSpec(mount=(vault.get("mount") or "oidc").strip("/"), role=vault.get("role") or None),
            refresh_request=annotations.get(c.ANNOTATION_REFRESH_TOKEN) or None,
            validate_request=annotations.get(c.ANNOTATION_VALIDATE_TOKEN) or None,
            skip_revocation=annotations.get(c.ANNOTATION_SKIP_REVOCATION) == "true",
            deleting=bool(meta.get("deletionTimestamp")),
            status=body.get("status") or {},
        )
