"""A private CA for the enterprise-network tests: a CA no system store holds, and TLS server contexts it signs
(unit tests: tests/unit/test_private_ca.py; e2e: tests/e2e/test_enterprise_network.py)."""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from workspace_secrets.runtime import pki


def _pem(cert) -> str:  # type: ignore[no-untyped-def]
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class PrivateCA:
    """A corporate CA of the test: its certificate (PEM) and what it signs."""

    name: str = "Example Corp Private CA"

    def __post_init__(self) -> None:
        now = datetime.now(timezone.utc)
        self._key = pki.new_key()
        self._cert = pki.self_signed_ca(self._key, self.name, not_before=now - timedelta(minutes=5), not_after=now + timedelta(days=2))
        self.cert_pem = _pem(self._cert)

    def write(self, directory: Path, name: str = "ca.pem") -> Path:
        path = directory / name
        path.write_text(self.cert_pem)
        return path

    def server_context(self, *hosts: str) -> ssl.SSLContext:
        """A server context whose certificate this CA signed, for `hosts` (DNS names or IP addresses)."""
        now = datetime.now(timezone.utc)
        key = pki.new_key()
        leaf = pki.sign_leaf(self._cert, self._key, key, hosts[0], not_before=now - timedelta(minutes=5),
                             not_after=now + timedelta(days=1), hosts=hosts, server=True)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as d:
            chain, key_path = Path(d) / "tls.crt", Path(d) / "tls.key"
            chain.write_text(_pem(leaf))
            key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
            context.load_cert_chain(chain, key_path)
        return context
