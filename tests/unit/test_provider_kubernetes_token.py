"""The kubernetes-token provider against the shared in-memory API server (tests/fakes/kube.py), whose
TokenRequest binds tokens to objects and whose `review_token` answers as a TokenReview would: a token is
proven to authenticate after issue and to stop after revoke, or after its WorkspaceSecret is deleted."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.credentials.providers import registry
from workspace_secrets.credentials.providers.base import ProviderError, Scope
from workspace_secrets.credentials.providers.kubernetes_token import LABEL_SCOPE, KubernetesTokenProvider

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
NS = "team"
WS_PATH = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
CONFIG = {"allowedServiceAccounts": ["ci", "deploy-*"], "audiences": ["vault", "https://kubernetes.default.svc"]}


def run(coro):
    return asyncio.run(coro)


def cluster() -> tuple[FakeKube, Scope]:
    kube = FakeKube(clock=lambda: NOW)
    for account in ("ci", "deploy-web", "admin"):
        kube.put(f"/api/v1/namespaces/{NS}/serviceaccounts/{account}", {"apiVersion": "v1", "kind": "ServiceAccount"})
    ws = kube.put(WS_PATH, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "alice-ws"},
                            "spec": {"user": "alice"}})
    return kube, Scope.of(NS, "alice-ws", ws["metadata"]["uid"], "kube")


def provider(kube: FakeKube, **config) -> KubernetesTokenProvider:
    return registry.build("tokens", "kubernetes-token", {**CONFIG, **config}, {}, kube)


def test_an_issued_token_authenticates_as_the_account_until_it_is_revoked():
    kube, scope = cluster()
    tokens = provider(kube)
    issued = run(tokens.issue(scope, {"serviceAccount": "ci", "expirationSeconds": "1200"}, 1))
    token = issued.values["token"].reveal_text()

    identity = kube.review_token(token)
    assert identity is not None and (identity.namespace, identity.service_account) == (NS, "ci")
    assert identity.audiences == CONFIG["audiences"]  # not asked for a subset: every allowed audience
    assert issued.expires_at == NOW + timedelta(seconds=1200) == identity.expires_at
    # The anchor: named by the API server, labelled with the scope, owned by the WorkspaceSecret.
    anchor = kube.get_object(f"{SECRETS}/{issued.id}")
    assert anchor is not None and issued.id.startswith("alice-ws-kube-tok-")
    assert anchor["metadata"]["labels"] == {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_TOKEN_ANCHOR,
                                            LABEL_SCOPE: scope.tag}
    assert [(o["kind"], o["uid"]) for o in anchor["metadata"]["ownerReferences"]] == [(c.WORKSPACE_SECRET_KIND, scope.workspace_uid)]
    assert kube.token_requests[-1]["spec"]["boundObjectRef"]["uid"] == anchor["metadata"]["uid"]

    run(tokens.revoke(scope, issued.id))
    assert kube.review_token(token) is None and kube.get_object(f"{SECRETS}/{issued.id}") is None
    run(tokens.revoke(scope, issued.id))  # idempotent: already gone is revoked


def test_deleting_the_workspace_secret_kills_its_tokens_without_the_operator():
    kube, scope = cluster()
    tokens = provider(kube)
    mine = [run(tokens.issue(scope, {"serviceAccount": "ci"}, n)).values["token"].reveal_text() for n in (1, 2)]
    bob = kube.put(WS_PATH, {"metadata": {"name": "bob-ws"}, "spec": {"user": "bob"}})
    bobs = run(tokens.issue(Scope.of(NS, "bob-ws", bob["metadata"]["uid"], "kube"), {"serviceAccount": "ci"}, 1))
    assert all(kube.review_token(t) for t in mine)

    kube.remove(f"{WS_PATH}/alice-ws")
    deleted = kube.collect_garbage()  # Kubernetes' garbage collector, not the provider
    assert len(deleted) == 2 and all(kube.review_token(t) is None for t in mine)
    assert kube.review_token(bobs.values["token"].reveal_text()) is not None


def test_audiences_are_a_subset_of_the_providers():
    kube, scope = cluster()
    tokens = provider(kube)
    issued = run(tokens.issue(scope, {"serviceAccount": "deploy-web", "audiences": "vault"}, 1))
    token = issued.values["token"].reveal_text()
    assert kube.review_token(token, audience="vault") is not None
    assert kube.review_token(token, audience="https://kubernetes.default.svc") is None  # not the API server's
    # Never minted outside the allowed audiences, even if validate() was skipped.
    with pytest.raises(ProviderError, match="outside provider 'tokens'") as caught:
        run(tokens.issue(scope, {"serviceAccount": "ci", "audiences": "vault,evil"}, 2))
    assert caught.value.retryable is False and len(kube.token_requests) == 1


def test_list_finds_the_anchor_of_an_interrupted_attempt_and_only_live_anchors_of_the_scope():
    kube, scope = cluster()
    tokens = provider(kube)
    kube.fail("POST", f"/api/v1/namespaces/{NS}/serviceaccounts/ci/token", 503, message="etcd leader changed")
    with pytest.raises(ProviderError) as caught:
        run(tokens.issue(scope, {"serviceAccount": "ci"}, 1))
    assert caught.value.retryable is True and "503 ServiceUnavailable: etcd leader changed" in str(caught.value)
    orphans = run(tokens.list(scope))
    assert len(orphans) == 1 and not kube.tokens  # an anchor without a token: revoked as an orphan before the next mint

    issued = run(tokens.issue(scope, {"serviceAccount": "ci"}, 2))
    bob = kube.put(WS_PATH, {"metadata": {"name": "bob-ws"}, "spec": {"user": "bob"}})
    run(tokens.issue(Scope.of(NS, "bob-ws", bob["metadata"]["uid"], "kube"), {"serviceAccount": "ci"}, 1))
    going = kube.edit(f"{SECRETS}/{orphans[0]}", {"metadata": {"finalizers": ["example.com/hold"]}})
    kube.remove(f"{SECRETS}/{going['metadata']['name']}")  # being deleted: not live any more
    assert run(tokens.list(scope)) == [issued.id]


def test_api_errors_become_provider_errors():
    kube, scope = cluster()
    tokens = provider(kube)
    with pytest.raises(ProviderError, match="ServiceAccount 'deploy-gone' failed: 404 NotFound") as caught:
        run(tokens.issue(scope, {"serviceAccount": "deploy-gone"}, 1))  # allowed by the glob, does not exist
    assert caught.value.retryable is False
    kube.fail("POST", SECRETS, 403, message="secrets is forbidden")
    with pytest.raises(ProviderError, match="could not create token anchor: 403 Forbidden"):
        run(tokens.issue(scope, {"serviceAccount": "ci"}, 2))
    kube.fail("LIST", SECRETS, 500)
    with pytest.raises(ProviderError, match="could not list token anchors: 500 InternalError"):
        run(tokens.list(scope))
    issued = run(tokens.issue(scope, {"serviceAccount": "ci"}, 3))
    kube.fail("DELETE", f"{SECRETS}/{issued.id}", 429, retry_after=2)
    with pytest.raises(ProviderError, match="could not delete token anchor"):
        run(tokens.revoke(scope, issued.id))
    assert kube.review_token(issued.values["token"].reveal_text()) is not None  # still valid: the caller retries


def test_validate_holds_the_platforms_policy():
    kube, _ = cluster()
    tokens = provider(kube, maxExpirationSeconds=7200)
    assert tokens.validate({"serviceAccount": "ci"}) is None
    assert tokens.validate({"serviceAccount": "deploy-web", "audiences": "vault", "expirationSeconds": "7200"}) is None
    assert "serviceAccount is required" in (tokens.validate({}) or "")
    assert "'admin' is not allowed" in (tokens.validate({"serviceAccount": "admin"}) or "")
    assert "'evil' are not allowed" in (tokens.validate({"serviceAccount": "ci", "audiences": "vault, evil"}) or "")
    assert "between 600 and 7200, got 599" in (tokens.validate({"serviceAccount": "ci", "expirationSeconds": "599"}) or "")
    assert "between 600 and 7200, got 7201" in (tokens.validate({"serviceAccount": "ci", "expirationSeconds": "7201"}) or "")
    assert "must be an integer" in (tokens.validate({"serviceAccount": "ci", "expirationSeconds": "1h"}) or "")


@pytest.mark.parametrize("config, message", [
    ({"audiences": ["vault"]}, "allowedServiceAccounts is required"),
    ({"allowedServiceAccounts": [], "audiences": ["vault"]}, "allowedServiceAccounts is required"),
    ({"allowedServiceAccounts": ["ci"]}, "audiences is required"),
    ({"allowedServiceAccounts": ["ci"], "audiences": [""]}, "audiences is required"),
])
def test_no_allow_all_defaults(config, message):
    with pytest.raises(ValueError, match=message):
        registry.build("tokens", "kubernetes-token", config, {}, FakeKube())
