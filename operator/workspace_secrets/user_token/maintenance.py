"""One maintenance pass over one UserToken, under its lock: decide what is due, do it, write status.

What is due, in order: a device-flow poll (no token yet), a refresh (asked for, or ahead of expiry), a
validation (after a connect or refresh, asked for, or on schedule), the SSH key upload; then the connect link,
the status and the Events. The pass gets the room's shared Context (context.py) and keeps its own findings
(phase, fields, problem, SSH condition, when it is due next)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Condition, Problem, ProblemFound
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.oauth.base import (CODE_TLS_VERIFICATION_FAILED, AuthorizationPending, ClientCredentials, GrantRejected,
                                          InvalidToken, OAuthProvider, ProviderMisconfigured, SlowDown, TemporaryFailure,
                                          Unsupported)
from workspace_secrets.oauth.protocol import Identity, TokenSet
from workspace_secrets.runtime.kube import Conflict, core_path
from workspace_secrets.runtime.metrics import TOKEN_REFRESH_FAILURES
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.oauth import token_secret
from workspace_secrets.user_keys import policy as keys
from workspace_secrets.user_token import policy
from workspace_secrets.user_token import context
from workspace_secrets.user_token.context import Context, event_ref
from workspace_secrets.user_token.policy import Event, Phase

log = logging.getLogger(__name__)


class Pass:
    """One maintenance pass over one token, under its lock: decide what is due, do it, write status."""

    def __init__(self, ctx: Context, body: Mapping[str, Any], ut: UserToken, just_started: bool) -> None:
        self.ctx = ctx
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
        self.now = ctx.clock()
        self.secret: Mapping[str, Any] | None = None

    @property
    def provider(self) -> OAuthProvider:
        return self.ctx.provider(self.ut)

    def _event(self, event: Event) -> None:
        self.phase = policy.next_phase(self.phase, event)

    def _due_in(self, seconds: float) -> None:
        self.next_due.append(max(seconds, 0.0))

    # --- the token Secret ---
    async def save(self, tokens: TokenSet, issued_at: datetime, identity: Identity | None = None) -> None:
        """Write the token to its Secret (compare-and-swap, retried). On failure the token stays in memory."""
        ut, ctx = self.ut, self.ctx
        git = self.provider.git_access(identity or Identity(login=self.status.get("login", ""), user_id=""))
        generation = secrets.token_hex(8)
        path = core_path(ut.namespace, "secrets", ut.secret_name)
        desired = policy.desired_token_secret(ut, tokens, issued_at=issued_at, generation=generation, git=git)
        ctx.memory.unsaved[ut.uid] = (tokens, issued_at)
        for _ in range(5):
            existing = await ctx.kube.get(path)
            try:
                if existing is None:
                    self.secret = await ctx.kube.create(path.rsplit("/", 1)[0], desired)
                elif not token_secret.is_owned_by(existing, ut.uid):
                    raise ProblemFound(Problem("SecretConflict", f"Secret {ut.secret_name!r} exists and is not this UserToken's; it was left untouched. Delete or rename it, or ask the platform to set spec.secretName."))
                else:
                    meta = dict(existing["metadata"])
                    meta["labels"] = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
                    meta["annotations"] = {**(meta.get("annotations") or {}), **desired["metadata"]["annotations"]}
                    meta["ownerReferences"] = desired["metadata"]["ownerReferences"]
                    self.secret = await ctx.kube.replace(path, {**desired, "metadata": meta})
            except Conflict:
                continue
            ctx.memory.unsaved.pop(ut.uid, None)
            return
        raise ProblemFound(Problem("SecretWriteFailed", f"Secret {ut.secret_name!r} kept changing while the token was being stored; retrying."))

    async def _clear_secret(self) -> None:
        """A dead grant: drop the tokens from the Secret (keeping the Secret, which pods may mount)."""
        if self.secret is None:
            return
        body = {**self.secret, "data": {}}
        try:
            self.secret = await self.ctx.kube.replace(core_path(self.ut.namespace, "secrets", self.ut.secret_name), body)
        except Conflict:
            pass  # someone else wrote it; the next pass looks again

    # --- the pass ---
    async def run(self, *, after_connect: bool = False) -> float | None:
        ut, ctx = self.ut, self.ctx
        try:
            stored = await self._read_token()
            if stored is None:
                self._event(Event.NO_TOKEN)
                if ut.flow == "Device" and policy.needs_authorization(self.phase):
                    stored = await self._device()
                    after_connect = stored is not None
                elif self.phase is Phase.AWAITING_AUTHORIZATION and self._ready_reason() == policy.REASON_DISCONNECTED:
                    self.problem = policy.disconnected(ut)  # the user's Disconnect: says so until they connect again
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
        await ctx.write_status(self.body, self.fields, conditions)
        await self._announce(previous)
        return min(self.next_due) if self.next_due else None

    async def _device(self) -> token_secret.StoredToken | None:
        """The device flow (RFC 8628): request a code, show it in status, poll until the user approved.

        A new code is requested on creation, when the user asks (Connect on the page, or the refresh
        annotation), after an operator restart (the device code lived in memory) and when the token Secret of a
        connected token was deleted by hand; an expired or declined code is not replaced unasked, so an abandoned
        UserToken does not poll forever, and neither is one after the user's Disconnect on the connect page.
        """
        ut, ctx, now = self.ut, self.ctx, self.now
        client = await ctx.client(ut)
        provider = self.provider
        forced = ut.refresh_request is not None and ut.refresh_request != self.status.get("refreshRequest")
        if forced:
            self.fields["refreshRequest"] = ut.refresh_request
        device = ctx.memory.devices.get(ut.uid)
        if device is not None and device.expires_at <= now:
            ctx.memory.devices.pop(ut.uid, None)
            device = None
            self.problem = Problem("DeviceCodeExpired", "The code expired before it was entered; click Connect on the connect page (or set the refresh annotation) for a new one")
        reason = self._ready_reason()
        ended = reason in policy.DEVICE_CODE_ENDED
        if device is None:
            asked = ut.uid in ctx.memory.device_requested or forced
            if not asked and (self.problem is not None or ended):
                if self.problem is None:
                    self.problem = (policy.disconnected(ut) if reason == policy.REASON_DISCONNECTED else Problem(
                        reason or "DeviceCodeExpired",
                        "the last code expired or was declined; click Connect on the connect page (or set the refresh annotation) for a new one"))
                return None
            ctx.memory.device_requested.discard(ut.uid)
            self.problem = None
            scopes = ut.scopes or provider.default_scopes(add_ssh_key=ut.add_ssh_key)
            try:
                device = await provider.start_device_authorization(client, scopes=scopes)
            except TemporaryFailure as exc:
                self._temporary(exc, TokenSet(Sensitive(b"-")))
                return None
            except (ProviderMisconfigured, GrantRejected, Unsupported) as exc:
                raise ProblemFound(Problem(_provider_reason(exc), str(exc))) from None
            ctx.memory.devices[ut.uid] = device
            ctx.memory.device_next_poll[ut.uid] = now + timedelta(seconds=device.interval)
            log.info("device authorization started for UserToken %s/%s (%s)", ut.namespace, ut.name, ut.type)
        else:
            due = ctx.memory.device_next_poll.get(ut.uid)
            if due is not None and due > now:  # polled a moment ago by another trigger: wait for the interval
                self._due_in((due - now).total_seconds())
                return None
            ctx.memory.device_next_poll[ut.uid] = now + timedelta(seconds=device.interval)
            try:
                tokens = await provider.poll_device(client, device)
            except SlowDown:
                device = ctx.memory.devices[ut.uid] = dataclasses.replace(device, interval=device.interval + 5)
                ctx.memory.device_next_poll[ut.uid] = now + timedelta(seconds=device.interval)
            except AuthorizationPending:
                pass
            except GrantRejected as exc:  # expired_token, access_denied
                ctx.memory.devices.pop(ut.uid, None)
                self.problem = Problem("DeviceAuthorizationEnded", f"{exc}; click Connect on the connect page (or set the refresh annotation) for a new code")
                return None
            except TemporaryFailure as exc:
                self._temporary(exc, TokenSet(Sensitive(b"-")))
                return None
            except ProviderMisconfigured as exc:
                raise ProblemFound(Problem(_provider_reason(exc), str(exc))) from None
            else:
                ctx.memory.devices.pop(ut.uid, None)
                await self.save(tokens, ctx.clock())
                self.connected = True
                return token_secret.read_token_secret(self.secret) if self.secret is not None else None
        self._due_in(device.interval)
        return None

    def _ready_reason(self) -> str:
        return (cond.find(self.status.get("conditions"), c.CONDITION_READY) or {}).get("reason") or ""

    async def _read_token(self) -> token_secret.StoredToken | None:
        ut, ctx = self.ut, self.ctx
        self.secret = await ctx.kube.get(core_path(ut.namespace, "secrets", ut.secret_name))
        if self.secret is not None and not token_secret.is_owned_by(self.secret, ut.uid):
            raise ProblemFound(Problem("SecretConflict", f"Secret {ut.secret_name!r} exists and is not this UserToken's; it was left untouched. Delete or rename it, or ask the platform to set spec.secretName."))
        unsaved = ctx.memory.unsaved.get(ut.uid)
        if unsaved is not None:  # a rotated token a failed write left in memory: store it first
            await self.save(*unsaved)
        return token_secret.read_token_secret(self.secret) if self.secret is not None else None

    async def _with_token(self, stored: token_secret.StoredToken, after_connect: bool) -> None:
        ut, ctx, now = self.ut, self.ctx, self.now
        schedule = ctx.settings.schedule
        tokens = stored.tokens
        client = await ctx.client(ut)
        if self.phase in (None, Phase.AWAITING_AUTHORIZATION, Phase.ERROR, Phase.EXPIRED, Phase.REVOKED) or after_connect:
            self._event(Event.CONNECTED)
        if self.connected:
            self.fields["connectedTime"] = token_secret.format_time(now)

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
                self.fields["nextRefreshAt"] = token_secret.format_time(due)
            elif expires is not None:
                self.fields["nextRefreshAt"] = token_secret.format_time(policy.refresh_at(now, expires, ut.uid, schedule))
        self.fields["expiresAt"] = token_secret.format_time(expires)
        if expires is None or not self.provider.can_refresh(tokens):
            self.fields["nextRefreshAt"] = None
        if expires is not None and expires <= now and not refreshed:
            self._event(Event.LAPSED)
            await self._clear_secret()
            return

        # 2. Validate: after a connect or refresh, when asked to, and on a schedule.
        forced_validation = ut.validate_request is not None and ut.validate_request != self.status.get("validateRequest")
        last = token_secret.parse_time(self.status.get("lastValidationTime"))
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
        ctx.memory.failures.pop(ut.uid, None)

        # 3. The SSH key.
        await self._ssh_key(tokens, identity)

    async def _refresh(self, client: ClientCredentials | None, tokens: TokenSet) -> tuple[TokenSet | None, bool]:
        ut, ctx = self.ut, self.ctx
        where = context.where(ut)
        await ctx.write_status(self.body, {"phase": Phase.REFRESHING.value}, [])  # intent, visible to users
        self.status = {**self.status, "phase": Phase.REFRESHING.value}
        self.body = {**self.body, "status": self.status}
        self._event(Event.REFRESH_STARTED)
        ctx.memory.refreshes += 1
        try:
            new = await self.provider.refresh(client, tokens)
        except GrantRejected as exc:
            TOKEN_REFRESH_FAILURES.labels(provider=ut.type, reason="RefreshRejected").inc()
            self._event(Event.REFRESH_REJECTED)
            self.problem = Problem("RefreshRejected", str(exc))
            await ctx.events.warning(event_ref(self.body), "TokenExpired", f"{where} refused to refresh the token ({exc.code or 'rejected'}); the user must reconnect.")
            await self._clear_secret()
            return None, False
        except TemporaryFailure as exc:
            TOKEN_REFRESH_FAILURES.labels(provider=ut.type, reason="ProviderUnavailable").inc()
            return self._temporary(exc, tokens), False
        except ProviderMisconfigured as exc:
            TOKEN_REFRESH_FAILURES.labels(provider=ut.type, reason=_provider_reason(exc)).inc()
            raise ProblemFound(Problem(_provider_reason(exc), str(exc))) from None
        now = ctx.clock()
        await self.save(new, now)  # before anything else: the old refresh token is spent
        self._event(Event.REFRESHED)
        self.fields["lastRefreshTime"] = token_secret.format_time(now)
        await ctx.events.normal(event_ref(self.body), "TokenRefreshed", f"Refreshed the {where} token; it now expires at {token_secret.format_time(new.expires_at) or 'never'}.")
        return new, True

    def _temporary(self, exc: TemporaryFailure, tokens: TokenSet) -> TokenSet | None:
        self.temporary = True
        self._event(Event.TEMPORARY_FAILURE)
        delay = self.ctx.memory.backoff(self.ut.uid, exc.retry_after)
        self._due_in(delay)
        if tokens.expires_at is not None and tokens.expires_at <= self.now:
            self.problem = Problem("ProviderUnavailable", f"{exc}; the token has expired meanwhile, retrying in {delay:.0f}s")
            self.phase = Phase.ERROR
        log.warning("UserToken %s/%s: %s; retrying in %.0fs", self.ut.namespace, self.ut.name, exc, delay)
        return None

    async def _validate(self, client: ClientCredentials | None, tokens: TokenSet, *, may_refresh: bool) -> Identity | None:
        ut, ctx = self.ut, self.ctx
        try:
            identity = await self.provider.identity(tokens)
        except InvalidToken:
            if may_refresh and tokens.refresh_token is not None:
                refreshed, ok = await self._refresh(client, tokens)
                if refreshed is None:
                    return None
                return await self._validate(client, refreshed, may_refresh=False)
            self._event(Event.TOKEN_REJECTED)
            await ctx.events.warning(event_ref(self.body), "TokenRevoked", f"{context.where(ut)} no longer accepts the token; the user must reconnect.")
            await self._clear_secret()
            return None
        except TemporaryFailure as exc:
            self._temporary(exc, tokens)
            return None
        except ProviderMisconfigured as exc:
            raise ProblemFound(Problem(_provider_reason(exc), str(exc))) from None
        self._event(Event.VALIDATED)
        self.fields.update(login=identity.login or None, providerUserID=identity.user_id or None,
                           lastValidationTime=token_secret.format_time(ctx.clock()))
        scopes = identity.scopes if identity.scopes is not None else tokens.scopes
        if scopes is not None:
            self.fields["scopes"] = list(scopes)
        if self.connected or self.status.get("login") != identity.login:
            # The git username may be the login (a provider capability): rewrite git-credentials.
            if self.connected and self.provider.git_username_is_login:
                await self.save(tokens, self.now, identity)
        return identity

    async def _ssh_key(self, tokens: TokenSet, identity: Identity) -> None:
        """addSSHKey: the provider holds exactly the public keys the user's workspaces in this namespace use
        (generated of any type, or brought; at most keys.MAX_UPLOADED_KEYS): a new one is uploaded before an old
        one the operator uploaded is removed; a key the user added by hand is never removed."""
        ut, ctx = self.ut, self.ctx
        provider = self.provider
        where = context.where(ut)
        recorded = keys.recorded_keys(self.status, operator_title=policy.ssh_key_title(ut))
        current = list(recorded)  # what the provider holds of ours, kept true as each call succeeds
        try:
            if not ut.add_ssh_key:
                if recorded and provider.supports_ssh_keys:  # addSSHKey was turned off
                    for key in recorded:
                        if key.added_by == keys.ADDED_BY_OPERATOR:
                            await provider.delete_ssh_key(tokens, identity, key.id)
                            await ctx.events.normal(event_ref(self.body), "SSHKeyRemoved", f"Removed SSH key {key.fingerprint} (id {key.id}) from {where}.")
                        current.remove(key)
                return
            in_use = await ctx.user_keys.workspace_keys(ut.namespace, ut.user)
            plan = keys.upload_plan(in_use, recorded)
            title = policy.ssh_key_title(ut)
            for key in plan.upload:
                found = await provider.find_ssh_key(tokens, identity, key.key.body)  # adopt one an interrupted attempt made
                if found is not None and found.title != title:  # the user added this key by hand: theirs, never removed
                    current.append(keys.RecordedKey(found.id, found.title, key.key.fingerprint, key.key.type, keys.ADDED_BY_USER))
                    continue
                if found is None:
                    found = await provider.add_ssh_key(tokens, identity, title=title, public_key=key.key.body)
                    await ctx.events.normal(event_ref(self.body), "SSHKeyUploaded",
                                            f"Uploaded {ut.user!r}'s SSH key {keys.key_summary(key)} to {where} as {found.title!r}.")
                current.append(keys.RecordedKey(found.id, found.title, key.key.fingerprint, key.key.type))
            for old in plan.remove:  # after the uploads: a workspace never finds its key missing at the provider
                await provider.delete_ssh_key(tokens, identity, old.id)
                current.remove(old)
                await ctx.events.normal(event_ref(self.body), "SSHKeyRemoved",
                                        f"Removed SSH key {old.fingerprint} (id {old.id}) from {where}: no workspace of {ut.user!r} uses it any more.")
            for old in plan.forget:
                current.remove(old)
            self.ssh = _ssh_condition(ut, where, in_use, plan, current)
            if plan.deferred:
                self._due_in(60)
        except TemporaryFailure as exc:
            self._due_in(ctx.memory.backoff(ut.uid, exc.retry_after))
            self.ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "UploadPending", f"{exc}; retrying.")
        except (ProviderMisconfigured, InvalidToken, Unsupported) as exc:
            self._due_in(300)
            self.ssh = Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "UploadFailed", f"{exc}. Check the token's scopes and the key at the provider.")
        finally:
            if current != recorded or "sshKeys" not in self.status:
                self.fields["sshKeys"] = [k.status() for k in current] or None
                self.fields["sshKey"] = ({"id": current[0].id, "title": current[0].title, "fingerprint": current[0].fingerprint}
                                         if current else None)

    def _link(self) -> None:
        """status.authorizationURL: the connect page focused on this UserToken, while the user has to act. A
        plain link, never a credential; the device flow's code is shown there (to the signed-in owner) only."""
        ut, ctx = self.ut, self.ctx
        self.fields.update(userCode=None, authorizationURLExpiresAt=None)
        if not policy.needs_authorization(self.phase) and self.phase is not Phase.ERROR:
            self.fields["authorizationURL"] = None
            return
        self.fields["authorizationURL"] = policy.connect_page_link(ctx.settings.base_url, ut)

    async def _announce(self, previous: str | None) -> None:
        phase = (self.phase or Phase.AWAITING_AUTHORIZATION).value
        ref = event_ref(self.body)
        where = context.where(self.ut)
        if self.connected:
            login = self.fields.get("login")
            await self.ctx.events.normal(ref, "Connected", f"{self.ut.user!r} connected {where}" + (f" as {login!r}." if login else "."))
        elif phase != previous and phase == Phase.EXPIRED.value and previous != Phase.REFRESHING.value:
            await self.ctx.events.warning(ref, "TokenExpired", f"The {where} token expired; the user must reconnect.")
        if self.problem and phase == Phase.ERROR.value and previous != phase:
            await self.ctx.events.warning(ref, self.problem.reason, self.problem.message)


