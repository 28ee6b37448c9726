"""OAuthApplication spec.type -> provider class. Adding a provider: one module implementing base.OAuthProvider,
one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from workspace_secrets.api.oauth_application import OAuthApplication
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.runtime.http import Transport, with_ca_bundle
from workspace_secrets.oauth.base import Clock, OAuthProvider, utcnow
from workspace_secrets.oauth.bitbucket_cloud import BitbucketCloud
from workspace_secrets.oauth.bitbucket_server import BitbucketServer
from workspace_secrets.oauth.github import GitHub, GitHubEnterprise
from workspace_secrets.oauth.gitlab import GitLab, GitLabSelfManaged
from workspace_secrets.oauth.oidc import OIDC
from workspace_secrets.oauth.vault import Vault

PROVIDERS: dict[str, Callable[..., Any]] = {
    "github": GitHub,
    "github-enterprise": GitHubEnterprise,
    "gitlab": GitLab,
    "gitlab-self-managed": GitLabSelfManaged,
    "bitbucket-cloud": BitbucketCloud,
    "bitbucket-server": BitbucketServer,
    "vault": Vault,
    "oidc": OIDC,
}


class ProviderCache:
    """One provider instance per OAuthApplication, rebuilt when the application changes (its resourceVersion),
    so discovery documents are fetched once per version of the platform's configuration."""

    def __init__(self, transport: Transport, *, clock: Clock = utcnow) -> None:
        self._transport = transport
        self._clock = clock
        self._cache: dict[str, tuple[str, OAuthProvider]] = {}  # application name -> (resourceVersion, provider)

    def for_application(self, app: OAuthApplication) -> OAuthProvider:
        cached = self._cache.get(app.name)
        if cached is not None and cached[0] == app.resource_version:
            return cached[1]
        kwargs: dict[str, Any] = {"clock": self._clock}
        if app.host:
            kwargs["host"] = app.host
        if app.type == "vault":
            kwargs.update(mount=app.vault.mount, role=app.vault.role)
        # The platform's spec.caBundle: trusted for this application's server only, besides the operator's CAs.
        transport = with_ca_bundle(self._transport, app.ca_bundle)
        provider: OAuthProvider = PROVIDERS[app.type](transport, **kwargs)
        self._cache[app.name] = (app.resource_version, provider)
        return provider

    def for_token(self, ut: UserToken) -> OAuthProvider:
        """The provider of a UserToken bound to its application (UserToken.bind)."""
        assert ut.app is not None, "bind the UserToken to its OAuthApplication first"
        return self.for_application(ut.app)
