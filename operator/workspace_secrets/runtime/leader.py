"""Leader election on a coordination.k8s.io/v1 Lease (--leader-elect), as controller-runtime's managers do it.

The process acquires the Lease before it starts kopf and the operator, renews it every retry period while it runs,
and -- like controller-runtime -- ends (exit 1) when it could not renew within the renew deadline: a replica that may
have lost the Lease must stop acting before a standby can take over. That holds as long as the durations nest (lease
duration > renew deadline + retry period, checked) and this process's event loop is not blocked for longer than the
slack between them (lease duration - renew deadline - retry period); a process frozen for longer (SIGSTOP, a VM
pause) can wake up still acting after a standby has taken over -- as with client-go, a lease is no fence. On a
graceful stop it releases the Lease (holder cleared), so a standby takes over at its next attempt instead of a lease
duration later.

Top to bottom: the rule (pure: what to do with the Lease as read), the Lease object's body, and the elector that
reads and writes the Lease (every write a compare-and-swap on its resourceVersion).

The rule is client-go's: a standby does not trust the holder's renewTime (another machine's clock) but the time
*it* last saw the Lease change; the Lease has expired when it has not changed for leaseDurationSeconds since.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from workspace_secrets.runtime.kube import Conflict, Kube, KubeError, group_path
from workspace_secrets.runtime.metrics import LEADER_ELECTION_LEADING

log = logging.getLogger(__name__)

API_VERSION = "coordination.k8s.io/v1"


# --- the rule (pure) ------------------------------------------------------------------------------------
class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, held by us
    RENEW = "renew"  # ours: bump renewTime
    ACQUIRE = "acquire"  # released (no holder): take it
    TAKEOVER = "takeover"  # another holder that has not renewed for a lease duration: take it
    WAIT = "wait"  # another holder, still valid


@dataclass(frozen=True)
class Observation:
    """The Lease's spec as last seen, and when (this process's monotonic clock)."""

    spec: Mapping[str, Any] | None
    at: float


def holder(spec: Mapping[str, Any] | None) -> str:
    return str((spec or {}).get("holderIdentity") or "")


def lease_duration(spec: Mapping[str, Any] | None, default: float) -> float:
    try:
        value = float((spec or {}).get("leaseDurationSeconds") or 0)
    except (TypeError, ValueError):
        return default
    return value if value > 0 else default


def observe(previous: Observation | None, spec: Mapping[str, Any] | None, now: float) -> Observation:
    """The new observation: its time moves only when the Lease changed (a renewal is a change)."""
    if previous is not None and previous.spec == spec:
        return previous
    return Observation(dict(spec) if spec is not None else None, now)


def decide(exists: bool, observation: Observation, identity: str, now: float, default_duration: float) -> Action:
    if not exists:
        return Action.CREATE
    current = holder(observation.spec)
    if current == identity:
        return Action.RENEW
    if not current:
        return Action.ACQUIRE
    if now >= observation.at + lease_duration(observation.spec, default_duration):
        return Action.TAKEOVER
    return Action.WAIT


def micro_time(moment: datetime) -> str:
    """A Lease's MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def desired_spec(action: Action, spec: Mapping[str, Any] | None, identity: str, duration: float, now: datetime) -> dict[str, Any]:
    """The spec we write for `action` (not WAIT): other fields of the live spec are kept."""
    assert action is not Action.WAIT
    stamp = micro_time(now)
    result = dict(spec or {})
    result.update(holderIdentity=identity, leaseDurationSeconds=max(1, math.ceil(duration)), renewTime=stamp)
    if action is not Action.RENEW:
        result["acquireTime"] = stamp
        transitions = int(result.get("leaseTransitions") or 0)
        result["leaseTransitions"] = transitions + 1 if action is not Action.CREATE else 0
    return result


