"""The local cluster's node: containerd, runc and the CNI plugins from Debian; kubelet, kube-proxy and
kube-scheduler built from the pinned Kubernetes release (tools/build-node.sh).

What it took on these machines (hybrid cgroup v1, no CAP_SYS_RESOURCE, no container engine):

* kubelet: ``failCgroupV1: false``, ``cgroupDriver: cgroupfs``, ``cgroupsPerQOS: false``,
  ``enforceNodeAllocatable: []``; containerd's CRI plugin: ``restrict_oom_score_adj = true``; runc (crun refuses
  hybrid cgroups). The node IP is not loopback (see network.py).
* The kubelet serves exec/logs on the node IP with a certificate from the cluster CA, which the API server
  verifies (``--kubelet-certificate-authority``), authenticating with its own client certificate; requests to
  the kubelet are authenticated (x509, tokens through TokenReview) and authorized (SubjectAccessReview).
* kube-proxy (iptables mode) makes the ``kubernetes`` Service's ClusterIP reach the API server on the node IP;
  its conntrack and localhost-NodePort settings are off, so it changes no machine-wide sysctl.

One node per machine: its names are fixed (the bridge, iptables chains, the node name), and some of its
programs use fixed host paths. A machine-wide lock file and record (``/run/workspace-secrets-operator``)
serialize node starts: a second start waits until the first node is stopped (``$WSO_NODE_WAIT`` seconds, default
1800). A node whose launcher died is torn down by the next start (or the next control plane start).

What the node changes outside its work directory, and how it is put back (:func:`teardown_node`):

* the bridge, its addresses and the guard chains (network.py); kube-proxy's chains (``kube-proxy --cleanup``);
* sysctls the kubelet sets on start (``vm.overcommit_memory``, ``kernel.panic``, ...): restored to the values
  recorded before it started;
* containers: their processes are killed through their cgroups (``/sys/fs/cgroup/*/k8s.io/<id>``, ids from
  our containerd's state directory), the cgroups removed; containerd's shims (verified by binary and the
  containerd address inside our work directory) stopped;
* mounts: everything under the work directory (rootfs overlays, volumes, the kubelet's bind mount of its own
  root) and the pods' network namespaces ``/run/netns/cni-*`` that appeared during the run;
* paths the programs hard-code: ``/var/lib/kubelet`` (device plugins), ``/var/log/containers``,
  ``/var/lib/cni`` (libcni's cache), ``/run/netns``, ``/run/containerd``: removed if the node created them,
  otherwise only our entries in them are.

Every pod log, the containerd state and the kubelet's root directory live under ``<workdir>/node``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from . import network
from .binaries import CNI_BIN_DIR, SYSTEM_BINARIES
from .errors import ControlPlaneError
from .host import mountpoints_under, read_sysctl, unmount, unmount_under, write_sysctl
from .pki import NODE_NAME, NODES_GROUP, PKIPaths
from .processes import _terminate, processes_of
from .records import ProcessRecord, RunRecord, _atomic_write, _read_record, _remove_workdir

if TYPE_CHECKING:
    from .controlplane import ControlPlane

__all__ = ["NODE_NAME", "NODE_IP", "POD_CIDR", "KUBELET_SYNC_FREQUENCY", "NodeState", "teardown_node"]

NODE_IP: Final = network.NODE_IP
POD_CIDR: Final = network.POD_CIDR
#: The kubelet's syncFrequency (its default, stated): a Secret volume's files follow a change of the Secret
#: within about this period (plus the kubelet's watch delay).
KUBELET_SYNC_FREQUENCY: Final = "1m"
CONTAINERD_NAMESPACE: Final = "k8s.io"
SHIM_BINARY: Final = "/usr/bin/containerd-shim-runc-v2"
#: The node's processes in start order (stopped in reverse).
NODE_COMPONENTS: Final = ("containerd", "kubelet", "kube-proxy", "kube-scheduler")

MACHINE_DIR_ENV: Final = "WSO_NODE_STATE_DIR"
NODE_WAIT_ENV: Final = "WSO_NODE_WAIT"
DEFAULT_NODE_WAIT: Final = 1800.0

#: Sysctls the kubelet sets when it starts (its "kernel tunables"); restored at stop.
KUBELET_SYSCTLS: Final = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
#: Host directories the node's programs hard-code (kubelet device plugins and container log links, libcni's
#: cache, CRI's network namespaces, containerd's shim sockets and runc state).
HOST_DIRS: Final = ("/var/lib/kubelet", "/var/log/containers", "/var/lib/cni", "/run/netns", "/run/containerd")
#: The cgroup (under each hierarchy) containerd puts containers in when the kubelet runs without QoS cgroups.
CGROUP_PARENT: Final = "k8s.io"
CGROUP_ROOT: Final = Path("/sys/fs/cgroup")

#: The PATH the node's programs run with: the system's directories only (runc, iptables, mount, the shim).
_NODE_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def machine_dir() -> Path:
    """The machine-wide node lock and record (root-only): ``/run/workspace-secrets-operator``."""
    return Path(os.environ.get(MACHINE_DIR_ENV) or "/run/workspace-secrets-operator")


@dataclass
class NodeState:
    """The host state a node run must put back, recorded before the node changes it."""

    node_bin_dir: str
    sysctls: dict[str, str] = field(default_factory=dict)
    netns_before: list[str] = field(default_factory=list)
    created_dirs: list[str] = field(default_factory=list)
    cgroups_created: list[str] = field(default_factory=list)
    network_up: bool = False
    #: The node's ports: kubelet (on the node IP), kubelet-healthz, kube-proxy-healthz/-metrics, kube-scheduler.
    ports: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: RunRecord) -> NodeState | None:
        if not record.node:
            return None
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in record.node.items() if k in known})


@dataclass(frozen=True)
class NodePaths:
    """The fixed layout of ``<workdir>/node``."""

    root: Path

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.json"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy.json"

    def kubeconfig(self, component: str) -> Path:
        return self.root / f"{component}.kubeconfig"

    @property
    def task_dir(self) -> Path:
        """containerd's per-task state: one directory per container (and sandbox) id."""
        return self.containerd_state / "io.containerd.runtime.v2.task" / CONTAINERD_NAMESPACE


