"""Kubernetes Events for our objects (core/v1 Events, the ones `kubectl describe` shows).

Posting is best effort: a failed Event must never fail a reconcile. Messages are composed by the
controllers from names, reasons and fingerprints only -- never from secret values.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.names import short_hash
from workspace_secrets.runtime.kube import Kube, KubeError, core_path

log = logging.getLogger(__name__)

_HOST = socket.gethostname()


class EventRecorder:
    def __init__(self, kube: Kube, *, component: str = c.OPERATOR_NAME, instance: str | None = None) -> None:
        self._kube = kube
        self._component = component
        # Which replica posted it (the peering identity: host/pid/random), so Events tell replicas apart.
        self._instance = (instance or _HOST)[:128]

    async def normal(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        await self._post(obj, "Normal", reason, message)

    async def warning(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        await self._post(obj, "Warning", reason, message)

    async def _post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = datetime.now(timezone.utc)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'object')[:200]}.{short_hash(reason, message, now.isoformat(), length=10)}",
                "namespace": namespace,
                "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME},
            },
            "involvedObject": {
                "apiVersion": obj.get("apiVersion"),
                "kind": obj.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._component, "host": _HOST},
            "reportingComponent": self._component,
            "reportingInstance": self._instance,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self._kube.create(core_path(namespace, "events"), event)
        except KubeError as exc:
            log.warning("could not post event %s on %s/%s: %s", reason, namespace, meta.get("name"), exc.reason)
