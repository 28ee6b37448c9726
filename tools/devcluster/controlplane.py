"""A throwaway local Kubernetes cluster: etcd + kube-apiserver + kube-controller-manager, and optionally a node.

This plays the role controller-runtime's envtest plays for Go operators, with one difference that
matters for this operator: the kube-controller-manager runs too. The operator relies on the garbage
collector (ownerReferences on the Secrets it creates) and on Deployments turning into ReplicaSets and
Pods, so an apiserver alone would let tests pass that fail on a real cluster. With ``node=True`` the
cluster also gets a real node (node.py: containerd, runc, CNI, kubelet, kube-proxy, kube-scheduler), so
pods really start; that needs root and the Debian packages of ``tools/install-system-deps.sh``.

Design notes (the *why*):

* Everything lives in one temporary work directory (PKI, etcd data, logs, pid files, kubeconfigs, the node's
  containerd and kubelet state), so a run leaves nothing behind. Without a node every server listens on
  loopback only. With a node the API server and the kubelet listen on the node IP, an address on the
  launcher's bridge that nothing off the machine can reach (network.py).
* Certificates are generated in-process (pki.py).
* Each server runs in its own session/process group, so a Ctrl-C in the test terminal does not reach
  it half-way and it can be signalled as a group.
* Processes can outlive their launcher (``pytest`` killed by a timeout, or ``wso-controlplane up``,
  which is *meant* to outlive it). Every run is therefore recorded (records.py), and later starts reap
  runs whose launcher is gone. Processes are pid-verified before any signal (processes.py).
* Only the standard library and ``cryptography`` are used, and kopf is never imported, so the launcher
  can start a cluster for the operator without importing the code under test.

Binaries come from ``tools/build-tools.sh`` and ``tools/build-node.sh`` (built from source at pinned versions
and cached), from ``$WSO_BIN_DIR``/``$WSO_NODE_BIN_DIR``, or from explicit arguments.

This module is the launcher's public face: the names below (``ControlPlane``, ``REPO_ROOT``, the PKI helpers,
the records...) are importable from here whichever module defines them.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from . import network
from .binaries import (
    BIN_DIR_ENV,
    BUILD_NODE_SCRIPT,
    BUILD_TOOLS_SCRIPT,
    NODE_BIN_DIR_ENV,
    REPO_ROOT,
    SERVER_BINARIES,
    check_node_host,
    pinned_versions,
    resolve_bin_dir,
    resolve_node_bin_dir,
)
from .errors import ControlPlaneError
from .node import (
    KUBELET_AUTH_DELEGATOR_BINDING,
    KUBELET_SYNC_FREQUENCY,
    NODE_COMPONENTS,
    NodeStarter,
    NodeState,
    _report,
    claim_machine,
    machine_dir,
    machine_locked,
    clear_leftovers,
    node_env,
    node_ready,
    reap_stale_node,
    release_machine,
    save_machine_record,
    snapshot_host,
    state_dict,
    teardown_node,
)
from .pki import (
    ADMIN_GROUP,
    ADMIN_USER,
    APISERVER_DNS_NAMES,
    APISERVER_IP_ADDRESSES,
    CONTEXT_NAME,
    CONTROLLER_MANAGER_USER,
    DEFAULT_VALIDITY,
    KUBE_PROXY_USER,
    KUBERNETES_SERVICE_IP,
    NODE_NAME,
    PKI,
    SCHEDULER_USER,
    SERVICE_CLUSTER_IP_RANGE,
    KeyPair,
    PKIPaths,
    _write,
    generate_pki,
    issue_certificate,
    kubelet_user,
    new_ca,
    new_service_account_key,
    render_kubeconfig,
)
from .processes import (
    _free_loopback_ports,
    _free_ports,
    _is_our_process,
    _proc_start_time,
    _signal,
    _tail,
    _terminate,
    _wait_gone,
    listening_addresses,
)
from .records import (
    KEEP_ENV,
    RUNS_DIR_NAME,
    STATE_FILE_NAME,
    WORKDIR_MARKER,
    ProcessRecord,
    RunRecord,
    _atomic_write,
    _locked,
    _read_record,
    _remove_workdir,
    state_dir,
)

__all__ = [
    "ADMIN_GROUP", "ADMIN_USER", "APISERVER_DNS_NAMES", "APISERVER_IP_ADDRESSES", "BIN_DIR_ENV",
    "BUILD_NODE_SCRIPT", "BUILD_TOOLS_SCRIPT", "CONTEXT_NAME", "CONTROLLER_MANAGER_USER", "ControlPlane",
    "ControlPlaneError", "DEFAULT_VALIDITY", "KEEP_ENV", "KUBELET_SYNC_FREQUENCY", "KUBERNETES_SERVICE_IP",
    "KeyPair", "NODE_BIN_DIR_ENV", "NODE_IP", "NODE_NAME", "PKI", "PKIPaths", "POD_CIDR", "ProcessRecord",
    "REPO_ROOT", "RunRecord", "SERVER_BINARIES", "SERVICE_ACCOUNT_ISSUER", "SERVICE_CLUSTER_IP_RANGE",
    "_flag", "_write", "generate_pki", "issue_certificate", "listening_addresses", "main", "new_ca",
    "new_service_account_key", "pinned_versions", "reap_stale_runs", "render_kubeconfig", "resolve_bin_dir",
    "resolve_node_bin_dir", "state_dir",
]

NODE_IP: Final = network.NODE_IP
POD_CIDR: Final = network.POD_CIDR
SERVICE_ACCOUNT_ISSUER: Final = "https://kubernetes.default.svc.cluster.local"

#: The default-on admission plugins that matter for what the operator does; listed explicitly so a
#: change of upstream defaults does not silently change test behaviour. NodeRestriction only with a node.
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


def reap_stale_runs(directory: Path | None = None) -> list[str]:
    """Stop and forget runs whose launcher is gone (e.g. a pytest session that was killed).

    Skipped: runs whose launcher is still alive (a concurrent test session), and the detached run the
    CLI state file points at (``wso-controlplane up`` is meant to outlive its launcher; ``down``
    stops it). A run with a node has its node torn down first, if the machine's node record still names
    it (otherwise the next node start already did). Returns the run ids cleaned up. Must be called with
    the registry lock held.
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
        if record.node is not None:
            _teardown_node_if_ours(record)
        _terminate(list(reversed(record.processes)), record.workdir, timeout=10)
        _remove_workdir(record)
        path.unlink(missing_ok=True)
        cleaned.append(record.run_id)
    if current is not None and not (directory / RUNS_DIR_NAME / f"{current.run_id}.json").exists():
        (directory / STATE_FILE_NAME).unlink(missing_ok=True)
    return cleaned