def node_paths(workdir: str | os.PathLike[str]) -> NodePaths:
    return NodePaths(Path(workdir) / "node")


def node_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "CONTAINERD_"))}
    env["PATH"] = _NODE_PATH
    return env


# --------------------------------------------------------------------------------------------------------------
# Configuration files (JSON is YAML: the kubelet and kube-proxy read it as their config files)
# --------------------------------------------------------------------------------------------------------------


def containerd_config(paths: NodePaths, sandbox_image: str) -> str:
    """containerd 1.6's config: everything in the work directory, CRI with runc (cgroupfs) and our CNI config."""
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{paths.containerd_socket}"

[ttrpc]
  address = "{paths.containerd_socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{paths.root / 'containerd' / 'opt'}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # No CAP_SYS_RESOURCE in the sandbox: never ask for a lower oom_score_adj than ours.
  restrict_oom_score_adj = true
  enable_selinux = false
  # The streaming server (exec, attach, port-forward) is reached by the kubelet only.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{SYSTEM_BINARIES['runc']}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{paths.cni_conf_dir}"
    max_conf_num = 1
"""


def cni_config(paths: NodePaths) -> dict[str, Any]:
    """The pods' network: the launcher's bridge, addresses from POD_CIDR, default route via the bridge."""
    return {
        "cniVersion": "0.4.0",
        "name": network.CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": network.BRIDGE,
                # The launcher gave the bridge its addresses; isGateway would also turn on ip_forward machine-wide.
                "isGateway": False,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": network.POD_CIDR, "gateway": network.POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.cni_ipam_dir),
                },
            }
        ],
    }


def kubelet_config(paths: NodePaths, pki: PKIPaths, *, port: int, healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": network.NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(pki.kubelet_serving_cert),
        "tlsPrivateKeyFile": str(pki.kubelet_serving_key),
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(pki.ca_cert)},
        },
        "authorization": {"mode": "Webhook"},
        # Hybrid cgroup v1 hosts.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "podLogsDir": str(paths.pod_logs),
        # No cluster DNS, and not the host's resolvers either (they are off the machine).
        "resolvConf": "",
        "clusterDomain": "cluster.local",
        "syncFrequency": KUBELET_SYNC_FREQUENCY,
        # A shared development machine's disk and memory are not the node's to reclaim: evict only when nearly out.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "shutdownGracePeriod": "0s",
        "registerNode": True,
    }


def kube_proxy_config(paths: NodePaths, *, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(paths.kubeconfig("kube-proxy"))},
        "hostnameOverride": NODE_NAME,
        "bindAddress": network.NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "clusterCIDR": network.POD_CIDR,
        "nodePortAddresses": [f"{network.NODE_IP}/32"],
        # No route_localnet (NodePorts on 127.0.0.1) and no conntrack table sizing: no machine-wide sysctl.
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
                      "udpTimeout": "0s", "udpStreamTimeout": "0s"},
    }


#: Lets the kubelet check the tokens and permissions of requests to its API (TokenReview, SubjectAccessReview).
KUBELET_AUTH_DELEGATOR_BINDING: Final = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "wso-local:kubelet-auth-delegator"},
    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": NODES_GROUP}],
}


# --------------------------------------------------------------------------------------------------------------
# The machine-wide lock and record
# --------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def machine_locked() -> Iterator[Path]:
    """Hold the machine's node lock (short sections only: reading or changing the node record)."""
    directory = machine_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(directory / "node.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory / "node.json"


def node_active(record: RunRecord) -> bool:
    """A recorded node is in use: its launcher runs, or it is a detached run (``wso-controlplane up --node``)
    whose processes still run."""
    return record.owner_alive() or (record.detached and bool(record.live_processes()))


def claim_machine(record: RunRecord, *, wait: float | None = None) -> None:
    """Make ``record`` the machine's node, waiting while another node is in use; tear down a dead one first.

    Also clears leftovers no record names (e.g. a launcher killed before it wrote the record).
    """
    wait = float(os.environ.get(NODE_WAIT_ENV, DEFAULT_NODE_WAIT)) if wait is None else wait
    deadline = time.monotonic() + wait
    announced = ""
    while True:
        with machine_locked() as path:
            other = _read_record(path)
            if other is None or other.run_id == record.run_id or not node_active(other):
                if other is not None and other.run_id != record.run_id:
                    print(f"devcluster: tearing down the node of run {other.run_id} (its launcher is gone)", file=sys.stderr)
                    _report(teardown_run(other))
                _atomic_write(path, record.to_json())
                return
        if time.monotonic() > deadline:
            raise ControlPlaneError(
                f"another local node is running (run {other.run_id}, launcher pid {other.owner_pid}, "
                f"workdir {other.workdir}); waited {wait:.0f}s (${NODE_WAIT_ENV}). One node per machine: stop it "
                "first (`wso-controlplane down` for a detached one)."
            )
        if announced != other.run_id:
            announced = other.run_id
            print(
                f"devcluster: waiting for the local node of run {other.run_id} (launcher pid {other.owner_pid}) "
                "to stop: one node per machine",
                file=sys.stderr,
            )
        time.sleep(1.0)


def save_machine_record(record: RunRecord) -> None:
    """Keep the machine record in step with the run record (processes, node state)."""
    with machine_locked() as path:
        current = _read_record(path)
        if current is None or current.run_id == record.run_id:
            _atomic_write(path, record.to_json())


def release_machine(record: RunRecord) -> None:
    with machine_locked() as path:
        current = _read_record(path)
        if current is not None and current.run_id == record.run_id:
            path.unlink(missing_ok=True)


def reap_stale_node() -> str | None:
    """Tear down the machine's recorded node if its launcher is gone; the run id, or None.

    Called by every control plane start, so a killed node does not keep running (and holding the machine)
    until the next node start. Silently nothing for a user who cannot read the machine directory.
    """
    try:
        with machine_locked() as path:
            other = _read_record(path)
            if other is None or node_active(other):
                return None
            _report(teardown_run(other))
            path.unlink(missing_ok=True)
            return other.run_id
    except PermissionError:
        return None


# --------------------------------------------------------------------------------------------------------------
# Host state: snapshot before, restore after
# --------------------------------------------------------------------------------------------------------------


def _netns_names() -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(os.listdir("/run/netns"))
    return []


def _cgroup_hierarchies() -> list[Path]:
    """Each mounted cgroup hierarchy (v1 controllers, name=systemd, the v2 "unified" one)."""
    with contextlib.suppress(OSError):
        return sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir() and (p / "cgroup.procs").exists())
    return []


