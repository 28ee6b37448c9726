"""The workspace binding: the workspace becomes the owner of its WorkspaceSecret, so Kubernetes' garbage
collector deletes the WorkspaceSecret (and, through its ownerReference, the Secret) when the workspace goes --
even while the operator is down. Only a workspace labelled with the WorkspaceSecret's user is bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workspace_secrets.api.conditions import Problem
from workspace_secrets.api.workspace_secret import WORKSPACE_KINDS, WorkspaceSecret
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.kube import Conflict, Kube, NotFound, core_path, group_path
from workspace_secrets.workspace_secret import policy
from workspace_secrets.workspace_secret.refs import ws_path


class ObjectGone(Exception):
    """The WorkspaceSecret was deleted while it was being reconciled: nothing left to do."""


async def bind(kube: Kube, body: Mapping[str, Any], ws: WorkspaceSecret) -> tuple[str | None, Problem | None]:
    """Returns (the workspace's uid when bound, why it is not bound although it exists)."""
    ref = ws.workspace_ref
    api_version, plural = WORKSPACE_KINDS[ref.kind]
    owners = list(body["metadata"].get("ownerReferences") or ())
    for owner in owners:
        if owner.get("kind") == ref.kind and owner.get("name") == ref.name and owner.get("uid"):
            # Already bound: no need to look again. Should that workspace be gone (or replaced by a
            # namesake), the garbage collector deletes this WorkspaceSecret through that reference.
            return str(owner["uid"]), None
    path = core_path(ws.namespace, plural, ref.name) if api_version == "v1" else group_path(api_version, ws.namespace, plural, ref.name)
    workspace = await kube.get(path)
    if workspace is None or workspace["metadata"].get("deletionTimestamp"):
        return None, None
    mismatch = policy.workspace_user_problem(workspace, ws)
    if mismatch is not None:
        return None, mismatch
    uid = workspace["metadata"]["uid"]
    if not any(o.get("uid") == uid for o in owners):
        owners.append({"apiVersion": api_version, "kind": ref.kind, "name": ref.name, "uid": uid})
        try:
            await kube.merge_patch(
                ws_path(ws.namespace, ws.name),
                {"metadata": {"ownerReferences": owners, "resourceVersion": body["metadata"]["resourceVersion"]}},
            )
        except Conflict:
            raise RetryLater("WorkspaceSecret changed while binding it to its workspace") from None
        except NotFound:
            raise ObjectGone() from None
    return uid, None
