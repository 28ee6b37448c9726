"""UserToken on the real control plane with the real operator, against a real OAuth 2.0 authorization
server (panva's oidc-provider, tests/e2e/oauth_server) for the generic flows: connect (authorization code
+ PKCE), refresh ahead of expiry with rotating refresh tokens, revocation, replayed and forged state,
who may use the connect page, and no token bytes anywhere but the Secret.

The OAuth applications are the platform's: the test, as the admin, creates OAuthApplications and their client
Secrets in the operator's namespace; UserTokens only name them. Users reach the connect page through the
platform's auth proxy (BrowserSession), never with a link."""

from __future__ import annotations

import re
import threading

import pytest
import requests
from backends import ADMIN_NAMESPACE
from helpers import Api, digest, wait_for
from metrics_text import metric
from user_token_support import (BrowserSession, OIDCServer, approve_device_code, create_application, delete_application,
                               device_code_on_page, get_token, via_proxy)

from workspace_secrets.api import constants as c

CLIENT_SECRET = "wso-e2e-client-secret-0123456789abcdef"


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture(scope="module")
def oidc(wso_operator, tmp_path_factory):
    redirect = f"{wso_operator.process.connect_url}/oauth/callback"
    clients = [
        {"client_id": client_id, "client_secret": CLIENT_SECRET, "redirect_uris": [redirect],
         "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}
        for client_id in ("wso", "short-wso", "wso-revoke")
    ] + [{"client_id": "device-wso", "client_secret": CLIENT_SECRET, "redirect_uris": [], "response_types": [],
          "grant_types": ["urn:ietf:params:oauth:grant-type:device_code", "refresh_token"]}]
    # short-wso's tokens live 90 s: the operator floors a token's lifetime at 60 s and never refreshes one
    # token twice within 60 s (no refresh loop whatever a provider answers), so shorter would test the floor.
    server = OIDCServer(clients, tmp_path_factory.mktemp("oidc"), short_ttl=90).start()
    yield server
    server.stop()


@pytest.fixture
def applications(api, namespace):
    """Make OAuthApplications the platform's way (allowed in this test's namespace by default); deleted after."""
    made: list[str] = []

    def make(client_id: str | None, spec: dict, *, allowed: list[str] | None = None, secret: str | None = CLIENT_SECRET) -> str:
        name = f"{namespace}-{spec['type']}-{len(made)}"
        create_application(api, name, {**spec, "allowedNamespaces": allowed or [namespace]}, operator_namespace=ADMIN_NAMESPACE,
                           client_id=client_id, client_secret=secret)
        made.append(name)
        return name

    yield make
    for name in made:
        delete_application(api, name, operator_namespace=ADMIN_NAMESPACE)


def create_token(api: Api, namespace: str, name: str, spec: dict) -> dict:
    body = {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "metadata": {"name": name}, "spec": spec}
    return api.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, body)


def wait_phase(api: Api, namespace: str, name: str, phase: str, timeout: float = 30) -> dict:
    def probe():
        ut = get_token(api, namespace, name) or {}
        return ut if (ut.get("status") or {}).get("phase") == phase else None
    return wait_for(probe, timeout=timeout, what=f"{name} phase {phase}")


def oidc_app(applications, oidc: OIDCServer, client_id: str) -> str:
    return applications(client_id, {"type": "oidc", "host": oidc.issuer})


def ut_spec(application: str, user: str = "alice", **extra) -> dict:
    return {"user": user, "application": application, **extra}


def page_link(wso_operator, namespace: str, name: str) -> str:
    return f"{wso_operator.process.connect_url}/accounts?focus={namespace}/{name}"


def connect(api, wso_operator, namespace: str, name: str, login: str = "alice", user: str = "alice") -> dict:
    ut = wait_phase(api, namespace, name, c.PHASE_AWAITING_AUTHORIZATION)
    link = ut["status"]["authorizationURL"]
    assert link == page_link(wso_operator, namespace, name)
    browser = BrowserSession.of(wso_operator.process, user)
    result = browser.connect(link, namespace, name, login=login)
    assert result.status_code == 200 and "data-ok='true'" in result.text, result.text[-500:]
    return wait_phase(api, namespace, name, c.PHASE_VALID)