def snapshot_host(node_bin_dir: Path) -> NodeState:
    state = NodeState(node_bin_dir=str(node_bin_dir))
    for name in KUBELET_SYSCTLS:
        value = read_sysctl(name)
        if value is not None:
            state.sysctls[name] = value
    state.netns_before = _netns_names()
    state.created_dirs = [d for d in HOST_DIRS if not os.path.lexists(d)]
    state.cgroups_created = [str(h / CGROUP_PARENT) for h in _cgroup_hierarchies() if not (h / CGROUP_PARENT).exists()]
    return state


def _container_ids(paths: NodePaths) -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(p.name for p in paths.task_dir.iterdir() if p.is_dir())
    return []


def _kill_containers(ids: list[str], timeout: float = 10.0) -> list[str]:
    """SIGKILL every process in the containers' cgroups until they are empty; the cgroups still busy.

    Each container's freezer cgroup is frozen while its pids are read and signalled, so none of them can exit
    and have its pid reused by an unrelated process in between; the signals land when it is thawed.
    """
    deadline = time.monotonic() + timeout
    while True:
        busy: list[str] = []
        for cid in ids:
            with _frozen(CGROUP_ROOT / "freezer" / CGROUP_PARENT / cid):
                for hierarchy in _cgroup_hierarchies():
                    procs = hierarchy / CGROUP_PARENT / cid / "cgroup.procs"
                    with contextlib.suppress(OSError):
                        pids = [int(p) for p in procs.read_text().split()]
                        for pid in pids:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                        if pids:
                            busy.append(str(procs.parent))
        if not busy or time.monotonic() > deadline:
            return sorted(set(busy))
        time.sleep(0.1)


