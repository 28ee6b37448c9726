"""``wso-controlplane up [--node] | down | status``: a long-lived local cluster for development."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .binaries import BIN_DIR_ENV, NODE_BIN_DIR_ENV
from .controlplane import ControlPlane
from .errors import ControlPlaneError
from .records import STATE_FILE_NAME, _read_record, state_dir


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
            if existing.has_node != args.node:
                raise ControlPlaneError(
                    f"a control plane {'with' if existing.has_node else 'without'} a node is running at "
                    f"{existing.server}; `wso-controlplane down` first"
                )
            print(f"control plane already running at {existing.server}", file=sys.stderr)
            _print_kubeconfig(existing, sys.stdout)
            return 0
        print("recorded control plane is not healthy; stopping its remains", file=sys.stderr)
        existing.stop()
    plane = ControlPlane(bin_dir=args.bin_dir, workdir=args.workdir, detached=True, timeout=args.timeout,
                         node=args.node, node_bin_dir=args.node_bin_dir)
    plane.start()
    plane.save_state()
    where = f", node {plane.node_name} at {plane.node_ip}" if plane.has_node else ""
    print(
        f"control plane ready at {plane.server}{where} in {plane.timings['total']:.1f}s (workdir {plane.workdir})",
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
    if plane.has_node:
        print(f"node:       {plane.node_name} ({plane.node_ip}, pods {plane.pod_cidr})")
    for proc in record.processes:
        print(f"  {proc.name:<24} pid {proc.pid:<8} {'running' if proc.pid in live else 'gone'}")
    return 0 if healthy else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``wso-controlplane up|down|status``: a long-lived local cluster for development."""
    parser = argparse.ArgumentParser(prog="wso-controlplane", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start (detached) and print the kubeconfig; reuse a healthy one")
    up.add_argument("--bin-dir", help=f"binaries directory (default: ${BIN_DIR_ENV} or tools/build-tools.sh)")
    up.add_argument("--node", action="store_true",
                    help="also start a node (containerd, kubelet, kube-proxy, kube-scheduler): pods run; needs root")
    up.add_argument("--node-bin-dir", help=f"node binaries (default: ${NODE_BIN_DIR_ENV} or tools/build-node.sh)")
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
