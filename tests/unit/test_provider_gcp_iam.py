"""The GCP service-account-key provider against the contract-checked fake of IAM v1 and Google's token
endpoint (tests/fakes/gcp_iam.py), and the fake's own contract checks."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import google.auth.exceptions
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakes.gcp_iam import FakeGcpIam
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.credentials.providers import gcp_iam as gcp
from workspace_secrets.credentials.providers import registry
from workspace_secrets.credentials.providers.base import FileRef, ProviderError, Scope

SCOPE = Scope.of("team-a", "alice-ws", "0d1e2f", "gcp")
CLOUD = ["https://www.googleapis.com/auth/cloud-platform"]


@pytest.fixture(scope="module")
def fake():
    server = FakeGcpIam().start()
    server.admin_key = server.bootstrap_admin()
    yield server
    server.stop()
    assert server.contract.violations.responses == [], "the fake answered outside the discovery document"


@pytest.fixture
def provider(fake) -> gcp.GcpServiceAccountKeyProvider:
    return registry.build("gcp", "gcp-service-account-key", {"endpoint": fake.url, "project": fake.project},
                          {"key.json": Sensitive(fake.admin_key)}, None)


def run(coro):
    return asyncio.run(coro)


def token_for(key_file: bytes) -> str:
    """Exchange a JSON key file for an access token through google-auth: the token, or the refusal."""
    credentials = service_account.Credentials.from_service_account_info(json.loads(key_file), scopes=CLOUD)
    try:
        credentials.refresh(Request())
    except google.auth.exceptions.RefreshError as exc:
        return f"refused: {exc.args[0]}"
    return credentials.token


def test_the_tag_is_a_valid_account_id():
    body = gcp.create_account_body(SCOPE)
    assert body["accountId"] == SCOPE.tag and 6 <= len(SCOPE.tag) <= 30
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])", SCOPE.tag)
    assert body["serviceAccount"]["description"].startswith(gcp.DESCRIPTION_MARK)
    assert gcp.account_path("p", gcp.account_email(SCOPE.tag, "p")) == f"/v1/projects/p/serviceAccounts/{SCOPE.tag}@p.iam.gserviceaccount.com"


def _key_document(key_id: str = "ab" * 20, **extra) -> dict:
    key_file = json.dumps({"type": "service_account", "private_key_id": key_id, "private_key": "PEM"}).encode()
    return {"name": f"projects/p/serviceAccounts/x@p.iam.gserviceaccount.com/keys/{key_id}",
            "privateKeyData": base64.b64encode(key_file).decode(), **extra}


def test_parse_created_key():
    key_id, key_file, expires = gcp.parse_created_key(_key_document(validBeforeTime="9999-12-31T23:59:59Z"))
    assert key_id == "ab" * 20 and json.loads(key_file)["private_key_id"] == key_id and expires is None
    _, _, expires = gcp.parse_created_key(_key_document(validBeforeTime="2027-01-02T03:04:05.123Z"))
    assert expires.isoformat() == "2027-01-02T03:04:05+00:00"
    secret_looking = base64.b64encode(b"-----BEGIN PRIVATE KEY----- not json").decode()
    with pytest.raises(ProviderError, match="not a service-account JSON key file") as info:
        gcp.parse_created_key({**_key_document(), "privateKeyData": secret_looking})
    assert "PRIVATE KEY" not in str(info.value) and not info.value.retryable
    with pytest.raises(ProviderError, match="not a service-account JSON key file"):
        gcp.parse_created_key(_key_document(key_id="cd" * 20) | {"privateKeyData": _key_document()["privateKeyData"]})


@pytest.mark.parametrize("status, body, retryable, text", [
    (429, {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}}, True, "RESOURCE_EXHAUSTED"),
    (503, {"error": {"code": 503, "message": "unavailable", "status": "UNAVAILABLE"}}, True, "HTTP 503"),
    (403, {"error": {"code": 403, "message": "Permission denied", "status": "PERMISSION_DENIED"}}, False, "Service Account Key Admin"),
    (400, {"error": {"code": 400, "message": "Precondition check failed.", "status": "FAILED_PRECONDITION"}}, False, "10 user-managed keys"),
])
def test_error_mapping(status, body, retryable, text):
    error = gcp.error_from_response("keys.create", status, json.dumps(body).encode())
    assert error.retryable is retryable and text in str(error)


def test_configuration_errors_never_quote_the_key():
    with pytest.raises(ValueError, match="lacks 'key.json'"):
        registry.build("g", "gcp-service-account-key", {"project": "p"}, {}, None)
    with pytest.raises(ValueError, match="is not a service-account JSON key") as info:
        registry.build("g", "gcp-service-account-key", {"project": "p"}, {"key.json": Sensitive(b'{"private_key": "SECRETPEM"')}, None)
    assert "SECRETPEM" not in str(info.value) and info.value.__cause__ is None


def test_issue_list_revoke_release_round_trip(fake, provider):
    issued = run(provider.issue(SCOPE, {}, 1))
    email = gcp.account_email(SCOPE.tag, fake.project)
    assert issued.expires_at is None
    assert provider.env() == {"GOOGLE_APPLICATION_CREDENTIALS": FileRef("key.json")}
    key_file = json.loads(issued.values["key.json"].reveal())
    assert key_file["client_email"] == email and key_file["private_key_id"] == issued.id
    private = serialization.load_pem_private_key(key_file["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    assert key_file["private_key"].startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8

    assert run(provider.list(SCOPE)) == [issued.id]  # the system-managed key is not ours
    assert len(fake.accounts[email].keys) == 2
    assert SCOPE.tag in run(provider.sweep())
    token = token_for(issued.values["key.json"].reveal())
    assert token.startswith("ya29.")
    info = requests.get(f"{fake.url}/tokeninfo", params={"access_token": token}, timeout=5).json()
    assert info["email"] == email

    run(provider.revoke(SCOPE, issued.id))
    run(provider.revoke(SCOPE, issued.id))  # idempotent
    assert token_for(issued.values["key.json"].reveal()) == "refused: invalid_grant: Invalid JWT Signature."
    assert run(provider.list(SCOPE)) == []
    run(provider.release(SCOPE))
    run(provider.release(SCOPE))
    assert email not in fake.accounts and SCOPE.tag not in run(provider.sweep())
    assert run(provider.list(SCOPE)) == []  # no account: nothing live
    assert fake.contract.violations.requests == []


def test_sweep_takes_only_accounts_this_operator_created(fake, provider):
    fake._new_account("wso-0123456789ab", "look-alike", "created by hand")  # the right shape, not our description
    fake._new_account("ci-deployer", "ci", "")
    scope = Scope.of("team-b", "bob-ws", "9a8b", "gcp")
    run(provider.issue(scope, {}, 1))
    assert run(provider.sweep()) == [scope.tag]
    for key_id in run(provider.list(scope)):
        run(provider.revoke(scope, key_id))
    run(provider.release(scope))


def test_the_ten_keys_limit_is_a_clear_permanent_error(fake, provider):
    scope = Scope.of("team-c", "carol-ws", "7c7c", "gcp")
    for generation in range(10):
        run(provider.issue(scope, {}, generation + 1))
    with pytest.raises(ProviderError) as info:
        run(provider.issue(scope, {}, 11))
    assert not info.value.retryable and "FAILED_PRECONDITION" in str(info.value) and "10 user-managed keys" in str(info.value)
    for key_id in run(provider.list(scope)):
        run(provider.revoke(scope, key_id))
    run(provider.release(scope))


def test_outages_are_retryable_and_a_refused_admin_key_is_not(fake, provider):
    run(provider.list(SCOPE))  # holds a token now (google-auth itself retries a failing token endpoint, slowly)
    fake.outage = True
    try:
        with pytest.raises(ProviderError) as info:
            run(provider.list(SCOPE))
        assert info.value.retryable
    finally:
        fake.outage = False
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = {**json.loads(fake.admin_key), "private_key": other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()}
    impostor = registry.build("gcp", "gcp-service-account-key", {"endpoint": fake.url, "project": fake.project},
                              {"key.json": Sensitive(json.dumps(forged))}, None)
    with pytest.raises(ProviderError) as info:
        run(impostor.list(SCOPE))
    assert "could not get a token" in str(info.value) and "Invalid JWT Signature" in str(info.value)
    assert "PRIVATE KEY" not in str(info.value) and not info.value.retryable
    with pytest.raises(ProviderError, match="not a service-account key id"):
        run(provider.revoke(SCOPE, "../../serviceAccounts/admin"))


def test_a_workspace_key_has_no_iam_rights(fake, provider):
    issued = run(provider.issue(SCOPE, {}, 1))
    token = token_for(issued.values["key.json"].reveal())
    response = requests.get(f"{fake.url}/v1/projects/{fake.project}/serviceAccounts", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert response.status_code == 403 and response.json()["error"]["status"] == "PERMISSION_DENIED"
    run(provider.revoke(SCOPE, issued.id))
    run(provider.release(SCOPE))


# --- the fake against the contract ------------------------------------------------------------------
def test_requests_outside_the_discovery_document_are_refused_and_recorded(fake):
    token = token_for(fake.admin_key)
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{fake.url}/v1/projects/{fake.project}/serviceAccounts"
    response = requests.post(base, json={"accountId": "wso-abcdefabcdef", "serviceAccount": {"labels": {"a": "b"}}}, headers=headers, timeout=5)
    assert response.status_code == 400 and response.json()["error"]["status"] == "INVALID_ARGUMENT"
    response = requests.get(f"{base}/x@y/keys", params={"keyTypes": "ALL"}, headers=headers, timeout=5)
    assert response.status_code == 400
    assert requests.get(f"{fake.url}/v2/projects/p/serviceAccounts", headers=headers, timeout=5).status_code == 404
    recorded = fake.contract.violations.requests
    assert any("labels" in v for v in recorded) and any("'ALL' not in" in v for v in recorded)
    fake.contract.violations.clear()


def test_responses_outside_the_discovery_document_are_recorded(fake):
    assert fake.contract.check_response("POST", "/v1/projects/p/serviceAccounts/x/keys", 200,
                                        {"name": "n", "privateKeyData": "not base64!", "keyType": "USER_MANAGED"})
    assert fake.contract.check_response("GET", "/v1/projects/p/serviceAccounts/x/keys", 200, {"keys": [{"name": "n", "secret": "x"}]})
    assert fake.contract.check_response("GET", "/v1/projects/p/serviceAccounts/x", 200, {"name": "n", "uniqueId": 5})
    assert fake.contract.check_response("GET", "/v1/projects/p/serviceAccounts/x/keys/k", 200,
                                        {"name": "n", "validAfterTime": "yesterday"})
    fake.contract.violations.clear()


def test_token_endpoint_refusals(fake):
    def post(form):
        return requests.post(f"{fake.url}/token", data=form, timeout=5)
    assert post({"grant_type": "password"}).json()["error"] == "unsupported_grant_type"
    assert post({"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": "a.b"}).json()["error"] == "invalid_request"
    info = json.loads(fake.admin_key)
    gone = {**info, "client_email": "nobody-at-all@wso-fake-project.iam.gserviceaccount.com"}
    assert token_for(json.dumps(gone).encode()) == "refused: invalid_grant: Invalid grant: account not found"


def test_the_orphan_sweep_revokes_keys_and_deletes_accounts_no_workspace_secret_accounts_for(fake, provider):
    from datetime import datetime, timezone

    from workspace_secrets.credentials.manager import CredentialManager, sweep_orphans

    kept, orphan = Scope.of("team-d", "alive", "1", "gcp"), Scope.of("team-d", "deleted", "2", "gcp")
    alive = run(provider.issue(kept, {}, 1))
    run(provider.issue(orphan, {}, 1))
    manager = CredentialManager({"gcp-dev": provider}, clock=lambda: datetime.now(timezone.utc))

    async def expected_tags():
        return {kept.tag}
    assert run(sweep_orphans(manager, expected_tags)) == [orphan.tag]
    assert gcp.account_email(orphan.tag, fake.project) not in fake.accounts
    assert run(provider.list(kept)) == [alive.id]
    run(provider.revoke(kept, alive.id))
    run(provider.release(kept))


@pytest.mark.parametrize("config, words", [
    ({"endpoint": "http://iam.corp.example"}, "config.endpoint: http://iam.corp.example is plain http"),
    ({"tokenURI": "http://10.0.0.5/token"}, "config.tokenURI: http://10.0.0.5 is plain http"),
])
def test_a_plain_http_endpoint_off_loopback_is_refused_in_the_configuration(fake, config, words):
    """The admin's bearer token (and the signed assertion it is got with) never in clear across the network."""
    with pytest.raises(ValueError, match=words):
        registry.build("gcp", "gcp-service-account-key", {"endpoint": fake.url, "project": fake.project, **config},
                       {"key.json": Sensitive(fake.admin_key)}, None)
    key = json.loads(fake.admin_key)
    key["token_uri"] = "http://oauth2.corp.example/token"
    with pytest.raises(ValueError, match="key.json's token_uri: http://oauth2.corp.example is plain http"):
        registry.build("gcp", "gcp-service-account-key", {"endpoint": fake.url, "project": fake.project},
                       {"key.json": Sensitive(json.dumps(key).encode())}, None)
