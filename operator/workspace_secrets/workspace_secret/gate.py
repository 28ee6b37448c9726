"""The workspace gate's I/O (decisions in pods.py): one label-selected LIST of a WorkspaceSecret's pods from the API
server's watch cache, the guarded JSON patches that remove the gate, and the Events on the pods (once per pod per
reason) and on the WorkspaceSecret (once per reason while pods wait)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.kube import Kube, KubeError, core_path
from workspace_secrets.workspace_secret.pods import (NOT_LISTED, Blocker, Pods, WorkspacePod, has_gate, matters, parse_pods,
                                                      pod_message, selector, ungate_patch, workspace_message)

log = logging.getLogger(__name__)

#: How soon a release that lost a race (the pod changed between our LIST and PATCH) is tried again.
RETRY_DELAY = 1.0


class Gate:
    """Lists a WorkspaceSecret's pods, releases them when nothing blocks, tells them why not."""

    def __init__(self, kube: Kube, events: EventRecorder, schedule: Callable[[str, str, float], None]) -> None:
        self._kube = kube
        self._events = events
        self._schedule = schedule
        # Per WorkspaceSecret: pod uid -> the (reason, subject) announced on that pod; only pods still waiting are kept.
        self._pod_events: dict[tuple[str, str], dict[str, set[tuple[str, str]]]] = {}
        self._ws_events: dict[tuple[str, str], frozenset[tuple[str, str]]] = {}  # announced on the WorkspaceSecret
        #: WorkspaceSecrets with a gated pod seen by the pod watch: looked at even if they no longer require a gate
        #: (its requirement was removed from the spec: the pod must not wait for ever).
        self.maybe_gated: set[tuple[str, str]] = set()

    # --- the pod watch ---------------------------------------------------------------------------------
    def pod_changed(self, event_type: str, pod: Mapping[str, Any]) -> tuple[str, str] | None:
        """A watch event of a labelled pod: the WorkspaceSecret to reconcile, or None when the change does not
        matter (no API call either way). Matters: a new or deleted pod, one at our gate, one being deleted,
        one finished."""
        key = matters(event_type, pod)
        if key is not None and event_type != "DELETED" and has_gate(pod):
            self.maybe_gated.add(key)
        return key

    def forget(self, namespace: str, name: str) -> None:
        """The WorkspaceSecret is gone: drop what was remembered of it."""
        key = (namespace, name)
        self._pod_events.pop(key, None)
        self._ws_events.pop(key, None)
        self.maybe_gated.discard(key)

    # --- reconcile steps ---------------------------------------------------------------------------------
    async def pods(self, ws: WorkspaceSecret) -> Pods:
        """The workspace's pods (from the API server's watch cache: the pod watch brings us back for any change
        after it), or NOT_LISTED when nothing of this WorkspaceSecret depends on them (no API call)."""
        key = (ws.namespace, ws.name)
        if not ws.requires_gate and key not in self.maybe_gated:
            return NOT_LISTED
        labels = selector(ws)
        if labels is None:
            return Pods(listed=True)
        listing = await self._kube.list(core_path(ws.namespace, "pods"), label_selector=labels, from_cache=True)
        pods = parse_pods(listing.get("items") or (), ws)
        if not pods.gated:
            self.maybe_gated.discard(key)
        return pods

    async def release(self, ws: WorkspaceSecret, pods: Pods, blocking: tuple[Blocker, ...], ws_ref: Mapping[str, Any]) -> None:
        """Remove the gate of every waiting pod when nothing blocks; else tell the pods (once per pod per
        reason) and the WorkspaceSecret (once per reason while pods wait) what they wait for."""
        key = (ws.namespace, ws.name)
        gated = pods.gated
        if not gated or not blocking:
            self._ws_events.pop(key, None)
            self._pod_events.pop(key, None)
        if not gated:
            return
        if not blocking:
            for pod in gated:
                await self._ungate(ws, pod)
            return
        announced = self._ws_events.get(key, frozenset())
        current = frozenset((b.reason, b.subject) for b in blocking)
        for blocker in blocking:
            if (blocker.reason, blocker.subject) not in announced:
                await self._events.warning(ws_ref, blocker.reason, workspace_message(gated, blocker))
        self._ws_events[key] = current
        waiting = {pod.uid: told for pod in gated if (told := self._pod_events.get(key, {}).get(pod.uid)) is not None}
        self._pod_events[key] = waiting  # forgets pods that no longer wait
        for pod in gated:
            told = waiting.setdefault(pod.uid, set())
            for blocker in blocking:
                if (blocker.reason, blocker.subject) not in told:
                    told.add((blocker.reason, blocker.subject))
                    await self._events.warning(pod.event_ref(), blocker.reason, pod_message(pod, ws, blocker))

    async def _ungate(self, ws: WorkspaceSecret, pod: WorkspacePod) -> None:
        try:
            await self._kube.json_patch(core_path(ws.namespace, "pods", pod.name), ungate_patch(pod, ws))
        except KubeError as exc:
            if exc.status == 404:
                return  # gone meanwhile
            # 422: a test operation failed (the pod's gates or labels changed, or another incarnation); or the API
            # server had trouble. Look again shortly (the pod watch usually brings us back sooner).
            log.info("scheduling gate of pod %s/%s not removed (%s %s); looking again", ws.namespace, pod.name, exc.status, exc.reason)
            self._schedule(ws.namespace, ws.name, RETRY_DELAY)
            return
        log.info("released pod %s/%s (WorkspaceSecret %s: Secret holds everything)", ws.namespace, pod.name, ws.name)
        await self._events.normal(pod.event_ref(), c.EVENT_GATE_REMOVED,
                                  f"WorkspaceSecret {ws.name!r}: Secret {ws.secret_name!r} holds everything the workspace "
                                  f"requires; scheduling gate {c.SCHEDULING_GATE} removed.")
