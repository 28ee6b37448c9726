"""The shared in-memory API server (tests/fakes/kube.py): the answers tests/e2e/test_fake_kube_contract.py found a
real API server to give, pinned here so a change to the fake that breaks them fails without a cluster; and the
fake's own controls (faults, compaction, garbage collection, token expiry) doing what they say."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from fakes.kube import FakeKube, api_error
from fakes.kube_contract import SCENARIOS, b64, secret

from workspace_secrets.runtime.kube import Conflict, KubeError, NotFound

NS = "ns1"
S = f"/api/v1/namespaces/{NS}/secrets"

EXPECTED = {
    "cache_reads": [
        ("any version, eventually", True),
        ("not older than the change", {"k": "Mg=="}, True),
        ("a deleted object at its last version, eventually", True),
    ],
    "json_patch": [
        ("a passing test", {"a": "1", "b": "2"}),
        ("a failing test", ("KubeError", 422, "Invalid")),
        ("nothing of it applied", {"a": "1", "b": "2"}),
        ("a test of a missing path", ("KubeError", 422, "Invalid")),
        ("remove a missing path", ("KubeError", 422, "Invalid")),
        ("a missing object", ("NotFound", 404, "NotFound")),
    ],
    "writes": [
        ("create", True, True, "a", NS),
        ("create a taken name", ("Conflict", 409, "AlreadyExists")),
        ("get a missing object", None),
        ("get", True, {"k": "MQ=="}),
        ("replace", True, True, {"k": "Mg=="}),
        ("replace with a stale version", ("Conflict", 409, "Conflict")),
        ("replace a missing object", ("NotFound", 404, "NotFound")),
        ("patch with a stale version", ("Conflict", 409, "Conflict")),
        ("a no-op patch keeps the version", True),
        ("patch", {"j": "NQ=="}, {"y": "2"}),
        ("patch a missing object", ("NotFound", 404, "NotFound")),
        ("data that is not base64", ("KubeError", 400, "BadRequest")),
        ("no name", ("KubeError", 422, "Invalid")),
        ("generateName", True, 5),
        ("delete another incarnation", ("Conflict", 409, "Conflict")),
        ("delete", True, None),
        ("delete again", False),
    ],
    "selectors_and_pages": [
        ("a=1", ["s1"]), ("a==2", ["s2"]), ("a!=1", ["s2", "s3", "s4", "s5"]), ("a", ["s1", "s2", "s3"]),
        ("!a", ["s4", "s5"]), ("a in (1,3)", ["s1", "s3"]), ("a notin (1, 2)", ["s3", "s4", "s5"]), ("a,b=x", ["s1"]),
        ("b=x,a!=1", ["s5"]), ("nolabel", []),
        ("pages", [2, 2, 1], ["s1", "s2", "s3", "s4", "s5"]),
        ("resourceVersion", True),
    ],
    "finalizers": [
        ("delete", True),
        ("still there, being deleted", True, True),
        ("delete again", True),
        ("no new finalizer", ("KubeError", 422, "Invalid")),
        ("the last finalizer goes, so does the object", None),
    ],
    "status_subresource": [
        ("create drops status", None, 1),
        ("the main resource ignores status", None, True),
        ("/status changes only status", {"observedGeneration": 1}, None, "alice", 1),
        ("metadata keeps the generation", 1, {"observedGeneration": 1}),
        ("spec moves the generation", 2, {"observedGeneration": 1}),
        ("replace keeps status", {"observedGeneration": 1}, True),
        ("status of a missing object", ("NotFound", 404, "NotFound")),
    ],
    "tokens": [
        ("issued", True, True, ["contract-aud"], 3600),
        ("bound to another incarnation", ("Conflict", 409, "Conflict")),
        ("bound to a missing object", ("NotFound", 404, "NotFound")),
        ("a missing account", ("NotFound", 404, "NotFound")),
        ("shorter than 10 minutes", ("KubeError", 422, "Invalid")),
        ("review for its audience", (True, f"system:serviceaccount:{NS}:contract-sa")),
        ("review for the API server's audience", False),
        ("review after the bound object is gone", True, False),
    ],
    "watch": [
        ("events", [("ADDED", "one", "1"), ("MODIFIED", "one", "1"), ("ADDED", "two", "1"), ("DELETED", "one", "1"), ("DELETED", "two", "1")]),
    ],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_fake_gives_the_answers_a_real_api_server_gave(name):
    kube = FakeKube()
    try:
        assert asyncio.run(SCENARIOS[name](kube, NS)) == EXPECTED[name]
    finally:
        kube.close()


def test_errors_are_the_clients_own_classes():
    assert isinstance(api_error(404), NotFound) and isinstance(api_error(409), Conflict)
    error = api_error(429, "slow down", retry_after=3)
    assert type(error) is KubeError and (error.status, error.reason, error.retry_after) == (429, "TooManyRequests", 3.0)


def test_faults_hit_the_matching_requests_as_often_as_asked():
    kube = FakeKube()
    kube.put(S, secret("a"))
    kube.fail(("PUT", "PATCH"), f"{S}/a", 503, times=2)
    kube.fail("POST", f"{S}/b", ConnectionResetError("reset"))

    async def scenario() -> list[str]:
        out = []
        for call in (kube.merge_patch(f"{S}/a", {"data": {"k": b64("2")}}), kube.get(f"{S}/a"),
                     kube.merge_patch(f"{S}/a", {"data": {"k": b64("3")}}), kube.merge_patch(f"{S}/a", {"data": {"k": b64("4")}}),
                     kube.create(S, secret("b")), kube.create(S, secret("b"))):
            try:
                await call
                out.append("ok")
            except KubeError as exc:
                out.append(str(exc.status))
            except ConnectionResetError:
                out.append("reset")
        return out

    assert asyncio.run(scenario()) == ["503", "ok", "503", "ok", "reset", "ok"]
    assert kube.requests("PATCH") == [f"{S}/a"] * 3 and kube.requests("POST", f"{S}*") == [S, S]


def test_a_watch_from_a_compacted_version_gets_410_and_open_watches_can_be_expired():
    kube = FakeKube()
    kube.put(S, secret("a"))
    old = kube.get_object(f"{S}/a")["metadata"]["resourceVersion"]
    kube.put(S, secret("b"))
    kube.compact()
    events = list(kube.stream(S, {"resourceVersion": old, "timeoutSeconds": "1"}, timeout=5))
    assert [(e["type"], e["object"]["code"], e["object"]["reason"]) for e in events] == [("ERROR", 410, "Expired")]

    seen: list[str] = []
    current = kube.list_objects(S)[-1]["metadata"]["resourceVersion"]
    thread = threading.Thread(target=lambda: seen.extend(e["type"] for e in kube.stream(S, {"resourceVersion": current}, timeout=10)))
    thread.start()
    while not kube.open_watches:
        time.sleep(0.01)
    kube.expire_watches()
    thread.join(5)
    assert seen == ["ERROR"] and not thread.is_alive()


def test_garbage_collection_follows_owner_uids_in_chains():
    kube = FakeKube()
    pod = kube.put("/api/v1/namespaces/ns1/pods", {"metadata": {"name": "p"}})
    ws = kube.put("/apis/workspace-secrets.io/v1alpha1/namespaces/ns1/workspacesecrets",
                  {"metadata": {"name": "w", "ownerReferences": [{"kind": "Pod", "name": "p", "uid": pod["metadata"]["uid"]}]}})
    kube.put(S, {**secret("s"), "metadata": {"name": "s", "ownerReferences": [{"kind": "WorkspaceSecret", "uid": ws["metadata"]["uid"]}]}})
    kube.put(S, {**secret("namesake"), "metadata": {"name": "namesake", "ownerReferences": [{"kind": "Pod", "name": "p", "uid": "an-older-p"}]}})
    kube.put(S, secret("free"))
    assert kube.collect_garbage() == [f"{S}/namesake"]  # an owner uid that does not exist (any more)
    kube.remove("/api/v1/namespaces/ns1/pods/p")
    assert sorted(kube.collect_garbage()) == sorted(["/apis/workspace-secrets.io/v1alpha1/namespaces/ns1/workspacesecrets/w", f"{S}/s"])
    assert [o["metadata"]["name"] for o in kube.list_objects(S)] == ["free"]


def test_tokens_expire_by_the_fakes_clock():
    now = [datetime(2026, 1, 1, tzinfo=timezone.utc)]
    kube = FakeKube(clock=lambda: now[0])
    kube.put("/api/v1/namespaces/ns1/serviceaccounts/sa", {"metadata": {"name": "sa"}})
    issued = asyncio.run(kube.create("/api/v1/namespaces/ns1/serviceaccounts/sa/token", {"spec": {"expirationSeconds": 600}}))
    token = issued["status"]["token"]
    assert issued["status"]["expirationTimestamp"] == "2026-01-01T00:10:00Z" and kube.review_token(token) is not None
    now[0] += timedelta(seconds=600)
    assert kube.review_token(token) is None
