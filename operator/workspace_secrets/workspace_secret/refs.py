"""How the WorkspaceSecret room names its object: the API path, the Event reference, the log reference."""

from __future__ import annotations

from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.runtime.kube import group_path
from workspace_secrets.runtime.logref import log_extra


def ws_path(namespace: str, name: str, *, status: bool = False) -> str:
    return group_path(c.API_VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, name, subresource="status" if status else None)


def event_ref(ws: WorkspaceSecret) -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": ws.name, "namespace": ws.namespace, "uid": ws.uid}}


def log_ref(ws: WorkspaceSecret) -> dict[str, Any]:
    return log_extra(c.API_VERSION, c.WORKSPACE_SECRET_KIND, ws.namespace, ws.name, ws.uid)
