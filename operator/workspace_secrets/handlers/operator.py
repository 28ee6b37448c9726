"""Operator start-up and shutdown: kopf settings, the API client, the Secret watch, the resync loop,
peering, and the liveness probe."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import kopf

from ..api import constants as c
from ..config import OperatorConfig
from ..controllers.peering import PeeringGate
from ..controllers.credentials import CredentialManager, sweep_orphans
from ..controllers.provider_setup import load_providers
from ..controllers.workqueue import WorkQueue
from ..domain.conditions import utcnow
from ..providers.credentials.base import Scope
from ..controllers.workspace_secret import WorkspaceSecretController
from ..kube.client import Kube, group_path, load_configuration
from ..kube.events import EventRecorder
from ..kube.watch import LabelSelectedWatch
from . import admission

log = logging.getLogger(__name__)


def operator_config(memo: kopf.Memo) -> OperatorConfig:
    """Our configuration, as `workspace-secrets-operator run` puts it in the memo; defaults when the
    handlers are loaded by kopf's own CLI (`kopf run -m workspace_secrets.handlers`)."""
    config = memo.get("config")
    if config is None:
        config = memo["config"] = OperatorConfig(providers_config=os.environ.get("WSO_PROVIDERS_CONFIG"))
    return config


@kopf.on.login(id="login")
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf and our own client authenticate the same way: one place reads in-cluster or kubeconfig
    credentials (the `kubernetes` package, which also handles exec plugins and token files)."""
    config = operator_config(memo)
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
    config = operator_config(memo)
    # kopf's own bookkeeping lives under our group, and only warnings become Events (kopf would otherwise
    # post an Event for every handler success, doubling API writes for no reader).
    settings.persistence.finalizer = f"{c.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    # Re-establish watches regularly; a watch that hangs silently (API server restart) is noticed:
    # kopf >= 1.44.1 also drops a stream that delivers nothing for watching.inactivity_timeout (70 s).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Page kopf's initial listing of WorkspaceSecrets (10,000 objects in one response is a memory
    # spike), and let its per-object workers exit soon: the observe handler only queues a key, so a
    # worker lingering for kopf's default 5 s only holds on to the last body it saw.
    settings.watching.chunk_size = 500
    settings.queueing.idle_timeout = 1.0
    # A replica killed without a goodbye is considered gone after this long: the failover time.
    settings.peering.lifetime = config.peering_lifetime

    # The operator's own work pauses with kopf's peering; standalone, it is always active.
    active = asyncio.Event()
    if config.peering is None:
        active.set()
    kube = Kube.from_environment(kubeconfig=config.kubeconfig, max_concurrency=config.api_concurrency,
                                 qps=config.api_qps, burst=config.api_burst)
    providers, unavailable = await load_providers(config.providers_config, kube, config.operator_namespace)
    queue = WorkQueue(lambda key: controller.reconcile_by_name(*key), workers=config.workers,
                      name=c.WORKSPACE_SECRET_PLURAL, active=active)
    controller = WorkspaceSecretController(
        kube, EventRecorder(kube, instance=config.identity),
        credentials=CredentialManager(providers, clock=utcnow, unavailable=unavailable),
        schedule=lambda namespace, name, delay: queue.add_after((namespace, name), delay),
    )
    memo.kube = kube
    memo.workspace_secrets = controller
    memo.queue = queue
    memo.active = active
    queue.start()

    async def on_secret(type_: str, obj: dict[str, Any]) -> None:
        if not active.is_set():
            return  # a standby replica: the full resync on activation covers whatever happened meanwhile
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        if type_ == "DELETED":
            controller.written.pop(key, None)
        elif controller.written.get(key) == meta.get("resourceVersion") or (type_ == "ADDED" and key in controller.creating):
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

    async def on_user_secret(type_: str, obj: dict[str, Any]) -> None:
        """A user's own Secret changed: every workspace of that user in the namespace follows."""
        if not active.is_set():
            return  # a standby replica (see on_secret)
        meta = obj.get("metadata") or {}
        user = (meta.get("labels") or {}).get(c.LABEL_USER)
        if user:
            for name in await controller.names_for_user(meta["namespace"], user):
                queue.add((meta["namespace"], name))

    paths = ["/api/v1/secrets"] if config.clusterwide else [f"/api/v1/namespaces/{ns}/secrets" for ns in config.namespaces]
    memo.watches = [LabelSelectedWatch(kube, path, c.MANAGED_SELECTOR, on_secret) for path in paths]
    memo.watches += [LabelSelectedWatch(kube, path, c.USER_SECRETS_SELECTOR, on_user_secret) for path in paths]
    memo.tasks = [asyncio.create_task(w.run(), name=f"secret-watch {w}") for w in memo.watches]
    memo.tasks.append(asyncio.create_task(_resync(memo, config), name="resync"))
    if providers:
        memo.tasks.append(asyncio.create_task(_sweep(memo, config), name="orphan-sweep"))
    if config.webhook.enabled:
        await admission.configure(settings, memo, config, kube)

    if config.peering is not None:
        gate = PeeringGate(
            kube, name=config.peering, namespaces=[None] if config.clusterwide else list(config.namespaces),
            identity=config.identity, priority=config.priority, active=active, clock=utcnow,
            on_activated=lambda: memo.tasks.append(asyncio.create_task(_enqueue_all(memo, config), name="resync-on-activation")),
        )
        await gate.ensure_objects()
        memo.tasks.append(asyncio.create_task(gate.run(), name="peering-gate"))