def token_values(api: Api, namespace: str, secret: str) -> dict[str, bytes]:
    return api.secret_data(namespace, secret) or {}


def test_connect_gives_a_valid_token_in_a_secret(api, namespace, wso_operator, oidc, applications):
    create_token(api, namespace, "alice-oidc", ut_spec(oidc_app(applications, oidc, "wso")))
    ut = wait_phase(api, namespace, "alice-oidc", c.PHASE_AWAITING_AUTHORIZATION)
    status = ut["status"]
    assert status["authorizationURL"] == page_link(wso_operator, namespace, "alice-oidc")  # a plain link, no credential
    assert (status["type"], status["host"]) == ("oidc", oidc.issuer) and "userCode" not in status
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "AwaitingAuthorization" and "authorizationURL" in ready["message"]

    ut = connect(api, wso_operator, namespace, "alice-oidc")
    status = ut["status"]
    assert status["login"] == "alice" and status["secretName"] == "alice-oidc-token"
    assert "authorizationURL" not in status and status["expiresAt"] and status["nextRefreshAt"]
    assert {"openid", "offline_access"} <= set(status["scopes"])
    secret = api.get_secret(namespace, "alice-oidc-token")
    assert secret.metadata.labels[c.LABEL_MANAGED_BY] == c.OPERATOR_NAME
    assert [o.uid for o in secret.metadata.owner_references] == [ut["metadata"]["uid"]]
    data = token_values(api, namespace, "alice-oidc-token")
    assert {c.KEY_TOKEN, c.KEY_REFRESH_TOKEN, c.KEY_EXPIRES_AT, c.KEY_TOKEN_TYPE} <= set(data)
    # The token works at the provider: its userinfo endpoint knows alice.
    me = requests.get(f"{oidc.issuer}/me", headers={"Authorization": b"Bearer " + data[c.KEY_TOKEN]}, timeout=10)
    assert me.status_code == 200 and me.json()["sub"] == "alice"
    reasons = {e.reason for e in api.core.list_namespaced_event(namespace).items}
    assert "Connected" in reasons
    # The connect page shows it as Valid, for alice only.
    status_code, page = via_proxy(f"{wso_operator.process.connect_url}/accounts", user="alice",
                                  header=wso_operator.process.connect_user_header, source=wso_operator.process.connect_trusted_proxy)
    assert status_code == 200 and "alice-oidc" in page and "data-phase='Valid'" in page
    status_code, page = via_proxy(f"{wso_operator.process.connect_url}/accounts", user="bob",
                                  header=wso_operator.process.connect_user_header, source=wso_operator.process.connect_trusted_proxy)
    assert status_code == 200 and "alice-oidc" not in page
    assert_no_token_leaks(api, namespace, wso_operator, [data[c.KEY_TOKEN], data[c.KEY_REFRESH_TOKEN], CLIENT_SECRET.encode()])


def refresh_events(oidc: OIDCServer, client_id: str) -> tuple[int, int]:
    """(successful refreshes, failed refreshes) the authorization server saw for this client."""
    events = [e for e in oidc.events() if e.get("client_id") == client_id and e.get("grant_type") == "refresh_token"]
    return sum(e["kind"] == "grant.success" for e in events), sum(e["kind"] == "grant.error" for e in events)


