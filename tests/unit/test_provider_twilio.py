"""The Twilio API-key provider against the contract-checked fake of Twilio IAM v1 (tests/fakes/twilio.py),
and the fake's own contract checks."""

from __future__ import annotations

import asyncio
import json

import pytest
import requests
from fakes.twilio import FakeTwilio, Key

from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.credentials.providers import registry
from workspace_secrets.credentials.providers import twilio as tw
from workspace_secrets.credentials.providers.base import ProviderError, Scope

SCOPE = Scope.of("team-a", "alice-workspace-with-a-rather-long-name", "0d1e2f", "twilio")


@pytest.fixture
def fake():
    server = FakeTwilio().start()
    yield server
    server.stop()
    assert server.contract.violations.responses == [], "the fake answered outside Twilio's contract"


def make(fake: FakeTwilio, **config) -> tw.TwilioApiKeyProvider:
    admin = {"TWILIO_ACCOUNT_SID": Sensitive(fake.account_sid), "TWILIO_AUTH_TOKEN": Sensitive(fake.auth_token)}
    return registry.build("twilio", "twilio-api-key", {"baseURL": fake.url, **config}, admin, None)


def run(coro):
    return asyncio.run(coro)


def test_friendly_name_starts_with_the_tag_and_fits_twilios_limit():
    name = tw.friendly_name(SCOPE)
    assert name.startswith(f"{SCOPE.tag} team-a/") and len(name) <= 64
    assert tw.tag_of(name) == SCOPE.tag and tw.tag_of(SCOPE.tag) == SCOPE.tag
    assert tw.tag_of("wso-0123456789abX") is None and tw.tag_of("my key") is None and tw.tag_of(None) is None


def test_create_form_standard_and_restricted():
    assert tw.create_form("AC1", SCOPE, None) == {"AccountSid": "AC1", "FriendlyName": tw.friendly_name(SCOPE)}
    form = tw.create_form("AC1", SCOPE, {"allow": ["/twilio/messaging/messages/read"]})
    assert form["KeyType"] == "restricted" and json.loads(form["Policy"]) == {"allow": ["/twilio/messaging/messages/read"]}


@pytest.mark.parametrize("status, body, headers, retryable, text", [
    (429, b'{"code": 20429, "message": "Too Many Requests", "status": 429}', {"Retry-After": "3"}, True, "code 20429"),
    (503, b"<html>bad gateway</html>", {}, True, "HTTP 503"),
    (401, b'{"code": 20003, "message": "Authenticate", "status": 401}', {}, False, "TWILIO_AUTH_TOKEN were refused"),
    (400, b'{"code": 20001, "message": "Invalid parameter", "status": 400}', {}, False, "Invalid parameter"),
])
def test_error_mapping(status, body, headers, retryable, text):
    error = tw.error_from_response("CreateNewKey", status, body, headers)
    assert error.retryable is retryable and text in str(error)
    assert error.retry_after == (3.0 if "Retry-After" in headers else None)


def test_configuration_errors():
    with pytest.raises(ValueError, match="lacks 'TWILIO_AUTH_TOKEN'"):
        registry.build("t", "twilio-api-key", {}, {"TWILIO_ACCOUNT_SID": Sensitive("AC" + "0" * 32)}, None)
    with pytest.raises(ValueError, match="not an account SID") as info:
        registry.build("t", "twilio-api-key", {}, {"TWILIO_ACCOUNT_SID": Sensitive("token-in-wrong-field"),
                                                    "TWILIO_AUTH_TOKEN": Sensitive("x")}, None)
    assert "token-in-wrong-field" not in str(info.value)


def test_issue_list_revoke_round_trip_and_the_key_authenticates(fake):
    p = make(fake)
    issued = run(p.issue(SCOPE, {}, 1))
    values = {k: v.reveal_text() for k, v in issued.values.items()}
    assert values["TWILIO_API_KEY"] == issued.id and values["TWILIO_ACCOUNT_SID"] == fake.account_sid
    assert set(p.env()) == {"TWILIO_ACCOUNT_SID", "TWILIO_API_KEY", "TWILIO_API_SECRET"}
    assert fake.keys[issued.id].friendly_name == tw.friendly_name(SCOPE)
    assert run(p.list(SCOPE)) == [issued.id] and run(p.sweep()) == [SCOPE.tag]
    assert run(p.list(Scope.of("team-a", "other", "1", "twilio"))) == []

    assert fake.authenticates(issued.id, values["TWILIO_API_SECRET"]) == 200
    assert fake.authenticates(issued.id, "wrong-secret") == 401
    run(p.revoke(SCOPE, issued.id))
    run(p.revoke(SCOPE, issued.id))  # idempotent: 404 is "already revoked"
    assert fake.authenticates(issued.id, values["TWILIO_API_SECRET"]) == 401
    assert run(p.list(SCOPE)) == [] and run(p.sweep()) == []
    assert fake.contract.violations.requests == []


def test_listing_follows_every_page_against_the_configured_base_url(fake, monkeypatch):
    monkeypatch.setattr(tw, "PAGE_SIZE", 2)
    p = make(fake)
    ids = [run(p.issue(SCOPE, {}, n)).id for n in range(5)]
    foreign = Key("SK" + "f" * 32, fake.account_sid, "someone else's key", "s", -1, "Mon, 13 Jun 2016 22:50:08 +0000",
                  "Mon, 13 Jun 2016 22:50:08 +0000")
    fake.keys[foreign.sid] = foreign
    before = fake.requests
    assert run(p.list(SCOPE)) == sorted(ids)
    assert fake.requests - before == 3  # 6 keys, 2 per page
    assert fake.contract.violations.requests == []


