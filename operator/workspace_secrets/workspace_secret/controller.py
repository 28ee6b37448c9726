"""Reconcile one WorkspaceSecret: the per-user key, the workspace binding, the Secret, the status.

Every step is idempotent and keyed by deterministic names, so the reconcile can run twice, crash
halfway, or run after a restart and converge to the same state.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from ..api import constants as c
from ..api.workspacesecret import WORKSPACE_KINDS, SpecError, WorkspaceSecret
from ..domain import conditions as cond
from ..domain.credentials import dump as ledger_dump
from ..domain import sshkeys, user_secrets
from ..domain import workspace_secret as policy
from ..domain.naming import is_reserved_secret_name, user_key_secret_name
from ..domain.sshkeys import KeySpec, KeyType, SSHKeyPair
from ..kube.client import Conflict, Kube, NotFound, core_path, group_path
from ..kube.events import EventRecorder
from ..metrics import RECONCILE_DURATION, RECONCILES, SECRET_WRITES
from .logref import log_extra
from .credentials import CredentialManager, CredentialOutcome

log = logging.getLogger(__name__)

KEY_SOURCE_GENERATED = "Generated"
KEY_SOURCE_EXISTING = "Existing"

#: How often an unbound WorkspaceSecret looks for its workspace, by its age: often while it is young
#: (the workspace is usually created right after it), rarely once it has waited a while -- each look is
#: a full reconcile (a few GETs), so thousands of forever-unbound objects must not poll every 5 s.
BIND_RECHECK_SCHEDULE = ((120.0, 5.0), (600.0, 15.0))  # (age below, re-check every)
BIND_RECHECK_SLOWEST = 60.0

#: Brought keys are decrypted and parsed here, never on the event loop: even bounded (sshkeys.check_work_bounds)
#: a key costs up to about a second of CPU, and the loop also answers the pod-injection webhook. Two threads:
#: one tenant's keys can occupy them, never the loop; further keys wait their turn.
KEY_PARSE_WORKERS = 2
KEY_PARSE_DEADLINE = 30.0  # seconds, queueing included; a key that takes longer is reported, not waited for
_key_parser = ThreadPoolExecutor(max_workers=KEY_PARSE_WORKERS, thread_name_prefix="byo-key")


@dataclass(frozen=True)
class SecretOutcome:
    """What writing the workspace Secret did, and what went into it."""

    action: policy.SecretAction | None = None
    data: Mapping[str, str] | None = None  # base64 data as written (for display items)
    problem: policy.Problem | None = None
    credentials: CredentialOutcome | None = None
    user_secrets: user_secrets.UserSecretsPlan | None = None


class RetryLater(Exception):
    """A transient race (e.g. a compare-and-swap lost to another writer); reconcile again soon."""


class ObjectGone(Exception):
    """The WorkspaceSecret was deleted while it was being reconciled: nothing left to do."""


class ProblemFound(Exception):
    """Something only a human can fix; reported as a Condition, not retried in a hot loop."""

    def __init__(self, problem: policy.Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class WorkspaceSecretController:
    def __init__(
        self,
        kube: Kube,
        events: EventRecorder,
        *,
        credentials: CredentialManager | None = None,
        schedule: Callable[[str, str, float], None] | None = None,
        clock: Callable[[], datetime] = cond.utcnow,
    ) -> None:
        self._kube = kube
        self._events = events
        self._clock = clock
        self.credentials = credentials or CredentialManager({}, clock=clock)
        self._schedule = schedule or (lambda namespace, name, delay: None)
        self._locks: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = weakref.WeakValueDictionary()
        # resourceVersions of Secrets we wrote ourselves, so the Secret watch can skip our own echoes.
        self.written: dict[tuple[str, str], str] = {}
        # Secrets we are creating right now: their ADDED event can arrive before create() returns (and
        # before `written` knows the resourceVersion); a create succeeds only once, so that event is ours.
        self.creating: set[tuple[str, str]] = set()
        # hash(policy.essence(body)) of each WorkspaceSecret as last reconciled: a watch event with the
        # same essence only echoes our own status/ownerReference writes and needs no work.
        self._handled: dict[tuple[str, str], int] = {}
        self._key_cache: dict[tuple[str, ...], SSHKeyPair] = {}
        # Brought keys that failed to load, by the same key as _key_cache (the Secret's resourceVersion among it):
        # a wrong passphrase on an expensive key is paid once per change of the Secret, not once per reconcile.
        self._refused_keys: dict[tuple[str, ...], str] = {}

    # --- entry points ---------------------------------------------------------------------------
    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Every watch event of a WorkspaceSecret (from kopf) lands here and costs no API call: a
        reconcile is queued only when the object's essence differs from the one last reconciled. The
        work queue runs a bounded number of reconciles at a time, each on the object's latest state, so
        a burst of 10,000 creations holds 10,000 keys in memory, not 10,000 bodies and handlers."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self._handled.pop(key, None)
            return
        if meta.get("deletionTimestamp") or self._handled.get(key) == hash(policy.essence(body)):
            return
        self._schedule(key[0], key[1], 0.0)

    async def reconcile_by_name(self, namespace: str, name: str) -> None:
        """What the work queue runs for every key (watch events, our Secrets' changes, resyncs, re-checks):
        fetch the latest object, then reconcile it."""
        key = (namespace, name)
        async with self._lock(namespace, name):
            body = await self._kube.get(_ws_path(namespace, name))
            if body is None:
                self._handled.pop(key, None)
                return
            # Recorded before our writes, so that their echoes (arriving while we work) are recognized.
            self._handled[key] = hash(policy.essence(body))
            try:
                await self._measured(body)
            except BaseException:
                self._handled.pop(key, None)  # the queue retries it; any event meanwhile queues it too
                raise

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

    async def revoke_credentials(self, body: Mapping[str, Any]) -> tuple[list[str], list[str]]:
        """On deletion: revoke every credential of this WorkspaceSecret. Returns (revoked ids, errors)."""
        ws = WorkspaceSecret.from_body(body)
        existing = await self._kube.get(core_path(ws.namespace, "secrets", ws.secret_name))
        if existing is not None and not policy.is_owned_by(existing, ws.uid):
            existing = None
        return await self.credentials.revoke_all(ws, existing)

    async def finalize(self, body: Mapping[str, Any], *, attempt: int = 0) -> str | None:
        """Deletion of a WorkspaceSecret with credentials. Returns None when done, else why not (retry)."""
        ws = WorkspaceSecret.from_body(body)
        ref = _ref(ws)
        if ws.abandon_cleanup:
            await self._events.warning(ref, "CleanupAbandoned", f"{c.ANNOTATION_ABANDON_CLEANUP}=true: credentials were NOT revoked; revoke them at the providers by hand (see status.credentials for their ids).")
            return None
        revoked, errors = await self.revoke_credentials(body)
        if not errors:
            if revoked:
                await self._events.normal(ref, "CredentialsRevoked", f"Revoked {len(revoked)} credential(s) before deletion: {', '.join(revoked)}.")
            return None
        message = (f"Revocation failed (attempt {attempt + 1}), deletion waits and retries: {'; '.join(errors)}. "
                   f"To give up, annotate {c.ANNOTATION_ABANDON_CLEANUP}=true.")
        await self._write_status(body, ws, [cond.Condition(c.CONDITION_CREDENTIALS_READY, False, "RevocationFailed", message)])
        if attempt == 0 or attempt % 5 == 0:
            await self._events.warning(ref, "RevocationFailed", message)
        return message

    async def names_for_user(self, namespace: str, user: str) -> list[str]:
        names = []
        async for page in self._kube.list_pages(group_path(c.API_VERSION, namespace, c.WORKSPACE_SECRET_PLURAL)):
            names += [item["metadata"]["name"] for item in page if (item.get("spec") or {}).get("user") == user]
        return names

    def _lock(self, namespace: str, name: str) -> asyncio.Lock:
        key = (namespace, name)
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    # --- the reconcile --------------------------------------------------------------------------
    async def _reconcile(self, body: Mapping[str, Any]) -> str:
        """Returns the metric result: success, problem (Ready=False for a human to fix) or gone."""
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return "gone"  # the Secret goes with it through its ownerReference
        try:
            ws = WorkspaceSecret.from_body(body)
        except SpecError as exc:
            await self._write_status(body, None, [cond.Condition(c.CONDITION_READY, False, "InvalidSpec", str(exc))])
            return "problem"
        reserved = policy.reserved_name_problem(ws, is_reserved_secret_name(ws.secret_name))
        if reserved is not None:  # the CRD refuses it; an object stored before that rule must not write there either
            await self._write_status(body, ws, [cond.Condition(c.CONDITION_READY, False, reserved.reason, reserved.message)])
            return "problem"

        key, source, rotation, problem = await self._key(ws)
        workspace_uid, workspace_problem = await self._bind(body, ws)

        written = SecretOutcome()
        if key is not None:
            written = await self._apply_secret(ws, key)
            problem = written.problem
        creds = written.credentials

        credential_problems: tuple[policy.Problem, ...] = ()
        if creds is not None:
            credential_problems = tuple(creds.problems)
        elif ws.credentials:
            credential_problems = (policy.Problem("Blocked", "Dynamic credentials are issued once the Secret can be written (see Ready)."),)
        obs = policy.Observation(
            key=key, key_source=source, problem=problem, secret_action=written.action,
            secret_data=written.data, workspace_uid=workspace_uid, rotation_handled=rotation,
            credentials=creds.status if creds is not None else (ws.status.get("credentials") or None),
            credential_problems=credential_problems,
            credential_env=tuple(creds.env) if creds is not None else (),
            user_secrets=written.user_secrets, workspace_problem=workspace_problem,
        )
        # Events first: whoever sees the new status can already read the Event that explains it.
        await self._announce(body, ws, obs)
        await self._write_status(body, ws, policy.conditions(ws, obs), policy.desired_status(ws, obs))
        if creds is not None:
            for type_, reason, message in creds.events:
                await (self._events.normal if type_ == "Normal" else self._events.warning)(_ref(ws), reason, message)
            if creds.wake_at is not None:
                self._schedule(ws.namespace, ws.name, max(0.0, (creds.wake_at - self._clock()).total_seconds()))
            elif creds.problems:
                self._schedule(ws.namespace, ws.name, 10.0)  # provider trouble: try again soon (bounded by the queue's backoff)
        if workspace_uid is None:
            self._recheck_binding(body, ws)
        return "problem" if problem or credential_problems else "success"

    def _recheck_binding(self, body: Mapping[str, Any], ws: WorkspaceSecret) -> None:
        """An unbound WorkspaceSecret keeps looking for its workspace through the work queue (a kopf timer
        would put kopf's finalizer on every unbound object and block its deletion while the operator is down)."""
        age = _age_seconds(body["metadata"].get("creationTimestamp"), self._clock()) or 0.0
        delay = next((every for below, every in BIND_RECHECK_SCHEDULE if age < below), BIND_RECHECK_SLOWEST)
        self._schedule(ws.namespace, ws.name, delay)

    # --- the key --------------------------------------------------------------------------------
    async def _key(self, ws: WorkspaceSecret) -> tuple[SSHKeyPair | None, str | None, str | None, policy.Problem | None]:
        if ws.ssh.existing_secret_ref is not None:
            key, problem = await self._existing_key(ws)
            return key, KEY_SOURCE_EXISTING, None, problem
        try:
            key, rotation = await self._user_key(ws)
        except ProblemFound as exc:
            return None, KEY_SOURCE_GENERATED, None, exc.problem
        return key, KEY_SOURCE_GENERATED, rotation, None

    async def _existing_key(self, ws: WorkspaceSecret) -> tuple[SSHKeyPair | None, policy.Problem | None]:
        ref = ws.ssh.existing_secret_ref
        assert ref is not None
        where = f"spec.ssh.existingSecretRef: Secret {ref.name!r}"
        source = await self._kube.get(core_path(ws.namespace, "secrets", ref.name))
        not_owned = policy.existing_key_ownership_problem(source, ws, where)
        if not_owned is not None or source is None:
            return None, not_owned
        # From here on the Secret is the user's own: naming its keys tells them nothing new (never list them).
        data = source.get("data") or {}
        if ref.private_key_key not in data:
            return None, policy.Problem("InvalidExistingKey", f"{where} has no key {ref.private_key_key!r}; put the private key there, or set privateKeyKey.")
        passphrase = None
        if ref.passphrase_key:
            if ref.passphrase_key not in data:
                return None, policy.Problem("InvalidExistingKey", f"{where} has no key {ref.passphrase_key!r} named by passphraseKey.")
            passphrase = base64.b64decode(data[ref.passphrase_key]).rstrip(b"\r\n")
        meta = source["metadata"]
        cache_key = (meta.get("namespace", ""), meta.get("name", ""), meta.get("resourceVersion", ""), ref.private_key_key, ref.passphrase_key or "", ws.user)
        key = self._key_cache.get(cache_key)
        if key is not None:
            return key, None
        refused = self._refused_keys.get(cache_key)
        if refused is not None:  # the same bytes were refused before: never pay their KDF again
            return None, policy.Problem("InvalidExistingKey", f"{where}, key {ref.private_key_key!r}: {refused}.")
        try:
            key = await _load_off_loop(base64.b64decode(data[ref.private_key_key]), passphrase, _comment(ws))
        except sshkeys.InvalidKey as exc:
            if len(self._refused_keys) > 4096:
                self._refused_keys.clear()
            self._refused_keys[cache_key] = str(exc)
            return None, policy.Problem("InvalidExistingKey", f"{where}, key {ref.private_key_key!r}: {exc}.")
        if len(self._key_cache) > 4096:
            self._key_cache.clear()
        self._key_cache[cache_key] = key
        return key, None

    async def _user_key(self, ws: WorkspaceSecret) -> tuple[SSHKeyPair, str | None]:
        """The (namespace, user, key type) key pair, created once and shared by that user's workspaces.

        Rotation: a new value of the rotate annotation regenerates it. The request id is stamped on the
        user-key Secret in the same write as the new key, so a crash between that write and our status
        update is recognized on the next run instead of rotating twice.
        """
        spec = KeySpec(KeyType(ws.ssh.key_type), ws.ssh.rsa_bits)
        name = user_key_secret_name(ws.user, spec)
        path = core_path(ws.namespace, "secrets", name)
        wants_rotation = ws.rotate_ssh_key is not None and ws.status.get("sshKeyRotation") != ws.rotate_ssh_key
        request_id = f"{ws.uid}/{ws.rotate_ssh_key}"

        existing = await self._kube.get(path)
        if existing is not None and not _is_user_key_secret(existing, ws.user):
            raise ProblemFound(policy.Problem(
                "UserKeyConflict",
                f"Secret {name!r} (where the operator keeps {ws.user!r}'s {spec.slug} key) exists but was not created "
                f"by the operator for this user; it was left untouched. Remove or rename it.",
            ))
        if existing is None:
            key = await _generate(spec, _comment(ws))
            try:
                created = await self._kube.create(path.rsplit("/", 1)[0], _user_key_body(ws, name, key, request_id if wants_rotation else None))
            except Conflict:  # another workspace of this user won the race: use its key
                raise RetryLater(f"user key {name!r} was created concurrently") from None
            self._remember(created, c.COMPONENT_USER_SSH_KEY, "create")
            log.info("Created Secret %r with %r's %s key %s.", name, ws.user, key.type, key.fingerprint, extra=_log_ref(ws))
            return key, ws.rotate_ssh_key
        if wants_rotation and (existing["metadata"].get("annotations") or {}).get(c.ANNOTATION_ROTATION_REQUEST) != request_id:
            key = await _generate(spec, _comment(ws))
            body = _user_key_body(ws, name, key, request_id)
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            try:
                replaced = await self._kube.replace(path, body)
            except Conflict:
                raise RetryLater(f"user key {name!r} changed while rotating") from None
            self._remember(replaced, c.COMPONENT_USER_SSH_KEY, "update")
            log.info("Rotated %r's %s key to %s.", ws.user, key.type, key.fingerprint, extra=_log_ref(ws))
            await self._events.normal(_ref(ws), "SSHKeyRotated", f"Rotated {ws.user!r}'s {key.type} key to {key.fingerprint}; every workspace of the user gets the new key.")
            return key, ws.rotate_ssh_key
        return self._load_user_key(existing, ws), ws.rotate_ssh_key

    def _load_user_key(self, secret: Mapping[str, Any], ws: WorkspaceSecret) -> SSHKeyPair:
        meta = secret["metadata"]
        cache_key = (meta["namespace"], meta["name"], meta["resourceVersion"])
        key = self._key_cache.get(cache_key)
        if key is None:
            try:
                private = base64.b64decode((secret.get("data") or {})[c.KEY_SSH_PRIVATE])
                key = sshkeys.load(private, comment=_comment(ws))
            except (KeyError, ValueError) as exc:
                reason = exc if isinstance(exc, sshkeys.InvalidKey) else "the key is missing"
                raise ProblemFound(policy.Problem(
                    "InvalidUserKey",
                    f"Secret {meta['name']!r} holding {ws.user!r}'s key is damaged ({reason}); delete it and the "
                    f"operator generates a new key for every workspace of the user.",
                )) from None
            if len(self._key_cache) > 4096:
                self._key_cache.clear()
            self._key_cache[cache_key] = key
        return key

    # --- the workspace binding ------------------------------------------------------------------
    async def _bind(self, body: Mapping[str, Any], ws: WorkspaceSecret) -> tuple[str | None, policy.Problem | None]:
        """Make the workspace the owner of this WorkspaceSecret, so Kubernetes' garbage collector deletes
        us (and, through our ownerReference, the Secret) when the workspace goes -- even while the
        operator is down. Only a workspace labelled with this WorkspaceSecret's user is bound.

        Returns (the workspace's uid when bound, why it is not bound although it exists)."""
        ref = ws.workspace_ref
        api_version, plural = WORKSPACE_KINDS[ref.kind]
        owners = list(body["metadata"].get("ownerReferences") or ())
        for owner in owners:
            if owner.get("kind") == ref.kind and owner.get("name") == ref.name and owner.get("uid"):
                # Already bound: no need to look again. Should that workspace be gone (or replaced by a
                # namesake), the garbage collector deletes this WorkspaceSecret through that reference.
                return str(owner["uid"]), None
        path = core_path(ws.namespace, plural, ref.name) if api_version == "v1" else group_path(api_version, ws.namespace, plural, ref.name)
        workspace = await self._kube.get(path)
        if workspace is None or workspace["metadata"].get("deletionTimestamp"):
            return None, None
        mismatch = policy.workspace_user_problem(workspace, ws)
        if mismatch is not None:
            return None, mismatch
        uid = workspace["metadata"]["uid"]
        if not any(o.get("uid") == uid for o in owners):
            owners.append({"apiVersion": api_version, "kind": ref.kind, "name": ref.name, "uid": uid})
            try:
                await self._kube.merge_patch(
                    _ws_path(ws.namespace, ws.name),
                    {"metadata": {"ownerReferences": owners, "resourceVersion": body["metadata"]["resourceVersion"]}},
                )
            except Conflict:
                raise RetryLater("WorkspaceSecret changed while binding it to its workspace") from None
            except NotFound:
                raise ObjectGone() from None
        return uid, None

    # --- the Secret -----------------------------------------------------------------------------
    async def _apply_secret(self, ws: WorkspaceSecret, key: SSHKeyPair) -> SecretOutcome:
        """Compose the workspace Secret (SSH key, credentials, user secrets) and write it if it differs.

        A WorkspaceSecret never reconciled before (no status.secretName) and without credentials almost
        certainly has no Secret yet: it is created without looking first (one request less per new
        workspace). A 409 -- our own Secret from an interrupted attempt, or somebody else's -- falls
        back to looking, as for every other object. Not with credentials: what is minted depends on
        the ledger in the existing Secret."""
        fresh = not ws.credentials and "secretName" not in ws.status
        return await self._write_secret(ws, key, look_first=not fresh)

    async def _write_secret(self, ws: WorkspaceSecret, key: SSHKeyPair, *, look_first: bool) -> SecretOutcome:
        path = core_path(ws.namespace, "secrets", ws.secret_name)
        existing = await self._kube.get(path) if look_first else None
        if existing is not None and not policy.is_owned_by(existing, ws.uid):
            return SecretOutcome(policy.SecretAction.CONFLICT, problem=policy.Problem("SecretConflict", policy.conflict_message(existing, ws)))
        creds = None
        if ws.credentials or c.ANNOTATION_CREDENTIALS in ((existing or {}).get("metadata") or {}).get("annotations", {}):
            creds = await self.credentials.reconcile(ws, existing)
        user_plan = await self._user_secrets(ws, creds)
        desired = policy.desired_secret(
            ws, key,
            extra_data={**(creds.data if creds else {}), **(user_plan.data if user_plan else {})},
            ledger=ledger_dump(creds.ledger) if creds and creds.ledger else None,
        )
        action = policy.secret_action(existing, desired, ws.uid)
        if action is policy.SecretAction.CREATE:
            secret_key = (ws.namespace, ws.secret_name)
            self.creating.add(secret_key)
            try:
                self._remember(await self._kube.create(path.rsplit("/", 1)[0], desired), c.COMPONENT_WORKSPACE_SECRET, "create")
            except Conflict:
                if not look_first:
                    return await self._write_secret(ws, key, look_first=True)
                raise RetryLater(f"Secret {ws.secret_name!r} appeared while creating it") from None
            finally:
                self.creating.discard(secret_key)
        elif action is policy.SecretAction.UPDATE:
            assert existing is not None
            try:
                self._remember(await self._kube.replace(path, policy.merged_for_update(existing, desired)), c.COMPONENT_WORKSPACE_SECRET, "update")
            except Conflict:
                raise RetryLater(f"Secret {ws.secret_name!r} changed while updating it") from None
        return SecretOutcome(action, desired["data"], None, creds, user_plan)

    async def _user_secrets(self, ws: WorkspaceSecret, creds: CredentialOutcome | None) -> user_secrets.UserSecretsPlan | None:
        if not ws.user_secrets_enabled:
            return None
        listing = await self._kube.list(
            core_path(ws.namespace, "secrets"),
            label_selector=f"{c.LABEL_USER}={ws.user},{c.LABEL_MANAGED_BY}!={c.OPERATOR_NAME}",
            from_cache=True,
        )
        reserved = {c.KEY_GIT_SSH_COMMAND, *(e["name"] for e in (creds.env if creds else ()))}
        return user_secrets.plan(listing.get("items", ()), user=ws.user, select=ws.user_secret_names, reserved_env=reserved)

    def _remember(self, obj: Mapping[str, Any], component: str, operation: str) -> None:
        meta = obj["metadata"]
        self.written[(meta["namespace"], meta["name"])] = meta["resourceVersion"]
        SECRET_WRITES.labels(component=component, operation=operation).inc()

    # --- status and events ----------------------------------------------------------------------
    async def _write_status(
        self,
        body: Mapping[str, Any],
        ws: WorkspaceSecret | None,
        conditions: list[cond.Condition],
        fields: Mapping[str, Any] | None = None,
    ) -> None:
        """Patch status only when it changed (conditions keep their transition times when unchanged)."""
        meta = body["metadata"]
        current = body.get("status") or {}
        generation = int(meta.get("generation", 0))
        merged = {**current, **(fields or {}), "observedGeneration": generation}
        new = {k: v for k, v in merged.items() if v is not None}  # None: the field no longer applies
        new["conditions"] = cond.merge(current.get("conditions"), conditions, generation=generation, now=self._clock())
        if new == current:
            return
        patch = {k: v for k, v in new.items() if current.get(k) != v}
        patch.update({k: None for k in current if k not in new})
        try:
            await self._kube.merge_patch(_ws_path(meta["namespace"], meta["name"], status=True), {"status": patch})
        except NotFound:
            raise ObjectGone() from None

    async def _announce(self, body: Mapping[str, Any], ws: WorkspaceSecret, obs: policy.Observation) -> None:
        ref = _ref(ws)
        previous = cond.find((body.get("status") or {}).get("conditions"), c.CONDITION_READY) or {}
        if obs.secret_action in (policy.SecretAction.CREATE, policy.SecretAction.UPDATE):
            log.info("%s Secret %r (key %s).", "Created" if obs.secret_action is policy.SecretAction.CREATE else "Updated",
                     ws.secret_name, obs.key.fingerprint, extra=_log_ref(ws))  # type: ignore[union-attr]
        if obs.secret_action is policy.SecretAction.CREATE:
            await self._events.normal(ref, "SecretCreated", f"Created Secret {ws.secret_name!r} with {obs.key.type} key {obs.key.fingerprint}.")  # type: ignore[union-attr]
        elif obs.secret_action is policy.SecretAction.UPDATE:
            await self._events.normal(ref, "SecretUpdated", f"Updated Secret {ws.secret_name!r} to match the spec (key {obs.key.fingerprint}).")  # type: ignore[union-attr]
        if obs.problem and previous.get("reason") != obs.problem.reason:
            await self._events.warning(ref, obs.problem.reason, obs.problem.message)
        elif not obs.problem and previous.get("status") == "False":
            # Recovered (a fixed key, a removed conflicting Secret): the state change gets its Event too.
            await self._events.normal(ref, "SecretReady", f"Ready again (was {previous.get('reason')}): Secret {ws.secret_name!r} is up to date.")
        elif not obs.problem and not previous and obs.secret_action is policy.SecretAction.UNCHANGED:
            # First Ready without a write: an earlier run created the Secret and was killed before it could
            # record that (status, Event). Say so now, so the object's history still shows it became Ready.
            await self._events.normal(ref, "SecretReady", f"Secret {ws.secret_name!r} is up to date (created by an earlier, interrupted reconcile).")
        previous_user = cond.find((body.get("status") or {}).get("conditions"), c.CONDITION_USER_SECRETS_READY) or {}
        if obs.user_secrets is not None and obs.user_secrets.problems and previous_user.get("status") != "False":
            await self._events.warning(ref, "UserSecretConflict", "; ".join(obs.user_secrets.problems)[:1000])
        was_bound = bool((body.get("status") or {}).get("workspaceUID"))
        if obs.workspace_uid and not was_bound:
            r = ws.workspace_ref
            await self._events.normal(ref, "WorkspaceBound", f"Bound to {r.kind} {r.name!r}: the WorkspaceSecret and its Secret are deleted with it.")


def _age_seconds(timestamp: str | None, now: datetime) -> float | None:
    if not timestamp:
        return None
    try:
        return (now - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return None


def _ws_path(namespace: str, name: str, *, status: bool = False) -> str:
    return group_path(c.API_VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, name, subresource="status" if status else None)


def _ref(ws: WorkspaceSecret) -> dict[str, Any]:
    return {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": ws.name, "namespace": ws.namespace, "uid": ws.uid}}


def _log_ref(ws: WorkspaceSecret) -> dict[str, Any]:
    return log_extra(c.API_VERSION, c.WORKSPACE_SECRET_KIND, ws.namespace, ws.name, ws.uid)


def _comment(ws: WorkspaceSecret) -> str:
    return f"{ws.user}@{c.OPERATOR_NAME}"


async def _load_off_loop(private_key: bytes, passphrase: bytes | None, comment: str) -> SSHKeyPair:
    """sshkeys.load in the key-parsing threads, with a deadline (the thread finishes its bounded work)."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_key_parser, lambda: sshkeys.load(private_key, passphrase=passphrase, comment=comment))
    try:
        return await asyncio.wait_for(future, KEY_PARSE_DEADLINE)
    except asyncio.TimeoutError:  # the threads are busy with other keys: the work queue retries with backoff
        raise RetryLater(f"a brought key could not be checked within {KEY_PARSE_DEADLINE:.0f} s") from None


async def _generate(spec: KeySpec, comment: str) -> SSHKeyPair:
    if spec.type is KeyType.RSA:  # ~0.1-2 s of CPU: keep it off the event loop so other objects progress
        return await asyncio.to_thread(sshkeys.generate, spec, comment=comment)
    return sshkeys.generate(spec, comment=comment)


def _is_user_key_secret(secret: Mapping[str, Any], user: str) -> bool:
    labels = secret["metadata"].get("labels") or {}
    return (
        labels.get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME
        and labels.get(c.LABEL_COMPONENT) == c.COMPONENT_USER_SSH_KEY
        and labels.get(c.LABEL_USER) == user
    )


def _user_key_body(ws: WorkspaceSecret, name: str, key: SSHKeyPair, request_id: str | None) -> dict[str, Any]:
    annotations = {c.ANNOTATION_SSH_FINGERPRINT: key.fingerprint}
    if request_id:
        annotations[c.ANNOTATION_ROTATION_REQUEST] = request_id
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": policy.SECRET_TYPE,
        "metadata": {
            "name": name,
            "namespace": ws.namespace,
            "labels": {
                c.LABEL_MANAGED_BY: c.OPERATOR_NAME,
                c.LABEL_NAME: c.OPERATOR_NAME,
                c.LABEL_PART_OF: c.OPERATOR_NAME,
                c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY,
                c.LABEL_USER: ws.user,
            },
            "annotations": annotations,
        },
        "data": {
            c.KEY_SSH_PRIVATE: base64.b64encode(key.private_openssh.reveal()).decode(),
            c.KEY_SSH_PUBLIC: base64.b64encode((key.public_openssh + "\n").encode()).decode(),
        },
    }
