"""Operator start-up and shutdown: kopf settings, the API client, the Secret watch, the resync loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from ..api import constants as c
from ..config import OperatorConfig
from ..controllers.workqueue import WorkQueue
from ..controllers.workspace_secret import WorkspaceSecretController
from ..kube.client import Kube, group_path, load_configuration
from ..kube.events import EventRecorder
from ..kube.watch import LabelSelectedWatch
from . import admission

log = logging.getLogger(__name__)


@kopf.on.login(id="login")
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf and our own client authenticate the same way: one place reads in-cluster or kubeconfig
    credentials (the `kubernetes` package, which also handles exec plugins and token files)."""
    config: OperatorConfig = memo.config
    cfg = await asyncio.to_thread(load_configuration, config.kubeconfig)
    bearer = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization") or ""
    scheme, _, token = bearer.partition(" ") if " " in bearer else ("Bearer", "", bearer)
    return kopf.ConnectionInfo(
        server=cfg.host,
        ca_path=cfg.ssl_ca_cert,
        insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file,
        private_key_path=cfg.key_file,
        scheme=scheme or None,
        token=token or None,
        username=cfg.username or None,
        password=cfg.password or None,
    )


@kopf.on.startup(id="configure")
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config: OperatorConfig = memo.config
    # kopf's own bookkeeping lives under our group, and only warnings become Events (kopf would otherwise
    # post an Event for every handler success, doubling API writes for no reader).
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    # Re-establish watches regularly; a watch that hangs silently (API server restart) is noticed.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60

    kube = Kube.from_environment(kubeconfig=config.kubeconfig, max_concurrency=config.api_concurrency)
    controller = WorkspaceSecretController(kube, EventRecorder(kube))
    queue = WorkQueue(lambda key: controller.reconcile_by_name(*key), workers=config.secret_workers)
    memo.kube = kube
    memo.workspace_secrets = controller
    memo.queue = queue
    queue.start()

    async def on_secret(type_: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if type_ == "DELETED":
            controller.written.pop(key, None)
        elif controller.written.get(key) == meta.get("resourceVersion"):
            return  # the echo of our own write
        labels = meta.get("labels") or {}
        component = labels.get(c.LABEL_COMPONENT)
        if component == c.COMPONENT_WORKSPACE_SECRET:
            for owner in meta.get("ownerReferences") or ():
                if owner.get("kind") == c.WORKSPACE_SECRET_KIND and owner.get("controller"):
                    queue.add((meta["namespace"], owner["name"]))
        elif component == c.COMPONENT_USER_SSH_KEY and type_ != "ADDED":
            # The user's key was rotated or deleted: every workspace of that user follows.
            for name in await controller.names_for_user(meta["namespace"], labels.get(c.LABEL_USER, "")):
                queue.add((meta["namespace"], name))

    paths = ["/api/v1/secrets"] if config.clusterwide else [f"/api/v1/namespaces/{ns}/secrets" for ns in config.namespaces]
    memo.watches = [LabelSelectedWatch(kube, path, c.MANAGED_SELECTOR, on_secret) for path in paths]
    memo.tasks = [asyncio.create_task(w.run(), name=f"secret-watch {w}") for w in memo.watches]
    memo.tasks.append(asyncio.create_task(_resync(memo, config), name="resync"))
    if config.webhook.enabled:
        await admission.configure(settings, memo, config, kube)


async def _resync(memo: kopf.Memo, config: OperatorConfig) -> None:
    """Safety net for missed events: every interval, reconcile every WorkspaceSecret once (deduplicated
    through the work queue, so a burst never exceeds its worker count)."""
    paths = (
        [f"/apis/{c.API_VERSION}/{c.WORKSPACE_SECRET_PLURAL}"]
        if config.clusterwide
        else [group_path(c.API_VERSION, ns, c.WORKSPACE_SECRET_PLURAL) for ns in config.namespaces]
    )
    while True:
        await asyncio.sleep(config.resync_interval)
        for path in paths:
            try:
                listing = await memo.kube.list(path)
            except Exception as exc:  # noqa: BLE001 - retried next interval
                log.warning("resync listing failed: %s", exc)
                continue
            for item in listing.get("items", ()):
                memo.queue.add((item["metadata"]["namespace"], item["metadata"]["name"]))


@kopf.on.cleanup(id="shutdown")
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    for task in getattr(memo, "tasks", ()):
        task.cancel()
    await asyncio.gather(*getattr(memo, "tasks", ()), return_exceptions=True)
    if hasattr(memo, "queue"):
        await memo.queue.stop()
    if hasattr(memo, "kube"):
        memo.kube.close()
    admission.cleanup(memo)


@kopf.on.probe(id="secretWatch")
async def secret_watch_health(memo: kopf.Memo, **_: Any) -> bool:
    """Reported by the liveness endpoint: whether our label-selected Secret watches are connected."""
    return all(w.healthy for w in getattr(memo, "watches", ()))
