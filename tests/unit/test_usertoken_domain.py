"""Pure UserToken decisions: PKCE, signed values, single-use state, the phase machine, the refresh and
validation schedule, the token Secret and its git-credentials line, the connect link."""

from __future__ import annotations

import base64
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from workspace_secrets.api import constants as c
from workspace_secrets.api.usertoken import UserToken
from workspace_secrets.api.workspacesecret import SpecError
from workspace_secrets.domain import usertoken as policy
from workspace_secrets.domain.oauth import (PendingAuthorization, PendingAuthorizations, StateRejected, TokenSet, pkce_challenge,
                                            pkce_verifier)
from workspace_secrets.domain.sensitive import Sensitive
from workspace_secrets.domain.signing import BadSignature, Expired, Signer
from workspace_secrets.domain.usertoken import Event, Phase

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
SIGNER = Signer(Sensitive(b"k" * 32))


def body(**spec) -> dict:
    return {"metadata": {"namespace": "ns", "name": "alice-gh", "uid": "uid-1", "generation": 1},
            "spec": {"user": "alice", "type": "github", "clientSecretRef": {"name": "gh-app"}, **spec}}


# --- PKCE and signing ------------------------------------------------------------------------------
def test_pkce_s256_matches_rfc7636_appendix_b():
    assert pkce_challenge(Sensitive("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk")) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    verifier = pkce_verifier().reveal_text()
    assert 43 <= len(verifier) <= 128 and pkce_verifier().reveal_text() != verifier


def test_signed_values_are_bound_to_purpose_key_and_time():
    token = SIGNER.sign("link", {"user": "alice"}, expires=NOW + timedelta(minutes=5))
    assert SIGNER.verify("link", token, now=NOW)["user"] == "alice"
    with pytest.raises(BadSignature):
        SIGNER.verify("session", token, now=NOW)  # another purpose
    with pytest.raises(BadSignature):
        Signer(Sensitive(b"x" * 32)).verify("link", token, now=NOW)  # another key
    body_, mac = token.split(".")
    forged = base64.urlsafe_b64encode(base64.urlsafe_b64decode(body_ + "==").replace(b"alice", b"bobby")).rstrip(b"=").decode()
    with pytest.raises(BadSignature):
        SIGNER.verify("link", f"{forged}.{mac}", now=NOW)
    with pytest.raises(Expired):
        SIGNER.verify("link", token, now=NOW + timedelta(minutes=6))
    with pytest.raises(ValueError):
        Signer(Sensitive(b"short"))


# --- state ------------------------------------------------------------------------------------------
def pending(store: PendingAuthorizations, uid: str = "uid-1") -> str:
    state = store.new_state(uid=uid, now=NOW)
    store.put(state, PendingAuthorization("ns", "alice-gh", uid, "alice", Sensitive("v"), "https://ops/cb", NOW + store.ttl))
    return state


def test_state_is_single_use():
    store = PendingAuthorizations(SIGNER)
    state = pending(store)
    assert store.take(state, now=NOW).uid == "uid-1"
    with pytest.raises(StateRejected) as replay:
        store.take(state, now=NOW)
    assert replay.value.reason == "UnknownState"


def test_state_expires_and_forgeries_are_told_apart():
    store = PendingAuthorizations(SIGNER, ttl=timedelta(minutes=10))
    state = pending(store)
    with pytest.raises(StateRejected) as late:
        store.take(state, now=NOW + timedelta(minutes=11))
    assert late.value.reason == "ExpiredState" and len(store) == 0
    with pytest.raises(StateRejected) as forged:
        store.take("abc." + "x" * 43, now=NOW)
    assert forged.value.reason == "ForgedState"
    other = Signer(Sensitive(b"o" * 32)).sign("oauth-state", {"n": "1", "u": "uid-1"}, expires=NOW + timedelta(minutes=1))
    with pytest.raises(StateRejected):
        store.take(other, now=NOW)


def test_state_store_is_bounded():
    store = PendingAuthorizations(SIGNER, max_entries=3)
    states = [pending(store, uid=f"u{i}") for i in range(5)]
    assert len(store) == 3
    with pytest.raises(StateRejected):
        store.take(states[0], now=NOW)
    assert store.take(states[4], now=NOW).uid == "u4"


