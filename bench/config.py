"""Benchmark sizes per mode. Only ratios (operator / API-server baseline) compare across machines."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class BenchConfig:
    mode: str
    objects: int  # WorkspaceSecrets for the baseline and the throughput run
    workspaces_per_user: int = 1  # 1: every workspace is a new user, so every one needs a fresh key (worst case)
    api_concurrency: int = 16  # the operator's --api-concurrency, and the baseline client's thread count
    create_concurrency: int = 32  # the harness's threads creating objects "at once"
    latency_rate: float = 20.0  # WorkspaceSecrets created per second, open loop
    latency_seconds: float = 60.0
    gc_rate: float = 20.0  # workspaces deleted per second
    gc_count: int = 300  # how many of the latency run's workspaces are deleted
    credential_objects: int = 50  # WorkspaceSecrets with a Kubernetes token, deleted to measure revocation
    unrelated_secrets: int = 10_000
    shard_objects: int = 1_000
    shard_instances: int = 2
    shard_namespaces: int = 4
    keygen: dict[str, int] = field(default_factory=lambda: {"ed25519": 500, "ecdsa": 500, "rsa-3072": 8, "rsa-4096": 4})
    wait_for_cleanup: bool = True  # wait until a phase's namespace is gone before the next phase measures
    traced: bool = False  # run the operators under tracemalloc (slower; for finding where memory goes)
    operator_args: tuple[str, ...] = ()  # extra flags for every operator instance (tuning experiments)
    # The scaling phase: WorkspaceSecrets existing after each step (cumulative; each step's new ones are created
    # at once). Empty: objects/10, /4, /2 and objects (1,000 -> 100, 250, 500, 1,000; 10,000 -> 1,000 ... 10,000).
    scaling_sizes: tuple[int, ...] = ()
    phases: tuple[str, ...] = ("imports", "keygen", "baseline", "baseline_full", "throughput", "unrelated", "restart", "latency", "gc",
                               "credentials", "sharding")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "scaling_sizes": list(self.sizes())}

    def sizes(self) -> tuple[int, ...]:
        """The scaling phase's steps, increasing (see scaling_sizes)."""
        sizes = self.scaling_sizes or tuple(self.objects // d for d in (10, 4, 2, 1))
        return tuple(sorted({s for s in sizes if s > 0}))


MODES: dict[str, BenchConfig] = {
    "smoke": BenchConfig(
        mode="smoke", objects=20, latency_rate=5, latency_seconds=2, gc_rate=10, gc_count=8, credential_objects=3,
        unrelated_secrets=50, shard_objects=20, keygen={"ed25519": 20, "ecdsa": 20, "rsa-3072": 1, "rsa-4096": 1},
        wait_for_cleanup=False, scaling_sizes=(10, 20),
        # Every phase, the opt-in scaling phase included, so that CI notices when any of them breaks.
        phases=(*BenchConfig.__dataclass_fields__["phases"].default, "scaling"),
    ),
    "default": BenchConfig(mode="default", objects=1_000),
    "long": BenchConfig(mode="long", objects=10_000, gc_count=600, credential_objects=100),
    # Cost per object as the number of objects grows, 1,000 -> 10,000 on one control plane (opt-in elsewhere:
    # `--phases ...,scaling`; `--sizes` picks the steps).
    "scaling": BenchConfig(mode="scaling", objects=10_000, scaling_sizes=(1_000, 2_500, 5_000, 10_000), phases=("scaling",)),
}


def for_mode(mode: str, **overrides: Any) -> BenchConfig:
    return replace(MODES[mode], **{k: v for k, v in overrides.items() if v is not None})
