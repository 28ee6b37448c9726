"""A WorkspaceSecret's pods, decided (pure): are they running (WhileRunning credentials), which of them wait at the
scheduling gate, what they wait for, and how the gate is removed. gate.py does the I/O.

Whether a pod of a WorkspaceSecret waits at all is `WorkspaceSecret.requires_gate` (a required userToken or a
WhileRunning credential; the webhook adds the gate). Decided here: `parse_pods` (the pods of this WorkspaceSecret
and its user; `running` as the plan defines it: at least one pod not being deleted and not Succeeded/Failed --
pending and gated pods count, they are starting), `blockers` (what still keeps the gate closed, from one
reconcile's Observation), `ungate_patch` (the JSON patch that removes our gate and nothing else, refused by the API
server if the pod changed meanwhile), `matters` (does a pod watch event need a reconcile), `pod_message` and
`workspace_message` (the Events' words: names, reasons and the connect page's link -- no credential in it, whoever
opens it signs in -- never a value).

Who is a pod of the WorkspaceSecret: labelled workspace-secrets.io/workspace-secret=<its name> AND
workspace-secrets.io/user=<its spec.user>, in its namespace. The webhook refuses a pod whose user label differs;
a pod relabelled later is no longer selected (and its gate is never removed by this WorkspaceSecret); every
removal re-checks both labels and the pod's uid in the same request (JSON patch `test` operations).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret

if TYPE_CHECKING:  # policy.py imports this module
    from workspace_secrets.workspace_secret.policy import Observation
    from workspace_secrets.workspace_secret.tokens import TokensOutcome

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
#: Controllers that re-create a deleted pod (from their template, admitted again by the webhook).
#: Controllers that re-create a deleted pod without counting it against anything. Not a Job: its controller counts a
#: deleted pod that did not succeed as a failure (backoffLimit), so its incomplete pods are released with a Warning.
RECREATING_CONTROLLERS = frozenset({("apps", "ReplicaSet"), ("apps", "StatefulSet")})
# Kubernetes' rules for env var names and Secret keys, as the webhook applies them to status.env / status.files
# (pod_injection.policy: what it skips, a pod never gets, so it is never "missing").
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
#: A label value (what a selector can name); anything else cannot be on a pod, so no pod is looked for.
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")


# --- the pods ---------------------------------------------------------------------------------------------
def selector(ws: WorkspaceSecret) -> str | None:
    """The label selector of the workspace's pods; None when no pod can carry those labels."""
    if not (_LABEL_VALUE.match(ws.name) and _LABEL_VALUE.match(ws.user)):
        return None
    return f"{c.LABEL_WORKSPACE_SECRET}={ws.name},{c.LABEL_USER}={ws.user}"


