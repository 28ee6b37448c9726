"""Which proxy an outgoing request goes through (runtime/egress.py, pure): HTTPS_PROXY/HTTP_PROXY/NO_PROXY as the
Python clients read them, loopback never proxied, bad proxy settings refused without echoing a password; plain http
refused off loopback by every client before any connection; messages that reach a status never name the proxy."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from workspace_secrets.api.loopback import is_loopback_http
from workspace_secrets.runtime.egress import ProxyConfigError, ProxySettings, cleartext_problem
from workspace_secrets.runtime.http import Egress, provider_tls_error


def proxy(env: dict[str, str], url: str) -> str | None:
    chosen = ProxySettings.from_environ(env).proxy_for(url)
    return None if chosen is None else chosen.url


def test_https_and_http_urls_take_their_own_variable_lower_case_first():
    env = {"HTTPS_PROXY": "http://upper:3128", "https_proxy": "http://lower:3128", "HTTP_PROXY": "plain:8080"}
    assert proxy(env, "https://git.example.com/login/oauth/access_token") == "http://lower:3128"
    assert proxy(env, "http://git.example.com/") == "http://plain:8080"  # host:port means http://
    assert proxy({"HTTPS_PROXY": "http://upper:3128"}, "https://vault.example.com:8200/v1/x") == "http://upper:3128"
    # No fallback from one scheme's proxy to the other's; an empty variable is unset.
    assert proxy({"HTTP_PROXY": "http://p:1"}, "https://git.example.com") is None
    assert proxy({"https_proxy": "", "HTTPS_PROXY": "http://p:1"}, "https://git.example.com") == "http://p:1"
    assert proxy({}, "https://git.example.com") is None


@pytest.mark.parametrize("no_proxy, url, direct", [
    ("example.com", "https://git.example.com", True),
    ("example.com", "https://example.com", True),
    (".example.com", "https://example.com", True),
    ("*.example.com", "https://a.b.example.com", True),
    ("example.com", "https://notexample.com", False),
    ("example.com", "https://example.com.evil.net", False),
    ("10.0.0.0/8", "https://10.20.30.40:8443", True),
    ("10.0.0.0/8", "https://11.0.0.1", False),
    ("192.0.2.7", "https://192.0.2.7:9000/x", True),
    ("fd00::/8", "https://[fd00::2]:8200", True),
    ("[fd00::2]:8200", "https://[fd00::2]:8200", True),
    ("[fd00::2]:8200", "https://[fd00::2]:8201", False),
    ("git.example.com:8443", "https://git.example.com:8443", True),
    ("git.example.com:8443", "https://git.example.com", False),
    ("a.example.org, git.example.com", "https://git.example.com", True),
    ("a.example.org git.example.com", "https://git.example.com", True),
    ("*", "https://anything.example.net", True),
    ("EXAMPLE.COM.", "https://Git.Example.Com", True),
    ("", "https://git.example.com", False),
])
def test_no_proxy(no_proxy, url, direct):
    env = {"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": no_proxy}
    assert (proxy(env, url) is None) is direct


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/token", "https://localhost:8443", "http://[::1]:80", "https://127.9.9.9",
                                 "https://api.localhost"])
def test_loopback_is_never_proxied(url):
    """Plain http is accepted for loopback only: so no request in clear ever passes through a proxy."""
    assert proxy({"HTTPS_PROXY": "http://p:3128", "HTTP_PROXY": "http://p:3128"}, url) is None


def test_proxy_credentials_are_kept_apart_and_never_shown():
    settings = ProxySettings.from_environ({"HTTPS_PROXY": "http://svc%40corp:s3cr%2Ft@proxy.corp:3128", "NO_PROXY": ".svc"})
    chosen = settings.https
    assert chosen is not None and chosen.url == "http://proxy.corp:3128"
    assert (chosen.username, chosen.password) == ("svc@corp", "s3cr/t")
    assert chosen.with_credentials() == "http://svc%40corp:s3cr%2Ft@proxy.corp:3128"
    for shown in (repr(chosen), repr(settings), settings.describe(), Egress(settings).describe()):
        assert "s3cr" not in shown, shown
    assert "proxy.corp:3128" in settings.describe()


@pytest.mark.parametrize("value, message", [
    ("https://proxy.corp:3128", "https:// proxy is not supported"),
    ("socks5://user:hunter2@proxy.corp:1080", "socks5:// proxy is not supported"),
    ("http://user:hunter2@proxy.corp:notaport", "port is not a number"),
    ("http://user:hunter2@proxy.corp:3128/path", "without a path"),
])
def test_unusable_proxies_are_refused_without_their_value(value, message):
    with pytest.raises(ProxyConfigError, match=message) as caught:
        ProxySettings.from_environ({"HTTPS_PROXY": value})
    assert "hunter2" not in str(caught.value)


def test_requests_and_botocore_get_the_same_choice():
    egress = Egress(ProxySettings.from_environ({"HTTPS_PROXY": "http://u:p@proxy.corp:3128", "NO_PROXY": "iam.internal"}))
    assert egress.requests_proxies("https://iam.googleapis.com/v1/x") == {"https": "http://u:p@proxy.corp:3128"}
    assert egress.requests_proxies("https://iam.internal/v1/x") == {}
    assert egress.botocore_arguments("https://iam.amazonaws.com") == ({"https": "http://u:p@proxy.corp:3128"}, None)
    # {} (not None) for a bypassed endpoint: botocore then makes no reading of the environment of its own.
    assert egress.botocore_arguments("https://iam.internal") == ({}, None)


def test_a_session_configured_by_the_egress_reads_nothing_from_the_environment(monkeypatch, tmp_path):
    """requests' trust_env would read ~/.netrc (credentials sent to any host listed there) and REQUESTS_CA_BUNDLE."""
    import requests

    netrc = tmp_path / ".netrc"
    netrc.write_text("machine git.example.com login someone password netrc-secret\n")
    monkeypatch.setenv("NETRC", str(netrc))
    session = Egress(ProxySettings()).configure_requests(requests.Session())
    assert session.trust_env is False
    prepared = session.prepare_request(requests.Request("GET", "https://git.example.com/x"))
    assert "Authorization" not in prepared.headers


