"""The console entry point: `workspace-secrets-operator run` (the operator) and `workspace-secrets-operator crds`
(every CRD it serves, for `kubectl apply -f -`).

Every flag of `run` can also be given as an environment variable: WSO_ and the flag's name in upper snake case
(`--leader-elect` <- WSO_LEADER_ELECT=true, `--namespace` <- WSO_NAMESPACE=a,b); a flag on the command line wins, over
its variable and over any other spelling of the same setting (-v, the deprecated --liveness, --metrics-port/-address)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import re
import secrets
import signal
import socket
import sys
from collections.abc import Awaitable, Mapping
from datetime import datetime, timezone
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import kopf

from workspace_secrets import __version__
from workspace_secrets.runtime import metrics
from workspace_secrets.settings import (
    ConnectConfig,
    LeaderElectionConfig,
    OperatorConfig,
    WebhookConfig,
    local_base_url,
    parse_bind_address,
)

log = logging.getLogger(__name__)

#: Every flag's default comes from the settings dataclasses (settings.py): one home for each default.
D, W, C, L = OperatorConfig, WebhookConfig, ConnectConfig, LeaderElectionConfig
ENV_PREFIX = "WSO_"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEPRECATED = "deprecated"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default and the environment variable it is read from."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.help is argparse.SUPPRESS or not action.option_strings:
            return text
        if "%(default)" not in text and "default:" not in text and action.default is not argparse.SUPPRESS:
            text += " (default: %(default)s)"
        name = env_name(action)
        if name:
            text += f" [env {name}]"
        return text


def env_name(action: argparse.Action) -> str | None:
    """WSO_<FLAG_IN_UPPER_SNAKE> for the action's long flag (None for --help/--version)."""
    if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
        return None
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs:
        return None
    return ENV_PREFIX + longs[0][2:].upper().replace("-", "_")


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
#: Attributes of the parsed `run` namespace: the dests given on the command line, and those given by WSO_* variables.
FROM_COMMAND_LINE, FROM_ENVIRONMENT = "from_command_line", "from_environment"


class _AppendOverridingDefault(argparse._AppendAction):
    """A repeatable flag whose first use on the command line replaces its default (WSO_NAMESPACE=a,b with `-n c`
    watches c only), as any other flag's value replaces its variable's; later uses append."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is self.default:  # argparse put the default object itself there
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


class _RunParser(argparse.ArgumentParser):
    """`run`'s parser: its WSO_* variables are read when `run` is parsed (not for `crds`), and the namespace records
    where each setting came from (FROM_COMMAND_LINE, FROM_ENVIRONMENT) so that an explicit flag beats an alias."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        from_environment = apply_environment(self, os.environ)
        namespace, rest = super().parse_known_args(args, namespace)
        setattr(namespace, FROM_ENVIRONMENT, frozenset(from_environment))
        setattr(namespace, FROM_COMMAND_LINE, frozenset(self._given(args)))
        return namespace, rest

    def _given(self, args: list[str]) -> set[str]:
        """The dests the command line sets: the same arguments parsed again with every default suppressed."""
        saved = [(action, action.default) for action in self._actions]
        try:
            for action in self._actions:
                action.default = argparse.SUPPRESS
            given, _ = super().parse_known_args(args, argparse.Namespace())
        finally:
            for action, default in saved:
                action.default = default
        return set(vars(given)) - set(self._defaults)


def given(args: argparse.Namespace, dest: str) -> int:
    """Where `dest` came from: 2 the command line, 1 its WSO_* variable, 0 its default."""
    if dest in getattr(args, FROM_COMMAND_LINE, ()):
        return 2
    return 1 if dest in getattr(args, FROM_ENVIRONMENT, ()) else 0


_SERVICE_LINK_SCHEMES = ("tcp://", "udp://", "sctp://")


