"""The webhook's serving certificate: issued, kept, renewed, and accepted by a real TLS client."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import datetime, timedelta, timezone

import pytest

from workspace_secrets.runtime.webhook.certs import WebhookCertificates
from workspace_secrets.runtime.webhook import tls

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def handshake(cert_file, key_file, ca_file, server_hostname: str) -> None:
    """A TLS handshake over a socket pair: the client verifies the chain and the host name, as the API
    server does against the webhook configuration's caBundle."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(str(cert_file), str(key_file))
    client_ctx = ssl.create_default_context(cafile=str(ca_file))
    left, right = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(left, server_side=True) as s:
                s.recv(1)
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(right, server_hostname=server_hostname) as s:
            s.sendall(b"x")
    finally:
        thread.join(5)


def test_managed_certificate_is_accepted_for_its_hosts_only(tmp_path):
    files = WebhookCertificates(tmp_path / "certs", ["127.0.0.1"]).ensure()
    assert files.managed and files.cert_file == files.key_file  # one file: never a cert with the other key
    handshake(files.cert_file, files.key_file, files.ca_file, "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(files.cert_file, files.key_file, files.ca_file, "10.0.0.9")
    assert (tmp_path / "certs" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert files.cert_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "certs").stat().st_mode & 0o777 == 0o700


def test_service_certificate_covers_the_service_dns_names(tmp_path):
    hosts = tls.service_hosts("wso-system", "wso-webhook")
    files = WebhookCertificates(tmp_path, hosts).ensure()
    assert set(tls.cert_hosts(files.cert_file.read_bytes())) == set(hosts)
    handshake(files.cert_file, files.key_file, files.ca_file, "wso-webhook.wso-system.svc")


def test_a_valid_certificate_is_kept_across_restarts(tmp_path):
    first = WebhookCertificates(tmp_path, ["127.0.0.1"], clock=lambda: NOW).ensure()
    before = (first.cert_file.read_bytes(), first.ca_file.read_bytes())
    again = WebhookCertificates(tmp_path, ["127.0.0.1"], clock=lambda: NOW + timedelta(days=100)).ensure()
    assert (again.cert_file.read_bytes(), again.ca_file.read_bytes()) == before


def test_renewal_before_expiry_keeps_the_ca(tmp_path):
    WebhookCertificates(tmp_path, ["127.0.0.1"], clock=lambda: NOW).ensure()
    ca_before = (tmp_path / "ca.crt").read_bytes()
    serving_before = (tmp_path / "serving.pem").read_bytes()
    later = NOW + tls.SERVING_VALIDITY - tls.RENEW_BEFORE + timedelta(days=1)
    assert tls.serving_problem(serving_before, ca_before, ["127.0.0.1"], later) is not None
    WebhookCertificates(tmp_path, ["127.0.0.1"], clock=lambda: later).ensure()
    assert (tmp_path / "ca.crt").read_bytes() == ca_before  # the caBundle does not change
    assert (tmp_path / "serving.pem").read_bytes() != serving_before
    assert tls.serving_problem((tmp_path / "serving.pem").read_bytes(), ca_before, ["127.0.0.1"], later) is None


def test_new_hosts_get_a_new_certificate(tmp_path):
    WebhookCertificates(tmp_path, ["127.0.0.1"]).ensure()
    files = WebhookCertificates(tmp_path, ["127.0.0.1", "webhook.example"]).ensure()
    assert set(tls.cert_hosts(files.cert_file.read_bytes())) == {"127.0.0.1", "webhook.example"}


def test_a_damaged_serving_file_is_replaced(tmp_path):
    files = WebhookCertificates(tmp_path, ["127.0.0.1"]).ensure()
    files.cert_file.write_bytes(b"garbage")
    files = WebhookCertificates(tmp_path, ["127.0.0.1"]).ensure()
    handshake(files.cert_file, files.key_file, files.ca_file, "127.0.0.1")


def test_provided_certificates_are_used_as_they_are(tmp_path):
    ca = tls.new_ca(datetime.now(timezone.utc))
    cert = tls.issue(ca, ["webhook.example"], datetime.now(timezone.utc))
    (tmp_path / "tls.crt").write_bytes(cert.cert_pem)
    (tmp_path / "tls.key").write_bytes(cert.key_pem.reveal())
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    before = sorted(p.name for p in tmp_path.iterdir())
    files = WebhookCertificates(tmp_path, ["other.example"]).ensure()  # a mismatch is only logged
    assert not files.managed
    assert (files.cert_file.name, files.key_file.name, files.ca_file.name) == ("tls.crt", "tls.key", "ca.crt")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    handshake(files.cert_file, files.key_file, files.ca_file, "webhook.example")


def test_the_serving_certificate_never_outlives_its_ca():
    ca = tls.new_ca(NOW - tls.CA_VALIDITY + timedelta(days=10))
    assert tls.ca_problem(ca.cert_pem, NOW) is not None
    assert tls.ca_problem(tls.new_ca(NOW).cert_pem, NOW) is None


def test_key_repr_is_masked():
    cert = tls.issue(tls.new_ca(NOW), ["127.0.0.1"], NOW)
    assert "PRIVATE" not in repr(cert) and "PRIVATE" not in str(cert.key_pem)
