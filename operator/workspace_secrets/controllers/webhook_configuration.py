"""Keep the MutatingWebhookConfiguration pointing at this operator with the current caBundle:
read the live object -> compare with the desired entry (domain) -> create or compare-and-swap replace."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..domain import webhook_configuration as desired
from ..kube.client import Conflict
from ..kube.webhook_configuration import MutatingWebhookConfigurations

log = logging.getLogger(__name__)


class WebhookConfigurationController:
    def __init__(
        self,
        configurations: MutatingWebhookConfigurations,
        name: str,
        client_config: Callable[[str], dict[str, Any]],
        ca_bundle: Callable[[], bytes],
        *,
        namespaces: Sequence[str] = (),
    ) -> None:
        self._configurations = configurations
        self._name = name
        self._client_config = client_config  # caBundle (base64) -> clientConfig
        self._ca_bundle = ca_bundle  # the PEM the webhook's serving certificate chains to (read each time)
        self._namespaces = tuple(namespaces)

    async def sync(self) -> bool:
        """Make the live configuration match; True if it was written. Safe to run at any time."""
        ca_b64 = base64.b64encode(self._ca_bundle()).decode()
        webhook = desired.desired_webhook(self._client_config(ca_b64), self._namespaces)
        for _ in range(3):  # a compare-and-swap lost to another writer: read again
            live = await self._configurations.get(self._name)
            problem = desired.drift(live, webhook)
            if problem is None:
                return False
            body = desired.desired_configuration(self._name, webhook, live)
            try:
                if live is None:
                    await self._configurations.create(body)
                else:
                    await self._configurations.replace(body)
            except Conflict:
                continue
            log.info("MutatingWebhookConfiguration %r updated: %s", self._name, problem)
            return True
        raise Conflict(409, "Conflict", f"MutatingWebhookConfiguration {self._name!r} kept changing while being updated")