def apply_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> set[str]:
    """Defaults from WSO_* variables: strings go through the flag's type (argparse converts string defaults), a
    switch takes true/false/1/0/yes/no/on/off, a repeatable flag a comma-separated list. Returns the dests set.
    Idempotent: each call starts from the flags' own defaults."""
    applied = set()
    for action in parser._actions:
        if not hasattr(action, "_wso_default"):
            action._wso_default = action.default  # type: ignore[attr-defined]
        action.default = action._wso_default  # type: ignore[attr-defined]
        name = env_name(action)
        if name is None or name not in environ:
            continue
        raw = environ[name]
        if raw.startswith(_SERVICE_LINK_SCHEMES):
            # A Service named like a flag (`wso-metrics` -> WSO_METRICS_PORT=tcp://10.96.0.7:9090) in the operator's
            # namespace: kubelet's service links, not a setting. Only the tcp:// form is recognisable: a Service
            # `wso-webhook` also sets WSO_WEBHOOK_SERVICE_PORT=443, a plain number. The real protection is
            # enableServiceLinks: false in the pod (the chart sets it; docs/operators/cli.md says so).
            log.warning("ignoring %s: it looks like a Kubernetes service link, not a value for %s", name, action.option_strings[-1])
            continue
        applied.add(action.dest)
        if action.nargs == 0 or isinstance(action, argparse.BooleanOptionalAction):
            value = raw.strip().lower()
            if value not in _TRUE | _FALSE:
                parser.error(f"{name}={raw!r}: expected true or false")
            action.default = value in _TRUE
        elif isinstance(action, argparse._AppendAction):
            action.default = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            if action.choices is not None and raw not in action.choices:
                parser.error(f"{name}={raw!r}: expected one of {', '.join(map(str, action.choices))}")
            action.default = raw
    return applied


