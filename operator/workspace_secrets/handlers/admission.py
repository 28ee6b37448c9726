"""Admission settings: the webhook server, its certificate, and the MutatingWebhookConfiguration.

kopf serves the webhook (aiohttp, HTTPS) and manages the MutatingWebhookConfiguration named
`--webhook-configuration`: it creates it if absent and rewrites its webhooks (rules, objectSelector,
clientConfig with the caBundle) on start and whenever the server's certificate files change. The
operator keeps those files valid (controllers/webhook_certs.py) and renews them in the background.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf

from ..config import OperatorConfig, WebhookConfig
from ..controllers.pod_injection import PodInjectionController
from ..controllers.webhook_certs import WebhookCertificates
from ..domain.webhook_tls import service_hosts
from ..kube.client import Kube
from ..kube.events import EventRecorder

log = logging.getLogger(__name__)

RENEWAL_CHECK_INTERVAL = 12 * 3600.0


class ServiceWebhookServer(kopf.WebhookServer):
    """kopf's webhook server, announced to the API server as a Service reference instead of a URL: in a
    cluster, the API server reaches the operator through its Service (`<name>.<namespace>.svc`)."""

    def __init__(self, *, service_namespace: str, service_name: str, service_port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = {"namespace": service_namespace, "name": service_name, "port": service_port}

    async def __call__(self, fn: Any) -> AsyncIterator[Any]:  # type: ignore[override]
        async for client_config in super().__call__(fn):
            config: dict[str, Any] = {"service": dict(self.service)}
            if "caBundle" in client_config:
                config["caBundle"] = client_config["caBundle"]
            yield config


def hosts_for(webhook: WebhookConfig) -> list[str]:
    """The names the API server dials, which the serving certificate must cover."""
    return service_hosts(*webhook.service) if webhook.service else [webhook.host]


def listen_address(webhook: WebhookConfig) -> str:
    if webhook.listen_address:
        return webhook.listen_address
    if webhook.service is None:
        try:
            return str(ipaddress.ip_address(webhook.host))  # e.g. 127.0.0.1: do not listen more widely
        except ValueError:
            pass
    return "0.0.0.0"


async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, config: OperatorConfig, kube: Kube) -> None:
    webhook = config.webhook
    if webhook.cert_dir:
        cert_dir = Path(webhook.cert_dir)
    else:
        cert_dir = Path(tempfile.mkdtemp(prefix="wso-webhook-certs-"))
        memo.webhook_temp_dir = cert_dir
    certs = WebhookCertificates(cert_dir, hosts_for(webhook))
    files = await asyncio.to_thread(certs.ensure)
    common: dict[str, Any] = dict(
        addr=listen_address(webhook), port=webhook.port,
        certfile=str(files.cert_file), pkeyfile=str(files.key_file), cafile=str(files.ca_file),
    )
    if webhook.service:
        namespace, name = webhook.service
        settings.admission.server = ServiceWebhookServer(
            service_namespace=namespace, service_name=name, service_port=webhook.service_port, **common
        )
        target = f"Service {namespace}/{name}:{webhook.service_port}"
    else:
        settings.admission.server = kopf.WebhookServer(host=webhook.host, **common)
        target = f"https://{webhook.host}:{webhook.port}"
    settings.admission.managed = webhook.configuration_name
    memo.pod_injection = PodInjectionController(kube, EventRecorder(kube), namespaces=config.namespaces)
    if files.managed:
        memo.tasks.append(asyncio.create_task(_keep_renewed(certs), name="webhook certificate renewal"))
    log.info("pod-injection webhook: listening on %s:%d, called as %s, certificates in %s (%s), configuration %r",
             common["addr"], webhook.port, target, cert_dir, "managed" if files.managed else "provided",
             webhook.configuration_name)


async def _keep_renewed(certs: WebhookCertificates) -> None:
    """Renew the serving certificate before it expires; kopf's server notices the changed file, restarts
    with it and republishes the caBundle."""
    while True:
        await asyncio.sleep(RENEWAL_CHECK_INTERVAL)
        try:
            await asyncio.to_thread(certs.ensure)
        except Exception as exc:  # noqa: BLE001 - retried next interval; the current certificate still serves
            log.warning("webhook certificate renewal failed (%s: %s)", type(exc).__name__, exc)


def cleanup(memo: kopf.Memo) -> None:
    temp = getattr(memo, "webhook_temp_dir", None)
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)
