"""FAKES of the git providers' published REST contracts (GitHub, GitLab, Bitbucket Cloud, Bitbucket
Server/Data Center): stateful, in-memory, one aiohttp app per provider, for the provider-specific parts that
no local server can exercise. They are fakes, not the services: they implement only the endpoints the
operator uses, with each provider's documented request and error formats:

- GitHub: /login/oauth/authorize, /login/oauth/access_token (form-encoded answer unless
  `Accept: application/json`; errors with HTTP 200 and `error`: bad_verification_code, bad_refresh_token,
  incorrect_client_credentials), single-use rotating refresh tokens, /api/v3/user with X-OAuth-Scopes,
  /api/v3/user/keys (422 "key is already in use"), DELETE /api/v3/applications/{client_id}/token.
- GitLab: /oauth/authorize, /oauth/token (400 invalid_grant), rotation invalidating the old pair,
  /oauth/token/info, /oauth/revoke, /api/v4/user, /api/v4/user/keys (400 "has already been taken").
- Bitbucket Cloud: /site/oauth2/authorize, /site/oauth2/access_token with HTTP Basic client auth,
  non-rotating refresh tokens, `scopes` in the token answer, /2.0/user, /2.0/users/{uuid}/ssh-keys.
- Bitbucket Server: /rest/oauth2/latest/authorize|token, /plugins/servlet/applinks/whoami,
  /rest/api/latest/users/{slug}, /rest/ssh/latest/keys.

The authorize endpoints sign in a fixed fake user and consent at once (no HTML). /__fake__/state reports
what happened (counts, key ids and titles; never a token) for the tests' assertions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

KINDS = ("github", "gitlab", "bitbucket-cloud", "bitbucket-server")


@dataclass
class FakeUser:
    login: str
    id: int
    uuid: str


@dataclass
class State:
    kind: str
    clients: dict[str, str]
    user: FakeUser
    token_ttl: int = 28800
    codes: dict[str, dict] = field(default_factory=dict)
    tokens: dict[str, dict] = field(default_factory=dict)  # access token -> grant info
    refresh_tokens: dict[str, dict] = field(default_factory=dict)
    keys: list[dict] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"code": 0, "refresh": 0, "refresh_rejected": 0, "revoked": 0,
                                                             "keys_added": 0, "keys_deleted": 0})
    ids: Any = field(default_factory=lambda: itertools.count(4001))
    # Outages the tests switch on: endpoint ("token", "revoke") -> how many more requests answer 503.
    outages: dict[str, int] = field(default_factory=dict)

    def outage(self, endpoint: str) -> bool:
        left = self.outages.get(endpoint, 0)
        if left:
            self.outages[endpoint] = left - 1
        return bool(left)

    def snapshot(self) -> dict:
        return {"kind": self.kind, "counts": dict(self.counts), "active_tokens": sum(1 for t in self.tokens.values() if t["active"]),
                "keys": [{"id": k["id"], "title": k["title"], "key": k["key"]} for k in self.keys]}


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class FakeGitProvider:
    """One fake provider served on 127.0.0.1 from a background thread."""

    def __init__(self, kind: str, *, clients: dict[str, str], token_ttl: int = 28800) -> None:
        assert kind in KINDS
        user = FakeUser(login="octo-alice", id=1001, uuid="{6a1b9d3e-0000-4c1a-9f00-00000000a11c}")
        self.state = State(kind, dict(clients), user, token_ttl)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- process plumbing ---
    def start(self) -> FakeGitProvider:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._runner = web.AppRunner(self.app(), access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"fake-{self.state.kind}", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)  # type: ignore[union-attr]

    # --- the app ---
    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/__fake__/state", self.snapshot)
        kind = self.state.kind
        if kind == "github":
            r.add_get("/login/oauth/authorize", self.authorize)
            r.add_post("/login/oauth/access_token", self.github_token)
            r.add_get("/api/v3/user", self.github_user)
            r.add_get("/api/v3/user/keys", self.list_keys)
            r.add_post("/api/v3/user/keys", self.add_key)
            r.add_delete("/api/v3/user/keys/{id}", self.delete_key)
            r.add_delete("/api/v3/applications/{client_id}/token", self.github_revoke)
        elif kind == "gitlab":
            r.add_get("/oauth/authorize", self.authorize)
            r.add_post("/oauth/token", self.standard_token)
            r.add_get("/oauth/token/info", self.gitlab_token_info)
            r.add_post("/oauth/revoke", self.gitlab_revoke)
            r.add_get("/api/v4/user", self.gitlab_user)
            r.add_get("/api/v4/user/keys", self.list_keys)
            r.add_post("/api/v4/user/keys", self.add_key)
            r.add_delete("/api/v4/user/keys/{id}", self.delete_key)
        elif kind == "bitbucket-cloud":
            r.add_get("/site/oauth2/authorize", self.authorize)
            r.add_post("/site/oauth2/access_token", self.standard_token)
            r.add_get("/2.0/user", self.bitbucket_user)
            r.add_get("/2.0/users/{user:[^/]+}/ssh-keys", self.list_keys)
            r.add_post("/2.0/users/{user:[^/]+}/ssh-keys", self.add_key)
            r.add_delete("/2.0/users/{user:[^/]+}/ssh-keys/{id:[^/]+}", self.delete_key)
        else:
            r.add_get("/rest/oauth2/latest/authorize", self.authorize)
            r.add_post("/rest/oauth2/latest/token", self.standard_token)
            r.add_get("/plugins/servlet/applinks/whoami", self.bbs_whoami)
            r.add_get("/rest/api/latest/users/{slug}", self.bbs_user)
            r.add_get("/rest/ssh/latest/keys", self.list_keys)
            r.add_post("/rest/ssh/latest/keys", self.add_key)
            r.add_delete("/rest/ssh/latest/keys/{id}", self.delete_key)
        return app

    async def snapshot(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.snapshot())

    # --- OAuth ---
    async def authorize(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("client_id") not in self.state.clients:
            return web.Response(status=404, text="unknown client")  # the providers show an error page, no redirect
        redirect = q.get("redirect_uri", "")
        if q.get("response_type", "code") != "code" or not redirect:
            return web.Response(status=400, text="bad request")
        code = secrets.token_urlsafe(16)
        self.state.codes[code] = {"client": q["client_id"], "redirect_uri": redirect, "challenge": q.get("code_challenge"),
                                  "method": q.get("code_challenge_method"), "scope": q.get("scope", ""), "at": time.time()}
        raise web.HTTPFound(f"{redirect}?{urlencode({'code': code, 'state': q.get('state', '')})}")

    def _client_auth(self, request: web.Request, form: dict) -> str | None:
        header = request.headers.get("Authorization", "")
        if self.state.kind == "bitbucket-cloud":  # HTTP Basic is how Bitbucket Cloud consumers authenticate
            if not header.startswith("Basic "):
                return None
            client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id if self.state.clients.get(client_id) == secret else None

    def _issue(self, client: str, scope: str, user: FakeUser, refresh: str | None = None) -> dict:
        prefix = {"github": "ghu_", "gitlab": "glpat-oauth-", "bitbucket-cloud": "bbc_", "bitbucket-server": "bbs_"}[self.state.kind]
        access = prefix + secrets.token_urlsafe(24)
        refresh = refresh or prefix.replace("u_", "r_") + "r" + secrets.token_urlsafe(24)
        grant = {"client": client, "scope": scope, "user": user.login, "active": True, "expires": time.time() + self.state.token_ttl}
        self.state.tokens[access] = grant
        self.state.refresh_tokens[refresh] = {"client": client, "scope": scope, "active": True, "access": access}
        return {"access_token": access, "refresh_token": refresh, "expires_in": self.state.token_ttl, "scope": scope}

    async def _grant(self, request: web.Request) -> tuple[dict | None, str | None]:
        """(token answer, error code). Shared by every provider's token endpoint."""
        form = dict(await request.post())
        client = self._client_auth(request, form)
        if client is None:
            return None, "invalid_client"
        grant_type = form.get("grant_type", "authorization_code" if self.state.kind == "github" else "")
        if grant_type == "authorization_code":
            record = self.state.codes.pop(form.get("code", ""), None)
            if record is None or record["client"] != client or record["redirect_uri"] != form.get("redirect_uri", record["redirect_uri"]):
                return None, "invalid_grant"
            if record["challenge"] and (record["method"] != "S256" or _challenge(form.get("code_verifier", "")) != record["challenge"]):
                return None, "invalid_grant"
            self.state.counts["code"] += 1
            return self._issue(client, record["scope"], self.state.user), None
        if grant_type == "refresh_token":
            old = self.state.refresh_tokens.get(form.get("refresh_token", ""))
            if old is None or not old["active"] or old["client"] != client:
                self.state.counts["refresh_rejected"] += 1
                return None, "invalid_grant"
            self.state.counts["refresh"] += 1
            if self.state.kind == "bitbucket-cloud":  # Bitbucket Cloud keeps the refresh token
                self.state.tokens[old["access"]]["active"] = False
                del self.state.refresh_tokens[form["refresh_token"]]
                return self._issue(client, old["scope"], self.state.user, refresh=form["refresh_token"]), None
            old["active"] = False  # single use; GitLab also invalidates the old access token
            if self.state.kind == "gitlab":
                self.state.tokens[old["access"]]["active"] = False
            return self._issue(client, old["scope"], self.state.user), None
        return None, "unsupported_grant_type"

    async def github_token(self, request: web.Request) -> web.Response:
        if self.state.outage("token"):
            return web.Response(status=503, text="<html>Unicorn! This page is taking too long to load.</html>", content_type="text/html")
        answer, error = await self._grant(request)
        if error:
            code = {"invalid_client": "incorrect_client_credentials", "invalid_grant": "bad_verification_code"}.get(error, error)
            form = await request.post()
            if form.get("grant_type") == "refresh_token" and error == "invalid_grant":
                code = "bad_refresh_token"
            payload = {"error": code, "error_description": code.replace("_", " ").capitalize() + ".",
                       "error_uri": "https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"}
        else:
            payload = {**answer, "scope": answer["scope"].replace(" ", ","), "token_type": "bearer", "refresh_token_expires_in": 15897600}
        # GitHub's quirk: HTTP 200 for errors too, and form-encoded unless JSON is asked for.
        if "application/json" in request.headers.get("Accept", ""):
            return web.json_response(payload, status=200)
        return web.Response(text=urlencode(payload), content_type="application/x-www-form-urlencoded")

    async def standard_token(self, request: web.Request) -> web.Response:
        answer, error = await self._grant(request)
        if error:
            status = 401 if error == "invalid_client" else 400
            return web.json_response({"error": error, "error_description": f"The grant is invalid ({error})."}, status=status)
        payload = {**answer, "token_type": "bearer" if self.state.kind != "gitlab" else "Bearer"}
        if self.state.kind == "bitbucket-cloud":
            payload["scopes"] = payload.pop("scope") or "account repository"
            payload["state"] = "authorization_code"
        if self.state.kind == "gitlab":
            payload["created_at"] = int(time.time())
        return web.json_response(payload)

    def _bearer(self, request: web.Request) -> dict | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        grant = self.state.tokens.get(token)
        if grant is None or not grant["active"] or grant["expires"] < time.time():
            return None
        return grant

    def _unauthorized(self) -> web.Response:
        kind = self.state.kind
        if kind == "github":
            return web.json_response({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"}, status=401)
        if kind == "gitlab":
            return web.json_response({"message": "401 Unauthorized"}, status=401)
        if kind == "bitbucket-cloud":
            return web.json_response({"type": "error", "error": {"message": "Access token expired."}}, status=401)
        return web.json_response({"errors": [{"message": "Authentication failed. Please check your credentials and try again."}]}, status=401)

    # --- users ---
    async def github_user(self, request: web.Request) -> web.Response:
        grant = self._bearer(request)
        if grant is None:
            return self._unauthorized()
        u = self.state.user
        return web.json_response({"login": u.login, "id": u.id, "type": "User"},
                                 headers={"X-OAuth-Scopes": grant["scope"].replace(" ", ", "), "X-RateLimit-Remaining": "4999"})

    async def gitlab_user(self, request: web.Request) -> web.Response:
        if self._bearer(request) is None:
            return self._unauthorized()
        return web.json_response({"id": self.state.user.id, "username": self.state.user.login, "state": "active"})

    async def gitlab_token_info(self, request: web.Request) -> web.Response:
        grant = self._bearer(request)
        if grant is None:
            return web.json_response({"error": "invalid_token", "error_description": "The access token is invalid"}, status=401)
        return web.json_response({"resource_owner_id": self.state.user.id, "scope": grant["scope"].split(),
                                  "expires_in": int(grant["expires"] - time.time()), "application": {"uid": grant["client"]},
                                  "created_at": int(time.time())})

    async def bitbucket_user(self, request: web.Request) -> web.Response:
        if self._bearer(request) is None:
            return self._unauthorized()
        u = self.state.user
        return web.json_response({"type": "user", "uuid": u.uuid, "username": u.login, "display_name": "Alice", "account_id": "557058:a11ce"})

    async def bbs_whoami(self, request: web.Request) -> web.Response:
        if self._bearer(request) is None:
            return web.Response(status=401, text="")
        return web.Response(text=self.state.user.login, content_type="text/plain")

    async def bbs_user(self, request: web.Request) -> web.Response:
        if self._bearer(request) is None:
            return self._unauthorized()
        if request.match_info["slug"] != self.state.user.login:
            return web.json_response({"errors": [{"message": "User does not exist."}]}, status=404)
        u = self.state.user
        return web.json_response({"name": u.login, "id": u.id, "slug": u.login, "displayName": "Alice", "type": "NORMAL"})

    # --- revocation ---
    async def github_revoke(self, request: web.Request) -> web.Response:
        if self.state.outage("revoke"):
            return web.json_response({"message": "Service Unavailable"}, status=503)
        header = request.headers.get("Authorization", "")
        client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":") if header.startswith("Basic ") else ("", "", "")
        if client_id != request.match_info["client_id"] or self.state.clients.get(client_id) != secret:
            return web.json_response({"message": "Not Found"}, status=404)
        body = await request.json()
        grant = self.state.tokens.get(body.get("access_token", ""))
        if grant is None or not grant["active"]:
            return web.json_response({"message": "Not Found"}, status=404)
        self._revoke_grant(body["access_token"])
        return web.Response(status=204)

    async def gitlab_revoke(self, request: web.Request) -> web.Response:
        form = dict(await request.post())
        if self._client_auth(request, form) is None:
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("token") in self.state.tokens:
            self._revoke_grant(form["token"])
        return web.json_response({})  # RFC 7009: 200 whether or not the token was known

    def _revoke_grant(self, access: str) -> None:
        self.state.tokens[access]["active"] = False
        for refresh in self.state.refresh_tokens.values():
            if refresh["access"] == access:
                refresh["active"] = False
        self.state.counts["revoked"] += 1

    # --- SSH keys ---
    def _key_json(self, key: dict) -> dict:
        kind = self.state.kind
        if kind == "bitbucket-cloud":
            return {"type": "ssh_key", "uuid": key["id"], "key": key["key"], "label": key["title"], "owner": {"uuid": self.state.user.uuid}}
        if kind == "bitbucket-server":
            return {"id": int(key["id"]), "text": key["key"], "label": key["title"]}
        return {"id": int(key["id"]), "key": key["key"], "title": key["title"], "read_only": False}

    async def list_keys(self, request: web.Request) -> web.Response:
        if self._bearer(request) is None:
            return self._unauthorized()
        values = [self._key_json(k) for k in self.state.keys]
        if self.state.kind == "bitbucket-cloud":
            return web.json_response({"pagelen": 100, "values": values, "page": 1, "size": len(values)})
        if self.state.kind == "bitbucket-server":
            return web.json_response({"size": len(values), "limit": 100, "start": 0, "isLastPage": True, "values": values})
        # GitHub and GitLab page the list: `per_page` (at most 100) and `page` from 1.
        per_page = min(int(request.query.get("per_page", "30")), 100)
        page = int(request.query.get("page", "1"))
        return web.json_response(values[(page - 1) * per_page: page * per_page])

    async def add_key(self, request: web.Request) -> web.Response:
        grant = self._bearer(request)
        if grant is None:
            return self._unauthorized()
        kind = self.state.kind
        if kind == "github" and "admin:public_key" not in grant["scope"].replace(",", " ").split() and "write:public_key" not in grant["scope"]:
            return web.json_response({"message": "Not Found"}, status=404)  # what GitHub answers without the scope
        if kind == "bitbucket-cloud" and request.match_info["user"] != self.state.user.uuid:
            return web.json_response({"type": "error", "error": {"message": "Forbidden"}}, status=403)
        body = await request.json()
        text = body.get("text" if kind == "bitbucket-server" else "key", "")
        title = body.get("label" if kind.startswith("bitbucket") else "title", "")
        if not text.startswith("ssh-") and not text.startswith("ecdsa-"):
            return web.json_response({"message": "Validation Failed"}, status=422 if kind == "github" else 400)
        if any(k["key"].split()[:2] == text.split()[:2] for k in self.state.keys):
            if kind == "github":
                return web.json_response({"message": "Validation Failed", "errors": [{"resource": "PublicKey", "code": "custom", "field": "key", "message": "key is already in use"}]}, status=422)
            if kind == "gitlab":
                return web.json_response({"message": {"key": ["has already been taken"], "fingerprint_sha256": ["has already been taken"]}}, status=400)
            return web.json_response({"type": "error", "error": {"message": "Someone has already added that SSH key"}}, status=400)
        key_id = "{%s}" % secrets.token_hex(8) if kind == "bitbucket-cloud" else str(next(self.state.ids))
        key = {"id": key_id, "key": text, "title": title}
        self.state.keys.append(key)
        self.state.counts["keys_added"] += 1
        return web.json_response(self._key_json(key), status=201)

    async def delete_key(self, request: web.Request) -> web.Response:
        if self._bearer(request) is None:
            return self._unauthorized()
        for key in self.state.keys:
            if key["id"] == request.match_info["id"]:
                self.state.keys.remove(key)
                self.state.counts["keys_deleted"] += 1
                return web.Response(status=204)
        return web.json_response({"message": "Not Found"}, status=404)


def fetch_state(url: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(f"{url}/__fake__/state", timeout=5) as response:
        return json.loads(response.read())