def test_restricted_keys_carry_the_platform_policy(fake):
    p = make(fake, policy={"allow": ["/twilio/messaging/messages/read"]})
    issued = run(p.issue(SCOPE, {}, 1))
    assert fake.keys[issued.id].policy == {"allow": ["/twilio/messaging/messages/read"]}


def test_provider_errors_are_retryable_or_not_and_never_carry_secrets(fake):
    p = make(fake)
    fake.fail_next(429)
    with pytest.raises(ProviderError) as info:
        run(p.issue(SCOPE, {}, 1))
    assert info.value.retryable and info.value.retry_after == 1.0
    fake.outage = True
    with pytest.raises(ProviderError) as info:
        run(p.list(SCOPE))
    assert info.value.retryable and "HTTP 503" in str(info.value)
    fake.outage = False
    wrong = registry.build("t", "twilio-api-key", {"baseURL": fake.url},
                           {"TWILIO_ACCOUNT_SID": Sensitive(fake.account_sid), "TWILIO_AUTH_TOKEN": Sensitive("not-the-token")}, None)
    with pytest.raises(ProviderError) as info:
        run(wrong.issue(SCOPE, {}, 1))
    assert not info.value.retryable and "20003" in str(info.value)
    assert fake.auth_token not in str(info.value) and "not-the-token" not in str(info.value)
    unreachable = registry.build("t", "twilio-api-key", {"baseURL": "http://127.0.0.1:9"},
                                 {"TWILIO_ACCOUNT_SID": Sensitive(fake.account_sid), "TWILIO_AUTH_TOKEN": Sensitive(fake.auth_token)}, None)
    with pytest.raises(ProviderError) as info:
        run(unreachable.list(SCOPE))
    assert info.value.retryable and fake.auth_token not in str(info.value)
    with pytest.raises(ProviderError, match="not a Twilio key SID"):
        run(p.revoke(SCOPE, "../Accounts"))


# --- the fake against the contract ------------------------------------------------------------------
def test_standard_keys_cannot_manage_keys_as_on_twilio(fake):
    issued = run(make(fake).issue(SCOPE, {}, 1))
    secret = issued.values["TWILIO_API_SECRET"].reveal_text()
    response = requests.get(f"{fake.url}/v1/Keys", params={"AccountSid": fake.account_sid}, auth=(issued.id, secret), timeout=5)
    assert response.status_code == 401 and response.json()["code"] == 20003


def test_requests_outside_the_contract_are_refused_and_recorded(fake):
    auth = (fake.account_sid, fake.auth_token)
    response = requests.post(f"{fake.url}/v1/Keys", data={"AccountSid": "not-an-account-sid", "FriendlyName": "x"}, auth=auth, timeout=5)
    assert response.status_code == 400 and response.json()["code"] == 20001
    response = requests.get(f"{fake.url}/v1/Keys", params={"AccountSid": fake.account_sid, "Limit": "5"}, auth=auth, timeout=5)
    assert response.status_code == 400
    recorded = fake.contract.violations.requests
    assert any("POST /v1/Keys: form AccountSid" in v and "does not match" in v for v in recorded)
    assert any("GET /v1/Keys: query parameter Limit is not in the contract" in v for v in recorded)
    fake.contract.violations.clear()


def test_responses_outside_the_contract_are_recorded(fake, monkeypatch):
    original = Key.view
    monkeypatch.setattr(Key, "view", lambda self: {**original(self), "secret_hint": "abc"})
    run(make(fake).issue(SCOPE, {}, 1))
    assert any("secret_hint" in v for v in fake.contract.violations.responses)
    monkeypatch.setattr(Key, "view", lambda self: {**original(self), "date_created": "yesterday"})
    run(make(fake).issue(SCOPE, {}, 2))
    assert any("date-time-rfc-2822" in v for v in fake.contract.violations.responses)
    fake.contract.violations.clear()


def test_the_orphan_sweep_revokes_keys_no_workspace_secret_accounts_for(fake):
    from datetime import datetime, timezone

    from workspace_secrets.credentials.manager import CredentialManager, sweep_orphans

    p = make(fake)
    kept, orphan = Scope.of("team-a", "alive", "1", "twilio"), Scope.of("team-a", "deleted", "2", "twilio")
    alive = run(p.issue(kept, {}, 1))
    run(p.issue(orphan, {}, 1))
    manager = CredentialManager({"twilio-dev": p}, clock=lambda: datetime.now(timezone.utc))

    async def expected_tags():
        return {kept.tag}
    assert run(sweep_orphans(manager, expected_tags)) == [orphan.tag]
    assert run(p.list(orphan)) == [] and run(p.list(kept)) == [alive.id]


@pytest.mark.parametrize("base_url", ["http://iam.twilio.example", "http://10.0.0.5:8080", "ftp://iam.twilio.example"])
def test_a_plain_http_base_url_off_loopback_is_refused_in_the_configuration(base_url):
    """The master auth token goes in every request's Basic auth: never in clear across the network or a proxy."""
    admin = {"TWILIO_ACCOUNT_SID": Sensitive("AC" + "0" * 32), "TWILIO_AUTH_TOKEN": Sensitive("twilio-master-token")}
    with pytest.raises(ValueError, match="config.baseURL: .*(plain http|not an https URL)") as caught:
        registry.build("t", "twilio-api-key", {"baseURL": base_url}, admin, None)
    assert "twilio-master-token" not in str(caught.value)
    # Loopback (the test fakes, a local development stub) stays allowed; https is the default.
    registry.build("t", "twilio-api-key", {"baseURL": "http://127.0.0.1:9"}, admin, None)
    registry.build("t", "twilio-api-key", {}, admin, None)
