"""Leader election (--leader-elect): the rule (expired? ours? takeover?) as a pure function, and the elector's
reads and writes through the shared in-memory API server (tests/fakes/kube.py). The real API server, two operator
processes and a SIGKILL: tests/e2e/test_leader_election.py."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest
from fakes.kube import FakeKube

from workspace_secrets.runtime import leader
from workspace_secrets.runtime.leader import Action, LeaderElector, Observation, decide, observe

NOW = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=timezone.utc)


def spec(holder: str, renew: str = "2026-11-30T12:00:00.000000Z", duration: int = 15) -> dict:
    return {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew}


# --- the rule ---------------------------------------------------------------------------------------------
def test_no_lease_is_created_and_our_own_is_renewed():
    assert decide(False, Observation(None, 0.0), "me", 0.0, 15) is Action.CREATE
    assert decide(True, Observation(spec("me"), 0.0), "me", 100.0, 15) is Action.RENEW


def test_a_released_lease_is_taken_at_once():
    assert decide(True, Observation(spec(""), 10.0), "me", 10.0, 15) is Action.ACQUIRE
    assert decide(True, Observation({"leaseDurationSeconds": 1}, 10.0), "me", 10.0, 15) is Action.ACQUIRE


def test_another_holder_is_waited_for_until_its_lease_has_not_changed_for_a_lease_duration():
    seen = Observation(spec("other", duration=15), 100.0)
    assert decide(True, seen, "me", 100.0, 15) is Action.WAIT
    assert decide(True, seen, "me", 114.9, 15) is Action.WAIT
    assert decide(True, seen, "me", 115.0, 15) is Action.TAKEOVER
    # The Lease's own duration counts, not ours.
    assert decide(True, Observation(spec("other", duration=60), 100.0), "me", 130.0, 15) is Action.WAIT


def test_expiry_is_measured_from_when_we_saw_the_lease_change_not_from_the_holders_clock():
    """A renewTime far in the past (another machine's clock) does not make the Lease expired; a renewal restarts the wait."""
    first = observe(None, spec("other", renew="2000-01-01T00:00:00.000000Z"), now=100.0)
    assert decide(True, first, "me", 101.0, 15) is Action.WAIT
    same = observe(first, spec("other", renew="2000-01-01T00:00:00.000000Z"), now=110.0)
    assert same.at == 100.0  # unchanged: the clock keeps running
    renewed = observe(same, spec("other", renew="2000-01-01T00:00:02.000000Z"), now=112.0)
    assert renewed.at == 112.0
    assert decide(True, renewed, "me", 116.0, 15) is Action.WAIT
    assert decide(True, renewed, "me", 127.0, 15) is Action.TAKEOVER


def test_the_written_spec_counts_transitions_and_stamps_micro_time():
    created = leader.desired_spec(Action.CREATE, None, "me", 15, NOW)
    assert created == {"holderIdentity": "me", "leaseDurationSeconds": 15, "renewTime": "2026-11-30T12:00:00.123456Z",
                       "acquireTime": "2026-11-30T12:00:00.123456Z", "leaseTransitions": 0}
    renewed = leader.desired_spec(Action.RENEW, {**created, "renewTime": "x"}, "me", 15, NOW)
    assert renewed["leaseTransitions"] == 0 and renewed["acquireTime"] == created["acquireTime"]
    taken = leader.desired_spec(Action.TAKEOVER, {**spec("other"), "leaseTransitions": 3, "acquireTime": "old"}, "me", 15, NOW)
    assert taken["holderIdentity"] == "me" and taken["leaseTransitions"] == 4 and taken["acquireTime"] != "old"
    released = leader.released_spec(taken, NOW)
    assert released["holderIdentity"] == "" and released["leaseDurationSeconds"] == 1 and released["leaseTransitions"] == 4
    with pytest.raises(AssertionError):
        leader.desired_spec(Action.WAIT, None, "me", 15, NOW)


@pytest.mark.parametrize(("lease", "renew", "retry"), [
    (10, 10, 2), (12, 10, 2),  # a leader may still be renewing when a standby takes over
    (15, 10, 0), (15, -1, 2), (float("inf"), 10, 2), (15, float("nan"), 2), (15, 10, float("inf")),
])
def test_the_durations_must_nest(lease, renew, retry):
    """The leader gives up at the latest a retry period + the renew deadline after its last renewal: that must end
    before a standby may take over, a lease duration after it saw that renewal."""
    with pytest.raises(ValueError):
        LeaderElector(FakeKube(), namespace="ns", name="l", identity="a", lease_duration=lease, renew_deadline=renew,
                      retry_period=retry)
    assert leader.durations_problem(lease, renew, retry)
    assert leader.durations_problem(15, 10, 2) is None and leader.durations_problem(12.5, 10, 2) is None


# --- the elector on the in-memory API server -------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def electors(kube: FakeKube, *names: str, clock: Clock | None = None, **durations: float) -> list[LeaderElector]:
    timings = {"lease_duration": 15.0, "renew_deadline": 10.0, "retry_period": 2.0, **durations}
    return [LeaderElector(kube, namespace="ops", name="wso", identity=name, monotonic=clock or time.monotonic, **timings)
            for name in names]


LEASE = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/wso"


def test_one_leads_the_other_waits_then_takes_over_a_dead_leader():
    async def scenario() -> None:
        kube, clock = FakeKube(), Clock()
        a, b = electors(kube, "a", "b", clock=clock)
        assert await a.try_acquire_or_renew() is True
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == "a"
        assert await b.try_acquire_or_renew() is False
        clock.now += 10
        assert await a.try_acquire_or_renew() is True  # a renews: b's wait starts again when it sees the change
        assert await b.try_acquire_or_renew() is False
        clock.now += 14
        assert await b.try_acquire_or_renew() is False  # 14 s since b saw it change
        clock.now += 1  # a is dead: no renewal for a whole lease duration
        assert await b.try_acquire_or_renew() is True
        lease = kube.get_object(LEASE)["spec"]
        assert lease["holderIdentity"] == "b" and lease["leaseTransitions"] == 1
        assert await a.try_acquire_or_renew() is False  # a, back, finds b holding it

    asyncio.run(scenario())


def test_two_candidates_racing_for_an_expired_lease_one_wins_by_its_resource_version():
    async def scenario() -> None:
        kube, clock = FakeKube(), Clock()
        old, b, c = electors(kube, "old", "b", "c", clock=clock)
        assert await old.try_acquire_or_renew()
        assert not await b.try_acquire_or_renew() and not await c.try_acquire_or_renew()
        clock.now += 16
        # Both read the same expired Lease and write with its resourceVersion: the second write is a 409.
        results = await asyncio.gather(b.try_acquire_or_renew(), c.try_acquire_or_renew())
        assert sorted(results) == [False, True]
        winner = "b" if results[0] else "c"
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == winner

    asyncio.run(scenario())


def test_a_released_lease_is_taken_by_the_standby_at_its_next_attempt():
    async def scenario() -> None:
        kube, clock = FakeKube(), Clock()
        a, b = electors(kube, "a", "b", clock=clock)
        await a.acquire()
        assert a.leading.is_set()
        assert not await b.try_acquire_or_renew()
        assert await a.release() is True
        assert not a.leading.is_set()
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == ""
        assert await b.try_acquire_or_renew() is True  # no lease duration to wait
        assert await a.release() is False  # no longer ours: nothing written
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == "b"

    asyncio.run(scenario())


def test_the_leader_gives_up_when_it_cannot_renew_within_the_renew_deadline():
    async def scenario() -> float:
        kube = FakeKube()
        (a,) = electors(kube, "a", lease_duration=3.0, renew_deadline=0.6, retry_period=0.1)
        await a.acquire()
        kube.fail("PUT", "*", 500, times=None)  # the API server refuses every renewal
        started = time.monotonic()
        await asyncio.wait_for(a.hold(), 5)
        assert not a.leading.is_set()
        return time.monotonic() - started

    elapsed = asyncio.run(scenario())
    assert 0.6 <= elapsed < 2.1  # retry period + renew deadline (0.7 s; 3x on a loaded machine), before the lease (3 s) ends


def test_the_leader_gives_up_at_once_when_it_finds_the_lease_held_by_another():
    async def scenario() -> float:
        kube = FakeKube()
        (a,) = electors(kube, "a", lease_duration=5, renew_deadline=3, retry_period=0.1)
        await a.acquire()
        lease = kube.get_object(LEASE)
        kube.put(LEASE, {**lease, "spec": {**lease["spec"], "holderIdentity": "intruder"}})
        started = time.monotonic()
        await asyncio.wait_for(a.hold(), 5)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1.5  # a retry period and one request (~0.1 s); well within the renew deadline (3 s)


def test_release_after_a_conflict_reads_the_lease_again_and_releases_it_if_still_ours():
    async def scenario() -> None:
        kube = FakeKube()
        a, b = electors(kube, "a", "b")
        await a.acquire()
        await a.try_acquire_or_renew()  # a renewal a's release did not see: its resourceVersion is stale...
        a._live = {**a._live, "metadata": {**a._live["metadata"], "resourceVersion": "1"}}
        assert await a.release() is True  # ...409, read again: still a's, released
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == ""
        assert await b.try_acquire_or_renew() is True
        # Taken by b in between: a's release, after its 409, finds it b's and leaves it alone.
        a._live = {**kube.get_object(LEASE), "spec": {**kube.get_object(LEASE)["spec"], "holderIdentity": "a"}}
        a._live["metadata"] = {**a._live["metadata"], "resourceVersion": "1"}
        assert await a.release() is False
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == "b"

    asyncio.run(scenario())


class SlowAnswers(FakeKube):
    """The API server takes the write, but its answer is slow: the caller may be cancelled before it arrives."""

    async def create(self, path, body):
        written = await super().create(path, body)
        await asyncio.sleep(5)
        return written


def test_cancelled_while_its_acquiring_write_is_in_flight_it_releases_what_the_write_took():
    """SIGTERM while standing by, just as the create of the Lease was sent: the Lease names us although acquire()
    never returned; on cancellation the elector reads it and releases it, so a standby need not wait it out."""
    async def scenario() -> None:
        kube = SlowAnswers()
        (a,) = electors(kube, "a")
        task = asyncio.create_task(a.acquire())
        while kube.get_object(LEASE) is None:
            await asyncio.sleep(0.01)
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == "a"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == ""
        assert not a.leading.is_set()

    asyncio.run(scenario())


def test_cancelled_while_standing_by_it_leaves_anothers_lease_alone():
    async def scenario() -> None:
        kube = FakeKube()
        a, b = electors(kube, "a", "b")
        await a.acquire()
        task = asyncio.create_task(b.acquire())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert kube.get_object(LEASE)["spec"]["holderIdentity"] == "a"

    asyncio.run(scenario())