def duration(value: str) -> float:
    """Seconds: "15", "15s", "1.5s", "2m", "1m30s" (Go's durations, as controller-runtime's flags take them)."""
    text = str(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            raise argparse.ArgumentTypeError(f"not a duration: {value!r} (a finite number of seconds >= 0)")
        return seconds
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?", text)
    if not text or parts is None:
        raise argparse.ArgumentTypeError(f"not a duration: {value!r} (e.g. 15s, 1m30s)")
    h, m, s, ms = (float(p) if p else 0.0 for p in parts.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def _seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workspace-secrets-operator", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", parser_class=_RunParser)
    # `make run` (tools/devcluster/dev.py) starts a local cluster when none is configured, then this command.
    cmd = sub.add_parser("run", help="run the operator against the configured cluster (in-cluster, or KUBECONFIG)",
                         formatter_class=_HelpFormatter,
                         description="Run the operator. Every flag can also be set by an environment variable, "
                                     "named after the flag: WSO_<FLAG_IN_UPPER_SNAKE_CASE> (shown as [env ...]; "
                                     "switches take true/false, --namespace a comma-separated list); the command "
                                     "line wins.")
    sub.add_parser("crds", help="print every CustomResourceDefinition the operator needs (YAML, for kubectl apply -f -)",
                   formatter_class=_HelpFormatter)  # a _RunParser too, without flags: no variables to read
    cmd.add_argument("-n", "--namespace", action=_AppendOverridingDefault, default=[], dest="namespaces",
                     help="watch only this namespace (repeatable; env: comma-separated); default: all namespaces")
    cmd.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    _process_arguments(cmd)
    _leader_election_arguments(cmd)
    cmd.add_argument("--watch-unhealthy-threshold", type=float, default=D.watch_unhealthy_threshold,
                     help="seconds a Secret watch may stay disconnected before /healthz fails")
    cmd.add_argument("--api-concurrency", type=int, default=D.api_concurrency, help="parallel Kubernetes API requests")
    cmd.add_argument("--api-qps", type=float, default=D.api_qps,
                     help="client-side pacing of the operator's own API requests per second (kopf's are separate); "
                          "0: none, rely on the API server's Priority and Fairness and --api-concurrency")
    cmd.add_argument("--api-burst", type=int, default=D.api_burst, help="requests allowed in a burst above --api-qps")
    # Hidden while measured (docs/developers/benchmarks.md): the API client's transport.
    cmd.add_argument("--api-client", choices=("threads", "aio"), default=D.api_client, help=argparse.SUPPRESS)
    cmd.add_argument("--workers", type=int, default=D.workers,
                     help="WorkspaceSecret reconciles running at a time, and likewise UserToken passes (each holds one object "
                          "and mostly waits on the API or the provider)")
    cmd.add_argument("--resync-interval", type=float, default=D.resync_interval, help="seconds between safety-net resyncs")
    cmd.add_argument("--sweep-interval", type=float, default=D.sweep_interval, help="seconds between orphaned-credential sweeps")
    cmd.add_argument("--providers-config", default=D.providers_config,
                     help="YAML file configuring dynamic-credential providers (see docs/users/credentials.md)")
    cmd.add_argument("--ca-bundle-file", default=D.ca_bundle_file, metavar="FILE",
                     help="PEM CA certificates trusted in addition to the system store by every outgoing HTTPS request "
                          "(OAuth, Vault, credential providers); proxies come from HTTPS_PROXY, HTTP_PROXY, NO_PROXY")
    cmd.add_argument("--operator-namespace", default=os.environ.get("POD_NAMESPACE") or D.operator_namespace,
                     help="namespace holding the providers' admin credential Secrets (and the leader election Lease); "
                          "falls back to POD_NAMESPACE")
    _webhook_arguments(cmd)
    _add_connect_arguments(cmd)
    return parser


def _process_arguments(cmd: argparse.ArgumentParser) -> None:
    """Logs, health probes and metrics: controller-runtime's flag names."""
    cmd.add_argument("--log-format", choices=("plain", "json", "full"), default=D.log_format, help="log line format")
    cmd.add_argument("--log-level", choices=LOG_LEVELS, default=D.log_level, help="least severe level logged")
    cmd.add_argument("-v", "--verbose", action="store_true", help="debug logging (--log-level debug)")
    cmd.add_argument("--health-probe-bind-address", default=D.health_probe_bind_address,
                     help="[HOST]:PORT serving /healthz (liveness) and /readyz (readiness: leading, started, webhook "
                          "serving); 0 disables")
    cmd.add_argument("--metrics-bind-address", default=D.metrics_bind_address,
                     help="[HOST]:PORT serving Prometheus metrics at /metrics; 0 disables")
    # Deprecated spellings (hidden): kopf's liveness URL, the metrics port and address.
    cmd.add_argument("--liveness", default=None, help=argparse.SUPPRESS)
    cmd.add_argument("--metrics-port", type=int, default=None, help=argparse.SUPPRESS)
    cmd.add_argument("--metrics-address", default=None, help=argparse.SUPPRESS)


def _leader_election_arguments(cmd: argparse.ArgumentParser) -> None:
    group = cmd.add_argument_group("high availability")
    group.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=L.enabled,
                       help="run kopf and the operator only while holding a coordination.k8s.io Lease (several "
                            "replicas, one active); losing it ends the process (exit 1)")
    group.add_argument("--leader-election-id", default=L.id, help="name of the Lease")
    group.add_argument("--leader-election-namespace", default=None,
                       help="namespace of the Lease (default: --operator-namespace)")
    group.add_argument("--leader-election-lease-duration", type=duration, default=_seconds_text(L.lease_duration),
                       help="a standby takes over when the Lease has not been renewed for this long")
    group.add_argument("--leader-election-renew-deadline", type=duration, default=_seconds_text(L.renew_deadline),
                       help="the leader exits when it could not renew the Lease for this long")
    group.add_argument("--leader-election-retry-period", type=duration, default=_seconds_text(L.retry_period),
                       help="between attempts to acquire or renew the Lease")
    group.add_argument("--peering", default=None,
                       help="deprecated, use --leader-elect: kopf peering object name for several replicas with one "
                            "active (default: standalone)")
    group.add_argument("--priority", type=int, default=None,
                       help="with --peering: this replica's priority (default: derived from the start time, so the "
                            "earliest-started replica is the active one; replicas must not share a priority)")
    group.add_argument("--peering-lifetime", type=int, default=D.peering_lifetime,
                       help="with --peering: seconds a replica's keep-alive stays valid (the failover time after a crash)")


