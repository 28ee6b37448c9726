"""kopf registrations for UserToken: reconcile on create/update/resume, one daemon per token (refresh,
validation, link renewal), a finalizer-backed delete handler, and the connect page's start-up."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import kopf

from ..api import constants as c
from ..config import ConnectConfig, OperatorConfig
from ..controllers.user_token import ConnectSettings, RetryLater, UserTokenController
from ..domain import usertoken as policy
from ..domain.oauth import PendingAuthorizations
from ..domain.sensitive import Sensitive
from ..domain.signing import Signer
from ..kube.client import KubeError
from ..kube.events import EventRecorder
from ..kube.watch import LabelSelectedWatch
from ..providers.http import AiohttpTransport
from ..providers.oauth.registry import ProviderCache
from ..web.server import ConnectServer, WebSettings, serve

log = logging.getLogger(__name__)

RESOURCE = (c.GROUP, c.VERSION, c.USER_TOKEN_PLURAL)
_TRANSIENT = {408, 429, 500, 502, 503, 504}


def _signer(connect: ConnectConfig) -> Signer:
    if connect.signing_key_file:
        return Signer(Sensitive(Path(connect.signing_key_file).read_bytes().strip()))
    log.warning("no --connect-signing-key-file: using a random key; pending sign-ins and connect-page forms end with this process")
    return Signer.generate()


@kopf.on.startup(id="usertoken-startup")
async def start(memo: kopf.Memo, **_: Any) -> None:
    if not hasattr(memo, "kube"):  # lifecycle's `configure` makes the API client first
        raise kopf.TemporaryError("waiting for the API client", delay=0.2)
    config: OperatorConfig = memo.config
    connect = config.connect
    signer = _signer(connect)
    transport = AiohttpTransport()
    controller = UserTokenController(
        memo.kube, EventRecorder(memo.kube), ProviderCache(transport), signer, PendingAuthorizations(signer),
        ConnectSettings(base_url=connect.base_url,
                        schedule=policy.Schedule(validate_interval=timedelta(seconds=connect.validate_interval))),
        namespaces=config.namespaces, operator_namespace=config.operator_namespace,
    )
    memo.user_tokens = controller
    memo.usertoken_transport = transport
    memo.usertoken_tasks = []
    if connect.port is not None:
        settings = WebSettings.parse(connect.base_url, connect.user_header, connect.trusted_proxies, connect.session_ttl)
        if not settings.sign_in_configured:
            log.warning("the connect page has no sign-in (--connect-user-header and --connect-trusted-proxies): it answers 503 "
                        "until the platform's authentication proxy is configured")
        memo.connect_runner = await serve(ConnectServer(controller, signer, settings), host=connect.bind, port=connect.port)

    async def on_secret(type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(c.LABEL_COMPONENT) == c.COMPONENT_USER_SSH_KEY:
            # The user's SSH key appeared or was rotated: their UserTokens upload it.
            for name in await controller.names_for_user(meta["namespace"], labels.get(c.LABEL_USER, "")):
                controller.wake(meta["namespace"], name)
        elif labels.get(c.LABEL_COMPONENT) == c.COMPONENT_USER_TOKEN and type_ == "DELETED":
            for owner in meta.get("ownerReferences") or ():
                if owner.get("kind") == c.USER_TOKEN_KIND:
                    controller.wake(meta["namespace"], owner["name"])

    selector = f"{c.MANAGED_SELECTOR},{c.LABEL_COMPONENT} in ({c.COMPONENT_USER_SSH_KEY},{c.COMPONENT_USER_TOKEN})"
    paths = ["/api/v1/secrets"] if config.clusterwide else [f"/api/v1/namespaces/{ns}/secrets" for ns in config.namespaces]
    for path in paths:
        watch = LabelSelectedWatch(memo.kube, path, selector, on_secret)
        memo.usertoken_tasks.append(asyncio.create_task(watch.run(), name=f"usertoken-secret-watch {path}"))


@kopf.on.cleanup(id="usertoken-shutdown")
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "usertoken_tasks", ()):
        task.cancel()
    await asyncio.gather(*getattr(memo, "usertoken_tasks", ()), return_exceptions=True)
    if hasattr(memo, "connect_runner"):
        await memo.connect_runner.cleanup()
    if hasattr(memo, "usertoken_transport"):
        await memo.usertoken_transport.close()


def _retry(exc: Exception) -> kopf.TemporaryError:
    if isinstance(exc, RetryLater):
        return kopf.TemporaryError(str(exc), delay=exc.delay)
    if isinstance(exc, KubeError):
        return kopf.TemporaryError(f"Kubernetes API answered {exc.status} {exc.reason}: {exc.message}",
                                   delay=5 if exc.status in _TRANSIENT else 30)
    return kopf.TemporaryError(f"{type(exc).__name__}: {exc}", delay=10)


@kopf.on.resume(*RESOURCE, id="usertoken-reconcile-on-resume")
@kopf.on.create(*RESOURCE, id="usertoken-reconcile-on-create")
@kopf.on.update(*RESOURCE, id="usertoken-reconcile-on-update")
async def reconcile(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    try:
        await memo.user_tokens.reconcile(body)
    except (RetryLater, KubeError) as exc:
        raise _retry(exc) from None


@kopf.daemon(*RESOURCE, id="usertoken-maintain", cancellation_timeout=10)
async def maintain(namespace: str, name: str, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """One loop per token: do what is due (refresh ahead of expiry, validate, renew the connect link,
    re-upload a rotated SSH key), then sleep until the next thing is due or something wakes it."""
    controller: UserTokenController = memo.user_tokens
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
async def cleanup(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Never raises PermanentError: kopf would drop the finalizer and leak the token at the provider.
    Failures are retried until they succeed or an administrator sets the skip-revocation annotation."""
    try:
        await memo.user_tokens.finalize(body)
    except Exception as exc:  # noqa: BLE001 - every failure is retried, never permanent
        raise _retry(exc) from None
