"""A throwaway local Kubernetes control plane: etcd + kube-apiserver + kube-controller-manager.

This plays the role controller-runtime's envtest plays for Go operators, with one difference that
matters for this operator: the kube-controller-manager runs too. The operator relies on the garbage
collector (ownerReferences on the Secrets it creates) and on Deployments turning into ReplicaSets and
Pods, so an apiserver alone would let tests pass that fail on a real cluster.

Design notes (the *why*):

* Everything is loopback-only and lives in one temporary work directory (PKI, etcd data, logs, pid
  files, kubeconfigs), so a run leaves nothing behind and never exposes an API to the network.
* Certificates are generated in-process with ``cryptography``: no openssl/cfssl dependency, and the
  helpers are unit-testable without starting anything.
* Each server runs in its own session/process group, so a Ctrl-C in the test terminal does not reach
  it half-way and it can be signalled as a group.
* Processes can outlive their launcher (``pytest`` killed by a timeout, or ``wso-controlplane up``,
  which is *meant* to outlive it). Every run is therefore recorded under
  ``${XDG_STATE_HOME:-~/.local/state}/workspace-secrets-operator/``, and later starts reap runs whose
  launcher is gone. A process is only ever signalled after checking that its ``/proc/<pid>/cmdline``
  still names the recorded binary *and* the run's work directory, so pid reuse can never make us kill
  an unrelated process; nothing is ever killed by name.
* Only the standard library and ``cryptography`` are used, and kopf is never imported, so the launcher
  can start a cluster for the operator without importing the code under test.

Binaries come from ``tools/build-tools.sh`` (built from source at pinned versions and cached), from
``$WSO_BIN_DIR``, or from an explicit ``bin_dir``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import datetime as dt
import fcntl
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# --------------------------------------------------------------------------------------------------
# Constants and locations
# --------------------------------------------------------------------------------------------------

#: Repository root, found from this file: tools/devcluster/controlplane.py.
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BUILD_TOOLS_SCRIPT: Final = REPO_ROOT / "tools" / "build-tools.sh"

#: Binaries the launcher itself runs (build-tools.sh also builds kubectl and helm, for tests and users).
SERVER_BINARIES: Final = ("etcd", "kube-apiserver", "kube-controller-manager")

CONTEXT_NAME: Final = "wso-local"
SERVICE_CLUSTER_IP_RANGE: Final = "10.0.0.0/24"
#: First address of the service range: the ``kubernetes.default`` Service's ClusterIP.
KUBERNETES_SERVICE_IP: Final = "10.0.0.1"
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"
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

#: The default-on admission plugins that matter for what the operator does; listed explicitly so a
#: change of upstream defaults does not silently change test behaviour.
ADMISSION_PLUGINS: Final = (
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "DefaultTolerationSeconds",
    "ResourceQuota",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
)

#: File written into every work directory we create; stale-run cleanup removes a directory only if
#: this marker names the run being cleaned, so a corrupted state file can never make us rmtree
#: something else.
WORKDIR_MARKER: Final = ".wso-controlplane"
STATE_FILE_NAME: Final = "controlplane.json"
RUNS_DIR_NAME: Final = "runs"

#: Set to 1 to keep the work directory (logs, etcd data) after stop or a failed start.
KEEP_ENV: Final = "WSO_CONTROLPLANE_KEEP"
BIN_DIR_ENV: Final = "WSO_BIN_DIR"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started, reached, or stopped."""