def _webhook_arguments(cmd: argparse.ArgumentParser) -> None:
    """The pod-injection admission webhook (docs/users/pod-injection.md)."""
    group = cmd.add_argument_group("pod-injection webhook")
    group.add_argument("--webhook", action=argparse.BooleanOptionalAction, default=W.enabled,
                       help="serve the mutating webhook that mounts WorkspaceSecrets into labelled pods")
    group.add_argument("--webhook-port", type=int, default=W.port, help="HTTPS port the webhook listens on")
    group.add_argument("--webhook-host", default=W.host,
                       help="out of the cluster: the API server calls https://HOST:PORT")
    group.add_argument("--webhook-service", metavar="NAMESPACE/NAME", default=None,
                       help="in the cluster: the API server calls this Service (its port --webhook-service-port "
                       "targets --webhook-port); the certificate covers NAME.NAMESPACE.svc")
    group.add_argument("--webhook-service-port", type=int, default=W.service_port, help="the Service's port")
    group.add_argument("--webhook-listen-address", default=None,
                       help="address to listen on (default: 0.0.0.0 with --webhook-service, else --webhook-host if an IP)")
    group.add_argument("--webhook-cert-dir", default=None,
                       help="certificate directory: tls.crt/tls.key[/ca.crt] provided there are used as they are; "
                       "otherwise the operator keeps its own CA and serving certificate there (default: a temporary directory)")
    group.add_argument("--webhook-cert-manager-certificate", metavar="NAMESPACE/NAME", default=None,
                       help="the serving certificate is this cert-manager Certificate (its Secret mounted at "
                            "--webhook-cert-dir): the MutatingWebhookConfiguration is annotated "
                            "cert-manager.io/inject-ca-from and the operator never writes its caBundle")
    group.add_argument("--webhook-configuration", default=W.configuration_name,
                       help="name of the MutatingWebhookConfiguration the operator manages")


