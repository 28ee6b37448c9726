"""kopf registrations for UserToken: reconcile on create/update/resume, one daemon per token (refresh,
validation, link renewal), and a finalizer-backed delete handler. The connect page and the UserToken
Secret watch are started with the rest of the operator (app.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from workspace_secrets.api import constants as c
from workspace_secrets.app import App
from workspace_secrets.runtime.errors import retry_policy

log = logging.getLogger(__name__)

RESOURCE = (c.GROUP, c.VERSION, c.USER_TOKEN_PLURAL)


@kopf.on.resume(*RESOURCE, id="usertoken-reconcile-on-resume")
@kopf.on.create(*RESOURCE, id="usertoken-reconcile-on-create")
@kopf.on.update(*RESOURCE, id="usertoken-reconcile-on-update")
async def reconcile(body: kopf.Body, memo: Any, **_: Any) -> None:
    with retry_policy():
        await App.of(memo).user_tokens.reconcile(body)


@kopf.daemon(*RESOURCE, id="usertoken-maintain", cancellation_timeout=10)
async def maintain(namespace: str, name: str, memo: Any, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """One loop per token: do what is due (refresh ahead of expiry, validate, renew the connect link,
    re-upload a rotated SSH key), then sleep until the next thing is due or something wakes it."""
    controller = App.of(memo).user_tokens
    first = True
    while not stopped:
        try:
            delay = await controller.maintain(namespace, name, just_started=first)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - logged without secrets (our exceptions never carry tokens)
            log.warning("maintaining UserToken %s/%s failed (%s: %s); retrying in 10s", namespace, name, type(exc).__name__, exc)
            delay = 10.0
        first = False
        await controller.sleep(namespace, name, delay, stopped)


@kopf.on.delete(*RESOURCE, id="usertoken-cleanup")
async def cleanup(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Never raises PermanentError: kopf would drop the finalizer and leak the token at the provider.
    Failures are retried until they succeed or an administrator sets the skip-revocation annotation."""
    with retry_policy(retry_everything=True):
        await App.of(memo).user_tokens.finalize(body)
