"""The WorkspaceSecret reconcile end to end against the shared in-memory API server (tests/fakes/kube.py) and the
real EventRecorder: the per-user key, the workspace Secret, the binding to the workspace, status and Events,
idempotence, drift repair, lost races, and a Secret that is not ours."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from fakes.kube import FakeKube
from prometheus_client import REGISTRY

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.user_keys import sshkeys
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
NS = "team"
WS = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
PODS = f"/api/v1/namespaces/{NS}/pods"
EVENTS = f"/api/v1/namespaces/{NS}/events"
ALICE_KEY = f"{SECRETS}/{user_key_secret_name('alice', sshkeys.KeySpec())}"
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class Operator:
    """The controller over a fake API server, with the work queue's schedule recorded."""

    def __init__(self) -> None:
        self.kube = FakeKube(clock=lambda: NOW)
        self.scheduled: list[tuple[str, str, float]] = []
        self.controller = WorkspaceSecretController(self.kube, EventRecorder(self.kube, instance="test"),  # type: ignore[arg-type]
                                                    schedule=lambda ns, name, delay: self.scheduled.append((ns, name, delay)),
                                                    clock=lambda: NOW)

    def create(self, name: str, user: str = "alice", *, workspace: str = "alice-pod", **spec) -> dict:
        return self.kube.put(WS, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name},
                                  "spec": {"user": user, "workspaceRef": {"kind": "Pod", "name": workspace}, **spec}})

    def reconcile(self, name: str) -> None:
        asyncio.run(self.controller.reconcile_by_name(NS, name))

    def ws(self, name: str) -> dict:
        obj = self.kube.get_object(f"{WS}/{name}")
        assert obj is not None
        return obj

    def secret(self, name: str) -> dict | None:
        return self.kube.get_object(f"{SECRETS}/{name}")

    def condition(self, name: str, type_: str = c.CONDITION_READY) -> dict:
        return next(x for x in self.ws(name)["status"]["conditions"] if x["type"] == type_)

    def events(self) -> list[str]:
        return [e["reason"] for e in self.kube.list_objects(EVENTS)]

    def writes(self) -> list[tuple[str, str]]:
        return [(verb, path) for verb, path in self.kube.calls if verb in WRITES and not path.startswith(EVENTS)]