def test_refresh_ahead_of_expiry_exactly_once_under_concurrent_triggers(api, namespace, wso_operator, oidc, applications):
    """Access tokens of client short-wso live 90 s; refresh tokens rotate and are single-use (oidc-provider
    revokes the whole grant when a spent refresh token is presented again)."""
    from datetime import datetime

    create_token(api, namespace, "short", ut_spec(oidc_app(applications, oidc, "short-wso")))
    ut = connect(api, wso_operator, namespace, "short")
    first = api.secret_digests(namespace, "short-token")
    first_expiry = datetime.fromisoformat(ut["status"]["expiresAt"].replace("Z", "+00:00"))
    planned = datetime.fromisoformat(ut["status"]["nextRefreshAt"].replace("Z", "+00:00"))
    assert planned < first_expiry

    # Refreshed before it lapses, once.
    wait_for(lambda: api.secret_digests(namespace, "short-token")[c.KEY_TOKEN] != first[c.KEY_TOKEN], timeout=95,
             interval=0.5, what="the token refreshed")
    status = wait_phase(api, namespace, "short", c.PHASE_VALID)["status"]
    refreshed_at = datetime.fromisoformat(status["lastRefreshTime"].replace("Z", "+00:00"))
    assert refreshed_at < first_expiry, (refreshed_at, first_expiry)
    assert api.secret_digests(namespace, "short-token")[c.KEY_REFRESH_TOKEN] != first[c.KEY_REFRESH_TOKEN]  # rotated
    assert refresh_events(oidc, "short-wso") == (1, 0)
    assert "TokenRefreshed" in {e.reason for e in api.core.list_namespaced_event(namespace).items}

    # Concurrent triggers for the next refresh: the operator restarts after the refresh fell due (kopf's
    # resume handler and the token's daemon both run), while validation requests arrive from two threads.
    second = api.secret_digests(namespace, "short-token")
    due = datetime.fromisoformat(status["nextRefreshAt"].replace("Z", "+00:00"))
    wso_operator.process.stop()
    try:
        wait_for(lambda: datetime.now(due.tzinfo) > due, timeout=90, interval=0.2, what="the next refresh to fall due")
    finally:
        wso_operator.process.start()

    def poke(value: str) -> None:
        api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "short",
                                                  {"metadata": {"annotations": {c.ANNOTATION_VALIDATE_TOKEN: value}}})

    threads = [threading.Thread(target=poke, args=(str(i),)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: api.secret_digests(namespace, "short-token")[c.KEY_TOKEN] != second[c.KEY_TOKEN], timeout=30,
             interval=0.5, what="the second refresh")
    wait_phase(api, namespace, "short", c.PHASE_VALID)
    # Exactly one refresh per rotation, and no spent refresh token ever presented again (which the
    # server would have answered with invalid_grant and a revoked grant).
    assert refresh_events(oidc, "short-wso") == (2, 0)
    data = token_values(api, namespace, "short-token")
    me = requests.get(f"{oidc.issuer}/me", headers={"Authorization": b"Bearer " + data[c.KEY_TOKEN]}, timeout=10)
    assert me.status_code == 200
    assert_no_token_leaks(api, namespace, wso_operator, [data[c.KEY_TOKEN], data[c.KEY_REFRESH_TOKEN]])


def test_revoked_refresh_token_expires_the_token_and_shows_the_connect_link(api, namespace, wso_operator, oidc, applications):
    before = wso_operator.process.metrics()
    create_token(api, namespace, "rev", ut_spec(oidc_app(applications, oidc, "wso-revoke")))
    wait_phase(api, namespace, "rev", c.PHASE_AWAITING_AUTHORIZATION)
    connect(api, wso_operator, namespace, "rev")
    data = token_values(api, namespace, "rev-token")
    # The user revokes the grant at the provider (RFC 7009 revocation of the refresh token).
    oidc.revoke("wso-revoke", CLIENT_SECRET, data[c.KEY_REFRESH_TOKEN].decode())
    api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "rev",
                                              {"metadata": {"annotations": {c.ANNOTATION_REFRESH_TOKEN: "after-revocation"}}})
    status = wait_phase(api, namespace, "rev", c.PHASE_EXPIRED)["status"]
    assert status["authorizationURL"] == page_link(wso_operator, namespace, "rev")
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    assert ready["reason"] == "Expired" and "reconnect" in ready["message"]
    assert status["refreshRequest"] == "after-revocation"
    assert c.KEY_TOKEN not in token_values(api, namespace, "rev-token")  # the dead token is dropped from the Secret
    warnings = {e.reason for e in api.core.list_namespaced_event(namespace).items if e.type == "Warning"}
    assert "TokenExpired" in warnings
    assert refresh_events(oidc, "wso-revoke") == (0, 1)
    # /metrics: the rejected refresh by the application's type and a stable reason; the passes by result.
    expired = wso_operator.process.metrics()

    def moved(name: str, **labels: str) -> float:
        return metric(expired, name, **labels) - metric(before, name, **labels)

    assert moved("wso_token_refresh_failures_total", provider="oidc", reason="RefreshRejected") >= 1
    assert moved("wso_reconciles_total", kind=c.USER_TOKEN_KIND, result="problem") >= 1  # the pass that found it dead
    assert moved("wso_reconciles_total", kind=c.USER_TOKEN_KIND, result="success") >= 1
    assert moved("wso_reconcile_duration_seconds_count", kind=c.USER_TOKEN_KIND) >= 2
    # The token count (every --resync-interval, 20 s here) sees it expired, then valid again after reconnecting.
    wait_for(lambda: metric(wso_operator.process.metrics(), "wso_tokens", provider="oidc", state=c.PHASE_EXPIRED) >= 1,
             timeout=45, what="wso_tokens counts the expired token")
    # Reconnecting from the connect page works.
    browser = BrowserSession.of(wso_operator.process)
    result = browser.connect(status["authorizationURL"], namespace, "rev")
    assert "data-ok='true'" in result.text
    wait_phase(api, namespace, "rev", c.PHASE_VALID)
    assert_no_token_leaks(api, namespace, wso_operator, [data[c.KEY_TOKEN], data[c.KEY_REFRESH_TOKEN]])


