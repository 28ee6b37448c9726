"""Support for tests/e2e/test_real_node.py: a cluster with a real node, the images imported into it, test
servers on the node IP (sshd serving git, moto), a follower of the operator pods' logs, running commands in
workspace containers, and the secret-hygiene scan of that cluster.

Nothing here listens on 0.0.0.0 or on the machine's real interfaces: the servers bind the node IP (an address
on the launcher's own interface that pods reach through the pod bridge) and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import ClientError
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from backends import Moto
from helpers import tool_env
from operator_process import free_port
from workspace_secrets.api import constants as c
from secret_hygiene import SecretHygiene, report

NAMESPACE_PREFIX = "wso-e2e-node-"
#: The value of the API server's --api-audiences (and issuer) on the local control plane.
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def sha256(value: bytes | str) -> str:
    """The full hex digest, comparable with `sha256sum` inside a container. Never print values, only this."""
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).hexdigest()


class SecretText(str):
    """A secret string whose repr is a digest: pytest prints reprs (fixture arguments, assertion operands and
    call arguments), never str()."""

    def __repr__(self) -> str:
        return f"<secret sha256:{sha256(str(self))[:12]}>"


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call; the message has stderr only (stdout may hold Secret data)."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{(self.stderr or '').strip()[-4000:]}"


@dataclass
class NodeCluster:
    """Handle on the module's own cluster: control plane + node (devcluster), kubectl/helm bound to it."""

    plane: object  # devcluster's ControlPlane started with a node
    kubeconfig: Path
    bin_dir: Path
    scratch: Path
    node_ip: str
    node_name: str
    #: kubectl exec output of the tests (digests and modes only by construction): scanned for leaks too.
    transcripts: list[str] = field(default_factory=list, repr=False)
    #: Namespaces the tests made: their Secrets are the needles of the module's secret-hygiene scan.
    namespaces: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return tool_env(self.kubeconfig, self.scratch, self.bin_dir)

    def run(self, tool: str, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [str(self.bin_dir / tool), *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.env(), timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise CommandError(result.returncode, argv, output=result.stdout, stderr=result.stderr)
        return result

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, input=input, check=check, timeout=timeout)

    def helm(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, input=input, check=check, timeout=timeout)

    def api_client(self) -> k8s.ApiClient:
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def sh(self, namespace: str, pod: str, script: str, *, container: str = "workspace", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a shell script in a container (`kubectl exec`). Scripts must print digests, never values:
        the transcript is scanned for secret values at the end of the module."""
        result = self.kubectl("exec", "-n", namespace, pod, "-c", container, "--", "sh", "-c", script, check=False, timeout=timeout)
        self.transcripts.append(f"$ {script}\n{result.stdout}\n{result.stderr}")
        return result

    def logs_tail(self, lines: int = 30) -> str:
        return self.plane.logs_tail(lines)  # type: ignore[attr-defined]


def create_namespace(node: NodeCluster, labels: dict[str, str] | None = None, prefix: str = NAMESPACE_PREFIX) -> str:
    name = f"{prefix}{secrets.token_hex(3)}"
    with node.api_client() as api:
        core = k8s.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "wso-e2e", **(labels or {})}}})
        deadline = time.monotonic() + 30
        while True:  # pods are refused until the namespace's default ServiceAccount exists
            try:
                core.read_namespaced_service_account("default", name)
                return name
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


# --- servers on the node IP ------------------------------------------------------------------------------
GIT_README = "hello from the test git server on the node\n"


@dataclass
class GitSshd:
    """A test-owned sshd on the node IP serving one bare repository. Keys are authorized with
    `restrict,command="git-shell -c ..."`: a key gets git's upload/receive-pack and nothing else (sshd runs as
    root on this machine, and the key's holder is a pod)."""

    host: str
    port: int
    host_line: str  # what known_hosts must say: "[host]:port ssh-ed25519 AAAA..."
    authorized: Path
    repo: Path
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"ssh://root@{self.host}:{self.port}{self.repo}"

    def authorize(self, *public_keys: str) -> None:
        git_shell = shutil.which("git-shell") or "/usr/bin/git-shell"
        lines = [f'restrict,command="{git_shell} -c \\"$SSH_ORIGINAL_COMMAND\\"" {key.strip()}' for key in public_keys]
        self.authorized.write_text("".join(line + "\n" for line in lines))

    @classmethod
    def start(cls, host: str, workdir: Path) -> GitSshd:
        home = workdir / "sshd"
        home.mkdir(parents=True)
        host_key = home / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        authorized = home / "authorized_keys"
        authorized.write_text("")
        port = free_port(host)
        config = home / "sshd_config"
        config.write_text(
            f"Port {port}\nListenAddress {host}\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n"
            f"PidFile {home / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            "AllowTcpForwarding no\nX11Forwarding no\nPermitTunnel no\nLogLevel VERBOSE\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # the privilege separation directory sshd insists on
        log = home / "sshd.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT)
        repo = workdir / "repo.git"
        subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
        seed = workdir / "seed"
        subprocess.run(["git", "init", "-q", str(seed)], check=True)
        (seed / "README").write_text(GIT_README)
        git = ["git", "-C", str(seed), "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run([*git, "add", "README"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "seed"], check=True)
        subprocess.run([*git, "push", "-q", str(repo), "HEAD:refs/heads/main"], check=True)
        subprocess.run(["git", "--git-dir", str(repo), "symbolic-ref", "HEAD", "refs/heads/main"], check=True)
        deadline = time.monotonic() + 15
        while True:
            probe = subprocess.run(["ssh-keyscan", "-p", str(port), "-t", "ed25519", host], capture_output=True, text=True)
            if probe.stdout.strip():
                break
            if time.monotonic() > deadline or process.poll() is not None:
                process.terminate()
                raise RuntimeError(f"sshd did not start on {host}:{port}: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        host_line = f"[{host}]:{port} " + " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
        return cls(host, port, host_line, authorized, repo, process, log)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class NodeMoto(Moto):
    """tests/e2e/backends.py's moto, on the node IP (the operator pod and workspace pods reach it there), with the
    questions the real-node tests ask of IAM."""

    def identity(self, key_id: str, secret: str) -> str:
        """sts:GetCallerIdentity from this machine: the ARN, or moto's error code."""
        try:
            return self.client("sts", key_id, secret).get_caller_identity()["Arn"]
        except ClientError as exc:
            return exc.response["Error"]["Code"]

    def live_keys(self) -> dict[str, list[str]]:
        """IAM user -> its access key ids, for every user the provider made (path /workspace-secrets/)."""
        admin = self.admin()
        users = admin.list_users(PathPrefix="/workspace-secrets/")["Users"]
        return {u["UserName"]: sorted(k["AccessKeyId"] for k in admin.list_access_keys(UserName=u["UserName"])["AccessKeyMetadata"])
                for u in users}

    def owner_of(self, key_id: str) -> str | None:
        """The IAM user an access key belongs to."""
        return next((user for user, keys in self.live_keys().items() if key_id in keys), None)

    def keys_in_namespace(self, namespace: str) -> dict[str, list[str]]:
        """Like live_keys, for the IAM users tagged with this namespace (every user the provider makes is)."""
        admin = self.admin()
        return {user: keys for user, keys in self.live_keys().items()
                if {"Key": "workspace-secrets.io/namespace", "Value": namespace} in admin.list_user_tags(UserName=user)["Tags"]}

    @classmethod
    def on_node(cls, host: str, workdir: Path) -> NodeMoto:
        moto = cls.start(workdir, host=host, fault_proxy=False)
        moto.admin_secret = SecretText(moto.admin_secret)
        return moto


# --- the operator pods' logs ---------------------------------------------------------------------------------
class PodLogFollower:
    """Follows `kubectl logs -f` of every pod matching a selector, each into `operator-<pod>.log` under
    `directory` (a deleted pod's log is gone from the node: it must be captured while the pod runs). The
    session's secret-hygiene scan picks up `operator*.log` files under pytest's base temp as well."""

    def __init__(self, node: NodeCluster, namespace: str, selector: str, directory: Path, container: str = "operator") -> None:
        self.node, self.namespace, self.selector, self.directory, self.container = node, namespace, selector, directory, container
        self._followers: dict[str, subprocess.Popen] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-log-follower", daemon=True)

    def start(self) -> PodLogFollower:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the next round retries; the logs are checked at the end
                pass
            self._stop.wait(1.0)

    def poll(self) -> None:
        listing = self.node.kubectl("get", "pods", "-n", self.namespace, "-l", self.selector, "-o", "json", check=False, timeout=30)
        if listing.returncode != 0:
            return
        for pod in json.loads(listing.stdout)["items"]:
            name = pod["metadata"]["name"]
            statuses = {s["name"]: s for s in (pod.get("status") or {}).get("containerStatuses") or ()}
            status = statuses.get(self.container) or {}
            state = status.get("state") or {}
            # One follower per container instance (pod, restart count): `logs -f` ends when the container does.
            key = f"{name}#{status.get('restartCount', 0)}"
            if key in self._followers or not ("running" in state or "terminated" in state):
                continue
            out = open(self.directory / f"operator-{name}.log", "ab")
            out.write(f"\n===== {key} =====\n".encode())
            out.flush()
            argv = [str(self.node.bin_dir / "kubectl"), "logs", "-n", self.namespace, name, "-c", self.container]
            if "running" in state:
                argv.insert(2, "-f")
            self._followers[key] = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, env=self.node.env())
            out.close()

    def text(self) -> dict[str, str]:
        return {f"operator log {p}": p.read_text(errors="replace") for p in sorted(self.directory.glob("operator-*.log"))}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for process in self._followers.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()


# --- secret hygiene of this cluster --------------------------------------------------------------------------
def _secret_data(secret: k8s.V1Secret) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


def snapshot(hygiene: SecretHygiene, api: k8s.ApiClient, namespace: str, *, secret_names: list[str] | None = None) -> None:
    """Needles: the namespace's Secrets (or only those named); haystacks: its Events and our objects' status
    and metadata."""
    core = k8s.CoreV1Api(api)
    for secret in core.list_namespaced_secret(namespace).items:
        if secret_names is None or secret.metadata.name in secret_names:
            # Public entries (file paths of delivery Files among them) are no needles: secret_hygiene.is_public_key.
            hygiene.add_secret(namespace, secret.metadata.name, _secret_data(secret))
    for event in core.list_namespaced_event(namespace).items:
        hygiene.add_object(f"Event {namespace}/{event.metadata.name}", api.sanitize_for_serialization(event))
    custom = k8s.CustomObjectsApi(api)
    for obj in custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL).get("items", []):
        meta = obj.get("metadata") or {}
        if (public := (obj.get("status") or {}).get("sshPublicKey")):
            hygiene.add_public(public)
        hygiene.add_object(f"WorkspaceSecret {namespace}/{meta.get('name')}",
                           {"annotations": meta.get("annotations"), "labels": meta.get("labels"), "status": obj.get("status")})


def leaks_report(hygiene: SecretHygiene, extra: dict[str, str]) -> str | None:
    leaks = hygiene.find_leaks(extra)
    return report(leaks) if leaks else None


# --- waiting ---------------------------------------------------------------------------------------------------
def pods(api: k8s.ApiClient, namespace: str, selector: str) -> list[k8s.V1Pod]:
    return k8s.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def running_pod(api: k8s.ApiClient, namespace: str, selector: str) -> k8s.V1Pod | None:
    """The one pod of the selector whose containers all run and are ready (none being deleted)."""
    live = [p for p in pods(api, namespace, selector) if not p.metadata.deletion_timestamp]
    if len(live) != 1:
        return None
    pod = live[0]
    statuses = pod.status.container_statuses or []
    if pod.status.phase == "Running" and statuses and all(s.ready for s in statuses):
        return pod
    return None


def pod_failure(api: k8s.ApiClient, namespace: str, selector: str) -> str | None:
    """A reason the selector's pods cannot start (image, config errors), for a fast, clear failure."""
    for pod in pods(api, namespace, selector):
        for status in pod.status.container_statuses or []:
            waiting = status.state.waiting if status.state else None
            if waiting and waiting.reason in {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "CreateContainerConfigError",
                                              "CreateContainerError", "InvalidImageName", "CrashLoopBackOff", "RunContainerError"}:
                return f"pod {pod.metadata.name} container {status.name}: {waiting.reason}: {waiting.message}"
    return None


def wait_running(api: k8s.ApiClient, namespace: str, selector: str, timeout: float = 180) -> k8s.V1Pod:
    deadline = time.monotonic() + timeout
    while True:
        pod = running_pod(api, namespace, selector)
        if pod is not None:
            return pod
        failure = pod_failure(api, namespace, selector)
        if failure and "CrashLoopBackOff" not in failure:
            raise AssertionError(failure)
        if time.monotonic() > deadline:
            states = [(p.metadata.name, p.status.phase, [(s.name, s.state.to_dict() if s.state else None) for s in p.status.container_statuses or []])
                      for p in pods(api, namespace, selector)]
            raise AssertionError(f"no running pod for {selector} in {namespace} after {timeout}s: {states}; {failure or ''}")
        time.sleep(0.5)



# --- a test CA, and the GitHub fake on the node IP over https ----------------------------------------------------
@dataclass
class NodeCA:
    """A CA made for one module (its key never leaves memory and the module's tmp dir): signs the servers the
    operator pod reaches over https, so the pod can trust exactly this CA."""

    cert_pem: bytes
    key: object = field(repr=False)
    cert: object = field(repr=False)

    @classmethod
    def new(cls) -> NodeCA:
        import datetime as dt

        from cryptography.hazmat.primitives import serialization
        from workspace_secrets.runtime import pki

        now = dt.datetime.now(dt.timezone.utc)
        key = pki.new_key()
        cert = pki.self_signed_ca(key, "wso-e2e-node-test-ca", not_before=now - dt.timedelta(minutes=5), not_after=now + dt.timedelta(days=1))
        return cls(cert.public_bytes(serialization.Encoding.PEM), key, cert)

    def leaf(self, hosts: list[str]) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a serving certificate for `hosts` (DNS names or IP addresses)."""
        import datetime as dt

        from cryptography.hazmat.primitives import serialization
        from workspace_secrets.runtime import pki

        now = dt.datetime.now(dt.timezone.utc)
        key = pki.new_key()
        cert = pki.sign_leaf(self.cert, self.key, key, hosts[0], not_before=now - dt.timedelta(minutes=5),  # type: ignore[arg-type]
                             not_after=now + dt.timedelta(days=1), hosts=hosts, server=True)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def node_github(host: str, ca: NodeCA, workdir: Path, *, clients: dict[str, str]):
    """tests/fakes/git_providers.py's GitHub fake, served over https on the node IP (where the operator pod
    reaches it) with a certificate of the test CA."""
    import asyncio
    import ssl

    from aiohttp import web
    from fakes.git_providers import FakeGitProvider

    cert_pem, key_pem = ca.leaf([host])
    (workdir / "github.crt").write_bytes(cert_pem)
    (workdir / "github.key").write_bytes(key_pem)
    (workdir / "github.key").chmod(0o600)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(workdir / "github.crt"), str(workdir / "github.key"))

    class NodeGitHub(FakeGitProvider):
        @property
        def url(self) -> str:
            return f"https://{host}:{self.port}"

        def start(self) -> NodeGitHub:
            ready = threading.Event()

            def run() -> None:
                loop = self._loop = asyncio.new_event_loop()
                asyncio.set_event_loop(loop)
                self._runner = web.AppRunner(self.app(), access_log=None)
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(self._runner, host, 0, ssl_context=context)
                loop.run_until_complete(site.start())
                self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                ready.set()
                loop.run_forever()
                loop.run_until_complete(self._runner.cleanup())
                loop.close()

            self._thread = threading.Thread(target=run, name="fake-github-on-node", daemon=True)
            self._thread.start()
            assert ready.wait(10), "the GitHub fake did not start"
            return self

    return NodeGitHub("github", clients=clients).start()


class PortForward:
    """`kubectl port-forward` to a Deployment's pod on 127.0.0.1:<port> (what the platform's auth proxy is to the
    connect page here: the operator sees the connection from 127.0.0.1 inside its pod)."""

    def __init__(self, node: NodeCluster, namespace: str, target: str, remote_port: int, log: Path) -> None:
        self.node, self.namespace, self.target, self.remote_port, self.log = node, namespace, target, remote_port, log
        self.port = free_port("127.0.0.1")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> PortForward:
        import socket

        out = open(self.log, "ab")
        self.process = subprocess.Popen([str(self.node.bin_dir / "kubectl"), "port-forward", "-n", self.namespace, "--address", "127.0.0.1",
                                         self.target, f"{self.port}:{self.remote_port}"], stdout=out, stderr=subprocess.STDOUT, env=self.node.env())
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"kubectl port-forward exited: {self.log.read_text(errors='replace')[-1000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("kubectl port-forward did not listen")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
