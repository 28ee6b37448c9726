"""spec.type -> provider class. Adding a provider: one module implementing base.OAuthProvider, one line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...api.usertoken import UserToken
from ..http import Transport
from .base import Clock, OAuthProvider, utcnow
from .bitbucket_cloud import BitbucketCloud
from .bitbucket_server import BitbucketServer
from .github import GitHub, GitHubEnterprise
from .gitlab import GitLab, GitLabSelfManaged
from .oidc import OIDC
from .vault import Vault

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
    """One provider instance per (type, host, vault mount/role), so discovery documents are fetched once."""

    def __init__(self, transport: Transport, *, clock: Clock = utcnow) -> None:
        self._transport = transport
        self._clock = clock
        self._cache: dict[tuple[str, ...], OAuthProvider] = {}

    def for_token(self, ut: UserToken) -> OAuthProvider:
        key = (ut.type, ut.host or "", ut.vault.mount, ut.vault.role or "")
        provider = self._cache.get(key)
        if provider is None:
            kwargs: dict[str, Any] = {"clock": self._clock}
            if ut.host:
                kwargs["host"] = ut.host
            if ut.type == "vault":
                kwargs.update(mount=ut.vault.mount, role=ut.vault.role)
            provider = self._cache[key] = PROVIDERS[ut.type](self._transport, **kwargs)
        return provider
