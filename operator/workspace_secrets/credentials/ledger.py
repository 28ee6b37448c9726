"""The credential ledger and the decisions made from it: what to mint, what to revoke, when to wake up.

The ledger records, per WorkspaceSecret entry, the ids of the credentials the operator handed out (never a
value). It lives in an annotation of the workspace Secret, written in the same request as the values, so
"recorded" and "delivered" are one atomic step. Whatever the provider lists in an entry's scope that the
ledger does not know is an orphan (a crash between minting and recording) and is revoked.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

from workspace_secrets.api.workspace_secret import CredentialSpec

RENEW_FRACTION = 2 / 3  # renew an expiring credential at 2/3 of its lifetime (Vault's practice)
# A credential past its overlap that waits for a workspace restart (delivery Env) looks whether it rolled out:
# first after ROLLOUT_POLL, then backing off (the time already waited) up to ROLLOUT_POLL_MAX.
ROLLOUT_POLL = timedelta(seconds=10)
ROLLOUT_POLL_MAX = timedelta(minutes=5)
# ...and waits at most ROLLOUT_TIMEOUT past its overlap: then it is revoked anyway (a tenant can stall a rollout
# -- pause it, OnDelete, a pod that never becomes ready -- and must not keep an old credential alive for ever).
ROLLOUT_TIMEOUT = timedelta(minutes=30)


# --- who may use a provider ------------------------------------------------------------------------
@dataclass(frozen=True)
class AccessRule:
    """A provider entry's `allow: {namespaces: [glob...], users: [glob...]}` in the operator's providers
    config. A WorkspaceSecret may use the provider when its namespace matches one of `namespaces` (if given)
    AND its spec.user matches one of `users` (if given); at least one list is required. A provider without
    `allow` serves nobody: deny by default (issue 14, instance 10)."""

    namespaces: tuple[str, ...] | None = None
    users: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, raw: object) -> AccessRule | None:
        """None for a missing `allow` (nobody); ValueError, saying how to write it, for a malformed one."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or set(raw) - {"namespaces", "users"}:
            raise ValueError("allow must be a mapping with namespaces and/or users, each a list of glob patterns")
        lists: dict[str, tuple[str, ...] | None] = {}
        for key in ("namespaces", "users"):
            value = raw.get(key)
            if value is None:
                lists[key] = None
            elif isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
                lists[key] = tuple(value)
            else:
                raise ValueError(f"allow.{key} must be a non-empty list of glob patterns (e.g. [\"team-*\"], or [\"*\"] for all)")
        if lists["namespaces"] is None and lists["users"] is None:
            raise ValueError('allow needs namespaces and/or users (allow: {namespaces: ["*"]} allows every namespace)')
        return cls(lists["namespaces"], lists["users"])

    def permits(self, namespace: str, user: str) -> bool:
        return (
            (self.namespaces is None or any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces))
            and (self.users is None or any(fnmatch.fnmatchcase(user, p) for p in self.users))
        )


def access_refusal(provider: str, rule: AccessRule | None, namespace: str, user: str) -> str | None:
    """Why this WorkspaceSecret may not use `provider` (None: it may). Names what the platform must add,
    never the rule's other patterns (they would tell a tenant about other namespaces and users)."""
    if rule is not None and rule.permits(namespace, user):
        return None
    if rule is None:
        need = f"an allow rule (allow: {{namespaces: [{namespace!r}], users: [{user!r}]}})"
    else:
        needs = []
        if rule.namespaces is not None and not any(fnmatch.fnmatchcase(namespace, p) for p in rule.namespaces):
            needs.append(f"namespace {namespace!r} to allow.namespaces")
        if rule.users is not None and not any(fnmatch.fnmatchcase(user, p) for p in rule.users):
            needs.append(f"user {user!r} to allow.users")
        need = " and ".join(needs)
    return (f"provider {provider!r} is not allowed for user {user!r} in namespace {namespace!r}; the platform must add "
            f"{need} of provider {provider!r} in the operator's providers config")


