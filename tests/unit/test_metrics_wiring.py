"""The credential and webhook metrics move with the work they count (read from prometheus-client's registry, the
one /metrics serves): a WorkspaceSecret with a kubernetes-token credential through the real reconcile, credential
manager and provider over the shared in-memory API server; pods through the real admission controller.
tests/e2e/test_observability.py reads the same metrics from a running operator's /metrics."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timezone

import pytest
from fakes.kube import FakeKube
from prometheus_client import REGISTRY

from workspace_secrets.api import constants as c
from workspace_secrets.credentials.ledger import AccessRule
from workspace_secrets.credentials.manager import CredentialManager
from workspace_secrets.credentials.providers import registry
from workspace_secrets.pod_injection.controller import PodInjectionController, Refused
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
NS = "team"
WS = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
PROVIDER = "metrics-tokens"  # a name no other test uses: the counters are process-wide


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def credentials_ws(kube: FakeKube, name: str, account: str) -> dict:
    return kube.put(WS, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name},
                         "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"},
                                  "credentials": [{"name": "kube", "provider": PROVIDER, "parameters": {"serviceAccount": account}, "lifecycle": "WhileExists"}]}})


def test_credentials_issued_failed_and_revoked_are_counted():
    kube = FakeKube(clock=lambda: NOW)
    kube.put(f"/api/v1/namespaces/{NS}/serviceaccounts/ci-bot", {"metadata": {"name": "ci-bot"}})
    provider = registry.build(PROVIDER, "kubernetes-token", {"allowedServiceAccounts": ["ci-*"], "audiences": ["aud"]}, {}, kube)
    provider.access = AccessRule(namespaces=(NS,))
    controller = WorkspaceSecretController(kube, EventRecorder(kube), credentials=CredentialManager({PROVIDER: provider}, clock=lambda: NOW),  # type: ignore[arg-type]
                                           clock=lambda: NOW)
    issued, revoked = value("wso_credentials_issued_total", provider=PROVIDER), value("wso_credentials_revoked_total", provider=PROVIDER)

    def failed(operation: str, reason: str) -> float:
        return value("wso_credentials_failed_total", provider=PROVIDER, operation=operation, reason=reason)

    credentials_ws(kube, "ok", "ci-bot")
    asyncio.run(controller.reconcile_by_name(NS, "ok"))
    token = base64.b64decode(kube.get_object(f"{SECRETS}/ok")["data"]["kube.token"]).decode()
    assert kube.review_token(token) is not None
    assert value("wso_credentials_issued_total", provider=PROVIDER) == issued + 1

    permanent = failed("issue", "permanent")
    credentials_ws(kube, "bad", "ci-nobody")  # allowed by the pattern; no such ServiceAccount (404)
    asyncio.run(controller.reconcile_by_name(NS, "bad"))
    assert failed("issue", "permanent") == permanent + 1
    assert value("wso_credentials_issued_total", provider=PROVIDER) == issued + 1

    retryable = failed("list", "retryable")
    kube.fail("LIST", SECRETS, 503)  # the provider cannot look at its anchors: nothing else is tried
    asyncio.run(controller.reconcile_by_name(NS, "ok"))
    assert failed("list", "retryable") == retryable + 1

    assert asyncio.run(controller.finalize(kube.get_object(f"{WS}/ok"))) is None
    assert kube.review_token(token) is None
    assert value("wso_credentials_revoked_total", provider=PROVIDER) == revoked + 1
    # "bad" left an anchor without a token behind: the next reconcile revokes it as an orphan.
    asyncio.run(controller.reconcile_by_name(NS, "bad"))
    assert value("wso_credentials_revoked_total", provider=PROVIDER) == revoked + 2
    assert failed("issue", "permanent") == permanent + 2


def test_webhook_admissions_are_counted_by_result():
    kube = FakeKube()
    kube.put(WS, {"metadata": {"name": "alice-ws", "uid": "u1"},
                  "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}},
                  "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "SecretReady", "message": "ok"}],
                             "secretName": "alice-ws", "env": [{"name": "GIT_SSH_COMMAND", "key": "GIT_SSH_COMMAND"}]}})
    controller = PodInjectionController(kube, EventRecorder(kube))  # type: ignore[arg-type]

    def pod(ws: str) -> dict:
        return {"metadata": {"name": "w", "labels": {c.LABEL_WORKSPACE_SECRET: ws, c.LABEL_USER: "alice"}},
                "spec": {"containers": [{"name": "workspace", "image": "x"}]}}

    def admissions(result: str) -> float:
        return value("wso_webhook_admissions_total", webhook=c.WEBHOOK_ID, result=result)

    before = {r: admissions(r) for r in ("allowed", "rejected", "error")}
    assert asyncio.run(controller.admit(pod("alice-ws"), namespace=NS)).patch
    with pytest.raises(Refused):
        asyncio.run(controller.admit(pod("missing"), namespace=NS))
    kube.fail("GET", f"{WS}/alice-ws", 500)
    with pytest.raises(Exception, match="500"):
        asyncio.run(controller.admit(pod("alice-ws"), namespace=NS))
    assert {r: admissions(r) - before[r] for r in before} == {"allowed": 1, "rejected": 1, "error": 1}
