"""--leader-elect on the real API server: two operator processes, one Lease (coordination.k8s.io/v1).

- One leads (it holds the Lease, answers /readyz 200 and reconciles); the other stands by (/healthz 200, /readyz 503,
  it never starts kopf, so it reconciles nothing).
- SIGKILL the leader: the standby takes the Lease within the lease duration (plus its retry period, as client-go
  measures expiry from when it saw the Lease last change) and reconciles a new WorkspaceSecret.
- SIGTERM the leader: it releases the Lease on the way out, and the standby takes it at its next attempt (about a
  retry period), not a lease duration later.
- A leader that finds the Lease held by someone else exits (1) at once.

The time bounds are generous: the machine running this may be loaded (2 cores, a CI run beside it).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from helpers import Api, wait_for
from metrics_text import metric
from operator_process import OperatorProcess

LEASE_ID = "wso-e2e-leader"
LEASE, RENEW, RETRY = 6.0, 4.0, 1.0  # shorter than the defaults (15/10/2 s), same proportions


def readyz(process: OperatorProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{process.port}/readyz", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def holder(coordination: k8s.CoordinationV1Api, namespace: str) -> str:
    try:
        return coordination.read_namespaced_lease(LEASE_ID, namespace).spec.holder_identity or ""
    except ApiException as exc:
        if exc.status == 404:
            return ""
        raise


def replica(cluster, namespace: str, log_dir: Path, name: str) -> OperatorProcess:
    return OperatorProcess(
        str(cluster.kubeconfig), log_dir / name, "--namespace", namespace,
        "--leader-elect", "--leader-election-id", LEASE_ID, "--leader-election-namespace", namespace,
        "--leader-election-lease-duration", f"{LEASE:g}s", "--leader-election-renew-deadline", f"{RENEW:g}s",
        "--leader-election-retry-period", f"{RETRY:g}s",
        env={"POD_ID": name},
    )


def reconciled(api: Api, namespace: str, name: str) -> None:
    api.create_ws(namespace, name, {"user": "lee", "workspaceRef": {"kind": "Pod", "name": "nope"}})
    api.wait_condition(namespace, name, timeout=60)


@pytest.mark.timeout(600)
def test_one_replica_leads_and_a_standby_takes_over(cluster, namespace, tmp_path, shared_operator_paused):
    api_client = cluster.api_client()
    api, coordination = Api(api_client), k8s.CoordinationV1Api(api_client)
    a, b = replica(cluster, namespace, tmp_path, "replica-a"), replica(cluster, namespace, tmp_path, "replica-b")
    try:
        a.start()  # returns once /healthz answers 200: for a leader, once the operator has started
        wait_for(lambda: readyz(a) == 200, timeout=30, what="the leader ready")
        assert holder(coordination, namespace).startswith(f"replica-a/{a.process.pid}/")
        b.start()  # a standby is live at once
        time.sleep(3 * RETRY)
        assert readyz(b) == 503 and b.healthy()
        assert metric(a.metrics(), "wso_leader_election_leading") == 1
        assert metric(b.metrics(), "wso_leader_election_leading") == 0
        assert holder(coordination, namespace).startswith("replica-a/")
        reconciled(api, namespace, "one")
        standby_log = b.log_since_last_start()
        assert "standing by" in standby_log
        assert "Handler" not in standby_log and f"[{namespace}/" not in standby_log, "the standby must not reconcile"

        # The leader crashes: no release, the standby waits for the Lease to expire.
        a.kill()
        killed = time.monotonic()
        wait_for(lambda: holder(coordination, namespace).startswith(f"replica-b/{b.process.pid}/"),
                 timeout=LEASE + 4 * RETRY + 10, interval=0.2, what="the standby to take the Lease")
        takeover = time.monotonic() - killed
        print(f"takeover after SIGKILL: {takeover:.1f}s (lease duration {LEASE:g}s, retry period {RETRY:g}s)")
        # Not before the Lease could have expired (the standby saw its last renewal at most a retry period before
        # the kill); on time: a lease duration after that plus a few retry periods and process start-up slack.
        assert LEASE - RETRY <= takeover < LEASE + 3 * RETRY + 5, f"took {takeover:.1f}s"
        wait_for(lambda: readyz(b) == 200, timeout=30, what="the new leader ready")
        assert metric(b.metrics(), "wso_leader_election_leading") == 1
        reconciled(api, namespace, "two")
        assert coordination.read_namespaced_lease(LEASE_ID, namespace).spec.lease_transitions >= 1

        # A graceful stop releases the Lease: the (restarted) standby takes it within about a retry period.
        a.start()
        time.sleep(2 * RETRY)
        assert readyz(a) == 503
        assert b.stop() == 0
        released = time.monotonic()
        wait_for(lambda: holder(coordination, namespace).startswith(f"replica-a/{a.process.pid}/"),
                 timeout=LEASE + 10, interval=0.1, what="the standby to take the released Lease")
        handover = time.monotonic() - released
        print(f"handover after SIGTERM: {handover:.1f}s after the leader exited")
        assert handover < 2 * RETRY + 4, f"took {handover:.1f}s after the leader exited"  # not a lease duration
        assert "released" in b.log_text()
        wait_for(lambda: readyz(a) == 200, timeout=30, what="the new leader ready")
        reconciled(api, namespace, "three")

        # Someone else holds the Lease now (a split brain in the making): the leader exits at once, with 1.
        # A merge patch without a resourceVersion: a read-then-replace would race the leader's renewals (409).
        coordination.patch_namespaced_lease(
            LEASE_ID, namespace, {"spec": {"holderIdentity": "intruder", "leaseDurationSeconds": 3600}},
            _content_type="application/merge-patch+json")
        assert a.process.wait(RENEW + 5) == 1
        assert "leader election lost" in a.log_text()
    finally:
        for process in (a, b):
            if process.running:
                process.kill()
        api_client.close()
