"""The control plane's PKI helpers, checked without starting any process.

A wrong SAN or a missing O=system:masters shows up at e2e time as an opaque TLS or 403 error; these
tests pin the properties the apiserver and clients rely on.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcluster.controlplane import (
    ADMIN_GROUP,
    CONTROLLER_MANAGER_USER,
    KUBERNETES_SERVICE_IP,
    PKI,
    generate_pki,
    issue_certificate,
    new_ca,
    render_kubeconfig,
)


@pytest.fixture(scope="module")
def pki() -> PKI:
    return generate_pki()


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(ext.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return dns, ips


def _eku(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_ca_is_a_self_signed_ca(pki: PKI) -> None:
    ca = pki.ca.cert
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    ca.verify_directly_issued_by(ca)


@pytest.mark.parametrize("which", ["apiserver", "admin", "controller_manager"])
def test_ca_signs_every_leaf(pki: PKI, which: str) -> None:
    leaf = getattr(pki, which).cert
    leaf.verify_directly_issued_by(pki.ca.cert)  # raises if the signature or issuer is wrong
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_serving_cert_sans(pki: PKI) -> None:
    dns, ips = _sans(pki.apiserver.cert)
    assert {"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"} <= dns
    assert {"127.0.0.1", KUBERNETES_SERVICE_IP} <= ips
    assert ExtendedKeyUsageOID.SERVER_AUTH in _eku(pki.apiserver.cert)


def test_admin_cert_is_in_system_masters(pki: PKI) -> None:
    subject = pki.admin.cert.subject
    assert [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == [ADMIN_GROUP]
    assert ADMIN_GROUP == "system:masters"
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _eku(pki.admin.cert)


def test_controller_manager_identity(pki: PKI) -> None:
    subject = pki.controller_manager.cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CONTROLLER_MANAGER_USER
    assert not subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _eku(pki.controller_manager.cert)


def test_service_account_key_is_rsa(pki: PKI) -> None:
    assert isinstance(pki.service_account_key, rsa.RSAPrivateKey)
    assert pki.service_account_key.key_size >= 2048


def test_leaf_from_another_ca_does_not_verify(pki: PKI) -> None:
    # Same CA name, different key: only the signature check can tell them apart.
    other = issue_certificate(new_ca(), "x", client=True)
    with pytest.raises(InvalidSignature):
        other.cert.verify_directly_issued_by(pki.ca.cert)


def test_certificate_needs_a_purpose() -> None:
    with pytest.raises(ValueError):
        issue_certificate(new_ca(), "nobody")


def test_written_private_keys_are_owner_only(pki: PKI, tmp_path: Path) -> None:
    paths = pki.write(tmp_path / "pki")
    keys = (paths.apiserver_key, paths.admin_key, paths.controller_manager_key, paths.service_account_key)
    for key in keys:
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    assert not list((tmp_path / "pki").glob("ca.key")), "the CA key is not needed on disk"
    loaded = x509.load_pem_x509_certificate(paths.apiserver_cert.read_bytes())
    loaded.verify_directly_issued_by(x509.load_pem_x509_certificate(paths.ca_cert.read_bytes()))
    serialization.load_pem_public_key(paths.service_account_pub.read_bytes())


def test_kubeconfig_embeds_the_admin_identity(pki: PKI) -> None:
    text = render_kubeconfig("https://127.0.0.1:6443", pki.ca.cert_pem(), pki.admin, user="wso-admin")
    assert "current-context: wso-local" in text
    assert "server: https://127.0.0.1:6443" in text
    embedded = next(line.split(": ", 1)[1] for line in text.splitlines() if "client-certificate-data" in line)
    assert x509.load_pem_x509_certificate(base64.b64decode(embedded)) == pki.admin.cert


def test_front_proxy_ca_is_separate(pki: PKI) -> None:
    # Request-header auth trusts this CA's leaves as any user: it must not be the client CA.
    assert pki.front_proxy_ca.cert.public_key() != pki.ca.cert.public_key()
    with pytest.raises((ValueError, InvalidSignature)):  # ValueError: issuer name differs
        pki.admin.cert.verify_directly_issued_by(pki.front_proxy_ca.cert)
