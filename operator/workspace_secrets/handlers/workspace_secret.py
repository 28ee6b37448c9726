"""kopf registrations for WorkspaceSecret: watch events feed the controller's work queue; deletion of
an object with dynamic credentials runs the revocation.

Why an on.event handler and not kopf's on.create/on.update/on.resume: those persist a diff base on
every object (one more PATCH per object and a second copy of the spec in an annotation), start one
handler per object at once (a burst of 1,000 creations held 1,000 bodies and handlers in memory and,
sharing one API rate limit, finished nearly all of them at the very end: see docs/benchmarks.md), and
re-run at every start-up. A level-triggered queue of keys (controller-runtime's model) does the same
job with fewer writes, bounded memory and objects finishing one by one.

kopf puts its finalizer on every object a kopf timer, daemon or delete handler matches, and a finalizer
blocks `kubectl delete` while the operator is down. So: no timer (an unbound WorkspaceSecret looks for
its workspace through the controller's delayed re-check in the work queue), cleanup of the Secret is
Kubernetes' garbage collection (ownerReferences), and the one delete handler -- revoking dynamic
credentials -- matches only WorkspaceSecrets that have credentials (with the abandon-cleanup escape hatch).
"""

from __future__ import annotations

from typing import Any

import kopf

from workspace_secrets.api import constants as c
from workspace_secrets.app import App
from workspace_secrets.runtime.errors import retry_policy

RESOURCE = (c.GROUP, c.VERSION, c.WORKSPACE_SECRET_PLURAL)


@kopf.on.event(*RESOURCE, id="observe")
async def observe(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Every creation, change and deletion, and each object of the initial listing at start-up (type
    None). The controller queues a reconcile when the object changed in a way that matters; the work
    queue runs it with bounded concurrency and retries failures with backoff."""
    App.of(memo).workspace_secrets.observe(type, body)


def _has_credentials(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("credentials"))


@kopf.on.delete(*RESOURCE, id="revoke-credentials", when=_has_credentials)
async def revoke_credentials(body: kopf.Body, memo: Any, retry: int, **_: Any) -> None:
    """Revoke every credential before the WorkspaceSecret goes. Failures keep the finalizer and retry
    with backoff (TemporaryError: a PermanentError here would drop the finalizer and leak credentials);
    the abandon-cleanup annotation is the documented way out."""
    with retry_policy():
        outcome = await App.of(memo).workspace_secrets.finalize(body, attempt=retry)
    if outcome is not None:
        raise kopf.TemporaryError(outcome, delay=min(2 ** min(retry, 6), 60))
