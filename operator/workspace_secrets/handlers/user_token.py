"""kopf registrations for UserToken, on the same reconcile model as WorkspaceSecret: watch events feed the
UserToken work queue (app.py), and a finalizer-backed delete handler revokes the token. The connect page and
the UserToken Secret watch are started with the rest of the operator (app.py).

Why an on.event handler and no create/update/resume handlers and no per-token daemon: a UserToken's work is
driven by time (refresh ahead of expiry, validation, a device-flow poll) as much as by changes. Each pass returns
when something is due next and the work queue holds the key until then, so one queue of keys with bounded
workers does what one kopf daemon per token did, on the reconcile model WorkspaceSecrets use (see
app.py's _workspace_secret_event), and the echoes of our own status writes cost nothing.

The delete handler matches every UserToken, so kopf keeps its finalizer on each: a token is revoked at the
provider before it goes (with the skip-revocation escape hatch).
"""

from __future__ import annotations

from typing import Any

import kopf

from workspace_secrets.api import constants as c
from workspace_secrets.app import App
from workspace_secrets.runtime.errors import retry_policy

RESOURCE = (c.GROUP, c.VERSION, c.USER_TOKEN_PLURAL)


@kopf.on.event(*RESOURCE, id="usertoken-observe")
async def observe(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Every creation, change and deletion, and each object of the initial listing at start-up (type None).
    The controller queues a pass when the object changed in a way that matters; the work queue runs it."""
    app = App.of(memo)
    app.user_tokens.observe(type, body)
    # The workspaces that use this token show its state (TokensReady, status.tokens) and its connect link: queued on
    # the active replica (a standby's queue is paused, and a takeover reconciles every WorkspaceSecret); every
    # replica remembers the token's state and resourceVersion (token_reader.py reads no older than it).
    active = getattr(app, "active", None)
    await app.workspace_secrets.user_token_changed(type, body, schedule=active is None or active.is_set())


@kopf.on.delete(*RESOURCE, id="usertoken-cleanup")
async def cleanup(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Never raises PermanentError: kopf would drop the finalizer and leak the token at the provider.
    Failures are retried until they succeed or an administrator sets the skip-revocation annotation."""
    with retry_policy(retry_everything=True):
        await App.of(memo).user_tokens.finalize(body)
