"""What a loopback host is (pure), the one definition: `localhost`, 127.0.0.0/8 or ::1.

Plain http is accepted for loopback hosts only (runtime/egress.py `cleartext_problem`, an oidc issuer), and a
request to one never goes through a proxy. `*.localhost` is not loopback here: such a name is resolved, not
necessarily to a loopback address (the proxy rule bypasses it as well, on top of this one)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address (127.0.0.0/8, ::1; an IPv6 address with or without its brackets)."""
    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_loopback_http(url: str) -> bool:
    """A plain-http URL to a loopback host."""
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and is_loopback_host(parts.hostname or "")