def state_dir() -> Path:
    """Where runs are recorded: ``${XDG_STATE_HOME:-~/.local/state}/workspace-secrets-operator``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "workspace-secrets-operator"


def pinned_versions(script: Path = BUILD_TOOLS_SCRIPT) -> dict[str, str]:
    """The versions pinned in ``tools/build-tools.sh`` (K8S_VERSION, ETCD_VERSION, HELM_VERSION).

    Read from the script rather than duplicated here, so tests asserting versions cannot drift from
    what is actually built.
    """
    versions: dict[str, str] = {}
    for line in script.read_text().splitlines():
        match = re.match(r"^([A-Z0-9_]+_VERSION)=(\S+)\s*$", line)
        if match:
            versions[match.group(1)] = match.group(2).strip("'\"")
    return versions


def _build_lock_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "workspace-secrets-operator" / ".build.lock"


def resolve_bin_dir(bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the directory holding the pinned binaries, building them if needed.

    Order: the explicit argument, ``$WSO_BIN_DIR``, then ``tools/build-tools.sh`` (which prints its
    cached bin directory and only builds what is missing). The build is serialized with a file lock
    because two concurrent builds would write the same temporary outputs.
    """
    if bin_dir is None and os.environ.get(BIN_DIR_ENV):
        bin_dir = os.environ[BIN_DIR_ENV]
    if bin_dir is None:
        if not BUILD_TOOLS_SCRIPT.is_file():
            raise ControlPlaneError(
                f"{BUILD_TOOLS_SCRIPT} not found (installed outside the repo?); set ${BIN_DIR_ENV} "
                "to a directory holding etcd, kube-apiserver, kube-controller-manager, kubectl, helm"
            )
        lock_path = _build_lock_path()
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # stderr (build progress) goes to ours; stdout carries the bin dir.
            result = subprocess.run(
                ["bash", str(BUILD_TOOLS_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
            )
        if result.returncode != 0:
            raise ControlPlaneError(f"{BUILD_TOOLS_SCRIPT} failed with exit code {result.returncode}")
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        if not lines:
            raise ControlPlaneError(f"{BUILD_TOOLS_SCRIPT} printed no bin directory")
        bin_dir = lines[-1].strip()
    path = Path(bin_dir).resolve()
    missing = [b for b in SERVER_BINARIES if not os.access(path / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{path} lacks executable {', '.join(missing)}")
    return path


# --------------------------------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------------------------------

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


def _new_ec_key() -> ec.EllipticCurvePrivateKey:
    # P-256: fast to generate (RSA-2048 takes ~100 ms per key) and supported by all TLS stacks used.
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(common_name: str = "wso-local-ca", *, validity: dt.timedelta = DEFAULT_VALIDITY) -> KeyPair:
    """A self-signed CA that signs the serving and client certificates of one control plane."""
    key = _new_ec_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(key, cert)


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
    if not (server or client):
        raise ValueError("a certificate must be for server and/or client authentication")
    key = _new_ec_key()
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    now = dt.datetime.now(dt.timezone.utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            ),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return KeyPair(key, builder.sign(ca.key, hashes.SHA256()))


def new_service_account_key() -> rsa.RSAPrivateKey:
    """The key that signs ServiceAccount tokens (RSA: what every token consumer expects)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class PKI:
    """Every credential one control plane needs."""

    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    service_account_key: rsa.RSAPrivateKey
    #: Trust anchor for the apiserver's request-header (front-proxy) authentication. Configured only
    #: so components reading ``extension-apiserver-authentication`` find a complete config instead
    #: of logging errors; its key is never written, so nobody can mint front-proxy identities.
    front_proxy_ca: KeyPair

    def write(self, directory: Path) -> PKIPaths:
        """Write the files the processes read; private keys are mode 0600.

        The CAs' private keys are not written: nothing in the control plane signs certificates.
        """
        paths = PKIPaths.under(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write(paths.ca_cert, self.ca.cert_pem())
        _write(paths.front_proxy_ca_cert, self.front_proxy_ca.cert_pem())
        _write(paths.apiserver_cert, self.apiserver.cert_pem())
        _write(paths.apiserver_key, self.apiserver.key_pem(), private=True)
        _write(paths.admin_cert, self.admin.cert_pem())
        _write(paths.admin_key, self.admin.key_pem(), private=True)
        _write(paths.controller_manager_cert, self.controller_manager.cert_pem())
        _write(paths.controller_manager_key, self.controller_manager.key_pem(), private=True)
        _write(paths.service_account_key, _private_key_pem(self.service_account_key), private=True)
        _write(
            paths.service_account_pub,
            self.service_account_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        return paths


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
    service_account_key: Path
    service_account_pub: Path

    @classmethod
    def under(cls, directory: Path) -> PKIPaths:
        return cls(
            ca_cert=directory / "ca.crt",
            front_proxy_ca_cert=directory / "front-proxy-ca.crt",
            apiserver_cert=directory / "apiserver.crt",
            apiserver_key=directory / "apiserver.key",
            admin_cert=directory / "admin.crt",
            admin_key=directory / "admin.key",
            controller_manager_cert=directory / "controller-manager.crt",
            controller_manager_key=directory / "controller-manager.key",
            service_account_key=directory / "sa.key",
            service_account_pub=directory / "sa.pub",
        )


def generate_pki() -> PKI:
    """CA, apiserver serving cert, admin and controller-manager client certs, SA signing key, and
    a separate front-proxy CA."""
    ca = new_ca()
    return PKI(
        ca=ca,
        apiserver=issue_certificate(
            ca,
            "kube-apiserver",
            dns_names=APISERVER_DNS_NAMES,
            ip_addresses=APISERVER_IP_ADDRESSES,
            server=True,
        ),
        admin=issue_certificate(ca, ADMIN_USER, organizations=[ADMIN_GROUP], client=True),
        controller_manager=issue_certificate(ca, CONTROLLER_MANAGER_USER, client=True),
        service_account_key=new_service_account_key(),
        front_proxy_ca=new_ca("wso-local-front-proxy-ca"),
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


# --------------------------------------------------------------------------------------------------
# Processes (pid-verified: never signal a pid without checking what it is)
# --------------------------------------------------------------------------------------------------


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an exited child waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_our_process(pid: int, binary: str, workdir: str) -> bool:
    """The pid runs ``binary`` (as argv[0]) with an argument inside ``workdir``.

    Both checks together make pid reuse harmless: an unrelated process would have to run the same
    binary *and* reference our randomly named work directory.
    """
    if pid <= 1 or pid == os.getpid() or not _pid_running(pid):
        return False
    argv = _cmdline(pid)
    prefix = workdir.rstrip("/") + "/"
    return bool(argv) and argv[0] == binary and any(prefix in arg for arg in argv[1:])


def _signal(pid: int, sig: int) -> None:
    """Signal the process group if ``pid`` leads one (ours always do), else just the process."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """The TCP (v4 and v6) addresses ``pid`` listens on, from /proc; used to check loopback binding."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found: list[tuple[str, int]] = []
    for table, family in (("tcp", 4), ("tcp6", 6)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                    continue
                hex_addr, hex_port = cols[1].split(":")
                raw = bytes.fromhex(hex_addr)
                if family == 4:
                    addr = str(ipaddress.IPv4Address(raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    addr = str(ipaddress.IPv6Address(words))
                found.append((addr, int(hex_port, 16)))
    return found


def _free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel hands out for 127.0.0.1, all held open at once so they are distinct.

    There is an unavoidable window between closing them and the servers binding; with ephemeral
    ports it is small enough in practice.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# --------------------------------------------------------------------------------------------------
# Run records
# --------------------------------------------------------------------------------------------------


@dataclass
class ProcessRecord:
    name: str
    pid: int
    binary: str


@dataclass
class RunRecord:
    """What is needed to find, health-check and stop a run later, possibly from another process."""

    run_id: str
    workdir: str
    owns_workdir: bool
    detached: bool
    owner_pid: int
    owner_start_time: int | None
    bin_dir: str
    kubeconfig: str = ""
    server: str = ""
    processes: list[ProcessRecord] = field(default_factory=list)
    #: Each component's arguments, so it can be restarted on the same ports, certs and data dir.
    commands: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        data: dict[str, Any] = json.loads(text)
        data["processes"] = [ProcessRecord(**p) for p in data.get("processes", [])]
        return cls(**data)

    def owner_alive(self) -> bool:
        """The launcher that started this run still runs (pid *and* start time match)."""
        return _pid_running(self.owner_pid) and _proc_start_time(self.owner_pid) == self.owner_start_time

    def live_processes(self) -> list[ProcessRecord]:
        return [p for p in self.processes if _is_our_process(p.pid, p.binary, self.workdir)]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_record(path: Path) -> RunRecord | None:
    try:
        return RunRecord.from_json(path.read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize launchers' reads and writes of the run registry."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _terminate(processes: Sequence[ProcessRecord], workdir: str, timeout: float) -> None:
    """SIGTERM each verified process group, wait, SIGKILL what remains, wait again.

    Processes are stopped one by one in the given order (controller-manager, apiserver, etcd) so
    clients go before the servers they would otherwise retry against.
    """
    for proc in processes:
        if not _is_our_process(proc.pid, proc.binary, workdir):
            continue
        _signal(proc.pid, signal.SIGTERM)
        if _wait_gone(proc.pid, timeout):
            continue
        if _is_our_process(proc.pid, proc.binary, workdir):  # re-verify before escalating
            _signal(proc.pid, signal.SIGKILL)
            _wait_gone(proc.pid, timeout)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Reap it if it is our child (no-op otherwise); a zombie counts as gone.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _pid_running(pid):
            return True
        time.sleep(0.05)
    return not _pid_running(pid)


def _remove_workdir(record: RunRecord) -> None:
    """Remove a run's work directory, but only one we created and that carries our marker."""
    workdir = Path(record.workdir)
    if not record.owns_workdir or os.environ.get(KEEP_ENV) == "1":
        return
    try:
        marker = (workdir / WORKDIR_MARKER).read_text().strip()
    except OSError:
        return
    if marker == record.run_id:
        shutil.rmtree(workdir, ignore_errors=True)


def reap_stale_runs(directory: Path | None = None) -> list[str]:
    """Stop and forget runs whose launcher is gone (e.g. a pytest session that was killed).

    Skipped: runs whose launcher is still alive (a concurrent test session), and the detached run the
    CLI state file points at (``wso-controlplane up`` is meant to outlive its launcher; ``down``
    stops it). Returns the run ids cleaned up. Must be called with the registry lock held.
    """
    directory = directory or state_dir()
    current = _read_record(directory / STATE_FILE_NAME)
    cleaned: list[str] = []
    for path in sorted((directory / RUNS_DIR_NAME).glob("*.json")):
        record = _read_record(path)
        if record is None:
            path.unlink(missing_ok=True)
            continue
        if record.owner_alive():
            continue
        if record.detached and current is not None and current.run_id == record.run_id:
            continue
        _terminate(list(reversed(record.processes)), record.workdir, timeout=10)
        _remove_workdir(record)
        path.unlink(missing_ok=True)
        cleaned.append(record.run_id)
    if current is not None and not (directory / RUNS_DIR_NAME / f"{current.run_id}.json").exists():
        (directory / STATE_FILE_NAME).unlink(missing_ok=True)
    return cleaned


# --------------------------------------------------------------------------------------------------
# The control plane
# --------------------------------------------------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager on loopback, in a temporary directory.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``detached=True`` (the CLI's
    ``up``) leaves the processes running when the Python process exits; otherwise they are stopped at
    interpreter exit as a safety net.
    """

    def __init__(
        self,
        bin_dir: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        *,
        detached: bool = False,
        timeout: float = 120.0,
        registry: Path | None = None,
        controller_manager_args: tuple[str, ...] = (),
    ) -> None:
        self._bin_dir_arg = bin_dir
        # Extra kube-controller-manager flags (the benchmark raises the garbage collector's API rate).
        self._controller_manager_args = tuple(controller_manager_args)
        self._workdir_arg = Path(workdir).resolve() if workdir is not None else None
        self._detached = detached
        self._timeout = timeout
        self._registry = registry or state_dir()
        self._record: RunRecord | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._atexit_registered = False
        #: Seconds spent in each start phase, and ``total`` (start() call to ready).
        self.timings: dict[str, float] = {}

    # ---- attributes valid once started (or attached) ----

    def _require(self) -> RunRecord:
        if self._record is None:
            raise ControlPlaneError("control plane not started")
        return self._record

    @property
    def workdir(self) -> Path:
        return Path(self._require().workdir)

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (context ``wso-local``, user in ``system:masters``)."""
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return self._require().server

    @property
    def bin_dir(self) -> Path:
        return Path(self._require().bin_dir)

    @property
    def pki(self) -> PKIPaths:
        return PKIPaths.under(self.workdir / "pki")

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def processes(self) -> list[ProcessRecord]:
        return list(self._require().processes) if self._record else []

    @property
    def run_id(self) -> str:
        return self._require().run_id

    @classmethod
    def attach(cls, record: RunRecord, *, registry: Path | None = None) -> ControlPlane:
        """A handle on a run started elsewhere (the CLI's ``down``/``status``); pid-verified stops."""
        plane = cls(
            bin_dir=record.bin_dir, workdir=record.workdir, detached=record.detached, registry=registry
        )
        plane._record = record
        return plane

    # ---- lifecycle ----

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Start etcd, the apiserver and the controller-manager; return once all three are usable."""
        if self._record is not None:
            raise ControlPlaneError("control plane already started")
        t0 = time.monotonic()
        bin_dir = resolve_bin_dir(self._bin_dir_arg)
        self.timings["resolve_bin_dir"] = time.monotonic() - t0

        t_start = time.monotonic()
        with _locked(self._registry):
            reap_stale_runs(self._registry)
            workdir, owns = self._make_workdir()
            run_id = uuid.uuid4().hex[:12]
            (workdir / WORKDIR_MARKER).write_text(run_id + "\n")
            self._record = RunRecord(
                run_id=run_id,
                workdir=str(workdir),
                owns_workdir=owns,
                detached=self._detached,
                owner_pid=os.getpid(),
                owner_start_time=_proc_start_time(os.getpid()),
                bin_dir=str(bin_dir),
            )
            # Recorded before anything is spawned, so even a launcher killed mid-start is reaped.
            self._save_record()
        if not self._detached:
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        try:
            self._start_processes()
        except BaseException as exc:
            tails = self.logs_tail(40)
            self.stop()
            if isinstance(exc, ControlPlaneError | subprocess.SubprocessError | OSError):
                raise ControlPlaneError(f"{exc}\n{tails}") from exc
            raise
        self.timings["total"] = time.monotonic() - t_start
        return self

    def _make_workdir(self) -> tuple[Path, bool]:
        if self._workdir_arg is None:
            return Path(tempfile.mkdtemp(prefix="wso-controlplane-")).resolve(), True
        self._workdir_arg.mkdir(parents=True, exist_ok=True)
        return self._workdir_arg, False

    def _start_processes(self) -> None:
        record = self._require()
        workdir = self.workdir
        for sub in ("logs", "pids", "etcd", "apiserver-certs", "controller-manager-certs"):
            (workdir / sub).mkdir(mode=0o700, exist_ok=True)

        phase = time.monotonic()
        pki = generate_pki()
        paths = pki.write(workdir / "pki")
        etcd_client, etcd_peer, apiserver_port, cm_port = _free_loopback_ports(4)
        record.server = f"https://127.0.0.1:{apiserver_port}"
        ca_pem = pki.ca.cert_pem()
        admin_config = render_kubeconfig(record.server, ca_pem, pki.admin, user=ADMIN_USER)
        _write(self.kubeconfig, admin_config.encode(), private=True)
        cm_kubeconfig = workdir / "controller-manager.kubeconfig"
        cm_config = render_kubeconfig(record.server, ca_pem, pki.controller_manager, user=CONTROLLER_MANAGER_USER)
        _write(cm_kubeconfig, cm_config.encode(), private=True)
        record.kubeconfig = str(self.kubeconfig)
        self._save_record()
        self.timings["pki"] = time.monotonic() - phase

        phase = time.monotonic()
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        peer_url = f"http://127.0.0.1:{etcd_peer}"
        self._spawn(
            "etcd",
            [
                "--name=wso",
                f"--data-dir={workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=wso={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # throwaway data: durability buys nothing, fsync costs a lot
                "--log-level=warn",
            ],
        )
        self._wait_for("etcd /health", lambda: self._etcd_healthy(etcd_client))
        self.timings["etcd"] = time.monotonic() - phase

        phase = time.monotonic()
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--secure-port={apiserver_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # 1.37 refuses a loopback advertise address with the default (lease) endpoint
                # reconciler ("may not be in the loopback range"). Nothing in-cluster can reach the
                # apiserver anyway (there is no kubelet), so the `kubernetes` Service needs no
                # endpoints.
                "--endpoint-reconciler-type=none",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                f"--client-ca-file={paths.ca_cert}",
                f"--tls-cert-file={paths.apiserver_cert}",
                f"--tls-private-key-file={paths.apiserver_key}",
                f"--service-account-key-file={paths.service_account_pub}",
                f"--service-account-signing-key-file={paths.service_account_key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
                f"--cert-dir={workdir / 'apiserver-certs'}",
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={paths.front_proxy_ca_cert}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                "--profiling=false",
            ],
        )
        self._wait_for("kube-apiserver /readyz", lambda: self._get("/readyz") == (200, "ok"))
        self.timings["kube-apiserver"] = time.monotonic() - phase

        phase = time.monotonic()
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={cm_kubeconfig}",
                f"--authentication-kubeconfig={cm_kubeconfig}",
                f"--authorization-kubeconfig={cm_kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={cm_port}",
                f"--cert-dir={workdir / 'controller-manager-certs'}",
                "--controllers=*",
                f"--service-account-private-key-file={paths.service_account_key}",
                f"--root-ca-file={paths.ca_cert}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--profiling=false",
                *self._controller_manager_args,
            ],
        )
        # The `default` ServiceAccount is created by the serviceaccount controller: its appearance
        # proves the controller-manager authenticated, synced its informers and runs controllers.
        self._wait_for(
            "the controller-manager to create ServiceAccount default/default",
            lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        )
        self.timings["kube-controller-manager"] = time.monotonic() - phase

    # ---- fault injection: stop and restart one component (same ports, certificates, data) ----

    def stop_component(self, name: str, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop one server: SIGTERM (a clean shutdown) or, with ``kill``, SIGKILL (a crash).

        Its clients see what they would see in a real cluster: refused connections, then the same
        server back on the same address with the same data once :meth:`start_component` runs.
        """
        record = self._require()
        proc = self._component(name)
        if not _is_our_process(proc.pid, proc.binary, record.workdir):
            return  # already gone
        if kill:
            _signal(proc.pid, signal.SIGKILL)
            _wait_gone(proc.pid, timeout)
        else:
            _terminate([proc], record.workdir, timeout)
        popen = self._children.pop(proc.pid, None)
        if popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=1)

    def start_component(self, name: str) -> None:
        """Start a stopped server again with the arguments of its first start; wait until it serves."""
        record = self._require()
        proc = self._component(name)
        if _is_our_process(proc.pid, proc.binary, record.workdir):
            raise ControlPlaneError(f"{name} is still running (pid {proc.pid}); stop it first")
        args = record.commands.get(name)
        if not args:
            raise ControlPlaneError(f"no recorded command line for {name}; was it started by this launcher?")
        self._spawn(name, args)
        self._wait_for(f"{name} to serve again", self._readiness(name, args))

    def restart(self, name: str, *, kill: bool = False, down_for: float = 0.0) -> None:
        """Stop ``name`` (SIGKILL with ``kill``), keep it down for ``down_for`` seconds, start it again."""
        self.stop_component(name, kill=kill)
        if down_for > 0:
            time.sleep(down_for)
        self.start_component(name)

    def _component(self, name: str) -> ProcessRecord:
        if name not in SERVER_BINARIES:
            raise ControlPlaneError(f"unknown component {name!r}; one of {', '.join(SERVER_BINARIES)}")
        for proc in self._require().processes:
            if proc.name == name:
                return proc
        raise ControlPlaneError(f"{name} was never started")

    def _readiness(self, name: str, args: Sequence[str]) -> Callable[[], bool]:
        if name == "etcd":
            url = _flag(args, "--listen-client-urls")
            port = int(url.rsplit(":", 1)[1])
            return lambda: self._etcd_healthy(port)
        if name == "kube-apiserver":
            return lambda: self._get("/readyz") == (200, "ok")
        port = int(_flag(args, "--secure-port"))
        return lambda: _https_ok(port, "/healthz")

    def _spawn(self, name: str, args: list[str]) -> None:
        record = self._require()
        binary = str(Path(record.bin_dir) / name)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            popen = subprocess.Popen(
                [binary, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=record.workdir,
                start_new_session=True,  # own process group: no stray Ctrl-C, group-wide signals
            )
        self._children[popen.pid] = popen
        # A restarted component replaces its old record (same position: stop order stays reversed start order).
        entry = ProcessRecord(name=name, pid=popen.pid, binary=binary)
        for index, proc in enumerate(record.processes):
            if proc.name == name:
                record.processes[index] = entry
                break
        else:
            record.processes.append(entry)
        record.commands[name] = list(args)
        (self.workdir / "pids" / f"{name}.pid").write_text(f"{popen.pid}\n")
        self._save_record()

    def _wait_for(self, what: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until true; fail fast if any of our processes exits meanwhile."""
        deadline = time.monotonic() + self._timeout
        while True:
            for proc in self._require().processes:
                popen = self._children.get(proc.pid)
                if popen is not None and popen.poll() is not None:
                    raise ControlPlaneError(
                        f"{proc.name} exited with code {popen.returncode} while waiting for {what}"
                    )
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out after {self._timeout:.0f}s waiting for {what}")
            time.sleep(0.1)

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            return response.status == 200 and json.loads(response.read()).get("health") == "true"
        finally:
            conn.close()

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return context

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET ``path`` from the apiserver as the admin user; (status, body)."""
        port = int(self.server.rsplit(":", 1)[1])
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=self._ssl_context(), timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace").strip()
        finally:
            conn.close()

    def healthy(self) -> bool:
        """All three processes run (pid-verified) and the apiserver reports ready."""
        record = self._record
        if record is None or len(record.live_processes()) != len(SERVER_BINARIES):
            return False
        try:
            return self._get("/readyz") == (200, "ok")
        except (OSError, http.client.HTTPException, ssl.SSLError):
            return False

    def stop(self, keep: bool = False, timeout: float = 10.0) -> None:
        """Stop all processes (controller-manager first, etcd last) and forget the run.

        The work directory is removed if the launcher created it, unless ``keep`` (or
        ``$WSO_CONTROLPLANE_KEEP=1``). Safe to call more than once.
        """
        record = self._record
        if record is None:
            return
        if self._atexit_registered:
            atexit.unregister(self._stop_at_exit)
            self._atexit_registered = False
        _terminate(list(reversed(record.processes)), record.workdir, timeout)
        for popen in self._children.values():  # reap our own children
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=1)
        self._children.clear()
        with _locked(self._registry):
            if not keep:
                _remove_workdir(record)
            (self._registry / RUNS_DIR_NAME / f"{record.run_id}.json").unlink(missing_ok=True)
            current = _read_record(self._registry / STATE_FILE_NAME)
            if current is not None and current.run_id == record.run_id:
                (self._registry / STATE_FILE_NAME).unlink(missing_ok=True)
        self._record = None

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def _save_record(self) -> None:
        record = self._require()
        _atomic_write(self._registry / RUNS_DIR_NAME / f"{record.run_id}.json", record.to_json())

    def save_state(self) -> Path:
        """Make this run the CLI's current one (``down``/``status`` act on it)."""
        record = self._require()
        path = self._registry / STATE_FILE_NAME
        with _locked(self._registry):
            _atomic_write(path, record.to_json())
        return path

    # ---- diagnostics ----

    def logs_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of each process log, for failure reports.

        The servers run at default verbosity, which does not log request bodies, so Secret values do
        not reach these logs.
        """
        if self._record is None:
            return "(control plane not started)"
        parts: list[str] = []
        for proc in self._record.processes:
            path = self.log_dir / f"{proc.name}.log"
            parts.append(f"----- {proc.name} (pid {proc.pid}) {path} -----")
            parts.append(_tail(path, lines) or "(empty)")
        return "\n".join(parts) if parts else "(no processes started)"


def _flag(args: Sequence[str], name: str) -> str:
    for arg in args:
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise ControlPlaneError(f"{name} not found in the recorded command line")


def _https_ok(port: int, path: str) -> bool:
    """GET an HTTPS health endpoint on loopback that serves a self-signed certificate (the
    controller-manager's); only the status matters, so the certificate is not verified."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 256 * 1024))
            data = log.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------------------------------
# CLI: wso-controlplane up | down | status
# --------------------------------------------------------------------------------------------------


def _current(registry: Path) -> ControlPlane | None:
    record = _read_record(registry / STATE_FILE_NAME)
    return ControlPlane.attach(record, registry=registry) if record else None


def _print_kubeconfig(plane: ControlPlane, out: IO[str]) -> None:
    print(plane.kubeconfig, file=out)
    print(f"export KUBECONFIG={plane.kubeconfig}", file=out)


def _cmd_up(args: argparse.Namespace) -> int:
    registry = state_dir()
    existing = _current(registry)
    if existing is not None:
        if existing.healthy():
            print(f"control plane already running at {existing.server}", file=sys.stderr)
            _print_kubeconfig(existing, sys.stdout)
            return 0
        print("recorded control plane is not healthy; stopping its remains", file=sys.stderr)
        existing.stop()
    plane = ControlPlane(bin_dir=args.bin_dir, workdir=args.workdir, detached=True, timeout=args.timeout)
    plane.start()
    plane.save_state()
    print(
        f"control plane ready at {plane.server} in {plane.timings['total']:.1f}s (workdir {plane.workdir})",
        file=sys.stderr,
    )
    _print_kubeconfig(plane, sys.stdout)
    return 0


def _cmd_down(_: argparse.Namespace) -> int:
    plane = _current(state_dir())
    if plane is None:
        print("no control plane recorded", file=sys.stderr)
        return 0
    pids = ", ".join(f"{p.name}={p.pid}" for p in plane.processes)
    plane.stop()
    print(f"stopped control plane ({pids})", file=sys.stderr)
    return 0


def _cmd_status(_: argparse.Namespace) -> int:
    plane = _current(state_dir())
    if plane is None:
        print("no control plane recorded")
        return 1
    record = plane._require()
    live = {p.pid for p in record.live_processes()}
    healthy = plane.healthy()
    print(f"{'healthy' if healthy else 'NOT healthy'}: {plane.server}")
    print(f"workdir:    {plane.workdir}")
    print(f"kubeconfig: {plane.kubeconfig}")
    for proc in record.processes:
        print(f"  {proc.name:<24} pid {proc.pid:<8} {'running' if proc.pid in live else 'gone'}")
    return 0 if healthy else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``wso-controlplane up|down|status``: a long-lived local control plane for development."""
    parser = argparse.ArgumentParser(prog="wso-controlplane", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (detached) and print the kubeconfig; reuse a healthy one")
    up.add_argument("--bin-dir", help=f"binaries directory (default: ${BIN_DIR_ENV} or tools/build-tools.sh)")
    up.add_argument("--workdir", help="work directory (default: a new temporary directory)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each component")
    up.set_defaults(func=_cmd_up)
    sub.add_parser("down", help="stop the recorded control plane").set_defaults(func=_cmd_down)
    sub.add_parser("status", help="show the recorded control plane").set_defaults(func=_cmd_status)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ControlPlaneError as exc:
        print(f"wso-controlplane: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