@contextlib.contextmanager
def _frozen(freezer: Path) -> Iterator[None]:
    state = freezer / "freezer.state"
    if not state.exists():
        yield
        return
    try:
        state.write_text("FROZEN\n")
        deadline = time.monotonic() + 2
        while state.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.01)
    except OSError:
        pass
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            state.write_text("THAWED\n")


def _remove_cgroups(ids: list[str], created: list[str]) -> list[str]:
    problems: list[str] = []
    for hierarchy in _cgroup_hierarchies():
        for cid in ids:
            path = hierarchy / CGROUP_PARENT / cid
            if path.exists():
                try:
                    path.rmdir()
                except OSError as exc:
                    problems.append(f"cgroup {path}: {exc.strerror}")
    for parent in created:
        with contextlib.suppress(OSError):
            Path(parent).rmdir()  # only when empty: a cgroup directory holds no files of its own
    return problems


def _restore_sysctls(saved: dict[str, str]) -> list[str]:
    problems: list[str] = []
    for name, value in saved.items():
        if read_sysctl(name) != value and not write_sysctl(name, value):
            problems.append(f"sysctl {name} (wanted {value})")
    return problems


def _clean_host_dirs(state: NodeState, workdir: str, ids: list[str]) -> list[str]:
    problems: list[str] = []
    # Network namespaces the CRI plugin bind-mounted during the run.
    for name in _netns_names():
        if name.startswith("cni-") and name not in state.netns_before:
            path = f"/run/netns/{name}"
            unmount(path)
            with contextlib.suppress(OSError):
                os.unlink(path)
    # libcni's cached results of our network (and the loopback of our sandboxes).
    results = Path("/var/lib/cni/results")
    with contextlib.suppress(OSError):
        for entry in results.iterdir():
            if entry.name.startswith(f"{network.CNI_NETWORK}-") or any(
                entry.name.startswith(f"cni-loopback-{cid}-") for cid in ids
            ):
                entry.unlink(missing_ok=True)
    # The kubelet's links to our pods' logs.
    with contextlib.suppress(OSError):
        for entry in Path("/var/log/containers").iterdir():
            if entry.is_symlink() and os.readlink(entry).startswith(workdir.rstrip("/") + "/"):
                entry.unlink(missing_ok=True)
    # runc's state of our containers.
    for cid in ids:
        shutil.rmtree(f"/run/containerd/runc/{CONTAINERD_NAMESPACE}/{cid}", ignore_errors=True)
    # Directories the node created: removed whole, unless something is still mounted in them.
    for directory in state.created_dirs:
        if not os.path.lexists(directory):
            continue
        mounted = mountpoints_under(directory)
        if mounted:
            problems.append(f"{directory} (still mounted: {', '.join(mounted[:3])})")
            continue
        shutil.rmtree(directory, ignore_errors=True)
    return problems


