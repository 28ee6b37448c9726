"""Nothing must change, known without a request: the inputs digest a reconcile records (workspace_secret/inputs.py)
against the watch-fed Secret indexes (runtime/secret_index.py) -- what makes a restart with every object Ready and a
resync cost no request per unchanged object -- and the indexes that replaced per-object LISTs."""

from __future__ import annotations

import asyncio
import contextlib

from fakes.kube import FakeKube
from prometheus_client import REGISTRY

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.secret_index import SecretIndex
from workspace_secrets.user_keys.service import UserKeys
from workspace_secrets.workspace_secret import inputs
from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

NS = "team"
WS = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
PODS = f"/api/v1/namespaces/{NS}/pods"
EVENTS = f"/api/v1/namespaces/{NS}/events"


class Operator:
    """The controller with both Secret indexes, fed from the fake API server as the watches would feed them."""

    def __init__(self) -> None:
        self.kube = FakeKube()
        self.managed, self.users = SecretIndex(), SecretIndex()
        self.scheduled: list[tuple[str, str, float]] = []
        self.controller = WorkspaceSecretController(
            self.kube, EventRecorder(self.kube, instance="test"),  # type: ignore[arg-type]
            user_keys=UserKeys(self.kube, index_for=lambda ns: self.managed),  # type: ignore[arg-type]
            schedule=lambda ns, name, delay: self.scheduled.append((ns, name, delay)),
            managed_index_for=lambda ns: self.managed, user_index_for=lambda ns: self.users)
        self.sync()

    def sync(self) -> None:
        """What the two label-selected watches have seen by now."""
        secrets = self.kube.list_objects(SECRETS)
        ours = [s for s in secrets if (s["metadata"].get("labels") or {}).get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME]
        users = [s for s in secrets if c.LABEL_USER in (s["metadata"].get("labels") or {}) and s not in ours]
        self.managed.replace(ours, "1")
        self.users.replace(users, "1")

    def create(self, name: str, user: str = "alice", pod: str | None = None, **spec) -> None:
        pod = pod or f"{name}-pod"
        if self.kube.get_object(f"{PODS}/{pod}") is None:
            self.kube.put(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "labels": {c.LABEL_USER: user}}})
        self.kube.put(WS, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name},
                           "spec": {"user": user, "workspaceRef": {"kind": "Pod", "name": pod}, **spec}})

    def reconcile(self, name: str) -> None:
        asyncio.run(self.controller.reconcile_by_name(NS, name))
        self.sync()

    def ws(self, name: str) -> dict:
        obj = self.kube.get_object(f"{WS}/{name}")
        assert obj is not None
        return obj


def skipped() -> float:
    return REGISTRY.get_sample_value("wso_reconciles_skipped_total", {"kind": c.WORKSPACE_SECRET_KIND, "reason": "unchanged"}) or 0.0


def ready_op(name: str = "alice-ws", **spec) -> Operator:
    op = Operator()
    op.create(name, **spec)
    op.reconcile(name)
    return op


def test_a_ready_bound_workspace_secret_records_its_inputs_and_is_then_known_unchanged_without_a_request():
    op = ready_op()
    body = op.ws("alice-ws")
    assert body["status"]["inputsDigest"].startswith(f"{inputs.FORMAT}-")
    calls, before = len(op.kube.calls), skipped()
    assert op.controller.unchanged(body)
    assert len(op.kube.calls) == calls and skipped() == before + 1
    # After a restart: a new controller, the same objects and indexes. The initial listing queues nothing.
    restarted = Operator()
    restarted.kube = op.kube
    restarted.sync()
    fresh = WorkspaceSecretController(op.kube, EventRecorder(op.kube, instance="test"),  # type: ignore[arg-type]
                                      schedule=lambda ns, name, delay: restarted.scheduled.append((ns, name, delay)),
                                      managed_index_for=lambda ns: restarted.managed, user_index_for=lambda ns: restarted.users)
    fresh.observe(None, body)
    assert restarted.scheduled == [] and len(op.kube.calls) == calls