@dataclass(frozen=True)
class Record:
    id: str
    issued_at: datetime
    expires_at: datetime | None = None
    revoke_after: datetime | None = None  # set once superseded: the overlap during which it stays valid
    # delivery Env: the workspace restart (ANNOTATION_RESTARTED_AT value) that must have rolled out before this
    # superseded credential may be revoked -- its old pods still hold it in env until then.
    rollout: str | None = None


@dataclass(frozen=True)
class EntryLedger:
    provider: str
    generation: int = 0
    current: Record | None = None
    retiring: tuple[Record, ...] = ()
    # lifecycle WhileRunning: revoked and its scope released because the workspace stopped (no release again)
    stopped: bool = False
    # delivery Env: a credential was revoked before this workspace restart rolled out (stuck or failed): the old
    # pods' env still holds a revoked value until it does. Cleared once it has rolled out.
    stale: str | None = None

    @property
    def ids(self) -> set[str]:
        return {r.id for r in (self.current, *self.retiring) if r is not None}


Ledger = Mapping[str, EntryLedger]


# --- (de)serialization: deterministic, so an unchanged ledger is an unchanged annotation -------------
def dump(ledger: Ledger) -> str:
    def record(r: Record | None):
        if r is None:
            return None
        out = {"id": r.id, "issuedAt": _ts(r.issued_at)}
        if r.expires_at:
            out["expiresAt"] = _ts(r.expires_at)
        if r.revoke_after:
            out["revokeAfter"] = _ts(r.revoke_after)
        if r.rollout:
            out["rollout"] = r.rollout
        return out

    def entry(e: EntryLedger):
        out = {"provider": e.provider, "generation": e.generation, "current": record(e.current),
               "retiring": [record(r) for r in e.retiring]}
        if e.stopped:
            out["stopped"] = True
        if e.stale:
            out["stale"] = e.stale
        return out

    return json.dumps({name: entry(e) for name, e in sorted(ledger.items())}, sort_keys=True, separators=(",", ":"))


def load(text: str | None) -> dict[str, EntryLedger]:
    if not text:
        return {}
    try:
        raw = json.loads(text)
    except ValueError:
        return {}  # a damaged ledger: everything live becomes an orphan and is re-minted, never leaked

    def record(r) -> Record | None:
        if not r:
            return None
        return Record(r["id"], _parse(r["issuedAt"]), _parse(r.get("expiresAt")), _parse(r.get("revokeAfter")),
                      r.get("rollout") or None)

    return {
        name: EntryLedger(e.get("provider", ""), int(e.get("generation", 0)), record(e.get("current")),
                          tuple(x for x in (record(r) for r in e.get("retiring", ())) if x),
                          bool(e.get("stopped")), e.get("stale") or None)
        for name, e in raw.items()
    }


