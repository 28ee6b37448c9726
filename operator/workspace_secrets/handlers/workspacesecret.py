"""kopf registrations for WorkspaceSecret.

kopf puts its finalizer on every object a kopf timer, daemon or delete handler matches, and a finalizer
blocks `kubectl delete` while the operator is down. So: no timer (an unbound WorkspaceSecret looks for
its workspace through the controller's delayed re-check in the work queue), cleanup of the Secret is
Kubernetes' garbage collection (ownerReferences), and the one delete handler -- revoking dynamic
credentials -- matches only WorkspaceSecrets that have credentials (with the abandon-cleanup escape hatch).
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


def _has_credentials(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("credentials"))


@kopf.on.delete(*RESOURCE, id="revoke-credentials", when=_has_credentials)
async def revoke_credentials(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """Revoke every credential before the WorkspaceSecret goes. Failures keep the finalizer and retry
    with backoff (TemporaryError: a PermanentError here would drop the finalizer and leak credentials);
    the abandon-cleanup annotation is the documented way out."""
    with retry_policy():
        outcome = await memo.workspace_secrets.finalize(body, attempt=retry)
    if outcome is not None:
        raise kopf.TemporaryError(outcome, delay=min(2 ** min(retry, 6), 60))
