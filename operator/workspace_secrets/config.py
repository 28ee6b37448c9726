"""Operator configuration, from the command line (and the Helm chart's values through it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    kubeconfig: str | None = None
    api_concurrency: int = 16  # parallel API requests (thread pool + connection pool size)
    secret_workers: int = 4  # reconciles driven by the Secret watch and resyncs
    resync_interval: float = 300.0  # seconds between safety-net resyncs of every WorkspaceSecret
    sweep_interval: float = 600.0  # seconds between orphan sweeps at the credential providers
    providers_config: str | None = None  # YAML file naming the dynamic-credential providers (see README)
    operator_namespace: str = "workspace-secrets-system"  # where the providers' admin credential Secrets live

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
