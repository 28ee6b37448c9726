"""Operator configuration, from the command line (and the Helm chart's values through it).

The one home of every default: cli.py's flags take their defaults from these dataclasses (an environment
variable, where a flag has one, comes before the default)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workspace_secrets.api.constants import WEBHOOK_CONFIGURATION_NAME
from workspace_secrets.runtime.webhook import configuration as webhook_configuration
from workspace_secrets.runtime.webhook.tls import service_hosts


@dataclass(frozen=True)
class WebhookConfig:
    """The pod-injection admission webhook (see docs/users/pod-injection.md)."""

    enabled: bool = False
    port: int = 9443  # where the operator listens (HTTPS)
    listen_address: str | None = None  # None: 0.0.0.0 behind a Service, else `host` when it is an IP
    # Out of the cluster: the API server calls https://<host>:<port>.
    host: str = "127.0.0.1"
    # In the cluster: the API server calls this Service (namespace, name) on `service_port`.
    service: tuple[str, str] | None = None
    service_port: int = 443
    cert_dir: str | None = None  # None: a private temporary directory (a new CA on every start)
    configuration_name: str = WEBHOOK_CONFIGURATION_NAME  # the MutatingWebhookConfiguration kopf manages
    # A cert-manager Certificate (namespace, name) whose Secret is mounted at cert_dir: the configuration is annotated
    # cert-manager.io/inject-ca-from and cert-manager's cainjector, not the operator, keeps its caBundle.
    cert_manager_certificate: tuple[str, str] | None = None


@dataclass(frozen=True)
class LeaderElectionConfig:
    """--leader-elect: a coordination.k8s.io/v1 Lease; the process runs kopf and the operator only while it holds it
    (runtime/leader.py). The durations are controller-runtime's defaults."""

    enabled: bool = False
    id: str = "workspace-secrets-operator"  # the Lease's name
    namespace: str | None = None  # None: --operator-namespace
    lease_duration: float = 15.0  # a standby takes over this long after it last saw the Lease change
    renew_deadline: float = 10.0  # the leader gives up (exit 1) when it could not renew for this long
    retry_period: float = 2.0  # between attempts to acquire or renew


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    kubeconfig: str | None = None
    api_concurrency: int = 16  # parallel API requests (thread pool + connection pool size)
    # Client-side pacing of our own API requests (0: none, the default). Like controller-runtime (PR
    # #3119, on SIG API Machinery's advice) we rely on the API server's Priority and Fairness, with the
    # number of requests in flight bounded by api_concurrency: at 50 QPS, a reconcile's ~10 requests
    # capped a burst of new workspaces at ~5/s (docs/benchmarks.md).
    api_qps: float = 0.0
    api_burst: int = 100  # bursts above api_qps, when that is set
    # The API client's transport (hidden flag, while measured): "threads" (urllib3 in a thread pool, a thread per
    # watch) or "aio" (one aiohttp session on the event loop: runtime/kube_aio.py).
    api_client: str = "aio"
    workers: int = 16  # WorkspaceSecret reconciles running at a time, and likewise UserToken passes (each queue its own workers)
    resync_interval: float = 300.0  # seconds between safety-net resyncs of every WorkspaceSecret
    sweep_interval: float = 600.0  # seconds between orphan sweeps at the credential providers
    providers_config: str | None = None  # YAML file naming the dynamic-credential providers (see docs/users/credentials.md)
    # PEM CAs trusted in addition to the system store by every outgoing HTTPS client (OAuth, Vault, providers);
    # proxies come from HTTPS_PROXY/HTTP_PROXY/NO_PROXY (runtime/http.py Egress).
    ca_bundle_file: str | None = None
    operator_namespace: str = "workspace-secrets-system"  # where the providers' admin credential Secrets live
    webhook: WebhookConfig = field(default_factory=WebhookConfig)
    # Liveness: the probe fails once a Secret watch has been disconnected for longer than this. Not 0:
    # an API server restart or a watch timeout disconnects it for a moment, which is normal.
    watch_unhealthy_threshold: float = 60.0
    # Peering (several replicas, one active); None: standalone.
    peering: str | None = None
    identity: str = ""  # this replica's key in the peering object (also passed to kopf)
    priority: int = 0  # this replica's peering priority (also passed to kopf)
    peering_lifetime: int = 60  # seconds a replica's keep-alive stays valid: the failover time after a crash
    connect: ConnectConfig = field(default_factory=lambda: ConnectConfig())
    leader_election: LeaderElectionConfig = field(default_factory=lambda: LeaderElectionConfig())
    # The process (cli.py only): logs, the health probes (/healthz, /readyz; "0" disables), the Prometheus endpoint
    # ("0" disables). Bind addresses as controller-runtime's: "[HOST]:PORT", an empty HOST meaning every address.
    log_format: str = "plain"  # plain | json | full
    log_level: str = "info"  # debug | info | warning | error
    health_probe_bind_address: str = ":8080"
    metrics_bind_address: str = ":9090"
    # Deprecated spellings, kept working: kopf's --liveness URL, --metrics-port/--metrics-address.
    liveness: str = "http://0.0.0.0:8080/healthz"
    metrics_port: int = 9090
    metrics_address: str = "0.0.0.0"
    # The process ends (exit 1) if kopf has not finished stopping this long after our cleanup (a hung kopf
    # task would otherwise keep it alive for ever). None: never -- for kopf run in-process (kopf's CLI,
    # KopfRunner), where ending the process would end its host.
    shutdown_grace: float | None = None

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


