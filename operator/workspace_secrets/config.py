"""Operator configuration, from the command line (and the Helm chart's values through it)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    kubeconfig: str | None = None
    api_concurrency: int = 16  # parallel API requests (thread pool + connection pool size)
    api_qps: float = 50.0  # client-side pacing of our own API requests (0: unlimited) ...
    api_burst: int = 100  # ... with bursts up to this many
    secret_workers: int = 4  # reconciles driven by the Secret watch and resyncs
    resync_interval: float = 300.0  # seconds between safety-net resyncs of every WorkspaceSecret
    # Liveness: the probe fails once a Secret watch has been disconnected for longer than this. Not 0:
    # an API server restart or a watch timeout disconnects it for a moment, which is normal.
    watch_unhealthy_threshold: float = 60.0
    # Peering (several replicas, one active); None: standalone.
    peering: str | None = None
    identity: str = ""  # this replica's key in the peering object (also passed to kopf)
    priority: int = 0  # this replica's peering priority (also passed to kopf)
    peering_lifetime: int = 60  # seconds a replica's keep-alive stays valid: the failover time after a crash
    extra: dict = field(default_factory=dict)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