def teardown_node(record: RunRecord, timeout: float = 10.0) -> list[str]:
    """Stop a run's node, then its control plane, and put the host back (see the module docstring).

    Idempotent; returns problems. The network goes last, after every process that could use the node IP.

    Must run with the machine's node lock held, or as the node's owner, so the fixed-name resources it
    removes (the bridge, chains) belong to this run.
    """
    state = NodeState.from_record(record)
    if state is None:
        return []
    paths = node_paths(record.workdir)
    problems: list[str] = []
    node_procs = [p for p in record.processes if p.name in NODE_COMPONENTS]
    # Clients first: the scheduler, kube-proxy and the kubelet (which would restart containers we kill).
    _terminate([p for p in reversed(node_procs) if p.name != "containerd"], record.workdir, timeout)
    ids = _container_ids(paths)
    busy = _kill_containers(ids)
    if busy:
        problems.append(f"container processes still running in {', '.join(busy[:3])}")
    _terminate([p for p in node_procs if p.name == "containerd"], record.workdir, timeout)
    shims = [ProcessRecord("containerd-shim", pid, SHIM_BINARY) for pid in processes_of(SHIM_BINARY, str(paths.root))]
    _terminate(shims, record.workdir, timeout=3)
    # Containers whose shim outlived containerd may only now be gone from their cgroups.
    _kill_containers(ids, timeout=3)
    # The node's own root only: the work directory may be a user's (--workdir /tmp).
    still = unmount_under(str(paths.root))
    if still:
        problems.append(f"still mounted: {', '.join(still[:5])}")
    problems += _remove_cgroups(ids, state.cgroups_created)
    problems += _clean_host_dirs(state, record.workdir, ids)
    problems += _restore_sysctls(state.sysctls)
    # The control plane next, while the node IP still exists: without the bridge, a connection to the node IP
    # (the API server deleting its lease through its own address, as it does on exit) would follow the
    # default route off the machine.
    _terminate([p for p in reversed(record.processes) if p.name not in NODE_COMPONENTS], record.workdir, timeout)
    if state.network_up or network.bridge_exists():
        kube_proxy = str(Path(state.node_bin_dir) / "kube-proxy")
        problems += network.cleanup_kube_proxy_remains(kube_proxy if os.access(kube_proxy, os.X_OK) else None)
    problems += network.teardown()
    return problems


def teardown_run(record: RunRecord, timeout: float = 10.0) -> list[str]:
    """A whole run whose launcher is gone: its node, its control plane, its work directory."""
    problems = teardown_node(record, timeout)
    _terminate(list(reversed(record.processes)), record.workdir, timeout)
    _remove_workdir(record)
    return problems


def _report(problems: list[str]) -> None:
    for problem in problems:
        print(f"devcluster: node teardown left: {problem}", file=sys.stderr)


def clear_leftovers(node_bin_dir: Path) -> None:
    """Before a node starts (lock held, no active node; a dead one's record was torn down by claim_machine):
    remove fixed-name remains of ours no record accounts for (our bridge exists: a launcher killed before it
    wrote the record). ``KUBE-*`` chains without our bridge are another kube-proxy's: refuse to start."""
    foreign = network.foreign_kube_chains()
    if foreign:
        raise ControlPlaneError(
            "another kube-proxy runs on this machine (iptables chains "
            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''} exist and no node of ours accounts for "
            "them): the local node would break it. Stop it (k3s, kubeadm, ...) or run without --node."
        )
    if network.bridge_exists():
        network.cleanup_kube_proxy_remains(str(node_bin_dir / "kube-proxy"))
    network.teardown()


