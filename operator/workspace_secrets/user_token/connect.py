"""Connecting a UserToken: the connect page's flow (begin -> the provider -> the callback completes it, or the
device flow's code shown on the page), disconnecting one (revoke at the provider, delete the token Secret: the
deletion's cleanup, cleanup.py, without deleting the UserToken) and the listing of the signed-in user's
UserTokens with what the page tells about each (the access asked for, the times, the workspaces that use it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Condition, Problem, ProblemFound
from workspace_secrets.api.oauth_application import OAuthApplication, app_path
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.api.workspace_secret import SpecError
from workspace_secrets.oauth.base import ProviderError
from workspace_secrets.oauth.protocol import PendingAuthorization, PendingAuthorizations, pkce_challenge, pkce_verifier
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.kube import group_path
from workspace_secrets.user_token import context, policy
from workspace_secrets.user_token.cleanup import finalize_locked
from workspace_secrets.user_token.context import Context, event_ref, ut_path
from workspace_secrets.user_token.maintenance import Pass
from workspace_secrets.user_token.policy import Phase

log = logging.getLogger(__name__)

#: The WorkspaceSecret condition that says whether its userTokens are delivered (workspace_secret/tokens.py).
TOKENS_READY = getattr(c, "CONDITION_TOKENS_READY", "TokensReady")


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
    reason: str = ""  # the Ready condition's reason (the page words the state itself; messages are for kubectl)
    scopes: tuple[str, ...] | None = None  # the access the platform asks for (None: the application is not usable)
    connected_at: str | None = None  # status.connectedTime
    refreshed_at: str | None = None  # status.lastRefreshTime
    validated_at: str | None = None  # status.lastValidationTime
    next_refresh_at: str | None = None  # status.nextRefreshAt
    revocable: bool = False  # the provider has a revocation endpoint (Disconnect revokes there)
    used_by: tuple[str, ...] = ()  # the user's WorkspaceSecrets in this namespace whose spec.userTokens names it
    waiting: tuple[str, ...] = ()  # ... of those, the ones that wait for it (required, TokensReady not True)

    @property
    def connected(self) -> bool:
        return self.phase in (Phase.VALID.value, Phase.REFRESHING.value)

    @property
    def can_disconnect(self) -> bool:
        """Something to forget: a token (working or dead) or an account the status still names."""
        return self.connected or self.phase in (Phase.EXPIRED.value, Phase.REVOKED.value) or bool(self.login)


def workspaces_using(items: Iterable[Any], user: str, token: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(used by, waiting): the names of `user`'s WorkspaceSecrets among `items` whose spec.userTokens has an entry
    named `token`, and of those the ones that wait for it (the entry is not optional and TokensReady is not True).
    Tenant-written objects: anything malformed is skipped, never an error."""
    used: list[str] = []
    waiting: list[str] = []
    for ws in items:
        if not isinstance(ws, Mapping):
            continue
        meta, spec, status = (ws.get(k) if isinstance(ws.get(k), Mapping) else {} for k in ("metadata", "spec", "status"))
        name = meta.get("name")
        if not isinstance(name, str) or spec.get("user") != user or meta.get("deletionTimestamp"):
            continue
        refs = spec.get("userTokens")
        entry = next((r for r in refs if isinstance(r, Mapping) and r.get("name") == token), None) if isinstance(refs, list) else None
        if entry is None:
            continue
        used.append(name)
        conditions = status.get("conditions")
        ready = cond.find([x for x in conditions if isinstance(x, Mapping)] if isinstance(conditions, list) else None, TOKENS_READY)
        if entry.get("optional") is not True and (ready or {}).get("status") != "True":
            waiting.append(name)
    return tuple(sorted(used)), tuple(sorted(waiting))


