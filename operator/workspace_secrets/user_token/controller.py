"""Reconcile UserTokens: connect (the OAuth callback), refresh ahead of expiry, validate, upload the user's
SSH key, and clean up on deletion.

A UserToken names an OAuthApplication (cluster-scoped, the platform's): every pass reads it, checks that the
UserToken's namespace is allowed to use it, and reads its client Secret from the operator's own namespace.
A tenant never chooses a host, a client or a Secret to read.

UserTokens run on the same reconcile model as WorkspaceSecrets: kopf's watch events land in `observe`, which
queues the key when the object changed in a way that matters (policy.essence); the work queue (app.py) runs
`reconcile_by_name`, one maintenance pass on the latest state, which returns when something is due next (a
refresh ahead of expiry, a validation, a device-flow poll, a retry) and the queue holds the key until then
(MAX_SLEEP at most). Watch events of the token's Secret or of the user's SSH key, and the connect page, `wake`
the key (queue it now).

Every operation on a token runs under one lock per (namespace, user, application), and re-reads the
UserToken and its Secret under that lock, so concurrent triggers (a scheduled pass, a change of the object,
the callback, a watch event) never spend a single-use refresh token twice: the second one finds the
token already fresh. A work-queue pass never waits for that lock: when it is busy, the key is queued again
shortly (BUSY_RETRY) and the worker is free for other tokens -- many tokens of one tenant behind one lock must
not hold every worker. The connect page and the deletion wait for it. A rotated token is written to the
Secret before anything else happens with it (validation included); if that write fails, the token is kept
in memory and written on the next attempt.

This module is the room's entry: kopf's handlers, the work queue, the connect page and the Secret watch call
it. The work is in the parts next to it, which share one Context (context.py): a maintenance pass
(maintenance.py), the connect flow and listing (connect.py), the deletion (cleanup.py); policy.py decides (pure).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Condition, Problem, ProblemFound
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.api.workspace_secret import SpecError
from workspace_secrets.oauth.protocol import PendingAuthorization, PendingAuthorizations
from workspace_secrets.oauth.registry import PROVIDERS as OAUTH_TYPES
from workspace_secrets.oauth.registry import ProviderCache
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.kube import Kube
from workspace_secrets.runtime.metrics import RECONCILE_DURATION, RECONCILES, TOKENS
from workspace_secrets.user_keys.service import UserKeys
from workspace_secrets.user_token.cleanup import finalize_locked
from workspace_secrets.user_token.connect import Connect, ConnectResult, NotAllowed, TokenSummary
from workspace_secrets.user_token.context import MAX_SLEEP, ConnectSettings, Context, event_ref, ut_path
from workspace_secrets.user_token.maintenance import Pass
from workspace_secrets.user_token import policy
from workspace_secrets.user_token.policy import Phase

#: Seconds after which a queued pass that found its lock busy is tried again.
BUSY_RETRY = 1.0

__all__ = ["ConnectResult", "ConnectSettings", "NotAllowed", "ProblemFound", "RetryLater", "TokenSummary", "UserTokenController"]


class UserTokenController:
    def __init__(self, kube: Kube, events: EventRecorder, providers: ProviderCache,
                 pending: PendingAuthorizations, settings: ConnectSettings, *,
                 namespaces: tuple[str, ...] = (), operator_namespace: str = "workspace-secrets-system",
                 user_keys: UserKeys | None = None, schedule: Callable[[str, str, float], None] | None = None,
                 clock: Callable[[], datetime] = cond.utcnow) -> None:
        self._ctx = Context(kube, events, providers, user_keys or UserKeys(kube), settings,
                            operator_namespace=operator_namespace, namespaces=namespaces, clock=clock)
        if schedule is not None:
            self._ctx.schedule = schedule
        self._connect = Connect(self._ctx, pending, lambda namespace, name: self.maintain(namespace, name))
        self._counted: set[tuple[str, str]] = set()  # (provider, state) pairs the TOKENS gauge has shown
        # hash(policy.essence(body)) of each UserToken as last seen: a watch event with the same essence only
        # echoes our own status writes (or kopf's bookkeeping) and queues nothing.
        self._seen: dict[tuple[str, str], int] = {}
        # The keys this process has made a pass over: the first pass after a start (or a takeover) spreads
        # overdue refreshes (policy.refresh_delay's just_started).
        self._passed: set[tuple[str, str]] = set()
        # UserTokens with addSSHKey, by (namespace, user), as observed: a change of a workspace's key wakes them
        # without an API call.
        self._uploaders: dict[tuple[str, str], set[str]] = {}

    @property
    def refreshes(self) -> int:
        """Refresh calls made (for tests)."""
        return self._ctx.memory.refreshes

    def forget_passes(self) -> None:
        """This replica became the active one (again): the next pass of every token counts as a first one, so
        refreshes that fell due while it was a standby are spread, not all made in the same second."""
        self._passed.clear()

    # --- triggers ------------------------------------------------------------------------------------------
    def wake(self, namespace: str, name: str) -> None:
        """Queue a pass over this token now."""
        self._ctx.wake(namespace, name)

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Every watch event of a UserToken (from kopf, including each object of its initial listing) lands here
        and costs no API call: a pass is queued only when the object's essence differs from the one last seen.
        A token being deleted gets no pass; its finalizer (`finalize`) cleans up."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        self._track_uploader(key, body, deleted=event_type == "DELETED")
        if event_type == "DELETED":
            self._seen.pop(key, None)
            self._passed.discard(key)
            return
        essence = hash(policy.essence(body))
        if self._seen.get(key) == essence:
            return
        self._seen[key] = essence
        if not meta.get("deletionTimestamp"):
            self.wake(*key)

    async def secret_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """A user's SSH key appeared or was rotated, or a workspace's key changed: their UserTokens upload it. A
        token Secret was deleted: its UserToken writes it again."""
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(c.LABEL_COMPONENT) == c.COMPONENT_USER_SSH_KEY:
            # Only tokens with addSSHKey upload it: from the index every kopf event keeps (a LIST of the namespace's
            # UserTokens per new user would cost the API server O(N) for each of N users).
            for name in sorted(self._uploaders.get((meta.get("namespace", ""), labels.get(c.LABEL_USER, "")), ())):
                self.wake(meta["namespace"], name)
        elif labels.get(c.LABEL_COMPONENT) == c.COMPONENT_WORKSPACE_SECRET:
            # A workspace's key appeared, changed or went: the user's addSSHKey tokens keep the provider in step. Only
            # the keys of users with such tokens are remembered (a fingerprint per workspace Secret of every user
            # would be memory for nobody; a token made later reads the keys in use on its own first pass).
            uploaders = self._uploaders.get((meta.get("namespace", ""), labels.get(c.LABEL_USER, "")))
            if not uploaders:
                self._ctx.user_keys.forget_workspace_key(obj)
            elif self._ctx.user_keys.workspace_key_changed(event_type, obj):
                for name in sorted(uploaders):
                    self.wake(meta["namespace"], name)
        elif labels.get(c.LABEL_COMPONENT) == c.COMPONENT_USER_TOKEN and event_type == "DELETED":
            for owner in meta.get("ownerReferences") or ():
                if owner.get("kind") == c.USER_TOKEN_KIND:
                    self.wake(meta["namespace"], owner["name"])

    def _track_uploader(self, key: tuple[str, str], body: Mapping[str, Any], *, deleted: bool) -> None:
        spec = body.get("spec") or {}
        user = (key[0], str(spec.get("user", "")))
        names = self._uploaders.get(user, set())
        if spec.get("addSSHKey") and not deleted:
            self._uploaders[user] = names | {key[1]}
        elif key[1] in names:
            names.discard(key[1])
            if not names:
                self._uploaders.pop(user, None)

    # --- entry points --------------------------------------------------------------------------------------
    async def reconcile_by_name(self, namespace: str, name: str) -> None:
        """What the work queue runs for every key: one pass on the latest state, then the key is queued again
        for when something is due next (at most MAX_SLEEP away). A failure propagates: the queue retries it
        with backoff. A token that is gone or being deleted is not queued again."""
        key = (namespace, name)
        just_started = key not in self._passed
        self._passed.add(key)
        delay, result = await self._measured(namespace, name, just_started, wait=False)
        if result == "busy":
            # Another operation on this (namespace, user, application) holds the lock. A worker never waits for
            # it -- many tokens behind one lock would hold every worker of the pool -- but comes back shortly.
            # No pass was made: the next one is still the first, if this one would have been.
            if just_started:
                self._passed.discard(key)
            self._ctx.schedule(namespace, name, BUSY_RETRY)
            return
        if result == "gone":
            self._passed.discard(key)
            return
        self._ctx.schedule(namespace, name, MAX_SLEEP if delay is None else max(0.05, min(delay, MAX_SLEEP)))

    async def maintain(self, namespace: str, name: str, *, just_started: bool = False) -> float | None:
        """Do whatever is due for this token; return the seconds until something is due next."""
        delay, _ = await self._measured(namespace, name, just_started)
        return delay

    async def _measured(self, namespace: str, name: str, just_started: bool, *, wait: bool = True) -> tuple[float | None, str]:
        """One pass, counted in RECONCILES (success | problem | retry | error | gone) and timed; a cancelled one is
        not, nor one that did not start because the lock was busy ("busy": only when `wait` is false)."""
        started = time.perf_counter()
        result = "error"
        try:
            delay, result = await self._maintain(namespace, name, just_started, wait=wait)
            return delay, result
        except RetryLater:
            result = "retry"
            raise
        except asyncio.CancelledError:
            result = ""
            raise
        finally:
            if result and result != "busy":
                RECONCILES.labels(kind=c.USER_TOKEN_KIND, result=result).inc()
                RECONCILE_DURATION.labels(kind=c.USER_TOKEN_KIND).observe(time.perf_counter() - started)

    async def _maintain(self, namespace: str, name: str, just_started: bool, *, wait: bool) -> tuple[float | None, str]:
        body = await self._ctx.kube.get(ut_path(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None, "gone"
        try:
            ut = UserToken.from_body(body)
        except SpecError as exc:
            await self._ctx.write_status(body, {"phase": Phase.ERROR.value}, [
                Condition(c.CONDITION_READY, False, "InvalidSpec", str(exc)),
                Condition(c.CONDITION_AUTHORIZED, False, "InvalidSpec", str(exc))])
            return None, "problem"
        lock = self._ctx.lock(ut.provider_key)
        if not wait and lock.locked():
            return None, "busy"
        async with lock:
            # Shielded: a refresh must not be cut between spending the refresh token and saving the new one.
            return await asyncio.shield(self._maintain_locked(namespace, name, just_started))

    async def _maintain_locked(self, namespace: str, name: str, just_started: bool) -> tuple[float | None, str]:
        body = await self._ctx.kube.get(ut_path(namespace, name))  # fresh, under the lock
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None, "gone"
        ut = UserToken.from_body(body)
        try:
            ut = await self._ctx.bind(ut)
        except ProblemFound as exc:
            await self._application_unusable(body, exc.problem)
            return 60.0, "problem"  # the platform may create or allow it meanwhile
        run = Pass(self._ctx, body, ut, just_started)
        delay = await run.run()
        return delay, "problem" if run.problem is not None else "success"

    async def _application_unusable(self, body: Mapping[str, Any], problem: Problem) -> None:
        previous = cond.find((body.get("status") or {}).get("conditions"), c.CONDITION_READY) or {}
        fields = {"phase": Phase.ERROR.value, "userCode": None, "authorizationURLExpiresAt": None, "authorizationURL": None}
        await self._ctx.write_status(body, fields, [Condition(c.CONDITION_READY, False, problem.reason, problem.message),
                                                    Condition(c.CONDITION_AUTHORIZED, False, problem.reason, problem.message)])
        if previous.get("reason") != problem.reason or previous.get("message") != problem.message:
            await self._ctx.events.warning(event_ref(body), problem.reason, problem.message)

    # --- connecting (the connect page) ---------------------------------------------------------------------
    async def begin_authorization(self, namespace: str, name: str, user: str, *, browser: str = "") -> str:
        """Mint a single-use state and a PKCE verifier for this UserToken, and return the provider URL (see connect.py)."""
        return await self._connect.begin(namespace, name, user, browser=browser)

    def take_state(self, state: str) -> PendingAuthorization:
        """Consume a callback's state: raises StateRejected if forged, replayed, expired or unknown."""
        return self._connect.take_state(state)

    async def complete_authorization(self, record: PendingAuthorization, code: str) -> ConnectResult:
        return await self._connect.complete(record, code)

    async def list_for_user(self, user: str, namespace: str | None) -> list[TokenSummary]:
        return await self._connect.list_for_user(user, namespace)

    async def disconnect(self, namespace: str, name: str, user: str) -> ConnectResult:
        """The user's Disconnect on the connect page: revoke and remove the stored token, keep the UserToken (connect.py)."""
        return await self._connect.disconnect(namespace, name, user)

    # --- listings ------------------------------------------------------------------------------------------
    async def count_tokens(self) -> dict[tuple[str, str], int]:
        """Set the TOKENS gauge from one listing of the served UserTokens: by provider (the application's type, as
        status.type records it) and state (status.phase). Both label sets are closed -- anything else counts as
        "other" -- so a status written by hand cannot grow the metric; a pair that is gone drops to 0."""
        phases = {p.value for p in Phase}
        counts: dict[tuple[str, str], int] = {}
        for path in self._ctx.served_paths():
            async for page in self._ctx.kube.list_pages(path):
                for item in page:
                    status = item.get("status") or {}
                    provider = status.get("type") or "unknown"
                    state = status.get("phase") or Phase.AWAITING_AUTHORIZATION.value
                    key = (provider if provider in OAUTH_TYPES or provider == "unknown" else "other", state if state in phases else "other")
                    counts[key] = counts.get(key, 0) + 1
        for provider, state in self._counted - counts.keys():
            TOKENS.labels(provider=provider, state=state).set(0)
        for (provider, state), n in counts.items():
            TOKENS.labels(provider=provider, state=state).set(n)
        self._counted |= counts.keys()
        return counts

    def served_paths(self) -> list[str]:
        """The UserToken collections this operator serves (its namespaces, or the cluster)."""
        return self._ctx.served_paths()

    # --- deletion ------------------------------------------------------------------------------------------
    async def finalize(self, body: Mapping[str, Any]) -> None:
        """Remove the uploaded SSH key, revoke the token at the provider, delete the Secret (cleanup.py).

        Raises RetryLater while the provider cannot be reached, so kopf keeps the finalizer and retries:
        the token is never dropped silently. An administrator can set the skip-revocation annotation
        to finish the deletion of a token whose provider is gone for good.
        """
        try:
            ut = UserToken.from_body(body)
        except SpecError:
            self._ctx.memory.forget((body.get("metadata") or {}).get("uid", ""))
            return  # nothing was ever connected; the Secret, if any, goes with its ownerReference
        async with self._ctx.lock(ut.provider_key):
            await asyncio.shield(finalize_locked(self._ctx, body, ut))
        self._ctx.memory.forget(ut.uid)  # cleaned up: nothing kept about the token (a device code among it)
