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

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
