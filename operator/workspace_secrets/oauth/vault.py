"""HashiCorp Vault (or OpenBao): a Vault token obtained through Vault's OIDC auth method.

The browser goes to the identity provider through the URL Vault mints (`auth/<mount>/oidc/auth_url`, with
Vault's own state and nonce); the identity provider redirects to the operator's callback, which hands
state and code to `auth/<mount>/oidc/callback` and receives a Vault token. "Refresh" is
`auth/token/renew-self` (extends the lease until the token's max TTL), validation is
`auth/token/lookup-self`, revocation `auth/token/revoke-self`. Vault answers a dead token with 403
"permission denied".
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from workspace_secrets.oauth.protocol import Identity, TokenSet
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.oauth.tools import VAULT
from workspace_secrets.runtime.http import Request, Response
from workspace_secrets.oauth.base import (AuthorizationStart, ClientCredentials, GrantRejected, InvalidToken, OAuth2Base,
                                          ProviderMisconfigured, TemporaryFailure, _description)


class Vault(OAuth2Base):
    type = "vault"
    name = "Vault"
    supports_pkce = False  # Vault runs PKCE with the identity provider itself; we bind with client_nonce
    supports_revocation = True
    workspace_tool = VAULT  # VAULT_ADDR; the token is a file of the workspace Secret

    def __init__(self, transport, *, host: str, mount: str = "oidc", role: str | None = None, clock=None, **_: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, **({"clock": clock} if clock else {}))
        self.addr = host.rstrip("/")
        self.mount = mount.strip("/")
        self.role = role

    def _url(self, path: str) -> str:
        return f"{self.addr}/v1/{path}"

    def _error(self, what: str, response: Response) -> Exception:
        payload = response.json()
        detail = _description(payload) if isinstance(payload, dict) else ""
        message = f"Vault {what} answered {response.status}" + (f": {detail}" if detail else "")
        if response.status >= 500 or response.status == 429:
            return TemporaryFailure(message, status=response.status)
        if response.status == 403:  # Vault's answer to an expired or revoked token
            return InvalidToken(message, status=403)
        return ProviderMisconfigured(message, status=response.status)

    async def start_authorization(self, client: ClientCredentials | None, *, redirect_uri: str, state: str,
                                  code_challenge: str, scopes: tuple[str, ...]) -> AuthorizationStart:
        nonce = secrets.token_urlsafe(24)
        body: dict[str, Any] = {"redirect_uri": redirect_uri, "client_nonce": nonce}
        if self.role:
            body["role"] = self.role
        response = await self._send(Request("PUT", self._url(f"auth/{self.mount}/oidc/auth_url"), json=body), what="auth_url")
        if response.status != 200:
            raise self._error(f"auth/{self.mount}/oidc/auth_url", response)
        auth_url = ((response.json() or {}).get("data") or {}).get("auth_url") or ""
        vault_state = (parse_qs(urlsplit(auth_url).query).get("state") or [""])[0]
        if not auth_url or not vault_state:
            raise ProviderMisconfigured(
                f"Vault returned no auth_url for role {self.role or '(default_role)'}: add {redirect_uri} to the role's allowed_redirect_uris")
        return AuthorizationStart(auth_url, vault_state, state_is_ours=False, provider_data={"client_nonce": nonce})

    async def exchange_code(self, client: ClientCredentials | None, *, code: str, redirect_uri: str,
                            code_verifier: Sensitive, provider_data: Mapping[str, Any]) -> TokenSet:
        query = urlencode({"state": provider_data["state"], "code": code, "client_nonce": provider_data["client_nonce"]})
        response = await self._send(Request("GET", self._url(f"auth/{self.mount}/oidc/callback?{query}")), what="oidc callback")
        if response.status != 200:
            error = self._error(f"auth/{self.mount}/oidc/callback", response)
            if response.status == 400:  # an expired or already-used state/code: only a new login helps
                raise GrantRejected(str(error), code="invalid_grant", status=400)
            raise error
        return self._auth_tokens((response.json() or {}).get("auth") or {})

    def _auth_tokens(self, auth: Mapping[str, Any], previous: TokenSet | None = None) -> TokenSet:
        token = auth.get("client_token") or (previous.access_token.reveal_text() if previous else None)
        if not token:
            raise ProviderMisconfigured("Vault's answer had no client_token")
        lease = int(auth.get("lease_duration") or 0)
        return TokenSet(
            access_token=Sensitive(token),
            token_type="vault",
            expires_at=self._clock() + timedelta(seconds=lease) if lease else None,
            scopes=tuple(auth.get("policies") or ()),
            renewable=bool(auth.get("renewable")),
        )

    def _token_headers(self, tokens: TokenSet) -> dict[str, str]:
        return {"X-Vault-Token": tokens.access_token.reveal_text()}

    def can_refresh(self, tokens: TokenSet) -> bool:
        return True  # renew-self says whether the token can be extended (non-renewable or at max TTL: rejected)

    async def refresh(self, client: ClientCredentials | None, tokens: TokenSet) -> TokenSet:
        response = await self._send(Request("POST", self._url("auth/token/renew-self"), self._token_headers(tokens), json={}),
                                    what="renew-self")
        if response.status != 200:
            error = self._error("auth/token/renew-self", response)
            if isinstance(error, InvalidToken) or response.status == 400:  # expired, revoked, or not renewable
                raise GrantRejected(str(error), code="invalid_token", status=response.status)
            raise error
        renewed = self._auth_tokens((response.json() or {}).get("auth") or {}, previous=tokens)
        if tokens.expires_at is not None and renewed.expires_at is not None and renewed.expires_at <= tokens.expires_at:
            # At its max TTL Vault renews no further: the token will lapse, the user must log in again.
            raise GrantRejected("Vault token reached its max TTL and cannot be renewed further", code="max_ttl")
        return renewed

    async def identity(self, tokens: TokenSet) -> Identity:
        response = await self._send(Request("GET", self._url("auth/token/lookup-self"), self._token_headers(tokens)), what="lookup-self")
        if response.status != 200:
            raise self._error("auth/token/lookup-self", response)
        data = (response.json() or {}).get("data") or {}
        return Identity(login=str(data.get("display_name", "")), user_id=str(data.get("entity_id") or data.get("accessor", "")),
                        scopes=tuple(data.get("policies") or ()))

    async def revoke(self, client: ClientCredentials | None, tokens: TokenSet) -> bool:
        response = await self._send(Request("POST", self._url("auth/token/revoke-self"), self._token_headers(tokens), json={}),
                                    what="revoke-self")
        if response.status in (200, 204, 403):  # 403: already invalid
            return True
        raise self._error("auth/token/revoke-self", response)


def expires_in(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else (moment - now).total_seconds()
