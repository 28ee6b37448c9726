"""`make run`: a newcomer's one command -- a cluster (the configured one, or a local one), the CRDs, the operator.

With no cluster configured (no --kubeconfig, no $KUBECONFIG, no ~/.kube/config) it starts a local cluster with
a node (containerd, kubelet: pods really run; needs root and `make node-deps`, else a control plane only, with
`--no-node` too), imports the workspace image (also under the examples' image name, so `kubectl apply -f
examples/` starts real pods without a registry), applies the CRDs the installed operator package carries
(`workspace-secrets-operator crds | kubectl apply -f -`: no checkout needed), and runs `workspace-secrets-operator run`
against it with the pod-injection webhook on (the local API server reaches the operator on 127.0.0.1). Extra
arguments go to the operator unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .controlplane import REPO_ROOT, ControlPlane

#: The image the examples' workspaces name (examples/*.yaml); the local node serves it from the workspace image.
EXAMPLES_IMAGE = "docker.io/codercom/enterprise-base:ubuntu"


def _configured_kubeconfig(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if os.environ.get("KUBECONFIG"):
        return os.environ["KUBECONFIG"]
    default = Path("~/.kube/config").expanduser()
    return str(default) if default.exists() else None


def apply_crds(operator: str, kubectl: str, env: dict[str, str]) -> list[str]:
    """The CRDs of the installed operator package (`workspace-secrets-operator crds`), applied and Established."""
    crds = subprocess.run([operator, "crds"], check=True, env=env, capture_output=True, text=True).stdout
    applied = subprocess.run([kubectl, "apply", "--server-side", "-o", "name", "-f", "-"], input=crds, check=True,
                             env=env, capture_output=True, text=True).stdout.split()
    subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=60s", *applied],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    print("\n".join(applied), flush=True)
    return applied


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wso-dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=None, help="use this cluster instead of starting a local one")
    parser.add_argument("--no-node", action="store_true", help="a local control plane only (no pods run)")
    args, operator_args = parser.parse_known_args(argv)

    kubeconfig = _configured_kubeconfig(args.kubeconfig)
    control_plane = None
    kubectl = "kubectl"
    if kubeconfig is None:
        node = not args.no_node and os.geteuid() == 0
        if not node and not args.no_node:
            print("Not root: the local cluster gets no node (pods stay Pending). Run as root for real pods.",
                  flush=True)
        print("No cluster configured: starting a local control plane (etcd, kube-apiserver, kube-controller-manager)"
              + (" and a node (containerd, kubelet, kube-proxy, kube-scheduler)..." if node else "..."), flush=True)
        control_plane = ControlPlane(node=node)
        control_plane.start()
        kubeconfig = str(control_plane.kubeconfig)
        kubectl = str(Path(control_plane.bin_dir) / "kubectl")
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    executable = str(Path(sys.executable).with_name("workspace-secrets-operator"))
    operator = [executable, "run", "--kubeconfig", kubeconfig]
    if control_plane is not None:
        # The local API server reaches the webhook on 127.0.0.1; metrics and probes stay on loopback too.
        operator += ["--webhook", "--health-probe-bind-address", "127.0.0.1:8080", "--metrics-bind-address", "127.0.0.1:9090"]
    try:
        if control_plane is not None and control_plane.has_node:
            workspace = control_plane.load_image("workspace")
            control_plane.tag_image(workspace, EXAMPLES_IMAGE)
            print(f"Node {control_plane.node_name} ready at {control_plane.node_ip}; image {workspace} imported, "
                  f"also as {EXAMPLES_IMAGE} (the examples' image, served locally: no registry).", flush=True)
        apply_crds(executable, kubectl, env)
        examples = REPO_ROOT / "examples"
        print(
            "\nCRDs applied. In another shell:\n"
            f"  export KUBECONFIG={kubeconfig}\n"
            + (f"  {kubectl} apply -f {examples}\n" if examples.is_dir() else "")
            + f"  {kubectl} get workspacesecrets -o wide\n"
            "Stop with Ctrl-C.\n",
            flush=True,
        )
        return subprocess.run(operator + list(operator_args), env=env).returncode
    except KeyboardInterrupt:
        return 0
    finally:
        if control_plane is not None:
            control_plane.stop()


if __name__ == "__main__":
    sys.exit(main())
