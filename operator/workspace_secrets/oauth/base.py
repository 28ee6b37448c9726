"""The small interface every OAuth provider implements, the errors they raise, and the RFC 6749 plumbing
most of them share (form-encoded token requests, token responses, bearer API calls).

Errors are classified for the controller, which decides by class only:
- GrantRejected: the grant (code or refresh token) is gone for good (invalid_grant, bad_refresh_token):
  the user must reconnect.
- InvalidToken: the API refused the access token (401): try a refresh, else reconnect.
- TemporaryFailure: 5xx, 429, rate limiting, network: retry later with backoff; nothing is invalid.
- ProviderMisconfigured: anything else a human must fix (invalid_client, redirect_uri mismatch, a 404 API).
Messages name the endpoint and the provider's error code, never a token.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

from workspace_secrets.oauth.protocol import Identity, TokenSet
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.oauth.protocol import GitAccess
from workspace_secrets.oauth.tools import Tool
from workspace_secrets.api.oauth_application import origin
from workspace_secrets.runtime.http import (CleartextRefused, Request, Response, ResponseTooLarge, TLSVerificationFailed, Transport, TransportError,
                                            tls_hint)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --- errors ----------------------------------------------------------------------------------------------
class ProviderError(Exception):
    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message[:500])
        self.code = code
        self.status = status


class GrantRejected(ProviderError):
    pass


class InvalidToken(ProviderError):
    pass


class TemporaryFailure(ProviderError):
    def __init__(self, message: str, *, code: str | None = None, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, code=code, status=status)
        self.retry_after = retry_after


class ProviderMisconfigured(ProviderError):
    pass


class Unsupported(ProviderError):
    pass


class AuthorizationPending(ProviderError):
    """Device flow: the user has not finished at the provider yet; poll again after the interval."""


class SlowDown(AuthorizationPending):
    """Device flow: polling too fast; add 5 s to the interval (RFC 8628 3.5)."""


# Token-endpoint error codes meaning "this code / refresh token is dead": reconnect.
GRANT_ERRORS = frozenset({"invalid_grant", "bad_refresh_token", "bad_verification_code", "expired_token", "invalid_token",
                          "access_denied"})
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TEMPORARY_ERRORS = frozenset({"temporarily_unavailable", "server_error", "slow_down"})
#: The code of the ProviderMisconfigured raised when the provider's TLS certificate does not verify.
CODE_TLS_VERIFICATION_FAILED = "tls_verification_failed"

# Floors and bounds on what a provider says about time, so that no answer can make a hot loop of requests,
# Secret writes and Events: device-flow polling at least every DEVICE_MIN_INTERVAL, a device code lives
# DEVICE_MIN_EXPIRY..DEVICE_MAX_EXPIRY, and an access token is taken to live at least MIN_TOKEN_LIFETIME
# (the schedule also keeps that long between two refreshes of one token).
DEVICE_MIN_INTERVAL = 5.0
DEVICE_MIN_EXPIRY = 60
DEVICE_MAX_EXPIRY = 1800
MIN_TOKEN_LIFETIME = 60


def same_origin(url: str, base: str) -> bool:
    """`url` is an absolute URL on exactly the origin of `base` (scheme, host and port), without credentials."""
    return bool(origin(url)) and origin(url) == origin(base) and "@" not in urlsplit(url).netloc


def _number(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


# --- values ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: Sensitive | None = None

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r})"


@dataclass(frozen=True)
class AuthorizationStart:
    """Where to send the browser. `state` is ours, unless the provider minted its own (Vault)."""

    url: str
    state: str
    state_is_ours: bool = True
    provider_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceAuthorization:
    """RFC 8628 device authorization: the user enters `user_code` at `verification_uri`."""

    device_code: Sensitive
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_at: datetime
    interval: float = 5.0

    def __repr__(self) -> str:
        return f"DeviceAuthorization(verification_uri={self.verification_uri!r}, expires_at={self.expires_at!r})"


@dataclass(frozen=True)
class UploadedKey:
    id: str
    title: str


# --- the interface ---------------------------------------------------------------------------------------
class OAuthProvider(Protocol):
    type: str
    supports_pkce: bool
    supports_device_flow: bool
    supports_ssh_keys: bool
    supports_revocation: bool
    #: The git username is the user's login at the provider (Bitbucket Server): git-credentials is written again
    #: once the login is known. Otherwise it is fixed (git_access), or the token is no git credential (None).
    git_username_is_login: bool
    #: The command-line tool a workspace uses with this provider's tokens (oauth/tools.py), or None.
    workspace_tool: Tool | None

    def default_scopes(self, *, add_ssh_key: bool) -> tuple[str, ...]: ...

    async def start_authorization(self, client: ClientCredentials | None, *, redirect_uri: str, state: str,
                                  code_challenge: str, scopes: tuple[str, ...]) -> AuthorizationStart: ...

    async def exchange_code(self, client: ClientCredentials | None, *, code: str, redirect_uri: str,
                            code_verifier: Sensitive, provider_data: Mapping[str, Any]) -> TokenSet: ...

    async def refresh(self, client: ClientCredentials | None, tokens: TokenSet) -> TokenSet: ...

    def can_refresh(self, tokens: TokenSet) -> bool:
        """Whether refresh() can extend this token (a refresh token, or Vault's renew-self)."""
        ...

    async def start_device_authorization(self, client: ClientCredentials | None, *, scopes: tuple[str, ...]) -> DeviceAuthorization: ...

    async def poll_device(self, client: ClientCredentials | None, device: DeviceAuthorization) -> TokenSet:
        """Raises AuthorizationPending (or SlowDown) until the user has approved."""
        ...

    async def identity(self, tokens: TokenSet) -> Identity: ...

    async def revoke(self, client: ClientCredentials | None, tokens: TokenSet) -> bool:
        """True if the provider revoked the grant (or already had); False if it has no revocation endpoint."""
        ...

    def git_access(self, identity: Identity) -> GitAccess | None: ...

    async def find_ssh_key(self, tokens: TokenSet, identity: Identity, public_key: str) -> UploadedKey | None: ...

    async def add_ssh_key(self, tokens: TokenSet, identity: Identity, *, title: str, public_key: str) -> UploadedKey: ...

    async def delete_ssh_key(self, tokens: TokenSet, identity: Identity, key_id: str) -> None: ...


# --- shared plumbing -------------------------------------------------------------------------------------
def key_body(public_key: str) -> str:
    """`type base64` of an OpenSSH public key line (providers compare keys without the comment)."""
    return " ".join(public_key.split()[:2])


class OAuth2Base:
    """RFC 6749 building blocks. Subclasses set endpoints and override the quirks."""

    type = "oauth2"
    supports_pkce = True
    supports_device_flow = False
    supports_ssh_keys = False
    supports_revocation = False
    git_username_is_login = False
    workspace_tool: Tool | None = None
    client_auth = "body"  # "body" (client_secret_post) or "basic" (client_secret_basic)
    name = "OAuth provider"

    def __init__(self, transport: Transport, *, clock: Clock = utcnow) -> None:
        self._transport = transport
        self._clock = clock

    # endpoints (override)
    async def authorize_endpoint(self) -> str:
        raise NotImplementedError

    async def token_endpoint(self) -> str:
        raise NotImplementedError

    def default_scopes(self, *, add_ssh_key: bool) -> tuple[str, ...]:
        return ()

    async def device_endpoint(self) -> str | None:
        return None

    def scope_separator(self) -> str:
        return " "

    # --- the authorization code flow ---
    async def start_authorization(self, client: ClientCredentials | None, *, redirect_uri: str, state: str,
                                  code_challenge: str, scopes: tuple[str, ...]) -> AuthorizationStart:
        assert client is not None
        params = {"response_type": "code", "client_id": client.client_id, "redirect_uri": redirect_uri, "state": state}
        if scopes:
            params["scope"] = self.scope_separator().join(scopes)
        if self.supports_pkce:
            params.update(code_challenge=code_challenge, code_challenge_method="S256")
        return AuthorizationStart(f"{await self.authorize_endpoint()}?{urlencode(params)}", state)

    async def exchange_code(self, client: ClientCredentials | None, *, code: str, redirect_uri: str,
                            code_verifier: Sensitive, provider_data: Mapping[str, Any]) -> TokenSet:
        params = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
        if self.supports_pkce:
            params["code_verifier"] = code_verifier.reveal_text()
        return await self._token_request(client, params, previous=None)

    def can_refresh(self, tokens: TokenSet) -> bool:
        return tokens.refresh_token is not None

    async def refresh(self, client: ClientCredentials | None, tokens: TokenSet) -> TokenSet:
        if tokens.refresh_token is None:
            raise GrantRejected(f"{self.name}: the token has no refresh token and cannot be refreshed", code="no_refresh_token")
        params = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token.reveal_text()}
        return await self._token_request(client, params, previous=tokens)

    async def revoke(self, client: ClientCredentials | None, tokens: TokenSet) -> bool:
        return False

    # --- the device flow (RFC 8628) ---
    async def start_device_authorization(self, client: ClientCredentials | None, *, scopes: tuple[str, ...]) -> DeviceAuthorization:
        endpoint = await self.device_endpoint()
        if endpoint is None or client is None:
            raise Unsupported(f"{self.name} does not offer the device flow")
        form = {"client_id": client.client_id}
        if scopes:
            form["scope"] = self.scope_separator().join(scopes)
        basic = None
        if self.client_auth == "basic" and client.client_secret is not None:
            basic = (client.client_id, client.client_secret.reveal_text())
            del form["client_id"]
        response = await self._send(Request("POST", endpoint, {"Accept": "application/json"}, form=form, basic_auth=basic),
                                    what="device authorization endpoint")
        payload = response.json()
        if response.status != 200 or not isinstance(payload, dict) or "device_code" not in payload:
            raise classify_token_error(self.name, response, payload if isinstance(payload, dict) else {})
        verification = str(payload.get("verification_uri") or payload.get("verification_url") or "")
        complete = payload.get("verification_uri_complete")
        # The user is sent there from the connect page: only to the provider's own origin.
        for url in (verification, complete):
            if url is not None and not same_origin(str(url), endpoint):
                raise ProviderMisconfigured(f"{self.name} device authorization answered a verification page outside {origin(endpoint)}")
        expires_in = min(max(_number(payload.get("expires_in"), 600), DEVICE_MIN_EXPIRY), DEVICE_MAX_EXPIRY)
        return DeviceAuthorization(
            device_code=Sensitive(str(payload["device_code"])),
            user_code=str(payload["user_code"])[:64],
            verification_uri=verification,
            verification_uri_complete=str(complete) if complete is not None else None,
            expires_at=self._clock() + timedelta(seconds=expires_in),
            interval=max(_number(payload.get("interval"), DEVICE_MIN_INTERVAL), DEVICE_MIN_INTERVAL),
        )

    async def poll_device(self, client: ClientCredentials | None, device: DeviceAuthorization) -> TokenSet:
        params = {"grant_type": DEVICE_CODE_GRANT, "device_code": device.device_code.reveal_text()}
        try:
            return await self._token_request(client, params, previous=None)
        except ProviderError as exc:
            if exc.code == "authorization_pending":
                raise AuthorizationPending(str(exc), code=exc.code) from None
            if exc.code == "slow_down":
                raise SlowDown(str(exc), code=exc.code) from None
            raise

    def authenticate(self, client: ClientCredentials, form: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, str] | None]:
        """The client's authentication at the token and revocation endpoints: HTTP Basic (client_secret_basic), or
        client_id and client_secret in the form (client_secret_post). Returns (the form, the Basic credentials)."""
        form = dict(form)
        if self.client_auth == "basic" and client.client_secret is not None:
            return form, (client.client_id, client.client_secret.reveal_text())
        form["client_id"] = client.client_id
        if client.client_secret is not None:
            form["client_secret"] = client.client_secret.reveal_text()
        return form, None

    async def _token_request(self, client: ClientCredentials | None, params: dict[str, str], *, previous: TokenSet | None) -> TokenSet:
        assert client is not None
        form, basic = self.authenticate(client, params)
        url = await self.token_endpoint()
        response = await self._send(Request("POST", url, {"Accept": "application/json"}, form=form, basic_auth=basic), what="token endpoint")
        return self.parse_token_response(response, previous=previous)

    def parse_token_response(self, response: Response, *, previous: TokenSet | None) -> TokenSet:
        payload = response.json()
        if not isinstance(payload, dict):
            payload = response.form() if response.status == 200 else {}
        error = payload.get("error")
        if error or response.status != 200 or "access_token" not in payload:
            raise classify_token_error(self.name, response, payload)
        return self.token_set(payload, previous=previous)

    def token_set(self, payload: Mapping[str, Any], *, previous: TokenSet | None) -> TokenSet:
        expires_in = payload.get("expires_in")
        expires_at = None
        if expires_in not in (None, "", 0, "0"):
            expires_at = self._clock() + timedelta(seconds=max(_number(expires_in, MIN_TOKEN_LIFETIME), MIN_TOKEN_LIFETIME))
        refresh = payload.get("refresh_token")
        scope = payload.get("scope", payload.get("scopes"))
        scopes = tuple(s for s in str(scope).replace(",", " ").split() if s) if scope is not None else None
        return TokenSet(
            access_token=Sensitive(str(payload["access_token"])),
            # A provider that does not rotate refresh tokens omits it on refresh: keep the one we have.
            refresh_token=Sensitive(str(refresh)) if refresh else (previous.refresh_token if previous else None),
            token_type=str(payload.get("token_type") or "bearer").lower(),
            expires_at=expires_at,
            scopes=scopes if scopes is not None else (previous.scopes if previous else None),
        )

    # --- API calls ---
    def api_headers(self, tokens: TokenSet) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.access_token.reveal_text()}", "Accept": "application/json"}

    async def api(self, method: str, url: str, tokens: TokenSet, *, json: Any = None, ok: tuple[int, ...] = (200,),
                  what: str) -> Response:
        response = await self._send(Request(method, url, self.api_headers(tokens), json=json), what=what)
        if response.status in ok:
            return response
        raise classify_api_error(self.name, what, response)

    async def _send(self, request: Request, *, what: str) -> Response:
        try:
            return await self._transport.send(request)
        except ResponseTooLarge as exc:  # not an outage: retrying would only read it again
            raise ProviderMisconfigured(f"{self.name} {what} refused ({exc})") from None
        except CleartextRefused as exc:  # plain http off loopback: nothing was sent, a human fixes the URL
            raise ProviderMisconfigured(f"{self.name} {what} not sent ({exc})") from None
        except TLSVerificationFailed as exc:  # not an outage either: a human fixes the trust
            raise ProviderMisconfigured(f"{self.name} {what}: {tls_hint(exc.origin, exc.reason, per_application=True)}",
                                        code=CODE_TLS_VERIFICATION_FAILED) from None
        except TransportError as exc:
            raise TemporaryFailure(f"{self.name} {what} unreachable ({exc})", code="network") from None

    def git_access(self, identity: Identity) -> GitAccess | None:
        return None

    async def find_ssh_key(self, tokens: TokenSet, identity: Identity, public_key: str) -> UploadedKey | None:
        raise Unsupported(f"{self.name} has no SSH key API")

    async def add_ssh_key(self, tokens: TokenSet, identity: Identity, *, title: str, public_key: str) -> UploadedKey:
        raise Unsupported(f"{self.name} has no SSH key API")

    async def delete_ssh_key(self, tokens: TokenSet, identity: Identity, key_id: str) -> None:
        raise Unsupported(f"{self.name} has no SSH key API")


