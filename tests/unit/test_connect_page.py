"""The connect page as a product page: plain words per account (never a phase name or a kubectl instruction as
text), the access asked for, the times, the workspaces that wait; Disconnect (CSRF-protected, the owner's own
tokens only) revokes and removes the stored token and keeps the UserToken, not connected."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from datetime import datetime, timedelta, timezone
from html import unescape

from unit.test_connect_page_auth import HEADER, FakeController, form_of, run_client, server, signed_in
from unit.test_user_token_controller import NS, SECRET_PATH, UT_PATH, setup

from workspace_secrets.api import constants as c
from workspace_secrets.user_token.connect import ConnectResult, NotAllowed, TokenSummary, workspaces_using
from workspace_secrets.user_token.connect_page import pages

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
PHASES = ("AwaitingAuthorization", "Valid", "Refreshing", "Expired", "Revoked", "Error")


def visible(html: str) -> str:
    """The text a user reads: no tags, no attributes, no style or script."""
    html = re.sub(r"<(style|script)\b.*?</\1>", "", html, flags=re.S)
    return unescape(re.sub(r"<[^>]+>", " ", html))


def token(**kw) -> TokenSummary:
    base = dict(namespace="team", name="gh", user="alice", type="github", host="https://github.com", phase="AwaitingAuthorization",
                login=None, expires_at=None, message="'alice' has not connected github yet: open status.authorizationURL to connect.")
    return TokenSummary(**{**base, **kw})


def render(*tokens: TokenSummary, **kw) -> str:
    return pages.accounts("alice", tokens, "CSRF", now=NOW, **kw)


def test_states_read_in_plain_words_with_phases_only_in_attributes():
    html = render(
        token(name="a", phase="Valid", login="octocat", connected_at="2026-11-29T10:00:00Z", refreshed_at="2026-11-29T11:55:00Z",
              next_refresh_at="2026-11-29T17:00:00Z", scopes=("repo", "read:user"), revocable=True, used_by=("web",)),
        token(name="b"),
        token(name="c", phase="Expired", login="octocat", reason="Expired",
              message="The github token expired ...; 'alice' must reconnect at status.authorizationURL."),
        token(name="d", phase="Revoked", reason="Revoked"),
        token(name="e", phase="Error", reason="ApplicationNotFound", message="OAuthApplication 'x' does not exist ..."),
        token(name="f", type="gitlab-self-managed", host="https://git.example.com:8443", scopes=("read_user", "weird_scope")),
    )
    text = visible(html)
    assert "Connected as octocat" in text and "Not connected" in text
    assert "Expired — reconnect" in text and "Access revoked — reconnect" in text and "Can't connect right now" in text
    assert "not set up for your namespace yet" in text
    assert "authorizationURL" not in html  # kubectl's instructions never reach the page
    for phase in PHASES:  # "Expired — reconnect" is a sentence; "Expired" alone, or any enum name, is not shown
        assert phase == "Expired" or phase not in text, phase
    assert not set(re.findall(r"<p class='state[^>]*>(?:<[^>]+>)*([^<]*)</p>", html)) & set(PHASES)
    assert all(f"data-phase='{p}'" in html for p in ("Valid", "AwaitingAuthorization", "Expired", "Revoked", "Error"))
    # Provider by its proper name and host; the access asked for, explained; the times in words.
    assert "GitHub" in text and "github.com" in text and "git.example.com:8443" in text
    assert "Read and write your repositories" in text and "Read your profile" in text and "weird_scope" in text
    assert "2 hours ago" in text and "5 minutes ago" in text and "in 5 hours" in text and "Used by" in text
    # Buttons: Reconnect + Disconnect when connected; Connect when not; Disconnect also for a dead grant.
    assert re.search(r"data-token='team/a'[^>]*>Reconnect<", html) and "data-disconnect='team/a'" in html
    assert re.search(r"data-token='team/b'[^>]*>Connect<", html) and "data-disconnect='team/b'" not in html
    assert "data-disconnect='team/c'" in html and "revoked at GitHub" in text
    assert "data-token='team/e'" in html  # an Error token keeps its Connect form (the answer says what is wrong)


def test_waiting_workspaces_are_named_and_the_device_code_is_large_with_a_copy_button():
    html = render(token(name="dev", flow="Device", user_code="WDJB-MJHT", verification_url="https://github.com/login/device?code=x",
                        waiting=("web", "api")))
    text = visible(html)
    assert "2 workspaces are waiting for this account" in text and "web" in text and "api" in text
    assert "Waiting for you to enter the code" in text and "New code" in text
    assert re.search(r"<code id='user-code'[^>]*>WDJB-MJHT</code>", html)
    assert "data-copy='WDJB-MJHT' hidden" in html  # shown by the script; without it the code is one tap to select
    assert "<script>" + pages.SCRIPT + "</script>" in html
    # The script is allowed by its hash, nothing else is.
    assert pages.SCRIPT_CSP == "'sha256-" + base64.b64encode(hashlib.sha256(pages.SCRIPT.encode()).digest()).decode() + "'"
    assert "<script>" not in render(token())  # no script without a code


def test_every_value_is_escaped():
    evil = "<img src=x onerror=alert(1)>'\""
    html = render(token(login=evil, phase="Valid", scopes=(evil,), used_by=(evil,), host=None, type=evil), focus="team/gh")
    assert "<img" not in html and "onerror=alert(1)>" not in html


def test_workspaces_using_reads_tenant_objects_defensively():
    def ws(name, user="alice", refs=None, ready=None, **extra):
        status = {"conditions": [{"type": "TokensReady", "status": ready}]} if ready else {}
        return {"metadata": {"name": name, **extra}, "spec": {"user": user, "userTokens": refs}, "status": status}

    items = [
        ws("waits", refs=[{"name": "gh"}], ready="False"),
        ws("no-condition-yet", refs=[{"name": "gh"}]),
        ws("ready", refs=[{"name": "gh"}], ready="True"),
        ws("optional", refs=[{"name": "gh", "optional": True}], ready="False"),
        ws("bobs", user="bob", refs=[{"name": "gh"}], ready="False"),
        ws("other-token", refs=[{"name": "gl"}], ready="False"),
        ws("deleting", refs=[{"name": "gh"}], deletionTimestamp="2026-01-01T00:00:00Z"),
        ws("junk-refs", refs="gh"), ws("junk-entry", refs=["gh", None, 3]),
        {"metadata": "x"}, None, "string", {"metadata": {"name": "nospec"}},
        {"metadata": {"name": "bad-conditions"}, "spec": {"user": "alice", "userTokens": [{"name": "gh"}]}, "status": {"conditions": "x"}},
    ]
    used, waiting = workspaces_using(items, "alice", "gh")
    assert used == ("bad-conditions", "no-condition-yet", "optional", "ready", "waits")
    assert waiting == ("bad-conditions", "no-condition-yet", "waits")


class DisconnectingController(FakeController):
    def __init__(self) -> None:
        super().__init__()
        self.disconnected: list[tuple[str, str, str]] = []
        self.connected = True

    async def list_for_user(self, user, namespace):
        if user != "alice":
            return []
        phase = "Valid" if self.connected else "AwaitingAuthorization"
        return [TokenSummary("team", "gh", "alice", "github", None, phase, "octocat" if self.connected else None, None, "")]

    async def disconnect(self, namespace, name, user):
        if (namespace, name, user) != ("team", "gh", "alice"):
            raise NotAllowed(f"UserToken {namespace}/{name} is not one of your accounts.")
        self.disconnected.append((namespace, name, user))
        self.connected = False
        return ConnectResult(True, "Disconnected GitHub", "ok", namespace, name)


def test_disconnect_needs_the_users_csrf_token_and_their_own_token():
    controller = DisconnectingController()

    async def scenario(client):
        page = await client.get("/accounts", headers=signed_in("alice"))
        assert "script-src 'sha256-" in page.headers["Content-Security-Policy"]
        form = form_of(await page.text())
        for bad in ({**form, "csrf": ""}, {k: v for k, v in form.items() if k != "csrf"}, {**form, "csrf": "forged"}):
            response = await client.post("/connect/disconnect", data=bad, headers=signed_in("alice"), allow_redirects=False)
            assert response.status == 403
        # bob with alice's form (her CSRF token), and bob with his own CSRF token on alice's token: refused.
        assert (await client.post("/connect/disconnect", data=form, headers=signed_in("bob"), allow_redirects=False)).status == 403
        bob_csrf = re.search(r"name=csrf value='([^']*)'", await (await client.get("/accounts", headers=signed_in("bob"))).text())
        assert bob_csrf is None  # bob has nothing to disconnect: no form at all
        other = {**form, "name": "not-mine"}
        refused = await client.post("/connect/disconnect", data=other, headers=signed_in("alice"), allow_redirects=False)
        assert refused.status == 403 and "your own" in await refused.text()
        assert controller.disconnected == []
        # Not signed in: refused.
        assert (await client.post("/connect/disconnect", data=form, allow_redirects=False)).status == 401
        # Her own, with her CSRF token: done, back to the page, which says so in words.
        done = await client.post("/connect/disconnect", data=form, headers=signed_in("alice"), allow_redirects=False)
        assert done.status == 303 and done.headers["Location"] == "/accounts?focus=team/gh&done=disconnected"
        after = await (await client.get(done.headers["Location"], headers=signed_in("alice"))).text()
        assert "Disconnected GitHub" in visible(after) and "Not connected" in visible(after)
        assert controller.disconnected == [("team", "gh", "alice")]

    run_client(server(controller, header=HEADER, proxies=("127.0.0.0/8",)), scenario)


def test_a_disconnect_the_provider_could_not_finish_says_so():
    class Unreachable(DisconnectingController):
        async def disconnect(self, namespace, name, user):
            return ConnectResult(False, "GitHub could not be reached", "The token could not be revoked at GitHub, so it was kept.")

    async def scenario(client):
        form = form_of(await (await client.get("/accounts", headers=signed_in("alice"))).text())
        response = await client.post("/connect/disconnect", data=form, headers=signed_in("alice"), allow_redirects=False)
        assert response.status == 502 and "so it was kept" in await response.text()

    run_client(server(Unreachable(), header=HEADER, proxies=("127.0.0.0/8",)), scenario)


def test_disconnect_revokes_deletes_the_secret_and_keeps_the_token_not_connected():
    clock = [NOW]
    controller, kube, gitlab, events = setup(clock)
    requests: list[str] = []
    original = gitlab.__call__

    async def recording(request):
        requests.append(request.url)
        return await original(request)

    gitlab.__call__ = recording  # type: ignore[method-assign]
    kube.edit(UT_PATH, {"status": {"phase": "Valid", "login": "alice", "connectedTime": "2026-11-29T11:00:00Z", "expiresAt": "2026-11-29T14:00:00Z"}})

    async def scenario():
        # Another user cannot: one answer, nothing touched.
        try:
            await controller.disconnect(NS, "gl", "bob")
            raise AssertionError("bob disconnected alice's token")
        except NotAllowed as exc:
            assert "not one of your accounts" in str(exc)
        assert SECRET_PATH in kube.objects
        try:
            await controller.disconnect(NS, "missing", "alice")
            raise AssertionError("disconnected a token that does not exist")
        except NotAllowed as exc:
            assert "not one of your accounts" in str(exc)
        outcome = await controller.disconnect(NS, "gl", "alice")
        assert outcome.ok, outcome
        return await controller.list_for_user("alice", NS)

    listed = asyncio.run(scenario())
    assert SECRET_PATH not in kube.objects
    status = kube.objects[UT_PATH]["status"]
    assert status["phase"] == c.PHASE_AWAITING_AUTHORIZATION and "login" not in status and "expiresAt" not in status
    assert status["authorizationURL"] == "https://ops/accounts?focus=team/gl"
    ready = next(x for x in status["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False"
    reasons = [reason for reason, _ in events.posted]
    assert "TokenRevoked" in reasons and "Disconnected" in reasons
    assert [t.phase for t in listed] == ["AwaitingAuthorization"] and listed[0].scopes == ("read_user", "read_repository", "write_repository")
    assert "Not connected" in visible(render(*listed))


def test_the_listing_names_the_access_and_the_waiting_workspaces():
    clock = [NOW]
    controller, kube, _, _ = setup(clock)
    ws_path = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
    kube.put(f"{ws_path}/web", {"apiVersion": c.API_VERSION, "kind": "WorkspaceSecret", "metadata": {"name": "web", "namespace": NS},
                                "spec": {"user": "alice", "userTokens": [{"name": "gl"}]}})
    kube.put(f"{ws_path}/bobs", {"apiVersion": c.API_VERSION, "kind": "WorkspaceSecret", "metadata": {"name": "bobs", "namespace": NS},
                                 "spec": {"user": "bob", "userTokens": [{"name": "gl"}]}})
    kube.edit(UT_PATH, {"status": {"phase": "AwaitingAuthorization"}})
    [summary] = asyncio.run(controller.list_for_user("alice", NS))
    assert summary.used_by == ("web",) and summary.waiting == ("web",) and summary.revocable
    kube.edit(UT_PATH, {"status": {"phase": "Valid"}})
    [summary] = asyncio.run(controller.list_for_user("alice", NS))
    assert summary.used_by == ("web",) and summary.waiting == ()  # connected: nothing waits for it
    assert asyncio.run(controller.list_for_user("bob", NS)) == []


def test_relative_times():
    assert "just now" in pages.when("2026-11-29T11:59:30Z", NOW)
    assert ">1 minute ago<" in pages.when("2026-11-29T11:59:00Z", NOW)
    assert ">in 2 days<" in pages.when((NOW + timedelta(days=2, hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), NOW)
    assert pages.when("not a time", NOW) == "" and pages.when(None, NOW) == ""
