"""OAuth 2.0 values and decisions that need no I/O: token sets, PKCE (RFC 7636, S256 only), and the
server-side record of pending authorizations that makes every `state` single-use, expiring and bound to
one UserToken (by uid), one user and the browser that started it (a flow cookie)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.signing import BadSignature, Signer

STATE_PURPOSE = "oauth-state"


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint (or Vault's login) returned. Secret parts are Sensitive."""

    access_token: Sensitive
    refresh_token: Sensitive | None = None
    token_type: str = "bearer"
    expires_at: datetime | None = None
    scopes: tuple[str, ...] | None = None  # None: the provider did not say
    renewable: bool = False  # Vault: renew-self extends it

    def __repr__(self) -> str:
        return f"TokenSet(type={self.token_type!r}, expires_at={self.expires_at!r}, refresh={'yes' if self.refresh_token else 'no'})"


@dataclass(frozen=True)
class Identity:
    """Who the token belongs to at the provider (from its user/userinfo/lookup-self endpoint)."""

    login: str
    user_id: str
    scopes: tuple[str, ...] | None = None  # granted scopes, where the provider reports them on the API


# --- PKCE ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GitAccess:
    """How git uses the token: the username convention of the provider and the URL of its git server.
    None for tokens that are not git credentials (vault, oidc)."""

    username: str
    url: str


def pkce_verifier() -> Sensitive:
    """43-128 characters of [A-Za-z0-9-._~]; 64 here (48 random bytes)."""
    return Sensitive(secrets.token_urlsafe(48))


def pkce_challenge(verifier: Sensitive) -> str:
    """S256: BASE64URL(SHA256(ASCII(code_verifier))) without padding."""
    digest = hashlib.sha256(verifier.reveal()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- pending authorizations --------------------------------------------------------------------------
@dataclass(frozen=True)
class PendingAuthorization:
    namespace: str
    name: str
    uid: str
    user: str
    code_verifier: Sensitive
    redirect_uri: str
    expires_at: datetime
    provider_data: dict[str, Any] = field(default_factory=dict)  # e.g. Vault's client_nonce
    browser: str = ""  # browser_binding() of the flow cookie set by the browser that started the flow


def flow_nonce() -> str:
    """The random value of the flow cookie: only the browser that started a flow has it."""
    return secrets.token_urlsafe(32)


def browser_binding(nonce: str) -> str:
    """What the pending record keeps of the flow cookie: its SHA-256, never the cookie itself."""
    return hashlib.sha256(nonce.encode()).hexdigest()


def same_browser(record: PendingAuthorization, nonce: str | None) -> bool:
    return bool(record.browser) and bool(nonce) and hmac.compare_digest(record.browser, browser_binding(nonce or ""))


class StateRejected(Exception):
    """Why a callback's state is not accepted. `reason` is stable; the message is safe to show the user."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PendingAuthorizations:
    """In-memory, single-use records keyed by state. A state is `<nonce>.<hmac>` signed for one
    UserToken uid, so a forged one is rejected before any lookup, and a replayed one finds no record.

    In memory on purpose: an operator restart simply asks the user to click Connect again. Bounded, so
    a flood of Connect clicks cannot grow it without limit (the oldest records go first).
    """

    def __init__(self, signer: Signer, *, ttl: timedelta = timedelta(minutes=10), max_entries: int = 10_000) -> None:
        self._signer = signer
        self._ttl = ttl
        self._max = max_entries
        self._records: OrderedDict[str, PendingAuthorization] = OrderedDict()

    @property
    def ttl(self) -> timedelta:
        return self._ttl

    def new_state(self, *, uid: str, now: datetime) -> str:
        return self._signer.sign(STATE_PURPOSE, {"n": secrets.token_urlsafe(24), "u": uid}, expires=now + self._ttl)

    def put(self, state: str, record: PendingAuthorization) -> None:
        self._records[state] = record
        while len(self._records) > self._max:
            self._records.popitem(last=False)

    def take(self, state: str, *, now: datetime, signed: bool = True) -> PendingAuthorization:
        """Consume the record of `state` (single use). `signed=False` for states a provider minted itself
        (Vault's OIDC auth_url), which can only be looked up."""
        self._prune(now)
        if signed:
            try:
                self._signer.verify(STATE_PURPOSE, state, now=now)
            except BadSignature:
                raise StateRejected("ForgedState", "This sign-in response was not started here (invalid state). Start again from the connect page.") from None
            except ValueError:
                self._records.pop(state, None)
                raise StateRejected("ExpiredState", "This sign-in took too long and has expired. Start again from the connect page.") from None
        record = self._records.pop(state, None)
        if record is None:
            raise StateRejected("UnknownState", "This sign-in response was already used or has expired. Start again from the connect page.")
        if record.expires_at <= now:
            raise StateRejected("ExpiredState", "This sign-in took too long and has expired. Start again from the connect page.")
        return record

    def _prune(self, now: datetime) -> None:
        for state in [s for s, r in self._records.items() if r.expires_at <= now]:
            del self._records[state]

    def __len__(self) -> int:
        return len(self._records)
