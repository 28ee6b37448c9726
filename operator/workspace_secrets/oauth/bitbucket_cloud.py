"""Bitbucket Cloud.

OAuth 2.0 consumers: /site/oauth2/authorize and /site/oauth2/access_token with the client authenticated
by HTTP Basic (client_id:secret); scopes are fixed on the consumer (the token response lists them in
`scopes`); access tokens live 2 h; refresh tokens do not rotate. No PKCE and no revocation endpoint.
API at api.bitbucket.org/2.0: `GET /user` (uuid, username), `/users/{uuid}/ssh-keys`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from workspace_secrets.oauth.protocol import Identity, TokenSet
from workspace_secrets.oauth.protocol import GitAccess
from workspace_secrets.oauth.base import OAuth2Base, UploadedKey, key_body

PUBLIC_WEB = "https://bitbucket.org"
PUBLIC_API = "https://api.bitbucket.org/2.0"


class BitbucketCloud(OAuth2Base):
    type = "bitbucket-cloud"
    name = "Bitbucket Cloud"
    supports_pkce = False  # not offered by Bitbucket Cloud; the single-use state still binds the callback
    supports_ssh_keys = True
    supports_revocation = False
    client_auth = "basic"
    git_username = "x-token-auth"

    def __init__(self, transport, *, host: str | None = None, clock=None, **_: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, **({"clock": clock} if clock else {}))
        self.web = (host or PUBLIC_WEB).rstrip("/")
        self.api_base = PUBLIC_API if host is None else f"{self.web}/2.0"

    async def authorize_endpoint(self) -> str:
        return f"{self.web}/site/oauth2/authorize"

    async def token_endpoint(self) -> str:
        return f"{self.web}/site/oauth2/access_token"

    async def identity(self, tokens: TokenSet) -> Identity:
        user = (await self.api("GET", f"{self.api_base}/user", tokens, what="GET /2.0/user")).json() or {}
        return Identity(login=str(user.get("username", "")), user_id=str(user.get("uuid", "")))

    def git_access(self, identity: Identity) -> GitAccess:
        return GitAccess(username=self.git_username, url=self.web)

    def _keys_url(self, identity: Identity) -> str:
        return f"{self.api_base}/users/{quote(identity.user_id, safe='')}/ssh-keys"

    async def find_ssh_key(self, tokens: TokenSet, identity: Identity, public_key: str) -> UploadedKey | None:
        wanted = key_body(public_key)
        url: str | None = f"{self._keys_url(identity)}?pagelen=100"
        for _ in range(10):
            if url is None:
                break
            page = (await self.api("GET", url, tokens, what="GET ssh-keys")).json() or {}
            for key in page.get("values", ()):
                if key_body(str(key.get("key", ""))) == wanted:
                    return UploadedKey(id=str(key["uuid"]), title=str(key.get("label", "")))
            url = page.get("next")
        return None

    async def add_ssh_key(self, tokens: TokenSet, identity: Identity, *, title: str, public_key: str) -> UploadedKey:
        response = await self.api("POST", self._keys_url(identity), tokens, json={"key": key_body(public_key), "label": title},
                                  ok=(201,), what="POST ssh-keys")
        key = response.json() or {}
        return UploadedKey(id=str(key["uuid"]), title=str(key.get("label", title)))

    async def delete_ssh_key(self, tokens: TokenSet, identity: Identity, key_id: str) -> None:
        await self.api("DELETE", f"{self._keys_url(identity)}/{quote(key_id, safe='')}", tokens, ok=(204, 404), what="DELETE ssh-keys")
