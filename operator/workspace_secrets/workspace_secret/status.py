"""A WorkspaceSecret's status and Events: patch the status only when it changed (conditions keep their
transition times when unchanged), post the Events policy.announcements decides."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from workspace_secrets.api import conditions as cond
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.kube import Kube, NotFound
from workspace_secrets.workspace_secret import policy
from workspace_secrets.workspace_secret.binding import ObjectGone
from workspace_secrets.workspace_secret.refs import event_ref, log_ref, ws_path

log = logging.getLogger(__name__)


class Status:
    def __init__(self, kube: Kube, events: EventRecorder, *, clock: Callable[[], datetime]) -> None:
        self._kube = kube
        self._events = events
        self._clock = clock

    async def write(
        self,
        body: Mapping[str, Any],
        conditions: list[cond.Condition],
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Patch status only when it changed (conditions keep their transition times when unchanged)."""
        meta = body["metadata"]
        current = body.get("status") or {}
        generation = int(meta.get("generation", 0))
        merged = {**current, **(fields or {}), "observedGeneration": generation}
        new = {k: v for k, v in merged.items() if v is not None}  # None: the field no longer applies
        new["conditions"] = cond.merge(current.get("conditions"), conditions, generation=generation, now=self._clock())
        if new == current:
            return
        patch = {k: v for k, v in new.items() if current.get(k) != v}
        patch.update({k: None for k in current if k not in new})
        try:
            await self._kube.merge_patch(ws_path(meta["namespace"], meta["name"], status=True), {"status": patch})
        except NotFound:
            raise ObjectGone() from None

    async def announce(self, body: Mapping[str, Any], ws: WorkspaceSecret, obs: policy.Observation) -> None:
        """The log line of a written Secret, then the Events of this reconcile."""
        if obs.secret_action in (policy.SecretAction.CREATE, policy.SecretAction.UPDATE):
            log.info("%s Secret %r (key %s).", "Created" if obs.secret_action is policy.SecretAction.CREATE else "Updated",
                     ws.secret_name, obs.key.fingerprint, extra=log_ref(ws))  # type: ignore[union-attr]
        await self.post(ws, policy.announcements(body.get("status") or {}, ws, obs))

    async def post(self, ws: WorkspaceSecret, events: Iterable[tuple[str, str, str]]) -> None:
        for type_, reason, message in events:
            await (self._events.normal if type_ == "Normal" else self._events.warning)(event_ref(ws), reason, message)
