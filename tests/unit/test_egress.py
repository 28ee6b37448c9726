"""Which proxy an outgoing request goes through (runtime/egress.py, pure): HTTPS_PROXY/HTTP_PROXY/NO_PROXY as the
Python clients read them, loopback never proxied, bad proxy settings refused without echoing a password."""

from __future__ import annotations

import pytest

from workspace_secrets.runtime.egress import ProxyConfigError, ProxySettings
from workspace_secrets.runtime.http import Egress


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