@dataclass(frozen=True)
class ConnectConfig:
    """The connect page and OAuth callback server (UserTokens). See docs/users/usertoken.md."""

    port: int | None = None  # None: not served (UserTokens still get links under base_url)
    bind: str = "0.0.0.0"
    # How users' browsers reach it; the callback is <base_url>/oauth/callback. Default: local_base_url(port).
    base_url: str = "http://127.0.0.1:8081"
    user_header: str | None = None  # trusted header carrying the user name, set by the platform's auth proxy
    trusted_proxies: tuple[str, ...] = ()  # CIDRs the user header is accepted from
    signing_key_file: str | None = None  # HMAC key for CSRF tokens and OAuth state (random per process if unset)
    session_ttl: float = 8 * 3600.0
    validate_interval: float = 1800.0  # seconds between scheduled token validations


def hosts_for(webhook: WebhookConfig) -> list[str]:
    """The names the API server dials, which the webhook's serving certificate must cover."""
    return service_hosts(*webhook.service) if webhook.service else [webhook.host]


def listen_address(webhook: WebhookConfig) -> str:
    if webhook.listen_address:
        return webhook.listen_address
    if webhook.service is None:
        try:
            return str(ipaddress.ip_address(webhook.host))  # e.g. 127.0.0.1: do not listen more widely
        except ValueError:
            pass
    return "0.0.0.0"


def client_config(webhook: WebhookConfig) -> tuple[Callable[[str | None], dict[str, Any]], str]:
    """How the API server calls the webhook: caBundle (base64; None: cert-manager's) -> clientConfig, and the same
    said for a log line."""
    if webhook.service:
        target = f"Service {'/'.join(webhook.service)}:{webhook.service_port}"
        return functools.partial(webhook_configuration.service_client_config, *webhook.service, webhook.service_port), target
    target = f"https://{webhook.host}:{webhook.port}"
    return functools.partial(webhook_configuration.url_client_config, webhook.host, webhook.port), target


def parse_bind_address(value: str, flag: str = "bind address", *, every: str = "0.0.0.0") -> tuple[str, int] | None:
    """controller-runtime's bind address: "0" (or "") disables -> None; ":PORT" every address (host `every`: "" for a
    server that binds every address family itself, as the health server does); "HOST:PORT", "[IPv6]:PORT". Raises
    ValueError with a message naming `flag`."""
    value = value.strip()
    if value in ("", "0"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag}: expected [HOST]:PORT or 0, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or every, int(port)


def local_base_url(port: int | None) -> str:
    """The connect page's URL when --connect-base-url is not given: this machine, on the connect port."""
    return f"http://127.0.0.1:{port or 8081}"
