"""Pure UserToken decisions: PKCE, signed values, single-use state, the phase machine, the refresh and
validation schedule, the token Secret and its git-credentials line, the connect link."""

from __future__ import annotations

import base64
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from workspace_secrets.api import constants as c
from workspace_secrets.api.oauth_application import OAuthApplication
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.api.workspace_secret import SpecError
from workspace_secrets.oauth import token_secret
from workspace_secrets.user_token import policy
from workspace_secrets.oauth.protocol import (PendingAuthorization, PendingAuthorizations, StateRejected, TokenSet,
                                              pkce_challenge, pkce_verifier)
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.signing import BadSignature, Expired, Signer
from workspace_secrets.user_token.policy import Event, Phase
from workspace_secrets.user_keys.policy import is_operator_user_key

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
SIGNER = Signer(Sensitive(b"k" * 32))


def body(**spec) -> dict:
    return {"metadata": {"namespace": "ns", "name": "alice-gh", "uid": "uid-1", "generation": 1},
            "spec": {"user": "alice", "application": "gh", **spec}}


def app(**spec) -> OAuthApplication:
    return OAuthApplication.from_body({"metadata": {"name": "gh", "resourceVersion": "7"},
                                       "spec": {"type": "github", "clientSecretRef": {"name": "gh-app"}, "allowedNamespaces": ["*"], **spec}})


def bound(**spec) -> UserToken:
    return UserToken.from_body(body(**spec)).bind(app())


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


def test_short_lived_tokens_refresh_before_expiry_but_never_in_a_loop():
    expires = NOW + timedelta(minutes=5)
    due = policy.refresh_at(NOW, expires, "uid")
    assert NOW + timedelta(minutes=3) <= due <= expires - timedelta(seconds=5)
    # However short a lifetime the provider claims, two refreshes of one token are a minute apart at least.
    assert policy.refresh_at(NOW, NOW + timedelta(seconds=1), "uid") == NOW + timedelta(seconds=60)
    assert policy.refresh_at(NOW, NOW + timedelta(seconds=70), "uid") == NOW + timedelta(seconds=60)
    long_ago = NOW - timedelta(hours=2)
    assert policy.refresh_at(long_ago, long_ago, "uid") <= NOW  # issued long ago and expired: due now


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


# --- spec, application, Secret, link ------------------------------------------------------------------
def test_spec_parsing_and_errors_name_the_field():
    ut = UserToken.from_body(body(addSSHKey=True))
    assert (ut.secret_name, ut.provider_key, ut.add_ssh_key, ut.application) == ("alice-gh-token", ("ns", "alice", "gh"), True, "gh")
    with pytest.raises(SpecError, match="spec.application"):
        UserToken.from_body(body(application=None))
    with pytest.raises(RuntimeError):
        ut.type  # noqa: B018 - the provider's settings exist only once bound to the application
    bound_ut = ut.bind(app())
    assert (bound_ut.type, bound_ut.host, bound_ut.client_secret_ref.name) == ("github", None, "gh-app")
    oidc = OAuthApplication.from_body({"metadata": {"name": "idp"}, "spec": {
        "type": "oidc", "host": "https://idp/", "clientSecretRef": {"name": "x"}, "allowedNamespaces": ["*"]}})
    with pytest.raises(SpecError, match="spec.addSSHKey"):
        ut.bind(oidc)
    with pytest.raises(SpecError, match="spec.flow"):
        UserToken.from_body(body(flow="Device")).bind(app(type="bitbucket-cloud"))
    assert oidc.host == "https://idp"


@pytest.mark.parametrize("field", ["type", "host", "clientSecretRef", "vault", "scopes"])
def test_removed_fields_are_refused_with_the_migration(field):
    with pytest.raises(SpecError) as refused:
        UserToken.from_body(body(**{field: {"name": "bobs-key"} if field == "clientSecretRef" else "x"}))
    assert refused.value.field == f"spec.{field}" and "spec.application" in str(refused.value)


