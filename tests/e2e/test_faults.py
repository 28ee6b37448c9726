"""Faults: the operator SIGKILLed mid-burst, the API server and etcd restarted under it, an API server
answering 429/500, two replicas with peering, and deletion while the operator is down.

Every test checks the state of the world afterwards (objects Ready, Secrets present or gone, keys
shared), not the calls the operator made.
"""

from __future__ import annotations

import os
import random
import secrets
import threading
import time
from collections import Counter

import pytest
from faultproxy import Fault, FaultProxy
from helpers import Api, wait_for
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from metrics_text import metric
from operator_process import OperatorProcess, other_operators_stopped

from workspace_secrets.api import constants as c
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def spec(user: str, key_type: str = "ed25519", workspace: str = "nothing") -> dict:
    return {"user": user, "workspaceRef": {"kind": "Pod", "name": workspace}, "ssh": {"keyType": key_type}}


def managed_secrets(api: Api, namespace: str) -> list[k8s.V1Secret]:
    return api.core.list_namespaced_secret(namespace, label_selector=c.MANAGED_SELECTOR).items


def ready_names(api: Api, namespace: str) -> set[str]:
    items = api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL)["items"]
    return {
        ws["metadata"]["name"]
        for ws in items
        if any(x["type"] == "Ready" and x["status"] == "True" for x in (ws.get("status") or {}).get("conditions", ()))
    }


def all_ready(api: Api, namespace: str, names: set[str]) -> bool:
    return names <= ready_names(api, namespace)


def new_operator(cluster, tmp_path, name: str, *args: str, kubeconfig: str | None = None) -> OperatorProcess:
    return OperatorProcess(kubeconfig or str(cluster.kubeconfig), tmp_path / name, *args)


