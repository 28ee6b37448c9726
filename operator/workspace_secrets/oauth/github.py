"""GitHub and GitHub Enterprise Server.

Quirks: the token endpoint (`/login/oauth/access_token`) answers form-encoded unless sent
`Accept: application/json`, and reports errors with HTTP 200 and an `error` field (bad_verification_code,
bad_refresh_token, incorrect_client_credentials, redirect_uri_mismatch). GitHub App user tokens expire
after 8 h and come with a single-use refresh token (rotated on every refresh); OAuth App tokens do not
expire. The API is at api.github.com (Enterprise: <host>/api/v3); granted scopes come back in the
`X-OAuth-Scopes` header; rate limiting is a 403 with `x-ratelimit-remaining: 0` or a 429.
Revocation: DELETE /applications/{client_id}/token with the client's Basic auth.
"""

from __future__ import annotations

from typing import Any

from workspace_secrets.oauth.protocol import Identity, TokenSet
from workspace_secrets.oauth.protocol import GitAccess
from workspace_secrets.oauth.base import ClientCredentials, UserKeysOAuth2, classify_api_error
from workspace_secrets.oauth.tools import GH
from workspace_secrets.runtime.http import Request

PUBLIC_WEB = "https://github.com"
PUBLIC_API = "https://api.github.com"
API_VERSION = "2022-11-28"


class GitHub(UserKeysOAuth2):
    type = "github"
    name = "GitHub"
    supports_pkce = True  # GitHub accepts code_challenge (S256) on /login/oauth/authorize
    supports_device_flow = True
    supports_ssh_keys = True
    supports_revocation = True
    # The git username convention: GitHub takes any username with a token as the password;
    # x-access-token is the one GitHub documents for app tokens.
    git_username = "x-access-token"
    workspace_tool = GH  # gh reads GH_CONFIG_DIR/hosts.yml

    def __init__(self, transport, *, host: str | None = None, clock=None, **_: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, **({"clock": clock} if clock else {}))
        self.web = (host or PUBLIC_WEB).rstrip("/")
        # A host given for type github (a test double or a proxy) is laid out like Enterprise.
        self.api_base = PUBLIC_API if host is None else f"{self.web}/api/v3"

    async def authorize_endpoint(self) -> str:
        return f"{self.web}/login/oauth/authorize"

    async def token_endpoint(self) -> str:
        return f"{self.web}/login/oauth/access_token"

    async def device_endpoint(self) -> str | None:
        return f"{self.web}/login/device/code"

    def default_scopes(self, *, add_ssh_key: bool) -> tuple[str, ...]:
        return ("repo", "read:user") + (("admin:public_key",) if add_ssh_key else ())

    def api_headers(self, tokens: TokenSet) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.access_token.reveal_text()}",
                "Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION}

    async def identity(self, tokens: TokenSet) -> Identity:
        response = await self.api("GET", f"{self.api_base}/user", tokens, what="GET /user")
        user = response.json() or {}
        header = response.header("x-oauth-scopes")
        scopes = tuple(s.strip() for s in header.split(",") if s.strip()) if header is not None else None
        return Identity(login=str(user.get("login", "")), user_id=str(user.get("id", "")), scopes=scopes)

    async def revoke(self, client: ClientCredentials | None, tokens: TokenSet) -> bool:
        if client is None or client.client_secret is None:
            return False
        response = await self._send(Request(
            "DELETE", f"{self.api_base}/applications/{client.client_id}/token",
            {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": API_VERSION},
            json={"access_token": tokens.access_token.reveal_text()},
            basic_auth=(client.client_id, client.client_secret.reveal_text()),
        ), what="token revocation")
        if response.status in (204, 404):  # 404: GitHub no longer knows the token: nothing left to revoke
            return True
        raise classify_api_error(self.name, "token revocation", response)

    def git_access(self, identity: Identity) -> GitAccess:
        return GitAccess(username=self.git_username, url=self.web)


class GitHubEnterprise(GitHub):
    """GitHub Enterprise Server: the same API under <host>/api/v3 and OAuth under <host>/login/oauth."""

    type = "github-enterprise"
    name = "GitHub Enterprise"

    def __init__(self, transport, *, host: str, clock=None, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, host=host, clock=clock, **kwargs)
