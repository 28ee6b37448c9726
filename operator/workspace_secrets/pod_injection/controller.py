"""Admission of a workspace pod: read its WorkspaceSecret -> decide (domain.pod_injection) -> answer.

Called by the mutating webhook for pods carrying the opt-in label (the webhook configuration's
objectSelector sends nothing else). The only write is an Event on the WorkspaceSecret when the pod
already defines something the injection would have added (never on a dry run).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api import constants as c
from ..domain import pod_injection as injection
from ..kube.client import Kube, group_path
from ..kube.events import EventRecorder

log = logging.getLogger(__name__)

Refused = injection.Refused


@dataclass(frozen=True)
class Admission:
    patch: injection.JSONPatch = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class PodInjectionController:
    def __init__(self, kube: Kube, events: EventRecorder, *, namespaces: tuple[str, ...] = ()) -> None:
        self._kube = kube
        self._events = events
        self._namespaces = namespaces  # empty: every namespace

    async def admit(self, pod: Mapping[str, Any], *, namespace: str, dry_run: bool = False) -> Admission:
        """The patch and warnings for a pod being created; `Refused` when it must be rejected."""
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