def test_replayed_forged_and_foreign_state_are_rejected(api, namespace, wso_operator, oidc, applications):
    create_token(api, namespace, "st", ut_spec(oidc_app(applications, oidc, "wso")))
    link = wait_phase(api, namespace, "st", c.PHASE_AWAITING_AUTHORIZATION)["status"]["authorizationURL"]

    # A callback delivered to a browser that did not start the flow is refused -- even one signed in as alice
    # (login CSRF: mallory's code must not land in a victim's UserToken, nor alice's in another browser) --
    # and the state is spent: the rightful browser cannot use it afterwards either.
    alice = BrowserSession.of(wso_operator.process)
    page = alice.open(link).text
    callback = alice.follow(alice.start(page, namespace, "st"), stop_at_callback=True)
    for other in (BrowserSession.of(wso_operator.process, "alice"), BrowserSession.of(wso_operator.process, "bob"),
                  BrowserSession.of(wso_operator.process, None)):
        refused = other.open(callback)
        assert refused.status_code in (400, 403) and ("another browser" in refused.text or "already used" in refused.text)
    assert alice.open(callback).status_code == 400

    # The right browser but another signed-in user (the proxy now says bob): refused.
    callback = alice.follow(alice.start(alice.open(link).text, namespace, "st"), stop_at_callback=True)
    alice.user = "bob"
    assert alice.open(callback).status_code == 403
    alice.user = "alice"

    # Forged: a state that was never signed by the operator.
    forged = callback.replace("state=", "state=x") if "state=" in callback else callback
    response = alice.open(forged)
    assert response.status_code == 400 and "not started here" in response.text

    # A complete connect, then a replay of its callback.
    callback = alice.follow(alice.start(alice.open(link).text, namespace, "st"), stop_at_callback=True)
    assert "data-ok='true'" in alice.open(callback).text
    wait_phase(api, namespace, "st", c.PHASE_VALID)
    replay = alice.open(callback)
    assert replay.status_code == 400 and "already used" in replay.text
    # The refusals were logged as such (and never with the code).
    assert "OAuth callback for" in wso_operator.process.log_text() and "not the browser and user that started it" in wso_operator.process.log_text()
    code = dict(p.split("=", 1) for p in callback.split("?", 1)[1].split("&"))["code"]
    log = wso_operator.process.log_text()
    assert "OAuth callback refused: UnknownState" in log and "OAuth callback refused: ForgedState" in log
    assert code not in log


