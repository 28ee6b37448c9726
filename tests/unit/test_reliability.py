"""Unit tests for the reliability pieces: the peering rule, request pacing, the work queue's delays and
pause, and the control plane's restart bookkeeping. No cluster, no network."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
from datetime import datetime, timedelta, timezone

import pytest

from workspace_secrets.runtime.workqueue import WorkQueue
from workspace_secrets.runtime import peering
from workspace_secrets.runtime.kube import KubeError
from workspace_secrets.runtime.ratelimit import RateLimiter
from devcluster.controlplane import ControlPlaneError, ProcessRecord, RunRecord, _flag

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def keepalive(priority: int, seen_ago: float, lifetime: int = 60) -> dict:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat()}


# --- peering: kopf's rule --------------------------------------------------------------------------
def test_alone_or_above_every_live_peer_is_active():
    assert peering.is_active({}, "me", 10, NOW)
    assert peering.is_active({"me": keepalive(10, 1)}, "me", 10, NOW)
    assert peering.is_active({"me": keepalive(10, 1), "other": keepalive(5, 1)}, "me", 10, NOW)


def test_a_live_peer_with_a_higher_or_equal_priority_pauses_us():
    assert not peering.is_active({"other": keepalive(11, 1)}, "me", 10, NOW)
    # kopf pauses *all* replicas of the same priority: hence distinct (auto) priorities.
    assert not peering.is_active({"other": keepalive(10, 1)}, "me", 10, NOW)


def test_a_peer_whose_keepalive_expired_is_dead():
    assert peering.is_active({"other": keepalive(99, 61, lifetime=60)}, "me", 10, NOW)
    assert not peering.is_active({"other": keepalive(99, 59, lifetime=60)}, "me", 10, NOW)


def test_unreadable_entries_are_ignored():
    assert peering.is_active({"other": {"priority": 99}, "junk": "x"}, "me", 10, NOW)


def test_auto_priority_prefers_the_earliest_started_replica():
    rng = random.Random(1)
    earlier = peering.auto_priority(NOW, rng)
    later = peering.auto_priority(NOW + timedelta(milliseconds=1), rng)
    assert earlier > later
    assert earlier < 2**53  # exact in JSON


# --- request pacing -----------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_steady_rate():
    clock = FakeClock()
    limiter = RateLimiter(qps=10, burst=3, clock=clock)
    assert [limiter.delay() for _ in range(3)] == [0, 0, 0]
    assert limiter.delay() == pytest.approx(0.1)
    clock.now += 0.1
    assert limiter.delay() == 0


def test_retry_after_holds_every_caller():
    clock = FakeClock()
    limiter = RateLimiter(qps=0, burst=1, clock=clock)  # unlimited rate, but...
    limiter.hold(2.0)
    assert limiter.delay() == pytest.approx(2.0)
    limiter.hold(1.0)  # a shorter hold never shortens the current one
    assert limiter.delay() == pytest.approx(2.0)
    clock.now += 2.0
    assert limiter.delay() == 0


# --- the work queue -----------------------------------------------------------------------------------
def test_add_after_keeps_only_the_earliest_schedule():
    async def scenario() -> list[str]:
        done: list[str] = []

        async def work(key):
            done.append(key)

        queue = WorkQueue(work, workers=1)
        queue.start()
        queue.add_after("a", 0.05)
        queue.add_after("a", 0.01)  # earlier: replaces
        queue.add_after("a", 10)  # later: ignored
        await asyncio.sleep(0.2)
        await queue.stop()
        return done

    assert asyncio.run(scenario()) == ["a"]


def test_a_paused_queue_takes_nothing_until_resumed():
    async def scenario() -> tuple[list[str], list[str]]:
        done: list[str] = []

        async def work(key):
            done.append(key)

        active = asyncio.Event()
        queue = WorkQueue(work, workers=2, active=active)
        queue.start()
        queue.add("a")
        queue.add("b")
        queue.add("a")  # deduplicated while waiting
        await asyncio.sleep(0.05)
        paused = list(done)
        active.set()
        await asyncio.sleep(0.05)
        await queue.stop()
        return paused, sorted(done)

    assert asyncio.run(scenario()) == ([], ["a", "b"])


def test_a_demoted_queue_runs_nothing_an_idle_worker_takes_until_resumed():
    """Workers idle in the queue when the replica is demoted: a key added then is held, not run (nor lost)."""
    async def scenario() -> tuple[list[str], int, list[str]]:
        done: list[str] = []

        async def work(key):
            done.append(key)

        active = asyncio.Event()
        active.set()
        queue = WorkQueue(work, workers=2, active=active)
        queue.start()
        await asyncio.sleep(0.01)  # both workers wait for a key
        active.clear()  # demoted: a standby replica
        queue.add("a")
        queue.add("a")  # deduplicated while held
        await asyncio.sleep(0.05)
        paused, held = list(done), len(queue)
        active.set()
        await asyncio.sleep(0.05)
        await queue.stop()
        return paused, held, done

    assert asyncio.run(scenario()) == ([], 1, ["a"])


def test_a_key_queued_while_it_runs_runs_again_after_not_alongside():
    async def scenario() -> tuple[int, int]:
        running = 0
        most = 0
        runs = 0

        async def work(key):
            nonlocal running, most, runs
            running += 1
            runs += 1
            most = max(most, running)
            await asyncio.sleep(0.05)
            running -= 1

        queue = WorkQueue(work, workers=4)
        queue.start()
        queue.add("a")
        await asyncio.sleep(0.01)  # "a" runs
        queue.add("a")  # a watch event meanwhile
        queue.add("a")  # and another: still one more run
        queue.add_after("a", 0.01)  # a timer firing while it runs: same rule
        await asyncio.sleep(0.3)
        await queue.stop()
        return most, runs

    assert asyncio.run(scenario()) == (1, 2)


def test_failures_back_off_and_honour_retry_after():
    async def scenario() -> list[float]:
        attempts: list[float] = []
        loop = asyncio.get_running_loop()

        async def work(key):
            attempts.append(loop.time())
            if len(attempts) == 1:
                raise KubeError(429, "TooManyRequests", "slow down", retry_after=0.3)

        queue = WorkQueue(work, workers=1, max_backoff=0.05)  # the backoff alone would retry after 0.05 s
        queue.start()
        queue.add("k")
        await asyncio.sleep(0.6)
        await queue.stop()
        return attempts

    attempts = asyncio.run(scenario())
    assert len(attempts) == 2
    assert attempts[1] - attempts[0] >= 0.29  # the server's Retry-After won over the shorter backoff


# --- the local cluster's bookkeeping: restarts, one node per machine -------------------------------------------------------------
def test_run_records_keep_commands_and_old_records_still_load():
    record = RunRecord("r1", "/tmp/w", True, False, 1, None, "/bin", processes=[ProcessRecord("etcd", 5, "/bin/etcd")],
                       commands={"etcd": ["--listen-client-urls=http://127.0.0.1:2379"]})
    again = RunRecord.from_json(record.to_json())
    assert again.commands == record.commands and again.processes == record.processes
    legacy = json.loads(record.to_json())
    del legacy["commands"]  # written by a launcher without restart support
    assert RunRecord.from_json(json.dumps(legacy)).commands == {}


def test_flag_reads_a_recorded_argument():
    assert _flag(["--a=1", "--secure-port=6443"], "--secure-port") == "6443"
    with pytest.raises(ControlPlaneError):
        _flag(["--a=1"], "--secure-port")


def _node_record(run_id: str, owner_pid: int, owner_start_time: int | None) -> RunRecord:
    return RunRecord(run_id, f"/nonexistent/{run_id}", False, False, owner_pid, owner_start_time, "/bin", node={})


def test_one_node_per_machine_a_second_start_waits_then_gives_up(tmp_path, monkeypatch, capsys):
    import os

    from devcluster import node
    from devcluster.processes import _proc_start_time

    monkeypatch.setenv(node.MACHINE_DIR_ENV, str(tmp_path))
    live = _node_record("first", os.getpid(), _proc_start_time(os.getpid()))  # its launcher runs: us
    node.claim_machine(live)
    with pytest.raises(ControlPlaneError, match="another local node is running"):
        node.claim_machine(_node_record("second", os.getpid(), _proc_start_time(os.getpid())), wait=0.3)
    assert "waiting for the local node of run first" in capsys.readouterr().err
    node.release_machine(live)
    node.claim_machine(_node_record("third", os.getpid(), _proc_start_time(os.getpid())), wait=0)


def test_a_node_whose_launcher_is_gone_is_taken_over(tmp_path, monkeypatch):
    from devcluster import node

    monkeypatch.setenv(node.MACHINE_DIR_ENV, str(tmp_path))
    torn_down = []
    monkeypatch.setattr(node, "teardown_run", lambda record: torn_down.append(record.run_id) or [])
    node.claim_machine(_node_record("dead", 2**22 + 7, 1))  # no such process
    node.claim_machine(_node_record("next", 1, None), wait=0)
    assert torn_down == ["dead"]
    assert json.loads((tmp_path / "node.json").read_text())["run_id"] == "next"


def test_consecutive_failures_hold_everyone_longer_until_a_success():
    clock = FakeClock()
    limiter = RateLimiter(qps=0, burst=1, clock=clock, base_hold=0.25, max_hold=1.0)
    holds = []
    for _ in range(4):
        limiter.failed()
        holds.append(round(limiter.delay(), 3))
        clock.now += holds[-1]
    assert holds == [0.25, 0.5, 1.0, 1.0]  # doubling, capped
    limiter.succeeded()
    limiter.failed()
    assert limiter.delay() == pytest.approx(0.25)  # reset by the success


def test_the_workers_flag_says_it_also_bounds_user_token_passes():
    """Both work queues (WorkspaceSecrets, UserTokens) take their worker count from --workers."""
    from workspace_secrets.cli import _parser

    run = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["run"]
    (workers,) = [a for a in run._actions if "--workers" in a.option_strings]
    assert "WorkspaceSecret" in workers.help and "UserToken" in workers.help


def test_a_node_refuses_to_start_over_another_kube_proxys_chains(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """KUBE-* chains with no bridge of ours are another kube-proxy's (k3s, kubeadm): never removed, start refused."""
    from devcluster import network, node

    calls: list[str] = []
    monkeypatch.setattr(network, "bridge_exists", lambda: False)
    monkeypatch.setattr(network, "kube_chains", lambda: ["KUBE-SERVICES", "WSO-NODE-INPUT"])
    monkeypatch.setattr(network, "cleanup_kube_proxy_remains", lambda *a: calls.append("cleanup") or [])
    monkeypatch.setattr(network, "teardown", lambda: calls.append("teardown") or [])
    with pytest.raises(ControlPlaneError, match="another kube-proxy runs on this machine.*KUBE-SERVICES"):
        node.clear_leftovers(tmp_path)
    assert calls == []
    # Our own bridge left behind by a killed launcher: the chains are ours, cleaned up.
    monkeypatch.setattr(network, "bridge_exists", lambda: True)
    node.clear_leftovers(tmp_path)
    assert calls == ["cleanup", "teardown"]
    # Nothing at all: only our (idempotent) network teardown.
    calls.clear()
    monkeypatch.setattr(network, "bridge_exists", lambda: False)
    monkeypatch.setattr(network, "kube_chains", lambda: ["WSO-NODE-INPUT"])
    node.clear_leftovers(tmp_path)
    assert calls == ["teardown"]


def test_the_node_guard_admits_from_the_pods_only_the_node_ip_and_gateway() -> None:
    from devcluster import network

    rules = network._input_rules()
    from_bridge = [r for r in rules if r[:2] == ["-i", network.BRIDGE]]
    assert from_bridge == [
        ["-i", network.BRIDGE, "-d", network.NODE_IP, "-j", "RETURN"],
        ["-i", network.BRIDGE, "-d", network.POD_GATEWAY, "-j", "RETURN"],
        ["-i", network.BRIDGE, "-j", "DROP"],
    ]