# --- plain http: loopback only, for every client (runtime/egress.py cleartext_problem) ---------------------------
class ListeningSocket:
    """A TCP listener on 127.0.0.1 that answers nothing: stands for a proxy or a server, and tells whether anyone
    connected (and with `answer`, answers every connection with it: a proxy refusing CONNECT)."""

    def __init__(self, answer: bytes | None = None) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.received = b""
        self.answer = answer
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                self.received += data
                if self.answer is not None:
                    conn.sendall(self.answer)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("url", ["https://iam.twilio.com", "https://10.0.0.5:8443/v1", "http://127.0.0.1:8080/token",
                                 "http://127.3.2.1", "http://localhost:9000", "HTTP://LOCALHOST", "http://[::1]:80/x"])
def test_https_and_loopback_http_may_be_sent(url):
    assert cleartext_problem(url) is None


@pytest.mark.parametrize("url, words", [
    ("http://iam.twilio.example/v1", "http://iam.twilio.example is plain http"),
    ("http://10.0.0.5:8080", "http://10.0.0.5:8080 is plain http"),
    ("http://192.168.1.10:5000/", "plain http"),
    ("http://foo.localhost:8080", "plain http"),  # *.localhost is resolved, not necessarily to loopback
    ("http://admin:hunter2@10.0.0.5", "http://10.0.0.5 is plain http"),
    ("ftp://files.example", "not an https URL"),
    ("iam.example.com", "not an https URL"),
])
def test_plain_http_off_loopback_is_refused(url, words):
    problem = cleartext_problem(url)
    assert problem is not None and words in problem and "https" in problem
    assert "hunter2" not in problem


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/token", "http://127.3.2.1", "http://localhost:9000", "HTTP://LOCALHOST",
                                 "http://[::1]:80/x", "http://foo.localhost:8080", "http://10.0.0.5:8080", "http://[::2]"])
def test_one_loopback_rule_for_cleartext_and_the_oidc_issuer(url):
    """api/loopback.py is the one definition: localhost, 127.0.0.0/8, ::1 (not *.localhost)."""
    assert is_loopback_http(url) == (cleartext_problem(url) is None)
    assert is_loopback_http(url) is (urlsplit(url).hostname in ("127.0.0.1", "127.3.2.1", "localhost", "::1"))
    if is_loopback_http(url) or urlsplit(url).hostname == "foo.localhost":  # never proxied
        assert proxy({"HTTP_PROXY": "http://proxy:3128"}, url) is None
    else:
        assert proxy({"HTTP_PROXY": "http://proxy:3128"}, url) == "http://proxy:3128"


