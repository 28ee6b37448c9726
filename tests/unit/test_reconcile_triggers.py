"""Which watch events queue a reconcile: changes that matter do, echoes of the operator's own writes
(status, ownerReferences, kopf's bookkeeping annotations) do not."""

from __future__ import annotations

import copy
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.workspace_secret.controller import WorkspaceSecretController
from workspace_secrets.workspace_secret.policy import essence


def body(**meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "ws", "uid": "u1", "generation": 1, "resourceVersion": "10",
                     "labels": {"team": "a"}, "annotations": {}, **meta},
        "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}},
    }


def test_the_operators_own_writes_leave_the_essence_unchanged() -> None:
    before = body()
    after = copy.deepcopy(before)
    after["metadata"]["resourceVersion"] = "11"
    after["metadata"]["ownerReferences"] = [{"kind": "Pod", "name": "p", "uid": "x"}]
    after["metadata"]["annotations"][f"{c.GROUP}/last-handled-configuration"] = "{}"
    after["metadata"]["annotations"][f"{c.GROUP}/revoke-credentials"] = '{"started": "2026-01-01T00:00:00"}'
    after["status"] = {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}
    assert essence(after) == essence(before)


def test_spec_labels_user_annotations_and_a_new_incarnation_change_the_essence() -> None:
    base = essence(body())
    assert essence(body(generation=2)) != base
    assert essence(body(labels={"team": "b"})) != base
    assert essence(body(annotations={"touch": "1"})) != base
    assert essence(body(annotations={c.ANNOTATION_ROTATE_SSH_KEY: "2026"})) != base
    assert essence(body(uid="u2")) != base


class Recorder:
    def __init__(self) -> None:
        self.scheduled: list[tuple[str, str, float]] = []

    def __call__(self, namespace: str, name: str, delay: float) -> None:
        self.scheduled.append((namespace, name, delay))


def controller() -> tuple[WorkspaceSecretController, Recorder]:
    schedule = Recorder()
    return WorkspaceSecretController(kube=None, events=None, schedule=schedule), schedule  # type: ignore[arg-type]


def test_observe_queues_new_objects_and_skips_echoes_of_what_was_handled() -> None:
    ctl, scheduled = controller()
    ctl.observe("ADDED", body())
    assert scheduled.scheduled == [("ns", "ws", 0.0)]
    ctl._handled[("ns", "ws")] = hash(essence(body()))  # as reconcile_by_name records it
    echo = body(resourceVersion="12")
    echo["status"] = {"observedGeneration": 1}
    ctl.observe("MODIFIED", echo)
    assert len(scheduled.scheduled) == 1
    ctl.observe("MODIFIED", body(generation=2))
    assert scheduled.scheduled[-1] == ("ns", "ws", 0.0) and len(scheduled.scheduled) == 2


def test_observe_ignores_objects_being_deleted_and_forgets_deleted_ones() -> None:
    ctl, scheduled = controller()
    ctl.observe("MODIFIED", body(deletionTimestamp="2026-01-01T00:00:00Z"))
    assert scheduled.scheduled == []
    ctl._handled[("ns", "ws")] = hash(essence(body()))
    ctl.observe("DELETED", body())
    assert ("ns", "ws") not in ctl._handled
    ctl.observe(None, body())  # the initial listing after a restart: reconciled once
    assert scheduled.scheduled == [("ns", "ws", 0.0)]


def test_kopfs_per_event_success_lines_of_observe_are_kept_only_when_verbose() -> None:
    import logging

    from workspace_secrets.cli import _ObserveSuccessFilter

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)

    quiet, verbose = _ObserveSuccessFilter(verbose=False), _ObserveSuccessFilter(verbose=True)
    assert not quiet.filter(record("Handler 'usertoken-observe' succeeded."))
    assert quiet.filter(record("Handler 'usertoken-cleanup' succeeded."))
    assert quiet.filter(record("Handler 'usertoken-observe' failed with an exception and will try again in 60 seconds: x"))
    assert verbose.filter(record("Handler 'usertoken-observe' succeeded."))