@dataclass(frozen=True)
class WorkspacePod:
    namespace: str
    name: str
    uid: str
    phase: str
    deleting: bool
    gates: tuple[str, ...]  # spec.schedulingGates, by name, in order
    resource_version: str = ""
    #: The controller that re-creates it when it is deleted (ReplicaSet, StatefulSet, Job), as "Kind/name"; None for
    #: a bare pod (or one of another controller).
    recreated_by: str | None = None
    #: What the webhook gave it: per targeted container, the env var names it defines ...
    env_names: tuple[frozenset[str], ...] = ()
    #: ... and the user-files volume's (key, path) items (None: no such volume; a foreign one is "()": see delivered).
    file_items: frozenset[tuple[str, str]] | None = None
    files_foreign: bool = False  # a volume of the user-files name that is not the workspace Secret (a conflict)

    @property
    def live(self) -> bool:
        """Running or starting (pending, gated), or stopping: a pod being deleted still runs until it is gone or
        finished (preStop hooks, graceful shutdown use its credentials; a one-replica Recreate restart must not
        revoke and re-mint them). Only Succeeded/Failed pods are not live."""
        return self.phase not in TERMINAL_PHASES

    @property
    def gated(self) -> bool:
        return c.SCHEDULING_GATE in self.gates

    def event_ref(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


@dataclass(frozen=True)
class Pods:
    items: tuple[WorkspacePod, ...] = ()
    listed: bool = False  # False: not looked at (nothing of this WorkspaceSecret depends on its pods)
    #: The gate just deleted an incomplete pod for its controller to re-create: the workspace is starting, not stopped
    #: (no revocation between the old pod's deletion and the new pod's creation).
    recreating: bool = False

    @property
    def running(self) -> bool:
        """The plan's "running": at least one live pod (pending, gated and stopping pods count), or one being
        re-created."""
        return self.recreating or any(p.live for p in self.items)

    @property
    def gated(self) -> tuple[WorkspacePod, ...]:
        """The live pods waiting at our gate (not those being deleted: they never start)."""
        return tuple(p for p in self.items if p.live and not p.deleting and p.gated)


NOT_LISTED = Pods()


def parse_pods(items: Iterable[Mapping[str, Any]], ws: WorkspaceSecret) -> Pods:
    """The pods of this WorkspaceSecret among `items` (both labels checked again: the selector is the API
    server's business, this is ours)."""
    pods = []
    for item in items:
        meta = item.get("metadata") or {}
        labels = meta.get("labels") or {}
        if meta.get("namespace") != ws.namespace or labels.get(c.LABEL_WORKSPACE_SECRET) != ws.name or labels.get(c.LABEL_USER) != ws.user:
            continue
        spec = item.get("spec") or {}
        gates = tuple(str((g or {}).get("name", "")) for g in spec.get("schedulingGates") or ())
        files = next((v for v in spec.get("volumes") or () if (v or {}).get("name") == c.POD_USER_FILES_VOLUME_NAME), None)
        secret = (files or {}).get("secret") or {}
        foreign = files is not None and secret.get("secretName") != ws.secret_name
        pods.append(WorkspacePod(
            namespace=ws.namespace, name=meta.get("name", ""), uid=meta.get("uid", ""),
            phase=(item.get("status") or {}).get("phase") or "Pending", deleting=bool(meta.get("deletionTimestamp")),
            gates=gates, resource_version=str(meta.get("resourceVersion") or ""), recreated_by=_recreated_by(meta),
            env_names=tuple(frozenset(str((e or {}).get("name")) for e in t.get("env") or ()) for t in _targets(item)),
            file_items=None if files is None or foreign else frozenset(
                (str((i or {}).get("key")), str((i or {}).get("path"))) for i in secret.get("items") or ()),
            files_foreign=foreign,
        ))
    return Pods(tuple(sorted(pods, key=lambda p: p.name)), listed=True)


def _recreated_by(meta: Mapping[str, Any]) -> str | None:
    for owner in meta.get("ownerReferences") or ():
        if not isinstance(owner, Mapping) or owner.get("controller") is not True:
            continue
        group = str(owner.get("apiVersion", "")).rpartition("/")[0]
        if (group, owner.get("kind")) in RECREATING_CONTROLLERS:
            return f"{owner['kind']}/{owner.get('name', '')}"
    return None


def _targets(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The containers the webhook injects into (pod_injection.policy._targets: every container, or the (init)
    containers the containers annotation lists)."""
    spec = pod.get("spec") or {}
    regular = [ct for ct in spec.get("containers") or () if isinstance(ct, Mapping)]
    listed = [n.strip() for n in (((pod.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_CONTAINERS) or "").split(",") if n.strip()]
    if not listed:
        return regular
    by_name = {ct.get("name"): ct for ct in (*regular, *(ct for ct in spec.get("initContainers") or () if isinstance(ct, Mapping)))}
    return [by_name[n] for n in dict.fromkeys(listed) if n in by_name]


def missing_delivery(pod: WorkspacePod, status: Mapping[str, Any]) -> tuple[str, ...]:
    """What the WorkspaceSecret publishes now (its status.env and status.files, as the webhook reads them) that
    this pod was not given at admission: env var names a targeted container does not define, user files the
    user-files volume does not hold. A pod admitted before the first reconcile (a template applied together with
    its WorkspaceSecret) has only GIT_SSH_COMMAND: released as it is, its tools would not work.

    Not missing: what the pod defines itself (a conflict: the webhook keeps the pod's own, a new pod would keep it
    too), entries the webhook skips (invalid names), and anything when status.env was never written (the
    webhook's default is all there is)."""
    lacking: list[str] = []
    env = status.get("env")
    if isinstance(env, list):
        for entry in env:
            name, key = (entry or {}).get("name") if isinstance(entry, Mapping) else None, (entry or {}).get("key") if isinstance(entry, Mapping) else None
            if not (isinstance(name, str) and _ENV_NAME.match(name) and isinstance(key, str) and _SECRET_KEY.match(key)):
                continue
            if any(name not in defined for defined in pod.env_names) and f"env {name}" not in lacking:
                lacking.append(f"env {name}")
    if not pod.files_foreign:
        for entry in status.get("files") or ():
            if not isinstance(entry, Mapping) or not _SECRET_KEY.match(str(entry.get("key", ""))) or not entry.get("path"):
                continue
            if pod.file_items is None or (str(entry["key"]), str(entry["path"])) not in pod.file_items:
                lacking.append(f"file {entry['path']}")
    return tuple(lacking)


def ungate_patch(pod: WorkspacePod, ws: WorkspaceSecret) -> list[dict[str, Any]]:
    """Remove our gate, only from this incarnation of the pod, only while it is still labelled with this
    WorkspaceSecret and its user, and only if its gates are still the ones we saw (a concurrent change of
    them is never clobbered: the API server refuses the whole patch)."""
    index = pod.gates.index(c.SCHEDULING_GATE)
    label = "/metadata/labels/"
    return [
        {"op": "test", "path": "/metadata/uid", "value": pod.uid},
        {"op": "test", "path": label + _pointer(c.LABEL_WORKSPACE_SECRET), "value": ws.name},
        {"op": "test", "path": label + _pointer(c.LABEL_USER), "value": ws.user},
        {"op": "test", "path": "/spec/schedulingGates", "value": [{"name": g} for g in pod.gates]},
        {"op": "remove", "path": f"/spec/schedulingGates/{index}"},
    ]


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


# --- what keeps the gate closed -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Blocker:
    reason: str  # the Event reason (WaitingForToken, WaitingForCredentials, WaitingForSecret)
    subject: str  # what it waits for (a token's or credential's name, the Secret's): Events once per (reason, subject)
    message: str  # what it waits for and what to do; names and links only


@dataclass(frozen=True)
class TokenState:
    name: str
    ready: bool
    phase: str | None = None
    connect_url: str | None = None
    reason: str | None = None


def token_states(tokens: TokensOutcome | None) -> dict[str, TokenState]:
    """The tokens of an Observation (None without spec.userTokens), by name, from their status.tokens entries:
    delivered into the Secret or not, the UserToken's phase, why not, its connect link (never a value)."""
    entries = tokens.status if tokens is not None else ()
    return {e["name"]: TokenState(e["name"], e.get("delivered") is True, e.get("phase"), e.get("connectURL"), e.get("reason"))
            for e in entries}


def blockers(ws: WorkspaceSecret, obs: Observation) -> tuple[Blocker, ...]:
    """What keeps the workspace's pods waiting, from one reconcile's Observation (policy.Observation): the
    Secret not written (or Ready False), a required token not ready, a WhileRunning credential not Active.
    Empty: the Secret holds everything, the gate opens."""
    out: list[Blocker] = []
    problem = obs.problem
    if obs.key is None or problem is not None:
        why = f" ({problem.reason}: {problem.message[:300]})" if problem is not None else ""
        out.append(Blocker(c.EVENT_WAITING_FOR_SECRET, ws.secret_name,
                           f"Secret {ws.secret_name!r} is not written yet{why}; see WorkspaceSecret {ws.name!r}'s Ready condition"))
    states = token_states(obs.tokens)
    for name in ws.required_tokens:
        state = states.get(name)
        if state is not None and state.ready:
            continue
        where = f"connect at {state.connect_url}" if state is not None and state.connect_url else "connect it on the connect page"
        status = ", ".join(x for x in (state.phase, state.reason) if x) if state is not None else ""
        status = f" ({status})" if status else ""
        out.append(Blocker(c.EVENT_WAITING_FOR_TOKEN, name,
                           f"UserToken {name!r} of user {ws.user!r} is not connected or not valid{status}: {ws.user} {where}"))
    entries = {e.get("name"): e for e in obs.credentials or ()}
    problems = {p.reason for p in obs.credential_problems}
    for name in ws.while_running_credentials:
        phase = (entries.get(name) or {}).get("phase")
        if phase == "Active":
            continue
        status = f" (phase {phase})" if phase else (" (" + ", ".join(sorted(problems)) + ")" if problems else "")
        out.append(Blocker(c.EVENT_WAITING_FOR_CREDENTIALS, name,
                           f"credential {name!r} is not issued yet{status}; see WorkspaceSecret {ws.name!r}'s CredentialsReady condition"))
    return tuple(out)


def pod_message(pod: WorkspacePod, ws: WorkspaceSecret, blocker: Blocker) -> str:
    return (f"Waiting (scheduling gate {c.SCHEDULING_GATE}) for WorkspaceSecret {ws.name!r}: {blocker.message}. "
            f"The pod starts within seconds once it is there.")


def workspace_message(pods: Iterable[WorkspacePod], blocker: Blocker) -> str:
    names = [p.name for p in pods]
    shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return f"Pod(s) {shown} wait: {blocker.message}."


def has_gate(pod: Mapping[str, Any]) -> bool:
    return any((g or {}).get("name") == c.SCHEDULING_GATE for g in (pod.get("spec") or {}).get("schedulingGates") or ())


PodState = tuple[bool, bool, bool]  # (at our gate, being deleted, finished)


def pod_state(pod: Mapping[str, Any]) -> PodState:
    meta = pod.get("metadata") or {}
    return (has_gate(pod), bool(meta.get("deletionTimestamp")), (pod.get("status") or {}).get("phase") in TERMINAL_PHASES)


def workspace_key(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """The WorkspaceSecret (namespace, name) a labelled pod names, or None."""
    meta = pod.get("metadata") or {}
    name = (meta.get("labels") or {}).get(c.LABEL_WORKSPACE_SECRET)
    namespace = meta.get("namespace")
    return (namespace, name) if name and namespace else None


def matters(event_type: str, pod: Mapping[str, Any], previous: PodState | None = None) -> tuple[str, str] | None:
    """A watch event of a labelled pod: the WorkspaceSecret (namespace, name) to reconcile, or None when the change
    does not matter. Matters: a new or deleted pod, and a transition of (at our gate, being deleted, finished) from
    `previous` (the pod's state as last seen; None: not seen, then any of the three matters). A gated pod's status
    updates, a running pod's restarts: no reconcile."""
    key = workspace_key(pod)
    if key is None:
        return None
    if event_type in ("ADDED", "DELETED"):
        return key
    state = pod_state(pod)
    if previous is None:
        return key if any(state) else None
    return key if state != previous else None