def test_every_input_that_changes_makes_it_changed():
    op = ready_op()
    body = op.ws("alice-ws")
    assert op.controller.unchanged(body)

    # The object itself: an annotation (a rotation request, a touch) or a label.
    touched = {**body, "metadata": {**body["metadata"], "annotations": {"touch": "1"}}}
    assert not op.controller.unchanged(touched)

    # The workspace Secret changed by someone (drift) -- a new resourceVersion.
    op.kube.edit(f"{SECRETS}/alice-ws", {"metadata": {"annotations": {"edited": "by-hand"}}})
    op.sync()
    assert not op.controller.unchanged(body)
    op.reconcile("alice-ws")  # repaired, and recorded again
    body = op.ws("alice-ws")
    assert op.controller.unchanged(body)

    # A Secret of the user's own appears (it may be delivered into the workspace).
    op.kube.put(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "alice-npmrc", "labels": {c.LABEL_USER: "alice"}, "annotations": {c.ANNOTATION_USER_ENV: "NPM_TOKEN=npmrc"}},
                          "data": {"npmrc": "eA=="}})
    op.sync()
    assert not op.controller.unchanged(body)
    op.reconcile("alice-ws")
    body = op.ws("alice-ws")
    assert op.controller.unchanged(body)
    assert "alice-npmrc" in body["status"]["userSecrets"]

    # The user's key Secret rewritten (a rotation by another workspace of the user).
    key_name = inputs.key_secret_name(WorkspaceSecret.from_body(body))
    op.kube.edit(f"{SECRETS}/{key_name}", {"metadata": {"annotations": {"x": "y"}}})
    op.sync()
    assert not op.controller.unchanged(body)

    # A Secret of another user changes nothing for alice.
    op.reconcile("alice-ws")
    body = op.ws("alice-ws")
    op.kube.put(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bob-npmrc", "labels": {c.LABEL_USER: "bob"}},
                          "data": {"npmrc": "eA=="}})
    op.sync()
    assert op.controller.unchanged(body)


def test_an_index_not_yet_synced_or_the_secret_gone_means_look():
    op = ready_op()
    body = op.ws("alice-ws")
    op.kube.remove(f"{SECRETS}/alice-ws")
    op.sync()
    assert not op.controller.unchanged(body)
    fresh = Operator()
    fresh.kube = op.kube
    fresh.managed = SecretIndex()  # never listed
    controller = WorkspaceSecretController(op.kube, EventRecorder(op.kube, instance="t"),  # type: ignore[arg-type]
                                           managed_index_for=lambda ns: fresh.managed, user_index_for=lambda ns: fresh.users)
    assert not controller.unchanged(body)


def test_only_a_settled_eligible_object_records_a_digest():
    op = Operator()
    # Not bound (its workspace does not exist): it must keep looking, so no digest.
    op.kube.put(WS, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "lonely"},
                     "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "nowhere"}}})
    op.reconcile("lonely")
    assert "inputsDigest" not in op.ws("lonely")["status"]
    assert not op.controller.unchanged(op.ws("lonely"))
    # Eligibility: no credentials, no userTokens, a generated key.
    base = {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "x", "namespace": NS, "uid": "u"},
            "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}}}
    assert inputs.eligible(WorkspaceSecret.from_body(base))
    brought = {**base, "spec": {**base["spec"], "ssh": {"existingSecretRef": {"name": "k"}}}}
    assert not inputs.eligible(WorkspaceSecret.from_body(brought))
    tokens = {**base, "spec": {**base["spec"], "userTokens": [{"name": "gh"}]}}
    assert not inputs.eligible(WorkspaceSecret.from_body(tokens))


def test_a_status_with_a_problem_is_never_settled():
    op = ready_op()
    body = op.ws("alice-ws")
    conditions = [{**x, "status": "False", "reason": "SecretConflict"} if x["type"] == c.CONDITION_READY else x
                  for x in body["status"]["conditions"]]
    broken = {**body, "status": {**body["status"], "conditions": conditions}}
    assert not inputs.settled(broken)
    assert not op.controller.unchanged(broken)
    stale = {**body, "metadata": {**body["metadata"], "generation": body["metadata"]["generation"] + 1}}
    assert not op.controller.unchanged(stale)