# --- 1. SIGKILL at random moments during a burst -------------------------------------------------------
def test_sigkill_during_a_burst_of_creates_and_deletes_converges(api, cluster, namespace, wso_operator):
    seed = int(os.environ.get("WSO_FAULT_SEED") or secrets.randbelow(2**32))
    print(f"\nfault seed: {seed}  (replay: WSO_FAULT_SEED={seed})")
    rng = random.Random(seed)
    users = [f"user{i}" for i in range(8)]
    plan: list[tuple[str, str, str, str]] = []  # (action, name, user, key type)
    created: list[str] = []
    for i in range(40):
        name = f"ws-{i:02d}"
        plan.append(("create", name, users[i % len(users)], rng.choice(["ed25519", "ecdsa"])))
        created.append(name)
        if i >= 3 and rng.random() < 0.3:
            victim = rng.choice(created)
            created.remove(victim)
            plan.append(("delete", victim, "", ""))
    pauses = [rng.uniform(0.03, 0.25) for _ in plan]
    burst_seconds = sum(pauses)
    kill_at = sorted(rng.uniform(0.2, burst_seconds) for _ in range(3))
    extra_kill_after_restart = rng.uniform(0.0, 1.5)  # the last kill hits a freshly started operator

    key_type_of = {name: key_type for action, name, _, key_type in plan if action == "create"}
    user_of = {name: user for action, name, user, _ in plan if action == "create"}
    remaining = set(created)
    deleted = set(key_type_of) - remaining

    errors: list[BaseException] = []

    def burst() -> None:
        burst_api = Api(cluster.api_client())
        try:
            for (action, name, user, key_type), pause in zip(plan, pauses):
                if action == "create":
                    burst_api.create_ws(namespace, name, spec(user, key_type))
                else:
                    burst_api.delete_ws(namespace, name)
                time.sleep(pause)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    worker = threading.Thread(target=burst, name="burst")
    started = time.monotonic()
    worker.start()
    kills = []
    for moment in kill_at:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        wso_operator.process.kill()
        kills.append(round(time.monotonic() - started, 2))
        wso_operator.process.start()
    time.sleep(extra_kill_after_restart)
    wso_operator.process.kill()
    kills.append(round(time.monotonic() - started, 2))
    wso_operator.process.start()
    worker.join()
    assert not errors, errors
    print(f"burst: {len(plan)} actions in {time.monotonic() - started:.1f}s, SIGKILL at {kills}s")

    def converged() -> bool:
        present = {ws["metadata"]["name"] for ws in api.custom.list_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL)["items"]}
        workspace_secrets = {s.metadata.name for s in managed_secrets(api, namespace)
                             if s.metadata.labels.get(c.LABEL_COMPONENT) == c.COMPONENT_WORKSPACE_SECRET}
        return present == remaining and workspace_secrets == remaining and all_ready(api, namespace, remaining)

    # Deleted Secrets go through Kubernetes' garbage collector, hence the generous bound.
    wait_for(converged, timeout=120, interval=1, what="every remaining WorkspaceSecret Ready, every deleted one's Secret gone")

    secrets_by_name = {s.metadata.name: s for s in managed_secrets(api, namespace)}
    user_keys = {n: s for n, s in secrets_by_name.items() if s.metadata.labels[c.LABEL_COMPONENT] == c.COMPONENT_USER_SSH_KEY}
    # Exactly one key Secret per (user, key type): the deterministic names of every pair ever asked for
    # (a deleted workspace may or may not have got its user's key first), and no other key Secret.
    def key_name(name: str) -> str:
        return user_key_secret_name(user_of[name], KeySpec(KeyType(key_type_of[name])))
    needed = {key_name(n) for n in remaining}
    allowed = {key_name(n) for n in key_type_of}
    assert needed <= set(user_keys) <= allowed, (sorted(user_keys), sorted(needed), sorted(allowed))
    assert all(s.metadata.labels[c.LABEL_USER] in users and not s.metadata.owner_references for s in user_keys.values())
    for name in sorted(remaining):
        ws = api.get_ws(namespace, name)
        secret = secrets_by_name[name]
        assert [o.uid for o in secret.metadata.owner_references] == [ws["metadata"]["uid"]], name
        own = api.secret_digests(namespace, name)[c.KEY_SSH_PRIVATE]
        assert own == api.secret_digests(namespace, key_name(name))[c.KEY_SSH_PRIVATE], f"{name} does not use its user's key"
        assert ws["status"]["sshKeyFingerprint"] == user_keys[key_name(name)].metadata.annotations[c.ANNOTATION_SSH_FINGERPRINT]
    for name in deleted:
        assert api.get_ws(namespace, name) is None and name not in secrets_by_name
    # No WorkspaceSecret was left with a finalizer by the kills.
    items = api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL)["items"]
    assert not [ws["metadata"]["name"] for ws in items if ws["metadata"].get("finalizers")]


# --- 2. kube-apiserver and etcd restarted under a running operator ------------------------------------
def _ensure_control_plane(cluster) -> None:
    """Whatever a test did, leave every component running for the tests after it."""
    plane = cluster.control_plane
    live = {p.name for p in plane._require().live_processes()}
    for name in ("etcd", "kube-apiserver", "kube-controller-manager"):
        if name not in live:
            plane.start_component(name)


def _tamper_and_expect_repair(api: Api, namespace: str, name: str, timeout: float = 30) -> None:
    import base64

    original = api.secret_digests(namespace, name)
    api.core.patch_namespaced_secret(name, namespace, {"data": {c.KEY_KNOWN_HOSTS: base64.b64encode(b"tampered\n").decode()}})
    wait_for(lambda: api.secret_digests(namespace, name) == original, timeout=timeout, what=f"{name}'s Secret repaired")


def _create_when_served(api: Api, namespace: str, name: str, body: dict, timeout: float = 30) -> None:
    """Create through the API server that just came back (its first seconds may still answer 5xx)."""
    def attempt() -> bool:
        try:
            api.create_ws(namespace, name, body)
            return True
        except ApiException as exc:
            if exc.status == 409:
                return True
            if exc.status < 500:
                raise
            return False
        except OSError:
            return False
    wait_for(attempt, timeout=timeout, interval=0.5, what=f"creating {name}")


@pytest.mark.skipif("WSO_E2E_KUBECONFIG" in os.environ or os.environ.get("WSO_E2E_USE_KUBECONFIG") == "1",
                    reason="restarts control-plane processes: local control plane only")
