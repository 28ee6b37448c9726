"""Bitbucket Server / Data Center (8.x+ incoming OAuth 2.0 application links).

OAuth at <host>/rest/oauth2/latest/authorize and /token (client credentials in the form body; PKCE S256;
refresh tokens). The authenticated user's name comes from /plugins/servlet/applinks/whoami (plain text),
details from /rest/api/latest/users/{slug}; SSH keys at /rest/ssh/latest/keys. No revocation endpoint for
OAuth tokens. Git over https takes the user's slug as username and the token as password.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from workspace_secrets.oauth.protocol import Identity, TokenSet
from workspace_secrets.oauth.protocol import GitAccess
from workspace_secrets.oauth.base import InvalidToken, OAuth2Base, UploadedKey, key_body


class BitbucketServer(OAuth2Base):
    type = "bitbucket-server"
    name = "Bitbucket Server"
    supports_pkce = True
    supports_ssh_keys = True
    supports_revocation = False
    git_username_is_login = True  # git-credentials carry the user's slug (git_access)

    def __init__(self, transport, *, host: str, clock=None, **_: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, **({"clock": clock} if clock else {}))
        self.web = host.rstrip("/")

    async def authorize_endpoint(self) -> str:
        return f"{self.web}/rest/oauth2/latest/authorize"

    async def token_endpoint(self) -> str:
        return f"{self.web}/rest/oauth2/latest/token"

    def default_scopes(self, *, add_ssh_key: bool) -> tuple[str, ...]:
        return ("REPO_WRITE",)

    async def identity(self, tokens: TokenSet) -> Identity:
        whoami = await self.api("GET", f"{self.web}/plugins/servlet/applinks/whoami", tokens, what="GET whoami")
        slug = whoami.body.decode("utf-8", "replace").strip()
        if not slug:  # whoami answers an empty body to anonymous requests
            raise InvalidToken(f"{self.name} did not recognize the token (whoami is anonymous)", status=401)
        user = (await self.api("GET", f"{self.web}/rest/api/latest/users/{quote(slug, safe='')}", tokens, what="GET user")).json() or {}
        return Identity(login=str(user.get("slug", slug)), user_id=str(user.get("id", "")))

    def git_access(self, identity: Identity) -> GitAccess:
        return GitAccess(username=identity.login, url=self.web)

    async def find_ssh_key(self, tokens: TokenSet, identity: Identity, public_key: str) -> UploadedKey | None:
        wanted = key_body(public_key)
        start = 0
        for _ in range(10):
            page = (await self.api("GET", f"{self.web}/rest/ssh/latest/keys?user={quote(identity.login, safe='')}&start={start}&limit=100",
                                   tokens, what="GET ssh keys")).json() or {}
            for key in page.get("values", ()):
                if key_body(str(key.get("text", ""))) == wanted:
                    return UploadedKey(id=str(key["id"]), title=str(key.get("label", "")))
            if page.get("isLastPage", True):
                return None
            start = int(page.get("nextPageStart", start + 100))
        return None

    async def add_ssh_key(self, tokens: TokenSet, identity: Identity, *, title: str, public_key: str) -> UploadedKey:
        response = await self.api("POST", f"{self.web}/rest/ssh/latest/keys", tokens, json={"text": key_body(public_key), "label": title},
                                  ok=(201,), what="POST ssh keys")
        key = response.json() or {}
        return UploadedKey(id=str(key["id"]), title=str(key.get("label", title)))

    async def delete_ssh_key(self, tokens: TokenSet, identity: Identity, key_id: str) -> None:
        await self.api("DELETE", f"{self.web}/rest/ssh/latest/keys/{quote(key_id, safe='')}", tokens, ok=(204, 404), what="DELETE ssh key")
