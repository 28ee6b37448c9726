"""kopf registrations for WorkspaceSecret."""

from __future__ import annotations

from typing import Any

import kopf

from ..api import constants as c
from ..domain import conditions as cond
from .errors import retry_policy

RESOURCE = (c.GROUP, c.VERSION, c.WORKSPACE_SECRET_PLURAL)


@kopf.on.resume(*RESOURCE, id="reconcile-on-resume")
@kopf.on.create(*RESOURCE, id="reconcile-on-create")
@kopf.on.update(*RESOURCE, id="reconcile-on-update")
async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    with retry_policy():
        await memo.workspace_secrets.reconcile(body)


def _unbound(status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    bound = cond.find(status.get("conditions"), c.CONDITION_WORKSPACE_BOUND) or {}
    return bound.get("status") != "True" and not meta.get("deletionTimestamp")


@kopf.timer(*RESOURCE, id="bind-workspace", interval=5, initial_delay=5, when=_unbound)
async def bind_when_workspace_appears(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A WorkspaceSecret may be created before its workspace; look for the workspace until it exists.
    The timer only runs for unbound objects (the `when=` filter stops it once bound)."""
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
