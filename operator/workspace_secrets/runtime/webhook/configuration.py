"""The MutatingWebhookConfiguration entry that sends labelled pods to the operator (pure).

Why the operator writes it itself rather than through kopf's `settings.admission.managed` (which does
express the objectSelector): kopf writes its configuration when its server starts or its certificate
files change, but never repairs it afterwards, always adds an empty ValidatingWebhookConfiguration, and
cannot restrict the webhook to the namespaces a namespaced operator serves. Here the desired entry is
compared with the live object on every resync and restored when it drifted (a stale caBundle after
someone edited or re-applied the object, or the object deleted), and `namespaceSelector` follows
`--namespace`. kopf still serves the webhook and dispatches to the handler by the URL path (its id).

With --webhook-cert-manager-certificate NAMESPACE/NAME the object is annotated `cert-manager.io/inject-ca-from:
NAMESPACE/NAME` and cert-manager's cainjector keeps `caBundle`: the operator then never writes, compares or restores
it (a caBundle found in the live object is carried over unchanged on every write). Without it, a leftover
`cert-manager.io/inject-ca-from` annotation is drift: the resync removes it (and only it) and writes its own caBundle.

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
INJECT_CA_FROM = "cert-manager.io/inject-ca-from"  # cert-manager's cainjector fills caBundle from this Certificate


def _with_ca(client_config: dict[str, Any], ca_bundle_b64: str | None) -> dict[str, Any]:
    return client_config if ca_bundle_b64 is None else {**client_config, "caBundle": ca_bundle_b64}


def url_client_config(host: str, port: int, ca_bundle_b64: str | None) -> dict[str, Any]:
    """Out of the cluster: the API server calls https://host:port/<webhook id>. caBundle None: not ours to set."""
    netloc = f"[{host}]" if ":" in host else host
    return _with_ca({"url": f"https://{netloc}:{port}/{c.WEBHOOK_ID}"}, ca_bundle_b64)


def service_client_config(namespace: str, name: str, port: int, ca_bundle_b64: str | None) -> dict[str, Any]:
    """In the cluster: the API server calls the Service at /<webhook id>. caBundle None: not ours to set."""
    return _with_ca({"service": {"namespace": namespace, "name": name, "port": port, "path": f"/{c.WEBHOOK_ID}"}},
                    ca_bundle_b64)


def cert_manager_annotations(certificate: tuple[str, str] | None) -> dict[str, str]:
    """The annotations that hand caBundle to cert-manager's cainjector (none without a Certificate)."""
    return {INJECT_CA_FROM: "/".join(certificate)} if certificate else {}


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


def _entry(live: Mapping[str, Any] | None, name: str) -> Mapping[str, Any] | None:
    return next((w for w in (live or {}).get("webhooks") or () if w.get("name") == name), None)


def _ours(current: Mapping[str, Any], webhook: Mapping[str, Any]) -> dict[str, Any]:
    """The live entry as compared with ours: without caBundle when ours sets none (cert-manager's to keep)."""
    result = dict(current)
    if "caBundle" not in webhook.get("clientConfig", {}):
        result["clientConfig"] = {k: v for k, v in (current.get("clientConfig") or {}).items() if k != "caBundle"}
    return result


def _stale(key: str, annotations: Mapping[str, str] | None) -> bool:
    """A cert-manager annotation we no longer set (no Certificate configured any more): it must go, or the
    cainjector and the operator keep overwriting each other's caBundle. Anyone else's annotations stay."""
    return key == INJECT_CA_FROM and key not in (annotations or {})


def desired_configuration(name: str, webhook: Mapping[str, Any], live: Mapping[str, Any] | None = None,
                          annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The whole object: our webhook entry replaced (or added), anything else in it kept; with the live
    object's resourceVersion, so that the write is a compare-and-swap. When our entry sets no caBundle, the
    live entry's caBundle (cert-manager's) is carried over unchanged."""
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_PART_OF: c.OPERATOR_NAME},
    }
    others: list[Mapping[str, Any]] = []
    entry = dict(webhook)
    if live is not None:
        live_meta = live.get("metadata") or {}
        metadata = {k: v for k, v in live_meta.items() if k != "managedFields"}
        metadata["labels"] = {**(live_meta.get("labels") or {}), **(metadata.get("labels") or {}),
                              c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_PART_OF: c.OPERATOR_NAME}
        others = [w for w in live.get("webhooks") or () if w.get("name") != webhook["name"]]
        current = _entry(live, webhook["name"])
        live_ca = ((current or {}).get("clientConfig") or {}).get("caBundle")
        if "caBundle" not in webhook.get("clientConfig", {}) and live_ca:
            entry["clientConfig"] = {**webhook["clientConfig"], "caBundle": live_ca}
    kept = {k: v for k, v in (metadata.get("annotations") or {}).items() if not _stale(k, annotations)}
    if kept or annotations:
        metadata["annotations"] = {**kept, **(annotations or {})}
    else:
        metadata.pop("annotations", None)
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": copy.deepcopy([*others, entry]),
    }


def drift(live: Mapping[str, Any] | None, webhook: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> str | None:
    """What differs between the live object and our desired entry (None: nothing). Fields the API server
    defaults and we do not set are ignored; every field we set must match (caBundle only when we set it)."""
    if live is None:
        return "the configuration does not exist"
    current = _entry(live, webhook["name"])
    if current is None:
        return f"webhook {webhook['name']!r} is missing"
    live_annotations = (live.get("metadata") or {}).get("annotations") or {}
    missing = sorted(k for k, v in (annotations or {}).items() if live_annotations.get(k) != v)
    if missing:
        return f"annotation {', '.join(missing)} differs"
    stale = sorted(k for k in live_annotations if _stale(k, annotations))
    if stale:
        return f"annotation {', '.join(stale)} is no longer ours to set"
    compared = _ours(current, webhook)
    changed = sorted(k for k, v in webhook.items() if compared.get(k) != v)
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
        client_config: Callable[[str | None], dict[str, Any]],
        ca_bundle: Callable[[], bytes] | None,
        *,
        namespaces: Sequence[str] = (),
        cert_manager_certificate: tuple[str, str] | None = None,
    ) -> None:
        self._configurations = configurations
        self._name = name
        self._client_config = client_config  # caBundle (base64, None: not ours) -> clientConfig
        # The PEM the webhook's serving certificate chains to (read each time); None with cert-manager's injection.
        self._ca_bundle = None if cert_manager_certificate else ca_bundle
        self._annotations = cert_manager_annotations(cert_manager_certificate)
        self._namespaces = tuple(namespaces)

    async def sync(self) -> bool:
        """Make the live configuration match; True if it was written. Safe to run at any time."""
        ca_b64 = base64.b64encode(self._ca_bundle()).decode() if self._ca_bundle is not None else None
        webhook = desired_webhook(self._client_config(ca_b64), self._namespaces)
        for _ in range(3):  # a compare-and-swap lost to another writer: read again
            live = await self._configurations.get(self._name)
            problem = drift(live, webhook, self._annotations)
            if problem is None:
                return False
            body = desired_configuration(self._name, webhook, live, self._annotations)
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
