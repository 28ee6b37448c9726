"""The admission webhook's server: kopf's webhook server, its certificate, and the MutatingWebhookConfiguration.

kopf serves the webhook (aiohttp, HTTPS) and dispatches each AdmissionReview to the handler named by the
URL path. The operator keeps the certificate files valid (certs.py) and writes the MutatingWebhookConfiguration
itself (configuration.py, which also says why not kopf's `settings.admission.managed`): at start-up and on every resync,
so a changed caBundle or an edited/deleted configuration is restored within `--resync-interval`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import kopf

from workspace_secrets.runtime.kube import Kube
from workspace_secrets.runtime.webhook.certs import WebhookCertificates
from workspace_secrets.runtime.webhook.configuration import MutatingWebhookConfigurations, WebhookConfigurationController

log = logging.getLogger(__name__)

RENEWAL_CHECK_INTERVAL = 12 * 3600.0
CERT_FILE_CHECK_INTERVAL = 10.0  # how soon kopf's server picks up renewed certificate files


class WebhookServer:
    """kopf's webhook server with certificates kept valid and the configuration kept in place."""

    def __init__(
        self,
        kube: Kube,
        *,
        cert_dir: str | None,
        hosts: Sequence[str],
        listen_address: str,
        port: int,
        host: str,
        client_config: Callable[[str | None], dict[str, Any]],
        target: str,
        configuration_name: str,
        namespaces: Sequence[str] = (),
        resync_interval: float = 300.0,
        cert_manager_certificate: tuple[str, str] | None = None,
    ) -> None:
        self._kube = kube
        self._cert_dir = cert_dir
        self._hosts = list(hosts)
        self._address = listen_address
        self._port = port
        self._host = host
        self._client_config = client_config  # caBundle (base64) -> clientConfig
        self._target = target  # how the API server calls us, for the log
        self._configuration_name = configuration_name
        self._namespaces = tuple(namespaces)
        self._interval = resync_interval
        self._temp_dir: Path | None = None
        self._certs: WebhookCertificates | None = None  # only for an operator-managed certificate
        # cert-manager's Certificate (namespace, name): its Secret is mounted at cert_dir, its cainjector keeps caBundle.
        self._cert_manager = cert_manager_certificate
        self.configuration: WebhookConfigurationController | None = None
        self._serving: tuple[float, bool] | None = None  # (monotonic time, result) of the last serving() check

    async def configure(self, settings: kopf.OperatorSettings) -> None:
        """Make the certificate files usable and point kopf's webhook server at them."""
        if self._cert_dir:
            cert_dir = Path(self._cert_dir)
        else:
            cert_dir = self._temp_dir = Path(tempfile.mkdtemp(prefix="wso-webhook-certs-"))
        certs = WebhookCertificates(cert_dir, self._hosts)
        if self._cert_manager and not certs.provided:
            raise kopf.PermanentError(
                f"--webhook-cert-manager-certificate {'/'.join(self._cert_manager)}: --webhook-cert-dir {cert_dir} holds "
                f"no tls.crt and tls.key; mount the Certificate's Secret there"
            )
        try:
            files = await asyncio.to_thread(certs.ensure)
        except OSError as exc:  # a configuration error: stop the operator instead of retrying forever
            raise kopf.PermanentError(
                f"--webhook-cert-dir {cert_dir}: {exc.strerror or exc}; give a writable directory (managed "
                f"certificate) or one holding tls.crt and tls.key (provided certificate)"
            ) from None
        settings.admission.server = kopf.WebhookServer(
            addr=self._address, port=self._port, host=self._host,
            certfile=str(files.cert_file), pkeyfile=str(files.key_file), cafile=str(files.ca_file),
            file_check_interval=CERT_FILE_CHECK_INTERVAL,
        )
        settings.admission.managed = None  # written by the operator itself, see the module docstring
        self._certs = certs if files.managed else None
        self.configuration = WebhookConfigurationController(
            MutatingWebhookConfigurations(self._kube), self._configuration_name, self._client_config,
            files.ca_file.read_bytes, namespaces=self._namespaces, cert_manager_certificate=self._cert_manager,
        )
        mode = ("managed" if files.managed else "provided") + (
            f", caBundle injected by cert-manager from {'/'.join(self._cert_manager)}" if self._cert_manager else "")
        log.info("pod-injection webhook: listening on %s:%d, called as %s, certificates in %s (%s), "
                 "MutatingWebhookConfiguration %r", self._address, self._port, self._target, cert_dir,
                 mode, self._configuration_name)

    async def serving(self, max_age: float = 2.0) -> bool:
        """Whether the webhook server completes a TLS handshake on its port now (cached for `max_age` seconds):
        the readiness probe's "the webhook serves". The certificate is not verified here (a provided one may chain
        to a CA the operator does not have); the API server verifies it with the caBundle."""
        now = time.monotonic()
        if self._serving is not None and now - self._serving[0] < max_age:
            return self._serving[1]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self._address, self._address)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, self._port, ssl=context), 2.0)
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass
            result = True
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            result = False
        self._serving = (time.monotonic(), result)
        return result

    async def maintain(self) -> None:
        """Now and then every resync interval: renew an operator-managed certificate when due (kopf's server
        re-reads the changed files), and restore the webhook configuration if it drifted."""
        assert self.configuration is not None, "configure() first"
        last_renewal_check = time.monotonic()  # configure() has just ensured the certificate
        while True:
            try:
                if self._certs is not None and time.monotonic() - last_renewal_check >= RENEWAL_CHECK_INTERVAL:
                    await asyncio.to_thread(self._certs.ensure)
                    last_renewal_check = time.monotonic()
                await self.configuration.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried next interval; what is in place keeps serving
                log.warning("webhook maintenance failed (%s: %s); retrying in %.0fs", type(exc).__name__, exc, self._interval)
            await asyncio.sleep(self._interval)

    def cleanup(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
