"""--webhook-cert-manager-certificate NAMESPACE/NAME: the MutatingWebhookConfiguration is annotated
cert-manager.io/inject-ca-from and its caBundle is cert-manager's -- the operator never writes, compares or restores
it, through the real store over the shared in-memory API server (tests/fakes/kube.py). On the real API server:
tests/e2e/test_webhook_cert_manager.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import kopf
import pytest
from fakes.kube import FakeKube

from workspace_secrets.runtime.webhook import configuration as wc
from workspace_secrets.runtime.webhook.server import WebhookServer

CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
CERTIFICATE = ("ops", "wso-webhook")
INJECTED = "aW5qZWN0ZWQgYnkgY2VydC1tYW5hZ2Vy"


def never() -> bytes:
    raise AssertionError("the operator must not read a CA for caBundle with cert-manager's injection")


def controller(kube: FakeKube) -> wc.WebhookConfigurationController:
    return wc.WebhookConfigurationController(
        wc.MutatingWebhookConfigurations(kube), "cfg",  # type: ignore[arg-type]
        lambda b64: wc.service_client_config("ops", "wso", 443, b64), never, cert_manager_certificate=CERTIFICATE)


def writes(kube: FakeKube) -> int:
    return len(kube.requests("POST", CONFIGURATIONS)) + len(kube.requests("PUT", f"{CONFIGURATIONS}/*"))


def test_the_client_config_has_no_ca_bundle_when_it_is_not_ours():
    assert "caBundle" not in wc.service_client_config("ops", "wso", 443, None)
    assert "caBundle" not in wc.url_client_config("127.0.0.1", 9443, None)
    assert wc.cert_manager_annotations(CERTIFICATE) == {"cert-manager.io/inject-ca-from": "ops/wso-webhook"}
    assert wc.cert_manager_annotations(None) == {}


def test_the_configuration_is_annotated_and_the_injected_ca_bundle_is_left_alone():
    kube = FakeKube()
    sync = controller(kube).sync
    assert asyncio.run(sync()) is True
    live = kube.get_object(f"{CONFIGURATIONS}/cfg")
    assert live["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ops/wso-webhook"
    assert "caBundle" not in live["webhooks"][0]["clientConfig"]

    # cert-manager's cainjector fills caBundle: nothing drifted, nothing written.
    live["webhooks"][0]["clientConfig"]["caBundle"] = INJECTED
    kube.put(CONFIGURATIONS, live)
    assert asyncio.run(sync()) is False and writes(kube) == 1
    # ... and rotates it: still not ours.
    live = kube.get_object(f"{CONFIGURATIONS}/cfg")
    live["webhooks"][0]["clientConfig"]["caBundle"] = "cm90YXRlZA=="
    kube.put(CONFIGURATIONS, live)
    assert asyncio.run(sync()) is False and writes(kube) == 1

    # Another field drifted (and the annotation was dropped): repaired, the injected caBundle carried over as it is.
    live = kube.get_object(f"{CONFIGURATIONS}/cfg")
    live["webhooks"][0]["failurePolicy"] = "Ignore"
    del live["metadata"]["annotations"]
    kube.put(CONFIGURATIONS, live)
    assert asyncio.run(sync()) is True and writes(kube) == 2
    live = kube.get_object(f"{CONFIGURATIONS}/cfg")
    assert live["webhooks"][0]["failurePolicy"] == "Fail"
    assert live["webhooks"][0]["clientConfig"]["caBundle"] == "cm90YXRlZA=="
    assert live["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ops/wso-webhook"


def test_the_annotation_alone_is_repaired():
    kube = FakeKube()
    sync = controller(kube).sync
    asyncio.run(sync())
    live = kube.get_object(f"{CONFIGURATIONS}/cfg")
    live["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] = "ops/someone-elses"
    kube.put(CONFIGURATIONS, live)
    assert asyncio.run(sync()) is True
    assert kube.get_object(f"{CONFIGURATIONS}/cfg")["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "ops/wso-webhook"


def test_the_annotation_goes_when_the_certificate_is_no_longer_configured():
    """--webhook-cert-manager-certificate removed: the inject-ca-from annotation is drift and is removed (anyone
    else's annotations stay), so cert-manager's cainjector stops overwriting the operator's own caBundle."""
    kube = FakeKube()
    asyncio.run(controller(kube).sync())
    live = kube.get_object(f"{CONFIGURATIONS}/cfg")
    live["metadata"]["annotations"]["example.com/owner"] = "team-a"
    live["webhooks"][0]["clientConfig"]["caBundle"] = INJECTED
    kube.put(CONFIGURATIONS, live)

    own = wc.WebhookConfigurationController(
        wc.MutatingWebhookConfigurations(kube), "cfg",  # type: ignore[arg-type]
        lambda b64: wc.service_client_config("ops", "wso", 443, b64), lambda: b"CA")
    webhook = wc.desired_webhook(wc.service_client_config("ops", "wso", 443, INJECTED))
    assert wc.drift(kube.get_object(f"{CONFIGURATIONS}/cfg"), webhook) == (
        "annotation cert-manager.io/inject-ca-from is no longer ours to set")
    assert asyncio.run(own.sync()) is True
    live = kube.get_object(f"{CONFIGURATIONS}/cfg")
    assert live["metadata"]["annotations"] == {"example.com/owner": "team-a"}
    assert live["webhooks"][0]["clientConfig"]["caBundle"] == "Q0E="  # the operator's own
    assert asyncio.run(own.sync()) is False  # settled: no tug of war

    # With no other annotation left, the annotations go altogether.
    body = wc.desired_configuration("cfg", webhook, {"metadata": {"name": "cfg", "annotations": {
        "cert-manager.io/inject-ca-from": "ops/wso-webhook"}}, "webhooks": []})
    assert "annotations" not in body["metadata"]


def test_the_certificate_secret_must_be_mounted(tmp_path: Path):
    """With cert-manager, the operator never makes its own CA: an empty --webhook-cert-dir is a configuration error."""
    server = WebhookServer(FakeKube(), cert_dir=str(tmp_path), hosts=["wso.ops.svc"], listen_address="127.0.0.1",  # type: ignore[arg-type]
                           port=9443, host="127.0.0.1", client_config=lambda b64: {}, target="t",
                           configuration_name="cfg", cert_manager_certificate=CERTIFICATE)
    with pytest.raises(kopf.PermanentError, match="mount the Certificate's Secret there"):
        asyncio.run(server.configure(kopf.OperatorSettings()))
    assert list(tmp_path.iterdir()) == []  # nothing written
