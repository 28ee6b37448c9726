"""Typed view of a UserToken. The CRD's schema and CEL rules reject bad input at admission; parsing is
still defensive so that an object stored under an older schema produces a clear Condition, not a traceback.

A UserToken names an OAuthApplication (spec.application), the platform's configuration; the provider type,
host, client and scopes come from there, never from the tenant. `UserToken.from_body` parses the tenant's
part; `bind(app)` joins the application the operator read (and checked) to it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.oauth_application import (DEVICE_FLOW_TYPES, SSH_KEY_TYPES, ClientSecretRef,
                                                     OAuthApplication, VaultSpec)
from workspace_secrets.api.workspace_secret import SpecError

FLOWS = ("AuthorizationCode", "Device")
# Fields of the first UserToken schema that moved to OAuthApplication (refused by the CRD too).
REMOVED_FIELDS = ("type", "host", "clientSecretRef", "vault", "scopes")
MIGRATION = ("was removed: OAuth applications are platform configuration; set spec.application to an OAuthApplication "
             "your platform created for this namespace (ask your platform team, or: kubectl get oauthapplications)")


@dataclass(frozen=True)
class UserToken:
    namespace: str
    name: str
    uid: str
    generation: int
    user: str
    application: str  # the OAuthApplication's name
    add_ssh_key: bool
    flow: str
    secret_name: str
    refresh_request: str | None = None  # value of the refresh annotation, if any
    validate_request: str | None = None
    skip_revocation: bool = False
    deleting: bool = False
    status: Mapping[str, Any] = field(default_factory=dict)
    app: OAuthApplication | None = None  # set by bind(): the application, as read and allowed

    # --- the application's settings (only after bind) ---
    def _bound(self) -> OAuthApplication:
        if self.app is None:
            raise RuntimeError("UserToken is not bound to its OAuthApplication yet")
        return self.app

    @property
    def type(self) -> str:
        return self._bound().type

    @property
    def host(self) -> str | None:
        return self._bound().host

    @property
    def client_secret_ref(self) -> ClientSecretRef | None:
        return self._bound().client_secret_ref

    @property
    def scopes(self) -> tuple[str, ...]:
        return self._bound().scopes

    @property
    def vault(self) -> VaultSpec:
        return self._bound().vault

    @property
    def provider_key(self) -> tuple[str, str, str]:
        """(namespace, user, application): the unit refreshes are serialized on."""
        return (self.namespace, self.user, self.application)

    def bind(self, app: OAuthApplication) -> UserToken:
        """This UserToken with its application. Raises SpecError where the UserToken asks for something the
        application's type does not offer."""
        if self.add_ssh_key and app.type not in SSH_KEY_TYPES:
            raise SpecError("spec.addSSHKey", f"is not supported by OAuthApplication {app.name!r} (type {app.type})")
        if self.flow == "Device" and app.type not in DEVICE_FLOW_TYPES:
            raise SpecError("spec.flow", f"Device is not offered by OAuthApplication {app.name!r} (type {app.type}); use AuthorizationCode")
        return dataclasses.replace(self, app=app)

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> UserToken:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        annotations = meta.get("annotations") or {}
        user = spec.get("user")
        if not isinstance(user, str) or not user:
            raise SpecError("spec.user", "is required: the platform user this token belongs to")
        for removed in REMOVED_FIELDS:
            if removed in spec:
                raise SpecError(f"spec.{removed}", MIGRATION)
        application = spec.get("application")
        if not isinstance(application, str) or not application:
            raise SpecError("spec.application", "is required: the name of the OAuthApplication your platform offers for this provider")
        flow = spec.get("flow") or "AuthorizationCode"
        if flow not in FLOWS:
            raise SpecError("spec.flow", f"must be one of {', '.join(FLOWS)}, got {flow!r}")
        return cls(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta.get("uid", ""),
            generation=int(meta.get("generation", 0)),
            user=user,
            application=application,
            add_ssh_key=bool(spec.get("addSSHKey", False)),
            flow=flow,
            secret_name=spec.get("secretName") or f"{meta['name']}-token",
            refresh_request=annotations.get(c.ANNOTATION_REFRESH_TOKEN) or None,
            validate_request=annotations.get(c.ANNOTATION_VALIDATE_TOKEN) or None,
            skip_revocation=annotations.get(c.ANNOTATION_SKIP_REVOCATION) == "true",
            deleting=bool(meta.get("deletionTimestamp")),
            status=body.get("status") or {},
        )