def test_applications_allow_namespaces_by_glob_and_deny_by_default():
    assert app(allowedNamespaces=["*"]).allows("anything")
    team = app(allowedNamespaces=["team-*", "ops"])
    assert team.allows("team-a") and team.allows("ops")
    assert not team.allows("teams") and not team.allows("ops-2") and not team.allows("other")
    assert not app(allowedNamespaces=[]).allows("ops")
    with pytest.raises(SpecError, match="allowedNamespaces"):
        OAuthApplication.from_body({"metadata": {"name": "x"}, "spec": {"type": "github", "clientSecretRef": {"name": "s"}}})
    with pytest.raises(SpecError, match="spec.host"):
        app(type="oidc", host="http://10.0.0.1")  # plain http only for loopback
    with pytest.raises(SpecError, match="spec.host"):
        app(type="gitlab-self-managed")
    assert app().display_host == "https://github.com" and app(host="https://ghe.example.com").display_host == "https://ghe.example.com"


def test_only_the_operators_own_key_secret_is_the_users_key():
    name = "ssh-alice-ed25519-0123abcd"
    mine = {"metadata": {"name": name, "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY,
                                                  c.LABEL_USER: "alice"}}}
    assert is_operator_user_key(mine, "alice", name)
    assert not is_operator_user_key(mine, "bob", name)  # another user's
    assert not is_operator_user_key(mine, "alice", "ssh-alice-ed25519-ffffffff")  # not at the derived name
    owned = {"metadata": {**mine["metadata"], "ownerReferences": [{"kind": "WorkspaceSecret", "name": "squat", "uid": "u"}]}}
    assert not is_operator_user_key(owned, "alice", name)  # a WorkspaceSecret's Secret made at the name
    for label in (c.LABEL_MANAGED_BY, c.LABEL_COMPONENT, c.LABEL_USER):
        labels = {k: v for k, v in mine["metadata"]["labels"].items() if k != label}
        assert not is_operator_user_key({"metadata": {"name": name, "labels": labels}}, "alice", name)


def test_token_secret_carries_tokens_and_a_git_credentials_line_that_git_reads(tmp_path):
    ut = bound()
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
    stored = token_secret.read_token_secret(secret)
    assert stored.tokens.access_token == tokens.access_token and stored.tokens.expires_at == tokens.expires_at
    assert stored.issued_at == NOW and stored.tokens.scopes == ("repo",) and stored.generation == "g1"


def test_the_connect_link_is_a_plain_link_to_the_page():
    ut = bound()
    link = policy.connect_page_link("https://ops.example.com/", ut)
    assert link == "https://ops.example.com/accounts?focus=ns/alice-gh"
    assert policy.connect_page_link("https://ops.example.com", ut) == link  # nothing secret, nothing that expires


def test_flow_cookie_binding():
    from workspace_secrets.oauth.protocol import browser_binding, flow_nonce, same_browser

    nonce = flow_nonce()
    record = PendingAuthorization("ns", "alice-gh", "uid-1", "alice", Sensitive("v"), "https://ops/cb", NOW, browser=browser_binding(nonce))
    assert nonce not in record.browser and len(nonce) >= 40
    assert same_browser(record, nonce)
    assert not same_browser(record, flow_nonce()) and not same_browser(record, None) and not same_browser(record, "")
    unbound = PendingAuthorization("ns", "alice-gh", "uid-1", "alice", Sensitive("v"), "https://ops/cb", NOW)
    assert not same_browser(unbound, nonce)


def test_conditions_say_what_to_do():
    ut = bound()
    awaiting = policy.conditions(ut, Phase.AWAITING_AUTHORIZATION, login=None, problem=None, ssh=None)
    assert [x.type for x in awaiting] == ["Ready", "Authorized"] and "authorizationURL" in awaiting[0].message
    valid = policy.conditions(ut, Phase.VALID, login="octo", problem=None, ssh=None)
    assert valid[0].status and "'octo'" in valid[0].message
    error = policy.conditions(ut, Phase.ERROR, login=None, problem=policy.Problem("ApplicationNotFound", "OAuthApplication ..."), ssh=None)
    assert error[0].reason == "ApplicationNotFound"
