"""A rotation of the user's key queues every WorkspaceSecret of that user at once (the rotating reconcile does it:
the watch event of the operator's own write is an echo and queues nothing); a change of the key made by anyone
else fans out through the Secret watch; should the queueing fail, the write is not taken for an echo."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.user_keys import sshkeys
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
NS = "team"
WS = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
ALICE_KEY = f"/api/v1/namespaces/{NS}/secrets/{user_key_secret_name('alice', sshkeys.KeySpec())}"


class Operator:
    def __init__(self) -> None:
        self.kube = FakeKube(clock=lambda: NOW)
        self.scheduled: list[tuple[str, str, float]] = []
        self.controller = WorkspaceSecretController(self.kube, EventRecorder(self.kube, instance="test"),  # type: ignore[arg-type]
                                                    schedule=lambda ns, name, delay: self.scheduled.append((ns, name, delay)),
                                                    clock=lambda: NOW)

    def create(self, name: str, user: str) -> None:
        self.kube.put(WS, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name},
                           "spec": {"user": user, "workspaceRef": {"kind": "Pod", "name": f"{name}-pod"}}})

    def reconcile(self, name: str) -> None:
        asyncio.run(self.controller.reconcile_by_name(NS, name))

    def watch_event(self, event_type: str, path: str) -> None:
        obj = self.kube.get_object(path)
        assert obj is not None
        asyncio.run(self.controller.secret_changed(event_type, obj))

    def queued(self) -> set[str]:
        names = {name for _, name, delay in self.scheduled if delay == 0.0}
        self.scheduled.clear()
        return names


def settled() -> Operator:
    op = Operator()
    for name, user in (("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob")):
        op.create(name, user)
        op.reconcile(name)
    op.queued()
    return op


def test_a_rotation_queues_every_workspace_secret_of_the_user_and_no_one_elses() -> None:
    op = settled()
    op.kube.edit(f"{WS}/a2", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "r1"}}})
    op.reconcile("a2")
    queued = op.queued()
    assert queued >= {"a1", "a3"} and "b1" not in queued
    # The watch event of that write is the operator's own: it queues nothing more.
    op.watch_event("MODIFIED", ALICE_KEY)
    assert op.queued() == set()


def test_a_change_of_the_key_by_anyone_else_fans_out_through_the_watch() -> None:
    op = settled()
    op.kube.edit(ALICE_KEY, {"metadata": {"annotations": {"someone": "else"}}})
    op.watch_event("MODIFIED", ALICE_KEY)
    assert op.queued() == {"a1", "a2", "a3"}


def test_a_rotation_whose_queueing_fails_leaves_it_to_the_watch() -> None:
    op = settled()
    op.kube.edit(f"{WS}/a1", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "r1"}}})
    fan_out = op.controller.names_for_user

    async def unavailable(namespace: str, user: str) -> list[str]:
        raise RuntimeError("finding the user's workspaces failed right after the rotation")

    op.controller.names_for_user = unavailable  # type: ignore[method-assign]
    op.reconcile("a1")
    op.controller.names_for_user = fan_out  # type: ignore[method-assign]
    before = op.kube.get_object(ALICE_KEY)
    assert before is not None and (before["metadata"].get("annotations") or {}).get(c.ANNOTATION_ROTATION_REQUEST)
    assert op.queued() <= {"a1"}
    op.watch_event("MODIFIED", ALICE_KEY)  # not taken for an echo: the watch fans out
    assert op.queued() == {"a1", "a2", "a3"}
    assert op.controller._handled  # the reconcile itself completed (Ready, the Event posted)
    assert "SSHKeyRotated" in [e["reason"] for e in op.kube.list_objects(f"/api/v1/namespaces/{NS}/events")]
