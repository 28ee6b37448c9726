"""Each provider's request building and response parsing, against a mock transport (no network): the
endpoints and parameters sent, the quirks of each token endpoint, error classification, identity."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest

from workspace_secrets.oauth.protocol import TokenSet
from workspace_secrets.runtime.sensitive import Sensitive
from fakes.http import MockTransport, json_response
from workspace_secrets.runtime.http import Request, Response
from workspace_secrets.oauth.base import ClientCredentials, GrantRejected, InvalidToken, ProviderMisconfigured, TemporaryFailure
from workspace_secrets.oauth.bitbucket_cloud import BitbucketCloud
from workspace_secrets.oauth.bitbucket_server import BitbucketServer
from workspace_secrets.oauth.github import GitHub, GitHubEnterprise
from workspace_secrets.oauth.gitlab import GitLab, GitLabSelfManaged
from workspace_secrets.oauth.oidc import OIDC
from workspace_secrets.oauth.registry import PROVIDERS
from workspace_secrets.oauth.vault import Vault

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
CLIENT = ClientCredentials("client-1", Sensitive("secret-1"))
TOKENS = TokenSet(Sensitive("at-1"), Sensitive("rt-1"), expires_at=NOW + timedelta(hours=1))


def run(coro):
    return asyncio.run(coro)


def clock() -> datetime:
    return NOW


def form_of(request: Request) -> dict[str, str]:
    return dict(request.form or {})


def test_every_spec_type_has_a_provider():
    from workspace_secrets.api.oauth_application import PROVIDER_TYPES

    assert set(PROVIDERS) == set(PROVIDER_TYPES)


# --- GitHub ----------------------------------------------------------------------------------------
def test_github_authorize_url_has_pkce_state_and_comma_free_scopes():
    gh = GitHub(MockTransport(lambda r: Response(500)))
    start = run(gh.start_authorization(CLIENT, redirect_uri="https://ops/oauth/callback", state="st",
                                       code_challenge="ch", scopes=("repo", "read:user")))
    parts = urlsplit(start.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://github.com/login/oauth/authorize"
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert q == {"response_type": "code", "client_id": "client-1", "redirect_uri": "https://ops/oauth/callback", "state": "st",
                 "scope": "repo read:user", "code_challenge": "ch", "code_challenge_method": "S256"}


def test_github_token_exchange_asks_for_json_and_parses_an_expiring_token():
    transport = MockTransport(lambda r: json_response(200, {
        "access_token": "ghu_x", "expires_in": 28800, "refresh_token": "ghr_y", "refresh_token_expires_in": 15897600,
        "scope": "repo,read:user", "token_type": "bearer"}))
    tokens = run(GitHub(transport, clock=clock).exchange_code(CLIENT, code="c0de", redirect_uri="https://ops/cb",
                                                              code_verifier=Sensitive("v" * 43), provider_data={}))
    request = transport.requests[0]
    assert (request.method, request.url) == ("POST", "https://github.com/login/oauth/access_token")
    assert request.headers["Accept"] == "application/json"
    assert form_of(request) == {"grant_type": "authorization_code", "code": "c0de", "redirect_uri": "https://ops/cb",
                                "code_verifier": "v" * 43, "client_id": "client-1", "client_secret": "secret-1"}
    assert tokens.access_token.reveal_text() == "ghu_x" and tokens.refresh_token.reveal_text() == "ghr_y"
    assert tokens.expires_at == NOW + timedelta(hours=8) and tokens.scopes == ("repo", "read:user")


@pytest.mark.parametrize("error,kind", [("bad_refresh_token", GrantRejected), ("bad_verification_code", GrantRejected),
                                        ("incorrect_client_credentials", ProviderMisconfigured),
                                        ("redirect_uri_mismatch", ProviderMisconfigured)])
def test_github_errors_come_with_http_200(error, kind):
    transport = MockTransport(lambda r: json_response(200, {"error": error, "error_description": "nope"}))
    with pytest.raises(kind) as raised:
        run(GitHub(transport).refresh(CLIENT, TOKENS))
    assert raised.value.code == error and "rt-1" not in str(raised.value)


def test_github_form_encoded_answer_is_understood_too():
    transport = MockTransport(lambda r: Response(200, {"content-type": "application/x-www-form-urlencoded"},
                                                 b"access_token=gho_z&scope=repo&token_type=bearer"))
    tokens = run(GitHub(transport).refresh(CLIENT, TOKENS))
    assert tokens.access_token.reveal_text() == "gho_z" and tokens.expires_at is None
    assert tokens.refresh_token.reveal_text() == "rt-1"  # an OAuth App: no rotation, keep the one we have


def test_github_identity_reads_login_and_scopes_header_and_enterprise_uses_api_v3():
    transport = MockTransport(lambda r: json_response(200, {"login": "octo", "id": 7}, {"X-OAuth-Scopes": "repo, admin:public_key"}))
    identity = run(GitHubEnterprise(transport, host="https://ghe.example.com").identity(TOKENS))
    request = transport.requests[0]
    assert request.url == "https://ghe.example.com/api/v3/user"
    assert request.headers["Authorization"] == "Bearer at-1" and request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert (identity.login, identity.user_id, identity.scopes) == ("octo", "7", ("repo", "admin:public_key"))
    assert GitHub(transport).api_base == "https://api.github.com"


@pytest.mark.parametrize("response,kind", [
    (json_response(401, {"message": "Bad credentials"}), InvalidToken),
    (json_response(403, {"message": "API rate limit exceeded"}, {"x-ratelimit-remaining": "0"}), TemporaryFailure),
    (json_response(403, {"message": "secondary rate limit"}, {"retry-after": "30"}), TemporaryFailure),
    (json_response(429, {}), TemporaryFailure),
    (json_response(502, {}), TemporaryFailure),
    (json_response(403, {"message": "Resource not accessible by integration"}), ProviderMisconfigured),
])
def test_validation_errors_a_rate_limit_is_not_invalid(response, kind):
    with pytest.raises(kind):
        run(GitHub(MockTransport(lambda r: response)).identity(TOKENS))


def test_github_revocation_uses_basic_auth_of_the_client():
    transport = MockTransport(lambda r: Response(204))
    assert run(GitHub(transport).revoke(CLIENT, TOKENS)) is True
    request = transport.requests[0]
    assert (request.method, request.url) == ("DELETE", "https://api.github.com/applications/client-1/token")
    assert request.basic_auth == ("client-1", "secret-1") and request.json == {"access_token": "at-1"}


def test_github_ssh_keys_are_found_by_key_added_with_title_and_deleted():
    calls = []

    def handler(r: Request) -> Response:
        calls.append((r.method, r.url.split("?")[0]))
        if r.method == "GET":
            return json_response(200, [{"id": 1, "key": "ssh-ed25519 AAAAother", "title": "x"}])
        if r.method == "POST":
            return json_response(201, {"id": 2, "key": r.json["key"], "title": r.json["title"]})
        return Response(204)

    gh = GitHub(MockTransport(handler))
    identity = run(GitHub(MockTransport(lambda r: json_response(200, {"login": "o", "id": 1}))).identity(TOKENS))
    assert run(gh.find_ssh_key(TOKENS, identity, "ssh-ed25519 AAAAmine alice@wso")) is None
    key = run(gh.add_ssh_key(TOKENS, identity, title="wso ns/alice", public_key="ssh-ed25519 AAAAmine alice@wso"))
    assert (key.id, key.title) == ("2", "wso ns/alice")
    run(gh.delete_ssh_key(TOKENS, identity, "2"))
    assert calls == [("GET", "https://api.github.com/user/keys"), ("POST", "https://api.github.com/user/keys"),
                     ("DELETE", "https://api.github.com/user/keys/2")]


@pytest.mark.parametrize("make", [lambda t: GitHub(t), lambda t: GitLabSelfManaged(t, host="https://gitlab.example.com")],
                         ids=["github", "gitlab"])
def test_a_key_on_a_later_page_of_the_users_keys_is_found(make):
    """Both APIs page /user/keys (at most 100 a page): a user with many keys must not get a duplicate upload."""
    def handler(r: Request) -> Response:
        page = int(parse_qs(urlsplit(r.url).query)["page"][0])
        assert parse_qs(urlsplit(r.url).query)["per_page"] == ["100"]
        if page == 1:
            return json_response(200, [{"id": i, "key": f"ssh-ed25519 AAAAother{i}", "title": "x"} for i in range(100)])
        return json_response(200, [{"id": 500, "key": "ssh-ed25519 AAAAmine", "title": "wso ns/alice"}])

    transport = MockTransport(handler)
    key = run(make(transport).find_ssh_key(TOKENS, None, "ssh-ed25519 AAAAmine alice@wso"))  # type: ignore[arg-type]
    assert key is not None and (key.id, key.title) == ("500", "wso ns/alice")
    assert len(transport.requests) == 2


# --- GitLab ----------------------------------------------------------------------------------------
def test_gitlab_refresh_rotates_and_400_invalid_grant_is_a_rejection():
    transport = MockTransport(lambda r: json_response(200, {"access_token": "a2", "refresh_token": "r2", "expires_in": 7200,
                                                            "token_type": "Bearer", "scope": "api read_user"}))
    tokens = run(GitLabSelfManaged(transport, host="https://gitlab.example.com", clock=clock).refresh(CLIENT, TOKENS))
    assert transport.requests[0].url == "https://gitlab.example.com/oauth/token"
    assert form_of(transport.requests[0]) == {"grant_type": "refresh_token", "refresh_token": "rt-1", "client_id": "client-1", "client_secret": "secret-1"}
    assert tokens.refresh_token.reveal_text() == "r2" and tokens.token_type == "bearer" and tokens.expires_at == NOW + timedelta(hours=2)
    rejecting = MockTransport(lambda r: json_response(400, {"error": "invalid_grant", "error_description": "The provided authorization grant is invalid"}))
    with pytest.raises(GrantRejected):
        run(GitLab(rejecting).refresh(CLIENT, TOKENS))


def test_gitlab_identity_uses_token_info_for_scopes():
    def handler(r: Request) -> Response:
        if r.url.endswith("/oauth/token/info"):
            return json_response(200, {"resource_owner_id": 5, "scope": ["api", "read_user"], "expires_in": 100})
        return json_response(200, {"id": 5, "username": "alice"})

    identity = run(GitLab(MockTransport(handler)).identity(TOKENS))
    assert (identity.login, identity.user_id, identity.scopes) == ("alice", "5", ("api", "read_user"))


def test_gitlab_revoke_posts_rfc7009_form():
    transport = MockTransport(lambda r: json_response(200, {}))
    assert run(GitLab(transport).revoke(CLIENT, TOKENS)) is True
    assert transport.requests[0].url == "https://gitlab.com/oauth/revoke"
    assert form_of(transport.requests[0]) == {"token": "at-1", "client_id": "client-1", "client_secret": "secret-1"}


# --- Bitbucket -------------------------------------------------------------------------------------
def test_bitbucket_cloud_uses_basic_client_auth_no_pkce_and_keeps_the_refresh_token():
    transport = MockTransport(lambda r: json_response(200, {"access_token": "b2", "scopes": "account repository", "expires_in": 7200,
                                                            "token_type": "bearer", "state": "refresh_token"}))
    bb = BitbucketCloud(transport, clock=clock)
    start = run(bb.start_authorization(CLIENT, redirect_uri="https://ops/cb", state="s", code_challenge="c", scopes=()))
    assert start.url.startswith("https://bitbucket.org/site/oauth2/authorize?") and "code_challenge" not in start.url
    tokens = run(bb.refresh(CLIENT, TOKENS))
    request = transport.requests[0]
    assert request.url == "https://bitbucket.org/site/oauth2/access_token" and request.basic_auth == ("client-1", "secret-1")
    assert "client_secret" not in form_of(request)
    assert tokens.refresh_token.reveal_text() == "rt-1" and tokens.scopes == ("account", "repository")


def test_bitbucket_cloud_ssh_keys_address_the_user_by_uuid():
    transport = MockTransport(lambda r: json_response(201, {"uuid": "{k1}", "label": r.json["label"], "key": r.json["key"]}))
    from workspace_secrets.oauth.protocol import Identity

    key = run(BitbucketCloud(transport).add_ssh_key(TOKENS, Identity("alice", "{u-1}"), title="t", public_key="ssh-ed25519 AAAA c"))
    assert transport.requests[0].url == "https://api.bitbucket.org/2.0/users/%7Bu-1%7D/ssh-keys"
    assert transport.requests[0].json == {"key": "ssh-ed25519 AAAA", "label": "t"} and key.id == "{k1}"


def test_bitbucket_server_identity_from_whoami_and_git_username_is_the_slug():
    def handler(r: Request) -> Response:
        if r.url.endswith("/plugins/servlet/applinks/whoami"):
            return Response(200, {"content-type": "text/plain"}, b"alice\n")
        return json_response(200, {"name": "alice", "slug": "alice", "id": 51})

    bbs = BitbucketServer(MockTransport(handler), host="https://bb.example.com")
    identity = run(bbs.identity(TOKENS))
    assert (identity.login, identity.user_id) == ("alice", "51")
    assert bbs.git_access(identity).username == "alice"
    anonymous = BitbucketServer(MockTransport(lambda r: Response(200, {}, b"")), host="https://bb.example.com")
    with pytest.raises(InvalidToken):
        run(anonymous.identity(TOKENS))


def test_git_username_conventions():
    from workspace_secrets.oauth.protocol import Identity

    me = Identity("alice", "1")
    t = MockTransport(lambda r: Response(500))
    assert GitHub(t).git_access(me).username == "x-access-token"
    assert GitLab(t).git_access(me).username == "oauth2"
    assert BitbucketCloud(t).git_access(me).username == "x-token-auth"
    assert GitHub(t).git_access(me).url == "https://github.com"


# --- OIDC ------------------------------------------------------------------------------------------
DISCOVERY = {"issuer": "https://idp", "authorization_endpoint": "https://idp/auth", "token_endpoint": "https://idp/token",
             "userinfo_endpoint": "https://idp/me", "revocation_endpoint": "https://idp/revoke",
             "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"]}


def test_oidc_discovers_endpoints_once_and_asks_for_consent_with_offline_access():
    def handler(r: Request) -> Response:
        return json_response(200, DISCOVERY)

    transport = MockTransport(handler)
    oidc = OIDC(transport, host="https://idp")
    start = run(oidc.start_authorization(CLIENT, redirect_uri="https://ops/cb", state="s", code_challenge="c",
                                         scopes=("openid", "offline_access")))
    assert start.url.startswith("https://idp/auth?") and start.url.endswith("&prompt=consent")
    run(oidc.start_authorization(CLIENT, redirect_uri="https://ops/cb", state="s", code_challenge="c", scopes=("openid",)))
    assert [r.url for r in transport.requests] == ["https://idp/.well-known/openid-configuration"]


def test_oidc_revokes_the_refresh_token_with_basic_auth():
    def handler(r: Request) -> Response:
        return json_response(200, DISCOVERY) if "well-known" in r.url else Response(200)

    transport = MockTransport(handler)
    assert run(OIDC(transport, host="https://idp").revoke(CLIENT, TOKENS)) is True
    request = transport.requests[-1]
    assert request.url == "https://idp/revoke" and request.basic_auth == ("client-1", "secret-1")
    assert form_of(request) == {"token": "rt-1", "token_type_hint": "refresh_token"}


def test_network_errors_are_temporary():
    from workspace_secrets.runtime.http import TransportError

    def handler(r: Request) -> Response:
        raise TransportError("POST https://idp/token: ClientConnectorError")

    with pytest.raises(TemporaryFailure):
        run(GitLab(MockTransport(handler)).refresh(CLIENT, TOKENS))


# --- Vault -----------------------------------------------------------------------------------------
def test_vault_login_through_its_oidc_auth_method():
    def handler(r: Request) -> Response:
        if r.url.endswith("/auth/oidc/oidc/auth_url"):
            return json_response(200, {"data": {"auth_url": "https://idp/auth?client_id=vault&state=st_vault&nonce=n"}})
        return json_response(200, {"auth": {"client_token": "hvs.x", "lease_duration": 3600, "renewable": True, "policies": ["default"]}})

    transport = MockTransport(handler)
    vault = Vault(transport, host="https://vault:8200", role="dev", clock=clock)
    start = run(vault.start_authorization(None, redirect_uri="https://ops/oauth/callback", state="ours", code_challenge="c", scopes=()))
    assert start.state == "st_vault" and not start.state_is_ours
    assert transport.requests[0].method == "PUT" and transport.requests[0].json["role"] == "dev"
    assert transport.requests[0].json["redirect_uri"] == "https://ops/oauth/callback"
    nonce = start.provider_data["client_nonce"]
    tokens = run(vault.exchange_code(None, code="abc", redirect_uri="", code_verifier=Sensitive("x"),
                                     provider_data={"state": "st_vault", "client_nonce": nonce}))
    callback = urlsplit(transport.requests[1].url)
    assert callback.path == "/v1/auth/oidc/oidc/callback"
    assert parse_qs(callback.query) == {"state": ["st_vault"], "code": ["abc"], "client_nonce": [nonce]}
    assert tokens.access_token.reveal_text() == "hvs.x" and tokens.expires_at == NOW + timedelta(hours=1) and tokens.renewable


def test_vault_renew_self_and_its_limits():
    answers = iter([json_response(200, {"auth": {"client_token": "hvs.x", "lease_duration": 7200, "renewable": True}}),
                    json_response(200, {"auth": {"client_token": "hvs.x", "lease_duration": 10, "renewable": True}}),
                    json_response(403, {"errors": ["permission denied"]})])
    transport = MockTransport(lambda r: next(answers))
    vault = Vault(transport, host="https://vault:8200", clock=clock)
    current = TokenSet(Sensitive("hvs.x"), expires_at=NOW + timedelta(minutes=10), token_type="vault")
    renewed = run(vault.refresh(None, current))
    assert renewed.expires_at == NOW + timedelta(hours=2)
    assert transport.requests[0].headers["X-Vault-Token"] == "hvs.x" and transport.requests[0].url.endswith("/v1/auth/token/renew-self")
    with pytest.raises(GrantRejected):  # capped by max TTL: no longer extends
        run(vault.refresh(None, current))
    with pytest.raises(GrantRejected):  # expired or revoked
        run(vault.refresh(None, current))


def test_provider_reprs_and_errors_never_show_secrets():
    assert "secret-1" not in repr(CLIENT) and "at-1" not in repr(TOKENS) and "rt-1" not in repr(TOKENS)
    request = Request("POST", "https://idp/token?x=1", {"Authorization": "Bearer at-1"}, form={"refresh_token": "rt-1"})
    assert "rt-1" not in repr(request) and "at-1" not in repr(request)


# --- the device flow (RFC 8628) --------------------------------------------------------------------
def test_github_device_flow_requests_a_code_and_polls_with_http_200_errors():
    from workspace_secrets.oauth.base import DEVICE_CODE_GRANT, AuthorizationPending, SlowDown

    answers = iter([
        json_response(200, {"device_code": "dc-1", "user_code": "WDJB-MJHT", "verification_uri": "https://github.com/login/device",
                            "expires_in": 900, "interval": 5}),
        json_response(200, {"error": "authorization_pending", "error_description": "The authorization request is still pending."}),
        json_response(200, {"error": "slow_down", "interval": 10}),
        json_response(200, {"error": "access_denied"}),
    ])
    transport = MockTransport(lambda r: next(answers))
    gh = GitHub(transport, clock=clock)
    device = run(gh.start_device_authorization(CLIENT, scopes=("repo",)))
    assert transport.requests[0].url == "https://github.com/login/device/code"
    assert form_of(transport.requests[0]) == {"client_id": "client-1", "scope": "repo"}
    assert (device.user_code, device.verification_uri, device.interval) == ("WDJB-MJHT", "https://github.com/login/device", 5.0)
    assert device.expires_at == NOW + timedelta(minutes=15) and "dc-1" not in repr(device)
    with pytest.raises(AuthorizationPending):
        run(gh.poll_device(CLIENT, device))
    assert form_of(transport.requests[1])["grant_type"] == DEVICE_CODE_GRANT and form_of(transport.requests[1])["device_code"] == "dc-1"
    with pytest.raises(SlowDown):
        run(gh.poll_device(CLIENT, device))
    with pytest.raises(GrantRejected):  # the user declined
        run(gh.poll_device(CLIENT, device))


def test_oidc_device_flow_uses_discovery_and_basic_auth():
    def handler(r: Request) -> Response:
        if "well-known" in r.url:
            return json_response(200, {**DISCOVERY, "device_authorization_endpoint": "https://idp/device/auth"})
        return json_response(200, {"device_code": "dc", "user_code": "ABCD", "verification_uri": "https://idp/device",
                                   "verification_uri_complete": "https://idp/device?user_code=ABCD", "expires_in": 600})

    transport = MockTransport(handler)
    device = run(OIDC(transport, host="https://idp").start_device_authorization(CLIENT, scopes=("openid",)))
    assert transport.requests[-1].url == "https://idp/device/auth" and transport.requests[-1].basic_auth == ("client-1", "secret-1")
    assert device.verification_uri_complete == "https://idp/device?user_code=ABCD"


def test_providers_without_a_device_flow_say_so():
    from workspace_secrets.oauth.base import Unsupported

    with pytest.raises(Unsupported):
        run(BitbucketCloud(MockTransport(lambda r: Response(500))).start_device_authorization(CLIENT, scopes=()))


# --- requests only where the platform said, and no hot loops (issue 14, instance 8) ------------------------
@pytest.mark.parametrize("endpoint,value", [
    ("token_endpoint", "https://evil.example.com/token"),  # another host
    ("token_endpoint", "http://idp/token"),  # plain http on the issuer's host
    ("token_endpoint", "https://idp:8443/token"),  # another port
    ("userinfo_endpoint", "http://169.254.169.254/latest/meta-data"),  # link-local metadata service
    ("revocation_endpoint", "https://user@idp/revoke"),  # credentials in the URL
    ("device_authorization_endpoint", "https://10.0.0.1/device"),
    ("authorization_endpoint", "/relative"),
])
def test_oidc_discovery_endpoints_must_be_on_the_issuers_https_origin(endpoint, value):
    transport = MockTransport(lambda r: json_response(200, {**DISCOVERY, endpoint: value}))
    with pytest.raises(ProviderMisconfigured, match=endpoint):
        run(OIDC(transport, host="https://idp").token_endpoint())
    assert len(transport.requests) == 1  # only discovery: nothing was sent to the endpoint


def test_oidc_discovery_must_name_its_own_issuer_and_an_http_issuer_only_on_loopback():
    transport = MockTransport(lambda r: json_response(200, {**DISCOVERY, "issuer": "https://other"}))
    with pytest.raises(ProviderMisconfigured, match="issuer"):
        run(OIDC(transport, host="https://idp").token_endpoint())
    with pytest.raises(ProviderMisconfigured, match="https"):
        run(OIDC(MockTransport(lambda r: json_response(200, {})), host="http://idp.internal").token_endpoint())
    loopback = "http://127.0.0.1:9999"
    document = {k: v.replace("https://idp", loopback) for k, v in DISCOVERY.items() if isinstance(v, str)}
    assert run(OIDC(MockTransport(lambda r: json_response(200, document)), host=loopback).token_endpoint()) == f"{loopback}/token"
    other_port = {**document, "token_endpoint": "http://127.0.0.1:1/token"}
    with pytest.raises(ProviderMisconfigured, match="token_endpoint"):
        run(OIDC(MockTransport(lambda r: json_response(200, other_port)), host=loopback).token_endpoint())


def test_a_body_over_one_mebibyte_is_refused_not_read():
    """The real transport against a local server: a 2 MiB answer (declared, or streamed without a length) is an
    error, and no more than the cap is ever held."""
    from aiohttp import web

    from workspace_secrets.runtime.http import MAX_BODY, AiohttpTransport, ResponseTooLarge, TransportError

    async def scenario() -> None:
        async def big(request: web.Request) -> web.StreamResponse:
            return web.Response(body=b"x" * (2 * MAX_BODY))

        async def streamed(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(40):
                await response.write(b"y" * 65536)
            return response

        async def small(request: web.Request) -> web.StreamResponse:
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_get("/big", big)
        app.router.add_get("/streamed", streamed)
        app.router.add_get("/small", small)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        transport = AiohttpTransport()
        try:
            for path in ("/big", "/streamed"):
                with pytest.raises(ResponseTooLarge):
                    await transport.send(Request("GET", f"http://127.0.0.1:{port}{path}"))
            assert issubclass(ResponseTooLarge, TransportError)
            assert (await transport.send(Request("GET", f"http://127.0.0.1:{port}/small"))).json() == {"ok": True}
            # A provider turns it into an error a human must fix, not an outage retried forever.
            with pytest.raises(ProviderMisconfigured, match="larger than"):
                await GitLab(transport, host=f"http://127.0.0.1:{port}/big#").identity(TOKENS)
        finally:
            await transport.close()
            await runner.cleanup()

    run(scenario())


def test_the_mock_transport_applies_the_same_cap():
    from workspace_secrets.runtime.http import MAX_BODY

    with pytest.raises(ProviderMisconfigured):
        run(GitLab(MockTransport(lambda r: Response(200, {}, b"{" + b" " * MAX_BODY + b"}"))).identity(TOKENS))


def test_device_flow_interval_and_expiry_are_bounded():
    answers = {"interval": 0, "expires_in": 1}
    transport = MockTransport(lambda r: json_response(200, {"device_code": "dc", "user_code": "U", "verification_uri": "https://github.com/login/device",
                                                            **answers}))
    device = run(GitHub(transport, clock=clock).start_device_authorization(CLIENT, scopes=()))
    assert device.interval == 5.0 and device.expires_at == NOW + timedelta(seconds=60)
    answers.update(interval=-3, expires_in=10**9)
    device = run(GitHub(transport, clock=clock).start_device_authorization(CLIENT, scopes=()))
    assert device.interval == 5.0 and device.expires_at == NOW + timedelta(minutes=30)
    answers.update(interval="soon", expires_in="later")
    device = run(GitHub(transport, clock=clock).start_device_authorization(CLIENT, scopes=()))
    assert device.interval == 5.0 and device.expires_at == NOW + timedelta(minutes=10)


def test_device_verification_page_must_be_the_providers():
    transport = MockTransport(lambda r: json_response(200, {"device_code": "dc", "user_code": "U",
                                                            "verification_uri": "https://phish.example.com/login/device"}))
    with pytest.raises(ProviderMisconfigured, match="verification page"):
        run(GitHub(transport, clock=clock).start_device_authorization(CLIENT, scopes=()))


@pytest.mark.parametrize("expires_in,lifetime", [(1, 60), (0.2, 60), ("5", 60), (59, 60), (7200, 7200)])
def test_a_token_lifetime_is_floored(expires_in, lifetime):
    transport = MockTransport(lambda r: json_response(200, {"access_token": "a", "refresh_token": "r", "expires_in": expires_in}))
    tokens = run(GitLab(transport, clock=clock).refresh(CLIENT, TOKENS))
    assert tokens.expires_at == NOW + timedelta(seconds=lifetime)
