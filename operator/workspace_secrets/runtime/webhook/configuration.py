"""The MutatingWebhookConfiguration entry that sends labelled pods to the operator (pure).

Why the operator writes it itself rather than through kopf's `settings.admission.managed` (which does
express the objectSelector): kopf writes its configuration when its server starts or its certificate
files change, but never repairs it afterwards, always adds an empty ValidatingWebhookConfiguration, and
cannot restrict the webhook to the namespaces a namespaced operator serves. Here the desired entry is
compared with the live object on every resync and restored when it drifted (a stale caBundle after
someone edited or re-applied the object, or the object deleted), and `namespaceSelector` follows
`--namespace`. kopf still serves the webhook and dispatches to the handler by the URL path (its id).

Top to bottom: the desired entry and object and their drift (pure), the object's reads and writes, and the
controller that keeps it in place: read the live object -> compare with the desired entry -> create or
compare-and-swap replace.
"""

from __future__ import annotations

import base64
import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.kube import Conflict, Kube

log = logging.getLogger(__name__)
WEBHOOK_NAME = f"{c.WEBHOOK_ID}.{c.GROUP}"  # a webhook name must be fully qualified
TIMEOUT_SECONDS = 10  # the API server waits this long before failing a labelled pod's creation
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by the API server on every namespace


def url_client_config(host: str, port: int, ca_bundle_b64: str) -> dict[str, Any]:
    """Out of the cluster: the API server calls https://host:port/<webhook id>."""
    netloc = f"[{host}]" if ":" in host else host
    return {"url": f"https://{netloc}:{port}/{c.WEBHOOK_ID}", "caBundle": ca_bundle_b64}


def service_client_config(namespace: str, name: str, port: int, ca_bundle_b64: str) -> dict[str, Any]:
    """In the cluster: the API server calls the Service at /<webhook id>."""
    return {"service": {"namespace": namespace, "name": name, "port": port, "path": f"/{c.WEBHOOK_ID}"},
            "caBundle": ca_bundle_b64}


def desired_webhook(client_config: Mapping[str, Any], namespaces: Sequence[str] = ()) -> dict[str, Any]:
    """Pods being created that carry the opt-in label, and nothing else: an operator outage can block only
    labelled pods (failurePolicy Fail: better not created than started without their secrets)."""
    return {
        "name": WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "clientConfig": dict(client_config),
        "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"], "scope": "Namespaced"}],
        "objectSelector": {"matchExpressions": [{"key": c.LABEL_WORKSPACE_SECRET, "operator": "Exists"}]},
        "namespaceSelector": (
            {"matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(namespaces)}]}
            if namespaces else {}
        ),
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "NoneOnDryRun",  # the conflict Event is not posted on dry runs
        "timeoutSeconds": TIMEOUT_SECONDS,
        "reinvocationPolicy": "Never",
    }


def desired_configuration(name: str, webhook: Mapping[str, Any], live: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The whole object: our webhook entry replaced (or added), anything else in it kept; with the live
    object's resourceVersion, so that the write is a compare-and-swap."""
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_PART_OF: c.OPERATOR_NAME},
    }
    others: list[Mapping[str, Any]] = []
    if live is not None:
        live_meta = live.get("metadata") or {}
        metadata = {k: v for k, v in live_meta.items() if k != "managedFields"}
        metadata["labels"] = {**(live_meta.get("labels") or {}), **(metadata.get("labels") or {}),
                              c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_PART_OF: c.OPERATOR_NAME}
        others = [w for w in live.get("webhooks") or () if w.get("name") != webhook["name"]]
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": copy.deepcopy([*others, webhook]),
    }


def drift(live: Mapping[str, Any] | None, webhook: Mapping[str, Any]) -> str | None:
    """What differs between the live object and our desired entry (None: nothing). Fields the API server
    defaults and we do not set are ignored; every field we set must match."""
    if live is None:
        return "the configuration does not exist"
    current = next((w for w in live.get("webhooks") or () if w.get("name") == webhook["name"]), None)
    if current is None:
        return f"webhook {webhook['name']!r} is missing"
    changed = sorted(k for k, v in webhook.items() if current.get(k) != v)
    return f"webhook {webhook['name']!r} differs in {', '.join(changed)}" if changed else None


# --- reads and writes --------------------------------------------------------------------------------------
_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


class MutatingWebhookConfigurations:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    async def get(self, name: str) -> dict[str, Any] | None:
        return await self._kube.get(f"{_PATH}/{quote(name, safe='')}")

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._kube.create(_PATH, body)

    async def replace(self, body: dict[str, Any]) -> dict[str, Any]:
        """PUT with the body's resourceVersion: 409 Conflict if the object changed since it was read."""
        return await self._kube.replace(f"{_PATH}/{quote(body['metadata']['name'], safe='')}", body)


# --- the controller ----------------------------------------------------------------------------------------
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
        webhook = desired_webhook(self._client_config(ca_b64), self._namespaces)
        for _ in range(3):  # a compare-and-swap lost to another writer: read again
            live = await self._configurations.get(self._name)
            problem = drift(live, webhook)
            if problem is None:
                return False
            body = desired_configuration(self._name, webhook, live)
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
