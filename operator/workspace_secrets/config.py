"""Operator configuration, from the command line (and the Helm chart's values through it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    kubeconfig: str | None = None
    api_concurrency: int = 16  # parallel API requests (thread pool + connection pool size)
    secret_workers: int = 4  # reconciles driven by the Secret watch and resyncs
    resync_interval: float = 300.0  # seconds between safety-net resyncs of every WorkspaceSecret
    extra: dict = field(default_factory=dict)
    connect: ConnectConfig = field(default_factory=lambda: ConnectConfig())

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


@dataclass(frozen=True)
class ConnectConfig:
    """The connect page and OAuth callback server (UserTokens). See README "UserToken"."""

    port: int | None = None  # None: not served (UserTokens still get links under base_url)
    bind: str = "0.0.0.0"
    base_url: str = "http://127.0.0.1:8081"  # how users' browsers reach it; the callback is <base_url>/oauth/callback
    user_header: str | None = None  # trusted header carrying the user name, set by the platform's auth proxy
    trusted_proxies: tuple[str, ...] = ()  # CIDRs the user header is accepted from
    signing_key_file: str | None = None  # HMAC key for links, sessions and state (random per process if unset)
    link_ttl: float = 3600.0  # seconds a status.authorizationURL stays valid
    session_ttl: float = 8 * 3600.0
    validate_interval: float = 1800.0  # seconds between scheduled token validations
