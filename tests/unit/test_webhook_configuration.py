"""The MutatingWebhookConfiguration entry, its drift detection, and the sync through the real store over the
shared in-memory API server (tests/fakes/kube.py)."""

from __future__ import annotations

import asyncio
import base64

import pytest
from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.webhook.configuration import WebhookConfigurationController
from workspace_secrets.runtime.webhook import configuration as wc

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_entry_selects_labelled_pod_creations_only():
    webhook = wc.desired_webhook(wc.url_client_config("127.0.0.1", 9443, "Q0E="))
    assert webhook["objectSelector"] == {"matchExpressions": [{"key": c.LABEL_WORKSPACE_SECRET, "operator": "Exists"}]}
    assert webhook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"], "scope": "Namespaced"}]
    assert webhook["namespaceSelector"] == {}
    assert webhook["clientConfig"] == {"url": f"https://127.0.0.1:9443/{c.WEBHOOK_ID}", "caBundle": "Q0E="}
    assert webhook["failurePolicy"] == "Fail" and webhook["sideEffects"] == "NoneOnDryRun"


def test_a_namespaced_operator_restricts_the_namespaces():
    webhook = wc.desired_webhook(wc.service_client_config("ops", "wso", 443, "Q0E="), ["team-b", "team-a"])
    assert webhook["namespaceSelector"] == {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]}
    assert webhook["clientConfig"]["service"] == {"namespace": "ops", "name": "wso", "port": 443, "path": f"/{c.WEBHOOK_ID}"}


def test_drift_is_detected_field_by_field_and_server_defaults_are_ignored():
    webhook = wc.desired_webhook(wc.url_client_config("127.0.0.1", 9443, "Q0E="))
    assert wc.drift(None, webhook) == "the configuration does not exist"
    live = wc.desired_configuration("cfg", webhook)
    assert wc.drift(live, webhook) is None
    live["webhooks"][0]["matchConditions"] = []  # a field the API server may add
    assert wc.drift(live, webhook) is None
    live["webhooks"][0]["clientConfig"]["caBundle"] = "b2xk"
    assert wc.drift(live, webhook) == f"webhook {wc.WEBHOOK_NAME!r} differs in clientConfig"
    live["webhooks"] = []
    assert "missing" in wc.drift(live, webhook)


def test_the_rewrite_keeps_other_webhooks_and_compares_and_swaps():
    webhook = wc.desired_webhook(wc.url_client_config("127.0.0.1", 9443, "Q0E="))
    live = {"metadata": {"name": "cfg", "resourceVersion": "42", "managedFields": [{}], "labels": {"team": "x"}},
            "webhooks": [{"name": "other.example.com"}, {**webhook, "timeoutSeconds": 30}]}
    body = wc.desired_configuration("cfg", webhook, live)
    assert body["metadata"]["resourceVersion"] == "42" and "managedFields" not in body["metadata"]
    assert body["metadata"]["labels"]["team"] == "x" and body["metadata"]["labels"][c.LABEL_MANAGED_BY] == c.OPERATOR_NAME
    assert [w["name"] for w in body["webhooks"]] == ["other.example.com", wc.WEBHOOK_NAME]
    assert body["webhooks"][1]["timeoutSeconds"] == wc.TIMEOUT_SECONDS


CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


def writes(kube: FakeKube) -> int:
    return len(kube.requests("POST", CONFIGURATIONS)) + len(kube.requests("PUT", f"{CONFIGURATIONS}/*"))


def controller(store, ca=lambda: CA):
    return WebhookConfigurationController(store, "cfg", lambda b64: wc.url_client_config("127.0.0.1", 9443, b64), ca)


def test_sync_creates_then_does_nothing_then_repairs_a_stale_ca_bundle():
    kube = FakeKube()
    sync = controller(wc.MutatingWebhookConfigurations(kube)).sync  # type: ignore[arg-type]
    assert asyncio.run(sync()) is True and writes(kube) == 1
    assert asyncio.run(sync()) is False and writes(kube) == 1  # idempotent: no write when nothing drifted
    stale = kube.get_object(f"{CONFIGURATIONS}/cfg")
    stale["webhooks"][0]["clientConfig"]["caBundle"] = "c3RhbGU="
    kube.put(CONFIGURATIONS, stale)  # someone else's write: a new resourceVersion
    assert asyncio.run(sync()) is True and writes(kube) == 2
    assert kube.get_object(f"{CONFIGURATIONS}/cfg")["webhooks"][0]["clientConfig"]["caBundle"] == \
        "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUIKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="


def test_sync_follows_a_new_ca_and_retries_a_lost_compare_and_swap():
    kube = FakeKube()
    ca = [CA]
    sync = controller(wc.MutatingWebhookConfigurations(kube), ca=lambda: ca[0]).sync  # type: ignore[arg-type]
    asyncio.run(sync())
    ca[0] = CA.replace(b"MIIB", b"MIIC")
    kube.fail("PUT", f"{CONFIGURATIONS}/cfg", 409, message="the object has been modified")
    assert asyncio.run(sync()) is True
    assert len(kube.requests("PUT")) == 2  # lost once, then read again and written
    live = kube.get_object(f"{CONFIGURATIONS}/cfg")
    assert wc.drift(live, wc.desired_webhook(wc.url_client_config("127.0.0.1", 9443, base64.b64encode(ca[0]).decode()))) is None


def test_cli_flags_make_the_webhook_config():
    from workspace_secrets.cli import _parser, _webhook_config
    from workspace_secrets.settings import hosts_for, listen_address

    off = _webhook_config(_parser().parse_args(["run"]))
    assert not off.enabled and off.host == "127.0.0.1" and off.port == 9443
    local = _webhook_config(_parser().parse_args(["run", "--webhook", "--webhook-port", "8443"]))
    assert local.enabled and hosts_for(local) == ["127.0.0.1"] and listen_address(local) == "127.0.0.1"
    in_cluster = _webhook_config(_parser().parse_args(
        ["run", "--webhook", "--webhook-service", "wso-system/wso-webhook", "--webhook-cert-dir", "/certs"]))
    assert in_cluster.service == ("wso-system", "wso-webhook") and in_cluster.cert_dir == "/certs"
    assert "wso-webhook.wso-system.svc" in hosts_for(in_cluster) and listen_address(in_cluster) == "0.0.0.0"
    assert _webhook_config(_parser().parse_args(["run", "--no-webhook"])).enabled is False
    with pytest.raises(SystemExit, match="NAMESPACE/NAME"):
        _webhook_config(_parser().parse_args(["run", "--webhook-service", "just-a-name"]))
