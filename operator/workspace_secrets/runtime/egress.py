"""Which forward proxy an outgoing request goes through (pure): HTTPS_PROXY / HTTP_PROXY / NO_PROXY, read the way
the Python clients the operator already uses read them (lower case before upper case), with Go's two safeguards.

- `https_proxy`/`HTTPS_PROXY` for https URLs, `http_proxy`/`HTTP_PROXY` for http URLs (no fallback from one to the
  other); an empty value is unset. A proxy is `http://[user:password@]host[:port]` (`host:port` means http):
  https targets go through it in a CONNECT tunnel, so the proxy sees the target's host and port and nothing of the
  TLS session inside (no token, no client secret). Other proxy schemes (https://, socks5://) are refused at start.
- `no_proxy`/`NO_PROXY`: comma- or space-separated; `*` bypasses the proxy for every host; `example.com`,
  `.example.com` and `*.example.com` each match example.com and its subdomains; an IP address or a CIDR block
  (`10.0.0.0/8`, `fd00::/8`) matches addresses in it; an entry may end in `:port` to match that port only.
- Loopback (`localhost`, 127.0.0.0/8, ::1) is never proxied (as in Go's net/http): plain http is accepted for
  loopback hosts only, so a request in clear never passes through a proxy nor crosses the network.
  `cleartext_problem` is that rule, the one place it is written: every outgoing client enforces it (the aiohttp
  transport and the requests adapter of runtime/http.py refuse such a request before sending anything; each HTTP
  credential provider refuses such an endpoint in its configuration).

The target URL decides everything here; what a URL may be (an OAuthApplication's origin, a provider's configured
endpoint) is checked before a request is made and is the same with or without a proxy.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from workspace_secrets.api.loopback import is_loopback_host  # the only hosts plain http may reach

PROXY_SCHEMES = ("http",)


class ProxyConfigError(ValueError):
    """A proxy variable the operator cannot use (its value is never part of the message: it may hold a password)."""


@dataclass(frozen=True)
class Proxy:
    """A forward proxy: where to connect, and its credentials (Proxy-Authorization), if any."""

    url: str  # http://host:port, without credentials
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"Proxy({self.url})"

    def with_credentials(self) -> str:
        """The URL with its credentials (for clients that take them in the URL: requests, botocore)."""
        if self.username is None:
            return self.url
        from urllib.parse import quote

        userinfo = quote(self.username, safe="") + (":" + quote(self.password or "", safe=""))
        scheme, rest = self.url.split("://", 1)
        return f"{scheme}://{userinfo}@{rest}"


@dataclass(frozen=True)
class _Bypass:
    host: str | None = None  # a DNS suffix (lower case, no leading dot)
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    port: int | None = None

    def matches(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address is not None and address.version == self.network.version and address in self.network
        assert self.host is not None
        return host == self.host or host.endswith("." + self.host)


@dataclass(frozen=True)
class ProxySettings:
    https: Proxy | None = None
    http: Proxy | None = None
    bypass_all: bool = False
    bypass: tuple[_Bypass, ...] = ()
    no_proxy: str = ""  # as given, for the start-up log line

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ProxySettings:
        no_proxy = _variable(environ, "no_proxy")
        entries = [e for e in no_proxy.replace(" ", ",").split(",") if e.strip()]
        return cls(
            https=_proxy(_variable(environ, "https_proxy"), "HTTPS_PROXY"),
            http=_proxy(_variable(environ, "http_proxy"), "HTTP_PROXY"),
            bypass_all="*" in (e.strip() for e in entries),
            bypass=tuple(b for b in (_bypass(e.strip()) for e in entries) if b is not None),
            no_proxy=no_proxy,
        )

    @property
    def configured(self) -> bool:
        return self.https is not None or self.http is not None

    def proxy_for(self, url: str) -> Proxy | None:
        """The proxy a request to `url` goes through, or None: directly."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        proxy = self.https if scheme == "https" else self.http if scheme == "http" else None
        if proxy is None or self.bypass_all:
            return None
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            return None
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            return None  # a malformed port: the client refuses the URL itself
        if is_loopback_host(host) or host.endswith(".localhost"):  # and *.localhost: not proxied, yet not cleartext-safe
            return None
        address = _address(host)
        if any(b.matches(host, address, port) for b in self.bypass):
            return None
        return proxy

    def describe(self) -> str:
        """One log line's worth: the proxies' host:port (never their credentials) and NO_PROXY."""
        parts = [f"{name} {p.url}" for name, p in (("https", self.https), ("http", self.http)) if p is not None]
        if not parts:
            return "no proxy"
        return ", ".join(parts) + (f"; not for {self.no_proxy}" if self.no_proxy else "") + "; never for loopback"


def cleartext_problem(url: str) -> str | None:
    """Why the operator sends nothing to `url` (None: it may): https, or plain http to a loopback host only. A
    request in clear to another host would carry its credentials (an admin token in Basic auth, a bearer token)
    across the network and through any HTTP_PROXY in clear. Names the URL's origin (never its credentials)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        return None
    host = (parts.hostname or "").lower()
    if scheme == "http" and host and is_loopback_host(host):
        return None
    shown = f"{scheme}://{parts.netloc.rpartition('@')[2]}" if scheme and parts.netloc else "a URL without scheme or host"
    if scheme != "http":
        return f"{shown} is not an https URL (plain http only for 127.0.0.1, localhost or [::1])"
    return (f"{shown} is plain http to a host that is not loopback: its credentials would cross the network (and any "
            "HTTP_PROXY) in clear; use an https URL (plain http only for 127.0.0.1, localhost or [::1])")


def _variable(environ: Mapping[str, str], name: str) -> str:
    """The lower-case variable if set and not empty, else the upper-case one (curl, requests and urllib agree)."""
    return (environ.get(name) or environ.get(name.upper()) or "").strip()


def _proxy(value: str, name: str) -> Proxy | None:
    if not value:
        return None
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in PROXY_SCHEMES:
        raise ProxyConfigError(f"{name}: a {scheme}:// proxy is not supported; give an http:// proxy (https targets go "
                               "through it in a CONNECT tunnel, so the TLS session stays end to end)")
    try:
        port = parts.port
    except ValueError:
        raise ProxyConfigError(f"{name}: the proxy's port is not a number") from None
    if not parts.hostname:
        raise ProxyConfigError(f"{name}: no proxy host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyConfigError(f"{name}: a proxy URL is scheme://host:port, without a path")
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    from urllib.parse import unquote

    return Proxy(f"http://{shown}:{port or 80}",
                 unquote(parts.username) if parts.username is not None else None,
                 unquote(parts.password) if parts.password is not None else None)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _bypass(entry: str) -> _Bypass | None:
    if not entry or entry == "*":
        return None
    port: int | None = None
    if entry.startswith("["):  # [v6]:port or [v6]
        host, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        entry = host
    elif entry.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        host, _, maybe_port = entry.partition(":")
        if maybe_port.isdigit():
            entry, port = host, int(maybe_port)
    try:
        return _Bypass(network=ipaddress.ip_network(entry, strict=False), port=port)
    except ValueError:
        pass
    host = entry.lower().rstrip(".")
    for prefix in ("*.", "."):
        if host.startswith(prefix):
            host = host[len(prefix):]
    return _Bypass(host=host, port=port) if host else None
