"""The webhook's certificate directory: read what is there -> decide (tls.py) -> write.

Two modes, told apart by the files (see docs/operators/running.md):

- **provided**: `tls.crt` + `tls.key` (and optionally `ca.crt`) from elsewhere, e.g. a cert-manager
  Certificate's Secret mounted read-only. Used as they are; the caBundle is `ca.crt` (else `tls.crt`).
- **managed** (anything else, e.g. an empty or emptyDir directory): the operator keeps its own CA in
  `ca.crt`/`ca.key` and a serving certificate in `serving.pem` (certificate and key in one file, so one
  rename swaps both: the webhook server re-reads its files when they change and must never see a
  certificate with the other one's key).

kopf's webhook server watches these files and, when they change, restarts with them and republishes the
caBundle into the webhook configuration.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from workspace_secrets.runtime.webhook import tls
from workspace_secrets.api.conditions import utcnow
from workspace_secrets.runtime.sensitive import Sensitive

log = logging.getLogger(__name__)

PROVIDED_CERT, PROVIDED_KEY, PROVIDED_CA = "tls.crt", "tls.key", "ca.crt"
MANAGED_CA_CERT, MANAGED_CA_KEY, MANAGED_SERVING = "ca.crt", "ca.key", "serving.pem"


@dataclass(frozen=True)
class CertFiles:
    """What the webhook server loads: its certificate chain and key, and the caBundle for the API server."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    managed: bool


class WebhookCertificates:
    def __init__(self, directory: Path, hosts: Sequence[str], *, clock: Callable[[], datetime] = utcnow) -> None:
        self.directory = directory
        self.hosts = list(hosts)
        self._clock = clock

    @property
    def provided(self) -> bool:
        d = self.directory
        return (d / PROVIDED_CERT).is_file() and (d / PROVIDED_KEY).is_file() and not (d / MANAGED_CA_KEY).exists()

    def ensure(self) -> CertFiles:
        """Make the directory hold a usable certificate for `hosts`; return the files to serve. Idempotent:
        a valid certificate is kept (so the caBundle does not change on every restart)."""
        d = self.directory
        if self.provided:
            ca = d / PROVIDED_CA if (d / PROVIDED_CA).is_file() else d / PROVIDED_CERT
            problem = tls.serving_problem((d / PROVIDED_CERT).read_bytes(), ca.read_bytes(), self.hosts, self._clock())
            if problem:  # not ours to fix: whoever provides the files renews them
                log.warning("webhook certificate in %s (provided): %s", d, problem)
            return CertFiles(d / PROVIDED_CERT, d / PROVIDED_KEY, ca, managed=False)

        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        now = self._clock()
        ca_cert, ca_key = _read(d / MANAGED_CA_CERT), _read(d / MANAGED_CA_KEY)
        ca_problem = tls.ca_problem(ca_cert, now) or (None if ca_key and tls.key_matches(ca_cert or b"", Sensitive(ca_key)) else "the CA key is missing or does not match")
        if ca_problem:
            log.info("webhook certificate authority: %s; creating a new one in %s", ca_problem, d)
            ca = tls.new_ca(now)
            _write(d / MANAGED_CA_KEY, ca.key_pem.reveal(), private=True)
            _write(d / MANAGED_CA_CERT, ca.cert_pem)
        else:
            assert ca_cert is not None and ca_key is not None
            ca = tls.CertificateAuthority(ca_cert, Sensitive(ca_key))

        serving = _read(d / MANAGED_SERVING)
        cert_pem, key_pem = _split_pem(serving or b"")
        problem = tls.serving_problem(cert_pem, ca.cert_pem, self.hosts, now)
        if problem is None and not tls.key_matches(cert_pem or b"", Sensitive(key_pem or b"")):
            problem = "the serving key does not match its certificate"
        if problem:
            log.info("webhook serving certificate: %s; issuing one for %s", problem, ", ".join(self.hosts))
            cert = tls.issue(ca, self.hosts, now)
            _write(d / MANAGED_SERVING, cert.cert_pem + cert.key_pem.reveal(), private=True)
        return CertFiles(d / MANAGED_SERVING, d / MANAGED_SERVING, d / MANAGED_CA_CERT, managed=True)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _split_pem(data: bytes) -> tuple[bytes | None, bytes | None]:
    """(certificate, private key) PEM blocks of a combined file."""
    cert_start, key_start = data.find(b"-----BEGIN CERTIFICATE-----"), data.find(b"-----BEGIN PRIVATE KEY-----")
    if cert_start < 0 or key_start < 0:
        return None, None
    if cert_start < key_start:
        return data[cert_start:key_start], data[key_start:]
    return data[cert_start:], data[key_start:cert_start]


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Atomic replace: readers see the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