def released_spec(spec: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """client-go's release: no holder, a 1 s duration, so a standby takes it at its next attempt."""
    stamp = micro_time(now)
    result = dict(spec)
    result.update(holderIdentity="", leaseDurationSeconds=1, renewTime=stamp, acquireTime=stamp)
    return result


def durations_problem(lease_duration: float, renew_deadline: float, retry_period: float) -> str | None:
    """Why the three durations cannot work (None: they can). A leader gives up at the latest a retry period plus a
    renew deadline after its last renewal; a standby takes over a lease duration after it saw that renewal: the
    first must come first."""
    values = {"lease duration": lease_duration, "renew deadline": renew_deadline, "retry period": retry_period}
    for name, value in values.items():
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            return f"the {name} must be a positive, finite number of seconds, got {value!r}"
    if not lease_duration > renew_deadline + retry_period:
        return (f"needs lease duration > renew deadline + retry period, got {lease_duration:g}s <= "
                f"{renew_deadline:g}s + {retry_period:g}s: a leader that cannot renew must have given up before a "
                "standby may take over")
    return None


# --- the elector -----------------------------------------------------------------------------------------
class LeaderElector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        problem = durations_problem(lease_duration, renew_deadline, retry_period)
        if problem:
            raise ValueError(f"leader election: {problem}")
        self._kube = kube
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration, self.renew_deadline, self.retry_period = lease_duration, renew_deadline, retry_period
        self._monotonic = monotonic
        self._wall = wall
        self._observation: Observation | None = None
        self._live: dict[str, Any] | None = None  # the Lease as last read or written by us
        self.leading = asyncio.Event()
        LEADER_ELECTION_LEADING.set(0)

    @property
    def path(self) -> str:
        return group_path(API_VERSION, self.namespace, "leases", self.name)

    def __str__(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    async def try_acquire_or_renew(self) -> bool:
        """One attempt: read the Lease, decide, write it with its resourceVersion. True if we hold it now."""
        live = await self._kube.get(self.path)
        now = self._monotonic()
        spec = live.get("spec") if live is not None else None
        self._observation = observe(self._observation, spec, now)
        action = decide(live is not None, self._observation, self.identity, now, self.lease_duration)
        if action is Action.WAIT:
            return False
        body = {
            "apiVersion": API_VERSION, "kind": "Lease",
            "metadata": (dict(live["metadata"]) if live is not None
                         else {"name": self.name, "namespace": self.namespace}),
            "spec": desired_spec(action, spec, self.identity, self.lease_duration, self._wall()),
        }
        body["metadata"].pop("managedFields", None)
        try:
            if live is None:
                written = await self._kube.create(self.path.rsplit("/", 1)[0], body)
            else:
                written = await self._kube.replace(self.path, body)  # compare-and-swap: resourceVersion
        except Conflict:
            return False  # someone else wrote it first (another candidate, or it already exists): read again
        self._live = written
        self._observation = Observation(dict(written.get("spec") or {}), self._monotonic())
        if action is not Action.RENEW:
            log.info("%s acquired by %s (%s)", self, self.identity, action.value)
        return True

    async def _attempt(self, timeout: float) -> bool:
        # Every request of the elector is bounded by the renew deadline (or what is left of it) here: Kube's verbs
        # take no per-request timeout, so a request that does not answer is abandoned, not stopped -- its worker
        # thread stays until urllib3's own timeout (Kube's 30 s); Kube(max_concurrency=2) bounds those threads.
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout)
        except asyncio.TimeoutError:
            log.warning("%s: no answer from the API server within %.1fs", self, timeout)
        except KubeError as exc:
            log.warning("%s: %s %s: %s", self, exc.status, exc.reason, exc.message)
        except Exception as exc:  # noqa: BLE001 - a connection failure: retried
            log.warning("%s: %s: %s", self, type(exc).__name__, exc)
        return False

    async def acquire(self) -> None:
        """Return once this process holds the Lease (tries every retry period). Cancelled (SIGTERM while standing
        by), it releases the Lease if a write of ours that was in flight took it after all."""
        announced = False
        try:
            while True:
                if await self._attempt(self.renew_deadline):
                    self.leading.set()
                    LEADER_ELECTION_LEADING.set(1)
                    return
                if not announced:
                    log.info("%s is held by %r: standing by", self,
                             holder(self._observation.spec if self._observation else None))
                    announced = True
                await asyncio.sleep(self.retry_period)
        except asyncio.CancelledError:
            await self._release_if_ours()
            raise

    async def _release_if_ours(self) -> None:
        """Read the Lease and release it if it names us (our identity is this process's own: a random suffix)."""
        try:
            live = await asyncio.wait_for(self._kube.get(self.path), self.renew_deadline)
        except Exception as exc:  # noqa: BLE001 - nothing more to do: it expires if it was ours
            log.warning("%s: could not read it on the way out (%s)", self, type(exc).__name__)
            return
        if live is not None and holder(live.get("spec")) == self.identity:
            self._live = live
            await self.release()

    async def hold(self) -> None:
        """Renew every retry period; return when leadership is lost: no renewal within the renew deadline, or
        the Lease found held by someone else. The caller must then stop acting at once."""
        while True:
            await asyncio.sleep(self.retry_period)
            deadline = self._monotonic() + self.renew_deadline
            while True:
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    log.error("%s: could not renew within the renew deadline (%.0fs)", self, self.renew_deadline)
                    self.leading.clear()
                    LEADER_ELECTION_LEADING.set(0)
                    return
                if await self._attempt(remaining):
                    break
                current = holder(self._observation.spec if self._observation else None)
                if self._observation is not None and current != self.identity:
                    log.error("%s: now held by %r", self, current)
                    self.leading.clear()
                    LEADER_ELECTION_LEADING.set(0)
                    return
                await asyncio.sleep(min(self.retry_period, max(0.0, deadline - self._monotonic())))

    async def release(self) -> bool:
        """Clear the holder if it is still us (compare-and-swap): a standby takes over at its next attempt. On a
        409 (our own renewal raced it) the Lease is read again and released if it is still ours."""
        self.leading.clear()
        LEADER_ELECTION_LEADING.set(0)
        live = self._live
        for attempt in range(3):
            if live is None or holder(live.get("spec")) != self.identity:
                return False
            body = {"apiVersion": API_VERSION, "kind": "Lease", "metadata": dict(live["metadata"]),
                    "spec": released_spec(live.get("spec") or {}, self._wall())}
            body["metadata"].pop("managedFields", None)
            try:
                await asyncio.wait_for(self._kube.replace(self.path, body), self.renew_deadline)
            except Conflict:
                try:
                    live = await asyncio.wait_for(self._kube.get(self.path), self.renew_deadline)
                except Exception as exc:  # noqa: BLE001 - the standby takes over once the lease expires
                    log.warning("%s: could not release (%s); a standby takes over when it expires", self,
                                type(exc).__name__)
                    return False
                continue
            except Exception as exc:  # noqa: BLE001 - the standby takes over once the lease expires
                log.warning("%s: could not release (%s); a standby takes over when it expires", self, type(exc).__name__)
                return False
            self._live = None
            log.info("%s released", self)
            return True
        log.warning("%s: could not release (it kept changing); a standby takes over when it expires", self)
        return False
