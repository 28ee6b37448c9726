"""The workspace's pods and the scheduling gate: which pods wait (admission), what is "running", what keeps the
gate closed (pure), and releasing them / telling them why not (Gate, against the in-memory API server)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Problem
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.pod_injection import policy as inj
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.workspace_secret import gate as wg
from workspace_secrets.workspace_secret import pods as wp
from workspace_secrets.workspace_secret.policy import Observation

NS = "team"
PODS = f"/api/v1/namespaces/{NS}/pods"
EVENTS = f"/api/v1/namespaces/{NS}/events"
GATE = {"name": c.SCHEDULING_GATE}


def ws_body(*, credentials: list | None = None, user_tokens: list | None = None, user: str = "alice") -> dict:
    spec: dict = {"user": user, "workspaceRef": {"kind": "Deployment", "name": "ws"}, "secretName": "alice-secrets"}
    if credentials is not None:
        spec["credentials"] = credentials
    if user_tokens is not None:
        spec["userTokens"] = user_tokens
    return {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND,
            "metadata": {"name": "alice-ws", "namespace": NS, "uid": "u1", "generation": 1}, "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "SecretReady", "message": "ok"}]}}


def ws(**kw) -> WorkspaceSecret:
    return WorkspaceSecret.from_body(ws_body(**kw))


AWS = {"name": "aws", "provider": "aws"}
WHILE_EXISTS = {**AWS, "lifecycle": "WhileExists"}


def pod(name: str = "p1", *, labels: dict | None = None, gates: list | None = None, phase: str = "Pending",
        deleting: bool = False, node: str | None = None) -> dict:
    meta: dict = {"name": name, "namespace": NS,
                  "labels": labels if labels is not None else {c.LABEL_WORKSPACE_SECRET: "alice-ws", c.LABEL_USER: "alice"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-30T12:00:00Z"
        meta["finalizers"] = ["test/keep"]
    spec: dict = {"containers": [{"name": "main", "image": "x"}]}
    if gates is not None:
        spec["schedulingGates"] = gates
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": phase}}


# --- which pods wait --------------------------------------------------------------------------------------
def test_a_while_running_credential_gates_and_while_exists_does_not():
    assert ws(credentials=[AWS]).requires_gate  # the default lifecycle is WhileRunning
    assert not ws(credentials=[WHILE_EXISTS]).requires_gate
    assert not ws().requires_gate


def test_a_required_token_gates_and_an_optional_one_does_not():
    assert ws(user_tokens=[{"name": "github"}]).requires_gate
    assert not ws(user_tokens=[{"name": "github", "optional": True}]).requires_gate
    assert ws(user_tokens=[{"name": "a", "optional": True}, {"name": "b"}]).required_tokens == ("b",)


def admit(p: dict, body: dict) -> tuple[dict, inj.Injection]:
    result = inj.inject(p, inj.mount_source(body))
    return inj.apply_patch(p, result.patch), result


def test_admission_adds_the_gate_once():
    gated, _ = admit(pod(), ws_body(credentials=[AWS]))
    assert gated["spec"]["schedulingGates"] == [GATE]
    again, result = admit(gated, ws_body(credentials=[AWS]))
    assert again["spec"]["schedulingGates"] == [GATE] and not [op for op in result.patch if "schedulingGates" in op["path"]]
    # Another gate of the platform's stays, ours is appended.
    both, _ = admit(pod(gates=[{"name": "example.com/quota"}]), ws_body(credentials=[AWS]))
    assert both["spec"]["schedulingGates"] == [{"name": "example.com/quota"}, GATE]


def test_admission_adds_no_gate_when_nothing_is_required():
    plain, _ = admit(pod(), ws_body(credentials=[WHILE_EXISTS]))
    assert "schedulingGates" not in plain["spec"]


def test_a_pod_with_node_name_is_admitted_without_gate_and_warned():
    placed, result = admit(pod(node="node-1"), ws_body(credentials=[AWS]))
    assert "schedulingGates" not in placed["spec"]
    assert any("spec.nodeName" in w and c.SCHEDULING_GATE in w for w in result.warnings)


# --- the pods, running --------------------------------------------------------------------------------------
def test_pods_of_the_workspace_are_those_with_both_labels():
    w = ws(credentials=[AWS])
    items = [pod("mine"), pod("other-user", labels={c.LABEL_WORKSPACE_SECRET: "alice-ws", c.LABEL_USER: "bob"}),
             pod("other-ws", labels={c.LABEL_WORKSPACE_SECRET: "bob-ws", c.LABEL_USER: "alice"}), pod("unlabelled", labels={})]
    assert [p.name for p in wp.parse_pods(items, w).items] == ["mine"]
    assert wp.selector(w) == f"{c.LABEL_WORKSPACE_SECRET}=alice-ws,{c.LABEL_USER}=alice"


@pytest.mark.parametrize(("kw", "running"), [
    ({"phase": "Pending", "gates": [GATE]}, True),  # gated: starting
    ({"phase": "Pending"}, True),
    ({"phase": "Running"}, True),
    ({"phase": "Running", "deleting": True}, True),  # stopping: runs (preStop, graceful shutdown) until gone
    ({"phase": "Pending", "deleting": True}, True),
    ({"phase": "Succeeded", "deleting": True}, False),
    ({"phase": "Succeeded"}, False),
    ({"phase": "Failed"}, False),
])
def test_running_is_any_live_pod(kw, running):
    assert wp.parse_pods([pod(**kw)], ws()).running is running
    assert wp.parse_pods([], ws()).running is False


def test_only_live_pods_at_our_gate_are_gated():
    items = [pod("a", gates=[GATE]), pod("b", gates=[{"name": "other"}]), pod("c", gates=[GATE], deleting=True), pod("d")]
    assert [p.name for p in wp.parse_pods(items, ws()).gated] == ["a"]


def test_a_name_that_cannot_be_a_label_value_has_no_pods():
    long = WorkspaceSecret.from_body({**ws_body(), "metadata": {**ws_body()["metadata"], "name": "a" * 70}})
    assert wp.selector(long) is None


# --- what keeps the gate closed ---------------------------------------------------------------------------
def obs(**kw) -> Observation:
    base = dict(key=object(), key_source="Generated", problem=None, secret_action=None, secret_data=None, workspace_uid="w")
    return Observation(**{**base, **kw})  # type: ignore[arg-type]


def test_nothing_blocks_when_the_secret_is_written_and_credentials_are_active():
    assert wp.blockers(ws(credentials=[AWS]), obs(credentials=[{"name": "aws", "phase": "Active"}])) == ()


def test_a_secret_not_written_blocks():
    [b] = wp.blockers(ws(), obs(key=None, problem=Problem("SecretConflict", "held by someone else")))
    assert b.reason == c.EVENT_WAITING_FOR_SECRET and "SecretConflict" in b.message and "alice-secrets" in b.message


def test_a_while_running_credential_not_active_blocks_and_while_exists_does_not():
    [b] = wp.blockers(ws(credentials=[AWS, {**WHILE_EXISTS, "name": "db"}]),
                      obs(credentials=[{"name": "aws", "phase": "Error"}], credential_problems=(Problem("ProviderUnavailable", "x"),)))
    assert (b.reason, b.subject) == (c.EVENT_WAITING_FOR_CREDENTIALS, "aws") and "Error" in b.message
    [missing] = wp.blockers(ws(credentials=[AWS]), obs(credentials=None))
    assert missing.subject == "aws"


@dataclasses.dataclass
class Tokens:  # the part of tokens.TokensOutcome the gate reads
    status: list


def test_a_required_token_not_delivered_blocks_with_its_connect_link():
    w = ws(user_tokens=[{"name": "github"}, {"name": "gitlab", "optional": True}])
    link = "https://connect.example/accounts?focus=team/github"
    tokens = Tokens([{"name": "github", "phase": "AwaitingAuthorization", "delivered": False, "reason": "TokenNotConnected",
                      "connectURL": link}, {"name": "gitlab", "phase": "Expired", "delivered": False}])
    [b] = wp.blockers(w, obs(tokens=tokens))
    assert (b.reason, b.subject) == (c.EVENT_WAITING_FOR_TOKEN, "github") and link in b.message
    assert "TokenNotConnected" in b.message
    assert wp.blockers(w, obs(tokens=Tokens([{"name": "github", "phase": "Valid", "delivered": True}]))) == ()
    # Valid at the provider but not delivered (e.g. its token Secret is not the UserToken's): still waits.
    [forged] = wp.blockers(w, obs(tokens=Tokens([{"name": "github", "phase": "Valid", "delivered": False}])))
    assert forged.subject == "github"
    [absent] = wp.blockers(w, obs(tokens=None))
    assert absent.subject == "github" and "connect page" in absent.message


# --- the pod watch's filter ------------------------------------------------------------------------------------
def test_the_pod_watch_schedules_only_changes_that_matter():
    gate = wg.Gate(None, None, lambda *a: None)  # type: ignore[arg-type]
    key = (NS, "alice-ws")
    assert gate.pod_changed("ADDED", pod()) == key
    assert gate.pod_changed("DELETED", pod(phase="Running")) == key
    assert gate.pod_changed("MODIFIED", pod(phase="Running")) is None  # started: nothing to do
    assert gate.pod_changed("MODIFIED", pod(gates=[GATE])) == key
    assert gate.pod_changed("MODIFIED", pod(phase="Running", deleting=True)) == key
    assert gate.pod_changed("MODIFIED", pod(phase="Succeeded")) == key
    assert gate.pod_changed("MODIFIED", pod(labels={})) is None
    assert key in gate.maybe_gated


def uid_pod(uid: str, rv: str, **kw) -> dict:
    p = pod(**kw)
    p["metadata"].update(uid=uid, resourceVersion=rv)
    return p


def test_the_pod_watch_acts_on_transitions_only():
    """A gated pod's status updates (conditions, scheduling attempts) do not each cause a reconcile: only a change of
    (at our gate, being deleted, finished) does; what was remembered of a pod is forgotten when it is deleted."""
    gate = wg.Gate(None, None, lambda *a: None)  # type: ignore[arg-type]
    key = (NS, "alice-ws")
    assert gate.pod_changed("ADDED", uid_pod("u1", "1", gates=[GATE])) == key
    assert gate.pod_changed("MODIFIED", uid_pod("u1", "2", gates=[GATE])) is None  # a status update while waiting
    assert gate.pod_changed("MODIFIED", uid_pod("u1", "3", gates=[GATE])) is None
    assert gate.pod_changed("MODIFIED", uid_pod("u1", "4", phase="Pending")) == key  # released
    assert gate.pod_changed("MODIFIED", uid_pod("u1", "5", phase="Running")) is None
    assert gate.pod_changed("MODIFIED", uid_pod("u1", "6", phase="Running", deleting=True)) == key  # stopping
    assert gate.pod_changed("MODIFIED", uid_pod("u1", "7", phase="Running", deleting=True)) is None
    assert gate.pod_changed("MODIFIED", uid_pod("u1", "8", phase="Succeeded", deleting=True)) == key  # finished
    assert gate.pod_changed("DELETED", uid_pod("u1", "9", phase="Succeeded", deleting=True)) == key
    assert "u1" not in gate._pod_states
    # A pod first seen by a MODIFIED event (the operator started meanwhile): it matters when it waits or stops.
    assert gate.pod_changed("MODIFIED", uid_pod("u2", "10", gates=[GATE])) == key
    assert gate.pod_changed("MODIFIED", uid_pod("u3", "11", phase="Running")) is None


class Recording(FakeKube):
    """The in-memory API server, recording how pods are listed (a real API server serves resourceVersion=0 and
    NotOlderThan from its watch cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.lists: list[dict] = []

    async def list(self, path, *, label_selector=None, from_cache=False, not_older_than=None):  # type: ignore[override]
        self.lists.append({"from_cache": from_cache, "not_older_than": not_older_than})
        return await super().list(path, label_selector=label_selector, from_cache=from_cache, not_older_than=not_older_than)


def test_the_reconcile_a_pod_event_causes_lists_pods_at_least_as_new_as_that_event():
    """After a pod's DELETED event a watch-cache listing at resourceVersion=0 may still show it (running: its
    credentials stay); the reconcile that event queued lists NotOlderThan the event's resourceVersion."""
    kube = Recording()
    gate = wg.Gate(kube, EventRecorder(kube, instance="test"), lambda *a: None)  # type: ignore[arg-type]
    w = ws(credentials=[AWS])
    gate.pod_changed("DELETED", uid_pod("u1", "42", phase="Running", deleting=True))
    assert asyncio.run(gate.pods(w)).running is False
    assert kube.lists[-1] == {"from_cache": False, "not_older_than": "42"}
    asyncio.run(gate.pods(w))  # no pod event since: the cheap cache read
    assert kube.lists[-1] == {"from_cache": True, "not_older_than": None}


# --- releasing, telling why not -----------------------------------------------------------------------------------
class Harness:
    def __init__(self) -> None:
        self.kube = FakeKube()
        self.scheduled: list[tuple[str, str, float]] = []
        self.gate = wg.Gate(self.kube, EventRecorder(self.kube, instance="test"),  # type: ignore[arg-type]
                            lambda ns, name, delay: self.scheduled.append((ns, name, delay)))
        self.ws_obj = self.kube.put(f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}", ws_body(credentials=[AWS]))
        self.ws = WorkspaceSecret.from_body(self.ws_obj)

    def run(self, blocking: tuple[wp.Blocker, ...] = ()) -> wp.Pods:
        async def go() -> wp.Pods:
            pods = await self.gate.pods(self.ws)
            await self.gate.release(self.ws, pods, blocking, self.ws_obj)
            return pods
        return asyncio.run(go())

    def gates(self, name: str) -> list:
        return (self.kube.get_object(f"{PODS}/{name}") or {})["spec"].get("schedulingGates")

    def events(self) -> list[tuple[str, str, str]]:
        return [(e["involvedObject"]["kind"], e["involvedObject"]["name"], e["reason"]) for e in self.kube.list_objects(EVENTS)]


BLOCKED = (wp.Blocker(c.EVENT_WAITING_FOR_TOKEN, "github", "UserToken 'github' ...: alice connect at https://connect.example/x"),)


def test_release_removes_only_our_gate_from_the_workspaces_pods():
    h = Harness()
    h.kube.put(PODS, pod("mine", gates=[{"name": "example.com/quota"}, GATE]))
    h.kube.put(PODS, pod("bobs", labels={c.LABEL_WORKSPACE_SECRET: "alice-ws", c.LABEL_USER: "bob"}, gates=[GATE]))
    assert [p.name for p in h.run().gated] == ["mine"]
    assert h.gates("mine") == [{"name": "example.com/quota"}]  # the platform's own gate is kept
    assert h.gates("bobs") == [GATE]  # another user's pod labelled with this WorkspaceSecret: never released
    assert h.events() == [("Pod", "mine", c.EVENT_GATE_REMOVED)]
    assert [p.name for p in h.run().gated] == []  # idempotent: nothing left to do


def test_blocked_pods_are_told_once_per_reason_and_the_workspace_secret_too():
    h = Harness()
    h.kube.put(PODS, pod("a", gates=[GATE]))
    h.kube.put(PODS, pod("b", gates=[GATE]))
    h.run(BLOCKED)
    h.run(BLOCKED)
    # The pods are told; the WorkspaceSecret is not told a second time (TokensReady's own Warning says it).
    assert sorted(h.events()) == [("Pod", "a", c.EVENT_WAITING_FOR_TOKEN), ("Pod", "b", c.EVENT_WAITING_FOR_TOKEN)]
    messages = [e["message"] for e in h.kube.list_objects(EVENTS)]
    assert all("https://connect.example/x" in m for m in messages)
    assert h.gates("a") == [GATE] and h.gates("b") == [GATE]
    h.run()
    assert h.gates("a") == [] and h.gates("b") == []


def test_a_concurrent_change_of_the_pod_is_never_clobbered():
    """Between our LIST and our PATCH the pod is relabelled to another user, or gets another gate: the guarded
    patch is refused as a whole and the WorkspaceSecret is looked at again."""
    h = Harness()
    h.kube.put(PODS, pod("a", gates=[GATE]))

    async def go() -> None:
        pods = await h.gate.pods(h.ws)
        h.kube.edit(f"{PODS}/a", {"metadata": {"labels": {c.LABEL_USER: "mallory"}}})
        await h.gate.release(h.ws, pods, (), h.ws_obj)
    asyncio.run(go())
    assert h.gates("a") == [GATE] and h.scheduled == [(NS, "alice-ws", wg.RETRY_DELAY)]
    assert h.events() == []


def test_no_pod_listing_when_nothing_depends_on_pods():
    h = Harness()
    h.ws = WorkspaceSecret.from_body(ws_body(credentials=[WHILE_EXISTS]))
    assert h.run() is wp.NOT_LISTED
    assert not [call for call in h.kube.calls if call[1].startswith(PODS)]
    # ...unless the pod watch saw a gated pod of it (its requirement was removed while a pod waited).
    h.kube.put(PODS, pod("a", gates=[GATE]))
    h.gate.pod_changed("ADDED", h.kube.get_object(f"{PODS}/a"))
    h.run()
    assert h.gates("a") == []


def test_the_controller_queues_the_workspace_secret_a_pod_names():
    from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

    kube = FakeKube()
    scheduled: list[tuple[str, str, float]] = []
    controller = WorkspaceSecretController(kube, EventRecorder(kube), schedule=lambda *a: scheduled.append(a))  # type: ignore[arg-type]
    asyncio.run(controller.pod_changed("ADDED", pod(gates=[GATE])))
    asyncio.run(controller.pod_changed("MODIFIED", pod(phase="Running")))
    assert scheduled == [(NS, "alice-ws", 0.0)]


# --- a pod admitted before the WorkspaceSecret published everything -----------------------------------------------
PUBLISHED = {"env": [{"name": c.KEY_GIT_SSH_COMMAND, "key": c.KEY_GIT_SSH_COMMAND}, {"name": "KUBECONFIG", "key": "kube.config-path"},
                     {"name": "bad name", "key": "x"}],
             "files": [{"key": "tool.gh.hosts.yml", "path": "gh/hosts.yml"}]}


def admitted(body_status: dict, *, name: str = "p1", owner: str | None = "ReplicaSet", **kw) -> dict:
    """A pod as the webhook admits it against a WorkspaceSecret whose status is `body_status`."""
    body = ws_body(credentials=[AWS])
    body["status"] = {**body["status"], **body_status}
    p, _ = admit(pod(name, **kw), body)
    p["metadata"].update(uid=f"uid-{name}", resourceVersion="7")
    if owner:
        group = "batch/v1" if owner == "Job" else "apps/v1"
        p["metadata"]["ownerReferences"] = [{"apiVersion": group, "kind": owner, "name": "ws-abc", "uid": "o1", "controller": True}]
    return p


def test_missing_delivery_compares_the_pod_with_what_the_workspace_secret_publishes_now():
    w = ws(credentials=[AWS])
    early = wp.parse_pods([admitted({})], w).items[0]  # admitted before the first reconcile: GIT_SSH_COMMAND only
    assert wp.missing_delivery(early, PUBLISHED) == ("env KUBECONFIG", "file gh/hosts.yml")  # invalid names skipped
    complete = wp.parse_pods([admitted(PUBLISHED)], w).items[0]
    assert wp.missing_delivery(complete, PUBLISHED) == ()
    assert wp.missing_delivery(early, {}) == ()  # status.env never written: the webhook's default is all there is
    # What the pod defines itself is kept by the webhook (a conflict): a new pod would not get it either.
    own = admitted({})
    own["spec"]["containers"][0]["env"].append({"name": "KUBECONFIG", "value": "/mine"})
    assert wp.missing_delivery(wp.parse_pods([own], w).items[0], PUBLISHED) == ("file gh/hosts.yml",)
    # Only the containers the webhook targets: a sidecar left out by the containers annotation lacks nothing.
    two = pod()
    two["spec"]["containers"].append({"name": "sidecar", "image": "x"})
    two["metadata"]["annotations"] = {c.ANNOTATION_CONTAINERS: "main"}
    body = ws_body(credentials=[AWS])
    body["status"] = {**body["status"], **PUBLISHED}
    targeted, _ = admit(two, body)
    assert wp.missing_delivery(wp.parse_pods([targeted], w).items[0], PUBLISHED) == ()
    # Who re-creates it: a ReplicaSet/StatefulSet controller; not a bare pod, not another owner, not a Job (its
    # controller would count the deleted pod as a failure against backoffLimit).
    assert early.recreated_by == "ReplicaSet/ws-abc"
    assert wp.parse_pods([admitted({}, owner="StatefulSet")], w).items[0].recreated_by == "StatefulSet/ws-abc"
    assert wp.parse_pods([admitted({}, owner="Job")], w).items[0].recreated_by is None
    assert wp.parse_pods([admitted({}, owner=None)], w).items[0].recreated_by is None
    other = admitted({}, owner=None)
    other["metadata"]["ownerReferences"] = [{"apiVersion": "example.com/v1", "kind": "Workspace", "name": "w", "uid": "x", "controller": True}]
    assert wp.parse_pods([other], w).items[0].recreated_by is None


def release_with(h: Harness, published: dict) -> None:
    async def go() -> None:
        await h.gate.release(h.ws, await h.gate.pods(h.ws), (), h.ws_obj, published=published)
    asyncio.run(go())


def test_an_incomplete_pod_of_a_controller_is_deleted_not_released():
    h = Harness()
    early = h.kube.put(PODS, admitted({}, gates=None))
    release_with(h, PUBLISHED)
    assert h.kube.get_object(f"{PODS}/p1") is None  # gone: its ReplicaSet re-creates it, admitted with everything
    assert ("DELETE", f"{PODS}/p1") in [call[:2] for call in h.kube.calls]
    assert h.events() == [(c.WORKSPACE_SECRET_KIND, "alice-ws", wg.EVENT_POD_RECREATED)]
    message = h.kube.list_objects(EVENTS)[0]["message"]
    assert "KUBECONFIG" in message and "ReplicaSet/ws-abc" in message
    # The re-created pod (admitted now, with everything) is released.
    h.kube.put(PODS, admitted(PUBLISHED, name="p2", gates=None))
    release_with(h, PUBLISHED)
    assert h.gates("p2") == []
    assert early["metadata"]["uid"] != h.kube.get_object(f"{PODS}/p2")["metadata"]["uid"]


def test_only_the_incarnation_that_was_looked_at_is_deleted():
    """Deleted with preconditions (uid, resourceVersion): a pod that changed since the LIST stays, and is looked at again."""
    h = Harness()
    h.kube.put(PODS, admitted({}, gates=None))

    async def go() -> None:
        pods = await h.gate.pods(h.ws)
        h.kube.edit(f"{PODS}/p1", {"metadata": {"annotations": {"x": "changed"}}})
        await h.gate.release(h.ws, pods, (), h.ws_obj, published=PUBLISHED)
    asyncio.run(go())
    assert h.gates("p1") == [GATE] and h.scheduled == [(NS, "alice-ws", wg.RETRY_DELAY)]


def test_a_bare_incomplete_pod_is_released_with_a_warning_saying_what_it_lacks():
    """Nothing re-creates a bare pod, and a WhileRunning credential's env vars are published only once it is issued
    (after its pod exists): holding it would hold it for ever. It starts, told what it lacks and to re-create it."""
    h = Harness()
    h.kube.put(PODS, admitted({}, owner=None, gates=None))
    release_with(h, PUBLISHED)
    assert h.gates("p1") == []
    assert sorted(h.events()) == [("Pod", "p1", wg.EVENT_POD_INCOMPLETE), ("Pod", "p1", c.EVENT_GATE_REMOVED)]
    [warning] = [e for e in h.kube.list_objects(EVENTS) if e["reason"] == wg.EVENT_POD_INCOMPLETE]
    assert "KUBECONFIG" in warning["message"] and "delete and create it again" in warning["message"]


def test_the_workspace_runs_while_its_deleted_incomplete_pod_is_re_created():
    """Between the deletion of an incomplete pod and its controller's new pod the workspace is starting, not
    stopped: its WhileRunning credentials are not revoked (and minted again) in between."""
    h = Harness()
    h.kube.put(PODS, admitted({}, gates=None))
    release_with(h, PUBLISHED)
    assert h.kube.get_object(f"{PODS}/p1") is None
    assert asyncio.run(h.gate.pods(h.ws)).running is True  # no pod yet: being re-created
    h.kube.put(PODS, admitted(PUBLISHED, name="p2", gates=None))
    assert asyncio.run(h.gate.pods(h.ws)).recreating is False  # the new pod is there: running by itself
    h.kube.remove(f"{PODS}/p2")
    h.gate._recreating[(NS, "alice-ws")] = h.gate._clock() - 1  # the grace ended: a new pod that never came
    assert asyncio.run(h.gate.pods(h.ws)).running is False


def test_a_controller_whose_pods_stay_incomplete_is_not_recreated_for_ever():
    h = Harness()
    for n in range(wg.MAX_RECREATIONS):
        h.kube.put(PODS, admitted({}, name=f"p{n}", gates=None))
        release_with(h, PUBLISHED)
        assert h.kube.get_object(f"{PODS}/p{n}") is None
    h.kube.put(PODS, admitted({}, name="last", gates=None))
    release_with(h, PUBLISHED)
    assert h.gates("last") == []  # released as it is, with a Warning that says what it lacks
    [warning] = [e for e in h.kube.list_objects(EVENTS) if e["involvedObject"]["name"] == "last" and e["reason"] == wg.EVENT_POD_INCOMPLETE]
    assert "KUBECONFIG" in warning["message"]


def test_a_credential_wait_is_told_on_the_workspace_secret_once():
    h = Harness()
    h.kube.put(PODS, pod("a", gates=[GATE]))
    blocked = (wp.Blocker(c.EVENT_WAITING_FOR_CREDENTIALS, "aws", "credential 'aws' is not issued yet"),)
    h.run(blocked)
    h.run(blocked)
    assert sorted(h.events()) == [("Pod", "a", c.EVENT_WAITING_FOR_CREDENTIALS),
                                  (c.WORKSPACE_SECRET_KIND, "alice-ws", c.EVENT_WAITING_FOR_CREDENTIALS)]


def test_waiting_pods_of_an_invalid_workspace_secret_are_told_once():
    h = Harness()
    h.kube.put(PODS, admitted({}, name="a", gates=None))
    h.kube.put(PODS, pod("started"))
    h.kube.put(PODS, pod("bobs", labels={c.LABEL_WORKSPACE_SECRET: "alice-ws", c.LABEL_USER: "bob"}, gates=[GATE]))
    asyncio.run(h.gate.tell_invalid(NS, "alice-ws", "alice", "InvalidSpec: x"))
    assert h.events() == []  # no gated pod seen by the watch: not even a LIST
    h.gate.pod_changed("ADDED", h.kube.get_object(f"{PODS}/a"))
    asyncio.run(h.gate.tell_invalid(NS, "alice-ws", "alice", "InvalidSpec: x"))
    asyncio.run(h.gate.tell_invalid(NS, "alice-ws", "alice", "InvalidSpec: x"))
    assert h.events() == [("Pod", "a", wg.EVENT_INVALID)]  # not another user's pod labelled with it
    assert "is invalid (InvalidSpec: x)" in h.kube.list_objects(EVENTS)[0]["message"]


def test_the_app_queues_the_workspace_secrets_of_pods_waiting_since_before():
    """On activation the app lists the labelled pods once and hands the gated ones to the controller (the pod watch
    only sees changes from now on)."""
    from workspace_secrets.app import App

    kube = FakeKube()
    kube.put(PODS, pod("waiting", gates=[GATE]))
    kube.put(PODS, pod("started", phase="Running"))
    kube.put(PODS, pod("other", labels={c.LABEL_WORKSPACE_SECRET: "bob-ws", c.LABEL_USER: "bob"}, gates=[GATE]))
    seen: list[tuple[str, str]] = []

    class Controller:
        async def pod_changed(self, event_type, obj):
            seen.append((event_type, obj["metadata"]["name"]))

    app = App.__new__(App)
    app.kube = kube  # type: ignore[assignment]
    app.active = asyncio.Event()
    app.workspace_secrets = Controller()  # type: ignore[assignment]
    app._pod_paths = lambda: [PODS]  # type: ignore[method-assign]

    async def go() -> None:
        app.active.set()
        await app._enqueue_gated_pods()
    asyncio.run(go())
    assert sorted(seen) == [("ADDED", "other"), ("ADDED", "waiting")]


def test_an_incomplete_pod_of_a_controller_is_replaced_while_it_still_waits():
    """The pod that waits is the one that starts: replaced as soon as the WorkspaceSecret publishes what it lacks,
    even while a token is still missing; the new one waits, told why."""
    h = Harness()
    h.kube.put(PODS, admitted({}, gates=None))

    async def go(published: dict) -> None:
        await h.gate.release(h.ws, await h.gate.pods(h.ws), BLOCKED, h.ws_obj, published=published)
    asyncio.run(go(PUBLISHED))
    assert h.kube.get_object(f"{PODS}/p1") is None
    h.kube.put(PODS, admitted(PUBLISHED, name="p2", gates=None))
    asyncio.run(go(PUBLISHED))
    assert h.gates("p2") == [GATE]
    assert sorted(h.events()) == [("Pod", "p2", c.EVENT_WAITING_FOR_TOKEN), (c.WORKSPACE_SECRET_KIND, "alice-ws", wg.EVENT_POD_RECREATED)]
