"""The local cluster's PKI helpers (and the node's configuration), checked without starting any process.

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

from devcluster import network, node
from devcluster.controlplane import (
    ADMIN_GROUP,
    CONTROLLER_MANAGER_USER,
    KUBERNETES_SERVICE_IP,
    NODE_IP,
    NODE_NAME,
    PKI,
    generate_pki,
    issue_certificate,
    new_ca,
    render_kubeconfig,
)
from devcluster.pki import PKIPaths


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


@pytest.mark.parametrize("which", ["apiserver", "admin", "controller_manager", "scheduler", "kube_proxy", "kubelet",
                                   "kubelet_serving", "apiserver_kubelet_client"])
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
    keys = [getattr(paths, f) for f in vars(paths) if f.endswith("_key")]
    assert len(keys) == 9
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


# --- the node's identities -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_pki() -> PKI:
    return generate_pki(NODE_IP)


def _subject(cert: x509.Certificate) -> tuple[str, list[str]]:
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return str(cn), [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]


def test_with_a_node_the_apiserver_serves_the_node_ip_too(node_pki: PKI) -> None:
    # Pods reach the API server through the `kubernetes` Service (KUBERNETES_SERVICE_IP) whose endpoint is the node IP.
    _, ips = _sans(node_pki.apiserver.cert)
    assert {"127.0.0.1", KUBERNETES_SERVICE_IP, NODE_IP} <= ips


def test_node_identities_are_the_ones_rbac_and_the_node_authorizer_know(node_pki: PKI) -> None:
    assert _subject(node_pki.kubelet.cert) == (f"system:node:{NODE_NAME}", ["system:nodes"])
    assert _subject(node_pki.kube_proxy.cert) == ("system:kube-proxy", [])  # bound to system:node-proxier
    assert _subject(node_pki.scheduler.cert) == ("system:kube-scheduler", [])
    # The API server's identity towards the kubelet (exec, logs): authorized by the kubelet's SubjectAccessReview.
    assert _subject(node_pki.apiserver_kubelet_client.cert)[1] == ["system:masters"]
    for pair in (node_pki.kubelet, node_pki.kube_proxy, node_pki.scheduler, node_pki.apiserver_kubelet_client):
        assert _eku(pair.cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_kubelet_serving_cert_is_for_the_node_ip_only(node_pki: PKI) -> None:
    dns, ips = _sans(node_pki.kubelet_serving.cert)
    assert (dns, ips) == ({NODE_NAME}, {NODE_IP})
    assert _eku(node_pki.kubelet_serving.cert) == {ExtendedKeyUsageOID.SERVER_AUTH}


def test_kubelet_config_is_authenticated_and_fits_hybrid_cgroup_v1_hosts(tmp_path: Path) -> None:
    paths = node.node_paths(tmp_path)
    config = node.kubelet_config(paths, PKIPaths.under(tmp_path / "pki"), port=10250, healthz_port=10248)
    assert config["address"] == NODE_IP and config["readOnlyPort"] == 0 and config["healthzBindAddress"] == "127.0.0.1"
    assert config["authentication"]["anonymous"] == {"enabled": False}
    assert config["authorization"] == {"mode": "Webhook"}
    assert (config["failCgroupV1"], config["cgroupDriver"], config["cgroupsPerQOS"], config["enforceNodeAllocatable"]) \
        == (False, "cgroupfs", False, [])
    assert config["syncFrequency"] == node.KUBELET_SYNC_FREQUENCY == "1m"
    # Everything the kubelet writes stays in the work directory (pod logs included).
    assert config["podLogsDir"].startswith(str(tmp_path))


def test_containerd_and_cni_config_keep_the_machine_as_it_is(tmp_path: Path) -> None:
    paths = node.node_paths(tmp_path)
    toml = node.containerd_config(paths, "localhost/wso/pause:dev")
    assert "restrict_oom_score_adj = true" in toml and 'BinaryName = "/usr/sbin/runc"' in toml
    assert 'stream_server_address = "127.0.0.1"' in toml
    for line in toml.splitlines():
        if '"/' in line and not line.strip().startswith(("BinaryName", "bin_dir")):
            assert str(tmp_path) in line, line
    bridge = node.cni_config(paths)["plugins"][0]
    # isGateway would make the plugin turn on net.ipv4.ip_forward for the whole machine; no masquerading.
    assert (bridge["bridge"], bridge["isGateway"], bridge["ipMasq"]) == (network.BRIDGE, False, False)
    assert bridge["ipam"]["dataDir"].startswith(str(tmp_path))


def test_kube_proxy_changes_no_machine_wide_setting(tmp_path: Path) -> None:
    config = node.kube_proxy_config(node.node_paths(tmp_path), healthz_port=1, metrics_port=2)
    assert config["iptables"]["localhostNodePorts"] is False  # no net.ipv4.conf.all.route_localnet
    assert config["conntrack"]["maxPerCore"] == 0 and config["conntrack"]["min"] == 0  # no nf_conntrack_max
    assert config["nodePortAddresses"] == [f"{NODE_IP}/32"]
    assert config["healthzBindAddress"].startswith("127.0.0.1:")
