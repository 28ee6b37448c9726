"""The local cluster's PKI: one CA signs every serving and client certificate; keys are made in-process.

Generated with ``cryptography`` (no openssl/cfssl dependency) and unit-testable without starting anything. The
CA's private key is never written: every certificate is issued up front, so nothing on disk can mint an identity.

Kubernetes' x509 authenticator maps a client certificate's CN to the user name and each O to a group:

* admin (O=system:masters), the controller-manager, the scheduler and kube-proxy (their RBAC users);
* the kubelet, ``system:node:<node>`` in ``system:nodes`` (the Node authorizer's identity);
* the API server's client certificate for the kubelet (exec, logs, port-forward), in ``system:masters``.

Serving certificates: the API server (loopback, the node IP, the ``kubernetes`` Service's ClusterIP and its DNS
names) and the kubelet (the node IP and name; the API server verifies it with ``--kubelet-certificate-authority``).

The certificates are built by the repository's one PKI module, ``workspace_secrets.runtime.pki`` (pure: only
``cryptography``), which the operator's webhook certificates use too. That is the only operator module the
launcher imports, so starting a cluster never imports kopf or the code under test.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from workspace_secrets.runtime import pki as x509_pki

CONTEXT_NAME: Final = "wso-local"
#: Private and next to the node's other ranges (network.py checks it is unused and routes it to the bridge).
SERVICE_CLUSTER_IP_RANGE: Final = "10.203.0.0/24"
#: First address of the service range: the ``kubernetes.default`` Service's ClusterIP.
KUBERNETES_SERVICE_IP: Final = "10.203.0.1"
APISERVER_DNS_NAMES: Final = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IP_ADDRESSES: Final = ("127.0.0.1", KUBERNETES_SERVICE_IP)
ADMIN_USER: Final = "wso-admin"
ADMIN_GROUP: Final = "system:masters"
CONTROLLER_MANAGER_USER: Final = "system:kube-controller-manager"
SCHEDULER_USER: Final = "system:kube-scheduler"
KUBE_PROXY_USER: Final = "system:kube-proxy"
APISERVER_KUBELET_CLIENT_USER: Final = "kube-apiserver-kubelet-client"
NODES_GROUP: Final = "system:nodes"
#: The node's name (one node per machine).
NODE_NAME: Final = "wso-node"


def kubelet_user(node_name: str = NODE_NAME) -> str:
    """The kubelet's user name: what the Node authorizer and NodeRestriction recognise."""
    return f"system:node:{node_name}"


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

#: Backdating absorbs small clock differences between processes (and CI hosts).
_BACKDATE: Final = dt.timedelta(hours=1)
DEFAULT_VALIDITY: Final = dt.timedelta(days=365)


@dataclass(frozen=True)
class KeyPair:
    """A private key with its certificate."""

    key: PrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return _private_key_pem(self.key)


def _private_key_pem(key: PrivateKey) -> bytes:
    # TraditionalOpenSSL ("RSA PRIVATE KEY" / "EC PRIVATE KEY") is accepted by every Kubernetes key
    # flag, by Go's crypto/tls and by Python's ssl module.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def new_ca(common_name: str = "wso-local-ca", *, validity: dt.timedelta = DEFAULT_VALIDITY) -> KeyPair:
    """A self-signed CA that signs the serving and client certificates of one control plane."""
    key = x509_pki.new_key()
    now = dt.datetime.now(dt.timezone.utc)
    return KeyPair(key, x509_pki.self_signed_ca(key, common_name, not_before=now - _BACKDATE, not_after=now + validity))


def issue_certificate(
    ca: KeyPair,
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    server: bool = False,
    client: bool = False,
    validity: dt.timedelta = DEFAULT_VALIDITY,
) -> KeyPair:
    """A leaf certificate signed by ``ca``.

    Kubernetes' x509 authenticator maps the subject's CN to the user name and each O to a group,
    which is how the admin (O=system:masters) and the controller-manager identities are expressed.
    """
    if not isinstance(ca.key, ec.EllipticCurvePrivateKey):
        raise TypeError("the local cluster's CA key is P-256")
    key = x509_pki.new_key()
    now = dt.datetime.now(dt.timezone.utc)
    cert = x509_pki.sign_leaf(
        ca.cert, ca.key, key, common_name, organizations=organizations, hosts=[*dns_names, *ip_addresses],
        server=server, client=client, not_before=now - _BACKDATE, not_after=now + validity,
    )
    return KeyPair(key, cert)


