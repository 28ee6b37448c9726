"""Typed view of an OAuthApplication: the platform's OAuth client for one provider (type, host, client Secret in
the operator's namespace, scopes) and which namespaces' UserTokens may use it. Cluster-scoped, created by the
platform; tenants name one in UserToken.spec.application and never see its Secret or choose its host.

The CRD's schema and CEL rules reject bad input at admission; parsing is still defensive so that an object
stored under an older schema produces a clear Condition, not a traceback."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import quote, urlsplit

from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Problem
from workspace_secrets.api.pem import certificates_problem
from workspace_secrets.api.workspace_secret import SpecError

KIND = "OAuthApplication"
PLURAL = "oauthapplications"

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
# The public service of the types whose host defaults (shown in status.host).
DEFAULT_HOSTS: dict[str, str] = {"github": "https://github.com", "gitlab": "https://gitlab.com", "bitbucket-cloud": "https://bitbucket.org"}
# Types that are git providers with an SSH-key API (UserToken spec.addSSHKey).
SSH_KEY_TYPES = frozenset({"github", "github-enterprise", "gitlab", "gitlab-self-managed", "bitbucket-cloud", "bitbucket-server"})
# Types whose provider offers the device flow (RFC 8628); oidc: when discovery lists the endpoint.
DEVICE_FLOW_TYPES = frozenset({"github", "github-enterprise", "gitlab", "gitlab-self-managed", "oidc"})

_HOST = re.compile(r"^(https://[^/?#@]+|http://(127\.0\.0\.1|localhost|\[::1\])(:[0-9]+)?)(/[^?#]*)?$")


def app_path(name: str) -> str:
    """The API path of one OAuthApplication (cluster-scoped)."""
    return f"/apis/{c.API_VERSION}/{PLURAL}/{quote(name, safe='')}"


def origin(url: str) -> str:
    """scheme://host[:port] of a URL, lower-cased; '' when it has none."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


@dataclass(frozen=True)
class ClientSecretRef:
    name: str  # in the operator's namespace
    client_id_key: str = "client-id"
    client_secret_key: str = "client-secret"


@dataclass(frozen=True)
class VaultSpec:
    mount: str = "oidc"
    role: str | None = None


@dataclass(frozen=True)
class OAuthApplication:
    name: str
    resource_version: str
    type: str
    host: str | None
    client_secret_ref: ClientSecretRef | None
    scopes: tuple[str, ...]
    vault: VaultSpec
    allowed_namespaces: tuple[str, ...]
    #: spec.caBundle: PEM CA certificates trusted for this application's server, besides the operator's own
    #: (the system store and --ca-bundle-file). Public material; only the platform writes an OAuthApplication.
    ca_bundle: str | None = None

    @property
    def display_host(self) -> str:
        return self.host or DEFAULT_HOSTS.get(self.type, "")

    def allows(self, namespace: str) -> bool:
        """Whether UserTokens in `namespace` may use this application: a glob of allowedNamespaces matches.
        Deny by default (no list, an empty list)."""
        return any(fnmatchcase(namespace, pattern) for pattern in self.allowed_namespaces)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> OAuthApplication:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        type_ = spec.get("type")
        if type_ not in PROVIDER_TYPES:
            raise SpecError("spec.type", f"must be one of {', '.join(PROVIDER_TYPES)}, got {type_!r}")
        host = spec.get("host") or None
        if host is None and PROVIDER_TYPES[type_]:
            raise SpecError("spec.host", f"is required for type {type_}")
        if host is not None and not _HOST.match(host):
            raise SpecError("spec.host", "must be an https URL (http only for loopback addresses)")
        ref = spec.get("clientSecretRef")
        if not isinstance(ref, Mapping) and type_ != "vault":
            raise SpecError("spec.clientSecretRef", "is required for this type")
        allowed = spec.get("allowedNamespaces")
        if not isinstance(allowed, list):
            raise SpecError("spec.allowedNamespaces", "is required")
        vault = spec.get("vault") or {}
        ca_bundle = spec.get("caBundle") or None
        if ca_bundle is not None and (problem := ca_bundle_problem(ca_bundle)):
            raise SpecError("spec.caBundle", problem)
        return cls(
            name=meta.get("name", ""),
            resource_version=str(meta.get("resourceVersion", "")),
            type=type_,
            host=host.rstrip("/") if host else None,
            client_secret_ref=ClientSecretRef(
                name=str(ref.get("name", "")),
                client_id_key=ref.get("clientIDKey") or "client-id",
                client_secret_key=ref.get("clientSecretKey") or "client-secret",
            ) if isinstance(ref, Mapping) else None,
            scopes=tuple(str(s) for s in spec.get("scopes") or ()),
            vault=VaultSpec(mount=(vault.get("mount") or "oidc").strip("/"), role=vault.get("role") or None),
            allowed_namespaces=tuple(str(p) for p in allowed),
            ca_bundle=ca_bundle,
        )


#: The largest spec.caBundle (the CRD's maxLength): a private CA chain is a few KiB.
MAX_CA_BUNDLE = 65536


def ca_bundle_problem(value: Any) -> str | None:
    """Why spec.caBundle is unusable (None: it is PEM CA certificates, and nothing else: api/pem.py's allowlist,
    the CRD's CEL rule). The value itself is never quoted."""
    if not isinstance(value, str):
        return "must be a string of PEM certificates"
    if len(value) > MAX_CA_BUNDLE:
        return f"is longer than {MAX_CA_BUNDLE} characters"
    return certificates_problem(value)


def unavailable_application(application: str, namespace: str) -> Problem:
    """One message for "no such OAuthApplication" and "not allowed in this namespace": a tenant learns no more
    about the platform's applications than that this name cannot be used here."""
    return Problem("ApplicationNotFound",
                   f"OAuthApplication {application!r} does not exist or may not be used in namespace {namespace!r}: set "
                   "spec.application to an application your platform offers for this namespace, or ask the platform team to "
                   "allow this namespace in its spec.allowedNamespaces.")