def test_the_digest_is_stable_across_processes_and_depends_on_every_input():
    essence = ("uid", 1, (("a", "b"),), ())
    one = inputs.digest(essence, key=("k", "1"), secret=("s", "2"), user_secrets=[("u", "3")])
    assert one == inputs.digest(essence, key=("k", "1"), secret=("s", "2"), user_secrets=[("u", "3")])
    assert len({one,
                inputs.digest(essence, key=("k", "9"), secret=("s", "2"), user_secrets=[("u", "3")]),
                inputs.digest(essence, key=("k", "1"), secret=("s", "9"), user_secrets=[("u", "3")]),
                inputs.digest(essence, key=("k", "1"), secret=("s", "2"), user_secrets=[]),
                inputs.digest(("uid", 2, (("a", "b"),), ()), key=("k", "1"), secret=("s", "2"), user_secrets=[("u", "3")])}) == 5


def test_the_users_secrets_are_read_by_name_from_the_index_not_listed():
    op = Operator()
    op.kube.put(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "alice-npmrc", "labels": {c.LABEL_USER: "alice"}, "annotations": {c.ANNOTATION_USER_ENV: "NPM_TOKEN=npmrc"}},
                          "data": {"npmrc": "eA=="}})
    op.sync()
    op.create("alice-ws")
    op.reconcile("alice-ws")
    assert op.kube.requests("LIST", f"{SECRETS}*") == []
    assert f"{SECRETS}/alice-npmrc" in op.kube.requests("GET")
    assert op.ws("alice-ws")["status"]["userSecrets"] == ["alice-npmrc"]
    # A new user's key Secret, absent from the synced index, is created without a GET first.
    key_name = inputs.key_secret_name(WorkspaceSecret.from_body(op.ws("alice-ws")))
    assert f"{SECRETS}/{key_name}" not in op.kube.requests("GET")


def test_a_key_secret_the_index_cannot_know_still_refuses_as_before():
    """A Secret at the key's name that is not labelled as ours is not in the index: the create's 409 looks, and the
    answer is the same UserKeyConflict as without an index (never a retry loop)."""
    op = Operator()
    op.create("alice-ws")
    body = op.ws("alice-ws")
    key_name = inputs.key_secret_name(WorkspaceSecret.from_body(body))
    op.kube.put(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": key_name}, "data": {"x": "eA=="}})
    op.sync()
    op.reconcile("alice-ws")
    ready = next(x for x in op.ws("alice-ws")["status"]["conditions"] if x["type"] == c.CONDITION_READY)
    assert ready["status"] == "False" and ready["reason"] == "UserKeyConflict"
    assert op.kube.get_object(f"{SECRETS}/{key_name}")["data"] == {"x": "eA=="}  # untouched


def test_names_for_user_come_from_what_was_observed_without_a_list():
    op = Operator()
    for name, user in (("a1", "alice"), ("a2", "alice"), ("b1", "bob")):
        op.create(name, user=user)
        op.controller.observe("ADDED", op.ws(name))
    assert asyncio.run(op.controller.names_for_user(NS, "alice")) == ["a1", "a2"]
    op.controller.observe("DELETED", op.ws("a1"))
    assert asyncio.run(op.controller.names_for_user(NS, "alice")) == ["a2"]
    assert op.kube.requests("LIST") == []


def test_a_binding_after_the_secret_was_created_gets_its_own_event():
    op = Operator()
    op.kube.put(WS, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "late"},
                     "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "late-pod"}}})
    op.reconcile("late")
    op.kube.put(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late-pod", "labels": {c.LABEL_USER: "alice"}}})
    op.reconcile("late")
    assert sorted(e["reason"] for e in op.kube.list_objects(EVENTS)) == ["SecretCreated", "WorkspaceBound"]
    assert op.ws("late")["status"]["inputsDigest"]


def test_the_resync_queues_only_objects_whose_inputs_changed():
    """App._enqueue_all (the periodic resync and a takeover): one paged list, and only objects the digest does not
    vouch for are queued."""
    from workspace_secrets import app as app_module
    from workspace_secrets.settings import OperatorConfig

    op = ready_op("same")
    op.create("touched")
    op.reconcile("touched")
    op.kube.edit(f"{WS}/touched", {"metadata": {"annotations": {"touch": "1"}}})
    app = app_module.App(OperatorConfig(namespaces=(NS,)))
    queued: list[tuple[str, str]] = []
    app.kube, app.workspace_secrets = op.kube, op.controller  # type: ignore[assignment]
    app.queue = type("Queue", (), {"add": lambda self, key: queued.append(key)})()  # type: ignore[assignment]
    calls = len(op.kube.calls)
    asyncio.run(app._enqueue_all())
    assert queued == [(NS, "touched")]
    assert [v for v, _ in op.kube.calls[calls:]] == ["LIST"]


def test_a_user_secret_the_watch_cache_cannot_serve_in_time_is_read_from_etcd():
    op = Operator()
    op.kube.put(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "alice-npmrc", "labels": {c.LABEL_USER: "alice"},
                                                                             "annotations": {c.ANNOTATION_USER_ENV: "NPM_TOKEN=npmrc"}},
                          "data": {"npmrc": "eA=="}})
    op.sync()
    op.create("alice-ws")
    op.kube.fail("GET", f"{SECRETS}/alice-npmrc", 504, times=1)  # "Too large resource version": the cache lags
    op.reconcile("alice-ws")
    assert op.kube.requests("GET", f"{SECRETS}/alice-npmrc") == [f"{SECRETS}/alice-npmrc"] * 2
    assert op.ws("alice-ws")["status"]["userSecrets"] == ["alice-npmrc"]