def _ts(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(value: str | None) -> datetime | None:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if value else None


# --- planning -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    issue_reason: str | None  # None: keep the current credential
    revoke: frozenset[str]  # ids to revoke now (orphans, lost values, retired past their overlap)
    wake_at: datetime | None  # when this entry next needs attention
    keep: EntryLedger  # the ledger after revocations (and before any new issue)
    # of `revoke`: ids revoked although the restart they waited for has not rolled out (failed, or ROLLOUT_TIMEOUT)
    forced: frozenset[str] = frozenset()


def plan(
    spec: CredentialSpec,
    ledger: EntryLedger | None,
    live: Set[str],
    has_values: bool,
    now: datetime,
    rolled_out: Callable[[str], bool] = lambda stamp: True,
    rollout_failed: bool = False,
) -> Plan:
    """`rolled_out(stamp)`: whether the workspace restart `stamp` has finished rolling out (delivery Env); a
    retiring credential waiting for one is kept past its overlap until then -- unless the rollout failed
    (`rollout_failed`: progress deadline exceeded, paused, OnDelete, cannot be restarted) or ROLLOUT_TIMEOUT has
    passed since the overlap ended: then it is revoked anyway (`forced`)."""
    ledger = ledger or EntryLedger(spec.provider)
    current = ledger.current
    reason = None
    if current is None:
        reason = "Missing"
    elif current.id not in live:
        reason, current = "RevokedAtProvider", None
    elif not has_values:
        reason, current = "ValuesLost", None  # someone deleted its keys: replace it, revoke the old one

    retiring = [r for r in ledger.retiring if r.id in live]
    past = [r for r in retiring if r.revoke_after and r.revoke_after <= now]
    forced = {r.id for r in past if r.rollout and not rolled_out(r.rollout)
              and (rollout_failed or r.revoke_after + ROLLOUT_TIMEOUT <= now)}  # type: ignore[operator]
    expired = {r.id for r in past if not r.rollout or rolled_out(r.rollout)} | forced
    stale = max((r.rollout for r in past if r.id in forced and r.rollout), default=None)
    retiring = [r for r in retiring if r.id not in expired]
    known = {r.id for r in retiring} | ({current.id} if current else set())
    revoke = frozenset((set(live) - known) | expired)

    due = _due(spec, current) if current else None
    waiting = [r for r in retiring if r.rollout and not rolled_out(r.rollout)]
    if current is not None and due is not None and due <= now:
        if waiting and current.expires_at is None:
            # The last rotation has not reached every pod yet: a further one would pile up live credentials
            # (IAM allows two keys) for pods that cannot use them. A credential that expires renews anyway.
            due = None
        else:
            reason = "Rotation"
    # A retiring credential past its overlap that is still here waits for a rollout: look again, backing off.
    wakes = [d for d in (due,) if d and d > now] + [_rollout_wake(r.revoke_after, now) for r in retiring if r.revoke_after]
    if ledger.stale and not rolled_out(ledger.stale):
        stale = max(stale or "", ledger.stale)
    if stale:  # the old pods hold a revoked value: look (slowly) whether the restart has rolled out meanwhile
        wakes.append(now + ROLLOUT_POLL_MAX)
    keep = replace(ledger, provider=spec.provider, current=current, retiring=tuple(retiring), stopped=False, stale=stale)
    return Plan(reason, revoke, min(wakes) if wakes else None, keep, frozenset(forced))


def _rollout_wake(revoke_after: datetime, now: datetime) -> datetime:
    """When a credential retiring at `revoke_after` next needs attention: at its overlap's end; past it (waiting
    for a rollout), after as long as it already waited (10 s, 20 s, 40 s ... at most ROLLOUT_POLL_MAX), never
    later than the deadline ROLLOUT_TIMEOUT."""
    if revoke_after > now:
        return revoke_after
    delay = min(max(now - revoke_after, ROLLOUT_POLL), ROLLOUT_POLL_MAX)
    return min(now + delay, max(revoke_after + ROLLOUT_TIMEOUT, now + timedelta(seconds=1)))


def _due(spec: CredentialSpec, current: Record) -> datetime | None:
    candidates = []
    if spec.rotate_after:
        candidates.append(current.issued_at + spec.rotate_after)
    if current.expires_at:
        candidates.append(current.issued_at + (current.expires_at - current.issued_at) * RENEW_FRACTION)
    return min(candidates) if candidates else None


def after_issue(spec: CredentialSpec, ledger: EntryLedger, new: Record, now: datetime, *, rollout: str | None = None) -> EntryLedger:
    """The ledger once `new` is delivered: the old current credential stays valid for the overlap (and, with
    `rollout`, until that workspace restart has rolled out)."""
    retiring = list(ledger.retiring)
    if ledger.current is not None:
        until = now + spec.overlap
        if ledger.current.expires_at:
            until = min(until, ledger.current.expires_at)
        retiring.append(replace(ledger.current, revoke_after=until, rollout=rollout))
    return replace(ledger, generation=ledger.generation + 1, current=new, retiring=tuple(retiring))


def pending_rollouts(ledger: Ledger) -> list[str]:
    """The workspace restarts retiring credentials wait for."""
    return sorted({r.rollout for e in ledger.values() for r in e.retiring if r.rollout})


def next_wake(spec: CredentialSpec, ledger: EntryLedger, now: datetime) -> datetime | None:
    wakes = [r.revoke_after for r in ledger.retiring if r.revoke_after]
    if ledger.current and (due := _due(spec, ledger.current)):
        wakes.append(due)
    future = [w for w in wakes if w > now]
    return min(future) if future else (now + timedelta(seconds=1) if wakes else None)


def secret_key(entry: str, suffix: str) -> str:
    return f"{entry}.{suffix}"