def test_operator_recovers_its_watches_after_apiserver_and_etcd_restarts(api, cluster, namespace, tmp_path):
    operator = new_operator(cluster, tmp_path, "op", "--namespace", namespace, "--watch-unhealthy-threshold", "4")
    plane = cluster.control_plane
    with other_operators_stopped():
        operator.start()
        try:
            api.create_ws(namespace, "before", spec("ana"))
            api.wait_condition(namespace, "before")

            # kube-apiserver: a clean restart, then a crash (SIGKILL). our WorkspaceSecret watch must see new objects
            # afterwards (the WorkspaceSecret becomes Ready), and ours must see Secret edits (drift repair).
            for step, kill in (("after-apiserver-restart", False), ("after-apiserver-crash", True)):
                plane.restart("kube-apiserver", kill=kill)
                _create_when_served(api, namespace, step, spec("ana"))
                api.wait_condition(namespace, step, timeout=60)
                _tamper_and_expect_repair(api, namespace, "before", timeout=60)

            # etcd: the API server loses its storage for a moment, then gets it back with the same data.
            plane.restart("etcd", kill=True)
            _create_when_served(api, namespace, "after-etcd-crash", spec("ana"))
            api.wait_condition(namespace, "after-etcd-crash", timeout=60)
            _tamper_and_expect_repair(api, namespace, "after-etcd-crash", timeout=60)
            assert operator.running, "the operator must recover without a restart"
            assert operator.healthy()
            restarts = metric(operator.metrics(), "wso_watch_restarts_total", resource="secrets", reason="error")
            assert restarts >= 2, "our Secret watch should have noticed both API server restarts"

            # The API server down for longer than the threshold: the liveness endpoint fails (and
            # says why in the log); back up, it recovers by itself.
            plane.stop_component("kube-apiserver")
            try:
                status, _ = wait_for(lambda: (r := operator.liveness())[0] == 500 and r, timeout=40, interval=1,
                                     what="the liveness probe to fail while the API server is down")
            finally:
                plane.start_component("kube-apiserver")
            assert "watch disconnected for longer than 4s" in operator.log_text()
            wait_for(operator.healthy, timeout=60, interval=1, what="the liveness probe to pass again")
            _create_when_served(api, namespace, "after-outage", spec("ana"))
            api.wait_condition(namespace, "after-outage", timeout=60)
            assert operator.running
        finally:
            operator.stop()
            _ensure_control_plane(cluster)


# --- 3. API server answering 429 / 500 ---------------------------------------------------------------
@pytest.mark.skipif("WSO_E2E_KUBECONFIG" in os.environ or os.environ.get("WSO_E2E_USE_KUBECONFIG") == "1",
                    reason="needs the local control plane's admin certificate for the proxy")
