"""The console entry point: `workspace-secrets-operator run`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import sys
from datetime import datetime, timezone

import kopf

from workspace_secrets import __version__
from workspace_secrets.runtime import metrics
from workspace_secrets.settings import ConnectConfig, OperatorConfig, WebhookConfig, local_base_url

#: Every flag's default comes from the settings dataclasses (settings.py): one home for each default.
D, W, C = OperatorConfig, WebhookConfig, ConnectConfig

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workspace-secrets-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command")
    # `make run` (tools/devcluster/dev.py) starts a local cluster when none is configured, then this command.
    for name, help_ in (
        ("run", "run the operator against the configured cluster (in-cluster, or KUBECONFIG)"),
    ):
        cmd = sub.add_parser(name, help=help_)
        cmd.add_argument("-n", "--namespace", action="append", default=[], dest="namespaces",
                         help="watch only this namespace (repeatable); default: all namespaces")
        cmd.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
        cmd.add_argument("--log-format", choices=("plain", "json", "full"), default=os.environ.get("WSO_LOG_FORMAT", D.log_format))
        cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        cmd.add_argument("--liveness", default=os.environ.get("WSO_LIVENESS", D.liveness),
                         help="kopf liveness endpoint URL ('' to disable)")
        cmd.add_argument("--peering", default=None,
                         help="kopf peering object name for running several replicas with one active (default: standalone)")
        cmd.add_argument("--priority", type=int, default=None,
                         help="peering priority of this replica (default: derived from the start time, so the "
                              "earliest-started replica is the active one; replicas must not share a priority)")
        cmd.add_argument("--peering-lifetime", type=int, default=D.peering_lifetime,
                         help="seconds a replica's keep-alive stays valid: the failover time after a crash")
        cmd.add_argument("--metrics-port", type=int, default=int(os.environ.get("WSO_METRICS_PORT", D.metrics_port)),
                         help="serve Prometheus metrics on this port at /metrics (0 disables)")
        cmd.add_argument("--metrics-address", default=os.environ.get("WSO_METRICS_ADDRESS", D.metrics_address),
                         help="address the metrics server listens on")
        cmd.add_argument("--watch-unhealthy-threshold", type=float, default=D.watch_unhealthy_threshold,
                         help="seconds a Secret watch may stay disconnected before the liveness probe fails")
        cmd.add_argument("--api-concurrency", type=int, default=D.api_concurrency, help="parallel Kubernetes API requests")
        cmd.add_argument("--api-qps", type=float, default=D.api_qps,
                         help="client-side pacing of the operator's own API requests per second (kopf's are separate); "
                              "0 (default): none, rely on the API server's Priority and Fairness and --api-concurrency")
        cmd.add_argument("--api-burst", type=int, default=D.api_burst, help="requests allowed in a burst above --api-qps")
        cmd.add_argument("--workers", type=int, default=D.workers,
                         help="WorkspaceSecret reconciles running at a time, and likewise UserToken passes (each holds one object "
                              "and mostly waits on the API or the provider)")
        cmd.add_argument("--resync-interval", type=float, default=D.resync_interval, help="seconds between safety-net resyncs")
        cmd.add_argument("--sweep-interval", type=float, default=D.sweep_interval, help="seconds between orphaned-credential sweeps")
        cmd.add_argument("--providers-config", default=os.environ.get("WSO_PROVIDERS_CONFIG", D.providers_config),
                         help="YAML file configuring dynamic-credential providers (see docs/users/credentials.md)")
        cmd.add_argument("--operator-namespace", default=os.environ.get("POD_NAMESPACE", D.operator_namespace),
                         help="namespace holding the providers' admin credential Secrets")
        _webhook_arguments(cmd)
        _add_connect_arguments(cmd)
    return parser


def _webhook_arguments(cmd: argparse.ArgumentParser) -> None:
    """The pod-injection admission webhook (docs/users/pod-injection.md)."""
    group = cmd.add_argument_group("pod-injection webhook")
    group.add_argument("--webhook", action=argparse.BooleanOptionalAction, default=None,
                       help="serve the mutating webhook that mounts WorkspaceSecrets into labelled pods (default: off)")
    group.add_argument("--webhook-port", type=int, default=W.port, help="HTTPS port the webhook listens on (default %(default)s)")
    group.add_argument("--webhook-host", default=W.host,
                       help="out of the cluster: the API server calls https://HOST:PORT (default %(default)s)")
    group.add_argument("--webhook-service", metavar="NAMESPACE/NAME", default=None,
                       help="in the cluster: the API server calls this Service (its port --webhook-service-port "
                       "targets --webhook-port); the certificate covers NAME.NAMESPACE.svc")
    group.add_argument("--webhook-service-port", type=int, default=W.service_port, help="the Service's port (default %(default)s)")
    group.add_argument("--webhook-listen-address", default=None,
                       help="address to listen on (default: 0.0.0.0 with --webhook-service, else --webhook-host if an IP)")
    group.add_argument("--webhook-cert-dir", default=None,
                       help="certificate directory: tls.crt/tls.key[/ca.crt] provided there are used as they are; "
                       "otherwise the operator keeps its own CA and serving certificate there (default: a temporary directory)")
    group.add_argument("--webhook-configuration", default=W.configuration_name,
                       help="name of the MutatingWebhookConfiguration the operator manages (default %(default)s)")


def _webhook_config(args: argparse.Namespace) -> WebhookConfig:
    service = None
    if args.webhook_service:
        namespace, _, name = args.webhook_service.partition("/")
        if not namespace or not name:
            raise SystemExit(f"--webhook-service: expected NAMESPACE/NAME, got {args.webhook_service!r}")
        service = (namespace, name)
    return WebhookConfig(
        enabled=bool(args.webhook),
        port=args.webhook_port,
        listen_address=args.webhook_listen_address,
        host=args.webhook_host,
        service=service,
        service_port=args.webhook_service_port,
        cert_dir=args.webhook_cert_dir,
        configuration_name=args.webhook_configuration,
    )


def _add_connect_arguments(cmd: argparse.ArgumentParser) -> None:
    """The UserToken connect page (see docs/users/usertoken.md)."""
    env = os.environ.get
    port = env("WSO_CONNECT_PORT")
    cmd.add_argument("--connect-port", type=int, default=int(port) if port else C.port,
                     help="serve the connect page and OAuth callback on this port (default: not served)")
    cmd.add_argument("--connect-bind", default=env("WSO_CONNECT_BIND", C.bind), help="address the connect page listens on")
    cmd.add_argument("--connect-base-url", default=env("WSO_CONNECT_BASE_URL"),
                     help="URL users' browsers reach the connect page at (the OAuth callback is <it>/oauth/callback)")
    cmd.add_argument("--connect-user-header", default=env("WSO_CONNECT_USER_HEADER"),
                     help="header carrying the user name, set by the platform's auth proxy (needs --connect-trusted-proxies); "
                          "the connect page's only sign-in: without it the page answers 503")
    cmd.add_argument("--connect-trusted-proxies", default=env("WSO_CONNECT_TRUSTED_PROXIES", ""),
                     help="comma-separated CIDRs the user header is accepted from")
    cmd.add_argument("--connect-signing-key-file", default=env("WSO_CONNECT_SIGNING_KEY_FILE"),
                     help="file with the HMAC key (>= 32 bytes) for the connect page's CSRF tokens and OAuth state")
    cmd.add_argument("--connect-link-ttl", type=float, default=3600.0,
                     help="ignored (kept for compatibility): status.authorizationURL is a plain link to the connect page")
    cmd.add_argument("--token-validate-interval", type=float, default=C.validate_interval, help="seconds between scheduled token validations")


def _connect_config(args: argparse.Namespace) -> ConnectConfig:
    base_url = args.connect_base_url or local_base_url(args.connect_port)
    return ConnectConfig(
        port=args.connect_port, bind=args.connect_bind, base_url=base_url.rstrip("/"),
        user_header=args.connect_user_header or None,
        trusted_proxies=tuple(p.strip() for p in args.connect_trusted_proxies.split(",") if p.strip()),
        signing_key_file=args.connect_signing_key_file,
        validate_interval=args.token_validate_interval,
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before `kubernetes` is imported: it reads KUBECONFIG once, at import, for kopf's login.
        os.environ["KUBECONFIG"] = args.kubeconfig
    from workspace_secrets import handlers  # noqa: F401  (registers the kopf handlers)
    from workspace_secrets.app import App
    from workspace_secrets.runtime.peering import auto_priority

    webhook = _webhook_config(args)
    if webhook.enabled:
        from workspace_secrets.handlers import pod_injection as pods

        pods.register()  # only when enabled: kopf refuses admission handlers without a webhook server

    kopf.configure(
        verbose=args.verbose,
        log_format={"plain": kopf.LogFormat.PLAIN, "json": kopf.LogFormat.JSON, "full": kopf.LogFormat.FULL}[args.log_format],
        # JSON lines carry the object as {"object": {kind, namespace, name, uid}}; text lines get a
        # "[namespace/name]" prefix instead.
        log_prefix=args.log_format != "json",
        log_refkey="object",
    )
    _quiet_client_libraries()
    logging.getLogger("kopf.objects").addFilter(_ObserveSuccessFilter(verbose=args.verbose))
    # Our identity in the peering object, shared with kopf so both read the same entry. In a pod,
    # POD_ID (the pod name, from the downward API) makes it readable in `kubectl get clusterkopfpeering -o yaml`.
    identity = f"{os.environ.get('POD_ID') or socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
    priority = args.priority if args.priority is not None else auto_priority(datetime.now(timezone.utc))
    config = OperatorConfig(
        namespaces=tuple(args.namespaces),
        kubeconfig=args.kubeconfig,
        api_concurrency=args.api_concurrency,
        api_qps=args.api_qps,
        api_burst=args.api_burst,
        workers=args.workers,
        resync_interval=args.resync_interval,
        watch_unhealthy_threshold=args.watch_unhealthy_threshold,
        peering=args.peering,
        identity=identity,
        priority=priority,
        peering_lifetime=args.peering_lifetime,
        providers_config=args.providers_config,
        sweep_interval=args.sweep_interval,
        operator_namespace=args.operator_namespace,
        webhook=webhook,
        connect=_connect_config(args),
        log_format=args.log_format,
        liveness=args.liveness,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        shutdown_grace=20.0,  # our own process: a hung kopf task must not keep it alive (app.py)
    )
    metrics.serve(config.metrics_port, config.metrics_address)
    asyncio.run(
        kopf.operator(
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            standalone=args.peering is None,
            peering_name=args.peering,
            priority=priority if args.peering is not None else None,
            identity=identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            liveness_endpoint=config.liveness or None,
            memo=App(config),
        )
    )
    return 0


class _ObserveSuccessFilter(logging.Filter):
    """kopf logs every event handler's success at INFO; for the WorkspaceSecret `observe` handler that
    is a line per watch event of every object (three per new object), saying nothing the operator's
    own lines do not. Kept with --verbose."""

    def __init__(self, *, verbose: bool) -> None:
        super().__init__()
        self._verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self._verbose or record.getMessage() != "Handler 'observe' succeeded."


def _quiet_client_libraries() -> None:
    """Provider SDKs log request and response bodies at DEBUG -- which include freshly minted secrets
    (botocore logs CreateAccessKey's response). Never let them, whatever the operator's verbosity. The libraries the
    operator imports: boto3/botocore/s3transfer (aws-iam), google-auth (gcp), psycopg (postgresql),
    urllib3 (the Kubernetes client)."""
    for name in ("botocore", "boto3", "s3transfer", "urllib3", "google", "psycopg"):
        logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