class UserKeysOAuth2(OAuth2Base):
    """The user's SSH keys at `{api_base}/user/keys`: the same contract on GitHub (REST v3) and GitLab (API v4) --
    a list paged with `page`/`per_page` (at most 100 a page), title and key in, 201 with the key's id out;
    DELETE answers 204, or 404 when the key is already gone."""

    api_base: str
    #: Pages read at most when looking for a key (1,000 keys): a user with more is not served better by reading on.
    max_key_pages = 10

    async def find_ssh_key(self, tokens: TokenSet, identity: Identity, public_key: str) -> UploadedKey | None:
        wanted = key_body(public_key)
        for page in range(1, self.max_key_pages + 1):
            response = await self.api("GET", f"{self.api_base}/user/keys?per_page=100&page={page}", tokens, what="GET /user/keys")
            keys = response.json() or []
            for key in keys:
                if key_body(str(key.get("key", ""))) == wanted:
                    return UploadedKey(id=str(key["id"]), title=str(key.get("title", "")))
            if len(keys) < 100:
                return None
        return None

    async def add_ssh_key(self, tokens: TokenSet, identity: Identity, *, title: str, public_key: str) -> UploadedKey:
        response = await self.api("POST", f"{self.api_base}/user/keys", tokens, json={"title": title, "key": key_body(public_key)},
                                  ok=(201,), what="POST /user/keys")
        key = response.json() or {}
        return UploadedKey(id=str(key["id"]), title=str(key.get("title", title)))

    async def delete_ssh_key(self, tokens: TokenSet, identity: Identity, key_id: str) -> None:
        await self.api("DELETE", f"{self.api_base}/user/keys/{key_id}", tokens, ok=(204, 404), what="DELETE /user/keys")


