"""Admission of a workspace pod: read its WorkspaceSecret -> decide (policy.py) -> answer.

Called by the mutating webhook for pods carrying the opt-in label (the webhook configuration's
objectSelector sends nothing else). The only write is an Event on the WorkspaceSecret when the pod
already defines something the injection would have added (never on a dry run).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.pod_injection import policy as injection
from workspace_secrets.runtime.kube import Kube, group_path
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.metrics import WEBHOOK_ADMISSIONS

log = logging.getLogger(__name__)

Refused = injection.Refused


@dataclass(frozen=True)
class Admission:
    patch: injection.JSONPatch = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def apply(self, raw: dict[str, Any]) -> None:
        """Apply the patch to the pod in place (kopf diffs the result into the JSON patch it answers)."""
        result = injection.apply_patch(raw, self.patch)
        raw.clear()
        raw.update(result)


class PodInjectionController:
    def __init__(self, kube: Kube, events: EventRecorder, *, namespaces: tuple[str, ...] = ()) -> None:
        self._kube = kube
        self._events = events
        self._namespaces = namespaces  # empty: every namespace

    async def admit(self, pod: Mapping[str, Any], *, namespace: str, dry_run: bool = False) -> Admission:
        """The patch and warnings for a pod being created; `Refused` when it must be rejected.
        Every answer is counted in WEBHOOK_ADMISSIONS (allowed, rejected, or error: the webhook answered 500)."""
        result = "error"
        try:
            admission = await self._admit(pod, namespace=namespace, dry_run=dry_run)
            result = "allowed"
            return admission
        except Refused:
            result = "rejected"
            raise
        finally:
            WEBHOOK_ADMISSIONS.labels(webhook=c.WEBHOOK_ID, result=result).inc()

    async def _admit(self, pod: Mapping[str, Any], *, namespace: str, dry_run: bool) -> Admission:
        name = injection.requested_workspace_secret(pod)
        if name is None:
            return Admission()  # not opted in (the objectSelector should not even have sent it)
        if self._namespaces and namespace not in self._namespaces:
            # Another operator instance may serve that namespace; this one leaves the pod alone.
            return Admission(warnings=[
                f"{c.OPERATOR_NAME} serving namespaces {', '.join(self._namespaces)} did not inject "
                f"WorkspaceSecret {name!r} into a pod in namespace {namespace!r}"
            ])
        body = await self._kube.get(group_path(c.API_VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, name))
        if body is None:
            raise Refused(injection.missing_message(name, namespace))
        source = injection.mount_source(body)
        result = injection.inject(pod, source)
        if result.conflicts and not dry_run:
            message = (
                f"Pod {injection.pod_name(pod)!r}: " + "; ".join(result.conflicts)
                + ". Rename or remove the pod's own definitions to get the WorkspaceSecret's."
            )
            await self._events.warning(body, c.EVENT_POD_INJECTION_CONFLICT, message)
        log.debug("pod %s/%s: %d patch operations for WorkspaceSecret %r, %d warnings",
                  namespace, injection.pod_name(pod), len(result.patch), name, len(result.warnings))
        return Admission(result.patch, result.warnings)