class Connect:
    def __init__(self, ctx: Context, pending: PendingAuthorizations, maintain: Callable[[str, str], Awaitable[float | None]]) -> None:
        self._ctx = ctx
        self._pending = pending
        self._maintain = maintain  # the controller's maintain(): a device flow's new code is requested at once

    async def begin(self, namespace: str, name: str, user: str, *, browser: str = "") -> str:
        """Mint a single-use state and a PKCE verifier for this UserToken, and return the provider URL.
        `browser` (oauth.protocol.browser_binding of the flow cookie) binds the flow to the starting browser."""
        body = await self._ctx.kube.get(ut_path(namespace, name))
        # One answer for "does not exist" and "another user's" (checked before the spec is parsed, so that not even an
        # invalid spec tells a user that someone else's UserToken of that name exists).
        if body is None or body["metadata"].get("deletionTimestamp") or (body.get("spec") or {}).get("user") != user:
            raise NotAllowed(f"UserToken {namespace}/{name} is not one of your accounts.")
        try:
            ut = UserToken.from_body(body)
        except SpecError as exc:
            raise ProblemFound(Problem("InvalidSpec", str(exc))) from None
        ut = await self._ctx.bind(ut)
        if ut.flow == "Device":  # a new device code, shown on the connect page to this user
            self._ctx.memory.device_requested.add(ut.uid)
            self._ctx.memory.devices.pop(ut.uid, None)
            await self._maintain(namespace, name)
            self._ctx.wake(namespace, name)
            return f"/accounts?focus={namespace}/{name}"
        client = await self._ctx.client(ut)
        provider = self._ctx.provider(ut)
        now = self._ctx.clock()
        verifier = pkce_verifier()
        state = self._pending.new_state(uid=ut.uid, now=now)
        scopes = ut.scopes or provider.default_scopes(add_ssh_key=ut.add_ssh_key)
        start = await provider.start_authorization(client, redirect_uri=self._ctx.settings.redirect_uri, state=state,
                                                   code_challenge=pkce_challenge(verifier), scopes=scopes)
        self._pending.put(start.state, PendingAuthorization(
            namespace=ut.namespace, name=ut.name, uid=ut.uid, user=ut.user, code_verifier=verifier,
            redirect_uri=self._ctx.settings.redirect_uri, expires_at=now + self._pending.ttl,
            provider_data={**start.provider_data, "state": start.state, "ours": start.state_is_ours}, browser=browser,
        ))
        log.info("authorization started for UserToken %s/%s (%s)", namespace, name, ut.type)
        return start.url

    def take_state(self, state: str) -> PendingAuthorization:
        """Consume a callback's state: raises StateRejected if forged, replayed, expired or unknown."""
        return self._pending.take(state, now=self._ctx.clock(), signed="." in state)

    async def complete(self, record: PendingAuthorization, code: str) -> ConnectResult:
        body = await self._ctx.kube.get(ut_path(record.namespace, record.name))
        if body is None or body["metadata"].get("uid") != record.uid or body["metadata"].get("deletionTimestamp"):
            return ConnectResult(False, "This account link no longer exists",
                                 f"UserToken {record.namespace}/{record.name} was deleted or replaced while you were signing in.")
        ut = UserToken.from_body(body)
        if ut.user != record.user:
            return ConnectResult(False, "This account link no longer exists", f"UserToken {record.namespace}/{record.name} changed while you were signing in.")
        try:
            ut = await self._ctx.bind(ut)
        except ProblemFound as exc:
            return ConnectResult(False, "The operator is not set up for this provider", exc.problem.message, ut.namespace, ut.name)
        async with self._ctx.lock(ut.provider_key):
            return await asyncio.shield(self._complete_locked(ut, record, code))

    async def _complete_locked(self, ut: UserToken, record: PendingAuthorization, code: str) -> ConnectResult:
        body = await self._ctx.kube.get(ut_path(ut.namespace, ut.name))  # fresh, under the lock
        # Deleted, being deleted (its finalizer may already have revoked and cleaned up: a token saved now would
        # never be revoked), or replaced meanwhile: nothing is exchanged or saved.
        if body is None or body["metadata"].get("deletionTimestamp") or body["metadata"].get("uid") != record.uid:
            return ConnectResult(False, "This account link no longer exists", f"UserToken {ut.namespace}/{ut.name} was deleted.")
        provider = self._ctx.provider(ut)
        where = context.where(ut)
        try:
            client = await self._ctx.client(ut)
            tokens = await provider.exchange_code(client, code=code, redirect_uri=record.redirect_uri,
                                                  code_verifier=record.code_verifier, provider_data=record.provider_data)
        except ProblemFound as exc:
            return ConnectResult(False, "The operator is not set up for this provider", exc.problem.message, ut.namespace, ut.name)
        except ProviderError as exc:
            await self._ctx.events.warning(event_ref(body), "ConnectFailed", f"Exchanging the authorization code with {where} failed: {exc}")
            return ConnectResult(False, f"{where} did not accept the sign-in", f"{exc}. Start again from the connect page.", ut.namespace, ut.name)
        now = self._ctx.clock()
        pass_ = Pass(self._ctx, body, ut, False)
        try:
            await pass_.save(tokens, now)
        except ProblemFound as exc:
            return ConnectResult(False, "The token could not be stored", exc.problem.message, ut.namespace, ut.name)
        self._ctx.memory.failures.pop(ut.uid, None)
        pass_.connected = True
        await pass_.run(after_connect=True)
        self._ctx.wake(ut.namespace, ut.name)
        login = pass_.fields.get("login")
        shown = _display_name(ut.type, ut.app.display_host if ut.app is not None else ut.host)
        return ConnectResult(True, f"Connected to {shown}",
                             (f"Connected as {login}. " if login else "Connected. ") + "Your workspaces can use this account now.",
                             ut.namespace, ut.name)

    async def disconnect(self, namespace: str, name: str, user: str) -> ConnectResult:
        """The user's Disconnect: what deleting the UserToken would clean up (the uploaded SSH key, the token revoked
        at the provider where it has an endpoint, the token Secret deleted), the UserToken itself kept and back to
        not connected. Only the owner's own token; one answer for "no such token" and "another user's"."""
        body = await self._ctx.kube.get(ut_path(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp") or (body.get("spec") or {}).get("user") != user:
            raise NotAllowed(f"UserToken {namespace}/{name} is not one of your accounts.")
        try:
            ut = UserToken.from_body(body)
        except SpecError as exc:
            raise ProblemFound(Problem("InvalidSpec", str(exc))) from None
        async with self._ctx.lock(ut.provider_key):
            return await asyncio.shield(self._disconnect_locked(ut, user))

    async def _disconnect_locked(self, ut: UserToken, user: str) -> ConnectResult:
        body = await self._ctx.kube.get(ut_path(ut.namespace, ut.name))  # fresh, under the lock
        if (body is None or body["metadata"].get("deletionTimestamp") or body["metadata"].get("uid") != ut.uid
                or (body.get("spec") or {}).get("user") != user):
            raise NotAllowed(f"UserToken {ut.namespace}/{ut.name} is not one of your accounts.")
        ut = UserToken.from_body(body)
        try:
            bound: UserToken | None = await self._ctx.bind(ut)
        except ProblemFound:
            bound = None  # finalize_locked deletes the Secret all the same (and says it could not revoke)
        status = body.get("status") or {}
        shown = _display_name(status.get("type") or "", status.get("host"))
        try:
            await finalize_locked(self._ctx, body, ut)
        except RetryLater:
            return ConnectResult(False, f"{shown} could not be reached",
                                 f"The token could not be revoked at {shown}, so it was kept. Try again in a moment.", ut.namespace, ut.name)
        self._ctx.memory.forget(ut.uid)
        fields = {"phase": Phase.AWAITING_AUTHORIZATION.value, "login": None, "providerUserID": None, "scopes": None,
                  "expiresAt": None, "nextRefreshAt": None, "lastRefreshTime": None, "lastValidationTime": None,
                  "connectedTime": None, "sshKey": None, "sshKeys": None, "userCode": None, "authorizationURLExpiresAt": None,
                  "authorizationURL": policy.connect_page_link(self._ctx.settings.base_url, ut)}
        conditions: list[Condition] = []
        if bound is not None:
            ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "NotConnected",
                            "The key is uploaded once the user has connected.") if ut.add_ssh_key else None
            # Ready reason Disconnected, kept by the passes until the user connects again: a Device token gets no
            # new code unasked (maintenance.py), so the page does not show one moments after "Disconnect".
            conditions = policy.conditions(bound, Phase.AWAITING_AUTHORIZATION, login=None, problem=policy.disconnected(bound), ssh=ssh)
        await self._ctx.write_status(body, fields, conditions)
        await self._ctx.events.normal(event_ref(body), "Disconnected",
                                      f"{user!r} disconnected {context.where(bound) if bound else shown} on the connect page: "
                                      "the stored token was removed (and revoked at the provider where it allows that).")
        self._ctx.wake(ut.namespace, ut.name)
        log.info("UserToken %s/%s disconnected by its user", ut.namespace, ut.name)
        return ConnectResult(True, f"Disconnected {shown}", f"Your {shown} account is no longer connected.", ut.namespace, ut.name)

    async def list_for_user(self, user: str, namespace: str | None) -> list[TokenSummary]:
        """The signed-in user's UserTokens (in one namespace, or every served one), as the connect page lists them:
        their state, the access the platform asks for, the times, and the user's workspaces that use them."""
        paths = [group_path(c.API_VERSION, namespace, c.USER_TOKEN_PLURAL)] if namespace is not None else self._ctx.served_paths()
        apps: dict[str, OAuthApplication | None] = {}
        workspaces: dict[str, list[Any]] = {}
        summaries = []
        for path in paths:
            for item in (await self._ctx.kube.list(path)).get("items", ()):
                spec, status, meta = item.get("spec") or {}, item.get("status") or {}, item["metadata"]
                if spec.get("user") != user or meta.get("deletionTimestamp"):
                    continue
                ready = cond.find(status.get("conditions"), c.CONDITION_READY) or {}
                device = self._ctx.memory.devices.get(meta.get("uid", "")) if spec.get("flow") == "Device" else None
                scopes, revocable = await self._access(item, apps)
                if meta["namespace"] not in workspaces:
                    workspaces[meta["namespace"]] = await self._workspace_secrets(meta["namespace"])
                used_by, waiting = workspaces_using(workspaces[meta["namespace"]], user, meta["name"])
                phase = status.get("phase") or Phase.AWAITING_AUTHORIZATION.value
                summaries.append(TokenSummary(
                    namespace=meta["namespace"], name=meta["name"], user=user,
                    type=status.get("type") or spec.get("application", ""),
                    host=status.get("host"), phase=phase,
                    login=status.get("login"), expires_at=status.get("expiresAt"), message=ready.get("message", ""),
                    flow=spec.get("flow") or "AuthorizationCode",
                    user_code=device.user_code if device else None,
                    verification_url=(device.verification_uri_complete or device.verification_uri) if device else None,
                    reason=ready.get("reason", ""), scopes=scopes,
                    connected_at=status.get("connectedTime"), refreshed_at=status.get("lastRefreshTime"),
                    validated_at=status.get("lastValidationTime"), next_refresh_at=status.get("nextRefreshAt"),
                    revocable=revocable, used_by=used_by,
                    waiting=() if phase in (Phase.VALID.value, Phase.REFRESHING.value) else waiting,
                ))
        return sorted(summaries, key=lambda s: (s.namespace, s.name))

    async def _access(self, body: Mapping[str, Any], apps: dict[str, OAuthApplication | None]) -> tuple[tuple[str, ...] | None, bool]:
        """(the scopes the platform asks for, whether the provider revokes) for one UserToken; (None, False) when its
        application is missing, not allowed in its namespace or does not fit (the page then shows no access)."""
        try:
            ut = UserToken.from_body(body)
        except SpecError:
            return None, False
        if ut.application not in apps:
            app_body = await self._ctx.kube.get(app_path(ut.application))
            try:
                apps[ut.application] = OAuthApplication.from_body(app_body) if app_body is not None else None
            except SpecError:
                apps[ut.application] = None
        app = apps[ut.application]
        if app is None or not app.allows(ut.namespace):
            return None, False
        try:
            ut = ut.bind(app)
        except SpecError:
            return None, False
        provider = self._ctx.provider(ut)
        return tuple(ut.scopes or provider.default_scopes(add_ssh_key=ut.add_ssh_key)), bool(provider.supports_revocation)

    async def _workspace_secrets(self, namespace: str) -> list[Any]:
        """The WorkspaceSecrets of a namespace (from the API server's watch cache); none when they cannot be read:
        the page is still shown, without the workspaces."""
        try:
            listing = await self._ctx.kube.list(group_path(c.API_VERSION, namespace, c.WORKSPACE_SECRET_PLURAL), from_cache=True)
        except Exception as exc:  # noqa: BLE001 -- a listing that fails must not take the page down
            log.warning("connect page: could not list WorkspaceSecrets in %s: %s", namespace, type(exc).__name__)
            return []
        items = listing.get("items") if isinstance(listing, Mapping) else None
        return list(items) if isinstance(items, list) else []


#: Providers by their proper names (status.type -> name); with the host they read as "GitLab (git.example.com)".
PROVIDER_NAMES = {
    "github": "GitHub", "github-enterprise": "GitHub Enterprise", "gitlab": "GitLab", "gitlab-self-managed": "GitLab",
    "bitbucket-cloud": "Bitbucket Cloud", "bitbucket-server": "Bitbucket Server", "vault": "Vault", "oidc": "OpenID Connect",
}


def _display_name(type_: str, host: str | None) -> str:
    name = PROVIDER_NAMES.get(type_, type_ or "the provider")
    netloc = urlsplit(host).netloc if host else ""
    return f"{name} ({netloc})" if netloc else name