def test_throttling_and_errors_back_off_without_a_hot_loop_and_converge(api, cluster, namespace, tmp_path):
    pki = cluster.control_plane.pki
    proxy = FaultProxy(cluster.control_plane.server, pki.ca_cert, pki.admin_cert, pki.admin_key, tmp_path / "proxy").start()
    operator = new_operator(cluster, tmp_path, "op", "--namespace", namespace, "--watch-unhealthy-threshold", "4",
                            kubeconfig=str(proxy.kubeconfig))
    try:
        with other_operators_stopped():
            operator.start()
            # Bound workspaces (the Pods exist): an unbound object is re-checked every few seconds,
            # which would blur the request counts this test is about.
            for i in range(6):
                api.create_pod(namespace, f"pod-base-{i}", user=f"u{i % 3}")
                api.create_ws(namespace, f"base-{i}", spec(f"u{i % 3}", workspace=f"pod-base-{i}"))
            wait_for(lambda: all_ready(api, namespace, {f"base-{i}" for i in range(6)}), timeout=60, what="baseline Ready")
            baseline_start = time.monotonic()
            time.sleep(3)
            idle = proxy.requests_between(baseline_start, time.monotonic())
            idle_rate = len(idle) / 3
            print(f"\nidle: {proxy.breakdown(idle)}")

            rates = {}
            for label, fault in (
                ("429", Fault(429, fraction=1.0, retry_after=2)),
                ("500", Fault(500, fraction=0.7)),
            ):
                window = 8.0
                with proxy.failing(fault):
                    start = time.monotonic()
                    # Work arrives during the fault: new objects and a tampered Secret.
                    for i in range(4):
                        api.create_pod(namespace, f"pod-f{label}-{i}", user=f"u{i % 3}")
                        api.create_ws(namespace, f"f{label}-{i}", spec(f"u{i % 3}", workspace=f"pod-f{label}-{i}"))
                    api.core.patch_namespaced_secret("base-0", namespace, {"metadata": {"labels": {"tampered": label}}})
                    import base64
                    api.core.patch_namespaced_secret("base-0", namespace, {"data": {c.KEY_KNOWN_HOSTS: base64.b64encode(label.encode()).decode()}})
                    time.sleep(window)
                    end = time.monotonic()
                during = proxy.requests_between(start, end)
                per_second = Counter(int(r.at - start) for r in during)
                rates[label] = (len(during) / window, max(per_second.values(), default=0))  # (average, peak) per second
                injected = sum(r.injected for r in during)
                print(f"{label}: {len(during)} requests in {window:.0f}s ({injected} failed by the proxy), "
                      f"peak {rates[label][1]}/s; idle rate {idle_rate:.1f}/s; {proxy.breakdown(during)}")
                # Still trying (no give-up) ...
                assert any(r.at > start + window / 2 for r in during), "the operator stopped retrying"
                # ... but backing off: no hot loop. (Our client has no QPS cap by default, and kopf
                # retries without a cap on its rate: either spinning would blow through these bounds.)
                second_half = [r for r in during if r.at >= start + window / 2]
                assert len(during) / window < 12, f"{label}: {len(during)} requests in {window}s: {proxy.breakdown(during)}"
                assert len(second_half) / (window / 2) < 8, f"{label}: still {len(second_half)} requests in the last {window / 2}s: {proxy.breakdown(second_half)}"
                if fault.retry_after:
                    # Every client waits as long as it was told: at most one try per Retry-After per stream.
                    per_stream = Counter((r.client, r.method, r.watch, r.path, r.selector) for r in during)
                    assert max(per_stream.values()) <= window / fault.retry_after + 1, proxy.breakdown(during)
                # Converges once the fault is over (bounded backoff: within the backoff cap, not minutes).
                names = {f"f{label}-{i}" for i in range(4)} | {f"base-{i}" for i in range(6)}
                wait_for(lambda: all_ready(api, namespace, names), timeout=60, interval=1, what=f"Ready after the {label} window")
                wait_for(lambda: api.secret_data(namespace, "base-0")[c.KEY_KNOWN_HOSTS] != label.encode(),
                         timeout=60, interval=1, what=f"drift repaired after the {label} window")
            # (With this test's 4 s threshold the liveness probe may fail during a window -- the Secret watch
            # cannot connect -- and must pass again once the watch is back, without a restart.)
            assert operator.running
            wait_for(operator.healthy, timeout=45, interval=1, what="liveness passing again after the faults")

            # A failure kopf does not retry -- an ERROR event in its watch stream (kopf watches the UserTokens) --
            # ends kopf's orchestrator, and with it the process (a Pod restarts it): no half-alive operator that no
            # longer sees new UserTokens while its liveness endpoint still answers 200. (Our own watches retry it.)
            def kopf_watch(method: str, path: str) -> bool:
                return path.endswith(f"/{c.USER_TOKEN_PLURAL}")
            with proxy.failing(Fault(500, watch_error=True, match=kopf_watch)):
                # kopf may still be in its request backoff from the windows above (1, 1, 2, 3, 5, 8, 13, 21 s)
                # when its reconnect meets the error: allow for the whole schedule.
                wait_for(lambda: not operator.running, timeout=75, interval=0.5, what="the operator to exit")
            assert "Error in the watch-stream" in operator.log_text()
            assert not operator.healthy()
    finally:
        operator.stop()
        proxy.stop()


