"""The composition root: one App per process builds every part, starts it and stops it.

`workspace-secrets-operator run` (cli.py) hands the App to kopf as its memo (`kopf.operator(memo=App(...))`),
so every handler gets it as `memo`; under kopf's own CLI (`kopf run -m workspace_secrets.handlers`) the
handlers make one from the defaults (`App.of`). The handlers (handlers/) only translate a kopf event into one
call on a part built here; nothing else builds clients, controllers, watches or periodic tasks.

What `start()` builds, in order:
  1. kopf's settings (persistence under our group, watch timeouts, paging, peering lifetime);
  2. the Kubernetes client (Kube), the dynamic-credential providers, the WorkspaceSecret work queue and
     controller, the label-selected Secret watches (one per served path for every operator-managed Secret, each
     event handed to both controllers), the WorkspaceSecret watches (our own, not kopf's), the resync and
     orphan-sweep loops;
  3. with --webhook: the webhook server (certificates, MutatingWebhookConfiguration) and pod injection;
  4. with --peering: the PeeringGate that pauses the operator's own work with kopf's;
  5. the UserToken work queue and controller (its Secret events come from the shared watch of step 2) and, with
     --connect-port, the connect page.
`stop()` cancels every task, then closes what the parts hold open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from pathlib import Path
from typing import Any

import kopf
from aiohttp import web

from workspace_secrets import settings as config_helpers
from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import utcnow
from workspace_secrets.credentials.manager import CredentialManager, sweep_orphans
from workspace_secrets.credentials.providers.base import Scope
from workspace_secrets.credentials.setup import load_providers
from workspace_secrets.oauth.protocol import PendingAuthorizations
from workspace_secrets.oauth.registry import ProviderCache
from workspace_secrets.pod_injection.controller import PodInjectionController
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.http import AiohttpTransport, Egress
from workspace_secrets.runtime.kube import Kube, group_path, load_configuration
from workspace_secrets.runtime.kube_aio import make_kube
from workspace_secrets.runtime.peering import PeeringGate
from workspace_secrets.runtime.secret_index import SecretIndex
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.signing import Signer
from workspace_secrets.runtime.watch import Handler, LabelSelectedWatch
from workspace_secrets.runtime.webhook.server import WebhookServer
from workspace_secrets.runtime.workqueue import WorkQueue
from workspace_secrets.settings import ConnectConfig, OperatorConfig
from workspace_secrets.user_keys.service import UserKeys
from workspace_secrets.user_token import policy as user_token_policy
from workspace_secrets.user_token.connect_page.server import ConnectServer, WebSettings, serve
from workspace_secrets.user_token.controller import ConnectSettings, UserTokenController
from workspace_secrets.workspace_secret.controller import WorkspaceSecretController
from workspace_secrets.workspace_secret.pods import has_gate

log = logging.getLogger(__name__)

#: A failed UserToken pass is retried by its work queue with backoff up to this (the per-token daemon it replaced
#: retried every 10 s): a Kubernetes hiccup never delays a refresh by more.
USER_TOKEN_MAX_BACKOFF = 10.0

#: The operator-managed Secrets the UserToken controller is told about: the users' SSH keys and the workspace
#: Secrets' keys (uploaded with addSSHKey), the token Secrets (rewritten). They arrive on the one managed-Secret
#: watch per served path that the WorkspaceSecret controller gets every event of (a second full-data watch would
#: stream and parse each of these Secrets twice).
USER_TOKEN_SECRET_COMPONENTS = frozenset({c.COMPONENT_USER_SSH_KEY, c.COMPONENT_USER_TOKEN, c.COMPONENT_WORKSPACE_SECRET})


class App:
    """Everything the operator runs, typed. The parts below exist once `start()` has run (kopf's startup)."""

    kube: Kube
    #: Set while this replica acts: standalone always, with peering while kopf's peering says so.
    active: asyncio.Event
    queue: WorkQueue
    #: The UserTokens' work queue: the same model as WorkspaceSecrets' (paused likewise on a standby replica).
    user_token_queue: WorkQueue
    workspace_secrets: WorkspaceSecretController
    user_tokens: UserTokenController
    #: The per-user SSH keys, one service for both CRDs (WorkspaceSecrets create and rotate them, UserTokens upload them).
    user_keys: UserKeys
    pod_injection: PodInjectionController | None
    webhook: WebhookServer | None
    #: Our own watches (Secrets, pods, WorkspaceSecrets) the liveness probe checks.
    watches: list[LabelSelectedWatch]

    def __init__(self, config: OperatorConfig) -> None:
        self.config = config
        self.tasks: list[asyncio.Task[Any]] = []
        self._missed_events_pass: asyncio.Task[None] | None = None
        self.pod_injection = None
        self.webhook = None
        self.watches = []
        # Who gets the managed-Secret watch's events (see _managed_secret_changed); UserTokens join when they start.
        self._secret_handlers: list[Handler] = []
        self._transport: AiohttpTransport | None = None
        self.egress: Egress | None = None  # set by start(); None: the environment's proxies, the system store
        self._connect_runner: web.AppRunner | None = None
        self._started = False
        # The watch-fed indexes of Secret versions, one per watched path (runtime/secret_index.py): the operator's own
        # Secrets and the users' own. Filled by their watches' first lists before kopf delivers a WorkspaceSecret.
        self._managed_indexes = {path: SecretIndex() for path in self._secret_paths()}
        self._user_indexes = {path: SecretIndex() for path in self._secret_paths()}
        #: True from the end of start() to the beginning of stop(): the readiness probe's "the operator has started".
        self.running = False

    def __copy__(self) -> App:
        # kopf gives every resource object a shallow copy of the memo; there is one App per process.
        return self

    @classmethod
    def of(cls, memo: Any) -> App:
        """The App behind a handler's memo: the memo itself (our CLI), or one made from the defaults and kept in
        kopf's Memo (kopf's own CLI, where the login handler runs first and makes it)."""
        if isinstance(memo, App):
            return memo
        app = memo.get("app")
        if app is None:
            app = memo["app"] = cls(OperatorConfig(providers_config=os.environ.get("WSO_PROVIDERS_CONFIG")))
        return app

    # --- kopf's login -------------------------------------------------------------------------------------
    async def connection_info(self) -> kopf.ConnectionInfo:
        """kopf and our own client authenticate the same way: one place reads in-cluster or kubeconfig
        credentials (the `kubernetes` package, which also handles exec plugins and token files)."""
        cfg = await asyncio.to_thread(load_configuration, self.config.kubeconfig)
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

    # --- start ----------------------------------------------------------------------------------------------
    async def start(self, settings: kopf.OperatorSettings) -> None:
        config = self.config
        # Proxies (HTTPS_PROXY/HTTP_PROXY/NO_PROXY) and --ca-bundle-file for every outgoing client: unusable, the
        # operator stops (retrying cannot fix them). The messages name no proxy password and no file content.
        try:
            self.egress = Egress.from_environment(config.ca_bundle_file)
        except (ValueError, OSError) as exc:
            raise kopf.PermanentError(f"outgoing HTTPS: {exc}") from None
        log.info("%s", self.egress.describe())
        _configure_kopf(settings, config)
        self.active = asyncio.Event()
        if config.peering is None:
            self.active.set()  # standalone: always active
        self.kube = make_kube(config.api_client, kubeconfig=config.kubeconfig, max_concurrency=config.api_concurrency,
                              qps=config.api_qps, burst=config.api_burst)
        self.user_keys = UserKeys(self.kube, index_for=self._index_lookup(self._managed_indexes))
        self._started = True
        await self._start_workspace_secrets()
        if config.webhook.enabled:
            await self._start_webhook(settings)
        if config.peering is not None:
            await self._start_peering()
        await self._start_user_tokens()
        self.running = True

    async def _start_workspace_secrets(self) -> None:
        config, kube = self.config, self.kube
        providers, unavailable = await load_providers(config.providers_config, kube, config.operator_namespace, egress=self.egress)
        self.queue = WorkQueue(lambda key: self.workspace_secrets.reconcile_by_name(*key), workers=config.workers,
                               name=c.WORKSPACE_SECRET_PLURAL, active=self.active)
        self.workspace_secrets = WorkspaceSecretController(
            kube, EventRecorder(kube, instance=config.identity),
            credentials=CredentialManager(providers, clock=utcnow, unavailable=unavailable), user_keys=self.user_keys,
            schedule=lambda namespace, name, delay: self.queue.add_after((namespace, name), delay),
            managed_index_for=self._index_lookup(self._managed_indexes), user_index_for=self._index_lookup(self._user_indexes),
        )
        self.queue.start()
        controller = self.workspace_secrets
        paths = self._secret_paths()
        self._secret_handlers.append(self._while_active(controller.secret_changed))
        self.watches = [LabelSelectedWatch(kube, path, c.MANAGED_SELECTOR, self._managed_secret_changed, index=self._managed_indexes[path],
                                           on_missed_events=self._secret_events_missed)
                        for path in paths]
        self.watches += [LabelSelectedWatch(kube, path, c.USER_SECRETS_SELECTOR, self._while_active(controller.user_secret_changed),
                                            index=self._user_indexes[path], on_missed_events=self._secret_events_missed)
                         for path in paths]
        await self._prime(self.watches)
        # The WorkspaceSecrets themselves: our own watch (not kopf's), after the Secret indexes are filled, so that its
        # listing finds unchanged objects unchanged at once. Every replica sees every event (a standby keeps its
        # indexes; its queue is paused). See _workspace_secret_event.
        self.watches += [LabelSelectedWatch(kube, path, "", self._workspace_secret_event, deliver_listed=True)
                         for path in self._workspace_secret_paths()]
        # The workspaces' pods (labelled with a WorkspaceSecret): gated pods are released, WhileRunning credentials
        # follow pods starting and stopping. Only labelled pods are sent; the handler costs no API call.
        self.watches += [LabelSelectedWatch(kube, path, c.LABEL_WORKSPACE_SECRET, self._while_active(controller.pod_changed))
                         for path in self._pod_paths()]
        self.tasks += [asyncio.create_task(w.run(), name=f"secret-watch {w}") for w in self.watches]
        self.tasks.append(asyncio.create_task(self._resync(), name="resync"))
        self.tasks.append(asyncio.create_task(self._enqueue_gated_pods(), name="gated-pods"))
        if providers:
            self.tasks.append(asyncio.create_task(self._sweep(), name="orphan-sweep"))

    async def _start_webhook(self, settings: kopf.OperatorSettings) -> None:
        config, webhook = self.config, self.config.webhook
        client_config, target = config_helpers.client_config(webhook)
        self.webhook = WebhookServer(
            self.kube, cert_dir=webhook.cert_dir, hosts=config_helpers.hosts_for(webhook),
            listen_address=config_helpers.listen_address(webhook), port=webhook.port, host=webhook.host,
            client_config=client_config, target=target, configuration_name=webhook.configuration_name,
            namespaces=config.namespaces, resync_interval=config.resync_interval,
            cert_manager_certificate=webhook.cert_manager_certificate,
        )
        await self.webhook.configure(settings)
        self.pod_injection = PodInjectionController(self.kube, EventRecorder(self.kube), namespaces=config.namespaces)
        self.tasks.append(asyncio.create_task(self.webhook.maintain(), name="webhook maintenance"))

    async def _start_peering(self) -> None:
        config = self.config
        assert config.peering is not None
        gate = PeeringGate(
            self.kube, name=config.peering, namespaces=[None] if config.clusterwide else list(config.namespaces),
            identity=config.identity, priority=config.priority, active=self.active, clock=utcnow,
            on_activated=self._on_activated,
        )
        await gate.ensure_objects()
        self.tasks.append(asyncio.create_task(gate.run(), name="peering-gate"))

    async def _start_user_tokens(self) -> None:
        config, connect = self.config, self.config.connect
        signer = _signer(connect)
        self._transport = AiohttpTransport(egress=self.egress)
        self.user_token_queue = WorkQueue(lambda key: self.user_tokens.reconcile_by_name(*key), workers=config.workers,
                                          max_backoff=USER_TOKEN_MAX_BACKOFF, name=c.USER_TOKEN_PLURAL, active=self.active)
        self.user_tokens = UserTokenController(
            self.kube, EventRecorder(self.kube), ProviderCache(self._transport), PendingAuthorizations(signer),
            ConnectSettings(base_url=connect.base_url,
                            schedule=user_token_policy.Schedule(validate_interval=timedelta(seconds=connect.validate_interval))),
            namespaces=config.namespaces, operator_namespace=config.operator_namespace, user_keys=self.user_keys,
            schedule=lambda namespace, name, delay: self.user_token_queue.add_after((namespace, name), delay),
        )
        self.user_token_queue.start()
        if connect.port is not None:
            web_settings = WebSettings.parse(connect.base_url, connect.user_header, connect.trusted_proxies, connect.session_ttl)
            if not web_settings.sign_in_configured:
                log.warning("the connect page has no sign-in (--connect-user-header and --connect-trusted-proxies): it answers 503 "
                            "until the platform's authentication proxy is configured")
            self._connect_runner = await serve(ConnectServer(self.user_tokens, signer, web_settings), host=connect.bind, port=connect.port)
        # Its Secrets' events: from the managed-Secret watches started with the WorkspaceSecrets (_managed_secret_changed).
        self._secret_handlers.append(self._while_active(self._user_token_secret_changed))
        self.tasks.append(asyncio.create_task(self._count_tokens(), name="token-count"))

    # --- stop -----------------------------------------------------------------------------------------------
    async def stop(self) -> None:
        self.running = False
        if self.config.shutdown_grace is not None:
            _exit_if_hung(self.config.shutdown_grace)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if not self._started:
            return
        for queue in (getattr(self, "queue", None), getattr(self, "user_token_queue", None)):  # start() may have failed half-way
            if queue is not None:
                await queue.stop()
        if self._connect_runner is not None:
            await self._connect_runner.cleanup()
        if self._transport is not None:
            await self._transport.close()
        await self.kube.aclose()
        if self.webhook is not None:
            self.webhook.cleanup()

    # --- the liveness probe ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """Fails (kopf.PermanentError: HTTP 500) once one of our watches (Secrets, pods, WorkspaceSecrets) has been disconnected for
        longer than --watch-unhealthy-threshold: the operator can no longer repair drift, and a restart is the
        remedy. A shorter disconnection (an API server restart, a watch timeout) is reported, not failed."""
        threshold = self.config.watch_unhealthy_threshold
        down = {str(w): round(w.unhealthy_for(), 1) for w in self.watches if not w.healthy}
        failing = {name: seconds for name, seconds in down.items() if seconds > threshold}
        if failing:
            raise kopf.PermanentError(f"watch disconnected for longer than {threshold:.0f}s: {failing}")
        return {"connected": not down, "disconnectedSeconds": down}

    # --- the managed-Secret watch's dispatch -----------------------------------------------------------------
    async def _managed_secret_changed(self, event_type: str, obj: dict[str, Any]) -> None:
        """Each event of the one managed-Secret watch per served path, received and parsed once, handed to every
        controller that takes Secret events (each gated on the active replica; one failing never starves the other)."""
        for handler in tuple(self._secret_handlers):
            try:
                result = handler(event_type, obj)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("a Secret watch handler failed for a %s event", event_type)

    def _workspace_secret_event(self, event_type: str | None, obj: dict[str, Any]) -> None:
        """Every WorkspaceSecret event of our own watch (type None: an object of its (re)list), on every replica: the
        controller queues what changed in a way that matters, and runs a deletion's cleanup (controller.observe).

        Why our own watch and not kopf's: kopf keeps a memory of every object it has seen and deep-copies each body
        for change detection, work our level-triggered queue never uses -- measured at ~3 ms of CPU and ~1 KiB of
        memory per object (docs/developers/benchmarks.md). kopf still runs the UserTokens, peering and the probes."""
        self.workspace_secrets.observe(event_type, obj)

    async def _user_token_secret_changed(self, event_type: str, obj: dict[str, Any]) -> None:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(c.LABEL_COMPONENT) in USER_TOKEN_SECRET_COMPONENTS:
            await self.user_tokens.secret_changed(event_type, obj)

    # --- periodic tasks -------------------------------------------------------------------------------------
    def _while_active(self, handler: Handler) -> Handler:
        async def gated(event_type: str, obj: dict[str, Any]) -> None:
            if self.active.is_set():  # a standby replica: the full resync on activation covers what happened meanwhile
                await handler(event_type, obj)  # type: ignore[misc]
        return gated

    def _on_activated(self) -> None:
        """This replica became the active one: every WorkspaceSecret is reconciled and every UserToken gets a pass
        (a first one again: overdue refreshes are spread)."""
        if getattr(self, "user_tokens", None) is not None:
            self.user_tokens.forget_passes()
        self._spawn(self._enqueue_all(), "resync-on-activation")
        self._spawn(self._enqueue_user_tokens(), "user-tokens-on-activation")
        self._spawn(self._enqueue_gated_pods(), "gated-pods-on-activation")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A one-off pass (after an activation, a relist), kept in `tasks` until it is done: `stop()` cancels it, and
        finished ones are dropped here, so that a long-lived process does not accumulate them."""
        self.tasks = [t for t in self.tasks if not t.done()]
        task = asyncio.create_task(work, name=name)
        self.tasks.append(task)
        return task

    async def _enqueue_gated_pods(self) -> None:
        """Once this replica is active: the pods waiting at the gate since before (the pod watch only sees
        changes from now on), so that a WorkspaceSecret whose requirement was removed meanwhile still releases
        them."""
        await self.active.wait()
        for path in self._pod_paths():
            try:
                async for page in self.kube.list_pages(path, label_selector=c.LABEL_WORKSPACE_SECRET):
                    for pod in page:
                        if has_gate(pod):
                            await self.workspace_secrets.pod_changed("ADDED", pod)
            except Exception as exc:  # noqa: BLE001 - the resync and the pod watch cover the rest
                log.warning("listing gated pods failed: %s", exc)

    async def _enqueue_user_tokens(self) -> None:
        """Queue every UserToken once: after a takeover, what the previous active replica had scheduled is due here."""
        while not hasattr(self, "user_tokens"):  # activation may come before the UserToken part has started
            await asyncio.sleep(0.1)
        for path in self.user_tokens.served_paths():
            try:
                async for page in self.kube.list_pages(path):
                    for item in page:
                        self.user_token_queue.add((item["metadata"]["namespace"], item["metadata"]["name"]))
            except Exception as exc:  # noqa: BLE001 - the per-key schedules and kopf's events cover the rest
                log.warning("UserToken listing on activation failed: %s", exc)

    def _secret_events_missed(self) -> None:
        """An indexed Secret watch relisted and found changes it had missed: the WorkspaceSecrets are looked at now
        (not at the next resync). Those whose inputs did not change cost no request (controller.unchanged compares
        their recorded digest with the refreshed index), those whose did are reconciled. One pass at a time."""
        pending = self._missed_events_pass
        if not self.active.is_set() or (pending is not None and not pending.done()):
            return
        self._missed_events_pass = self._spawn(self._enqueue_all(), "resync-after-missed-events")

    async def _enqueue_all(self) -> None:
        """Queue every WorkspaceSecret once (deduplicated, so a burst never exceeds the worker count) -- except those
        whose recorded inputs show, without a request, that nothing must change (controller.unchanged)."""
        for path in self._workspace_secret_paths():
            try:
                async for page in self.kube.list_pages(path):
                    for item in page:
                        if not self.workspace_secrets.unchanged(item):
                            self.queue.add((item["metadata"]["namespace"], item["metadata"]["name"]))
            except Exception as exc:  # noqa: BLE001 - retried next interval
                log.warning("resync listing failed: %s", exc)

    async def _resync(self) -> None:
        """Safety net for missed events: every interval, reconcile every WorkspaceSecret once."""
        while True:
            await asyncio.sleep(self.config.resync_interval)
            if self.active.is_set():
                await self._enqueue_all()

    async def _sweep(self) -> None:
        """Periodically revoke credentials at the providers that no WorkspaceSecret accounts for (leaked by
        someone deleting a Secret's ledger, a force-removed finalizer, or a crash during deletion)."""

        async def expected_tags() -> set[str]:
            tags = set()
            for path in self._workspace_secret_paths():
                async for page in self.kube.list_pages(path):
                    for item in page:
                        meta = item["metadata"]
                        for entry in (item.get("spec") or {}).get("credentials") or ():
                            tags.add(Scope.of(meta["namespace"], meta["name"], meta["uid"], entry.get("name", "")).tag)
            return tags

        while True:
            await asyncio.sleep(self.config.sweep_interval)
            if not self.active.is_set():
                continue  # a standby replica revokes nothing
            try:
                await sweep_orphans(self.workspace_secrets.credentials, expected_tags)
            except Exception as exc:  # noqa: BLE001 - retried next interval
                log.warning("orphan sweep failed: %s", exc)

    async def _count_tokens(self) -> None:
        """The TOKENS gauge, counted by the active replica every resync interval."""
        while True:
            if self.active.is_set():
                try:
                    await self.user_tokens.count_tokens()
                except Exception as exc:  # noqa: BLE001 - counted again next interval
                    log.warning("token count failed: %s", exc)
            await asyncio.sleep(self.config.resync_interval)

    async def _prime(self, watches: list[LabelSelectedWatch]) -> None:
        """The indexed watches' first lists, before kopf delivers the first WorkspaceSecret: a restart then finds
        unchanged objects unchanged at once. A failure is not fatal: the watch lists again when it runs, and until
        its index is synced every reconcile reads what it needs (as without an index)."""
        try:
            await asyncio.gather(*(w.prime() for w in watches if w.indexed))
        except Exception as exc:  # noqa: BLE001 - see above
            log.warning("could not list the Secrets to index them (%s); the watches retry", exc)

    def _index_lookup(self, indexes: dict[str, SecretIndex]) -> Callable[[str], SecretIndex | None]:
        """namespace -> the index of the watched path covering it (None: not watched)."""
        if self.config.clusterwide:
            return lambda namespace: indexes.get("/api/v1/secrets")
        return lambda namespace: indexes.get(f"/api/v1/namespaces/{namespace}/secrets")

    def _secret_paths(self) -> list[str]:
        if self.config.clusterwide:
            return ["/api/v1/secrets"]
        return [f"/api/v1/namespaces/{ns}/secrets" for ns in self.config.namespaces]

    def _pod_paths(self) -> list[str]:
        if self.config.clusterwide:
            return ["/api/v1/pods"]
        return [f"/api/v1/namespaces/{ns}/pods" for ns in self.config.namespaces]

    def _workspace_secret_paths(self) -> list[str]:
        if self.config.clusterwide:
            return [f"/apis/{c.API_VERSION}/{c.WORKSPACE_SECRET_PLURAL}"]
        return [group_path(c.API_VERSION, ns, c.WORKSPACE_SECRET_PLURAL) for ns in self.config.namespaces]


def _configure_kopf(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    # kopf's own bookkeeping lives under our group, and only warnings become Events (kopf would otherwise
    # post an Event for every handler success, doubling API writes for no reader).
    settings.persistence.finalizer = c.FINALIZER  # the UserTokens'; WorkspaceSecrets' is the controller's own
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=c.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=c.GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    # Re-establish watches regularly; a watch that hangs silently (API server restart) is noticed:
    # kopf >= 1.44.1 also drops a stream that delivers nothing for watching.inactivity_timeout (70 s).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    # Page kopf's initial listing of UserTokens (thousands of objects in one response is a memory
    # spike), and let its per-object workers exit soon: the observe handler only queues a key, so a
    # worker lingering for kopf's default 5 s only holds on to the last body it saw.
    settings.watching.chunk_size = 500
    settings.queueing.idle_timeout = 1.0
    # A replica killed without a goodbye is considered gone after this long: the failover time.
    settings.peering.lifetime = config.peering_lifetime


def _signer(connect: ConnectConfig) -> Signer:
    if connect.signing_key_file:
        return Signer(Sensitive(Path(connect.signing_key_file).read_bytes().strip()))
    if connect.port is not None:  # without the page there are no sign-ins or forms the key would outlive
        log.warning("no --connect-signing-key-file: using a random key; pending sign-ins and connect-page forms end with this process")
    return Signer.generate()


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