def _teardown_node_if_ours(record: RunRecord) -> None:
    with contextlib.suppress(PermissionError), machine_locked() as machine_record:
        holder = _read_record(machine_record)
        if holder is None or holder.run_id == record.run_id:
            _report(teardown_node(record))
            machine_record.unlink(missing_ok=True)


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager, and with ``node=True`` a node, in a temporary directory.

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
        node: bool = False,
        node_bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self._bin_dir_arg = bin_dir
        self._node_bin_dir_arg = node_bin_dir
        # Extra kube-controller-manager flags (the benchmark raises the garbage collector's API rate).
        self._controller_manager_args = tuple(controller_manager_args)
        self._workdir_arg = Path(workdir).resolve() if workdir is not None else None
        self._detached = detached
        self._timeout = timeout
        self._registry = registry or state_dir()
        self._node = node
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

    @property
    def has_node(self) -> bool:
        return self._record.node is not None if self._record is not None else self._node

    @property
    def node_ip(self) -> str:
        """The node's address: the API server and the kubelet listen there, and pods reach it (backends for
        pods listen there too). Only with a node."""
        self._require_node()
        return NODE_IP

    @property
    def node_name(self) -> str:
        self._require_node()
        return NODE_NAME

    @property
    def pod_cidr(self) -> str:
        self._require_node()
        return POD_CIDR

    def _require_node(self) -> NodeState:
        state = NodeState.from_record(self._require())
        if state is None:
            raise ControlPlaneError("this cluster has no node (start it with node=True)")
        return state

    @classmethod
    def attach(cls, record: RunRecord, *, registry: Path | None = None) -> ControlPlane:
        """A handle on a run started elsewhere (the CLI's ``down``/``status``); pid-verified stops."""
        plane = cls(
            bin_dir=record.bin_dir, workdir=record.workdir, detached=record.detached, registry=registry,
            node=record.node is not None,
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
        """Start etcd, the apiserver and the controller-manager (and the node); return once all are usable."""
        if self._record is not None:
            raise ControlPlaneError("control plane already started")
        t0 = time.monotonic()
        bin_dir = resolve_bin_dir(self._bin_dir_arg)
        self.timings["resolve_bin_dir"] = time.monotonic() - t0
        node_bin_dir: Path | None = None
        if self._node:
            t0 = time.monotonic()
            check_node_host()
            node_bin_dir = resolve_node_bin_dir(self._node_bin_dir_arg)
            self.timings["resolve_node_bin_dir"] = time.monotonic() - t0

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
            if node_bin_dir is not None:
                self._claim_node(node_bin_dir)
            elif os.geteuid() == 0 and (machine_dir() / "node.json").exists():
                reap_stale_node()
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

    def _claim_node(self, node_bin_dir: Path) -> None:
        """Become the machine's node (waiting for another one to stop), then set up its network."""
        record = self._require()
        phase = time.monotonic()
        claim_machine(record)
        self.timings["node_claim"] = time.monotonic() - phase
        phase = time.monotonic()
        clear_leftovers(node_bin_dir)
        state = snapshot_host(node_bin_dir)
        record.node = state_dict(state)
        self._save_record()
        network.setup()
        state.network_up = True
        record.node = state_dict(state)
        self._save_record()
        self.timings["node_network"] = time.monotonic() - phase

    def _start_processes(self) -> None:
        record = self._require()
        workdir = self.workdir
        node = record.node is not None
        for sub in ("logs", "pids", "etcd", "apiserver-certs", "controller-manager-certs"):
            (workdir / sub).mkdir(mode=0o700, exist_ok=True)

        phase = time.monotonic()
        pki = generate_pki(NODE_IP if node else None)
        paths = pki.write(workdir / "pki")
        etcd_client, etcd_peer, cm_port = _free_loopback_ports(3)
        api_host = NODE_IP if node else "127.0.0.1"
        (apiserver_port,) = _free_ports(api_host, 1)
        record.server = f"https://{api_host}:{apiserver_port}"
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
        if node:
            # The node IP: pods reach the API server there through the `kubernetes` Service (kube-proxy), whose
            # endpoint the default (lease) reconciler keeps. The API server reaches the kubelet (exec, logs)
            # with its own client certificate and verifies the kubelet's; webhooks behind Services are called
            # on their pods' IPs (the aggregator's endpoint routing), as kube-proxy does not serve the host.
            network_args = [
                f"--bind-address={NODE_IP}",
                f"--advertise-address={NODE_IP}",
                f"--kubelet-client-certificate={paths.apiserver_kubelet_client_cert}",
                f"--kubelet-client-key={paths.apiserver_kubelet_client_key}",
                f"--kubelet-certificate-authority={paths.ca_cert}",
                "--kubelet-preferred-address-types=InternalIP",
                "--enable-aggregator-routing=true",
            ]
            plugins = (*ADMISSION_PLUGINS, "NodeRestriction")
        else:
            network_args = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # 1.37 refuses a loopback advertise address with the default (lease) endpoint
                # reconciler ("may not be in the loopback range"). Nothing in-cluster can reach the
                # apiserver anyway (there is no kubelet), so the `kubernetes` Service needs no
                # endpoints.
                "--endpoint-reconciler-type=none",
            ]
            plugins = ADMISSION_PLUGINS
        self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={etcd_url}",
                f"--secure-port={apiserver_port}",
                *network_args,
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                f"--client-ca-file={paths.ca_cert}",
                f"--tls-cert-file={paths.apiserver_cert}",
                f"--tls-private-key-file={paths.apiserver_key}",
                f"--service-account-key-file={paths.service_account_pub}",
                f"--service-account-signing-key-file={paths.service_account_key}",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                f"--enable-admission-plugins={','.join(plugins)}",
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

        if node:
            self._start_node(pki)

    def _start_node(self, pki: PKI) -> None:
        record = self._require()
        state = self._require_node()
        starter = NodeStarter(self, Path(state.node_bin_dir))
        ca_pem = pki.ca.cert_pem()
        kubeconfigs = {
            "kubelet": render_kubeconfig(record.server, ca_pem, pki.kubelet, user=kubelet_user()),
            "kube-proxy": render_kubeconfig(record.server, ca_pem, pki.kube_proxy, user=KUBE_PROXY_USER),
            "kube-scheduler": render_kubeconfig(record.server, ca_pem, pki.scheduler, user=SCHEDULER_USER),
        }
        (kubelet_port,) = _free_ports(NODE_IP, 1)
        kubelet_healthz, proxy_healthz, proxy_metrics, scheduler_port = _free_loopback_ports(4)
        ports = {"kubelet": kubelet_port, "kubelet-healthz": kubelet_healthz, "kube-proxy-healthz": proxy_healthz,
                 "kube-proxy-metrics": proxy_metrics, "kube-scheduler": scheduler_port}
        state.ports = ports
        record.node = state_dict(state)
        self._save_record()

        phase = time.monotonic()
        from . import images

        pause_ref = images.PAUSE_IMAGE
        pause_archive = images.build("pause")
        self.timings["pause_image"] = time.monotonic() - phase

        phase = time.monotonic()
        starter.write_configs(self.pki, kubeconfigs, pause_ref, ports)
        starter.start_containerd()
        starter.import_image(pause_archive)
        self.timings["containerd"] = time.monotonic() - phase

        phase = time.monotonic()
        self._apply(KUBELET_AUTH_DELEGATOR_BINDING, "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings")
        starter.start_kubelet()
        starter.start_kube_proxy()
        starter.start_scheduler(scheduler_port)
        self._wait_for(f"node {NODE_NAME} to be Ready", lambda: node_ready(*self._get(f"/api/v1/nodes/{NODE_NAME}")))
        self._wait_for("kube-proxy to sync", lambda: _http_ok(proxy_healthz, "/healthz"))
        self._wait_for("kube-scheduler /healthz", lambda: _https_ok(scheduler_port, "/healthz"))
        self.timings["node"] = time.monotonic() - phase

    # ---- the node's images ----

    def import_image(self, archive: str | os.PathLike[str]) -> list[str]:
        """Import an OCI image archive (e.g. ``devcluster.images.build(name)``) into the node's containerd.

        Returns the image references imported; pods use them with ``imagePullPolicy: Never`` (or IfNotPresent).
        """
        state = self._require_node()
        return NodeStarter(self, Path(state.node_bin_dir)).import_image(Path(archive))

    def tag_image(self, source: str, target: str) -> None:
        """Give an imported image a second reference (e.g. the name a manifest uses), as ``ctr images tag``."""
        state = self._require_node()
        starter = NodeStarter(self, Path(state.node_bin_dir))
        result = starter.ctr("images", "tag", "--force", source, target)
        if result.returncode != 0:
            raise ControlPlaneError(f"ctr images tag {source} {target} failed: {result.stderr.strip()}")

    def load_image(self, name: str) -> str:
        """Build (or take from the cache) one of ``devcluster.images``' images and import it; its reference."""
        from . import images

        self.import_image(images.build(name))
        return images.IMAGES[name]

    # ---- fault injection: stop and restart one component (same ports, certificates, data) ----

    def stop_component(self, name: str, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop one server: SIGTERM (a clean shutdown) or, with ``kill``, SIGKILL (a crash).

        Its clients see what they would see in a real cluster: refused connections, then the same
        server back on the same address with the same data once :meth:`start_component` runs.
        """
        import signal

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
        env = node_env() if name in NODE_COMPONENTS and name != "kube-scheduler" else None
        self._spawn(name, args, binary=proc.binary, env=env)
        self._wait_for(f"{name} to serve again", self._readiness(name, args))

    def restart(self, name: str, *, kill: bool = False, down_for: float = 0.0) -> None:
        """Stop ``name`` (SIGKILL with ``kill``), keep it down for ``down_for`` seconds, start it again."""
        self.stop_component(name, kill=kill)
        if down_for > 0:
            time.sleep(down_for)
        self.start_component(name)

    def _component(self, name: str) -> ProcessRecord:
        known = SERVER_BINARIES + (NODE_COMPONENTS if self.has_node else ())
        if name not in known:
            raise ControlPlaneError(f"unknown component {name!r}; one of {', '.join(known)}")
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
        ports = (self._require().node or {}).get("ports", {})
        if name == "containerd":
            starter = NodeStarter(self, Path(self._require_node().node_bin_dir))
            return lambda: starter.ctr("version", timeout=5).returncode == 0
        if name in ("kubelet", "kube-proxy"):
            port = ports[f"{name}-healthz"]
            return lambda: _http_ok(port, "/healthz")
        port = int(_flag(args, "--secure-port"))
        return lambda: _https_ok(port, "/healthz")

    def _spawn(self, name: str, args: list[str], *, binary: str | None = None,
               env: dict[str, str] | None = None) -> None:
        record = self._require()
        binary = binary or str(Path(record.bin_dir) / name)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            popen = subprocess.Popen(
                [binary, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=record.workdir,
                env=env,
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
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError, subprocess.SubprocessError):
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

    def _request(self, method: str, path: str, body: object = None, timeout: float = 5.0) -> tuple[int, str]:
        """One request to the apiserver as the admin user; (status, body)."""
        url = urlsplit(self.server)
        conn = http.client.HTTPSConnection(url.hostname or "127.0.0.1", url.port, context=self._ssl_context(),
                                           timeout=timeout)
        try:
            payload = None if body is None else json.dumps(body)
            headers = {} if body is None else {"Content-Type": "application/json"}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace").strip()
        finally:
            conn.close()

    def _get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET ``path`` from the apiserver as the admin user; (status, body)."""
        return self._request("GET", path, timeout=timeout)

    def _apply(self, obj: dict[str, object], collection: str) -> None:
        """Create ``obj`` (an admin-made object the node needs); an existing one is left as it is."""
        status, body = self._request("POST", collection, obj)
        if status not in (200, 201, 409):
            raise ControlPlaneError(f"creating {collection}: HTTP {status}: {body[:500]}")

    def healthy(self) -> bool:
        """All processes run (pid-verified) and the apiserver reports ready (and the node, if any, is Ready)."""
        record = self._record
        if record is None:
            return False
        expected = len(SERVER_BINARIES) + (len(NODE_COMPONENTS) if record.node is not None else 0)
        if len(record.live_processes()) != expected:
            return False
        try:
            if self._get("/readyz") != (200, "ok"):
                return False
            return record.node is None or node_ready(*self._get(f"/api/v1/nodes/{NODE_NAME}"))
        except (OSError, http.client.HTTPException, ssl.SSLError, ValueError):
            return False

    def stop(self, keep: bool = False, timeout: float = 10.0) -> None:
        """Stop the node (containers, its processes, its host state), then the controller-manager, the
        apiserver and etcd; forget the run.

        The work directory is removed if the launcher created it, unless ``keep`` (or
        ``$WSO_CONTROLPLANE_KEEP=1``). Safe to call more than once.
        """
        record = self._record
        if record is None:
            return
        if self._atexit_registered:
            atexit.unregister(self._stop_at_exit)
            self._atexit_registered = False
        if record.node is not None:
            _report(teardown_node(record, timeout))
            release_machine(record)
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
        if record.node is not None:
            save_machine_record(record)

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


def _http_ok(port: int, path: str) -> bool:
    """GET a plain-HTTP health endpoint on loopback (the kubelet's and kube-proxy's healthz)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``wso-controlplane up|down|status``: a long-lived local cluster for development (see cli.py)."""
    from .cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