# --- 4. Two replicas with peering: one acts, the other takes over when it dies ------------------------
def _reconciled_objects(log: str, namespace: str) -> set[str]:
    """Names of the objects in `namespace` that a replica's log shows it handling ("[ns/name] ...")."""
    marker = f"[{namespace}/"
    return {line.split(marker, 1)[1].split("]", 1)[0] for line in log.splitlines() if marker in line}


def test_two_replicas_with_peering_one_acts_and_the_other_takes_over(api, cluster, namespace, tmp_path):
    peering = f"wso-e2e-{secrets.token_hex(3)}"
    args = ("--peering", peering, "--peering-lifetime", "6")
    first = new_operator(cluster, tmp_path, "first", *args)
    second = new_operator(cluster, tmp_path, "second", *args)
    try:
        with other_operators_stopped():
            first.start()
            wait_for(lambda: metric(first.metrics(), "wso_peering_active") == 1, timeout=30, what="the first replica active")
            second.start()  # started later: a lower priority by default, so it stands by
            time.sleep(3)  # let both see each other
            for i in range(4):
                api.create_ws(namespace, f"p-{i}", spec(f"peer{i % 2}"))
            wait_for(lambda: all_ready(api, namespace, {f"p-{i}" for i in range(4)}), timeout=60, what="Ready with two replicas")
            assert metric(second.metrics(), "wso_peering_active") == 0
            assert _reconciled_objects(first.log_since_last_start(), namespace) >= {f"p-{i}" for i in range(4)}
            assert not _reconciled_objects(second.log_since_last_start(), namespace), "the standby replica acted"
            assert metric(second.metrics(), "wso_reconciles_total", kind="WorkspaceSecret", result="success") == 0

            first.kill()  # no goodbye: the second must wait for the first one's keep-alive to expire
            killed = time.monotonic()
            for i in range(4, 6):
                api.create_ws(namespace, f"p-{i}", spec(f"peer{i % 2}"))
            wait_for(lambda: all_ready(api, namespace, {"p-4", "p-5"}), timeout=60, what="Ready after failover")
            print(f"failover: new objects Ready {time.monotonic() - killed:.1f}s after the active replica was killed")
            # Our own work (Secret watch reactions, resyncs) resumes with kopf: within the gate's poll interval.
            wait_for(lambda: metric(second.metrics(), "wso_peering_active") == 1, timeout=10, what="the second replica's gate open")
            assert {"p-4", "p-5"} <= _reconciled_objects(second.log_since_last_start(), namespace)
            _tamper_and_expect_repair(api, namespace, "p-0")  # drift repair: our Secret watch acts on the new active replica
    finally:
        for process in (first, second):
            process.stop()
        try:
            api.custom.delete_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
        except ApiException as exc:
            if exc.status != 404:
                raise


# --- 6. Deletion never waits for the operator -----------------------------------------------------------
def test_deleting_workspacesecrets_while_the_operator_is_down_completes(api, namespace, wso_operator):
    api.create_pod(namespace, "ws-bound", user="zoe")
    api.create_ws(namespace, "bound", spec("zoe", workspace="ws-bound"))
    api.create_ws(namespace, "unbound", spec("zoe", workspace="not-there"))
    api.wait_condition(namespace, "bound", type_="WorkspaceBound")
    api.wait_condition(namespace, "unbound")
    time.sleep(6)  # an unbound object keeps being re-checked: give that a round
    for name in ("bound", "unbound"):
        assert not api.get_ws(namespace, name)["metadata"].get("finalizers"), f"{name} carries a finalizer"
    wso_operator.process.stop()
    try:
        for name in ("bound", "unbound"):
            api.delete_ws(namespace, name)
        wait_for(lambda: api.get_ws(namespace, "bound") is None and api.get_ws(namespace, "unbound") is None,
                 timeout=10, what="both WorkspaceSecrets deleted with the operator down")
        wait_for(lambda: api.get_secret(namespace, "bound") is None and api.get_secret(namespace, "unbound") is None,
                 timeout=90, interval=1, what="their Secrets garbage-collected")
    finally:
        wso_operator.process.start()
