"""What `kubectl wso` says, computed from the objects it read: pure functions, no I/O (object dicts in, lines out).

Everything shown comes from fields the caller can already read with `kubectl get` (a WorkspaceSecret's or
UserToken's metadata, spec and status, Events, pods); never a Secret, and never a field the operator stopped
writing because it is for the owner's eyes only (a UserToken's `status.userCode`, the device flow's code, is
shown only on the owner's connect page). Every string that comes from the cluster is tenant-writable, so control
characters are escaped before they reach the terminal (no ANSI escape sequence from a name or a message).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import SpecError, WorkspaceSecret

WS_KIND, UT_KIND = c.WORKSPACE_SECRET_KIND, c.USER_TOKEN_KIND
#: What `status KIND/NAME` accepts as KIND (kubectl's plural, singular and short names, and the brief `ws`).
KIND_ALIASES: dict[str, str] = {
    **{a: WS_KIND for a in ("workspacesecret", "workspacesecrets", "wss", "ws")},
    **{a: UT_KIND for a in ("usertoken", "usertokens", "ut")},
}
PLURALS = {WS_KIND: c.WORKSPACE_SECRET_PLURAL, UT_KIND: c.USER_TOKEN_PLURAL}

#: Exit codes (documented in `kubectl wso --help`).
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FORBIDDEN, EXIT_NOT_FOUND, EXIT_TIMEOUT = 0, 1, 2, 3, 4, 5

#: UserToken phases in which the user has to (re)connect it.
NOT_CONNECTED_PHASES = (c.PHASE_AWAITING_AUTHORIZATION, c.PHASE_EXPIRED, c.PHASE_REVOKED)
#: Events the workspace gate posts on a waiting pod (their message names the WorkspaceSecret).
POD_WAITING_REASONS = (c.EVENT_WAITING_FOR_TOKEN, c.EVENT_WAITING_FOR_CREDENTIALS, c.EVENT_WAITING_FOR_SECRET,
                       c.EVENT_WORKSPACE_SECRET_INVALID)
EVENTS_SHOWN = 10

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class UsageError(ValueError):
    """The command line asks for something that cannot be: exit code 2 with this message."""


def clean(value: Any, limit: int = 2000) -> str:
    """A cluster-provided string made safe to print: control and bidi characters escaped, newlines and tabs as
    spaces, cut at `limit` characters."""
    text = str(value if value is not None else "")
    text = text.replace("\r\n", " ").replace("\n", " ").replace("\t", " ")
    text = _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- arguments --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    kind: str  # WorkspaceSecret | UserToken
    name: str

    @property
    def plural(self) -> str:
        return PLURALS[self.kind]

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


def parse_target(text: str, default_kind: str = WS_KIND) -> Target:
    """`KIND/NAME` or `NAME` (the default kind). KIND: workspacesecret|workspacesecrets|wss|ws|usertoken|
    usertokens|ut, optionally with the group (`usertokens.workspace-secrets.io/NAME`)."""
    kind_text, sep, name = text.partition("/")
    if not sep:
        kind, name = default_kind, kind_text
    else:
        alias = kind_text.lower()
        if alias.endswith("." + c.GROUP):
            alias = alias[: -len(c.GROUP) - 1]
        if alias not in KIND_ALIASES:
            raise UsageError(f"unknown kind {clean(kind_text)!r}: use workspacesecret (ws, wss) or usertoken (ut)")
        kind = KIND_ALIASES[alias]
    if not name or len(name) > 253 or not _NAME.match(name):
        raise UsageError(f"{clean(name)!r} is not a valid object name")
    return Target(kind, name)


def request_value(now: datetime, nonce: str) -> str:
    """A new value for the rotate/refresh annotation (the operator acts when the value differs from the one it
    last acted on): the time, readable, plus a nonce so two requests within a second differ."""
    return f"{now.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}-{nonce}"


def annotation_patch(key: str, value: str) -> dict[str, Any]:
    """A merge patch setting one annotation (and nothing else)."""
    return {"metadata": {"annotations": {key: value}}}


# --- small readers -----------------------------------------------------------------------------------------
def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def condition(obj: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    return next((x for x in _status(obj).get("conditions") or () if isinstance(x, Mapping) and x.get("type") == type_), None)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def age(then: datetime | None, now: datetime) -> str:
    """kubectl's short ages: 45s, 3m, 5h, 2d ("?" when unknown; "in 3m" for a future time)."""
    if then is None:
        return "?"
    seconds = int((now - then).total_seconds())
    future, seconds = seconds < 0, abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            text = f"{seconds // size}{unit}"
            break
    else:
        text = f"{seconds}s"
    return f"in {text}" if future else f"{text} ago"


