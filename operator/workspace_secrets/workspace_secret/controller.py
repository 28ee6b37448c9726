"""Reconcile one WorkspaceSecret: its key, the workspace binding, the Secret, the status and Events.

The controller orchestrates the small parts next to it -- keys.py (the user's key or a brought key),
binding.py (the workspace ownerReference), secret.py (the workspace Secret), status.py (status and Events) --
and policy.py decides (pure). Every step is idempotent and keyed by deterministic names, so the reconcile can
run twice, crash halfway, or run after a restart and converge to the same state.

Entry points: `observe` (every event of the operator's WorkspaceSecret watch), `secret_changed` / `user_secret_changed`
(the label-selected Secret watches), `reconcile_by_name` (what the work queue runs, deletion included).

The finalizer (c.FINALIZER) is the controller's own: a WorkspaceSecret gets it before its first dynamic credential is
minted and keeps it while any is live, so that its deletion waits for the revocation; one without credentials never
has it, so deleting it (or its workspace) never waits for the operator. The name is the one kopf's delete handler
used, so objects from before carry on.
"""

from __future__ import annotations

import asyncio
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Problem
from workspace_secrets.api.workspace_secret import SpecError, WorkspaceSecret
from workspace_secrets.credentials.manager import CredentialManager
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.kube import Kube, KubeError, core_path
from workspace_secrets.runtime.metrics import RECONCILE_DURATION, RECONCILES, RECONCILES_SKIPPED
from workspace_secrets.user_keys.naming import is_reserved_secret_name
from workspace_secrets.user_keys.service import UserKeys
from workspace_secrets.workspace_secret import inputs, policy
from workspace_secrets.workspace_secret.binding import ObjectGone, bind
from workspace_secrets.workspace_secret.keys import Keys
from workspace_secrets.workspace_secret.gate import Gate
from workspace_secrets.workspace_secret.pods import blockers
from workspace_secrets.workspace_secret.refs import event_ref, ws_path
from workspace_secrets.workspace_secret.secret import IndexFor, SecretOutcome, Secrets
from workspace_secrets.workspace_secret.status import Status
from workspace_secrets.workspace_secret import tokens as ws_tokens
from workspace_secrets.workspace_secret import token_reader
from workspace_secrets.workspace_secret.token_reader import WorkspaceTokens

__all__ = ["ObjectGone", "RetryLater", "WorkspaceSecretController"]

#: Seconds between looks at a workspace whose only pods are stopping (WhileRunning credentials are revoked once none is left).
STOPPING_RECHECK = 5.0
#: A failed revocation on deletion is tried again after 1 s, doubling up to this.
FINALIZE_MAX_BACKOFF = 60.0


