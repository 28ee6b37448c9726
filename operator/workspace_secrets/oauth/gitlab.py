"""GitLab.com and GitLab self-managed.

OAuth at /oauth/authorize and /oauth/token (PKCE S256 supported; errors as HTTP 400 JSON
`{"error": "invalid_grant", ...}`); access tokens live 2 h and a refresh rotates the pair (the old
refresh token stops working). `/oauth/token/info` reports the granted scopes; the REST API is /api/v4
(`GET /user`, `/user/keys`). Revocation: POST /oauth/revoke (RFC 7009) with the client's credentials.
"""

from __future__ import annotations

from typing import Any

from workspace_secrets.oauth.protocol import Identity, TokenSet
from workspace_secrets.oauth.protocol import GitAccess
from workspace_secrets.oauth.tools import GLAB
from workspace_secrets.runtime.http import Request
from workspace_secrets.oauth.base import ClientCredentials, UserKeysOAuth2, classify_api_error

PUBLIC = "https://gitlab.com"


class GitLab(UserKeysOAuth2):
    type = "gitlab"
    name = "GitLab"
    supports_pkce = True
    supports_device_flow = True  # GitLab 17.2+
    supports_ssh_keys = True
    supports_revocation = True
    git_username = "oauth2"
    workspace_tool = GLAB  # glab reads GLAB_CONFIG_DIR/config.yml

    def __init__(self, transport, *, host: str | None = None, clock=None, **_: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, **({"clock": clock} if clock else {}))
        self.web = (host or PUBLIC).rstrip("/")
        self.api_base = f"{self.web}/api/v4"

    async def authorize_endpoint(self) -> str:
        return f"{self.web}/oauth/authorize"

    async def token_endpoint(self) -> str:
        return f"{self.web}/oauth/token"

    async def device_endpoint(self) -> str | None:
        return f"{self.web}/oauth/authorize_device"

    def default_scopes(self, *, add_ssh_key: bool) -> tuple[str, ...]:
        # Adding and removing SSH keys needs the api scope; otherwise read the user, read/write repositories.
        return ("read_user", "read_repository", "write_repository") + (("api",) if add_ssh_key else ())

    async def identity(self, tokens: TokenSet) -> Identity:
        info = (await self.api("GET", f"{self.web}/oauth/token/info", tokens, what="GET /oauth/token/info")).json() or {}
        user = (await self.api("GET", f"{self.api_base}/user", tokens, what="GET /api/v4/user")).json() or {}
        scopes = info.get("scope", info.get("scopes"))
        return Identity(login=str(user.get("username", "")), user_id=str(user.get("id", "")),
                        scopes=tuple(scopes) if isinstance(scopes, list) else None)

    async def revoke(self, client: ClientCredentials | None, tokens: TokenSet) -> bool:
        if client is None:
            return False
        form = {"token": tokens.access_token.reveal_text(), "client_id": client.client_id}
        if client.client_secret is not None:
            form["client_secret"] = client.client_secret.reveal_text()
        response = await self._send(Request("POST", f"{self.web}/oauth/revoke", {"Accept": "application/json"}, form=form),
                                    what="token revocation")
        if response.status == 200:
            return True
        raise classify_api_error(self.name, "token revocation", response)

    def git_access(self, identity: Identity) -> GitAccess:
        return GitAccess(username=self.git_username, url=self.web)


class GitLabSelfManaged(GitLab):
    type = "gitlab-self-managed"
    name = "GitLab self-managed"

    def __init__(self, transport, *, host: str, clock=None, **kwargs: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, host=host, clock=clock, **kwargs)
