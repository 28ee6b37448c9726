"""kopf registrations for WorkspaceSecret.

Deliberately no kopf timer, daemon or delete handler: kopf puts its finalizer on every object such a
handler matches, and a finalizer would block `kubectl delete` while the operator is down. An unbound
WorkspaceSecret looks for its workspace through the controller's delayed re-check (the work queue)
instead, and cleanup is Kubernetes' garbage collection (ownerReferences).
"""

from __future__ import annotations

from typing import Any

import kopf

from ..api import constants as c
from .errors import retry_policy

RESOURCE = (c.GROUP, c.VERSION, c.WORKSPACE_SECRET_PLURAL)


@kopf.on.resume(*RESOURCE, id="reconcile-on-resume")
@kopf.on.create(*RESOURCE, id="reconcile-on-create")
@kopf.on.update(*RESOURCE, id="reconcile-on-update")
async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with retry_policy():
        await memo.workspace_secrets.reconcile(body)