class WorkspaceSecretController:
    def __init__(
        self,
        kube: Kube,
        events: EventRecorder,
        *,
        credentials: CredentialManager | None = None,
        user_keys: UserKeys | None = None,
        schedule: Callable[[str, str, float], None] | None = None,
        clock: Callable[[], datetime] = cond.utcnow,
        managed_index_for: IndexFor | None = None,
        user_index_for: IndexFor | None = None,
    ) -> None:
        self._kube = kube
        # The watch-fed indexes of Secret versions (runtime/secret_index.py): the operator's own Secrets, and the
        # users' own Secrets. With them, `unchanged()` tells without a request that nothing must change.
        self._managed_index_for = managed_index_for or (lambda namespace: None)
        self._user_index_for = user_index_for or (lambda namespace: None)
        # (namespace, user) -> the WorkspaceSecrets of that user there, and the reverse; kept like the token index
        # below: a user's key rotation or own Secret's change queues their workspaces with no LIST.
        self._by_user: dict[tuple[str, str], set[str]] = {}
        self._user_of: dict[tuple[str, str], str] = {}
        # The resourceVersion of the watch event that queued a WorkspaceSecret, until its reconcile reads it: that read
        # is then served from the API server's watch cache ("not older than" that event) instead of etcd.
        self._queued_rv: dict[tuple[str, str], str] = {}
        self._events = events
        self._clock = clock
        self._schedule = schedule or (lambda namespace, name, delay: None)
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        # hash(policy.essence(body)) of each WorkspaceSecret as last reconciled: a watch event with the
        # same essence only echoes our own status/ownerReference writes and needs no work.
        self._handled: dict[tuple[str, str], int] = {}
        self._secrets = Secrets(kube, credentials or CredentialManager({}, clock=clock), user_index_for=self._user_index_for)
        self._keys = Keys(kube, user_keys or UserKeys(kube), events, written=self._secrets.remember,
                          rotated=self.schedule_user)
        self._status = Status(kube, events, clock=clock)
        self._tokens = WorkspaceTokens(kube, clock=clock)
        # tokens.token_state of each UserToken as last seen: see user_token_changed.
        self._token_states: dict[tuple[str, str], tuple[Any, ...]] = {}
        # tokens.token_secret_state of each token Secret as last seen: see secret_changed.
        self._token_secret_states: dict[tuple[str, str], int] = {}
        # (namespace, UserToken name) -> the WorkspaceSecrets there whose spec.userTokens names it, and the reverse;
        # kept by observe() (every WorkspaceSecret body kopf sees) and reconcile_by_name(): a refreshed token queues
        # its workspaces with no API call (a LIST of 10,000 WorkspaceSecrets is ~40 MB).
        self._token_users: dict[tuple[str, str], set[str]] = {}
        self._uses_tokens: dict[tuple[str, str], frozenset[str]] = {}
        self._gate = Gate(kube, events, self._schedule)
        # Deleted WorkspaceSecrets whose revocation failed -> the attempts so far: retried on their own schedule (with
        # backoff), not on every watch event (each failure's status write is one).
        self._finalizing: dict[tuple[str, str], int] = {}

    @property
    def credentials(self) -> CredentialManager:
        return self._secrets.credentials

    # --- entry points ---------------------------------------------------------------------------
    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Every watch event of a WorkspaceSecret (from kopf) lands here and costs no API call: a
        reconcile is queued only when the object's essence differs from the one last reconciled. The
        work queue runs a bounded number of reconciles at a time, each on the object's latest state, so
        a burst of 10,000 creations holds 10,000 keys in memory, not 10,000 bodies and handlers."""
        meta = body.get("metadata") or {}
        # Interned: these names are kept in several maps for every object (one string each, not one per map).
        key = (sys.intern(meta.get("namespace", "")), sys.intern(meta.get("name", "")))
        if event_type == "DELETED":
            self._handled.pop(key, None)
            self._gate.forget(*key)
            self._index_tokens(key, frozenset())
            self._index_user(key, None)
            self._queued_rv.pop(key, None)
            self._finalizing.pop(key, None)
            return
        self._index_tokens(key, ws_tokens.token_names(body))
        self._index_user(key, (body.get("spec") or {}).get("user"))
        if meta.get("deletionTimestamp"):
            # Being deleted: if our finalizer holds it, its credentials are revoked now (once; a failed attempt is
            # retried on its own backoff, see _finalize_deleted). Without it, the garbage collector does the rest.
            if c.FINALIZER in (meta.get("finalizers") or ()) and key not in self._finalizing:
                self._schedule(key[0], key[1], 0.0)
            return
        if self._handled.get(key) == hash(policy.essence(body)):
            return
        if self.unchanged(body):  # e.g. the initial listing after a restart: nothing to do, and no request to know it
            self._handled[key] = hash(policy.essence(body))
            return
        if meta.get("resourceVersion"):
            self._queued_rv[key] = str(meta["resourceVersion"])
        self._schedule(key[0], key[1], 0.0)

    def unchanged(self, body: Mapping[str, Any]) -> bool:
        """Whether a reconcile of this WorkspaceSecret would find nothing to do, known without an API request: its
        status records the digest of its inputs (inputs.py) and the same digest follows from the body and the
        watch-fed Secret indexes. Counted in wso_reconciles_skipped_total."""
        if not inputs.settled(body):
            return False
        try:
            ws = WorkspaceSecret.from_body(body)
        except SpecError:
            return False
        if not inputs.eligible(ws) or (ws.namespace, ws.name) in self._gate.maybe_gated:
            return False
        managed = self._managed_index_for(ws.namespace)
        user_versions = self._user_versions(ws)
        if managed is None or not managed.synced or user_versions is None:
            return False
        key_name = inputs.key_secret_name(ws)
        key_version = managed.version(ws.namespace, key_name)
        secret_version = managed.version(ws.namespace, ws.secret_name)
        if not key_version or not secret_version:
            return False
        if inputs.digest(policy.essence(body), key=(key_name, key_version), secret=(ws.secret_name, secret_version),
                         user_secrets=user_versions) != ws.status.get("inputsDigest"):
            return False
        RECONCILES_SKIPPED.labels(kind=c.WORKSPACE_SECRET_KIND, reason="unchanged").inc()
        return True

    def _user_versions(self, ws: WorkspaceSecret) -> list[tuple[str, str]] | None:
        """(name, resourceVersion) of the user's own Secrets from the index (every one labelled for the user: more
        than the workspace may select, so any change of them counts); None without a synced index."""
        if not ws.user_secrets_enabled:
            return []
        index = self._user_index_for(ws.namespace)
        if index is None or not index.synced:
            return None
        return list(index.names_for_user(ws.namespace, ws.user))

    def _index_user(self, key: tuple[str, str], user: Any) -> None:
        """Record that WorkspaceSecret `key` belongs to `user` (None: deleted; anything but a name counts as none)."""
        user = user if isinstance(user, str) and user else None
        before = self._user_of.get(key)
        if before == user:
            return
        if before is not None:
            names = self._by_user.get((key[0], before))
            if names is not None:
                names.discard(key[1])
                if not names:
                    del self._by_user[(key[0], before)]
        if user is not None:
            user = sys.intern(user)
            self._user_of[key] = user
            self._by_user.setdefault((key[0], user), set()).add(key[1])
        else:
            self._user_of.pop(key, None)

    async def secret_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """A change of a Secret the operator manages (the label-selected watch): reconcile what it belongs to.
        Our own writes' echoes are skipped."""
        meta = obj.get("metadata") or {}
        if self._secrets.is_echo(event_type, meta):
            return  # the echo of our own write
        labels = meta.get("labels") or {}
        component = labels.get(c.LABEL_COMPONENT)
        if component == c.COMPONENT_WORKSPACE_SECRET:
            for owner in meta.get("ownerReferences") or ():
                if owner.get("kind") == c.WORKSPACE_SECRET_KIND and owner.get("controller"):
                    self._schedule(meta["namespace"], owner["name"], 0.0)
        elif component == c.COMPONENT_USER_SSH_KEY and event_type != "ADDED":
            # The user's key was rotated or deleted: every workspace of that user follows.
            for name in await self.names_for_user(meta["namespace"], labels.get(c.LABEL_USER, "")):
                self._schedule(meta["namespace"], name, 0.0)
        elif component == c.COMPONENT_USER_TOKEN:
            # A token was connected, refreshed or removed: every WorkspaceSecret naming its UserToken follows (from the
            # index: no API call), when what a workspace reads of the Secret changed (not for an annotation).
            key = (meta.get("namespace", ""), meta.get("name", ""))
            self._tokens.versions.saw(token_reader.secret_path(*key), event_type, obj)
            state = ws_tokens.token_secret_state(obj)
            if event_type == "DELETED":
                self._token_secret_states.pop(key, None)
            elif self._token_secret_states.get(key) == state:
                return
            else:
                self._token_secret_states[key] = state
            for owner in meta.get("ownerReferences") or ():
                if owner.get("kind") == c.USER_TOKEN_KIND and owner.get("controller"):
                    self.schedule_token_users(key[0], owner["name"])

    async def user_token_changed(self, event_type: str | None, body: Mapping[str, Any], *, schedule: bool = True) -> None:
        """A UserToken's watch event (kopf, on every replica): when what a workspace shows of it changed
        (tokens.token_state: usable or not, connect link, login, spec) or it was deleted, the WorkspaceSecrets naming
        it follow -- not for a refresh's Valid -> Refreshing -> Valid (the token Secret's change carries the new
        token). The initial listing (type None) queues nothing: every WorkspaceSecret is reconciled at start anyway.
        `schedule=False` (a standby replica) only remembers: its queue is paused and a takeover reconciles all."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        self._tokens.versions.saw(token_reader.user_token_path(*key), event_type, body)
        seen = ws_tokens.token_state(body)
        if event_type == "DELETED":
            self._token_states.pop(key, None)
        elif self._token_states.get(key) == seen:
            return
        else:
            self._token_states[key] = seen
        if event_type is not None and schedule:
            self.schedule_token_users(*key)

    def schedule_token_users(self, namespace: str, token: str) -> None:
        """Queue every WorkspaceSecret in `namespace` whose spec.userTokens names UserToken `token` (from the index)."""
        for name in sorted(self._token_users.get((namespace, token), ())):
            self._schedule(namespace, name, 0.0)

    def _index_tokens(self, key: tuple[str, str], names: frozenset[str]) -> None:
        """Record that WorkspaceSecret `key` names the UserTokens `names` (empty: none, or deleted)."""
        before = self._uses_tokens.get(key, frozenset())
        if names == before:
            return
        for token in before - names:
            users = self._token_users.get((key[0], token))
            if users is not None:
                users.discard(key[1])
                if not users:
                    del self._token_users[(key[0], token)]
        for token in names - before:
            self._token_users.setdefault((key[0], token), set()).add(key[1])
        if names:
            self._uses_tokens[key] = names
        else:
            self._uses_tokens.pop(key, None)

    async def pod_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """A labelled pod changed (the label-selected pod watch): reconcile the WorkspaceSecret its label names,
        when the change matters (pods.Gate.pod_changed decides without an API call)."""
        key = self._gate.pod_changed(event_type, obj)
        if key is not None:
            self._schedule(key[0], key[1], 0.0)

    async def user_secret_changed(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """A user's own Secret changed: every workspace of that user in the namespace follows."""
        meta = obj.get("metadata") or {}
        user = (meta.get("labels") or {}).get(c.LABEL_USER)
        if user:
            for name in await self.names_for_user(meta["namespace"], user):
                self._schedule(meta["namespace"], name, 0.0)

    async def reconcile_by_name(self, namespace: str, name: str) -> None:
        """What the work queue runs for every key (watch events, our Secrets' changes, resyncs, re-checks):
        fetch the latest object, then reconcile it."""
        key = (sys.intern(namespace), sys.intern(name))
        async with self._lock(namespace, name):
            body = await self._read(key)
            if body is None:
                self._handled.pop(key, None)
                self._index_tokens(key, frozenset())
                self._index_user(key, None)
                self._gate.forget(namespace, name)  # a pod label may name any WorkspaceSecret: nothing is kept for one that is not there
                return
            self._index_tokens(key, ws_tokens.token_names(body))  # the newest state: a watch event may still be on its way
            self._index_user(key, (body.get("spec") or {}).get("user"))
            if body["metadata"].get("deletionTimestamp"):
                self._handled.pop(key, None)
                if c.FINALIZER in (body["metadata"].get("finalizers") or ()):
                    await self._finalize_deleted(key, body)
                return  # without our finalizer: the workspace Secret goes with it through its ownerReference
            # Recorded before our writes, so that their echoes (arriving while we work) are recognized.
            self._handled[key] = hash(policy.essence(body))
            try:
                await self._measured(body)
            except BaseException:
                self._handled.pop(key, None)  # the queue retries it; any event meanwhile queues it too
                raise

    async def _read(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The WorkspaceSecret's latest state: from the watch cache when a watch event queued it (at least that new),
        else (a timer, a Secret's change, a resync) a quorum read."""
        seen = self._queued_rv.pop(key, None)
        if seen is not None:
            try:
                return await self._kube.get(ws_path(*key), resource_version=seen)
            except KubeError as exc:
                if exc.status != 504:  # the watch cache could not catch up in time: read from etcd
                    raise
        return await self._kube.get(ws_path(*key))

    async def revoke_credentials(self, body: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """On deletion: revoke every credential of this WorkspaceSecret. Returns (revoked ids, errors)."""
        ws = WorkspaceSecret.from_body(body)
        existing = await self._kube.get(core_path(ws.namespace, "secrets", ws.secret_name))
        if existing is not None and not policy.is_owned_by(existing, ws.uid):
            existing = None
        return await self.credentials.revoke_all(ws, existing)

    async def _finalize_deleted(self, key: tuple[str, str], body: Mapping[str, Any]) -> None:
        """A deleted WorkspaceSecret held by our finalizer: revoke its credentials, then let it go. A failure keeps
        the finalizer (the deletion waits) and is retried after 1 s, doubling up to FINALIZE_MAX_BACKOFF; the
        abandon-cleanup annotation is the documented way out. An exception (the API server) is the queue's to retry."""
        attempt = self._finalizing.get(key, 0)
        self._finalizing[key] = attempt + 1  # before the attempt: events meanwhile (our own status write) queue nothing
        try:
            outcome = await self.finalize(body, attempt=attempt)
        except SpecError as exc:
            outcome = (f"The spec is invalid ({exc}); the credentials cannot be looked up. Fix the spec, or annotate "
                       f"{c.ANNOTATION_ABANDON_CLEANUP}=true to give up revoking them.")
            if attempt == 0 or attempt % 5 == 0:
                await self._events.warning(body, "RevocationFailed", outcome)
        if outcome is not None:
            self._schedule(key[0], key[1], min(2.0 ** min(attempt, 6), FINALIZE_MAX_BACKOFF))
            return
        await self._set_finalizer(body, present=False)
        self._finalizing.pop(key, None)

    async def _set_finalizer(self, body: Mapping[str, Any], *, present: bool) -> Mapping[str, Any]:
        """Add or remove our finalizer; another writer's finalizers are never overwritten (a lost race is RetryLater).
        Returns the object as written (or as given, when nothing had to change)."""
        meta = body["metadata"]
        finalizers = list(meta.get("finalizers") or ())
        if (c.FINALIZER in finalizers) == present:
            return body
        path = ws_path(meta["namespace"], meta["name"])
        try:
            if present:  # on the object as read: a compare-and-swap on its resourceVersion
                return await self._kube.merge_patch(path, {"metadata": {"finalizers": [*finalizers, c.FINALIZER],
                                                                        "resourceVersion": meta["resourceVersion"]}})
            # Removed wherever it is now, whatever else changed since the read (a status write of this very
            # reconcile did): the test operation makes it fail rather than remove another finalizer.
            at = finalizers.index(c.FINALIZER)
            return await self._kube.json_patch(path, [{"op": "test", "path": f"/metadata/finalizers/{at}", "value": c.FINALIZER},
                                                      {"op": "remove", "path": f"/metadata/finalizers/{at}"}])
        except KubeError as exc:
            if exc.status in (409, 422):
                raise RetryLater("WorkspaceSecret changed while its finalizer was updated") from None
            if exc.status == 404:
                raise ObjectGone() from None
            raise

    async def finalize(self, body: Mapping[str, Any], *, attempt: int = 0) -> str | None:
        """Deletion of a WorkspaceSecret with credentials. Returns None when done, else why not (retry)."""
        if ((body.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_ABANDON_CLEANUP) == "true":
            await self._events.warning(body, "CleanupAbandoned", f"{c.ANNOTATION_ABANDON_CLEANUP}=true: credentials were NOT revoked; revoke them at the providers by hand (see status.credentials for their ids).")
            return None
        ws = WorkspaceSecret.from_body(body)
        ref = event_ref(ws)
        revoked, errors = await self.revoke_credentials(body)
        if not errors:
            if revoked:
                await self._events.normal(ref, "CredentialsRevoked", f"Revoked {len(revoked)} credential(s) before deletion: {', '.join(revoked)}.")
            return None
        message = (f"Revocation failed (attempt {attempt + 1}), deletion waits and retries: {'; '.join(errors)}. "
                   f"To give up, annotate {c.ANNOTATION_ABANDON_CLEANUP}=true.")
        await self._status.write(body, [cond.Condition(c.CONDITION_CREDENTIALS_READY, False, "RevocationFailed", message)])
        if attempt == 0 or attempt % 5 == 0:
            await self._events.warning(ref, "RevocationFailed", message)
        return message

    async def schedule_user(self, namespace: str, user: str) -> None:
        """Queue every WorkspaceSecret of `user` in `namespace` now (their shared key was rotated)."""
        for name in await self.names_for_user(namespace, user):
            self._schedule(namespace, name, 0.0)

    async def names_for_user(self, namespace: str, user: str) -> list[str]:
        """The user's WorkspaceSecrets in `namespace`, from the index every watch event and reconcile keeps (no
        request: a LIST of 10,000 WorkspaceSecrets is ~40 MB). One not seen yet is reconciled when it is."""
        return sorted(self._by_user.get((namespace, user), ()))

    # --- the reconcile --------------------------------------------------------------------------
    @staticmethod
    def _digest(body: Mapping[str, Any], ws: WorkspaceSecret, key_version: str, written: SecretOutcome,
                user_versions: list[tuple[str, str]] | None, workspace_uid: str | None, problem: Problem | None) -> str | None:
        """The inputs digest to record, when this reconcile's outcome depends only on what it covers and succeeded."""
        if (problem is not None or not workspace_uid or user_versions is None or written.credentials is not None
                or not key_version or not written.resource_version or not inputs.eligible(ws)):
            return None
        return inputs.digest(policy.essence(body), key=(inputs.key_secret_name(ws), key_version),
                             secret=(ws.secret_name, written.resource_version), user_secrets=user_versions)

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        key = (namespace, name)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    async def _measured(self, body: Mapping[str, Any]) -> None:
        """One reconcile, counted by result and timed (the metrics an operator of this operator reads)."""
        started = time.perf_counter()
        result = "error"
        try:
            result = await self._reconcile(body)
        except ObjectGone:
            result = "gone"
        except RetryLater:
            result = "retry"
            raise
        finally:
            RECONCILES.labels(kind=c.WORKSPACE_SECRET_KIND, result=result).inc()
            RECONCILE_DURATION.labels(kind=c.WORKSPACE_SECRET_KIND).observe(time.perf_counter() - started)

    async def _reconcile(self, body: Mapping[str, Any]) -> str:
        """Returns the metric result: success, problem (Ready=False for a human to fix) or gone."""
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return "gone"  # the Secret goes with it through its ownerReference
        try:
            ws = WorkspaceSecret.from_body(body)
        except SpecError as exc:
            await self._status.write(body, [cond.Condition(c.CONDITION_READY, False, "InvalidSpec", str(exc))])
            await self._gate.tell_invalid(body["metadata"]["namespace"], body["metadata"]["name"], (body.get("spec") or {}).get("user"),
                                          f"InvalidSpec: {exc}")
            return "problem"
        reserved = policy.reserved_name_problem(ws, is_reserved_secret_name(ws.secret_name))
        if reserved is not None:  # the CRD refuses it; an object stored before that rule must not write there either
            await self._status.write(body, [cond.Condition(c.CONDITION_READY, False, reserved.reason, reserved.message)])
            await self._gate.tell_invalid(ws.namespace, ws.name, ws.user, f"{reserved.reason}: {reserved.message}")
            return "problem"

        if ws.credentials:
            # Before anything is minted: the deletion of an object holding live credentials waits for their revocation.
            body = await self._set_finalizer(body, present=True)
        key, source, rotation, problem, key_version = await self._keys.key(ws)
        workspace_uid, workspace_problem = await bind(self._kube, body, ws)
        pods = await self._gate.pods(ws)  # before the Secret: WhileRunning credentials follow pods.running
        if pods.running and ws.while_running_credentials and all(p.deleting for p in pods.items if p.live):
            # Running only because pods are stopping (or being re-created): their DELETED events bring us back, and
            # this re-check makes the revocation follow within seconds even should one be missed or met a stale list.
            self._schedule(ws.namespace, ws.name, STOPPING_RECHECK)
        tokens = await self._tokens.collect(ws)  # spec.userTokens: the user's own, checked (tokens.py)
        # Before the Secret is composed: versions read now are at most as new as the Secrets then read, so a change
        # in between makes the recorded digest differ (a reconcile too many, never one too few).
        user_versions = self._user_versions(ws) if inputs.eligible(ws) else None

        written = SecretOutcome()
        if key is not None:
            written = await self._secrets.apply(ws, key, running=pods.running, tokens=tokens)
            problem = written.problem
        elif not pods.running and ws.while_running_credentials:
            # No key (the Secret cannot be composed), and the workspace stopped: its WhileRunning credentials are
            # revoked all the same (a key problem must not keep them alive).
            written = SecretOutcome(credentials=await self._secrets.stop(ws))
        creds = written.credentials

        live_credentials = creds.status if creds is not None else (ws.status.get("credentials") or None)
        if not ws.credentials and not live_credentials:
            # None asked for and none left (the last were revoked above): a deletion need not wait for the operator.
            await self._set_finalizer(body, present=False)

        credential_problems: tuple[Problem, ...] = ()
        if creds is not None:
            credential_problems = tuple(creds.problems)
        if ws.credentials and key is None and (creds is None or len(ws.while_running_credentials) < len(ws.credentials)):
            credential_problems += (Problem("Blocked", "Dynamic credentials are issued once the Secret can be written (see Ready)."),)
        obs = policy.Observation(
            key=key, key_source=source, problem=problem, secret_action=written.action,
            secret_data=written.data, workspace_uid=workspace_uid, rotation_handled=rotation,
            credentials=creds.status if creds is not None else (ws.status.get("credentials") or None),
            credential_problems=credential_problems,
            credential_env=tuple(creds.env) if creds is not None else (),
            user_secrets=written.user_secrets, workspace_problem=workspace_problem,
            pods=pods, tokens=tokens,
            inputs_digest=self._digest(body, ws, key_version, written, user_versions, workspace_uid, problem),
        )
        # Events first: whoever sees the new status can already read the Event that explains it.
        await self._status.announce(body, ws, obs)
        if ws.user_tokens and key is not None:
            await self._status.post(ws, ws_tokens.announcements(body.get("status") or {}, ws_tokens.condition(ws, tokens)))
            if (wake := ws_tokens.next_check(tokens, self._clock())) is not None:
                self._schedule(ws.namespace, ws.name, wake)
        if creds is not None:
            await self._status.post(ws, creds.events)
        await self._status.write(body, policy.conditions(ws, obs), policy.desired_status(ws, obs))
        if creds is not None:
            if creds.wake_at is not None:
                self._schedule(ws.namespace, ws.name, max(0.0, (creds.wake_at - self._clock()).total_seconds()))
            elif creds.problems:
                self._schedule(ws.namespace, ws.name, 10.0)  # provider trouble: try again soon (bounded by the queue's backoff)
        if workspace_uid is None:
            # An unbound WorkspaceSecret keeps looking for its workspace through the work queue (a kopf timer
            # would put kopf's finalizer on every unbound object and block its deletion while the operator is down).
            self._schedule(ws.namespace, ws.name, policy.bind_recheck_delay(body["metadata"].get("creationTimestamp"), self._clock()))
        # After the status write: a released pod's user finds the status that explains it.
        await self._gate.release(ws, pods, blockers(ws, obs), event_ref(ws), published=policy.desired_status(ws, obs))
        return "problem" if problem or credential_problems else "success"
