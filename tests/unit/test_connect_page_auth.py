"""Who the connect page thinks is asking: the trusted header only from the auth proxy's addresses, signed
sessions only when intact and unexpired."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from unittest import mock

import pytest
from aiohttp.test_utils import make_mocked_request

from workspace_secrets.domain.sensitive import Sensitive
from workspace_secrets.domain.signing import Signer
from workspace_secrets.web.server import SESSION_COOKIE, SESSION_PURPOSE, ConnectServer, Refused, WebSettings

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
SIGNER = Signer(Sensitive(b"s" * 32))


def server(**settings) -> ConnectServer:
    web = WebSettings.parse("https://ops.example.com", settings.get("header"), settings.get("proxies", ()), 3600)
    return ConnectServer(controller=None, signer=SIGNER, settings=web, clock=lambda: NOW)  # type: ignore[arg-type]


def request(peer: str, headers: dict[str, str] | None = None):
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (peer, 40000) if name == "peername" else default
    return make_mocked_request("GET", "/accounts", headers=headers or {}, transport=transport)


def test_the_user_header_needs_trusted_proxies():
    with pytest.raises(ValueError, match="--connect-trusted-proxies"):
        WebSettings.parse("https://ops", "X-Remote-User", (), 3600)


def test_the_header_is_trusted_only_from_the_proxy():
    page = server(header="X-Remote-User", proxies=("10.1.0.0/16",))
    principal = page.principal(request("10.1.2.3", {"X-Remote-User": "alice"}))
    assert (principal.user, principal.namespace, principal.via) == ("alice", None, "header")
    with pytest.raises(Refused) as refused:
        page.principal(request("10.2.0.1", {"X-Remote-User": "alice"}))
    assert refused.value.status == 403
    assert page.principal(request("10.2.0.1")) is None  # no header, no cookie: anonymous


def test_a_header_is_ignored_when_header_mode_is_off():
    assert server().principal(request("10.1.2.3", {"X-Remote-User": "alice"})) is None


def test_sessions_must_be_signed_and_fresh():
    page = server()
    good = SIGNER.sign(SESSION_PURPOSE, {"user": "alice", "ns": "team-a"}, expires=NOW + timedelta(hours=1))
    principal = page.principal(request("10.0.0.1", {"Cookie": f"{SESSION_COOKIE}={good}"}))
    assert (principal.user, principal.namespace) == ("alice", "team-a")
    forged = Signer(Sensitive(b"f" * 32)).sign(SESSION_PURPOSE, {"user": "bob"}, expires=NOW + timedelta(hours=1))
    assert page.principal(request("10.0.0.1", {"Cookie": f"{SESSION_COOKIE}={forged}"})) is None
    old = SIGNER.sign(SESSION_PURPOSE, {"user": "alice"}, expires=NOW - timedelta(seconds=1))
    assert page.principal(request("10.0.0.1", {"Cookie": f"{SESSION_COOKIE}={old}"})) is None
    link_token = SIGNER.sign("connect-link", {"user": "alice"}, expires=NOW + timedelta(hours=1))
    assert page.principal(request("10.0.0.1", {"Cookie": f"{SESSION_COOKIE}={link_token}"})) is None  # wrong purpose