def test_the_connect_page_shows_users_only_their_own_tokens(api, namespace, wso_operator, oidc, applications):
    app = oidc_app(applications, oidc, "wso")
    create_token(api, namespace, "mine", ut_spec(app, user="alice"))
    create_token(api, namespace, "theirs", ut_spec(app, user="bob"))
    alice_link = wait_phase(api, namespace, "mine", c.PHASE_AWAITING_AUTHORIZATION)["status"]["authorizationURL"]
    bob_link = wait_phase(api, namespace, "theirs", c.PHASE_AWAITING_AUTHORIZATION)["status"]["authorizationURL"]
    url = wso_operator.process.connect_url
    header, proxy = wso_operator.process.connect_user_header, wso_operator.process.connect_trusted_proxy

    # No identity at all: the links are no sign-in, whoever holds them.
    assert requests.get(f"{url}/accounts", timeout=10).status_code == 401
    assert requests.get(bob_link, timeout=10).status_code == 401
    # A link of the old form (signed, per UserToken) only redirects to the page: no session, no cookie.
    old = requests.get(f"{url}/connect/{namespace}/theirs?t=anything", allow_redirects=False, timeout=10)
    assert old.status_code == 303 and not old.cookies
    # A forged header from an address that is not the auth proxy.
    status, body = via_proxy(f"{url}/accounts", user="bob", header=header, source="127.0.0.1")
    assert status == 403 and "only accepted from the platform" in body
    # The same header from the auth proxy: bob sees his token only, whichever link he opens.
    for link in (f"{url}/accounts", alice_link):
        status, body = via_proxy(link, user="bob", header=header, source=proxy)
        assert status == 200 and "theirs" in body and f"{namespace}/mine" not in body
    # alice signed in: bob's token is neither listed nor connectable.
    alice = BrowserSession.of(wso_operator.process, "alice")
    page = alice.open(bob_link)
    assert page.status_code == 200 and f"{namespace}/mine" in page.text and f"{namespace}/theirs" not in page.text
    csrf = dict(re.findall(r"name=(\w+) value='([^']*)'", page.text))["csrf"]
    response = alice.post(f"{url}/connect/start", data={"namespace": namespace, "name": "theirs", "csrf": csrf}, allow_redirects=False)
    assert response.status_code == 403 and "not one of your accounts" in response.text
    # ... in the same words as a name that does not exist: the page is no oracle of other users' UserTokens.
    missing = alice.post(f"{url}/connect/start", data={"namespace": namespace, "name": "no-such-token", "csrf": csrf}, allow_redirects=False)
    assert missing.status_code == 403 and missing.text.replace("no-such-token", "theirs") == response.text
    # bob cannot use alice's form (her CSRF token) either.
    bob = BrowserSession.of(wso_operator.process, "bob")
    response = bob.post(f"{url}/connect/start", data={"namespace": namespace, "name": "theirs", "csrf": csrf}, allow_redirects=False)
    assert response.status_code == 403
    # A form without a valid CSRF token (a cross-site POST) is refused.
    response = alice.post(f"{url}/connect/start", data={"namespace": namespace, "name": "mine", "csrf": "x"}, allow_redirects=False)
    assert response.status_code == 403