def test_a_relist_that_finds_missed_changes_reconciles_the_workspaces_they_concern_and_only_those():
    """The users' Secret watch was away longer than the API server keeps history (410 Gone) while alice edited her
    own Secret: the relist refreshes the index, and the WorkspaceSecrets are looked at at once (not at the next
    resync); the digest sends only alice's to the work queue."""
    import time

    from workspace_secrets import app as app_module
    from workspace_secrets.runtime.watch import LabelSelectedWatch
    from workspace_secrets.settings import OperatorConfig

    op = Operator()
    for user in ("alice", "bob"):
        op.kube.put(SECRETS, {"apiVersion": "v1", "kind": "Secret", "data": {"npmrc": "eA=="},
                              "metadata": {"name": f"{user}-npmrc", "labels": {c.LABEL_USER: user}}})
    op.sync()
    for user in ("alice", "bob"):
        op.create(f"{user}-ws", user=user)
        op.reconcile(f"{user}-ws")
    app = app_module.App(OperatorConfig(namespaces=(NS,)))
    queued: list[tuple[str, str]] = []
    app.kube, app.workspace_secrets = op.kube, op.controller  # type: ignore[assignment]
    app.queue = type("Queue", (), {"add": lambda self, key: queued.append(key)})()  # type: ignore[assignment]

    async def until(predicate, what: str) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.01)

    async def main() -> None:
        app.active = asyncio.Event()
        app.active.set()
        watch = LabelSelectedWatch(op.kube, SECRETS, c.USER_SECRETS_SELECTOR, lambda t, o: None, index=op.users,  # type: ignore[arg-type]
                                   on_missed_events=app._secret_events_missed)
        assert await watch.prime()
        assert not queued, "the first list misses nothing"
        task = asyncio.create_task(watch.run())
        try:
            await until(lambda: watch.healthy, "the watch")
            down = op.kube.fail("WATCH", SECRETS, 503, times=None)
            op.kube.end_watches()
            await until(lambda: not watch.healthy, "the watch to notice")
            op.kube.edit(f"{SECRETS}/alice-npmrc", {"data": {"npmrc": "eQ=="}})
            op.kube.compact()
            down.times = 0
            await until(lambda: bool(queued), "the WorkspaceSecrets to be looked at")
        finally:
            task.cancel()
            op.kube.close()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.gather(*app.tasks, return_exceptions=True)

    asyncio.run(main())
    assert queued == [(NS, "alice-ws")]


def test_one_off_passes_are_kept_for_stop_only_while_they_run():
    """A relist or an activation starts a one-off pass (App._spawn): stop() must be able to cancel a running one, and a
    long-lived process must not keep every finished one."""
    from workspace_secrets import app as app_module
    from workspace_secrets.settings import OperatorConfig

    app = app_module.App(OperatorConfig(namespaces=(NS,)))

    async def main() -> None:
        release = asyncio.Event()

        async def quick() -> None:
            return None

        async def waiting() -> None:
            await release.wait()

        first = app._spawn(quick(), "first")
        await first
        running = app._spawn(waiting(), "running")
        assert app.tasks == [running], "the finished pass is dropped"
        third = app._spawn(quick(), "third")
        assert app.tasks == [running, third], "the running one is kept"
        release.set()
        await asyncio.gather(running, third)

    asyncio.run(main())
