"""The workspace gate's I/O (decisions in pods.py): one label-selected LIST of a WorkspaceSecret's pods from the API
server's watch cache, the guarded JSON patches that remove the gate, and the Events on the pods (once per pod per
reason) and on the WorkspaceSecret (once per reason while pods wait)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.kube import Kube, KubeError, core_path
from workspace_secrets.workspace_secret.pods import (NOT_LISTED, Blocker, Pods, PodState, WorkspacePod, has_gate, matters,
                                                      missing_delivery, parse_pods, pod_message, pod_state, selector,
                                                      ungate_patch, workspace_message)

log = logging.getLogger(__name__)

#: How soon a release that lost a race (the pod changed between our LIST and PATCH) is tried again.
RETRY_DELAY = 1.0
#: Incomplete pods of one controller deleted (to be re-created complete) before the gate gives up and releases
#: them as they are, with a Warning: a pod the webhook cannot complete must not be re-created for ever.
MAX_RECREATIONS = 3
#: After deleting an incomplete pod, the workspace counts as running for up to this long (until its controller's new
#: pod is there): its WhileRunning credentials are not revoked in between.
RECREATE_GRACE = 30.0
#: Blockers whose cause already has its own Warning on the WorkspaceSecret (TokensReady's, Ready's): the gate tells
#: the pods, not the WorkspaceSecret a second time.
_ANNOUNCED_ELSEWHERE = frozenset({c.EVENT_WAITING_FOR_TOKEN, c.EVENT_WAITING_FOR_SECRET})
EVENT_POD_RECREATED = "WorkspacePodRecreated"
EVENT_POD_INCOMPLETE = "WorkspacePodIncomplete"
EVENT_INVALID = c.EVENT_WORKSPACE_SECRET_INVALID


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
        #: Per pod uid: (at our gate, being deleted, finished) as last seen by the watch -- MODIFIED events matter
        #: only when this changes. Forgotten on DELETED.
        self._pod_states: dict[str, PodState] = {}
        #: Per WorkspaceSecret: the resourceVersion of the last pod event that scheduled it; its next LIST is at
        #: least that new (a DELETED pod is never seen again in a stale watch-cache answer).
        self._seen_rv: dict[tuple[str, str], str] = {}
        #: Per WorkspaceSecret and controller: incomplete pods deleted so far (see MAX_RECREATIONS).
        self._recreated: dict[tuple[str, str], dict[str, int]] = {}
        self._recreating: dict[tuple[str, str], float] = {}  # WorkspaceSecret -> until (monotonic), see RECREATE_GRACE
        self._clock = time.monotonic

    # --- the pod watch ---------------------------------------------------------------------------------
    def pod_changed(self, event_type: str, pod: Mapping[str, Any]) -> tuple[str, str] | None:
        """A watch event of a labelled pod: the WorkspaceSecret to reconcile, or None when the change does not
        matter (no API call either way). Matters: a new or deleted pod, one at our gate, one being deleted,
        one finished."""
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        previous = self._pod_states.get(uid)
        if event_type == "DELETED":
            self._pod_states.pop(uid, None)
        elif uid:
            self._pod_states[uid] = pod_state(pod)
        key = matters(event_type, pod, previous)
        if key is None:
            return None
        if event_type != "DELETED" and has_gate(pod):
            self.maybe_gated.add(key)
        if meta.get("resourceVersion"):
            self._seen_rv[key] = str(meta["resourceVersion"])
        return key

    def forget(self, namespace: str, name: str) -> None:
        """The WorkspaceSecret is gone: drop what was remembered of it."""
        key = (namespace, name)
        self._pod_events.pop(key, None)
        self._ws_events.pop(key, None)
        self.maybe_gated.discard(key)
        self._seen_rv.pop(key, None)
        self._recreated.pop(key, None)
        self._recreating.pop(key, None)

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
        seen = self._seen_rv.get(key)
        if seen is None:
            listing = await self._kube.list(core_path(ws.namespace, "pods"), label_selector=labels, from_cache=True)
        else:  # from the watch cache too, but no older than the pod event that brought us here
            try:
                listing = await self._kube.list(core_path(ws.namespace, "pods"), label_selector=labels, not_older_than=seen)
            except KubeError as exc:
                if exc.status != 504:
                    raise
                # The watch cache could not catch up with that event in time: a quorum read is at least as new.
                listing = await self._kube.list(core_path(ws.namespace, "pods"), label_selector=labels)
            if self._seen_rv.get(key) == seen:
                del self._seen_rv[key]
        pods = parse_pods(listing.get("items") or (), ws)
        if not pods.gated:
            self.maybe_gated.discard(key)
        if key in self._recreating:
            if any(p.live and not p.deleting for p in pods.items) or self._clock() >= self._recreating[key]:
                del self._recreating[key]  # the new pod is there (or never came)
            else:
                pods = dataclasses.replace(pods, recreating=True)
        return pods

    async def release(self, ws: WorkspaceSecret, pods: Pods, blocking: tuple[Blocker, ...], ws_ref: Mapping[str, Any],
                      published: Mapping[str, Any] | None = None) -> None:
        """Remove the gate of every waiting pod when nothing blocks; else tell the pods (once per pod per
        reason) and the WorkspaceSecret (once per reason while pods wait, unless that cause has its own Warning)
        what they wait for.

        `published`: the WorkspaceSecret's status as just written (status.env, status.files). A waiting pod that
        lacks some of it (admitted before the first reconcile) is not released: a controller's pod is deleted at once,
        also while something blocks (its controller re-creates it, admitted with everything). A bare pod is released with a Warning saying what it
        lacks: nothing would re-create it, and a WhileRunning credential's env vars are published only once it is
        issued -- after its pod exists -- so holding it would hold it for ever."""
        key = (ws.namespace, ws.name)
        gated = pods.gated
        if not gated or not blocking:
            self._ws_events.pop(key, None)
            self._pod_events.pop(key, None)
        if not gated:
            return
        # Incomplete pods of a controller are replaced at once, also while something blocks: the pod that waits is the
        # one that starts, and `kubectl describe` shows what it will get.
        remaining: list[tuple[WorkspacePod, tuple[str, ...]]] = []
        for pod in gated:
            lacking = missing_delivery(pod, published) if published is not None else ()
            if lacking and pod.recreated_by is not None and await self._incomplete(ws, pod, lacking, ws_ref):
                continue  # deleted for re-creation (or looked at again shortly)
            if not lacking and pod.recreated_by is not None and not blocking:
                self._recreated.get(key, {}).pop(pod.recreated_by, None)  # complete again: a fresh allowance
            remaining.append((pod, lacking))
        if not blocking:
            for pod, lacking in remaining:
                await self._ungate(ws, pod, lacking)
            return
        gated = tuple(pod for pod, _ in remaining)
        if not gated:
            return
        announced = self._ws_events.get(key, frozenset())
        current = frozenset((b.reason, b.subject) for b in blocking)
        for blocker in blocking:
            if (blocker.reason, blocker.subject) not in announced and blocker.reason not in _ANNOUNCED_ELSEWHERE:
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

    async def _incomplete(self, ws: WorkspaceSecret, pod: WorkspacePod, lacking: tuple[str, ...], ws_ref: Mapping[str, Any]) -> bool:
        """A waiting pod of a controller that lacks part of what the WorkspaceSecret publishes. True: it is handled
        (deleted to be re-created, or looked at again shortly); False: treat it as it is (its controller's pods were
        re-created MAX_RECREATIONS times and still lack it -- released with a Warning that says so)."""
        key = (ws.namespace, ws.name)
        what = ", ".join(lacking[:8]) + (f" and {len(lacking) - 8} more" if len(lacking) > 8 else "")
        if pod.recreated_by is None:
            return False
        counts = self._recreated.setdefault(key, {})
        if counts.get(pod.recreated_by, 0) >= MAX_RECREATIONS:
            return False
        try:
            gone = await self._kube.delete(core_path(ws.namespace, "pods", pod.name), uid=pod.uid,
                                           resource_version=pod.resource_version or None)
        except KubeError as exc:
            if exc.status == 409 or exc.status >= 500:  # another incarnation, changed since listed, or trouble: look again
                log.info("incomplete pod %s/%s not deleted (%s %s); looking again", ws.namespace, pod.name, exc.status, exc.reason)
                self._schedule(ws.namespace, ws.name, RETRY_DELAY)
                return True
            # Refused for good (403: no RBAC to delete pods; 422/403 from the operator guard): never retried every
            # second; this controller's pods are released as they are, with the Warning that says what they lack.
            log.warning("incomplete pod %s/%s cannot be deleted (%s %s); releasing it as it is", ws.namespace, pod.name,
                        exc.status, exc.reason)
            counts[pod.recreated_by] = MAX_RECREATIONS
            return False
        if gone:
            counts[pod.recreated_by] = counts.get(pod.recreated_by, 0) + 1
            self._recreating[key] = self._clock() + RECREATE_GRACE
            message = (f"Pod {pod.name!r} was admitted before WorkspaceSecret {ws.name!r} published {what}; it never ran "
                       f"and was deleted so that {pod.recreated_by} re-creates it with everything.")
            log.info("deleted incomplete gated pod %s/%s (WorkspaceSecret %s; %s re-creates it): lacked %s",
                     ws.namespace, pod.name, ws.name, pod.recreated_by, what)
            await self._events.normal(ws_ref, EVENT_POD_RECREATED, message)
        return True

    async def tell_invalid(self, namespace: str, name: str, user: object, why: str) -> None:
        """The WorkspaceSecret is invalid (its spec, a reserved Secret name): its waiting pods -- labelled with it and
        its spec.user, as always -- are told so, once per pod (they wait until it is fixed). Costs a LIST only when
        the pod watch saw a gated pod of it."""
        key = (namespace, name)
        if key not in self.maybe_gated or not isinstance(user, str) or not user:
            return
        listing = await self._kube.list(core_path(namespace, "pods"), label_selector=f"{c.LABEL_WORKSPACE_SECRET}={name}", from_cache=True)
        told = self._pod_events.setdefault(key, {})
        for item in listing.get("items") or ():
            meta = item.get("metadata") or {}
            uid = str(meta.get("uid") or "")
            if (meta.get("labels") or {}).get(c.LABEL_USER) != user or not has_gate(item) or meta.get("deletionTimestamp") \
                    or (EVENT_INVALID, "") in told.get(uid, set()):
                continue
            told.setdefault(uid, set()).add((EVENT_INVALID, ""))
            ref = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": meta.get("name", ""), "namespace": namespace, "uid": uid}}
            await self._events.warning(ref, EVENT_INVALID, f"Waiting (scheduling gate {c.SCHEDULING_GATE}): WorkspaceSecret {name!r} "
                                                           f"is invalid ({why[:300]}); see its Ready condition. The pod starts once it is fixed.")

    async def _ungate(self, ws: WorkspaceSecret, pod: WorkspacePod, lacking: tuple[str, ...] = ()) -> None:
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
        if lacking:
            what = ", ".join(lacking[:8]) + (f" and {len(lacking) - 8} more" if len(lacking) > 8 else "")
            why = (f"{pod.recreated_by} re-created its pods {MAX_RECREATIONS} times and they still lacked it (see the "
                   f"WorkspaceSecret's status.env and the pod's own env/volumes)" if pod.recreated_by else
                   f"the pod was created before WorkspaceSecret {ws.name!r} published them and nothing re-creates a bare "
                   f"pod: delete and create it again to get them (the Secret's files are mounted either way)")
            log.info("released incomplete pod %s/%s (WorkspaceSecret %s): lacks %s", ws.namespace, pod.name, ws.name, what)
            await self._events.warning(pod.event_ref(), EVENT_POD_INCOMPLETE, f"Released without {what}: {why}.")
        await self._events.normal(pod.event_ref(), c.EVENT_GATE_REMOVED,
                                  f"WorkspaceSecret {ws.name!r}: Secret {ws.secret_name!r} holds everything the workspace "
                                  f"requires; scheduling gate {c.SCHEDULING_GATE} removed.")
