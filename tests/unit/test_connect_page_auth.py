"""Who the connect page thinks is asking: only the platform's auth proxy says so (a trusted header from its
addresses); a link or a cookie is never an identity; without sign-in configured the page answers 503. An
OAuth flow is bound to the browser that started it (a flow cookie whose hash the pending record keeps)."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from workspace_secrets.user_token.controller import ConnectResult, NotAllowed, TokenSummary
from workspace_secrets.oauth.protocol import PendingAuthorization, PendingAuthorizations, StateRejected
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.signing import Signer
from workspace_secrets.user_token.connect_page.server import FLOW_COOKIE, ConnectServer, Refused, WebSettings

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
SIGNER = Signer(Sensitive(b"s" * 32))
HEADER = "X-Remote-User"


def server(controller=None, base_url: str = "https://ops.example.com", **settings) -> ConnectServer:
    web = WebSettings.parse(base_url, settings.get("header"), settings.get("proxies", ()), 3600)
    return ConnectServer(controller=controller, signer=SIGNER, settings=web, clock=lambda: NOW)  # type: ignore[arg-type]


def request(peer: str, headers: dict[str, str] | None = None):
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 40000) if name == "peername" else default
    return make_mocked_request("GET", "/accounts", headers=headers or {}, transport=transport)


def test_the_user_header_needs_trusted_proxies():
    with pytest.raises(ValueError, match="--connect-trusted-proxies"):
        WebSettings.parse("https://ops", HEADER, (), 3600)


def test_the_header_is_trusted_only_from_the_proxy():
    page = server(header=HEADER, proxies=("10.1.0.0/16",))
    assert page.principal(request("10.1.2.3", {HEADER: "alice"})).user == "alice"
    with pytest.raises(Refused) as refused:
        page.principal(request("10.2.0.1", {HEADER: "alice"}))
    assert refused.value.status == 403
    assert page.principal(request("10.2.0.1")) is None  # no header: anonymous
    with pytest.raises(Refused):
        page.principal(request("10.1.2.3", {HEADER: "  "}))


def test_cookies_are_not_identities():
    page = server(header=HEADER, proxies=("10.1.0.0/16",))
    session = SIGNER.sign("session", {"user": "alice"}, expires=NOW + timedelta(hours=1))
    assert page.principal(request("10.0.0.1", {"Cookie": f"wso_session={session}"})) is None


class FakeController:
    """The controller's side of the page: one UserToken of alice's; records what the page asked for."""

    def __init__(self) -> None:
        self.pending = PendingAuthorizations(SIGNER)
        self.completed: list[str] = []

    async def list_for_user(self, user: str, namespace: str | None) -> list[TokenSummary]:
        if user != "alice":
            return []
        return [TokenSummary("team", "gh", "alice", "github", None, "AwaitingAuthorization", None, None, "connect me")]

    async def begin_authorization(self, namespace: str, name: str, user: str, *, browser: str = "") -> str:
        if (namespace, name, user) != ("team", "gh", "alice"):
            raise NotAllowed("belongs to another user")
        state = self.pending.new_state(uid="uid-gh", now=NOW)
        self.pending.put(state, PendingAuthorization("team", "gh", "uid-gh", "alice", Sensitive("v"), "https://ops/oauth/callback",
                                                     NOW + timedelta(minutes=10), browser=browser))
        return f"https://github.com/login/oauth/authorize?state={state}"

    def take_state(self, state: str) -> PendingAuthorization:
        return self.pending.take(state, now=NOW)

    async def complete_authorization(self, record: PendingAuthorization, code: str) -> ConnectResult:
        self.completed.append(code)
        return ConnectResult(True, "Connected to github", "ok", record.namespace, record.name)


def run_client(page: ConnectServer, scenario):
    async def main():
        async with TestClient(TestServer(page.app())) as client:
            return await scenario(client)
    return asyncio.run(main())


def test_without_sign_in_the_page_answers_503_but_healthz_works():
    async def scenario(client):
        assert (await client.get("/healthz")).status == 200
        for method, path in (("GET", "/accounts"), ("GET", "/"), ("POST", "/connect/start"), ("GET", "/oauth/callback?state=x&code=y"),
                             ("GET", "/connect/team/gh?t=anything")):
            response = await client.request(method, path, headers={HEADER: "alice"}, allow_redirects=False)
            assert response.status == 503 and "Sign-in not configured" in await response.text(), path

    run_client(server(FakeController()), scenario)


def signed_in(user: str) -> dict[str, str]:
    return {HEADER: user}


def form_of(html: str) -> dict[str, str]:
    return dict(re.findall(r"name=(\w+) value='([^']*)'", html))


def test_old_signed_links_only_redirect_and_create_no_session():
    async def scenario(client):
        response = await client.get("/connect/team/gh?t=some.signed-link", allow_redirects=False)
        assert response.status == 303 and response.headers["Location"] == "/accounts?focus=team/gh"
        assert not response.cookies
        assert (await client.get("/accounts")).status == 401  # still nobody

    run_client(server(FakeController(), header=HEADER, proxies=("127.0.0.0/8",)), scenario)


@pytest.mark.parametrize("base_url", ["https://ops.example.com", "http://127.0.0.1:8081"])
def test_the_flow_cookie_is_httponly_lax_scoped_and_secure_over_https(base_url):
    controller = FakeController()

    async def scenario(client):
        page = await client.get("/accounts", headers=signed_in("alice"))
        response = await client.post("/connect/start", data=form_of(await page.text()), headers=signed_in("alice"), allow_redirects=False)
        cookie = response.cookies[FLOW_COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/oauth/callback"
        assert bool(cookie["secure"]) == base_url.startswith("https://") and 0 < int(cookie["max-age"]) <= 600
        assert cookie.value not in str(list(controller.pending._records.values()))  # the record keeps its hash only

    run_client(server(controller, base_url, header=HEADER, proxies=("127.0.0.0/8",)), scenario)


def test_a_flow_is_bound_to_the_browser_and_user_that_started_it():
    controller = FakeController()

    async def start(client) -> str:
        page = await client.get("/accounts", headers=signed_in("alice"))
        assert page.status == 200
        response = await client.post("/connect/start", data=form_of(await page.text()), headers=signed_in("alice"), allow_redirects=False)
        assert response.status == 303 and FLOW_COOKIE in response.cookies
        return response.headers["Location"].split("state=", 1)[1]

    async def scenario(client):
        # 1. The victim's browser (no flow cookie) receives a callback the attacker started: refused, state spent.
        state = await start(client)
        client.session.cookie_jar.clear()
        refused = await client.get(f"/oauth/callback?state={state}&code=attacker-code", headers=signed_in("alice"))
        assert refused.status == 403 and "another browser" in await refused.text()
        # 2. Same browser, but signed in as someone else: refused.
        state = await start(client)
        refused = await client.get(f"/oauth/callback?state={state}&code=c", headers=signed_in("bob"))
        assert refused.status == 403
        # 3. Not signed in at all: refused.
        state = await start(client)
        assert (await client.get(f"/oauth/callback?state={state}&code=c")).status == 403
        assert controller.completed == []
        # 4. The browser and user that started it: connected, and the cookie is cleared.
        state = await start(client)
        done = await client.get(f"/oauth/callback?state={state}&code=good", headers=signed_in("alice"))
        assert done.status == 200 and "data-ok='true'" in await done.text()
        assert controller.completed == ["good"] and done.cookies[FLOW_COOKIE].value == ""
        # Replayed: the state was single-use.
        replay = await client.get(f"/oauth/callback?state={state}&code=good", headers=signed_in("alice"))
        assert replay.status == 400

    run_client(server(controller, "http://127.0.0.1:8081", header=HEADER, proxies=("127.0.0.0/8",)), scenario)


def test_forms_need_the_users_csrf_token():
    async def scenario(client):
        page = await client.get("/accounts", headers=signed_in("alice"))
        form = form_of(await page.text())
        assert (await client.post("/connect/start", data={**form, "csrf": "x"}, headers=signed_in("alice"), allow_redirects=False)).status == 403
        # bob replaying alice's form (her CSRF token) is refused too.
        assert (await client.post("/connect/start", data=form, headers=signed_in("bob"), allow_redirects=False)).status == 403
        bobs = form_of(await (await client.get("/accounts", headers=signed_in("bob"))).text())
        assert bobs == {}  # bob has no tokens: no form at all
        other = {**form, "name": "not-mine"}
        assert (await client.post("/connect/start", data=other, headers=signed_in("alice"), allow_redirects=False)).status == 403

    run_client(server(FakeController(), header=HEADER, proxies=("127.0.0.0/8",)), scenario)


def test_state_errors_are_still_told_apart():
    controller = FakeController()

    async def scenario(client):
        response = await client.get("/oauth/callback?state=abc.def&code=c", headers=signed_in("alice"))
        assert response.status == 400 and "not started here" in await response.text()

    run_client(server(controller, header=HEADER, proxies=("127.0.0.0/8",)), scenario)
    assert issubclass(StateRejected, Exception)
