"""Any OpenID Connect / OAuth 2.0 authorization server with discovery (`<issuer>/.well-known/openid-configuration`):
authorization code with PKCE, refresh (rotating or not), RFC 7009 revocation, userinfo for the identity.
Also the provider the tests drive against a real certified authorization server (panva's oidc-provider)."""

from __future__ import annotations

from typing import Any

from workspace_secrets.oauth.protocol import Identity, TokenSet
from workspace_secrets.api.loopback import is_loopback_http
from workspace_secrets.runtime.http import Request
from workspace_secrets.oauth.base import ClientCredentials, OAuth2Base, ProviderMisconfigured, classify_api_error, same_origin

# Every endpoint of the discovery document the operator may call or send a browser to.
ENDPOINTS = ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "revocation_endpoint",
             "device_authorization_endpoint")


class OIDC(OAuth2Base):
    type = "oidc"
    name = "OIDC provider"
    supports_pkce = True
    supports_device_flow = True  # when discovery lists a device_authorization_endpoint
    supports_revocation = True

    def __init__(self, transport, *, host: str, clock=None, **_: Any) -> None:  # type: ignore[no-untyped-def]
        super().__init__(transport, **({"clock": clock} if clock else {}))
        self.issuer = host.rstrip("/")
        self._metadata: dict[str, Any] | None = None

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is None:
            if not (self.issuer.startswith("https://") or is_loopback_http(self.issuer)):
                raise ProviderMisconfigured(f"{self.name} issuer must be https (http only on a loopback address)")
            url = f"{self.issuer}/.well-known/openid-configuration"
            response = await self._send(Request("GET", url, {"Accept": "application/json"}), what="discovery")
            document = response.json()
            if response.status != 200 or not isinstance(document, dict):
                raise classify_api_error(self.name, "discovery", response) if response.status != 200 else ProviderMisconfigured(
                    f"{self.name} discovery at {url} did not return JSON")
            for endpoint in ("authorization_endpoint", "token_endpoint"):
                if not isinstance(document.get(endpoint), str):
                    raise ProviderMisconfigured(f"{self.name} discovery document has no {endpoint}")
            if str(document.get("issuer", "")).rstrip("/") != self.issuer:
                raise ProviderMisconfigured(f"{self.name} discovery at {url} names another issuer than {self.issuer}")
            # Requests (with the client secret and users' tokens) go to the issuer's origin only: a discovery
            # document cannot point them at another host, an internal address or plain http. The issuer is
            # https (the OAuthApplication's host allows http for loopback only), so the same origin is https too.
            for endpoint in ENDPOINTS:
                value = document.get(endpoint)
                if value is not None and (not isinstance(value, str) or not same_origin(value, self.issuer)):
                    raise ProviderMisconfigured(f"{self.name} discovery: {endpoint} is not on the issuer's origin {self.issuer}")
            methods = document.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
            self.client_auth = "basic" if "client_secret_basic" in methods else "body"
            self._metadata = document
        return self._metadata

    async def authorize_endpoint(self) -> str:
        return (await self.metadata())["authorization_endpoint"]

    async def token_endpoint(self) -> str:
        return (await self.metadata())["token_endpoint"]

    async def device_endpoint(self) -> str | None:
        return (await self.metadata()).get("device_authorization_endpoint")

    def default_scopes(self, *, add_ssh_key: bool) -> tuple[str, ...]:
        return ("openid", "profile", "offline_access")

    async def start_authorization(self, client, *, redirect_uri, state, code_challenge, scopes):  # type: ignore[no-untyped-def]
        start = await super().start_authorization(client, redirect_uri=redirect_uri, state=state,
                                                  code_challenge=code_challenge, scopes=scopes)
        if "offline_access" in scopes:  # OIDC Core 11: offline_access is only honoured with prompt=consent
            return type(start)(start.url + "&prompt=consent", start.state)
        return start

    async def identity(self, tokens: TokenSet) -> Identity:
        userinfo = (await self.metadata()).get("userinfo_endpoint")
        if not userinfo:
            raise ProviderMisconfigured(f"{self.name} has no userinfo_endpoint to validate tokens with")
        claims = (await self.api("GET", userinfo, tokens, what="userinfo")).json() or {}
        login = claims.get("preferred_username") or claims.get("email") or claims.get("sub", "")
        return Identity(login=str(login), user_id=str(claims.get("sub", "")))

    async def revoke(self, client: ClientCredentials | None, tokens: TokenSet) -> bool:
        endpoint = (await self.metadata()).get("revocation_endpoint")
        if not endpoint or client is None:
            return False
        # Revoking the refresh token ends the whole grant (RFC 7009 2.1); the access token goes with it.
        token, hint = ((tokens.refresh_token, "refresh_token") if tokens.refresh_token else (tokens.access_token, "access_token"))
        form, basic = self.authenticate(client, {"token": token.reveal_text(), "token_type_hint": hint})
        response = await self._send(Request("POST", endpoint, {"Accept": "application/json"}, form=form, basic_auth=basic),
                                    what="revocation endpoint")
        if response.status == 200:
            return True
        raise classify_api_error(self.name, "revocation endpoint", response)
