"""Admission settings: kopf's webhook server, its certificate, and the MutatingWebhookConfiguration.

kopf serves the webhook (aiohttp, HTTPS) and dispatches each AdmissionReview to the handler named by the
URL path. The operator keeps the certificate files valid (controllers/webhook_certs.py) and writes the
MutatingWebhookConfiguration itself (controllers/webhook_configuration.py; why not kopf's
`settings.admission.managed`: see domain/webhook_configuration.py): at start-up and on every resync,
so a changed caBundle or an edited/deleted configuration is restored within `--resync-interval`.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import kopf

from ..config import OperatorConfig, WebhookConfig
from ..controllers.pod_injection import PodInjectionController
from ..controllers.webhook_certs import WebhookCertificates
from ..controllers.webhook_configuration import WebhookConfigurationController
from ..domain import webhook_configuration as desired
from ..domain.webhook_tls import service_hosts
from ..kube.client import Kube
from ..kube.events import EventRecorder
from ..kube.webhook_configuration import MutatingWebhookConfigurations

log = logging.getLogger(__name__)

RENEWAL_CHECK_INTERVAL = 12 * 3600.0
CERT_FILE_CHECK_INTERVAL = 10.0  # how soon kopf's server picks up renewed certificate files


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
    try:
        files = await asyncio.to_thread(certs.ensure)
    except OSError as exc:  # a configuration error: stop the operator instead of retrying forever
        raise kopf.PermanentError(
            f"--webhook-cert-dir {cert_dir}: {exc.strerror or exc}; give a writable directory (managed "
            f"certificate) or one holding tls.crt and tls.key (provided certificate)"
        ) from None
    address = listen_address(webhook)
    settings.admission.server = kopf.WebhookServer(
        addr=address, port=webhook.port, host=webhook.host,
        certfile=str(files.cert_file), pkeyfile=str(files.key_file), cafile=str(files.ca_file),
        file_check_interval=CERT_FILE_CHECK_INTERVAL,
    )
    settings.admission.managed = None  # written by the operator itself, see the module docstring
    if webhook.service:
        client_config = functools.partial(desired.service_client_config, *webhook.service, webhook.service_port)
        target = f"Service {'/'.join(webhook.service)}:{webhook.service_port}"
    else:
        client_config = functools.partial(desired.url_client_config, webhook.host, webhook.port)
        target = f"https://{webhook.host}:{webhook.port}"
    configuration = WebhookConfigurationController(
        MutatingWebhookConfigurations(kube), webhook.configuration_name, client_config,
        files.ca_file.read_bytes, namespaces=config.namespaces,
    )
    memo.pod_injection = PodInjectionController(kube, EventRecorder(kube), namespaces=config.namespaces)
    memo.webhook_configuration = configuration
    memo.tasks.append(asyncio.create_task(
        _maintain(certs if files.managed else None, configuration, config.resync_interval), name="webhook maintenance"
    ))
    log.info("pod-injection webhook: listening on %s:%d, called as %s, certificates in %s (%s), "
             "MutatingWebhookConfiguration %r", address, webhook.port, target, cert_dir,
             "managed" if files.managed else "provided", webhook.configuration_name)


async def _maintain(certs: WebhookCertificates | None, configuration: WebhookConfigurationController, interval: float) -> None:
    """Now and then every `interval`: renew an operator-managed certificate when due (kopf's server
    re-reads the changed files), and restore the webhook configuration if it drifted."""
    last_renewal_check = time.monotonic()  # configure() has just ensured the certificate
    while True:
        try:
            if certs is not None and time.monotonic() - last_renewal_check >= RENEWAL_CHECK_INTERVAL:
                await asyncio.to_thread(certs.ensure)
                last_renewal_check = time.monotonic()
            await configuration.sync()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried next interval; what is in place keeps serving
            log.warning("webhook maintenance failed (%s: %s); retrying in %.0fs", type(exc).__name__, exc, interval)
        await asyncio.sleep(interval)


def cleanup(memo: kopf.Memo) -> None:
    temp = getattr(memo, "webhook_temp_dir", None)
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)
