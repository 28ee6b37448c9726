"""The admission webhook's serving certificate: a private CA and a serving certificate it signs (pure).

The API server verifies the webhook against the `caBundle` of the webhook configuration. The operator
keeps a long-lived CA (so the caBundle rarely changes) and a one-year serving certificate for the names
the API server uses (a Service's DNS names in-cluster, 127.0.0.1 in development), renewed a month before
it expires with the same CA. The clock is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from workspace_secrets.api import constants as c
from workspace_secrets.runtime import pki
from workspace_secrets.runtime.sensitive import Sensitive

CA_VALIDITY = timedelta(days=3650)
SERVING_VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=30)
_BACKDATE = timedelta(minutes=5)  # tolerate clock skew between the operator and the API server


@dataclass(frozen=True)
class CertificateAuthority:
    cert_pem: bytes
    key_pem: Sensitive


@dataclass(frozen=True)
class ServingCertificate:
    cert_pem: bytes
    key_pem: Sensitive


def service_hosts(namespace: str, name: str) -> list[str]:
    """The names under which the API server reaches a Service (it dials `<name>.<namespace>.svc`)."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


def new_ca(now: datetime) -> CertificateAuthority:
    key = pki.new_key()
    cert = pki.self_signed_ca(key, f"{c.OPERATOR_NAME} webhook CA", not_before=now - _BACKDATE, not_after=now + CA_VALIDITY)
    return CertificateAuthority(cert.public_bytes(serialization.Encoding.PEM), Sensitive(_key_pem(key)))


def issue(ca: CertificateAuthority, hosts: Sequence[str], now: datetime) -> ServingCertificate:
    """A serving certificate for `hosts` (DNS names and IP addresses), signed by `ca`."""
    if not hosts:
        raise ValueError("a serving certificate needs at least one host name or IP address")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem.reveal(), password=None)
    key = pki.new_key()
    cert = pki.sign_leaf(ca_cert, ca_key, key, hosts[0], hosts=hosts, server=True,  # type: ignore[arg-type]
                         not_before=now - _BACKDATE, not_after=now + SERVING_VALIDITY)
    return ServingCertificate(cert.public_bytes(serialization.Encoding.PEM), Sensitive(_key_pem(key)))


def ca_problem(ca_cert_pem: bytes | None, now: datetime) -> str | None:
    """Why the CA must be replaced, or None when it can sign another serving certificate."""
    if not ca_cert_pem:
        return "no CA yet"
    try:
        cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError:
        return "the CA certificate does not parse"
    if cert.not_valid_after_utc - now < SERVING_VALIDITY:
        return f"the CA expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def serving_problem(cert_pem: bytes | None, ca_cert_pem: bytes | None, hosts: Sequence[str], now: datetime) -> str | None:
    """Why the serving certificate must be (re)issued, or None when it is good for `hosts` for a while yet."""
    if not cert_pem or not ca_cert_pem:
        return "no serving certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError:
        return "the serving certificate does not parse"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return "the serving certificate is not signed by the CA"
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        return f"the serving certificate expires on {cert.not_valid_after_utc:%Y-%m-%d}"
    covered = set(cert_hosts(cert_pem))
    missing = [h for h in hosts if pki.normalize_host(h) not in covered]
    if missing:
        return f"the serving certificate does not cover {', '.join(missing)}"
    return None


def cert_hosts(cert_pem: bytes) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def key_matches(cert_pem: bytes, key_pem: Sensitive) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem.reveal(), password=None)
    except (ValueError, TypeError):
        return False
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
