"""A restart with every WorkspaceSecret Ready costs no request per unchanged object and writes nothing, yet still
repairs what changed while the operator was down (issue #18: the inputs digest in status, checked against the
watch-fed Secret indexes). Every request kopf and the operator send goes through a recording proxy, on the real API
server."""

from __future__ import annotations

import base64
import re
import time

import pytest
from faultproxy import FaultProxy
from helpers import Api, wait_for
from metrics_text import metric
from operator_process import OperatorProcess, other_operators_stopped

from workspace_secrets.api import constants as c

OBJECTS = 40
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def spec(i: int) -> dict:
    return {"user": f"user{i}", "workspaceRef": {"kind": "Pod", "name": f"pod{i}"}}


def settled(api: Api, namespace: str) -> bool:
    items = api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL)["items"]
    return len(items) == OBJECTS and all((ws.get("status") or {}).get("inputsDigest") for ws in items)


def versions(api: Api, namespace: str) -> dict[str, str]:
    """resourceVersion of every WorkspaceSecret and Secret in the namespace: a write by anyone changes one."""
    out = {f"ws/{ws['metadata']['name']}": ws["metadata"]["resourceVersion"] for ws in
           api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL)["items"]}
    out.update({f"secret/{s.metadata.name}": s.metadata.resource_version for s in api.core.list_namespaced_secret(namespace).items})
    return out


def test_a_restart_with_everything_ready_reads_no_object_writes_nothing_and_still_repairs_drift(api, cluster, namespace, tmp_path):
    pki = cluster.control_plane.pki
    proxy = FaultProxy(cluster.control_plane.server, pki.ca_cert, pki.admin_cert, pki.admin_key, tmp_path / "proxy").start()
    operator = OperatorProcess(str(proxy.kubeconfig), tmp_path / "op", "--namespace", namespace)
    try:
        with other_operators_stopped():
            operator.start()
            for i in range(OBJECTS):
                api.create_pod(namespace, f"pod{i}", user=f"user{i}")
                api.create_ws(namespace, f"ws{i}", spec(i))
            wait_for(lambda: settled(api, namespace), timeout=90, what="every WorkspaceSecret Ready with its inputs recorded")
            operator.stop()

            # 1. Nothing changed while it was down: no per-object request, no write.
            before = versions(api, namespace)
            started = time.monotonic()
            operator.start()
            wait_for(lambda: metric(operator.metrics(), "wso_reconciles_skipped_total", reason="unchanged") >= OBJECTS,
                     timeout=60, what="every object found unchanged")
            time.sleep(2)  # anything queued after all would run now
            requests = [r for r in proxy.requests_between(started, time.monotonic()) if not r.watch]
            per_object = [r for r in requests if re.search(rf"/namespaces/{namespace}/[a-z]+/[^/]+", r.path)]
            print(f"\nrestart: {proxy.breakdown(requests)}")
            assert not [r for r in requests if r.method in WRITES], proxy.breakdown(requests)
            assert not per_object, proxy.breakdown(per_object)
            assert len(requests) < OBJECTS, proxy.breakdown(requests)  # discovery and a few lists, whatever the number of objects
            assert metric(operator.metrics(), "wso_reconciles_total", kind=c.WORKSPACE_SECRET_KIND) == 0
            assert versions(api, namespace) == before
            operator.stop()

            # 2. Changed while it was down: a Secret edited by hand, another deleted, a user's own Secret added.
            secret = api.get_secret(namespace, "ws0")
            assert secret is not None
            secret.data[c.KEY_GIT_SSH_COMMAND] = base64.b64encode(b"ssh -o StrictHostKeyChecking=no").decode()
            api.core.replace_namespaced_secret("ws0", namespace, secret)
            api.core.delete_namespaced_secret("ws1", namespace)
            api.create_secret(namespace, "user2-npmrc", {"npmrc": b"registry=https://npm.example"}, labels={c.LABEL_USER: "user2"})
            api.core.patch_namespaced_secret("user2-npmrc", namespace, {"metadata": {"annotations": {c.ANNOTATION_USER_FILES: ".npmrc=npmrc"}}})
            operator.start()

            def repaired() -> bool:
                data0, data1 = api.secret_data(namespace, "ws0"), api.secret_data(namespace, "ws1")
                ws2 = api.get_ws(namespace, "ws2") or {}
                return (data0 is not None and data0[c.KEY_GIT_SSH_COMMAND] != b"ssh -o StrictHostKeyChecking=no"
                        and data1 is not None and "user2-npmrc" in ((ws2.get("status") or {}).get("userSecrets") or []))

            wait_for(repaired, timeout=60, what="drift repaired after the restart")
            # The other objects were still found unchanged without a request (the three changed ones were not).
            assert metric(operator.metrics(), "wso_reconciles_skipped_total", reason="unchanged") >= OBJECTS - 3
    finally:
        operator.stop()
        proxy.stop()