def when(value: Any, now: datetime) -> str:
    parsed = parse_time(value)
    return f"{clean(value)} ({age(parsed, now)})" if parsed else clean(value or "-")


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [indent + "  ".join([*(cell.ljust(w) for cell, w in zip(r[:-1], widths)), r[-1]]).rstrip() for r in rows]


def condition_lines(obj: Mapping[str, Any]) -> list[str]:
    """One row per condition: type, status, reason, message (the message says what to do)."""
    conditions = [x for x in _status(obj).get("conditions") or () if isinstance(x, Mapping)]
    if not conditions:
        return ["  (none yet: the operator has not reported on this object; is it running?)"]
    ordered = sorted(conditions, key=lambda x: (x.get("type") != c.CONDITION_READY, str(x.get("type"))))
    return _table([(clean(x.get("type"), 40), clean(x.get("status"), 10), clean(x.get("reason") or "-", 60),
                    clean(x.get("message") or "", 600)) for x in ordered])


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if (parsed := parse_time(event.get(key))) is not None:
            return parsed
    return parse_time(_meta(event).get("creationTimestamp"))


def event_lines(events: Iterable[Mapping[str, Any]], now: datetime, limit: int = EVENTS_SHOWN) -> list[str]:
    """The most recent `limit` Events, oldest first, as kubectl describe shows them."""
    ordered = sorted(events, key=lambda e: _event_time(e) or datetime.min.replace(tzinfo=timezone.utc))[-limit:]
    if not ordered:
        return ["  (none)"]
    rows = []
    for e in ordered:
        count = e.get("count") or 1
        rows.append((age(_event_time(e), now), clean(e.get("type") or "", 10), clean(e.get("reason") or "", 40),
                     clean(e.get("message") or "", 600) + (f" (x{count})" if isinstance(count, int) and count > 1 else "")))
    return _table(rows)


def _owner_line(obj: Mapping[str, Any]) -> str:
    meta = _meta(obj)
    return (f"{obj.get('kind') or ''} {clean(meta.get('name'))}  (namespace {clean(meta.get('namespace'))}, "
            f"user {clean(_spec(obj).get('user') or '?')})")


# --- WorkspaceSecret -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PodView:
    """The WorkspaceSecret's pods as far as the caller may see them: listed (`pods` is not None), or not
    readable with the caller's permissions (`pods` None: the gate's Events on pods are shown instead)."""

    pods: tuple[Mapping[str, Any], ...] | None
    pod_events: tuple[Mapping[str, Any], ...] = ()


def requires_gate(ws: Mapping[str, Any]) -> bool:
    """Whether the WorkspaceSecret's pods wait at the scheduling gate: the operator's own rule
    (api.workspace_secret.WorkspaceSecret.requires_gate). An invalid spec: True -- the gate holds the pods of an
    invalid WorkspaceSecret until it is fixed (telling them WorkspaceSecretInvalid), so they are worth looking up."""
    try:
        return WorkspaceSecret.from_body(ws).requires_gate
    except SpecError:
        return True


def has_gate(pod: Mapping[str, Any]) -> bool:
    return any(isinstance(g, Mapping) and g.get("name") == c.SCHEDULING_GATE
               for g in (pod.get("spec") or {}).get("schedulingGates") or ())