def decoded(secret: dict, key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def digest(secret: dict | None, key: str = c.KEY_SSH_PRIVATE) -> str:
    """A value's digest: what the assertions compare, so a failure never prints key material."""
    assert secret is not None
    return hashlib.sha256(decoded(secret, key)).hexdigest()[:16]


def digests(secret: dict) -> dict[str, str]:
    return {k: hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in secret["data"].items()}


def reconciles(result: str) -> float:
    return REGISTRY.get_sample_value("wso_reconciles_total", {"kind": c.WORKSPACE_SECRET_KIND, "result": result}) or 0.0


def test_a_new_workspace_secret_gets_the_users_key_in_its_own_secret_and_a_ready_status():
    op = Operator()
    op.create("alice-ws")
    before = reconciles("success")
    op.reconcile("alice-ws")

    user_key, secret = op.kube.get_object(ALICE_KEY), op.secret("alice-ws")
    assert user_key is not None and secret is not None
    # The user's key is kept once per user, and the workspace Secret carries that very key.
    assert user_key["metadata"]["labels"][c.LABEL_COMPONENT] == c.COMPONENT_USER_SSH_KEY
    assert digest(secret) == digest(user_key)
    key = sshkeys.load(decoded(secret, c.KEY_SSH_PRIVATE), comment="alice")
    assert decoded(secret, c.KEY_SSH_PUBLIC).decode().split()[:2] == key.public_openssh.split()[:2]
    # Owned by (and so deleted with) the WorkspaceSecret.
    ws = op.ws("alice-ws")
    assert [(o["kind"], o["uid"], o.get("controller")) for o in secret["metadata"]["ownerReferences"]] == [
        (c.WORKSPACE_SECRET_KIND, ws["metadata"]["uid"], True)]
    ready = op.condition("alice-ws")
    assert ready["status"] == "True" and ws["status"]["observedGeneration"] == 1
    assert "SecretCreated" in op.events()
    assert reconciles("success") == before + 1
    # No workspace yet: the work queue is asked to look again soon (young objects: every 5 s).
    assert op.scheduled == [(NS, "alice-ws", 5.0)]


def test_a_second_reconcile_writes_nothing_and_a_drifted_secret_is_put_back():
    op = Operator()
    op.create("alice-ws")
    op.reconcile("alice-ws")
    version = op.secret("alice-ws")["metadata"]["resourceVersion"]
    writes = len(op.writes())
    op.reconcile("alice-ws")
    assert op.writes()[writes:] == [] and op.secret("alice-ws")["metadata"]["resourceVersion"] == version

    original = digests(op.secret("alice-ws"))
    op.kube.edit(f"{SECRETS}/alice-ws", {"data": {c.KEY_SSH_PRIVATE: base64.b64encode(b"tampered").decode(), "extra": "eA=="},
                                         "metadata": {"labels": {"someone": "else"}}})
    op.reconcile("alice-ws")
    repaired = op.secret("alice-ws")
    assert digests(repaired) == original  # ours back, the stranger's key gone
    assert repaired["metadata"]["labels"]["someone"] == "else"  # labels others added are kept
    assert op.events().count("SecretUpdated") == 1


def test_two_workspaces_of_a_user_share_one_key_and_a_rotation_reaches_both():
    op = Operator()
    op.create("ws-1")
    op.create("ws-2")
    op.reconcile("ws-1")
    op.reconcile("ws-2")
    first = digest(op.secret("ws-1"))
    assert digest(op.secret("ws-2")) == first
    assert len(op.kube.list_objects(SECRETS, f"{c.LABEL_COMPONENT}={c.COMPONENT_USER_SSH_KEY}")) == 1

    op.kube.edit(f"{WS}/ws-1", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "r1"}}})
    op.kube.fail("PATCH", f"{WS}/ws-1/status", 503)  # the key is rotated, then the status write fails (a crash there)
    with pytest.raises(Exception, match="503"):
        op.reconcile("ws-1")
    rotated = digest(op.kube.get_object(ALICE_KEY))
    assert rotated != first and "sshKeyRotation" not in op.ws("ws-1")["status"]
    op.reconcile("ws-1")  # the same request again: recognized on the key's Secret, no second rotation
    assert digest(op.kube.get_object(ALICE_KEY)) == rotated == digest(op.secret("ws-1"))
    assert op.ws("ws-1")["status"]["sshKeyRotation"] == "r1" and op.events().count("SSHKeyRotated") == 1
    op.reconcile("ws-1")
    assert digest(op.kube.get_object(ALICE_KEY)) == rotated
    op.reconcile("ws-2")  # the other workspace follows the user's key
    assert digest(op.secret("ws-2")) == rotated


def test_a_workspace_labelled_for_the_user_is_bound_and_takes_everything_with_it():
    op = Operator()
    pod = op.kube.put(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "alice-pod", "labels": {c.LABEL_USER: "alice"}}})
    op.create("alice-ws")
    op.reconcile("alice-ws")
    ws = op.ws("alice-ws")
    assert [(o["kind"], o["name"], o["uid"]) for o in ws["metadata"]["ownerReferences"]] == [("Pod", "alice-pod", pod["metadata"]["uid"])]
    assert ws["status"]["workspaceUID"] == pod["metadata"]["uid"]
    # Created and bound in one reconcile: one Event says both (each Event is a write).
    assert op.events() == ["SecretCreated"]
    assert "bound to Pod 'alice-pod'" in op.kube.list_objects(EVENTS)[0]["message"]
    assert op.scheduled == []  # bound: nothing to look for any more

    op.kube.remove(f"{PODS}/alice-pod")
    deleted = op.kube.collect_garbage()  # Kubernetes' garbage collector follows the ownerReferences
    assert f"{WS}/alice-ws" in deleted and f"{SECRETS}/alice-ws" in deleted
    assert op.kube.get_object(ALICE_KEY) is not None  # the user's key outlives one workspace


def test_a_workspace_of_another_user_is_not_bound():
    op = Operator()
    op.kube.put(PODS, {"metadata": {"name": "bobs-pod", "labels": {c.LABEL_USER: "bob"}}})
    op.create("alice-ws", workspace="bobs-pod")
    op.reconcile("alice-ws")
    ws = op.ws("alice-ws")
    assert not ws["metadata"].get("ownerReferences") and not ws["status"].get("workspaceUID")
    problems = [x for x in ws["status"]["conditions"] if x["status"] == "False"]
    assert problems and all("not labelled workspace-secrets.io/user=alice" in x["message"] for x in problems)
    assert op.secret("alice-ws") is not None  # the Secret is still delivered; only the lifecycle is not shared


