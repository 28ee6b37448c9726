"""Reconcile UserTokens: connect (the OAuth callback), refresh ahead of expiry, validate, upload the user's
SSH key, and clean up on deletion.

A UserToken names an OAuthApplication (cluster-scoped, the platform's): every pass reads it, checks that the
UserToken's namespace is allowed to use it, and reads its client Secret from the operator's own namespace.
A tenant never chooses a host, a client or a Secret to read.

Every operation on a token runs under one lock per (namespace, user, type, host), and re-reads the
UserToken and its Secret under that lock, so concurrent triggers (the per-token daemon, a kopf update,
the callback, a watch event) never spend a single-use refresh token twice: the second one finds the
token already fresh. A rotated token is written to the Secret before anything else happens with it
(validation included); if that write fails, the token is kept in memory and written on the next attempt.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import secrets
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ..api import constants as c
from ..api.oauthapplication import OAuthApplication, app_path
from ..api.usertoken import UserToken
from ..api.workspacesecret import SpecError
from ..domain import conditions as cond
from ..domain import sshkeys
from ..domain import usertoken as policy
from ..domain.conditions import Condition
from ..domain.naming import user_key_secret_name
from ..domain.oauth import (Identity, PendingAuthorization, PendingAuthorizations, StateRejected, TokenSet, pkce_challenge,  # noqa: F401
                            pkce_verifier)
from ..domain.sensitive import Sensitive
from ..domain.signing import Signer
from ..domain.sshkeys import KeySpec
from ..domain.usertoken import Event, Phase, Problem
from ..kube.client import Conflict, Kube, core_path, group_path
from ..kube.events import EventRecorder
from ..providers.oauth.base import (AuthorizationPending, ClientCredentials, DeviceAuthorization, GrantRejected, InvalidToken,
                                    OAuthProvider, ProviderError, ProviderMisconfigured, SlowDown, TemporaryFailure, Unsupported)
from ..providers.oauth.registry import ProviderCache

log = logging.getLogger(__name__)

MAX_SLEEP = 300.0  # the daemon looks at every token at least this often


@dataclass(frozen=True)
class ConnectSettings:
    base_url: str  # where users reach the connect page; the OAuth callback is <base_url>/oauth/callback
    schedule: policy.Schedule = policy.Schedule()

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url.rstrip('/')}/oauth/callback"


class NotAllowed(Exception):
    """The signed-in user may not act on this UserToken. The message is safe to show."""


@dataclass(frozen=True)
class ConnectResult:
    ok: bool
    title: str
    message: str
    namespace: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class TokenSummary:
    """What the connect page shows about one UserToken (never a token)."""

    namespace: str
    name: str
    user: str
    type: str
    host: str | None
    phase: str
    login: str | None
    expires_at: str | None
    message: str
    flow: str = "AuthorizationCode"
    user_code: str | None = None  # Device flow: the code to enter (kept in the operator's memory only) ...
    verification_url: str | None = None  # ... there


def _ut_path(namespace: str, name: str, *, status: bool = False) -> str:
    return group_path(c.API_VERSION, namespace, c.USER_TOKEN_PLURAL, name, subresource="status" if status else None)


def _ref(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")}}


#: One message for "no such OAuthApplication" and "not allowed in this namespace": a tenant learns no more
#: about the platform's applications than that this name cannot be used here.
def _application_problem(ut: UserToken) -> Problem:
    return Problem("ApplicationNotFound",
                   f"OAuthApplication {ut.application!r} does not exist or may not be used in namespace {ut.namespace!r}: set "
                   "spec.application to an application your platform offers for this namespace, or ask the platform team to "
                   "allow this namespace in its spec.allowedNamespaces.")


class UserTokenController:
    def __init__(self, kube: Kube, events: EventRecorder, providers: ProviderCache, signer: Signer,
                 pending: PendingAuthorizations, settings: ConnectSettings, *,
                 namespaces: tuple[str, ...] = (), operator_namespace: str = "workspace-secrets-system",
                 clock: Callable[[], datetime] = cond.utcnow) -> None:
        self._kube = kube
        self._operator_namespace = operator_namespace  # where OAuthApplications' client Secrets live
        self._events = events
        self._providers = providers
        self._signer = signer
        self._pending = pending
        self.settings = settings
        self._namespaces = namespaces
        self._clock = clock
        self._locks: weakref.WeakValueDictionary[tuple[str, ...], asyncio.Lock] = weakref.WeakValueDictionary()
        self._wakers: dict[tuple[str, str], asyncio.Event] = {}
        self._failures: dict[str, int] = {}  # uid -> consecutive temporary failures (backoff)
        self._unsaved: dict[str, tuple[TokenSet, datetime]] = {}  # uid -> a rotated token not yet written
        self._devices: dict[str, DeviceAuthorization] = {}  # uid -> the device authorization being polled
        self._device_requested: set[str] = set()  # uids whose user asked for a new device code
        # uid -> when the device authorization may be polled next. Several triggers (the create handler, the
        # daemon, an update) can pass over one token at the same moment; the token endpoint sees one poll
        # per interval all the same (RFC 8628 3.5: a faster poll earns slow_down).
        self._device_next_poll: dict[str, datetime] = {}
        self.refreshes = 0  # refresh calls made (for metrics and tests)

    # --- plumbing ------------------------------------------------------------------------------------------
    def _lock(self, key: tuple[str, ...]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def wake(self, namespace: str, name: str) -> None:
        event = self._wakers.get((namespace, name))
        if event is not None:
            event.set()

    async def sleep(self, namespace: str, name: str, delay: float | None, stopped: Any) -> None:
        """The daemon's wait: until `delay` passes, `wake()` is called, or kopf stops the daemon."""
        event = self._wakers.setdefault((namespace, name), asyncio.Event())
        timeout = MAX_SLEEP if delay is None else max(0.05, min(delay, MAX_SLEEP))
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopped.wait())]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            event.clear()

    def forget(self, namespace: str, name: str) -> None:
        self._wakers.pop((namespace, name), None)

    def _backoff(self, uid: str, retry_after: float | None = None) -> float:
        failures = self._failures[uid] = self._failures.get(uid, 0) + 1
        delay = min(2.0 * 2 ** (failures - 1), MAX_SLEEP)
        return max(delay, retry_after or 0.0)

    async def _client(self, ut: UserToken) -> ClientCredentials | None:
        """The application's client, from its Secret in the operator's namespace (never the tenant's)."""
        ref = ut.client_secret_ref
        if ref is None:
            return None
        secret = await self._kube.get(core_path(self._operator_namespace, "secrets", ref.name))
        data = (secret or {}).get("data") or {}
        if ref.client_id_key not in data:
            # Platform configuration: the tenant cannot fix it, and learns nothing about the Secret's contents.
            raise ProblemFound(Problem("ApplicationNotReady", f"OAuthApplication {ut.application!r} has no usable client credentials "
                                       "yet (its client Secret in the operator's namespace is missing or incomplete); ask the platform team."))
        client_id = base64.b64decode(data[ref.client_id_key]).decode().strip()
        client_secret = base64.b64decode(data[ref.client_secret_key]).strip() if ref.client_secret_key in data else None
        return ClientCredentials(client_id, Sensitive(client_secret) if client_secret else None)

    async def _bind(self, ut: UserToken) -> UserToken:
        """The UserToken with its OAuthApplication, read now (a GET: few objects, always current). Raises
        ProblemFound when it does not exist, is not allowed in the UserToken's namespace or does not fit."""
        body = await self._kube.get(app_path(ut.application))
        if body is None:
            raise ProblemFound(_application_problem(ut))
        try:
            app = OAuthApplication.from_body(body)
        except SpecError as exc:
            raise ProblemFound(Problem("ApplicationInvalid", f"OAuthApplication {ut.application!r} is not usable ({exc.field}); ask the platform team.")) from None
        if not app.allows(ut.namespace):
            raise ProblemFound(_application_problem(ut))
        try:
            return ut.bind(app)
        except SpecError as exc:
            raise ProblemFound(Problem("InvalidSpec", str(exc))) from None

    # --- entry points --------------------------------------------------------------------------------------
    async def reconcile(self, body: Mapping[str, Any]) -> None:
        meta = body["metadata"]
        await self.maintain(meta["namespace"], meta["name"])
        self.wake(meta["namespace"], meta["name"])

    async def maintain(self, namespace: str, name: str, *, just_started: bool = False) -> float | None:
        """Do whatever is due for this token; return the seconds until something is due next."""
        body = await self._kube.get(_ut_path(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        try:
            ut = UserToken.from_body(body)
        except SpecError as exc:
            await self._write_status(body, {"phase": Phase.ERROR.value}, [
                Condition(c.CONDITION_READY, False, "InvalidSpec", str(exc)),
                Condition(c.CONDITION_AUTHORIZED, False, "InvalidSpec", str(exc))])
            return None
        async with self._lock(ut.provider_key):
            # Shielded: a refresh must not be cut between spending the refresh token and saving the new one.
            return await asyncio.shield(self._maintain_locked(namespace, name, just_started))

    async def _maintain_locked(self, namespace: str, name: str, just_started: bool) -> float | None:
        body = await self._kube.get(_ut_path(namespace, name))  # fresh, under the lock
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        ut = UserToken.from_body(body)
        try:
            ut = await self._bind(ut)
        except ProblemFound as exc:
            await self._application_unusable(body, exc.problem)
            return 60.0  # the platform may create or allow it meanwhile
        return await _Pass(self, body, ut, just_started).run()

    async def _application_unusable(self, body: Mapping[str, Any], problem: Problem) -> None:
        previous = cond.find((body.get("status") or {}).get("conditions"), c.CONDITION_READY) or {}
        fields = {"phase": Phase.ERROR.value, "userCode": None, "authorizationURLExpiresAt": None, "authorizationURL": None}
        await self._write_status(body, fields, [Condition(c.CONDITION_READY, False, problem.reason, problem.message),
                                                Condition(c.CONDITION_AUTHORIZED, False, problem.reason, problem.message)])
        if previous.get("reason") != problem.reason or previous.get("message") != problem.message:
            await self._events.warning(_ref(body), problem.reason, problem.message)

    # --- connecting ----------------------------------------------------------------------------------------
    async def begin_authorization(self, namespace: str, name: str, user: str, *, browser: str = "") -> str:
        """Mint a single-use state and a PKCE verifier for this UserToken, and return the provider URL.
        `browser` (domain.oauth.browser_binding of the flow cookie) binds the flow to the starting browser."""
        body = await self._kube.get(_ut_path(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            raise NotAllowed(f"UserToken {namespace}/{name} does not exist.")
        try:
            ut = UserToken.from_body(body)
        except SpecError as exc:
            raise ProblemFound(Problem("InvalidSpec", str(exc))) from None
        if ut.user != user:
            raise NotAllowed(f"UserToken {namespace}/{name} belongs to another user.")
        ut = await self._bind(ut)
        if ut.flow == "Device":  # a new device code, shown on the connect page to this user
            self._device_requested.add(ut.uid)
            self._devices.pop(ut.uid, None)
            await self.maintain(namespace, name)
            self.wake(namespace, name)
            return f"/accounts?focus={namespace}/{name}"
        client = await self._client(ut)
        provider = self._providers.for_token(ut)
        now = self._clock()
        verifier = pkce_verifier()
        state = self._pending.new_state(uid=ut.uid, now=now)
        scopes = ut.scopes or provider.default_scopes(add_ssh_key=ut.add_ssh_key)
        start = await provider.start_authorization(client, redirect_uri=self.settings.redirect_uri, state=state,
                                                   code_challenge=pkce_challenge(verifier), scopes=scopes)
        self._pending.put(start.state, PendingAuthorization(
            namespace=ut.namespace, name=ut.name, uid=ut.uid, user=ut.user, code_verifier=verifier,
            redirect_uri=self.settings.redirect_uri, expires_at=now + self._pending.ttl,
            provider_data={**start.provider_data, "state": start.state, "ours": start.state_is_ours}, browser=browser,
        ))
        log.info("authorization started for UserToken %s/%s (%s)", namespace, name, ut.type)
        return start.url

    def take_state(self, state: str) -> PendingAuthorization:
        """Consume a callback's state: raises StateRejected if forged, replayed, expired or unknown."""
        return self._pending.take(state, now=self._clock(), signed="." in state)

    async def complete_authorization(self, record: PendingAuthorization, code: str) -> ConnectResult:
        body = await self._kube.get(_ut_path(record.namespace, record.name))
        if body is None or body["metadata"].get("uid") != record.uid or body["metadata"].get("deletionTimestamp"):
            return ConnectResult(False, "This account link no longer exists",
                                 f"UserToken {record.namespace}/{record.name} was deleted or replaced while you were signing in.")
        ut = UserToken.from_body(body)
        if ut.user != record.user:
            return ConnectResult(False, "This account link no longer exists", f"UserToken {record.namespace}/{record.name} changed while you were signing in.")
        try:
            ut = await self._bind(ut)
        except ProblemFound as exc:
            return ConnectResult(False, "The operator is not set up for this provider", exc.problem.message, ut.namespace, ut.name)
        async with self._lock(ut.provider_key):
            return await asyncio.shield(self._complete_locked(ut, record, code))

    async def _complete_locked(self, ut: UserToken, record: PendingAuthorization, code: str) -> ConnectResult:
        body = await self._kube.get(_ut_path(ut.namespace, ut.name))
        if body is None:
            return ConnectResult(False, "This account link no longer exists", f"UserToken {ut.namespace}/{ut.name} was deleted.")
        provider = self._providers.for_token(ut)
        where = _where(ut)
        try:
            client = await self._client(ut)
            tokens = await provider.exchange_code(client, code=code, redirect_uri=record.redirect_uri,
                                                  code_verifier=record.code_verifier, provider_data=record.provider_data)
        except ProblemFound as exc:
            return ConnectResult(False, "The operator is not set up for this provider", exc.problem.message, ut.namespace, ut.name)
        except ProviderError as exc:
            await self._events.warning(_ref(body), "ConnectFailed", f"Exchanging the authorization code with {where} failed: {exc}")
            return ConnectResult(False, f"{where} did not accept the sign-in", f"{exc}. Start again from the connect page.", ut.namespace, ut.name)
        now = self._clock()
        pass_ = _Pass(self, body, ut, False)
        try:
            await pass_.save(tokens, now)
        except ProblemFound as exc:
            return ConnectResult(False, "The token could not be stored", exc.problem.message, ut.namespace, ut.name)
        self._failures.pop(ut.uid, None)
        pass_.connected = True
        await pass_.run(after_connect=True)
        self.wake(ut.namespace, ut.name)
        login = pass_.fields.get("login")
        return ConnectResult(True, f"Connected to {where}",
                             f"Your {where} account{f' {login!r}' if login else ''} is connected; workspaces of {ut.user!r} can use it now.",
                             ut.namespace, ut.name)

    # --- the connect page ----------------------------------------------------------------------------------
    async def list_for_user(self, user: str, namespace: str | None) -> list[TokenSummary]:
        if namespace is not None:
            paths = [group_path(c.API_VERSION, namespace, c.USER_TOKEN_PLURAL)]
        elif self._namespaces:
            paths = [group_path(c.API_VERSION, ns, c.USER_TOKEN_PLURAL) for ns in self._namespaces]
        else:
            paths = [f"/apis/{c.API_VERSION}/{c.USER_TOKEN_PLURAL}"]
        summaries = []
        for path in paths:
            for item in (await self._kube.list(path)).get("items", ()):
                spec, status, meta = item.get("spec") or {}, item.get("status") or {}, item["metadata"]
                if spec.get("user") != user or meta.get("deletionTimestamp"):
                    continue
                ready = cond.find(status.get("conditions"), c.CONDITION_READY) or {}
                device = self._devices.get(meta.get("uid", "")) if spec.get("flow") == "Device" else None
                summaries.append(TokenSummary(
                    namespace=meta["namespace"], name=meta["name"], user=user,
                    type=status.get("type") or spec.get("application", ""),
                    host=status.get("host"), phase=status.get("phase") or Phase.AWAITING_AUTHORIZATION.value,
                    login=status.get("login"), expires_at=status.get("expiresAt"), message=ready.get("message", ""),
                    flow=spec.get("flow") or "AuthorizationCode",
                    user_code=device.user_code if device else None,
                    verification_url=(device.verification_uri_complete or device.verification_uri) if device else None,
                ))
        return sorted(summaries, key=lambda s: (s.namespace, s.name))

    async def names_for_user(self, namespace: str, user: str) -> list[str]:
        listing = await self._kube.list(group_path(c.API_VERSION, namespace, c.USER_TOKEN_PLURAL))
        return [i["metadata"]["name"] for i in listing.get("items", ()) if (i.get("spec") or {}).get("user") == user]

    # --- deletion ------------------------------------------------------------------------------------------
    async def finalize(self, body: Mapping[str, Any]) -> None:
        """Remove the uploaded SSH key, revoke the token at the provider, delete the Secret.

        Raises RetryLater while the provider cannot be reached, so kopf keeps the finalizer and retries:
        the token is never dropped silently. An administrator can set the skip-revocation annotation
        to finish the deletion of a token whose provider is gone for good.
        """
        meta = body["metadata"]
        self.forget(meta["namespace"], meta["name"])
        try:
            ut = UserToken.from_body(body)
        except SpecError:
            return  # nothing was ever connected; the Secret, if any, goes with its ownerReference
        async with self._lock(ut.provider_key):
            await asyncio.shield(self._finalize_locked(body, ut))

    async def _finalize_bound(self, body: Mapping[str, Any], ut: UserToken) -> UserToken | None:
        try:
            return await self._bind(ut)
        except ProblemFound as exc:
            # No application (deleted, or this namespace no longer allowed): nothing to revoke with. The token
            # Secret is deleted all the same; the grant ends at the provider by its own expiry.
            await self._events.warning(_ref(body), "RevocationSkipped", f"{exc.problem.message} The token could not be revoked at the provider.")
            return None

    async def _finalize_locked(self, body: Mapping[str, Any], ut: UserToken) -> None:
        path = core_path(ut.namespace, "secrets", ut.secret_name)
        secret = await self._kube.get(path)
        owned = secret is not None and policy.is_owned_by(secret, ut.uid)
        stored = policy.read_token_secret(secret) if owned and secret is not None else None
        unsaved = self._unsaved.pop(ut.uid, None)
        tokens = unsaved[0] if unsaved else (stored.tokens if stored else None)
        status = body.get("status") or {}
        bound = await self._finalize_bound(body, ut) if tokens is not None and not ut.skip_revocation else None
        if bound is not None:
            ut = bound
            where = _where(ut)
            provider = self._providers.for_token(ut)
            identity = Identity(login=status.get("login", ""), user_id=status.get("providerUserID", ""))
            key_id = (status.get("sshKey") or {}).get("id")
            try:
                if provider.supports_ssh_keys:
                    # The recorded key, and the user's current key if an upload was not recorded yet (a rotation
                    # re-upload racing this deletion): nothing the operator uploaded is left behind.
                    key_ids = [key_id] if key_id else []
                    if ut.add_ssh_key:
                        public, _ = await self._user_public_key(ut)
                        found = await provider.find_ssh_key(tokens, identity, public) if public else None
                        if found is not None and found.id not in key_ids:
                            key_ids.append(found.id)
                    for kid in key_ids:
                        await provider.delete_ssh_key(tokens, identity, kid)
                        await self._events.normal(_ref(body), "SSHKeyRemoved", f"Removed SSH key {kid} from {where}.")
                if provider.supports_revocation:
                    client = await self._client(ut)
                    await provider.revoke(client, tokens)
                    await self._events.normal(_ref(body), "TokenRevoked", f"Revoked the token at {where}.")
            except (InvalidToken, GrantRejected):
                pass  # the provider no longer accepts the token: nothing left to revoke or remove with it
            except (TemporaryFailure, ProviderMisconfigured, ProblemFound) as exc:
                message = exc.problem.message if isinstance(exc, ProblemFound) else str(exc)
                await self._events.warning(_ref(body), "RevocationFailed",
                                           f"Could not clean up at {where} ({message}); retrying. To delete without revoking, "
                                           f"annotate the UserToken {c.ANNOTATION_SKIP_REVOCATION}=true.")
                raise RetryLater(f"cleanup at {where} failed: {message}", delay=10 if isinstance(exc, TemporaryFailure) else 60) from None
        if owned:
            await self._kube.delete(path, uid=secret["metadata"]["uid"])  # type: ignore[index]
        log.info("UserToken %s/%s cleaned up", ut.namespace, ut.name)

    async def _user_public_key(self, ut: UserToken) -> tuple[str, str]:
        """(public key, Secret name) of the user's operator-managed key; the key is '' unless the Secret is
        proven to be the operator's per-user key for ut.user (see policy.is_operator_user_key): a Secret that
        only has the name -- squatted, or made by someone else -- is never uploaded to anyone's account."""
        name = user_key_secret_name(ut.user, KeySpec())
        secret = await self._kube.get(core_path(ut.namespace, "secrets", name))
        if secret is None or not policy.is_operator_user_key(secret, ut.user, name):
            return "", name
        try:
            return base64.b64decode((secret.get("data") or {}).get(c.KEY_SSH_PUBLIC, "")).decode().strip(), name
        except ValueError:
            return "", name

    # --- status ----------------------------------------------------------------------------------------------
    async def _write_status(self, body: Mapping[str, Any], fields: Mapping[str, Any], conditions: list[Condition]) -> dict[str, Any]:
        meta = body["metadata"]
        current = body.get("status") or {}
        generation = int(meta.get("generation", 0))
        merged = {**current, **fields, "observedGeneration": generation}
        new = {k: v for k, v in merged.items() if v is not None}
        existing = current.get("conditions") or []
        if conditions:  # SSHKeyUploaded is dropped when it no longer applies (addSSHKey turned off)
            wanted = {k.type for k in conditions}
            existing = [x for x in existing if x.get("type") in wanted or x.get("type") != c.CONDITION_SSH_KEY_UPLOADED]
        new["conditions"] = cond.merge(existing, conditions, generation=generation, now=self._clock())
        if new == current:
            return new
        patch = {k: v for k, v in new.items() if current.get(k) != v}
        patch.update({k: None for k in current if k not in new})
        await self._kube.merge_patch(_ut_path(meta["namespace"], meta["name"], status=True), {"status": patch})
        return new


class ProblemFound(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


class RetryLater(Exception):
    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


def _where(ut: UserToken) -> str:
    return ut.type + (f" at {ut.host}" if ut.host else "")


class _Pass:
    """One maintenance pass over one token, under its lock: decide what is due, do it, write status."""

    def __init__(self, ctl: UserTokenController, body: Mapping[str, Any], ut: UserToken, just_started: bool) -> None:
        self.ctl = ctl
        self.body = body
        self.ut = ut
        self.just_started = just_started
        self.status: Mapping[str, Any] = body.get("status") or {}
        self.phase: Phase | None = policy.parse_phase(self.status.get("phase"))
        self.fields: dict[str, Any] = {}
        self.problem: Problem | None = None
        self.ssh: Condition | None = None
        self.connected = False
        self.temporary = False  # a provider outage was met in this pass
        self.next_due: list[float] = []
        self.now = ctl._clock()
        self.secret: Mapping[str, Any] | None = None

    @property
    def provider(self) -> OAuthProvider:
        return self.ctl._providers.for_token(self.ut)

    def _event(self, event: Event) -> None:
        self.phase = policy.next_phase(self.phase, event)

    def _due_in(self, seconds: float) -> None:
        self.next_due.append(max(seconds, 0.0))

    # --- the token Secret ---
    async def save(self, tokens: TokenSet, issued_at: datetime, identity: Identity | None = None) -> None:
        """Write the token to its Secret (compare-and-swap, retried). On failure the token stays in memory."""
        ut, ctl = self.ut, self.ctl
        git = None
        if identity is not None or ut.type not in ("vault", "oidc"):
            git = self.provider.git_access(identity or Identity(login=self.status.get("login", ""), user_id=""))
        generation = secrets.token_hex(8)
        path = core_path(ut.namespace, "secrets", ut.secret_name)
        desired = policy.desired_token_secret(ut, tokens, issued_at=issued_at, generation=generation, git=git)
        ctl._unsaved[ut.uid] = (tokens, issued_at)
        for _ in range(5):
            existing = await ctl._kube.get(path)
            try:
                if existing is None:
                    self.secret = await ctl._kube.create(path.rsplit("/", 1)[0], desired)
                elif not policy.is_owned_by(existing, ut.uid):
                    raise ProblemFound(Problem("SecretConflict", f"Secret {ut.secret_name!r} exists and is not this UserToken's; it was left untouched. Delete or rename it, or ask the platform to set spec.secretName."))
                else:
                    meta = dict(existing["metadata"])
                    meta["labels"] = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
                    meta["annotations"] = {**(meta.get("annotations") or {}), **desired["metadata"]["annotations"]}
                    meta["ownerReferences"] = desired["metadata"]["ownerReferences"]
                    self.secret = await ctl._kube.replace(path, {**desired, "metadata": meta})
            except Conflict:
                continue
            ctl._unsaved.pop(ut.uid, None)
            return
        raise ProblemFound(Problem("SecretWriteFailed", f"Secret {ut.secret_name!r} kept changing while the token was being stored; retrying."))

    async def _clear_secret(self) -> None:
        """A dead grant: drop the tokens from the Secret (keeping the Secret, which pods may mount)."""
        if self.secret is None:
            return
        body = {**self.secret, "data": {}}
        try:
            self.secret = await self.ctl._kube.replace(core_path(self.ut.namespace, "secrets", self.ut.secret_name), body)
        except Conflict:
            pass  # someone else wrote it; the next pass looks again

    # --- the pass ---
    async def run(self, *, after_connect: bool = False) -> float | None:
        ut, ctl = self.ut, self.ctl
        try:
            stored = await self._read_token()
            if stored is None:
                self._event(Event.NO_TOKEN)
                if ut.flow == "Device" and policy.needs_authorization(self.phase):
                    stored = await self._device()
                    after_connect = stored is not None
            if stored is None:
                if ut.add_ssh_key:
                    self.ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "NotConnected", "The key is uploaded once the user has connected.")
            else:
                await self._with_token(stored, after_connect)
        except ProblemFound as exc:
            self.problem = exc.problem
            self._event(Event.CONFIG_ERROR)
            self._due_in(60)
        self._link()
        self.fields["secretName"] = ut.secret_name
        self.fields.update(type=ut.type, host=ut.app.display_host or None if ut.app is not None else None)
        self.fields["phase"] = (self.phase or Phase.AWAITING_AUTHORIZATION).value
        conditions = policy.conditions(ut, self.phase or Phase.AWAITING_AUTHORIZATION, login=self.fields.get("login", self.status.get("login")),
                                       problem=self.problem, ssh=self.ssh)
        if self.problem is None and self.phase in (Phase.EXPIRED, Phase.REVOKED):
            # Later passes no longer see why the grant died: keep the message that said so.
            kept = cond.find(self.status.get("conditions"), c.CONDITION_READY) or {}
            if kept.get("reason") == conditions[0].reason and kept.get("message"):
                conditions = [Condition(x.type, x.status, x.reason, kept["message"]) if x.type in (c.CONDITION_READY, c.CONDITION_AUTHORIZED)
                              else x for x in conditions]
        previous = self.status.get("phase")
        await ctl._write_status(self.body, self.fields, conditions)
        await self._announce(previous)
        return min(self.next_due) if self.next_due else None

    async def _device(self) -> policy.StoredToken | None:
        """The device flow (RFC 8628): request a code, show it in status, poll until the user approved.

        A new code is requested on creation, when the user asks (Connect on the page, or the refresh
        annotation), and after an operator restart (the device code lived in memory); an expired or
        declined code is not replaced unasked, so an abandoned UserToken does not poll forever.
        """
        ut, ctl, now = self.ut, self.ctl, self.now
        client = await ctl._client(ut)
        provider = self.provider
        forced = ut.refresh_request is not None and ut.refresh_request != self.status.get("refreshRequest")
        if forced:
            self.fields["refreshRequest"] = ut.refresh_request
        device = ctl._devices.get(ut.uid)
        if device is not None and device.expires_at <= now:
            ctl._devices.pop(ut.uid, None)
            device = None
            self.problem = Problem("DeviceCodeExpired", "The code expired before it was entered; click Connect on the connect page (or set the refresh annotation) for a new one")
        ready = cond.find(self.status.get("conditions"), c.CONDITION_READY) or {}
        ended = ready.get("reason") in ("DeviceCodeExpired", "DeviceAuthorizationEnded")
        if device is None:
            asked = ut.uid in ctl._device_requested or forced
            if not asked and (self.problem is not None or ended):
                self.problem = self.problem or Problem(ready.get("reason", "DeviceCodeExpired"),
                                                       "the last code expired or was declined; click Connect on the connect page (or set the refresh annotation) for a new one")
                return None
            ctl._device_requested.discard(ut.uid)
            self.problem = None
            scopes = ut.scopes or provider.default_scopes(add_ssh_key=ut.add_ssh_key)
            try:
                device = await provider.start_device_authorization(client, scopes=scopes)
            except TemporaryFailure as exc:
                self._temporary(exc, TokenSet(Sensitive(b"-")))
                return None
            except (ProviderMisconfigured, GrantRejected, Unsupported) as exc:
                raise ProblemFound(Problem("ProviderError", str(exc))) from None
            ctl._devices[ut.uid] = device
            ctl._device_next_poll[ut.uid] = now + timedelta(seconds=device.interval)
            log.info("device authorization started for UserToken %s/%s (%s)", ut.namespace, ut.name, ut.type)
        else:
            due = ctl._device_next_poll.get(ut.uid)
            if due is not None and due > now:  # polled a moment ago by another trigger: wait for the interval
                self._due_in((due - now).total_seconds())
                return None
            ctl._device_next_poll[ut.uid] = now + timedelta(seconds=device.interval)
            try:
                tokens = await provider.poll_device(client, device)
            except SlowDown:
                device = ctl._devices[ut.uid] = dataclasses.replace(device, interval=device.interval + 5)
                ctl._device_next_poll[ut.uid] = now + timedelta(seconds=device.interval)
            except AuthorizationPending:
                pass
            except GrantRejected as exc:  # expired_token, access_denied
                ctl._devices.pop(ut.uid, None)
                self.problem = Problem("DeviceAuthorizationEnded", f"{exc}; click Connect on the connect page (or set the refresh annotation) for a new code")
                return None
            except TemporaryFailure as exc:
                self._temporary(exc, TokenSet(Sensitive(b"-")))
                return None
            except ProviderMisconfigured as exc:
                raise ProblemFound(Problem("ProviderError", str(exc))) from None
            else:
                ctl._devices.pop(ut.uid, None)
                await self.save(tokens, ctl._clock())
                self.connected = True
                return policy.read_token_secret(self.secret) if self.secret is not None else None
        self._due_in(device.interval)
        return None

    async def _read_token(self) -> policy.StoredToken | None:
        ut, ctl = self.ut, self.ctl
        self.secret = await ctl._kube.get(core_path(ut.namespace, "secrets", ut.secret_name))
        if self.secret is not None and not policy.is_owned_by(self.secret, ut.uid):
            raise ProblemFound(Problem("SecretConflict", f"Secret {ut.secret_name!r} exists and is not this UserToken's; it was left untouched. Delete or rename it, or ask the platform to set spec.secretName."))
        unsaved = ctl._unsaved.get(ut.uid)
        if unsaved is not None:  # a rotated token a failed write left in memory: store it first
            await self.save(*unsaved)
        return policy.read_token_secret(self.secret) if self.secret is not None else None

    async def _with_token(self, stored: policy.StoredToken, after_connect: bool) -> None:
        ut, ctl, now = self.ut, self.ctl, self.now
        schedule = ctl.settings.schedule
        tokens = stored.tokens
        client = await ctl._client(ut)
        if self.phase in (None, Phase.AWAITING_AUTHORIZATION, Phase.ERROR, Phase.EXPIRED, Phase.REVOKED) or after_connect:
            self._event(Event.CONNECTED)
        if self.connected:
            self.fields["connectedTime"] = policy.format_time(now)

        # 1. Refresh, when asked to or when due.
        forced = ut.refresh_request is not None and ut.refresh_request != self.status.get("refreshRequest")
        expires = tokens.expires_at
        issued = stored.issued_at or now
        refreshed = False
        if not self.provider.can_refresh(tokens):
            # No refresh token (e.g. a GitHub OAuth App token): used until it expires, then the user reconnects.
            if forced:
                self.fields["refreshRequest"] = ut.refresh_request
            forced = False
            if expires is not None and expires > now:
                self._due_in((expires - now).total_seconds())
            self.fields["nextRefreshAt"] = None
        elif expires is not None or forced:
            due = policy.refresh_at(issued, expires, ut.uid, schedule) if expires is not None else now
            delay = policy.refresh_delay(now, due, expires or now, ut.uid, just_started=self.just_started, schedule=schedule)
            if forced or (delay <= 0 and not after_connect):
                new_tokens, refreshed = await self._refresh(client, tokens)
                if forced and not self.temporary:  # a request that met an outage is retried, not dropped
                    self.fields["refreshRequest"] = ut.refresh_request
                if new_tokens is None:
                    return
                tokens = new_tokens
            elif delay > 0:
                self._due_in(delay)
            if refreshed and tokens.expires_at is not None:
                due = policy.refresh_at(now, tokens.expires_at, ut.uid, schedule)
                self._due_in((due - now).total_seconds())
            expires = tokens.expires_at
            if expires is not None and not refreshed:
                self.fields["nextRefreshAt"] = policy.format_time(due)
            elif expires is not None:
                self.fields["nextRefreshAt"] = policy.format_time(policy.refresh_at(now, expires, ut.uid, schedule))
        self.fields["expiresAt"] = policy.format_time(expires)
        if expires is None or not self.provider.can_refresh(tokens):
            self.fields["nextRefreshAt"] = None
        if expires is not None and expires <= now and not refreshed:
            self._event(Event.LAPSED)
            await self._clear_secret()
            return

        # 2. Validate: after a connect or refresh, when asked to, and on a schedule.
        forced_validation = ut.validate_request is not None and ut.validate_request != self.status.get("validateRequest")
        last = policy.parse_time(self.status.get("lastValidationTime"))
        validate_at = policy.validation_due(last, now, ut.uid, schedule)
        identity: Identity | None = None
        if refreshed or after_connect or forced_validation or validate_at <= now or self.phase is not Phase.VALID:
            identity = await self._validate(client, tokens, may_refresh=not refreshed)
            if forced_validation and not self.temporary:
                self.fields["validateRequest"] = ut.validate_request
            if identity is None:
                return
            self._due_in(schedule.validate_interval.total_seconds())
        else:
            self._due_in((validate_at - now).total_seconds())
            identity = Identity(login=self.status.get("login", ""), user_id=self.status.get("providerUserID", ""))
        ctl._failures.pop(ut.uid, None)

        # 3. The SSH key.
        await self._ssh_key(tokens, identity)

    async def _refresh(self, client: ClientCredentials | None, tokens: TokenSet) -> tuple[TokenSet | None, bool]:
        ut, ctl = self.ut, self.ctl
        where = _where(ut)
        await ctl._write_status(self.body, {"phase": Phase.REFRESHING.value}, [])  # intent, visible to users
        self.status = {**self.status, "phase": Phase.REFRESHING.value}
        self.body = {**self.body, "status": self.status}
        self._event(Event.REFRESH_STARTED)
        ctl.refreshes += 1
        try:
            new = await self.provider.refresh(client, tokens)
        except GrantRejected as exc:
            self._event(Event.REFRESH_REJECTED)
            self.problem = Problem("RefreshRejected", str(exc))
            await ctl._events.warning(_ref(self.body), "TokenExpired", f"{where} refused to refresh the token ({exc.code or 'rejected'}); the user must reconnect.")
            await self._clear_secret()
            return None, False
        except TemporaryFailure as exc:
            return self._temporary(exc, tokens), False
        except ProviderMisconfigured as exc:
            raise ProblemFound(Problem("ProviderError", str(exc))) from None
        now = ctl._clock()
        await self.save(new, now)  # before anything else: the old refresh token is spent
        self._event(Event.REFRESHED)
        self.fields["lastRefreshTime"] = policy.format_time(now)
        await ctl._events.normal(_ref(self.body), "TokenRefreshed", f"Refreshed the {where} token; it now expires at {policy.format_time(new.expires_at) or 'never'}.")
        return new, True

    def _temporary(self, exc: TemporaryFailure, tokens: TokenSet) -> TokenSet | None:
        self.temporary = True
        self._event(Event.TEMPORARY_FAILURE)
        delay = self.ctl._backoff(self.ut.uid, exc.retry_after)
        self._due_in(delay)
        if tokens.expires_at is not None and tokens.expires_at <= self.now:
            self.problem = Problem("ProviderUnavailable", f"{exc}; the token has expired meanwhile, retrying in {delay:.0f}s")
            self.phase = Phase.ERROR
        log.warning("UserToken %s/%s: %s; retrying in %.0fs", self.ut.namespace, self.ut.name, exc, delay)
        return None

    async def _validate(self, client: ClientCredentials | None, tokens: TokenSet, *, may_refresh: bool) -> Identity | None:
        ut, ctl = self.ut, self.ctl
        try:
            identity = await self.provider.identity(tokens)
        except InvalidToken:
            if may_refresh and tokens.refresh_token is not None:
                refreshed, ok = await self._refresh(client, tokens)
                if refreshed is None:
                    return None
                return await self._validate(client, refreshed, may_refresh=False)
            self._event(Event.TOKEN_REJECTED)
            await ctl._events.warning(_ref(self.body), "TokenRevoked", f"{_where(ut)} no longer accepts the token; the user must reconnect.")
            await self._clear_secret()
            return None
        except TemporaryFailure as exc:
            self._temporary(exc, tokens)
            return None
        except ProviderMisconfigured as exc:
            raise ProblemFound(Problem("ProviderError", str(exc))) from None
        self._event(Event.VALIDATED)
        self.fields.update(login=identity.login or None, providerUserID=identity.user_id or None,
                           lastValidationTime=policy.format_time(ctl._clock()))
        scopes = identity.scopes if identity.scopes is not None else tokens.scopes
        if scopes is not None:
            self.fields["scopes"] = list(scopes)
        if self.connected or self.status.get("login") != identity.login:
            # The git username may depend on the login (Bitbucket Server): rewrite git-credentials.
            if self.connected and ut.type == "bitbucket-server":
                await self.save(tokens, self.now, identity)
        return identity

    async def _ssh_key(self, tokens: TokenSet, identity: Identity) -> None:
        ut, ctl = self.ut, self.ctl
        provider = self.provider
        current = dict(self.status.get("sshKey") or {})
        where = _where(ut)
        try:
            if not ut.add_ssh_key:
                if current.get("id") and provider.supports_ssh_keys:  # addSSHKey was turned off
                    await provider.delete_ssh_key(tokens, identity, current["id"])
                    self.fields["sshKey"] = None
                    await ctl._events.normal(_ref(self.body), "SSHKeyRemoved", f"Removed SSH key {current['id']} from {where}.")
                return
            public, name = await ctl._user_public_key(ut)
            if not public:  # one message whether absent or not proven to be the operator's key for this user
                self.ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "UserKeyNotFound",
                                     f"{ut.user!r} has no operator-managed SSH key yet (Secret {name!r}); it is uploaded once a WorkspaceSecret of the user creates it.")
                return
            fingerprint = sshkeys.fingerprint(public)
            if current.get("id") and current.get("fingerprint") == fingerprint:
                self.ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, True, "Uploaded", f"SSH key {fingerprint} is registered at {where} as {current.get('title')!r} (id {current['id']}).")
                return
            title = policy.ssh_key_title(ut)
            uploaded = await provider.find_ssh_key(tokens, identity, public)  # adopt one an interrupted attempt made
            if uploaded is None:
                uploaded = await provider.add_ssh_key(tokens, identity, title=title, public_key=public)
            if current.get("id") and current["id"] != uploaded.id:  # the user's key was rotated: remove the old one
                await provider.delete_ssh_key(tokens, identity, current["id"])
            self.fields["sshKey"] = {"id": uploaded.id, "title": uploaded.title, "fingerprint": fingerprint}
            self.ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, True, "Uploaded", f"SSH key {fingerprint} is registered at {where} as {uploaded.title!r} (id {uploaded.id}).")
            await ctl._events.normal(_ref(self.body), "SSHKeyUploaded", f"Uploaded {ut.user!r}'s SSH key {fingerprint} to {where} as {uploaded.title!r}.")
        except TemporaryFailure as exc:
            self._due_in(ctl._backoff(ut.uid, exc.retry_after))
            self.ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "UploadPending", f"{exc}; retrying.")
        except (ProviderMisconfigured, InvalidToken, Unsupported) as exc:
            self._due_in(300)
            self.ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "UploadFailed", f"{exc}. Check the token's scopes and the key at the provider.")

    def _link(self) -> None:
        """status.authorizationURL: the connect page focused on this UserToken, while the user has to act. A
        plain link, never a credential; the device flow's code is shown there (to the signed-in owner) only."""
        ut, ctl = self.ut, self.ctl
        self.fields.update(userCode=None, authorizationURLExpiresAt=None)
        if not policy.needs_authorization(self.phase) and self.phase is not Phase.ERROR:
            self.fields["authorizationURL"] = None
            return
        self.fields["authorizationURL"] = policy.connect_page_link(ctl.settings.base_url, ut)

    async def _announce(self, previous: str | None) -> None:
        phase = (self.phase or Phase.AWAITING_AUTHORIZATION).value
        ref = _ref(self.body)
        where = _where(self.ut)
        if self.connected:
            login = self.fields.get("login")
            await self.ctl._events.normal(ref, "Connected", f"{self.ut.user!r} connected {where}" + (f" as {login!r}." if login else "."))
        elif phase != previous and phase == Phase.EXPIRED.value and previous != Phase.REFRESHING.value:
            await self.ctl._events.warning(ref, "TokenExpired", f"The {where} token expired; the user must reconnect.")
        if self.problem and phase == Phase.ERROR.value and previous != phase:
            await self.ctl._events.warning(ref, self.problem.reason, self.problem.message)