def test_applications_are_the_platforms(api, namespace, wso_operator, oidc, applications):
    """A UserToken can only name an OAuthApplication allowed in its namespace; the client Secret is read from
    the operator's namespace, never the tenant's; the removed fields are refused with the migration."""
    elsewhere = applications("wso", {"type": "oidc", "host": oidc.issuer}, allowed=["some-other-namespace", "team-*"])
    create_token(api, namespace, "not-allowed", ut_spec(elsewhere))
    create_token(api, namespace, "missing", ut_spec("no-such-application"))
    messages = set()
    for name in ("not-allowed", "missing"):
        status = wait_phase(api, namespace, name, c.PHASE_ERROR)["status"]
        ready = next(x for x in status["conditions"] if x["type"] == "Ready")
        assert ready["reason"] == "ApplicationNotFound" and "spec.application" in ready["message"]
        messages.add(ready["message"].replace("'no-such-application'", "NAME").replace(f"'{elsewhere}'", "NAME"))
        assert "authorizationURL" not in status
    assert len(messages) == 1  # "not allowed here" and "does not exist" read the same
    # The connect page refuses to start a flow with it.
    alice = BrowserSession.of(wso_operator.process)
    form = dict(re.findall(r"name=(\w+) value='([^']*)'", alice.open(page_link(wso_operator, namespace, "missing")).text))
    response = alice.post(f"{wso_operator.process.connect_url}/connect/start", data={**form, "namespace": namespace, "name": "missing"},
                          allow_redirects=False)
    assert response.status_code == 503 and "ApplicationNotFound" not in response.text and "spec.application" in response.text
    # A tenant's Secret with the application's client-Secret name is never read: only the operator namespace's.
    app = applications(None, {"type": "oidc", "host": oidc.issuer, "clientSecretRef": {"name": "tenant-named"}})
    api.create_secret(namespace, "tenant-named", {"client-id": b"wso", "client-secret": CLIENT_SECRET.encode()})
    create_token(api, namespace, "wrong-secret", ut_spec(app))
    wait_phase(api, namespace, "wrong-secret", c.PHASE_AWAITING_AUTHORIZATION)
    form = dict(re.findall(r"name=(\w+) value='([^']*)'", alice.open(page_link(wso_operator, namespace, "wrong-secret")).text))
    response = alice.post(f"{wso_operator.process.connect_url}/connect/start",
                          data={**form, "namespace": namespace, "name": "wrong-secret"}, allow_redirects=False)
    assert response.status_code == 503 and "ask the platform team" in response.text
    # The fields of the first schema are refused at admission, with the migration.
    for field, value in (("clientSecretRef", {"name": "bobs-ssh-key"}), ("host", "https://evil.example.com"), ("type", "github")):
        with pytest.raises(Exception) as refused:  # noqa: PT011 - the client's ApiException
            create_token(api, namespace, f"old-{field.lower()}", {"user": "alice", "application": app, field: value})
        assert getattr(refused.value, "status", None) == 422 and f"spec.{field} was removed" in refused.value.body
        assert "spec.application" in refused.value.body


def test_device_flow(api, namespace, wso_operator, oidc, applications):
    """RFC 8628: the code and the provider's verification page are shown on the connect page to the signed-in
    owner only (never in status, which every tenant of the namespace may read); the user approves there; the
    operator's polling picks the token up. No callback to the operator."""
    create_token(api, namespace, "dev", ut_spec(oidc_app(applications, oidc, "device-wso"), flow="Device"))
    link = page_link(wso_operator, namespace, "dev")
    alice = BrowserSession.of(wso_operator.process)
    shown = wait_for(lambda: device_code_on_page(alice.open(link).text, namespace, "dev"), timeout=20, what="a device code on the page")
    user_code, verification = shown
    status = get_token(api, namespace, "dev")["status"]
    assert status["phase"] == c.PHASE_AWAITING_AUTHORIZATION and status["authorizationURL"] == link
    assert "userCode" not in status and user_code not in str(get_token(api, namespace, "dev"))
    assert verification.startswith(f"{oidc.issuer}/device")
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    assert "connect page" in ready["message"]
    for other in ("bob", None):  # not shown to anyone else
        assert user_code not in BrowserSession.of(wso_operator.process, other).open(link).text
    assert "Sign-in Success" in approve_device_code(verification).text
    ut = wait_phase(api, namespace, "dev", c.PHASE_VALID, timeout=30)
    assert ut["status"]["login"] == "alice" and "userCode" not in ut["status"] and "authorizationURL" not in ut["status"]
    data = token_values(api, namespace, "dev-token")
    assert requests.get(f"{oidc.issuer}/me", headers={"Authorization": b"Bearer " + data[c.KEY_TOKEN]}, timeout=10).status_code == 200
    assert c.KEY_REFRESH_TOKEN in data
    assert_no_token_leaks(api, namespace, wso_operator, [data[c.KEY_TOKEN], data[c.KEY_REFRESH_TOKEN]])


def assert_no_token_leaks(api: Api, namespace: str, wso_operator, tokens: list[bytes]) -> None:
    """No token byte string in the operator's log, in any UserToken (spec, status, annotations), or in
    any Event of the namespace. Failures print digests only."""
    import json

    haystacks = {
        "operator log": wso_operator.process.log_text().encode(),
        "UserTokens": json.dumps(api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL)).encode(),
        "Events": json.dumps([api.core.api_client.sanitize_for_serialization(e) for e in api.core.list_namespaced_event(namespace).items]).encode(),
    }
    leaks = [(where, digest(t)) for t in tokens if t for where, text in haystacks.items() if t in text]
    assert not leaks, f"token bytes found in: {leaks}"