# --- phases -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("current,event,expected", [
    (None, Event.NO_TOKEN, Phase.AWAITING_AUTHORIZATION),
    (Phase.AWAITING_AUTHORIZATION, Event.CONNECTED, Phase.VALID),
    (Phase.VALID, Event.REFRESH_STARTED, Phase.REFRESHING),
    (Phase.REFRESHING, Event.REFRESHED, Phase.VALID),
    (Phase.REFRESHING, Event.REFRESH_REJECTED, Phase.EXPIRED),
    (Phase.REFRESHING, Event.TEMPORARY_FAILURE, Phase.VALID),
    (Phase.EXPIRED, Event.NO_TOKEN, Phase.EXPIRED),
    (Phase.REVOKED, Event.NO_TOKEN, Phase.REVOKED),
    (Phase.EXPIRED, Event.CONNECTED, Phase.VALID),
    (Phase.VALID, Event.TOKEN_REJECTED, Phase.REVOKED),
    (Phase.VALID, Event.LAPSED, Phase.EXPIRED),
    (Phase.VALID, Event.CONFIG_ERROR, Phase.ERROR),
    (Phase.ERROR, Event.VALIDATED, Phase.VALID),
    (Phase.EXPIRED, Event.VALIDATED, Phase.EXPIRED),
])
def test_phase_transitions(current, event, expected):
    assert policy.next_phase(current, event) is expected


def test_authorization_is_offered_only_when_the_user_must_act():
    assert policy.needs_authorization(None) and policy.needs_authorization(Phase.EXPIRED)
    assert not policy.needs_authorization(Phase.VALID) and not policy.needs_authorization(Phase.REFRESHING)


# --- schedule ---------------------------------------------------------------------------------------
def test_refresh_is_ahead_of_expiry_and_jittered_per_token():
    issued, expires = NOW, NOW + timedelta(hours=8)
    times = [policy.refresh_at(issued, expires, f"uid-{i}") for i in range(50)]
    assert all(issued + timedelta(hours=8) * 0.65 <= t <= issued + timedelta(hours=6) for t in times)
    assert len(set(times)) > 40  # spread out
    assert policy.refresh_at(issued, expires, "uid-1") == policy.refresh_at(issued, expires, "uid-1")  # stable


def test_short_lived_tokens_still_refresh_before_expiry():
    expires = NOW + timedelta(seconds=8)
    due = policy.refresh_at(NOW, expires, "uid")
    assert NOW <= due <= expires - timedelta(seconds=2)
    assert policy.refresh_at(NOW, NOW, "uid") <= NOW  # already expired: due now


def test_overdue_refreshes_after_a_restart_are_spread():
    due, expires = NOW - timedelta(minutes=5), NOW + timedelta(hours=1)
    delays = {policy.refresh_delay(NOW, due, expires, f"u{i}", just_started=True) for i in range(20)}
    assert all(0 <= d < 30 for d in delays) and len(delays) > 15
    assert policy.refresh_delay(NOW, due, expires, "u1", just_started=False) == 0
    assert policy.refresh_delay(NOW, NOW + timedelta(seconds=90), expires, "u1", just_started=True) == 90
    # Close to expiry the spread shrinks to half the remaining lifetime.
    assert policy.refresh_delay(NOW, due, NOW + timedelta(seconds=4), "u1", just_started=True) <= 2


def test_validation_schedule():
    schedule = policy.Schedule(validate_interval=timedelta(minutes=30))
    assert policy.validation_due(None, NOW, "u") == NOW
    due = policy.validation_due(NOW, NOW, "u", schedule)
    assert NOW + timedelta(minutes=27) <= due <= NOW + timedelta(minutes=30)