def _retry_after(response: Response) -> float | None:
    value = response.header("retry-after")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _description(payload: Mapping[str, Any]) -> str:
    text = payload.get("error_description") or payload.get("message") or payload.get("errors") or ""
    if isinstance(text, list):
        text = "; ".join(str(t) for t in text)
    elif isinstance(text, dict):
        text = text.get("message", "")
    return str(text)[:200]


def classify_token_error(name: str, response: Response, payload: Mapping[str, Any]) -> ProviderError:
    error = str(payload.get("error") or "")
    detail = _description(payload)
    message = f"{name} token endpoint answered {response.status}" + (f" {error}" if error else "") + (f": {detail}" if detail else "")
    if response.status >= 500 or response.status == 429 or error in TEMPORARY_ERRORS:
        return TemporaryFailure(message, code=error or None, status=response.status, retry_after=_retry_after(response))
    if error in GRANT_ERRORS:
        return GrantRejected(message, code=error, status=response.status)
    return ProviderMisconfigured(message, code=error or None, status=response.status)


def is_rate_limited(response: Response) -> bool:
    """A 403/429 that says 'slow down' is not a verdict on the token (GitHub's x-ratelimit-remaining: 0,
    secondary limits with retry-after)."""
    if response.status == 429:
        return True
    return response.status == 403 and (response.header("x-ratelimit-remaining") == "0" or response.header("retry-after") is not None)


def classify_api_error(name: str, what: str, response: Response) -> ProviderError:
    payload = response.json()
    detail = _description(payload) if isinstance(payload, dict) else ""
    message = f"{name} {what} answered {response.status}" + (f": {detail}" if detail else "")
    if response.status >= 500 or is_rate_limited(response):
        return TemporaryFailure(message, status=response.status, retry_after=_retry_after(response))
    if response.status == 401:
        return InvalidToken(message, status=401)
    return ProviderMisconfigured(message, status=response.status)