async def _enqueue_all(memo: kopf.Memo, config: OperatorConfig) -> None:
    """Queue every WorkspaceSecret once (deduplicated, so a burst never exceeds the worker count)."""
    for path in _ws_paths(config):
        try:
            async for page in memo.kube.list_pages(path):
                for item in page:
                    memo.queue.add((item["metadata"]["namespace"], item["metadata"]["name"]))
        except Exception as exc:  # noqa: BLE001 - retried next interval
            log.warning("resync listing failed: %s", exc)


async def _resync(memo: kopf.Memo, config: OperatorConfig) -> None:
    """Safety net for missed events: every interval, reconcile every WorkspaceSecret once."""
    while True:
        await asyncio.sleep(config.resync_interval)
        if memo.active.is_set():
            await _enqueue_all(memo, config)


def _ws_paths(config: OperatorConfig) -> list[str]:
    if config.clusterwide:
        return [f"/apis/{c.API_VERSION}/{c.WORKSPACE_SECRET_PLURAL}"]
    return [group_path(c.API_VERSION, ns, c.WORKSPACE_SECRET_PLURAL) for ns in config.namespaces]


async def _sweep(memo: kopf.Memo, config: OperatorConfig) -> None:
    """Periodically revoke credentials at the providers that no WorkspaceSecret accounts for (leaked by
    someone deleting a Secret's ledger, a force-removed finalizer, or a crash during deletion)."""

    async def expected_tags() -> set[str]:
        tags = set()
        for path in _ws_paths(config):
            async for page in memo.kube.list_pages(path):
                for item in page:
                    meta = item["metadata"]
                    for entry in (item.get("spec") or {}).get("credentials") or ():
                        tags.add(Scope.of(meta["namespace"], meta["name"], meta["uid"], entry.get("name", "")).tag)
        return tags

    while True:
        await asyncio.sleep(config.sweep_interval)
        if not memo.active.is_set():
            continue  # a standby replica revokes nothing
        try:
            await sweep_orphans(memo.workspace_secrets.credentials, expected_tags)
        except Exception as exc:  # noqa: BLE001 - retried next interval
            log.warning("orphan sweep failed: %s", exc)


def _exit_if_hung(grace: float) -> None:
    """End the process if kopf has not finished `grace` seconds after our cleanup.

    kopf waits without a limit for its tasks to stop. A watcher that was retrying a dropped request when the
    orchestrator failed (a watch-stream ERROR) can stay "cancelling" for ever -- seen in the faults test: the
    request retry waits for credentials from a retriever that is already stopped. The process would then
    live on half-alive, its liveness endpoint gone and nothing reconciled; ending it lets the Pod restart."""

    def watchdog() -> None:
        time.sleep(grace)
        log.error("the operator did not finish stopping within %.0f s after cleanup (a kopf task is hung); exiting", grace)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watchdog, name="shutdown-watchdog", daemon=True).start()


@kopf.on.cleanup(id="shutdown")
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    grace = operator_config(memo).shutdown_grace
    if grace is not None:
        _exit_if_hung(grace)
    for task in getattr(memo, "tasks", ()):
        task.cancel()
    await asyncio.gather(*getattr(memo, "tasks", ()), return_exceptions=True)
    if hasattr(memo, "queue"):
        await memo.queue.stop()
    if hasattr(memo, "kube"):
        memo.kube.close()
    admission.cleanup(memo)


@kopf.on.probe(id="secretWatch")
async def secret_watch_health(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """The liveness endpoint fails (HTTP 500) once a label-selected Secret watch has been disconnected
    for longer than --watch-unhealthy-threshold: the operator can no longer repair drift, and a restart
    is the remedy. A shorter disconnection (an API server restart, a watch timeout) is reported, not failed.
    kopf caches probe results for 10 s, so the endpoint reacts within threshold + 10 s."""
    config: OperatorConfig = memo.config
    watches = getattr(memo, "watches", ())
    down = {str(w): round(w.unhealthy_for(), 1) for w in watches if not w.healthy}
    failing = {name: seconds for name, seconds in down.items() if seconds > config.watch_unhealthy_threshold}
    if failing:
        raise kopf.PermanentError(
            f"Secret watch disconnected for longer than {config.watch_unhealthy_threshold:.0f}s: {failing}"
        )
    return {"connected": not down, "disconnectedSeconds": down}

