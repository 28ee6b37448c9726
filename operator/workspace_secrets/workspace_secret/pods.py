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

    @property
    def live(self) -> bool:
        """Running or starting (pending, gated): not being deleted, not finished."""
        return not self.deleting and self.phase not in TERMINAL_PHASES

    @property
    def gated(self) -> bool:
        return c.SCHEDULING_GATE in self.gates

    def event_ref(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


@dataclass(frozen=True)
class Pods:
    items: tuple[WorkspacePod, ...] = ()
    listed: bool = False  # False: not looked at (nothing of this WorkspaceSecret depends on its pods)

    @property
    def running(self) -> bool:
        """The plan's "running": at least one live pod (pending and gated pods count)."""
        return any(p.live for p in self.items)

    @property
    def gated(self) -> tuple[WorkspacePod, ...]:
        """The live pods waiting at our gate."""
        return tuple(p for p in self.items if p.live and p.gated)


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
        gates = tuple(str((g or {}).get("name", "")) for g in (item.get("spec") or {}).get("schedulingGates") or ())
        pods.append(WorkspacePod(
            namespace=ws.namespace, name=meta.get("name", ""), uid=meta.get("uid", ""),
            phase=(item.get("status") or {}).get("phase") or "Pending", deleting=bool(meta.get("deletionTimestamp")),
            gates=gates,
        ))
    return Pods(tuple(sorted(pods, key=lambda p: p.name)), listed=True)


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


def matters(event_type: str, pod: Mapping[str, Any]) -> tuple[str, str] | None:
    """A watch event of a labelled pod: the WorkspaceSecret (namespace, name) to reconcile, or None when the change
    does not matter. Matters: a new or deleted pod, one at our gate, one being deleted, one finished."""
    meta = pod.get("metadata") or {}
    name = (meta.get("labels") or {}).get(c.LABEL_WORKSPACE_SECRET)
    namespace = meta.get("namespace")
    if not name or not namespace:
        return None
    phase = (pod.get("status") or {}).get("phase")
    if event_type in ("ADDED", "DELETED") or has_gate(pod) or meta.get("deletionTimestamp") or phase in TERMINAL_PHASES:
        return (namespace, name)
    return None
