"""Reading what a WorkspaceSecret's spec.userTokens name: the UserTokens, their OAuthApplications and token Secrets
(I/O). What they give the workspace is decided by tokens.py (pure)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.oauth_application import app_path
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.oauth.registry import ProviderCache
from workspace_secrets.runtime.http import Request, Response, TransportError
from workspace_secrets.runtime.kube import Kube, core_path, group_path
from workspace_secrets.workspace_secret.tokens import TokensOutcome, compose, unavailable, view, VALID_PHASES


class _NoNetwork:
    """The providers are built here for their capabilities only (git access, tool files): never a request."""

    async def send(self, request: Request, *, timeout: float = 30.0) -> Response:
        raise TransportError("the workspace token reader makes no provider calls")


class WorkspaceTokens:
    def __init__(self, kube: Kube, *, providers: ProviderCache | None = None,
                 clock: Callable[[], datetime] = cond.utcnow) -> None:
        self._kube = kube
        self._providers = providers or ProviderCache(_NoNetwork())
        self._clock = clock

    async def collect(self, ws: WorkspaceSecret) -> TokensOutcome | None:
        """Read the referenced UserTokens, their applications and token Secrets; None without spec.userTokens."""
        if not ws.user_tokens:
            return None
        apps: dict[str, Mapping[str, Any] | None] = {}
        views = []
        now = self._clock()
        for ref in ws.user_tokens:
            body = await self._kube.get(group_path(c.API_VERSION, ws.namespace, c.USER_TOKEN_PLURAL, ref.name))
            spec = (body or {}).get("spec") or {}
            if body is None or spec.get("user") != ws.user:
                views.append(unavailable(ws, ref))  # nothing more is read for another user's token
                continue
            application = spec.get("application")
            app_body = None
            if isinstance(application, str) and application:
                if application not in apps:
                    apps[application] = await self._kube.get(app_path(application))
                app_body = apps[application]
            secret = None
            secret_name = spec.get("secretName") or f"{ref.name}-token"
            if (body.get("status") or {}).get("phase") in VALID_PHASES and isinstance(secret_name, str):
                secret = await self._kube.get(core_path(ws.namespace, "secrets", secret_name))
            views.append(view(ws, ref, body, app_body, secret, now=now, provider_for=self._providers.for_application))
        return compose(ws, views)