def _ssh_condition(ut: UserToken, where: str, in_use: list[keys.KeyInUse], plan: keys.UploadPlan,
                   current: list[keys.RecordedKey]) -> Condition:
    """SSHKeyUploaded: which keys of the user's workspaces are registered at the provider (fingerprints, types,
    the WorkspaceSecrets using them: public information only), and what is not."""
    if not in_use:
        return Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "UserKeyNotFound",
                         f"No WorkspaceSecret of {ut.user!r} in namespace {ut.namespace!r} has an SSH key yet; the keys its "
                         f"workspaces use are uploaded once one has written its Secret.")
    by_fp = {k.fingerprint: k for k in current}
    registered = [f"{keys.key_summary(k)} as id {by_fp[k.key.fingerprint].id}"
                  + (" (added by the user)" if by_fp[k.key.fingerprint].added_by == keys.ADDED_BY_USER else "")
                  for k in in_use if k.key.fingerprint in by_fp]
    message = f"Registered at {where}: " + "; ".join(registered) + "."
    if plan.deferred:
        return Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "UploadPending",
                         f"{message} Not uploaded yet: {'; '.join(keys.key_summary(k) for k in plan.deferred[:3])}; keys no "
                         f"workspace uses any more are removed first (status.sshKeys records at most {keys.MAX_RECORDED_KEYS}); retrying.")
    if plan.left_out:
        return Condition(c.CONDITION_SSH_KEY_UPLOADED, False, "TooManyKeys",
                         f"{message} Not uploaded: {len(plan.left_out)} more key(s) ({'; '.join(keys.key_summary(k) for k in plan.left_out[:3])}); "
                         f"at most {keys.MAX_UPLOADED_KEYS} keys are uploaded for one user. Let the workspaces share a key type.")
    return Condition(c.CONDITION_SSH_KEY_UPLOADED, True, "Uploaded", message)


def _provider_reason(exc: Exception) -> str:
    """The Ready reason for a provider that answered unusably: a TLS verification failure has its own (its fix is
    the platform's: the OAuthApplication's caBundle or --ca-bundle-file), anything else is ProviderError."""
    return (c.REASON_TLS_VERIFICATION_FAILED if getattr(exc, "code", None) == CODE_TLS_VERIFICATION_FAILED
            else c.REASON_PROVIDER_ERROR)
