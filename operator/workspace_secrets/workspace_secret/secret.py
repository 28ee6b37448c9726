"""The workspace Secret: compose it (SSH key, dynamic credentials, the user's own Secrets) and write it when it
differs -- create, or compare-and-swap update; never a Secret this WorkspaceSecret does not control.

Also the echo bookkeeping: the resourceVersions of the Secrets the operator wrote, so that the Secret watch skips
the events of our own writes."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Problem
from workspace_secrets.api.workspace_secret import DELIVERY_ENV, WorkspaceSecret
from workspace_secrets.credentials.ledger import ROLLOUT_POLL_MAX, ROLLOUT_TIMEOUT
from workspace_secrets.credentials.ledger import dump as ledger_dump
from workspace_secrets.credentials.manager import CredentialManager, CredentialOutcome
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.kube import Conflict, Kube, KubeError, core_path
from workspace_secrets.runtime.metrics import SECRET_WRITES
from workspace_secrets.user_keys.sshkeys import SSHKeyPair
from workspace_secrets.workspace_secret import policy, user_secrets
from workspace_secrets.workspace_secret.rollout import Rollouts
from workspace_secrets.workspace_secret.tokens import TokensOutcome

if TYPE_CHECKING:
    from workspace_secrets.runtime.secret_index import SecretIndex

#: The watch-fed index of users' own Secrets in a namespace, when there is one.
IndexFor = Callable[[str], "SecretIndex | None"]


@dataclass(frozen=True)
class SecretOutcome:
    """What writing the workspace Secret did, and what went into it."""

    action: policy.SecretAction | None = None
    data: Mapping[str, str] | None = None  # base64 data as written (for display items)
    problem: Problem | None = None
    credentials: CredentialOutcome | None = None
    user_secrets: user_secrets.UserSecretsPlan | None = None
    resource_version: str = ""  # of the workspace Secret as written or found unchanged ("" when not ours)


#: At most this many of a user's own Secrets are read one by one (GETs, from the index's names); a user with more is
#: read with one label-selected LIST instead (whose server-side cost grows with the namespace: the exception).
USER_SECRETS_BY_NAME = 16


class Secrets:
    def __init__(self, kube: Kube, credentials: CredentialManager, *, user_index_for: IndexFor | None = None) -> None:
        self._kube = kube
        self.credentials = credentials
        # The watch-fed index of users' own Secrets (runtime/secret_index.py): which Secrets a user has, without a
        # LIST that the API server answers by filtering every Secret of the namespace (O(N) per workspace).
        self._user_index_for = user_index_for or (lambda namespace: None)
        self.rollouts = Rollouts(kube)
        # resourceVersions of Secrets we wrote ourselves, so the Secret watch can skip our own echoes.
        self.written: dict[tuple[str, str], str] = {}
        # Secrets we are creating right now: their ADDED event can arrive before create() returns (and
        # before `written` knows the resourceVersion); a create succeeds only once, so that event is ours.
        self.creating: set[tuple[str, str]] = set()

    def is_echo(self, event_type: str, meta: Mapping[str, Any]) -> bool:
        """Whether a watch event of one of our Secrets is the echo of our own write (forgets deleted ones)."""
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event_type == "DELETED":
            self.written.pop(key, None)
            return False
        return self.written.get(key) == meta.get("resourceVersion") or (event_type == "ADDED" and key in self.creating)

    def remember(self, obj: Mapping[str, Any], component: str, operation: str) -> None:
        meta = obj["metadata"]
        self.written[(sys.intern(meta["namespace"]), sys.intern(meta["name"]))] = meta["resourceVersion"]
        SECRET_WRITES.labels(component=component, operation=operation).inc()

    async def apply(self, ws: WorkspaceSecret, key: SSHKeyPair, *, running: bool = True,
                    tokens: TokensOutcome | None = None) -> SecretOutcome:
        """Compose the workspace Secret (SSH key, credentials, user secrets) and write it if it differs.

        A WorkspaceSecret never reconciled before (no status.secretName) and without credentials almost
        certainly has no Secret yet: it is created without looking first (one request less per new
        workspace). A 409 -- our own Secret from an interrupted attempt, or somebody else's -- falls
        back to looking, as for every other object. Not with credentials: what is minted depends on
        the ledger in the existing Secret."""
        fresh = not ws.credentials and "secretName" not in ws.status
        return await self._write(ws, key, look_first=not fresh, tokens=tokens, running=running)

    async def _write(self, ws: WorkspaceSecret, key: SSHKeyPair, *, look_first: bool,
                     tokens: TokensOutcome | None = None, running: bool = True) -> SecretOutcome:
        path = core_path(ws.namespace, "secrets", ws.secret_name)
        existing = await self._kube.get(path) if look_first else None
        if existing is not None and not policy.is_owned_by(existing, ws.uid):
            return SecretOutcome(policy.SecretAction.CONFLICT, problem=Problem("SecretConflict", policy.conflict_message(existing, ws)))
        creds = workload = None
        if ws.credentials or c.ANNOTATION_CREDENTIALS in ((existing or {}).get("metadata") or {}).get("annotations", {}):
            workload = await self.rollouts.observe(ws) if any(s.delivery == DELIVERY_ENV for s in ws.credentials) else None
            creds = await self.credentials.reconcile(ws, existing, running=running, rollout=workload)
        user_plan = await self._user_secrets(ws, creds, tokens)
        desired = policy.desired_secret(
            ws, key,
            extra_data={**(creds.data if creds else {}), **(user_plan.data if user_plan else {}), **(tokens.data if tokens else {})},
            ledger=ledger_dump(creds.ledger) if creds and creds.ledger else None,
        )
        action = policy.secret_action(existing, desired, ws.uid)
        if action is policy.SecretAction.CREATE:
            secret_key = (ws.namespace, ws.secret_name)
            self.creating.add(secret_key)
            try:
                self.remember(await self._kube.create(path.rsplit("/", 1)[0], desired), c.COMPONENT_WORKSPACE_SECRET, "create")
            except Conflict:
                if not look_first:
                    return await self._write(ws, key, look_first=True, tokens=tokens, running=running)
                raise RetryLater(f"Secret {ws.secret_name!r} appeared while creating it") from None
            finally:
                self.creating.discard(secret_key)
        elif action is policy.SecretAction.UPDATE:
            assert existing is not None
            try:
                self.remember(await self._kube.replace(path, policy.merged_for_update(existing, desired)), c.COMPONENT_WORKSPACE_SECRET, "update")
            except Conflict:
                raise RetryLater(f"Secret {ws.secret_name!r} changed while updating it") from None
        if creds is not None and creds.restart and workload is not None and workload.restartable and (
                not workload.stamp or workload.stamp < creds.restart):
            # After the Secret write: the new pods must find the new values. (A crash before this line: the
            # ledger still names the restart, and the next reconcile stamps the template.)
            restarted = await self.rollouts.restart(ws, workload, creds.restart)
            if isinstance(restarted, str):
                creds.problems.append(Problem("RestartFailed", f"{restarted}. Credentials delivered as env vars were rotated; the replaced ones are revoked at the latest {int(ROLLOUT_TIMEOUT.total_seconds() // 60)} minutes after their overlap, and the workspace's env keeps them until it is restarted."))
            elif restarted:
                creds.events.append(("Normal", "WorkspaceRestarted", f"{ws.workspace_ref.kind} {ws.workspace_ref.name!r} restarted "
                                     f"({c.ANNOTATION_RESTARTED_AT}={creds.restart}): credentials delivered as env vars were rotated; "
                                     f"the replaced ones are revoked once the rollout finished and their overlap passed."))
        if creds is not None and workload is not None and workload.problem:
            creds.problems.append(Problem("WorkspaceUnreadable", f"{workload.problem}. Credentials delivered as env vars are revoked after their overlap without waiting for a restart."))
            creds.wake(self.credentials.now() + ROLLOUT_POLL_MAX)  # look again, slowly (not the 10 s of provider trouble)
        if action is policy.SecretAction.CONFLICT:
            version = ""
        elif action is policy.SecretAction.UNCHANGED:
            version = (existing or {}).get("metadata", {}).get("resourceVersion", "")
        else:
            version = self.written.get((ws.namespace, ws.secret_name), "")
        return SecretOutcome(action, desired["data"], None, creds, user_plan, version)

    async def stop(self, ws: WorkspaceSecret) -> CredentialOutcome | None:
        """The workspace does not run and its Secret cannot be composed (no SSH key): still revoke its lifecycle
        WhileRunning credentials, and drop their values and ledger from the workspace Secret -- only in a Secret
        this WorkspaceSecret controls (another one is never written; the provider side is revoked regardless:
        the scopes are this WorkspaceSecret's own, by uid). None: nothing to stop."""
        if not ws.while_running_credentials:
            return None
        path = core_path(ws.namespace, "secrets", ws.secret_name)
        existing = await self._kube.get(path)
        owned = existing is not None and policy.is_owned_by(existing, ws.uid)
        creds = await self.credentials.stop(ws, existing if owned else None)
        if not owned:
            return creds
        assert existing is not None
        # Only the stopped entries' keys change (every other key -- the SSH key, tokens, other entries -- stays).
        prefixes = tuple(f"{name}." for name in ws.while_running_credentials)
        stopped = {k: v for k, v in creds.data.items() if k.startswith(prefixes)}
        data = {k: v for k, v in (existing.get("data") or {}).items() if not k.startswith(prefixes)} | stopped
        annotations = dict((existing.get("metadata") or {}).get("annotations") or {})
        before = annotations.get(c.ANNOTATION_CREDENTIALS)
        if creds.ledger:
            annotations[c.ANNOTATION_CREDENTIALS] = ledger_dump(creds.ledger)
        else:
            annotations.pop(c.ANNOTATION_CREDENTIALS, None)
        if data == (existing.get("data") or {}) and annotations.get(c.ANNOTATION_CREDENTIALS) == before:
            return creds
        updated = {**existing, "metadata": {**existing["metadata"], "annotations": annotations}, "data": data}
        try:
            self.remember(await self._kube.replace(path, updated), c.COMPONENT_WORKSPACE_SECRET, "update")
        except Conflict:
            raise RetryLater(f"Secret {ws.secret_name!r} changed while updating it") from None
        return creds

    async def _user_secrets(self, ws: WorkspaceSecret, creds: CredentialOutcome | None,
                            tokens: TokensOutcome | None = None) -> user_secrets.UserSecretsPlan | None:
        if not ws.user_secrets_enabled:
            return None
        reserved = {c.KEY_GIT_SSH_COMMAND, *(e["name"] for e in (creds.env if creds else ())), *(tokens.env_names if tokens else ())}
        return user_secrets.plan(await self._read_user_secrets(ws), user=ws.user, select=ws.user_secret_names, reserved_env=reserved)

    async def _read_user_secrets(self, ws: WorkspaceSecret) -> list[Mapping[str, Any]]:
        """The user's own Secrets (labelled with the user, not ours): by name from the index -- no request at all for
        a user without any, a GET each (from the watch cache, at least as new as the index) for a few -- else, or
        without a synced index, one label-selected LIST. plan() checks the user label of what it gets again."""
        index = self._user_index_for(ws.namespace)
        if index is not None and index.synced:
            versions = index.names_for_user(ws.namespace, ws.user)
            if ws.user_secret_names is not None:
                wanted = set(ws.user_secret_names)
                versions = [(name, rv) for name, rv in versions if name in wanted]
            if len(versions) <= USER_SECRETS_BY_NAME:
                found = []
                for name, rv in versions:
                    path = core_path(ws.namespace, "secrets", name)
                    try:
                        secret = await self._kube.get(path, resource_version=rv or None)
                    except KubeError as exc:
                        if exc.status != 504:
                            raise
                        secret = await self._kube.get(path)  # the watch cache could not catch up in time: etcd
                    labels = ((secret or {}).get("metadata") or {}).get("labels") or {}
                    # Deleted or relabelled since (its watch event brings the workspace back anyway); never one of
                    # ours, exactly as the LIST's selector says.
                    if secret is not None and labels.get(c.LABEL_MANAGED_BY) != c.OPERATOR_NAME:
                        found.append(secret)
                return found
        listing = await self._kube.list(
            core_path(ws.namespace, "secrets"),
            label_selector=f"{c.LABEL_USER}={ws.user},{c.LABEL_MANAGED_BY}!={c.OPERATOR_NAME}",
            from_cache=True,
        )
        return list(listing.get("items", ()))