def new_service_account_key() -> rsa.RSAPrivateKey:
    """The key that signs ServiceAccount tokens (RSA: what every token consumer expects)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class PKI:
    """Every credential one cluster needs."""

    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    service_account_key: rsa.RSAPrivateKey
    #: Trust anchor for the apiserver's request-header (front-proxy) authentication. Configured only
    #: so components reading ``extension-apiserver-authentication`` find a complete config instead
    #: of logging errors; its key is never written, so nobody can mint front-proxy identities.
    front_proxy_ca: KeyPair
    #: The node's identities (used only when the cluster has a node; cheap to make, so always made).
    scheduler: KeyPair
    kube_proxy: KeyPair
    kubelet: KeyPair
    kubelet_serving: KeyPair
    apiserver_kubelet_client: KeyPair

    def write(self, directory: Path) -> PKIPaths:
        """Write the files the processes read; private keys are mode 0600.

        The CAs' private keys are not written: nothing in the cluster signs certificates.
        """
        paths = PKIPaths.under(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write(paths.ca_cert, self.ca.cert_pem())
        _write(paths.front_proxy_ca_cert, self.front_proxy_ca.cert_pem())
        for name in _LEAVES:
            pair: KeyPair = getattr(self, name)
            _write(getattr(paths, f"{name}_cert"), pair.cert_pem())
            _write(getattr(paths, f"{name}_key"), pair.key_pem(), private=True)
        _write(paths.service_account_key, _private_key_pem(self.service_account_key), private=True)
        _write(
            paths.service_account_pub,
            self.service_account_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        return paths


#: The leaf key pairs of :class:`PKI`, written as ``<name>.crt``/``<name>.key`` (dashes for underscores).
_LEAVES: Final = (
    "apiserver",
    "admin",
    "controller_manager",
    "scheduler",
    "kube_proxy",
    "kubelet",
    "kubelet_serving",
    "apiserver_kubelet_client",
)


@dataclass(frozen=True)
class PKIPaths:
    """The fixed layout of ``<workdir>/pki`` (fixed so a recorded run can be re-attached)."""

    ca_cert: Path
    front_proxy_ca_cert: Path
    apiserver_cert: Path
    apiserver_key: Path
    admin_cert: Path
    admin_key: Path
    controller_manager_cert: Path
    controller_manager_key: Path
    scheduler_cert: Path
    scheduler_key: Path
    kube_proxy_cert: Path
    kube_proxy_key: Path
    kubelet_cert: Path
    kubelet_key: Path
    kubelet_serving_cert: Path
    kubelet_serving_key: Path
    apiserver_kubelet_client_cert: Path
    apiserver_kubelet_client_key: Path
    service_account_key: Path
    service_account_pub: Path

    @classmethod
    def under(cls, directory: Path) -> PKIPaths:
        files = {"ca_cert": "ca.crt", "front_proxy_ca_cert": "front-proxy-ca.crt",
                 "service_account_key": "sa.key", "service_account_pub": "sa.pub"}
        for name in _LEAVES:
            stem = name.replace("_", "-")
            files[f"{name}_cert"] = f"{stem}.crt"
            files[f"{name}_key"] = f"{stem}.key"
        return cls(**{f.name: directory / files[f.name] for f in fields(cls)})


def generate_pki(node_ip: str | None = None, node_name: str = NODE_NAME) -> PKI:
    """CA, serving certificates, client certificates, the SA signing key, and a separate front-proxy CA.

    ``node_ip``: the node's address, added to the API server's certificate (pods reach the API server there,
    through the ``kubernetes`` Service) and put in the kubelet's serving certificate.
    """
    ca = new_ca()
    node_ips = (node_ip,) if node_ip else ()
    return PKI(
        ca=ca,
        apiserver=issue_certificate(
            ca,
            "kube-apiserver",
            dns_names=APISERVER_DNS_NAMES,
            ip_addresses=(*APISERVER_IP_ADDRESSES, *node_ips),
            server=True,
        ),
        admin=issue_certificate(ca, ADMIN_USER, organizations=[ADMIN_GROUP], client=True),
        controller_manager=issue_certificate(ca, CONTROLLER_MANAGER_USER, client=True),
        service_account_key=new_service_account_key(),
        front_proxy_ca=new_ca("wso-local-front-proxy-ca"),
        scheduler=issue_certificate(ca, SCHEDULER_USER, client=True),
        kube_proxy=issue_certificate(ca, KUBE_PROXY_USER, client=True),
        kubelet=issue_certificate(ca, kubelet_user(node_name), organizations=[NODES_GROUP], client=True),
        kubelet_serving=issue_certificate(
            ca, node_name, dns_names=(node_name,), ip_addresses=node_ips or ("127.0.0.1",), server=True
        ),
        apiserver_kubelet_client=issue_certificate(
            ca, APISERVER_KUBELET_CLIENT_USER, organizations=[ADMIN_GROUP], client=True
        ),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    # Create with the final mode, so a private key is never briefly world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def render_kubeconfig(server: str, ca_cert: bytes, client: KeyPair, *, user: str) -> str:
    """A self-contained kubeconfig (certificates embedded), context ``wso-local``.

    Written as YAML by hand because the format is fixed and the launcher must not need PyYAML.
    """

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return (
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: {CONTEXT_NAME}\n"
        "  cluster:\n"
        f"    server: {server}\n"
        f"    certificate-authority-data: {b64(ca_cert)}\n"
        "users:\n"
        f"- name: {user}\n"
        "  user:\n"
        f"    client-certificate-data: {b64(client.cert_pem())}\n"
        f"    client-key-data: {b64(client.key_pem())}\n"
        "contexts:\n"
        f"- name: {CONTEXT_NAME}\n"
        "  context:\n"
        f"    cluster: {CONTEXT_NAME}\n"
        f"    user: {user}\n"
        f"current-context: {CONTEXT_NAME}\n"
        "preferences: {}\n"
    )
