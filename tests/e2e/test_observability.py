"""Observability: Prometheus metrics that move with the work, and JSON logs that name their object."""

from __future__ import annotations

import base64
import json

import pytest
from helpers import Api, wait_for
from metrics_text import families, metric
from operator_process import OperatorProcess, other_operators_stopped

from workspace_secrets.api import constants as c


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def test_metrics_count_reconciles_secret_writes_and_watch_state(api, namespace, wso_operator):
    before = wso_operator.process.metrics()
    api.create_ws(namespace, "m1", {"user": "mia", "workspaceRef": {"kind": "Pod", "name": "nothing"}})
    api.wait_condition(namespace, "m1")
    original = api.secret_digests(namespace, "m1")
    api.core.patch_namespaced_secret("m1", namespace, {"data": {c.KEY_KNOWN_HOSTS: base64.b64encode(b"x\n").decode()}})
    wait_for(lambda: api.secret_digests(namespace, "m1") == original, timeout=15, what="drift repaired")
    after = wso_operator.process.metrics()

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("wso_reconciles_total", kind="WorkspaceSecret", result="success") >= 2  # create + drift repair
    assert moved("wso_reconcile_duration_seconds_count", kind="WorkspaceSecret") >= 2
    assert moved("wso_secret_writes_total", component="workspace-secret", operation="create") >= 1
    assert moved("wso_secret_writes_total", component="workspace-secret", operation="update") >= 1  # the repair
    assert moved("wso_secret_writes_total", component="user-ssh-key", operation="create") >= 1
    assert moved("wso_kube_requests_total", verb="GET", code="200") >= 1
    assert metric(after, "wso_watch_healthy", resource="secrets") == 1
    assert metric(after, "wso_watch_healthy", resource=c.WORKSPACE_SECRET_PLURAL) == 1  # our own watch, not kopf's
    assert metric(after, "wso_peering_active") == 0  # standalone: no peering gate
    assert "wso_workqueue_depth" in families(after)
    # Families that move only with other features (credentials, tokens, the webhook: the tests below and
    # test_user_token.py move them) or with trouble are exposed from the start.
    assert {
        "wso_credentials_issued", "wso_credentials_revoked", "wso_credentials_failed", "wso_tokens",
        "wso_token_refresh_failures", "wso_webhook_admissions", "wso_watch_restarts", "wso_workqueue_retries",
    } <= families(after)


