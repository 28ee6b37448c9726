"""Prometheus metrics: every metric the operator exports, defined in one place.

Import the named objects and call them (`RECONCILES.labels(kind=..., result=...).inc()`); never define
a metric elsewhere, so names, labels and help texts stay consistent and discoverable here. Label values
are always small closed sets (kinds, results, providers, reasons) -- never object names, users or anything
derived from a secret, so cardinality stays bounded and nothing sensitive reaches a scrape.

Served by `serve()` on `--metrics-bind-address` (default :9090; 0 disables). This module imports nothing from the
operator, so any room except the pure modules (api/, the policy modules: free of I/O and global state) may use it.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

NAMESPACE = "wso"

# --- reconciles (controllers) ---------------------------------------------------------------------
#: kind: WorkspaceSecret (one work-queue reconcile) | UserToken (one maintenance pass: a queued key -- a
#: watch event, a timer, a connect); result: success | problem (Ready=False with a reason a human must act on) | retry (a lost
#: race, retried at once) | error (an exception: API failure or bug; retried with backoff) | gone (the object was
#: deleted meanwhile). A UserToken pass cancelled at shutdown is not counted.
RECONCILES = Counter(
    "reconciles", "Reconciles by resource kind and result.", ["kind", "result"], namespace=NAMESPACE
)
RECONCILES_SKIPPED = Counter(
    "reconciles_skipped", "Objects found unchanged without a request (their recorded inputs digest still matches: after a "
    "restart, on a resync), by resource kind and reason.", ["kind", "reason"], namespace=NAMESPACE
)
RECONCILE_DURATION = Histogram(
    "reconcile_duration_seconds", "Duration of one reconcile, by resource kind.", ["kind"],
    namespace=NAMESPACE, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
#: component: the app.kubernetes.io/component label of the Secret (workspace-secret, user-ssh-key, ...);
#: operation: create | update.
SECRET_WRITES = Counter(
    "secret_writes", "Secrets created or updated by the operator.", ["component", "operation"], namespace=NAMESPACE
)

# --- the Kubernetes API (kube) --------------------------------------------------------------------
#: code: the HTTP status, or "error" when no response arrived (connection refused, timeout).
KUBE_REQUESTS = Counter(
    "kube_requests", "Requests the operator's own client sent to the API server (kopf's are not counted).",
    ["verb", "code"], namespace=NAMESPACE,
)
#: reason: timeout (the server closed the watch, normal every few minutes) | expired (410 Gone: relist)
#: | error (connection failure or an API error; the watch backs off).
WATCH_RESTARTS = Counter(
    "watch_restarts", "Restarts of the operator's label-selected watches.", ["resource", "reason"], namespace=NAMESPACE
)
WATCH_HEALTHY = Gauge(
    "watch_healthy", "1 while the label-selected watch is connected, 0 while it is retrying.", ["resource"],
    namespace=NAMESPACE,
)

# --- the work queue (controllers) ------------------------------------------------------------------
WORKQUEUE_DEPTH = Gauge("workqueue_depth", "Keys waiting in the work queue.", ["queue"], namespace=NAMESPACE)
WORKQUEUE_RETRIES = Counter(
    "workqueue_retries", "Keys re-queued with backoff after a failed reconcile.", ["queue"], namespace=NAMESPACE
)

# --- peering ------------------------------------------------------------------------------------------
PEERING_ACTIVE = Gauge(
    "peering_active", "1 when this replica acts (standalone, or the active peer), 0 while paused.", namespace=NAMESPACE
)

# --- leader election (--leader-elect; controller-runtime's leader_election_master_status) ------------------
LEADER_ELECTION_LEADING = Gauge(
    "leader_election_leading", "1 while this replica holds the leader election Lease, 0 while it stands by.",
    namespace=NAMESPACE,
)

# --- dynamic credentials (credentials.manager) ---------------------------------------------------------
#: provider: the platform's name of the provider (the `name` in the provider configuration, which
#: spec.credentials[].provider refers to). Counted per provider call: issued = each credential minted,
#: revoked = each revocation done (a rotation's old credential, an orphan, every credential at deletion).
CREDENTIALS_ISSUED = Counter(
    "credentials_issued", "Dynamic credentials issued, by provider.", ["provider"], namespace=NAMESPACE
)
CREDENTIALS_REVOKED = Counter(
    "credentials_revoked", "Dynamic credentials revoked, by provider.", ["provider"], namespace=NAMESPACE
)
#: operation: the provider call that failed -- list | issue | revoke | release | sweep; reason: retryable
#: (a provider outage, throttling: retried with backoff) | permanent (refused: a human must fix the
#: configuration or the permissions). Never a provider's message.
CREDENTIALS_FAILED = Counter(
    "credentials_failed", "Failed credential operations, by provider, operation and reason.",
    ["provider", "operation", "reason"], namespace=NAMESPACE,
)
# --- UserTokens (user_token.controller) --------------------------------------------------------------
#: provider: the OAuthApplication's type (github, gitlab, oidc, vault, ...; "unknown" before it is bound);
#: state: status.phase (AwaitingAuthorization | Valid | Refreshing | Expired | Revoked | Error). Set by the
#: active replica from a listing of the UserTokens every --resync-interval.
TOKENS = Gauge("tokens", "UserTokens by provider and state.", ["provider", "state"], namespace=NAMESPACE)
#: provider: the OAuthApplication's type; reason: RefreshRejected (the grant is gone: the user reconnects) |
#: ProviderUnavailable (an outage: retried with backoff) | ProviderError (misconfigured: the platform fixes it).
TOKEN_REFRESH_FAILURES = Counter(
    "token_refresh_failures", "Failed OAuth token refreshes, by provider and reason.", ["provider", "reason"],
    namespace=NAMESPACE,
)
# --- the pod-injection webhook (pod_injection.controller) ---------------------------------------------
#: webhook: the webhook's id (mount-workspace-secret); result: allowed (admitted, patched or not) | rejected
#: (refused: 403) | error (the answer was an error). Dry runs are counted too.
WEBHOOK_ADMISSIONS = Counter(
    "webhook_admissions", "Admission reviews answered, by webhook and result.", ["webhook", "result"],
    namespace=NAMESPACE,
)


def serve(port: int, address: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY) -> None:
    """Serve /metrics on a daemon thread (prometheus-client's own server); port 0 disables it. Address "": every
    address family (`::`, which Linux makes dual-stack), IPv4 only where the host has no IPv6."""
    if not port:
        return
    if address == "":
        try:
            start_http_server(port, addr="::", registry=registry)
            return
        except OSError:  # no IPv6 on this host (or in this container)
            address = "0.0.0.0"
    start_http_server(port, addr=address, registry=registry)
