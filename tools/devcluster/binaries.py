"""Where the launcher's binaries come from: pinned builds from source, cached outside the repository.

* ``tools/build-tools.sh``: etcd, kube-apiserver, kube-controller-manager, kubectl, helm (the control plane).
* ``tools/build-node.sh``: kubelet, kube-scheduler, kube-proxy (the node), under its own cache key so that
  adding the node never invalidated the control plane's cache.
* Debian packages (``tools/install-system-deps.sh``): containerd, runc, the CNI plugins, iptables.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Final

from .errors import ControlPlaneError

#: Repository root, found from this file: tools/devcluster/binaries.py.
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
BUILD_TOOLS_SCRIPT: Final = REPO_ROOT / "tools" / "build-tools.sh"
BUILD_NODE_SCRIPT: Final = REPO_ROOT / "tools" / "build-node.sh"
INSTALL_SYSTEM_DEPS_SCRIPT: Final = REPO_ROOT / "tools" / "install-system-deps.sh"

#: Binaries the launcher itself runs (build-tools.sh also builds kubectl and helm, for tests and users).
SERVER_BINARIES: Final = ("etcd", "kube-apiserver", "kube-controller-manager")
#: The node's binaries built from the pinned release (tools/build-node.sh).
NODE_BINARIES: Final = ("kubelet", "kube-proxy", "kube-scheduler")
#: The node's binaries from Debian packages, by absolute path (never looked up on $PATH).
SYSTEM_BINARIES: Final = {
    "containerd": "/usr/bin/containerd",
    "ctr": "/usr/bin/ctr",
    "runc": "/usr/sbin/runc",
    "cni-bridge": "/usr/lib/cni/bridge",
    "cni-host-local": "/usr/lib/cni/host-local",
    "cni-loopback": "/usr/lib/cni/loopback",
    "iptables": "/usr/sbin/iptables",
    "iptables-save": "/usr/sbin/iptables-save",
    "ip6tables": "/usr/sbin/ip6tables",
    "ip6tables-save": "/usr/sbin/ip6tables-save",
    "ip": "/usr/sbin/ip",
}
CNI_BIN_DIR: Final = "/usr/lib/cni"

BIN_DIR_ENV: Final = "WSO_BIN_DIR"
NODE_BIN_DIR_ENV: Final = "WSO_NODE_BIN_DIR"


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


def _run_build_script(script: Path, env_var: str, wanted: str) -> str:
    """Run a build script (it prints its cached bin directory and only builds what is missing).

    Serialized with a file lock because two concurrent builds would write the same temporary outputs.
    """
    if not script.is_file():
        raise ControlPlaneError(
            f"{script} not found (installed outside the repo?); set ${env_var} to a directory holding {wanted}"
        )
    lock_path = _build_lock_path()
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # stderr (build progress) goes to ours; stdout carries the bin dir.
        result = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"{script} failed with exit code {result.returncode}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if not lines:
        raise ControlPlaneError(f"{script} printed no bin directory")
    return lines[-1].strip()


def _checked(bin_dir: str | os.PathLike[str], names: tuple[str, ...]) -> Path:
    path = Path(bin_dir).resolve()
    missing = [b for b in names if not os.access(path / b, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{path} lacks executable {', '.join(missing)}")
    return path


def resolve_bin_dir(bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the directory holding the pinned control-plane binaries, building them if needed.

    Order: the explicit argument, ``$WSO_BIN_DIR``, then ``tools/build-tools.sh``.
    """
    if bin_dir is None and os.environ.get(BIN_DIR_ENV):
        bin_dir = os.environ[BIN_DIR_ENV]
    if bin_dir is None:
        bin_dir = _run_build_script(
            BUILD_TOOLS_SCRIPT, BIN_DIR_ENV, "etcd, kube-apiserver, kube-controller-manager, kubectl, helm"
        )
    return _checked(bin_dir, SERVER_BINARIES)


def resolve_node_bin_dir(bin_dir: str | os.PathLike[str] | None = None) -> Path:
    """Find the directory holding kubelet, kube-proxy and kube-scheduler, building them if needed.

    Order: the explicit argument, ``$WSO_NODE_BIN_DIR``, then ``tools/build-node.sh``.
    """
    if bin_dir is None and os.environ.get(NODE_BIN_DIR_ENV):
        bin_dir = os.environ[NODE_BIN_DIR_ENV]
    if bin_dir is None:
        bin_dir = _run_build_script(BUILD_NODE_SCRIPT, NODE_BIN_DIR_ENV, ", ".join(NODE_BINARIES))
    return _checked(bin_dir, NODE_BINARIES)


def check_node_host() -> None:
    """The machine can run the node: root, and the Debian packages installed. Fails with what to do."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("the node needs root (network interfaces, iptables, mounts, cgroups)")
    missing = [path for path in SYSTEM_BINARIES.values() if not os.access(path, os.X_OK)]
    if missing:
        problems.append(f"missing {', '.join(missing)}: run `bash {INSTALL_SYSTEM_DEPS_SCRIPT}` (or `make system-deps`)")
    if not Path("/sys/fs/cgroup").is_dir():
        problems.append("no /sys/fs/cgroup")
    if shutil.which("umount") is None:
        problems.append("no umount")
    if problems:
        raise ControlPlaneError("cannot start the local node: " + "; ".join(problems))
