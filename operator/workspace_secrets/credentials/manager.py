"""Mint, rotate and revoke one WorkspaceSecret's dynamic credentials (read -> plan -> act).

Order of operations (each step safe to repeat, each crash point converging):
  1. list what lives at the provider in the entry's scope;
  2. revoke what the ledger does not know (orphans of a crash) and what is past its overlap;
  3. mint a new credential if the plan says so;
  4. the caller writes values + ledger to the workspace Secret in ONE request.
A crash after 3 and before 4 leaves an orphan that step 2 of the next reconcile revokes.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import (DELIVERY_ENV, LIFECYCLE_WHILE_RUNNING, CredentialSpec,
                                                    WorkspaceSecret)
from workspace_secrets.credentials import ledger as ledgers
from workspace_secrets.api.conditions import Problem
from workspace_secrets.credentials.providers.base import CredentialProvider, FileContext, FileRef, ProviderError, Scope
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.metrics import CREDENTIALS_FAILED, CREDENTIALS_ISSUED, CREDENTIALS_REVOKED

log = logging.getLogger(__name__)


@dataclass
class CredentialOutcome:
    data: dict[str, str] = field(default_factory=dict)  # base64 Secret data of every credential key
    ledger: dict[str, ledgers.EntryLedger] = field(default_factory=dict)
    status: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, str]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    wake_at: datetime | None = None
    restart: str | None = None  # delivery Env: the restart stamp the workspace's pod template must carry
    restarts: list[str] = field(default_factory=list)  # restarts no retiring credential records (replaced ones gone)

    def wake(self, when: datetime | None) -> None:
        if when and (self.wake_at is None or when < self.wake_at):
            self.wake_at = when


class Rollout(Protocol):
    """The workspace workload as revocation sees it (workspace_secret/rollout.py's Workload)."""

    restartable: bool
    failure: str | None  # why its rollout cannot finish (None: it can)

    def rolled_out(self, stamp: str) -> bool: ...


class _NoRollout:
    restartable = False
    failure = None

    def rolled_out(self, stamp: str) -> bool:
        return True


def entry_keys(data: Mapping[str, str], entry: str) -> dict[str, str]:
    prefix = f"{entry}."
    return {k: v for k, v in data.items() if k.startswith(prefix)}


class CredentialManager:
    def __init__(
        self,
        providers: Mapping[str, CredentialProvider],
        *,
        clock: Callable[[], datetime],
        unavailable: Mapping[str, str] | None = None,
    ) -> None:
        self._providers = providers
        self._unavailable = unavailable or {}
        self._clock = clock

    def now(self) -> datetime:
        return self._clock()

    @property
    def configured(self) -> list[str]:
        return sorted(self._providers)

    async def reconcile(self, ws: WorkspaceSecret, existing: Mapping[str, Any] | None, *, running: bool = True,
                        rollout: Rollout | None = None) -> CredentialOutcome:
        """`running`: whether the workspace runs (lifecycle WhileRunning credentials exist only then). `rollout`:
        the workspace workload, for delivery Env (restart on rotation; revoke only once it rolled out)."""
        out = CredentialOutcome()
        data = (existing or {}).get("data") or {}
        recorded = ledgers.load(((existing or {}).get("metadata") or {}).get("annotations", {}).get(c.ANNOTATION_CREDENTIALS))
        workload = rollout or _NoRollout()
        for index, spec in enumerate(ws.credentials):
            await self._entry(ws, index, spec, recorded.get(spec.name), data, out, running=running, rollout=workload)
        for name, ledger in recorded.items():
            if name not in {s.name for s in ws.credentials}:
                await self._retire_entry(ws, name, ledger, out)
        # The newest restart a retiring credential waits for (the template may still lack it after a crash).
        out.restart = max([*ledgers.pending_rollouts(out.ledger), *out.restarts], default=None)
        return out

    async def stop(self, ws: WorkspaceSecret, existing: Mapping[str, Any] | None) -> CredentialOutcome:
        """The revoke-only pass of a workspace that does not run while its Secret cannot be composed (no SSH key):
        every lifecycle WhileRunning entry is revoked and its values dropped; every other entry keeps its values
        and ledger as they are (nothing is minted or rotated). `existing`: the workspace Secret if this
        WorkspaceSecret controls it, else None (then only the provider side is touched)."""
        out = CredentialOutcome()
        data = (existing or {}).get("data") or {}
        recorded = ledgers.load(((existing or {}).get("metadata") or {}).get("annotations", {}).get(c.ANNOTATION_CREDENTIALS))
        previous = {e.get("name"): e for e in ws.status.get("credentials") or () if isinstance(e, Mapping)}
        stopping = set(ws.while_running_credentials)
        for index, spec in enumerate(ws.credentials):
            provider = self._providers.get(spec.provider)
            allowed = provider is not None and ledgers.access_refusal(
                spec.provider, getattr(provider, "access", None), ws.namespace, ws.user) is None
            if spec.name in stopping and provider is not None and allowed:
                scope = Scope.of(ws.namespace, ws.name, ws.uid, spec.name)
                await self._stopped(ws, f"spec.credentials[{index}]", spec, provider, scope, recorded.get(spec.name), out)
                self._deliver(ws, f"spec.credentials[{index}]", spec, provider, out, values={})
                continue
            # Untouched (the full reconcile handles it once the Secret can be written again).
            out.data.update(entry_keys(data, spec.name))
            if spec.name in recorded:
                out.ledger[spec.name] = recorded[spec.name]
            if spec.name in previous:
                out.status.append(dict(previous[spec.name]))
        for name, ledger in recorded.items():
            if name not in {s.name for s in ws.credentials}:
                out.ledger[name] = ledger
                out.data.update(entry_keys(data, name))
        return out

    async def _entry(self, ws: WorkspaceSecret, index: int, spec: CredentialSpec, ledger: ledgers.EntryLedger | None,
                     data: Mapping[str, str], out: CredentialOutcome, *, running: bool = True,
                     rollout: Rollout | None = None) -> None:
        where = f"spec.credentials[{index}]"
        rollout = rollout or _NoRollout()
        old_values = entry_keys(data, spec.name)

        def keep_as_is(problem: Problem) -> None:
            out.problems.append(problem)
            out.data.update(old_values)
            if ledger is not None:
                out.ledger[spec.name] = ledger
                out.status.append(_status(spec, ledger, "Error"))

        provider = self._providers.get(spec.provider)
        if provider is None and spec.provider in self._unavailable:
            return keep_as_is(Problem("ProviderUnavailable", f"{where}.provider: {spec.provider!r} is configured but unavailable: {self._unavailable[spec.provider]}. Fix the operator's provider configuration."))
        if provider is None:
            configured = ", ".join(self.configured) or "none"
            return keep_as_is(Problem("UnknownProvider", f"{where}.provider: {spec.provider!r} is not configured by the platform (configured: {configured})."))
        if (refusal := ledgers.access_refusal(spec.provider, getattr(provider, "access", None), ws.namespace, ws.user)) is not None:
            # Nothing is delivered; what was issued before (the rule changed since) is revoked like a removed entry.
            out.problems.append(Problem("PolicyViolation", f"{where}.provider: {refusal}."))
            if ledger is not None:
                await self._retire_entry(ws, spec.name, ledger, out, why="its provider no longer allows this WorkspaceSecret")
            return None
        scope = Scope.of(ws.namespace, ws.name, ws.uid, spec.name)
        if spec.lifecycle == LIFECYCLE_WHILE_RUNNING and not running:
            # Before validating the parameters: revoking needs none, and parameters that became invalid must
            # not keep a stopped workspace's credential alive.
            await self._stopped(ws, where, spec, provider, scope, ledger, out)
            self._deliver(ws, where, spec, provider, out, values={})
            if (error := provider.validate(spec.parameters)) is not None:  # said now, not only once a pod starts
                out.problems.append(Problem("PolicyViolation", f"{where}.parameters: {error}"))
            return None
        if ledger is not None and ledger.stopped:
            ledger = replace(ledger, stopped=False)  # running again: whatever is minted now is released on the next stop
        if (error := provider.validate(spec.parameters)) is not None:
            return keep_as_is(Problem("PolicyViolation", f"{where}.parameters: {error}"))
        now = self._clock()
        operation = "list"
        try:
            live = set(await provider.list(scope))
            decided = ledgers.plan(spec, ledger, live, bool(old_values), now, rolled_out=rollout.rolled_out,
                                   rollout_failed=rollout.failure is not None)
            kept = decided.keep
            for credential_id in sorted(decided.revoke):
                operation = "revoke"
                await provider.revoke(scope, credential_id)
                CREDENTIALS_REVOKED.labels(provider=spec.provider).inc()
                if credential_id in decided.forced:
                    why = rollout.failure or f"it has not finished within {_minutes(ledgers.ROLLOUT_TIMEOUT)} after the overlap"
                    out.events.append(("Warning", "CredentialRevokedBeforeRollout", f"{spec.name}: revoked the replaced {provider.type_name} credential {credential_id} although the workspace restart has not rolled out ({why}): {_stale_advice(ws)}"))
                else:
                    out.events.append(("Normal", "CredentialRevoked", f"{spec.name}: revoked {provider.type_name} credential {credential_id} ({'superseded' if credential_id in (ledger.ids if ledger else ()) else 'not recorded: orphan'})."))
            if kept.stale:
                out.problems.append(Problem("RolloutStuck", f"{where}: the replaced credential was revoked before the workspace restart rolled out ({rollout.failure or 'it did not finish in time'}): {_stale_advice(ws)}"))
            if decided.issue_reason is None:
                out.data.update(old_values)
                out.ledger[spec.name] = kept
                out.status.append(_status(spec, kept, "Active"))
                out.wake(decided.wake_at)
            else:
                operation = "issue"
                issued = await provider.issue(scope, spec.parameters, kept.generation + 1)
                CREDENTIALS_ISSUED.labels(provider=spec.provider).inc()
                record = ledgers.Record(issued.id, now, issued.expires_at)
                # delivery Env into a Deployment/StatefulSet: the superseded value lives on in the env of the
                # running pods until they are replaced, so it is revoked only once that restart rolled out.
                # The ledger's current BEFORE planning: a credential replaced because it was revoked at the provider
                # or its values were lost (plan() drops it from `kept`) also lives on in the pods' env.
                replaced = kept.current is not None or (ledger is not None and ledger.current is not None)
                restart = ledgers._ts(now) if spec.delivery == DELIVERY_ENV and rollout.restartable and replaced else None
                new_ledger = ledgers.after_issue(spec, kept, record, now, rollout=restart)
                if restart and kept.current is None:
                    out.restarts.append(restart)  # nothing retiring carries it: the old value is already gone
                for suffix, value in issued.values.items():
                    out.data[ledgers.secret_key(spec.name, suffix)] = base64.b64encode(value.reveal()).decode()
                out.ledger[spec.name] = new_ledger
                out.status.append(_status(spec, new_ledger, "Active"))
                out.wake(ledgers.next_wake(spec, new_ledger, now))
                verb = "Rotated" if decided.issue_reason == "Rotation" else "Issued"
                out.events.append(("Normal", f"Credential{verb}", f"{spec.name}: {verb.lower()} {provider.type_name} credential {issued.id} ({decided.issue_reason})."))
        except ProviderError as exc:
            _count_failure(spec.provider, operation, exc)
            return keep_as_is(Problem(c.REASON_PROVIDER_ERROR, f"{where} ({spec.provider}): {exc}; retrying with backoff."))
        self._deliver(ws, where, spec, provider, out, values=entry_keys(out.data, spec.name))

    def _deliver(self, ws: WorkspaceSecret, where: str, spec: CredentialSpec, provider: CredentialProvider,
                 out: CredentialOutcome, *, values: Mapping[str, str]) -> None:
        """The entry's tool files (rendered from its current values, on every reconcile: a changed mountPath or
        an older operator's Secret converges) and its env vars: with delivery Files only those that never go
        stale (file paths, values that never rotate); with delivery Env the values too."""
        prefix = f"{spec.name}."
        plain = {k[len(prefix):]: Sensitive(base64.b64decode(v)) for k, v in values.items()}
        context = FileContext(spec.name, ws.mount_path, ws.namespace)
        for suffix, content in provider.files(plain, context).items():
            out.data[ledgers.secret_key(spec.name, suffix)] = base64.b64encode(content.reveal()).decode()
        refs = dict(provider.file_env())
        if spec.delivery == DELIVERY_ENV:
            refs.update(provider.env())
        for env_name, ref in refs.items():
            if isinstance(ref, FileRef):
                key = ledgers.secret_key(spec.name, env_name)
                out.data[key] = base64.b64encode(context.path(ref.suffix).encode()).decode()
            else:
                key = ledgers.secret_key(spec.name, ref)
            name = f"{spec.env_prefix}{env_name}"
            if any(e["name"] == name for e in out.env):
                out.problems.append(Problem("EnvConflict", f"{where}: env {name} is already set by another entry; give this entry an envPrefix."))
                continue
            out.env.append({"name": name, "key": key})

    async def _stopped(self, ws: WorkspaceSecret, where: str, spec: CredentialSpec, provider: CredentialProvider,
                       scope: Scope, ledger: ledgers.EntryLedger | None, out: CredentialOutcome) -> None:
        """lifecycle WhileRunning, and the workspace does not run: revoke whatever lives in the entry's scope
        (recorded or an orphan of a crash) and deliver no value. The ledger keeps the generation only."""
        try:
            # Released also when nothing is live (a scope whose credential was never created: an IAM user without a
            # key, after a failed issue), once per stop: the ledger says `stopped`.
            ids = await self.revoke_scope(provider, scope, release=ledger is None or not ledger.stopped)
        except ProviderError as exc:
            out.problems.append(Problem("RevocationFailed", f"{where} ({spec.provider}): the workspace stopped, but its credentials could not be revoked yet: {exc}; retrying."))
            if ledger is not None:
                out.ledger[spec.name] = ledger
                out.status.append(_status(spec, ledger, "Error"))
            return
        if ids:
            out.events.append(("Normal", "CredentialRevoked", f"{spec.name}: the workspace stopped (lifecycle WhileRunning); revoked {provider.type_name} credential(s) {', '.join(ids)}."))
        stopped = ledgers.EntryLedger(spec.provider, ledger.generation if ledger else 0, stopped=True)
        out.ledger[spec.name] = stopped
        out.status.append(_status(spec, stopped, "Stopped"))

    async def _retire_entry(self, ws: WorkspaceSecret, name: str, ledger: ledgers.EntryLedger, out: CredentialOutcome,
                            *, why: str = "entry removed from the spec") -> None:
        """An entry removed from the spec (or no longer allowed): revoke everything in its scope; until that
        works, keep it recorded."""
        provider = self._providers.get(ledger.provider)
        scope = Scope.of(ws.namespace, ws.name, ws.uid, name)
        try:
            if provider is None:
                error = ProviderError(f"provider {ledger.provider!r} is no longer configured", retryable=False)
                # ledger.provider comes from an annotation in the tenant's namespace: never a metric label.
                _count_failure(UNCONFIGURED, "revoke", error)
                raise error
            await self.revoke_scope(provider, scope)
            out.events.append(("Normal", "CredentialRevoked", f"{name}: {why}; its {provider.type_name} credentials are revoked."))
        except ProviderError as exc:
            out.ledger[name] = ledger
            out.problems.append(Problem("RevocationFailed", f"credentials of removed entry {name!r} ({ledger.provider}) could not be revoked yet: {exc}"))

    async def revoke_scope(self, provider: CredentialProvider, scope: Scope, *, release: bool = True) -> list[str]:
        """Revoke everything live in the scope, then release its per-scope resources (with `release=False` only
        when something was live). Returns the revoked ids."""
        operation = "list"
        try:
            ids = await provider.list(scope)
            for credential_id in ids:
                operation = "revoke"
                await provider.revoke(scope, credential_id)
                CREDENTIALS_REVOKED.labels(provider=provider.name).inc()
            if release or ids:
                operation = "release"
                await provider.release(scope)
        except ProviderError as exc:
            _count_failure(provider.name, operation, exc)
            raise
        return ids

    async def revoke_all(self, ws: WorkspaceSecret, existing: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
        """On delete: revoke every scope the spec or the ledger names. Returns (revoked ids, errors)."""
        recorded = ledgers.load(((existing or {}).get("metadata") or {}).get("annotations", {}).get(c.ANNOTATION_CREDENTIALS))
        entries = {s.name: s.provider for s in ws.credentials} | {n: e.provider for n, e in recorded.items()}
        revoked: list[str] = []
        errors: list[str] = []
        for name, provider_name in sorted(entries.items()):
            provider = self._providers.get(provider_name)
            if provider is None:
                errors.append(f"{name}: provider {provider_name!r} is not configured")
                continue
            try:
                revoked += await self.revoke_scope(provider, Scope.of(ws.namespace, ws.name, ws.uid, name))
            except ProviderError as exc:
                errors.append(f"{name} ({provider_name}): {exc}")
        return revoked, errors


def _minutes(delta: Any) -> str:
    return f"{int(delta.total_seconds() // 60)} minutes"


def _stale_advice(ws: WorkspaceSecret) -> str:
    ref = ws.workspace_ref
    return (f"the env of the workspace's running pods still holds the old, now revoked value (delivery Env). Restart the "
            f"workspace (kubectl -n {ws.namespace} rollout restart {ref.kind.lower()}/{ref.name}, or delete its pods) "
            f"so they read the current one; its files (delivery Files) are always current.")


#: The provider label of a failure whose provider is not (or no longer) configured: the name at hand was read
#: from the tenant's namespace, and a label taken from there would let a tenant grow the metric without bound.
UNCONFIGURED = "unconfigured"


def _count_failure(provider: str, operation: str, exc: ProviderError) -> None:
    """CREDENTIALS_FAILED by the platform's provider name (a configured one, or UNCONFIGURED), the provider call that failed, and whether it is retried."""
    CREDENTIALS_FAILED.labels(provider=provider, operation=operation, reason="retryable" if exc.retryable else "permanent").inc()


def _status(spec: CredentialSpec, ledger: ledgers.EntryLedger, phase: str) -> dict[str, Any]:
    current = ledger.current
    entry: dict[str, Any] = {"name": spec.name, "provider": spec.provider, "phase": phase, "generation": ledger.generation}
    if current:
        entry["id"] = current.id
        entry["issuedAt"] = ledgers._ts(current.issued_at)
        if current.expires_at:
            entry["expiresAt"] = ledgers._ts(current.expires_at)
    if ledger.retiring:
        entry["retiring"] = [r.id for r in ledger.retiring]
    return entry


async def sweep_orphans(manager: CredentialManager, expected_tags: Callable[[], Any], log_: logging.Logger = log) -> list[str]:
    """Revoke every scope a provider holds that no existing WorkspaceSecret entry accounts for.

    Providers are listed BEFORE the WorkspaceSecrets, so a scope created concurrently is never mistaken for
    an orphan: it belongs to a WorkspaceSecret that already exists when the second list is taken."""
    found = {}
    for name, provider in manager._providers.items():
        try:
            found[name] = await provider.sweep()
        except ProviderError as exc:
            _count_failure(name, "sweep", exc)
            raise
    expected = await expected_tags()
    revoked = []
    for name, tags in found.items():
        provider = manager._providers[name]
        for tag in tags:
            if tag not in expected:
                try:
                    ids = await manager.revoke_scope(provider, Scope(tag))
                    revoked.append(tag)
                    log_.warning("revoked orphaned %s scope %s (credentials %s): no WorkspaceSecret owns it", name, tag, ids)
                except ProviderError as exc:
                    log_.warning("orphan sweep could not revoke %s scope %s: %s", name, tag, exc)
    return revoked