def test_a_secret_that_is_not_ours_is_never_overwritten():
    op = Operator()
    theirs = op.kube.put(SECRETS, {"metadata": {"name": "alice-ws"}, "data": {"token": base64.b64encode(b"theirs").decode()}})
    op.create("alice-ws")
    before = reconciles("problem")
    op.reconcile("alice-ws")
    assert op.secret("alice-ws")["metadata"]["resourceVersion"] == theirs["metadata"]["resourceVersion"]
    assert digests(op.secret("alice-ws")) == digests(theirs)
    ready = op.condition("alice-ws")
    assert (ready["status"], ready["reason"]) == ("False", "SecretConflict") and "SecretConflict" in op.events()
    assert reconciles("problem") == before + 1
    op.reconcile("alice-ws")
    assert op.events().count("SecretConflict") == 1  # one Event per change of state, not per reconcile

    op.kube.remove(f"{SECRETS}/alice-ws")  # the owner removes it: the next reconcile recovers
    op.reconcile("alice-ws")
    assert op.condition("alice-ws")["status"] == "True" and "SecretReady" in op.events()


def test_a_lost_race_on_the_binding_is_retried_not_forced():
    op = Operator()
    op.kube.put(PODS, {"metadata": {"name": "alice-pod", "labels": {c.LABEL_USER: "alice"}}})
    op.create("alice-ws")
    op.kube.fail("PATCH", f"{WS}/alice-ws", 409, message="the object has been modified")  # another writer came first
    before = reconciles("retry")
    with pytest.raises(RetryLater):
        op.reconcile("alice-ws")
    assert reconciles("retry") == before + 1 and not op.ws("alice-ws")["metadata"].get("ownerReferences")
    op.reconcile("alice-ws")  # what the work queue does next
    assert op.ws("alice-ws")["metadata"]["ownerReferences"][0]["name"] == "alice-pod"


def test_the_binding_is_a_compare_and_swap_on_what_was_read():
    op = Operator()
    op.kube.put(PODS, {"metadata": {"name": "alice-pod", "labels": {c.LABEL_USER: "alice"}}})
    op.create("alice-ws")
    real_get = op.kube.get

    async def get_then_someone_writes(path: str):
        body = await real_get(path)
        if path == f"{WS}/alice-ws" and body and not body["metadata"].get("ownerReferences"):
            op.kube.edit(path, {"metadata": {"labels": {"changed": "meanwhile"}}})  # after our read, before our patch
        return body

    op.kube.get = get_then_someone_writes  # type: ignore[method-assign]
    with pytest.raises(RetryLater):
        op.reconcile("alice-ws")
    assert not op.ws("alice-ws")["metadata"].get("ownerReferences")


def test_an_object_deleted_mid_reconcile_is_gone_not_an_error():
    op = Operator()
    op.create("alice-ws")
    op.kube.fail("PATCH", f"{WS}/alice-ws/status", 404)
    before = reconciles("gone"), reconciles("error")
    op.reconcile("alice-ws")
    assert (reconciles("gone"), reconciles("error")) == (before[0] + 1, before[1])
    op.kube.remove(f"{WS}/alice-ws")
    writes = len(op.writes())
    op.reconcile("alice-ws")  # no object: nothing to do, nothing written
    assert op.writes()[writes:] == []


def test_an_api_failure_is_an_error_for_the_work_queue_to_retry():
    op = Operator()
    op.create("alice-ws")
    op.kube.fail("POST", f"{SECRETS}/alice-ws", 503, message="etcd leader changed")
    before = reconciles("error")
    with pytest.raises(Exception) as caught:
        op.reconcile("alice-ws")
    assert getattr(caught.value, "status", None) == 503 and reconciles("error") == before + 1
    op.reconcile("alice-ws")
    assert op.condition("alice-ws")["status"] == "True"


def test_an_unbound_workspace_secret_looks_less_often_as_it_ages():
    op = Operator()
    op.create("young")
    op.kube.put(WS, {"metadata": {"name": "old", "creationTimestamp": (NOW - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")},
                     "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}}})
    op.reconcile("young")
    op.reconcile("old")
    assert op.scheduled == [(NS, "young", 5.0), (NS, "old", 60.0)]
