"""kopf peering: several replicas, one active -- and the operator's own work pausing with kopf.

Deprecated (`--peering`, kept working): `--leader-elect` (runtime/leader.py) runs kopf and the operator only in the
replica holding a coordination.k8s.io Lease, so nothing needs pausing and a standby takes over within the lease
duration (15 s) rather than the peering lifetime (60 s).

Three parts, top to bottom: the rule that decides whether this replica is active (pure), the peering
objects (read their status, create them if missing), and the PeeringGate that pauses the operator's
own work (Secret watch reactions, resyncs, the work queue) while kopf's peering has paused kopf.

The rule. kopf pauses its own watches when a live peer with a higher priority -- or with the *same*
priority -- exists, but it does not expose that state to other tasks. The operator's own Secret watch,
resync loop and work queue must pause with it, so they apply kopf's rule to the same peering object
(kopf/_core/engines/peering.py: process_peering_event). A peer is alive until lastseen + lifetime.
Replica priorities: with the same priority kopf pauses *every* replica, so replicas need distinct
priorities. `auto_priority` makes the earliest-started replica the highest (it stays active; a restarted
replica queues behind the running one instead of taking over), with random low digits against ties.

The objects. kopf never creates the peering object it is told to use (`--peering NAME`), and without it
every replica stays paused forever, so the operator creates it at start-up (the CRDs come from
crds/kopf-peering.yaml).

The gate reads the same peering object every `interval` seconds and applies the rule. The two can
disagree for up to `interval` (plus kopf's own watch latency) around a handover; both sides only ever
do idempotent compare-and-swap writes keyed by deterministic names, so a brief overlap costs at most a
repeated, harmless reconcile -- never a duplicate or lost Secret (see docs/operators/reliability.md).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from workspace_secrets.runtime.kube import Conflict, Kube, KubeError, NotFound, group_path
from workspace_secrets.runtime.metrics import PEERING_ACTIVE

log = logging.getLogger(__name__)


# --- the rule (pure) ------------------------------------------------------------------------------------
#: Fits in a JSON number exactly (< 2**53): (2**41 - epoch milliseconds) * 1000 + 0..999.
_EPOCH_MS_CEILING = 2**41


@dataclass(frozen=True)
class Peer:
    identity: str
    priority: int
    deadline: datetime


def peers(status: Mapping[str, Any] | None) -> list[Peer]:
    result = []
    for identity, info in (status or {}).items():
        if not isinstance(info, Mapping):
            continue
        try:
            lastseen = datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
            result.append(Peer(identity, int(info.get("priority", 0)), lastseen + timedelta(seconds=int(info.get("lifetime", 60)))))
        except (KeyError, ValueError, TypeError):
            continue  # an entry we cannot read is not a live peer (kopf would fail on it too)
    return result


def blocking_peers(status: Mapping[str, Any] | None, identity: str, priority: int, now: datetime) -> list[Peer]:
    """Live peers (other than us) that make kopf pause this replica: priority >= ours."""
    return [p for p in peers(status) if p.identity != identity and p.deadline > now and p.priority >= priority]


def is_active(status: Mapping[str, Any] | None, identity: str, priority: int, now: datetime) -> bool:
    return not blocking_peers(status, identity, priority, now)


def auto_priority(now: datetime, rng: random.Random | None = None) -> int:
    """Earlier start -> higher priority; see the module docstring."""
    epoch_ms = int(now.timestamp() * 1000)
    return (_EPOCH_MS_CEILING - epoch_ms) * 1000 + (rng or random).randrange(1000)


# --- the peering objects (group kopf.dev) ---------------------------------------------------------------
GROUP_VERSION = "kopf.dev/v1"


def peering_path(name: str, namespace: str | None) -> str:
    if namespace is None:
        return f"/apis/{GROUP_VERSION}/clusterkopfpeerings/{name}"
    return group_path(GROUP_VERSION, namespace, "kopfpeerings", name)


async def read_status(kube: Kube, name: str, namespace: str | None) -> Mapping[str, Any] | None:
    """The peering object's status (replica identity -> keep-alive), or None if the object is missing."""
    obj = await kube.get(peering_path(name, namespace))
    return None if obj is None else (obj.get("status") or {})


async def ensure(kube: Kube, name: str, namespace: str | None) -> bool:
    """Create the peering object if it does not exist. True if we created it."""
    if await kube.get(peering_path(name, namespace)) is not None:
        return False
    kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    try:
        await kube.create(peering_path(name, namespace).rsplit("/", 1)[0], {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": metadata})
    except Conflict:
        return False  # another replica created it first
    except NotFound as exc:
        raise NotFound(exc.status, exc.reason, f"{kind} is not served: apply crds/kopf-peering.yaml ({exc.message})") from None
    return True


# --- the gate ------------------------------------------------------------------------------------------
class PeeringGate:
    def __init__(
        self,
        kube: Kube,
        *,
        name: str,
        namespaces: Sequence[str | None],
        identity: str,
        priority: int,
        active: asyncio.Event,
        clock: Callable[[], datetime],
        on_activated: Callable[[], None] = lambda: None,
        interval: float = 2.0,
    ) -> None:
        self._kube = kube
        self._name = name
        self._namespaces = list(namespaces)  # [None]: cluster-wide (ClusterKopfPeering)
        self._identity = identity
        self._priority = priority
        self._active = active
        self._clock = clock
        self._on_activated = on_activated
        self._interval = interval
        PEERING_ACTIVE.set(0)

    async def ensure_objects(self) -> None:
        """Create missing peering objects. Not fatal: without one, this replica (and kopf) stays paused,
        which is safe, and says so in the log until someone creates it (the Helm chart does)."""
        for namespace in self._namespaces:
            where = f" in {namespace!r}" if namespace else ""
            try:
                if await ensure(self._kube, self._name, namespace):
                    log.info("Created the peering object %r%s.", self._name, where)
            except KubeError as exc:
                log.warning("Peering object %r%s is missing and could not be created (%s %s: %s); every replica "
                            "stays paused until it exists: apply crds/kopf-peering.yaml and create it, or allow the "
                            "operator to create it.", self._name, where, exc.status, exc.reason, exc.message)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except KubeError as exc:  # keep the last decision; kopf cannot see the API either
                log.warning("peering %r: could not read the peering object (%s %s)", self._name, exc.status, exc.reason)
            except Exception as exc:  # noqa: BLE001 - a connection error; retried next interval
                log.warning("peering %r: could not read the peering object (%s)", self._name, type(exc).__name__)
            await asyncio.sleep(self._interval)

    async def check(self) -> bool:
        now = self._clock()
        active = True
        for namespace in self._namespaces:
            status = await read_status(self._kube, self._name, namespace)
            if status is None or not is_active(status, self._identity, self._priority, now):
                active = False  # no object: kopf never resumes either
        self._set(active)
        return active

    def _set(self, active: bool) -> None:
        if active == self._active.is_set():
            return
        PEERING_ACTIVE.set(1 if active else 0)
        if active:
            log.info("Peering %r: this replica is active; resuming the Secret watch reactions and resyncs.", self._name)
            self._active.set()
            self._on_activated()
        else:
            log.info("Peering %r: another replica is active; pausing the Secret watch reactions and resyncs.", self._name)
            self._active.clear()
