"""Connecting a UserToken: the connect page's flow (begin -> the provider -> the callback completes it, or the
device flow's code shown on the page) and its listing of the signed-in user's UserTokens."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Problem, ProblemFound
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.api.workspace_secret import SpecError
from workspace_secrets.oauth.base import ProviderError
from workspace_secrets.oauth.protocol import PendingAuthorization, PendingAuthorizations, pkce_challenge, pkce_verifier
from workspace_secrets.runtime.kube import group_path
from workspace_secrets.user_token import context
from workspace_secrets.user_token.context import Context, event_ref, ut_path
from workspace_secrets.user_token.maintenance import Pass
from workspace_secrets.user_token.policy import Phase

log = logging.getLogger(__name__)


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


class Connect:
    def __init__(self, ctx: Context, pending: PendingAuthorizations, maintain: Callable[[str, str], Awaitable[float | None]]) -> None:
        self._ctx = ctx
        self._pending = pending
        self._maintain = maintain  # the controller's maintain(): a device flow's new code is requested at once

    async def begin(self, namespace: str, name: str, user: str, *, browser: str = "") -> str:
        """Mint a single-use state and a PKCE verifier for this UserToken, and return the provider URL.
        `browser` (oauth.protocol.browser_binding of the flow cookie) binds the flow to the starting browser."""
        body = await self._ctx.kube.get(ut_path(namespace, name))
        if body is None or body["metadata"].get("deletionTimestamp"):
            raise NotAllowed(f"UserToken {namespace}/{name} does not exist.")
        try:
            ut = UserToken.from_body(body)
        except SpecError as exc:
            raise ProblemFound(Problem("InvalidSpec", str(exc))) from None
        if ut.user != user:
            raise NotAllowed(f"UserToken {namespace}/{name} belongs to another user.")
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
        return ConnectResult(True, f"Connected to {where}",
                             f"Your {where} account{f' {login!r}' if login else ''} is connected; workspaces of {ut.user!r} can use it now.",
                             ut.namespace, ut.name)

    async def list_for_user(self, user: str, namespace: str | None) -> list[TokenSummary]:
        """The signed-in user's UserTokens (in one namespace, or every served one), as the connect page lists them."""
        paths = [group_path(c.API_VERSION, namespace, c.USER_TOKEN_PLURAL)] if namespace is not None else self._ctx.served_paths()
        summaries = []
        for path in paths:
            for item in (await self._ctx.kube.list(path)).get("items", ()):
                spec, status, meta = item.get("spec") or {}, item.get("status") or {}, item["metadata"]
                if spec.get("user") != user or meta.get("deletionTimestamp"):
                    continue
                ready = cond.find(status.get("conditions"), c.CONDITION_READY) or {}
                device = self._ctx.memory.devices.get(meta.get("uid", "")) if spec.get("flow") == "Device" else None
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
