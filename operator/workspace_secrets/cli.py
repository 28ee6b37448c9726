"""The console entry point: `workspace-secrets-operator run|dev`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import subprocess
import sys
from pathlib import Path

import kopf

from . import __version__
from .config import ConnectConfig, OperatorConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workspace-secrets-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command")
    for name, help_ in (
        ("run", "run the operator against the configured cluster (in-cluster, or KUBECONFIG)"),
        ("dev", "run the operator locally; with no KUBECONFIG, start a local control plane and apply the CRDs first"),
    ):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("-n", "--namespace", action="append", default=[], dest="namespaces",
                         help="watch only this namespace (repeatable); default: all namespaces")
        cmd.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
        cmd.add_argument("--log-format", choices=("plain", "json", "full"), default=os.environ.get("WSO_LOG_FORMAT", "plain"))
        cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        cmd.add_argument("--liveness", default=os.environ.get("WSO_LIVENESS", "http://0.0.0.0:8080/healthz"),
                         help="kopf liveness endpoint URL ('' to disable)")
        cmd.add_argument("--peering", default=None,
                         help="kopf peering object name for running several replicas with one active (default: standalone)")
        cmd.add_argument("--api-concurrency", type=int, default=16, help="parallel Kubernetes API requests")
        cmd.add_argument("--workers", type=int, default=4, help="workers for watch- and resync-driven reconciles")
        cmd.add_argument("--resync-interval", type=float, default=300.0, help="seconds between safety-net resyncs")
        _add_connect_arguments(cmd)
    return parser


def _add_connect_arguments(cmd: argparse.ArgumentParser) -> None:
    """The UserToken connect page (see README "UserToken")."""
    env = os.environ.get
    port = env("WSO_CONNECT_PORT")
    cmd.add_argument("--connect-port", type=int, default=int(port) if port else None,
                     help="serve the connect page and OAuth callback on this port (default: not served)")
    cmd.add_argument("--connect-bind", default=env("WSO_CONNECT_BIND", "0.0.0.0"), help="address the connect page listens on")
    cmd.add_argument("--connect-base-url", default=env("WSO_CONNECT_BASE_URL"),
                     help="URL users' browsers reach the connect page at (the OAuth callback is <it>/oauth/callback)")
    cmd.add_argument("--connect-user-header", default=env("WSO_CONNECT_USER_HEADER"),
                     help="header carrying the user name, set by the platform's auth proxy (needs --connect-trusted-proxies)")
    cmd.add_argument("--connect-trusted-proxies", default=env("WSO_CONNECT_TRUSTED_PROXIES", ""),
                     help="comma-separated CIDRs the user header is accepted from")
    cmd.add_argument("--connect-signing-key-file", default=env("WSO_CONNECT_SIGNING_KEY_FILE"),
                     help="file with the HMAC key (>= 32 bytes) for connect links, sessions and OAuth state")
    cmd.add_argument("--connect-link-ttl", type=float, default=3600.0, help="seconds a UserToken's authorizationURL stays valid")
    cmd.add_argument("--token-validate-interval", type=float, default=1800.0, help="seconds between scheduled token validations")


def _connect_config(args: argparse.Namespace) -> ConnectConfig:
    base_url = args.connect_base_url or f"http://127.0.0.1:{args.connect_port or 8081}"
    return ConnectConfig(
        port=args.connect_port, bind=args.connect_bind, base_url=base_url.rstrip("/"),
        user_header=args.connect_user_header or None,
        trusted_proxies=tuple(p.strip() for p in args.connect_trusted_proxies.split(",") if p.strip()),
        signing_key_file=args.connect_signing_key_file, link_ttl=args.connect_link_ttl,
        validate_interval=args.token_validate_interval,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    if args.command == "dev":
        return _dev(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before `kubernetes` is imported: it reads KUBECONFIG once, at import, for kopf's login.
        os.environ["KUBECONFIG"] = args.kubeconfig
    from . import handlers  # noqa: F401  (registers the kopf handlers)

    kopf.configure(
        verbose=args.verbose,
        log_format={"plain": kopf.LogFormat.PLAIN, "json": kopf.LogFormat.JSON, "full": kopf.LogFormat.FULL}[args.log_format],
        log_refkey="object",
    )
    config = OperatorConfig(
        namespaces=tuple(args.namespaces),
        kubeconfig=args.kubeconfig,
        api_concurrency=args.api_concurrency,
        secret_workers=args.workers,
        resync_interval=args.resync_interval,
        connect=_connect_config(args),
    )
    asyncio.run(
        kopf.operator(
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            standalone=args.peering is None,
            peering_name=args.peering,
            liveness_endpoint=args.liveness or None,
            memo=kopf.Memo(config=config),
        )
    )
    return 0


def _dev(args: argparse.Namespace) -> int:
    """A newcomer's one command: a cluster (the configured one, or a local control plane), CRDs, operator."""
    control_plane = None
    if not args.kubeconfig and not os.environ.get("KUBECONFIG") and not Path("~/.kube/config").expanduser().exists():
        from .testing.controlplane import ControlPlane

        print("No cluster configured: starting a local control plane (etcd, kube-apiserver, kube-controller-manager)...", flush=True)
        control_plane = ControlPlane()
        control_plane.start()
        args.kubeconfig = str(control_plane.kubeconfig)
        kubectl = str(Path(control_plane.bin_dir) / "kubectl")
    else:
        kubectl = "kubectl"
    env = {**os.environ, **({"KUBECONFIG": args.kubeconfig} if args.kubeconfig else {})}
    try:
        subprocess.run([kubectl, "apply", "--server-side", "-f", str(REPO_ROOT / "crds")], check=True, env=env)
        subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO_ROOT / "crds")],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        print(
            "\nCRDs applied. In another shell:\n"
            + (f"  export KUBECONFIG={args.kubeconfig}\n" if args.kubeconfig else "")
            + f"  {kubectl} apply -f {REPO_ROOT / 'examples'}\n"
            f"  {kubectl} get workspacesecrets -o wide\n"
            "Stop with Ctrl-C.\n",
            flush=True,
        )
        if args.liveness == "http://0.0.0.0:8080/healthz":
            args.liveness = "http://127.0.0.1:8080/healthz"
        return _run(args)
    except KeyboardInterrupt:
        return 0
    finally:
        if control_plane is not None:
            control_plane.stop()


if __name__ == "__main__":
    sys.exit(main())