def _namespaced_name(flag: str, value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise SystemExit(f"{flag}: expected NAMESPACE/NAME, got {value!r}")
    return namespace, name


def _webhook_config(args: argparse.Namespace) -> WebhookConfig:
    return WebhookConfig(
        enabled=bool(args.webhook),
        port=args.webhook_port,
        listen_address=args.webhook_listen_address,
        host=args.webhook_host,
        service=_namespaced_name("--webhook-service", args.webhook_service),
        service_port=args.webhook_service_port,
        cert_dir=args.webhook_cert_dir,
        configuration_name=args.webhook_configuration,
        cert_manager_certificate=_namespaced_name("--webhook-cert-manager-certificate",
                                                  getattr(args, "webhook_cert_manager_certificate", None)),
    )


def _add_connect_arguments(cmd: argparse.ArgumentParser) -> None:
    """The UserToken connect page (see docs/users/usertoken.md)."""
    group = cmd.add_argument_group("UserToken connect page")
    group.add_argument("--connect-port", type=int, default=C.port,
                       help="serve the connect page and OAuth callback on this port (None: not served)")
    group.add_argument("--connect-bind", default=C.bind, help="address the connect page listens on")
    group.add_argument("--connect-base-url", default=None,
                       help="URL users' browsers reach the connect page at (the OAuth callback is <it>/oauth/callback; "
                            "default: http://127.0.0.1:<connect port>)")
    group.add_argument("--connect-user-header", default=None,
                       help="header carrying the user name, set by the platform's auth proxy (needs --connect-trusted-proxies); "
                            "the connect page's only sign-in: without it the page answers 503")
    group.add_argument("--connect-trusted-proxies", default="",
                       help="comma-separated CIDRs the user header is accepted from")
    group.add_argument("--connect-signing-key-file", default=None,
                       help="file with the HMAC key (>= 32 bytes) for the connect page's CSRF tokens and OAuth state "
                            "(default: a random key per process)")
    group.add_argument("--connect-link-ttl", type=float, default=3600.0,
                       help="ignored (kept for compatibility): status.authorizationURL is a plain link to the connect page")
    group.add_argument("--token-validate-interval", type=float, default=C.validate_interval,
                       help="seconds between scheduled token validations")


def _connect_config(args: argparse.Namespace) -> ConnectConfig:
    base_url = args.connect_base_url or local_base_url(args.connect_port)
    return ConnectConfig(
        port=args.connect_port, bind=args.connect_bind, base_url=base_url.rstrip("/"),
        user_header=args.connect_user_header or None,
        trusted_proxies=tuple(p.strip() for p in args.connect_trusted_proxies.split(",") if p.strip()),
        signing_key_file=args.connect_signing_key_file,
        validate_interval=args.token_validate_interval,
    )


def _leader_election_config(args: argparse.Namespace) -> LeaderElectionConfig:
    config = LeaderElectionConfig(
        enabled=bool(args.leader_elect), id=args.leader_election_id,
        namespace=args.leader_election_namespace or args.operator_namespace,
        lease_duration=args.leader_election_lease_duration, renew_deadline=args.leader_election_renew_deadline,
        retry_period=args.leader_election_retry_period,
    )
    if config.enabled:
        if args.peering is not None:
            raise SystemExit("--leader-elect and --peering (deprecated) are two ways to run one active replica: choose one")
        from workspace_secrets.runtime.leader import durations_problem  # here: it imports the Kubernetes client

        problem = durations_problem(config.lease_duration, config.renew_deadline, config.retry_period)
        if problem:
            raise SystemExit(f"--leader-election-lease-duration/-renew-deadline/-retry-period: {problem}")
    return config


def _alias_wins(args: argparse.Namespace, alias: str, flag: str) -> bool:
    """A deprecated or shorthand spelling counts only when given from a stronger source than the flag itself: the
    command line beats a variable beats a default, and on a tie the flag wins."""
    return getattr(args, alias) is not None and given(args, alias) > given(args, flag)


def _metrics_bind(args: argparse.Namespace) -> tuple[str, int] | None:
    """--metrics-bind-address, or the deprecated --metrics-port/--metrics-address when given more explicitly."""
    try:
        bind = parse_bind_address(args.metrics_bind_address, "--metrics-bind-address", every="")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if _alias_wins(args, "metrics_port", "metrics_bind_address"):
        if args.metrics_port == 0:
            return None
        bind = (bind[0] if bind else "", args.metrics_port)
    if _alias_wins(args, "metrics_address", "metrics_bind_address") and bind is not None:
        bind = (args.metrics_address, bind[1])
    return bind


def _health_bind(args: argparse.Namespace) -> tuple[tuple[str, int] | None, str]:
    """(address, liveness path): --health-probe-bind-address (":PORT": host "", every address family), or the
    deprecated --liveness URL when given more explicitly."""
    if _alias_wins(args, "liveness", "health_probe_bind_address"):
        if not args.liveness:
            return None, "/healthz"
        problem = f"--liveness (deprecated): expected http://HOST:PORT/PATH, got {args.liveness!r}"
        try:
            parts = urlsplit(args.liveness)
            port = parts.port  # ValueError for a port that is not a number or out of range
        except ValueError:
            raise SystemExit(problem) from None
        if parts.scheme != "http" or not port:
            raise SystemExit(problem)
        return (parts.hostname or "0.0.0.0", port), parts.path or "/healthz"
    try:
        return parse_bind_address(args.health_probe_bind_address, "--health-probe-bind-address", every=""), "/healthz"
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _log_level(args: argparse.Namespace) -> str:
    """--log-level, or debug with -v/--verbose unless --log-level was given more explicitly."""
    if args.verbose and given(args, "verbose") >= given(args, "log_level"):
        return "debug"
    return args.log_level


def crd_documents() -> str:
    """Every CRD the operator needs, as one multi-document YAML, from the package's data (crds/ of the source tree)."""
    folder = resources.files("workspace_secrets") / "crds"
    texts = [entry.read_text(encoding="utf-8") for entry in sorted(folder.iterdir(), key=lambda e: e.name)
             if entry.name.endswith((".yaml", ".yml"))]
    if not texts:
        raise SystemExit("no CRDs in the package data (workspace_secrets/crds)")
    return "".join(("---\n" if not t.lstrip().startswith("---") else "") + t + ("" if t.endswith("\n") else "\n")
                   for t in texts)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "crds":
        sys.stdout.write(crd_documents())
        return 0
    return _run(args)


def _configure_logging(args: argparse.Namespace) -> str:
    level = _log_level(args)
    kopf.configure(
        verbose=level == "debug",
        log_format={"plain": kopf.LogFormat.PLAIN, "json": kopf.LogFormat.JSON, "full": kopf.LogFormat.FULL}[args.log_format],
        # JSON lines carry the object as {"object": {kind, namespace, name, uid}}; text lines get a
        # "[namespace/name]" prefix instead.
        log_prefix=args.log_format != "json",
        log_refkey="object",
    )
    logging.getLogger().setLevel(level.upper())
    _quiet_client_libraries()
    logging.getLogger("kopf.objects").addFilter(_ObserveSuccessFilter(verbose=level == "debug"))
    return level


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before `kubernetes` is imported: it reads KUBECONFIG once, at import, for kopf's login.
        os.environ["KUBECONFIG"] = args.kubeconfig
    from workspace_secrets import handlers  # noqa: F401  (registers the kopf handlers)
    from workspace_secrets.runtime.peering import auto_priority

    webhook = _webhook_config(args)
    leader_election = _leader_election_config(args)
    metrics_bind = _metrics_bind(args)
    health_bind, liveness_path = _health_bind(args)
    if webhook.enabled:
        from workspace_secrets.handlers import pod_injection as pods

        pods.register()  # only when enabled: kopf refuses admission handlers without a webhook server

    level = _configure_logging(args)
    for flag, dest, replacement in (("--liveness", "liveness", "health_probe_bind_address"),
                                    ("--metrics-port", "metrics_port", "metrics_bind_address"),
                                    ("--metrics-address", "metrics_address", "metrics_bind_address"),
                                    ("--peering", "peering", "leader_elect")):
        if getattr(args, dest) is None:
            continue
        instead = "--" + replacement.replace("_", "-")
        if replacement == "leader_elect" or _alias_wins(args, dest, replacement):
            log.warning("%s is deprecated: use %s", flag, instead)
        else:
            log.warning("%s is deprecated and ignored: %s is given", flag, instead)
    # Our identity in the Lease or peering object, shared with kopf. In a pod, POD_ID (the pod name, from the downward
    # API) makes it readable in `kubectl get lease -o yaml` / `kubectl get clusterkopfpeering -o yaml`.
    identity = f"{os.environ.get('POD_ID') or socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
    priority = args.priority if args.priority is not None else auto_priority(datetime.now(timezone.utc))
    config = OperatorConfig(
        namespaces=tuple(args.namespaces),
        kubeconfig=args.kubeconfig,
        api_concurrency=args.api_concurrency,
        api_qps=args.api_qps,
        api_burst=args.api_burst,
        api_client=args.api_client,
        workers=args.workers,
        resync_interval=args.resync_interval,
        watch_unhealthy_threshold=args.watch_unhealthy_threshold,
        peering=args.peering,
        identity=identity,
        priority=priority,
        peering_lifetime=args.peering_lifetime,
        providers_config=args.providers_config,
        ca_bundle_file=args.ca_bundle_file,
        sweep_interval=args.sweep_interval,
        operator_namespace=args.operator_namespace,
        webhook=webhook,
        connect=_connect_config(args),
        leader_election=leader_election,
        log_format=args.log_format,
        log_level=level,
        health_probe_bind_address="0" if health_bind is None else f"{health_bind[0]}:{health_bind[1]}",
        metrics_bind_address="0" if metrics_bind is None else f"{metrics_bind[0]}:{metrics_bind[1]}",
        liveness="",  # our health server replaces kopf's endpoint
        metrics_port=metrics_bind[1] if metrics_bind else 0,
        metrics_address=metrics_bind[0] if metrics_bind else D.metrics_address,
        shutdown_grace=20.0,  # our own process: a hung kopf task must not keep it alive (app.py)
    )
    if metrics_bind is not None:
        metrics.serve(metrics_bind[1], metrics_bind[0])
    return asyncio.run(_serve(config, health_bind, liveness_path))


async def _serve(config: OperatorConfig, health_bind: tuple[str, int] | None, liveness_path: str) -> int:
    """The health server from the start; with --leader-elect the Lease first; then kopf and the App.

    One stop signal for the whole process: SIGTERM/SIGINT set `stopping` from the start, and kopf gets it as its
    stop flag, so a signal before kopf runs (standing by, or between the Lease and kopf's start) stops it at once.
    Once kopf runs it installs its own handlers (replacing ours: there is no moment without one) and stops on them;
    after kopf, ours are installed again so a second signal does not interrupt releasing the Lease."""
    from workspace_secrets.app import App
    from workspace_secrets.runtime.health import HealthServer, Probes

    app = App(config)
    election = config.leader_election
    stopping = asyncio.Event()
    signals = _StopSignals(stopping)
    signals.install()

    async def webhook_serving() -> bool:
        return app.webhook is not None and await app.webhook.serving()

    probes = Probes(electing=election.enabled, started=lambda: app.running, check=app.health,
                    webhook_enabled=config.webhook.enabled, webhook_serving=webhook_serving)
    health = HealthServer(probes, *health_bind, liveness_paths=(liveness_path,)) if health_bind else None
    elector = kube = None
    try:
        if health is not None:
            await health.start()
        if election.enabled:
            elector, kube = _leader_elector(config)
            probes.leading = elector.leading.is_set
            if not await _until_stopped(elector.acquire(), stopping):
                log.info("stopped while standing by")
                return 0
        operator = asyncio.create_task(kopf.operator(
            clusterwide=config.clusterwide,
            namespaces=list(config.namespaces),
            standalone=config.peering is None,
            peering_name=config.peering,
            priority=config.priority if config.peering is not None else None,
            identity=config.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
            memo=app,
            stop_flag=stopping,
        ), name="kopf")
        if elector is None:
            await operator
            return 0
        holding = asyncio.create_task(elector.hold(), name="leader election")
        await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
        if holding.done():
            # As controller-runtime: stop at once, no graceful shutdown -- a standby takes over when the Lease
            # expires, and this process must have stopped acting by then.
            log.error("leader election lost: exiting")
            logging.shutdown()
            os._exit(1)
        # kopf has stopped: no renewal may be in flight when the Lease is released (it would race the release).
        holding.cancel()
        await asyncio.gather(holding, return_exceptions=True)
        signals.install()
        await operator
        return 0
    finally:
        if elector is not None:
            await elector.release()
        if kube is not None:
            await kube.aclose()
        if health is not None:
            await health.stop()
        signals.remove()


def _leader_elector(config: OperatorConfig) -> tuple[Any, Any]:
    """The elector and its own API client (the App's is made later, once leading)."""
    from workspace_secrets.runtime.kube_aio import make_kube
    from workspace_secrets.runtime.leader import LeaderElector

    election = config.leader_election
    kube = make_kube(config.api_client, kubeconfig=config.kubeconfig, max_concurrency=2)
    elector = LeaderElector(kube, namespace=election.namespace or config.operator_namespace, name=election.id,
                            identity=config.identity, lease_duration=election.lease_duration,
                            renew_deadline=election.renew_deadline, retry_period=election.retry_period)
    log.info("leader election: Lease %s/%s as %s", elector.namespace, elector.name, config.identity)
    return elector, kube


class _StopSignals:
    """SIGTERM/SIGINT -> `stopping` (where the loop supports signal handlers)."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self._stopping = stopping
        self._installed: list[int] = []

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, self._stopping.set)  # replaces any handler (kopf's)
            except (NotImplementedError, RuntimeError, ValueError):
                continue
            if signum not in self._installed:
                self._installed.append(signum)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self._installed:
            loop.remove_signal_handler(signum)
        self._installed.clear()


async def _until_stopped(work: Awaitable[Any], stopping: asyncio.Event) -> bool:
    """Run `work` until done (True) or `stopping` is set (False: `work` cancelled and awaited)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.create_task(stopping.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
            return True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return False
    finally:
        waiter.cancel()


class _ObserveSuccessFilter(logging.Filter):
    """kopf logs every event handler's success at INFO; for the UserToken `usertoken-observe` handler that
    is a line per watch event of every token (every status write of a refresh), saying nothing the
    operator's own lines do not. Kept with --verbose. (WorkspaceSecrets are watched by the operator's own
    watch, which logs no line per event.)"""

    def __init__(self, *, verbose: bool) -> None:
        super().__init__()
        self._verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self._verbose or record.getMessage() != "Handler 'usertoken-observe' succeeded."


def _quiet_client_libraries() -> None:
    """Provider SDKs log request and response bodies at DEBUG -- which include freshly minted secrets
    (botocore logs CreateAccessKey's response). Never let them, whatever the operator's verbosity. The libraries the
    operator imports: boto3/botocore/s3transfer (aws-iam), google-auth (gcp), psycopg (postgresql),
    urllib3 (the Kubernetes client)."""
    for name in ("botocore", "boto3", "s3transfer", "urllib3", "google", "psycopg"):
        logging.getLogger(name).setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