def test_the_requests_adapter_refuses_plain_http_off_loopback_before_any_connection():
    """Twilio's and GCP's sessions: the Basic auth with the master token (or the admin's bearer) never leaves, not
    even to the proxy; loopback http still works, and a redirect to plain http off loopback is refused too."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import requests

    proxy_socket = ListeningSocket()

    class Redirecting(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/ok":
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
                return
            self.send_response(302)
            self.send_header("Location", "http://203.0.113.7/v1/Keys")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirecting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"HTTP_PROXY": proxy_socket.url, "HTTPS_PROXY": proxy_socket.url}
        session = Egress(ProxySettings.from_environ(env)).configure_requests(requests.Session())
        for url in ("http://203.0.113.7/v1/Keys", "http://iam.twilio.example/v1/Keys"):
            with pytest.raises(requests.RequestException) as caught:
                session.get(url, auth=("AC" + "0" * 32, "twilio-master-token"), timeout=5)
            assert "plain http" in str(caught.value) and "twilio-master-token" not in str(caught.value)
            assert provider_tls_error(caught.value, url) == str(caught.value)  # the providers' message
        loopback = f"http://127.0.0.1:{server.server_address[1]}"
        assert session.get(f"{loopback}/ok", timeout=5).text == "ok"  # loopback: directly, never the proxy
        with pytest.raises(requests.RequestException, match="plain http"):
            session.get(f"{loopback}/redirect", auth=("AC", "twilio-master-token"), timeout=5)
        assert proxy_socket.connections == 0
    finally:
        server.shutdown()
        proxy_socket.close()


def test_the_aiohttp_transport_refuses_plain_http_off_loopback_before_any_connection():
    import asyncio

    from workspace_secrets.oauth.base import ProviderMisconfigured
    from workspace_secrets.oauth.github import GitHubEnterprise
    from workspace_secrets.oauth.protocol import TokenSet
    from workspace_secrets.runtime.http import AiohttpTransport, CleartextRefused, Request
    from workspace_secrets.runtime.sensitive import Sensitive

    proxy_socket = ListeningSocket()

    async def scenario() -> None:
        transport = AiohttpTransport(egress=Egress(ProxySettings.from_environ({"HTTP_PROXY": proxy_socket.url})))
        try:
            with pytest.raises(CleartextRefused) as caught:
                await transport.send(Request("POST", "http://10.0.0.5:8200/v1/auth/oidc/callback?code=c0de",
                                             {"Authorization": "Bearer hvs.secret-token"}))
            assert "plain http" in str(caught.value) and "secret-token" not in str(caught.value) and "c0de" not in str(caught.value)
            # An OAuth provider reports it as the platform's misconfiguration (not an outage retried for ever).
            provider = GitHubEnterprise(transport, host="http://git.corp.example")
            with pytest.raises(ProviderMisconfigured, match="plain http"):
                await provider.identity(TokenSet(Sensitive("ghp_secret")))
        finally:
            await transport.close()

    try:
        asyncio.run(scenario())
        assert proxy_socket.connections == 0
    finally:
        proxy_socket.close()


def test_transport_errors_say_the_configured_proxy_and_log_which(caplog):
    """What reaches a UserToken's condition (tenant-readable) does not name the platform's proxy; the operator's
    log does."""
    import asyncio
    import logging

    from workspace_secrets.runtime.http import AiohttpTransport, Request, TransportError

    refusing = ListeningSocket(answer=b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    closed = ListeningSocket()
    closed_url = closed.url
    closed.close()  # nothing listens there any more: the connection to the proxy is refused

    async def send(proxy_url: str) -> str:
        transport = AiohttpTransport(egress=Egress(ProxySettings.from_environ({"HTTPS_PROXY": proxy_url})))
        try:
            with pytest.raises(TransportError) as caught:
                await transport.send(Request("GET", "https://git.corp.example/api/v3/user"), timeout=10)
            return str(caught.value)
        finally:
            await transport.close()

    try:
        with caplog.at_level(logging.INFO, logger="workspace_secrets.runtime.http"):
            refused = asyncio.run(send(refusing.url))
            unreachable = asyncio.run(send(closed_url))
    finally:
        refusing.close()
    assert "the configured proxy refused it (403)" in refused, refused
    assert "via the configured proxy" in unreachable, unreachable
    for message in (refused, unreachable):
        assert "127.0.0.1" not in message and "proxy http" not in message
    assert refusing.received.startswith(b"CONNECT git.corp.example:443")
    assert f"127.0.0.1:{refusing.port}" in caplog.text and closed_url in caplog.text