def test_credential_metrics_count_issues_failures_and_revocations(api, namespace, wso_operator):
    """The provider label is the platform's provider name; a failure's reason says whether it is retried."""
    api.core.create_namespaced_service_account(namespace, {"metadata": {"name": "ci-metrics"}})
    before = wso_operator.process.metrics()
    kube = {"name": "kube", "provider": "cluster-tokens", "lifecycle": "WhileExists"}
    api.create_ws(namespace, "cm", {"user": "mia", "workspaceRef": {"kind": "Pod", "name": "nothing"},
                                    "credentials": [{**kube, "parameters": {"serviceAccount": "ci-metrics"}}]})
    api.wait_condition(namespace, "cm")
    # Allowed by the provider's patterns, but there is no such ServiceAccount: the TokenRequest is refused.
    api.create_ws(namespace, "cm-bad", {"user": "mia", "workspaceRef": {"kind": "Pod", "name": "nothing"},
                                        "credentials": [{**kube, "parameters": {"serviceAccount": "ci-nobody"}}]})
    api.wait_condition(namespace, "cm-bad", status="False", type_=c.CONDITION_CREDENTIALS_READY, reason="ProviderError")
    issued = wso_operator.process.metrics()
    for name in ("cm", "cm-bad"):
        api.delete_ws(namespace, name)
    wait_for(lambda: api.get_ws(namespace, "cm") is None and api.get_ws(namespace, "cm-bad") is None, timeout=30, what="deleted")
    after = wso_operator.process.metrics()

    def moved(text: str, name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert moved(issued, "wso_credentials_issued_total", provider="cluster-tokens") >= 1
    assert moved(issued, "wso_credentials_failed_total", provider="cluster-tokens", operation="issue", reason="permanent") >= 1
    # The deletion revokes cm's token; cm-bad's anchors without a token are revoked too (as orphans, or then).
    assert moved(after, "wso_credentials_revoked_total", provider="cluster-tokens") >= moved(issued, "wso_credentials_revoked_total", provider="cluster-tokens") + 1


def test_webhook_admissions_are_counted_by_result(api, namespace, wso_operator):
    if not wso_operator.webhook:
        pytest.skip("the webhook is not reachable from an external cluster without WSO_E2E_WEBHOOK_HOST")
    from kubernetes.client.rest import ApiException

    api.create_ws(namespace, "adm", {"user": "ada", "workspaceRef": {"kind": "Pod", "name": "adm-pod"}})
    api.wait_condition(namespace, "adm")
    before = wso_operator.process.metrics()
    api.create_pod(namespace, "adm-pod", labels={c.LABEL_WORKSPACE_SECRET: "adm"}, user="ada")
    with pytest.raises(ApiException) as refused:
        api.create_pod(namespace, "adm-missing", labels={c.LABEL_WORKSPACE_SECRET: "missing"}, user="ada")
    assert refused.value.status == 403
    after = wso_operator.process.metrics()

    def moved(**labels: str) -> float:
        return metric(after, "wso_webhook_admissions_total", webhook=c.WEBHOOK_ID, **labels) - metric(
            before, "wso_webhook_admissions_total", webhook=c.WEBHOOK_ID, **labels)

    assert moved(result="allowed") >= 1 and moved(result="rejected") >= 1 and moved(result="error") == 0


def test_json_logs_parse_and_carry_the_object_reference(api, cluster, namespace, tmp_path):
    # --verbose: the most the operator logs (kopf's per-event handler lines are only logged then).
    operator = OperatorProcess(str(cluster.kubeconfig), tmp_path / "op", "--namespace", namespace, "--log-format", "json", "--verbose")
    with other_operators_stopped():
        operator.start()
        try:
            api.create_ws(namespace, "j1", {"user": "jay", "workspaceRef": {"kind": "Pod", "name": "nothing"}})
            api.wait_condition(namespace, "j1")
        finally:
            operator.stop()
    lines = [line for line in operator.log_since_last_start().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line[:200]!r}")
    assert all("message" in r and "severity" in r and "timestamp" in r for r in records)
    about = [r for r in records if (r.get("object") or {}).get("name") == "j1"]
    assert about, "no log line names the WorkspaceSecret"
    assert all(r["object"]["namespace"] == namespace and r["object"]["kind"] == c.WORKSPACE_SECRET_KIND for r in about)
    # The operator's own lines carry it.
    assert any(r["message"].startswith("Created Secret 'j1'") for r in about)


def test_every_state_change_gets_an_event_with_a_stable_reason(api, namespace, wso_operator):
    from workspace_secrets.user_keys.sshkeys import KeySpec, generate

    spec = {"user": "eve", "workspaceRef": {"kind": "Pod", "name": "ws-eve"}, "ssh": {"existingSecretRef": {"name": "eve-key"}}}
    api.create_ws(namespace, "ev", spec)
    api.wait_condition(namespace, "ev", status="False", reason="ExistingKeyNotFound")
    # Labelled as eve's: the operator takes a brought key only from the user's own Secret.
    api.create_secret(namespace, "eve-key", {"ssh-privatekey": generate(KeySpec(), comment="eve").private_openssh.reveal()},
                      labels={c.LABEL_USER: "eve"})
    api.patch_ws(namespace, "ev", {"metadata": {"annotations": {"touch": "1"}}})  # the key Secret is not watched
    api.wait_condition(namespace, "ev")
    api.create_pod(namespace, "ws-eve", user="eve")
    api.wait_condition(namespace, "ev", type_="WorkspaceBound")
    reasons = wait_for(lambda: (r := {e.reason for e in api.events_for(namespace, "ev")}) and "WorkspaceBound" in r and r,
                       timeout=10, what="events")
    # SecretReady is posted only on a False -> True change of Ready (Event timestamps have one-second
    # resolution, so their order is not asserted).
    assert {"ExistingKeyNotFound", "SecretCreated", "SecretReady", "WorkspaceBound"} <= reasons, reasons