# --------------------------------------------------------------------------------------------------------------
# Starting the node (driven by ControlPlane.start)
# --------------------------------------------------------------------------------------------------------------


class NodeStarter:
    """Starts the node's processes through the control plane's process machinery (records, logs, waits)."""

    def __init__(self, plane: ControlPlane, node_bin_dir: Path) -> None:
        self.plane = plane
        self.node_bin_dir = node_bin_dir
        self.paths = node_paths(plane.workdir)

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        argv = [SYSTEM_BINARIES["ctr"], "--address", str(self.paths.containerd_socket), "-n", CONTAINERD_NAMESPACE, *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=node_env())

    def write_configs(self, pki: PKIPaths, kubeconfigs: dict[str, str], sandbox_image: str, ports: dict[str, int]) -> None:
        for sub in (self.paths.root, self.paths.cni_conf_dir, self.paths.cni_ipam_dir, self.paths.kubelet_root,
                    self.paths.pod_logs, self.paths.containerd_root, self.paths.containerd_state):
            sub.mkdir(mode=0o700, parents=True, exist_ok=True)
        from .pki import _write

        _write(self.paths.containerd_config, containerd_config(self.paths, sandbox_image).encode())
        _write(self.paths.cni_conf_dir / "10-wso-pods.conflist", json.dumps(cni_config(self.paths), indent=2).encode())
        _write(
            self.paths.kubelet_config,
            json.dumps(kubelet_config(self.paths, pki, port=ports["kubelet"], healthz_port=ports["kubelet-healthz"]),
                       indent=2).encode(),
        )
        _write(
            self.paths.kube_proxy_config,
            json.dumps(kube_proxy_config(self.paths, healthz_port=ports["kube-proxy-healthz"],
                                         metrics_port=ports["kube-proxy-metrics"]), indent=2).encode(),
        )
        for component, text in kubeconfigs.items():
            _write(self.paths.kubeconfig(component), text.encode(), private=True)

    def start_containerd(self) -> None:
        self.plane._spawn("containerd", [f"--config={self.paths.containerd_config}"],
                          binary=SYSTEM_BINARIES["containerd"], env=node_env())
        self.plane._wait_for("containerd to serve", lambda: self.ctr("version", timeout=5).returncode == 0)

    def import_image(self, archive: Path) -> list[str]:
        """Import an OCI image archive into the node's containerd (the CRI namespace); the references."""
        result = self.ctr("images", "import", str(archive))
        if result.returncode != 0:
            raise ControlPlaneError(f"ctr images import {archive} failed: {result.stderr.strip()[-2000:]}")
        return [line.split()[1] for line in result.stdout.splitlines() if line.startswith("unpacking ")]

    def start_kubelet(self) -> None:
        self.plane._spawn(
            "kubelet",
            [
                f"--config={self.paths.kubelet_config}",
                f"--kubeconfig={self.paths.kubeconfig('kubelet')}",
                f"--root-dir={self.paths.kubelet_root}",
                f"--node-ip={network.NODE_IP}",
                f"--hostname-override={NODE_NAME}",
            ],
            binary=str(self.node_bin_dir / "kubelet"),
            env=node_env(),
        )

    def start_kube_proxy(self) -> None:
        self.plane._spawn("kube-proxy", [f"--config={self.paths.kube_proxy_config}"],
                          binary=str(self.node_bin_dir / "kube-proxy"), env=node_env())

    def start_scheduler(self, port: int) -> None:
        kubeconfig = self.paths.kubeconfig("kube-scheduler")
        self.plane._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.paths.root / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
            ],
            binary=str(self.node_bin_dir / "kube-scheduler"),
        )


def node_ready(status: int, body: str) -> bool:
    if status != 200:
        return False
    node = json.loads(body)
    conditions = {c.get("type"): c.get("status") for c in node.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True"


def state_dict(state: NodeState) -> dict[str, Any]:
    return asdict(state)