# --- spec, Secret, link -----------------------------------------------------------------------------
def test_spec_parsing_and_errors_name_the_field():
    ut = UserToken.from_body(body(scopes=["repo"], addSSHKey=True))
    assert (ut.secret_name, ut.provider_key, ut.add_ssh_key) == ("alice-gh-token", ("ns", "alice", "github", ""), True)
    with pytest.raises(SpecError, match="spec.host"):
        UserToken.from_body(body(type="gitlab-self-managed"))
    with pytest.raises(SpecError, match="spec.host"):
        UserToken.from_body(body(host="http://git.example.com"))
    with pytest.raises(SpecError, match="spec.addSSHKey"):
        UserToken.from_body(body(type="oidc", host="https://idp", addSSHKey=True))
    assert UserToken.from_body(body(host="http://127.0.0.1:8080/")).host == "http://127.0.0.1:8080"


def test_token_secret_carries_tokens_and_a_git_credentials_line_that_git_reads(tmp_path):
    ut = UserToken.from_body(body())
    tokens = TokenSet(Sensitive("gh+u/x=y"), Sensitive("ghr_1"), expires_at=NOW + timedelta(hours=8), scopes=("repo",))
    secret = policy.desired_token_secret(ut, tokens, issued_at=NOW, generation="g1",
                                         git=policy.GitAccess("x-access-token", "https://github.com"))
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data[c.KEY_TOKEN] == b"gh+u/x=y" and data[c.KEY_REFRESH_TOKEN] == b"ghr_1"
    assert data[c.KEY_GIT_CREDENTIALS] == b"https://x-access-token:gh%2Bu%2Fx%3Dy@github.com\n"
    assert secret["metadata"]["labels"][c.LABEL_MANAGED_BY] == c.OPERATOR_NAME
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert not any(b"gh+u" in str(v).encode() for v in secret["metadata"].values())
    # git decodes the percent-encoded password back to the token.
    store = tmp_path / "creds"
    store.write_bytes(data[c.KEY_GIT_CREDENTIALS])
    out = subprocess.run(["git", "-c", f"credential.helper=store --file={store}", "credential", "fill"], input="protocol=https\nhost=github.com\n\n",
                         capture_output=True, text=True, env={"HOME": str(tmp_path), "GIT_TERMINAL_PROMPT": "0", "PATH": "/usr/bin:/bin"})
    assert "username=x-access-token" in out.stdout and "password=gh+u/x=y" in out.stdout
    stored = policy.read_token_secret(secret)
    assert stored.tokens.access_token == tokens.access_token and stored.tokens.expires_at == tokens.expires_at
    assert stored.issued_at == NOW and stored.tokens.scopes == ("repo",) and stored.generation == "g1"


def test_connect_link_is_signed_for_the_token_and_renewed_in_time():
    ut = UserToken.from_body(body())
    ttl = timedelta(hours=1)
    link = policy.connect_link("https://ops.example.com/", ut, SIGNER, expires=NOW + ttl)
    assert link.startswith("https://ops.example.com/connect/ns/alice-gh?t=")
    status = {"authorizationURL": link, "authorizationURLExpiresAt": policy.format_time(NOW + ttl)}
    assert not policy.link_needs_renewal(status, ut, SIGNER, "https://ops.example.com", NOW, ttl)
    assert policy.link_needs_renewal(status, ut, SIGNER, "https://ops.example.com", NOW + timedelta(minutes=31), ttl)
    assert policy.link_needs_renewal(status, ut, Signer(Sensitive(b"n" * 32)), "https://ops.example.com", NOW, ttl)  # new key
    assert policy.link_needs_renewal(status, ut, SIGNER, "https://elsewhere", NOW, ttl)
    assert policy.connect_link("https://ops.example.com", ut, SIGNER, expires=NOW + ttl) != link  # fresh each time


def test_conditions_say_what_to_do():
    ut = UserToken.from_body(body())
    awaiting = policy.conditions(ut, Phase.AWAITING_AUTHORIZATION, login=None, problem=None, ssh=None)
    assert [x.type for x in awaiting] == ["Ready", "Authorized"] and "authorizationURL" in awaiting[0].message
    valid = policy.conditions(ut, Phase.VALID, login="octo", problem=None, ssh=None)
    assert valid[0].status and "'octo'" in valid[0].message
    error = policy.conditions(ut, Phase.ERROR, login=None, problem=policy.Problem("ClientSecretNotFound", "spec.clientSecretRef: ..."), ssh=None)
    assert error[0].reason == "ClientSecretNotFound"