def waiting_pods_from_events(ws_name: str, pod_events: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Pod name -> the latest gate message, for pods told they wait for WorkspaceSecret `ws_name` and not
    released since (a later WorkspaceReleased Event)."""
    marker = f"WorkspaceSecret {ws_name!r}"
    floor = datetime.min.replace(tzinfo=timezone.utc)
    relevant = []
    for e in pod_events:
        obj = e.get("involvedObject") or {}
        reason = e.get("reason")
        if obj.get("kind") != "Pod" or not obj.get("name"):
            continue
        if reason == c.EVENT_GATE_REMOVED or (reason in POD_WAITING_REASONS and marker in str(e.get("message") or "")):
            relevant.append(e)
    waiting: dict[str, str] = {}
    for e in sorted(relevant, key=lambda e: _event_time(e) or floor):
        name = str(e["involvedObject"]["name"])
        if e.get("reason") == c.EVENT_GATE_REMOVED:
            waiting.pop(name, None)
        else:
            waiting[name] = str(e.get("message") or "")
    return waiting


def workspace_gets(ws: Mapping[str, Any]) -> list[str]:
    """What the workspace gets, by name only: the Secret, env var names (and the Secret key each reads), files,
    tokens, credentials, user secrets. Never a value."""
    spec, status = _spec(ws), _status(ws)
    lines: list[str] = []
    secret = status.get("secretName")
    mount = spec.get("mountPath") or c.DEFAULT_MOUNT_PATH
    if secret:
        lines.append(f"  Secret {clean(secret)}, mounted at {clean(mount)}")
    else:
        lines.append("  no Secret yet (see the Ready condition)")
    if status.get("sshKeyFingerprint"):
        lines.append(f"  SSH key: {clean(status.get('sshKeyType') or '?')} {clean(status.get('sshKeyFingerprint'))} "
                     f"({clean(status.get('sshKeySource') or 'Generated')}); public key in status.sshPublicKey")
    env = [x for x in status.get("env") or () if isinstance(x, Mapping) and x.get("name")]
    if env:
        lines.append("  env vars: " + ", ".join(
            clean(x["name"], 100) + (f" (<- {clean(x.get('key'), 200)})" if x.get("key") and x.get("key") != x.get("name") else "")
            for x in env))
    files = [x for x in status.get("files") or () if isinstance(x, Mapping) and x.get("path")]
    if files:
        base = (spec.get("userSecrets") or {}).get("mountPath") or c.DEFAULT_USER_FILES_PATH
        lines.append(f"  files under {clean(base)}: " + ", ".join(clean(x["path"], 200) for x in files))
    tokens = [x for x in status.get("tokens") or () if isinstance(x, Mapping)]
    for t in tokens:
        state = "delivered" if t.get("delivered") is True else "not delivered"
        login = f" as {clean(t.get('login'))}" if t.get("login") else ""
        lines.append(f"  token {clean(t.get('name'))} ({clean(t.get('type') or t.get('application') or '?')}{login}): "
                     f"{state}, {clean(t.get('phase') or '?')}" + (", optional" if t.get("optional") else ""))
    for cr in status.get("credentials") or ():
        if isinstance(cr, Mapping):
            ident = f", id {clean(cr.get('id'), 200)}" if cr.get("id") else ""
            expires = f", expires {clean(cr.get('expiresAt'))}" if cr.get("expiresAt") else ""
            lines.append(f"  credential {clean(cr.get('name'))} ({clean(cr.get('provider') or '?')}): "
                         f"{clean(cr.get('phase') or '?')}{ident}{expires}")
    users = [clean(u, 253) for u in status.get("userSecrets") or () if isinstance(u, str)]
    if users:
        lines.append("  user secrets: " + ", ".join(users))
    return lines


def waits_for(ws: Mapping[str, Any], pods: PodView) -> list[str]:
    """What the workspace waits for: the Secret (Ready False), required tokens not delivered (with the link
    where the user connects), credentials not Active, pods held at the scheduling gate."""
    spec, status = _spec(ws), _status(ws)
    name = str(_meta(ws).get("name") or "")
    lines: list[str] = []
    ready = condition(ws, c.CONDITION_READY)
    if not status.get("secretName") and ready is not None and ready.get("status") != "True":
        lines.append(f"  the Secret: {clean(ready.get('reason'))}: {clean(ready.get('message'), 600)}")
    by_name = {t.get("name"): t for t in status.get("tokens") or () if isinstance(t, Mapping)}
    for ref in spec.get("userTokens") or ():
        if not isinstance(ref, Mapping) or ref.get("optional"):
            continue
        t = by_name.get(ref.get("name")) or {}
        if t.get("delivered") is True:
            continue
        why = ", ".join(clean(x) for x in (t.get("phase"), t.get("reason")) if x) or "not reported yet"
        link = t.get("connectURL")
        where = f"connect at {clean(link, 1000)}" if link else f"see `kubectl wso status usertoken/{clean(ref.get('name'))}`"
        lines.append(f"  UserToken {clean(ref.get('name'))} ({why}): {where}")
    issued = {x.get("name"): x for x in status.get("credentials") or () if isinstance(x, Mapping)}
    for cr in spec.get("credentials") or ():
        if not isinstance(cr, Mapping):
            continue
        phase = (issued.get(cr.get("name")) or {}).get("phase")
        if phase == "Active":
            continue
        lifecycle = cr.get("lifecycle") or "WhileRunning"
        hint = " (minted while a pod of the workspace runs)" if lifecycle == "WhileRunning" and phase == "Stopped" else ""
        lines.append(f"  credential {clean(cr.get('name'))}: {clean(phase or 'not issued yet')}{hint}; see CredentialsReady")
    if pods.pods is not None:
        for pod in pods.pods:
            if has_gate(pod):
                lines.append(f"  pod {clean(_meta(pod).get('name'))} is held at the scheduling gate {c.SCHEDULING_GATE}")
    else:
        for pod_name, message in sorted(waiting_pods_from_events(name, pods.pod_events).items()):
            lines.append(f"  pod {clean(pod_name)} (from its Events): {clean(message, 600)}")
    return lines


def workspace_secret_status(ws: Mapping[str, Any], events: Iterable[Mapping[str, Any]], pods: PodView,
                            now: datetime) -> list[str]:
    """`kubectl wso status workspacesecret/NAME`: one screen."""
    spec, status = _spec(ws), _status(ws)
    ref = spec.get("workspaceRef") or {}
    bound = condition(ws, c.CONDITION_WORKSPACE_BOUND)
    lines = [_owner_line({**ws, "kind": WS_KIND})]
    lines.append(f"Workspace: {clean(ref.get('kind') or '?')}/{clean(ref.get('name') or '?')}"
                 + (" (bound)" if bound is not None and bound.get("status") == "True" else " (not bound yet)"))
    ready = condition(ws, c.CONDITION_READY)
    lines.append(f"Ready: {clean((ready or {}).get('status') or 'Unknown')}"
                 + (f" ({clean(ready.get('reason'))})" if ready and ready.get("reason") else ""))
    lines += ["", "Conditions:", *condition_lines(ws)]
    lines += ["", "The workspace gets:", *workspace_gets(ws)]
    waiting = waits_for(ws, pods)
    lines += ["", "Waiting for:", *(waiting or ["  nothing"])]
    if pods.pods is None:
        lines.append("  (pods are not readable with your permissions: pods shown from their Events)")
    lines += ["", "Events:", *event_lines(events, now)]
    if spec.get("ssh", {}).get("existingSecretRef") is None and status.get("sshKeyRotation"):
        lines += ["", f"Last key rotation asked: {clean(status.get('sshKeyRotation'))}"]
    return lines


# --- UserToken -----------------------------------------------------------------------------------------------
def user_token_status(ut: Mapping[str, Any], events: Iterable[Mapping[str, Any]], workspaces: Sequence[Mapping[str, Any]] | None,
                      now: datetime) -> list[str]:
    """`kubectl wso status usertoken/NAME`: one screen. `workspaces`: the namespace's WorkspaceSecrets (None when
    not listable), of which those naming this token are shown. Never `status.userCode` (the owner's only)."""
    spec, status = _spec(ut), _status(ut)
    name = _meta(ut).get("name")
    lines = [_owner_line({**ut, "kind": UT_KIND})]
    host = f" at {clean(status.get('host'))}" if status.get("host") else ""
    lines.append(f"Application: {clean(spec.get('application') or '?')} ({clean(status.get('type') or '?')}{host}), "
                 f"flow {clean(spec.get('flow') or 'AuthorizationCode')}" + (", uploads SSH keys" if spec.get("addSSHKey") else ""))
    phase = status.get("phase")
    lines.append(f"Phase: {clean(phase or 'not reported yet')}" + (f", connected as {clean(status.get('login'))}" if status.get("login") else ""))
    if status.get("authorizationURL"):
        lines.append(f"Connect at: {clean(status.get('authorizationURL'), 1000)}")
    times = [(label, status.get(key)) for label, key in (("connected", "connectedTime"), ("expires", "expiresAt"),
                                                          ("next refresh", "nextRefreshAt"), ("last refresh", "lastRefreshTime"),
                                                          ("last validation", "lastValidationTime")) if status.get(key)]
    for label, value in times:
        lines.append(f"  {label}: {when(value, now)}")
    if status.get("secretName"):
        lines.append(f"Token Secret: {clean(status.get('secretName'))} (holds the refresh token: never mount it; name the "
                     "UserToken in a WorkspaceSecret's spec.userTokens)")
    keys = [k for k in status.get("sshKeys") or () if isinstance(k, Mapping)]
    if keys:
        lines.append("SSH keys at the provider:")
        lines += _table([(clean(k.get("fingerprint") or "?"), clean(k.get("type") or "?"), clean(k.get("addedBy") or "?"),
                          clean(k.get("title") or "")) for k in keys])
    lines += ["", "Conditions:", *condition_lines(ut)]
    if workspaces is not None:
        using = []
        for ws in workspaces:
            for ref in _spec(ws).get("userTokens") or ():
                if isinstance(ref, Mapping) and ref.get("name") == name:
                    tokens = condition(ws, c.CONDITION_TOKENS_READY)
                    waits = (not ref.get("optional")) and (tokens is None or tokens.get("status") != "True")
                    using.append(f"  {clean(_meta(ws).get('name'))}" + (" (optional)" if ref.get("optional") else "")
                                 + (": waits for it" if waits else ""))
        lines += ["", "Workspaces using it:", *(using or ["  none"])]
    lines += ["", "Events:", *event_lines(events, now)]
    return lines


# --- connect ----------------------------------------------------------------------------------------------------
def is_callers(obj: Mapping[str, Any], caller: str | None) -> bool:
    """Whether the object's spec.user is the caller's workspace user (unknown caller: assume so)."""
    return caller is None or _spec(obj).get("user") == caller


def connect_lines(ut: Mapping[str, Any]) -> tuple[int, list[str]]:
    """`kubectl wso connect NAME`: (exit code, lines). The sign-in link alone on the first line when there is
    one (so `xdg-open "$(kubectl wso connect NAME)"` works); otherwise why there is nothing to connect."""
    status = _status(ut)
    name = clean(_meta(ut).get("name"))
    link = status.get("authorizationURL")
    phase = status.get("phase")
    if link:
        return EXIT_OK, [clean(link, 2000)]
    if not phase:
        return EXIT_ERROR, [f"UserToken {name!r} has no status yet: is the operator running? Try again in a moment."]
    if phase in (c.PHASE_VALID, c.PHASE_REFRESHING):
        login = f" as {clean(status.get('login'))}" if status.get("login") else ""
        return EXIT_OK, [f"UserToken {name!r} is connected{login} ({clean(phase)}): nothing to do."]
    return EXIT_ERROR, [f"UserToken {name!r} is {clean(phase)} and has no connect link; see `kubectl wso status usertoken/{name}`."]


def needing_connection(tokens: Iterable[Mapping[str, Any]], caller: str | None) -> list[Mapping[str, Any]]:
    """The caller's UserTokens the caller has to (re)connect, by name."""
    out = [t for t in tokens if is_callers(t, caller) and (_status(t).get("authorizationURL")
                                                          or _status(t).get("phase") in NOT_CONNECTED_PHASES)]
    return sorted(out, key=lambda t: str(_meta(t).get("name")))


def connect_list_lines(tokens: Sequence[Mapping[str, Any]], caller: str | None, namespace: str) -> list[str]:
    who = f"user {clean(caller)!r}" if caller else "you"
    if not tokens:
        return [f"No UserToken of {who} in namespace {clean(namespace)!r} needs connecting."]
    rows = [(clean(_meta(t).get("name")), clean(_status(t).get("phase") or "?"),
             clean(_status(t).get("authorizationURL") or "(no link yet)", 2000)) for t in tokens]
    return [f"UserTokens of {who} in namespace {clean(namespace)!r} to connect:", *_table(rows)]


# --- rotate / refresh -------------------------------------------------------------------------------------------
def rotate_refusal(ws: Mapping[str, Any]) -> str | None:
    """Why the operator's key of this WorkspaceSecret cannot be rotated with the annotation, or None."""
    if ((_spec(ws).get("ssh") or {}).get("existingSecretRef")) or _status(ws).get("sshKeySource") == "Existing":
        return (f"WorkspaceSecret {clean(_meta(ws).get('name'))!r} uses your own key (spec.ssh.existingSecretRef): "
                "replace the key in that Secret instead; the operator rotates only keys it generated")
    return None


def refresh_refusal(ut: Mapping[str, Any]) -> str | None:
    """Why a refresh cannot help this UserToken, or None. A Device-flow token not connected gets a new code."""
    status = _status(ut)
    phase = status.get("phase")
    if phase in NOT_CONNECTED_PHASES and _spec(ut).get("flow") != "Device":
        link = status.get("authorizationURL")
        return (f"UserToken {clean(_meta(ut).get('name'))!r} is {clean(phase)}: there is no token to refresh; "
                + (f"connect it at {clean(link, 2000)}" if link else "connect it (kubectl wso connect)"))
    return None


def rotated(ws: Mapping[str, Any], value: str) -> bool:
    return _status(ws).get("sshKeyRotation") == value


def refreshed(ut: Mapping[str, Any], value: str) -> bool:
    return _status(ut).get("refreshRequest") == value


# --- errors -------------------------------------------------------------------------------------------------------
VERBS = {"get": "read", "list": "list", "patch": "change", "create": "create"}


def api_error(status: int | None, message: str, *, verb: str, what: str, namespace: str) -> tuple[int, str]:
    """(exit code, one line) for a failed API request. `message`: the API server's own (RBAC or admission)."""
    msg = clean(message, 1500)
    if status == 403:
        return EXIT_FORBIDDEN, f"you may not {VERBS.get(verb, verb)} {what} in namespace {clean(namespace)!r}: {msg}"
    if status == 404:
        return EXIT_NOT_FOUND, f"{what} not found in namespace {clean(namespace)!r}"
    if status == 401:
        return EXIT_ERROR, f"not signed in to the cluster (401 Unauthorized): check your kubeconfig credentials: {msg}"
    if status == 422 or status == 400:
        return EXIT_ERROR, f"the API server refused to {VERBS.get(verb, verb)} {what}: {msg}"
    return EXIT_ERROR, f"could not {VERBS.get(verb, verb)} {what} (HTTP {status}): {msg}"
