"""The operator's connect page and OAuth callback (aiohttp), on its own port.

Who is the user? The platform says so, and only the platform: a trusted header (Grafana's auth-proxy model).
With `--connect-user-header X-Remote-User` and `--connect-trusted-proxies CIDR,...`, a request from a trusted
proxy address carrying the header is that user; the same header from any other address is refused (403), so
a client that reaches the port directly cannot claim to be someone else. Without both flags the page answers
503 "sign-in not configured" (only /healthz works). A link is never an identity: status.authorizationURL is a
plain link to this page, and /connect/<ns>/<name> (the signed links of earlier versions) only redirects here.

A user only ever sees, connects and disconnects their own UserTokens (spec.user == the user). Every form (Connect,
Disconnect) is a POST carrying a CSRF token bound to the user. Disconnect revokes the token at the provider where
it can and deletes the token Secret (the UserToken stays, not connected). /connect/start binds the flow to the browser that started it: a short-lived
HttpOnly, SameSite=Lax cookie with a random nonce, whose SHA-256 the pending record keeps. The callback
consumes the state (single-use) and accepts it only with that cookie, from the same signed-in user. No access
log: callback URLs carry authorization codes.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from aiohttp import web

from workspace_secrets.api.conditions import ProblemFound
from workspace_secrets.user_token.connect import NotAllowed
from workspace_secrets.user_token.controller import UserTokenController
from workspace_secrets.api.conditions import utcnow
from workspace_secrets.oauth.protocol import StateRejected, browser_binding, flow_nonce, same_browser
from workspace_secrets.runtime.signing import Signer
from workspace_secrets.oauth.base import ProviderError
from workspace_secrets.user_token.connect_page import pages

log = logging.getLogger(__name__)

FLOW_COOKIE = "wso_flow"
FLOW_COOKIE_PATH = "/oauth/callback"
CSRF_PURPOSE = "csrf"


@dataclass(frozen=True)
class WebSettings:
    base_url: str
    user_header: str | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    session_ttl: timedelta = timedelta(hours=8)  # how long a page's CSRF token stays valid
    flow_ttl: timedelta = timedelta(minutes=10)  # the flow cookie (as long as a pending authorization)

    @classmethod
    def parse(cls, base_url: str, user_header: str | None, trusted_proxies: tuple[str, ...], session_ttl: float) -> WebSettings:
        nets = tuple(ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies if p.strip())
        if user_header and not nets:
            raise ValueError("--connect-user-header needs --connect-trusted-proxies: the addresses of the auth proxy that sets it")
        return cls(base_url=base_url.rstrip("/"), user_header=user_header, trusted_proxies=nets,
                   session_ttl=timedelta(seconds=session_ttl))

    @property
    def sign_in_configured(self) -> bool:
        return bool(self.user_header and self.trusted_proxies)


@dataclass(frozen=True)
class Principal:
    user: str


class Refused(Exception):
    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                                 "Content-Security-Policy": f"default-src 'none'; style-src 'unsafe-inline'; script-src {pages.SCRIPT_CSP}; "
                                                            "form-action *; frame-ancestors 'none'; base-uri 'none'"})


class ConnectServer:
    def __init__(self, controller: UserTokenController, signer: Signer, settings: WebSettings, *,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.ctl = controller
        self.signer = signer
        self.settings = settings
        self.clock = clock
        self.secure_cookie = settings.base_url.startswith("https://")

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/connect/{namespace}/{name}", self.old_link)
        app.router.add_get("/accounts", self.accounts)
        app.router.add_get("/", self.accounts)
        app.router.add_post("/connect/start", self.start)
        app.router.add_post("/connect/disconnect", self.disconnect)
        app.router.add_get("/oauth/callback", self.callback)
        app.router.add_get("/healthz", self.healthz)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            if request.path != "/healthz" and not self.settings.sign_in_configured:
                raise Refused(503, "Sign-in not configured",
                              "The connect page needs the platform's sign-in: start the operator with --connect-user-header and "
                              "--connect-trusted-proxies (the address of the authentication proxy in front of this page).")
            return await handler(request)
        except Refused as exc:
            log.info("connect page refused %s %s: %s", request.method, request.path, exc.title)
            return _html(pages.result(False, exc.title, str(exc)), exc.status)

    # --- who is asking ---
    def principal(self, request: web.Request) -> Principal | None:
        """The user the platform's auth proxy signed in, or None. The header from anywhere else is refused."""
        header = self.settings.user_header
        if not header or header not in request.headers:
            return None
        peer = request.remote or ""
        try:
            trusted = any(ipaddress.ip_address(peer) in net for net in self.settings.trusted_proxies)
        except ValueError:
            trusted = False
        if not trusted:
            raise Refused(403, "Not accepted", f"The {header} header is only accepted from the platform's authentication proxy.")
        user = request.headers[header].strip()
        if not user:
            raise Refused(403, "Not accepted", f"The {header} header is empty.")
        return Principal(user)

    def _require(self, request: web.Request) -> Principal:
        principal = self.principal(request)
        if principal is None:
            raise Refused(401, "Sign in first", "Open this page through your workspace platform, which signs you in.")
        return principal

    def _csrf(self, principal: Principal) -> str:
        return self.signer.sign(CSRF_PURPOSE, {"user": principal.user}, expires=self.clock() + self.settings.session_ttl)

    # --- routes ---
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def old_link(self, request: web.Request) -> web.Response:
        """Links of earlier versions (/connect/<ns>/<name>?t=...): no longer a sign-in, just the page."""
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        raise web.HTTPSeeOther(f"/accounts?focus={quote(namespace, safe='')}/{quote(name, safe='')}")

    async def accounts(self, request: web.Request) -> web.Response:
        principal = self._require(request)
        tokens = await self.ctl.list_for_user(principal.user, None)
        focus = request.query.get("focus")
        notice = None
        if request.query.get("done") == "disconnected":  # a fixed sentence: nothing of the request is echoed
            gone = next((t for t in tokens if f"{t.namespace}/{t.name}" == focus), None)
            if gone is not None and not gone.connected:
                notice = pages.Notice(f"Disconnected {pages.provider_name(gone)}. Workspaces that need it wait until you connect again.")
        return _html(pages.accounts(principal.user, tokens, self._csrf(principal), focus=focus, now=self.clock(), notice=notice))

    async def _form(self, request: web.Request, principal: Principal) -> tuple[str, str]:
        """(namespace, name) of a POSTed account form, after its CSRF token proved it came from this user's page."""
        form = await request.post()
        try:
            csrf = self.signer.verify(CSRF_PURPOSE, str(form.get("csrf", "")), now=self.clock())
        except ValueError:
            raise Refused(403, "Please try again", "The form was too old or did not come from this page. Reload the page and try again.") from None
        if csrf.get("user") != principal.user:
            raise Refused(403, "Not your account", "You can only change your own accounts.")
        return str(form.get("namespace", "")), str(form.get("name", ""))

    async def disconnect(self, request: web.Request) -> web.Response:
        """Disconnect: revoke at the provider (where it can) and delete the stored token; the UserToken stays."""
        principal = self._require(request)
        namespace, name = await self._form(request, principal)
        try:
            outcome = await self.ctl.disconnect(namespace, name, principal.user)
        except NotAllowed as exc:
            raise Refused(403, "Not your account", f"{exc} You can only disconnect your own accounts.") from None
        except ProblemFound as exc:
            raise Refused(503, "Not set up yet", exc.problem.message) from None
        if not outcome.ok:
            return _html(pages.result(False, outcome.title, outcome.message), 502)
        raise web.HTTPSeeOther(f"/accounts?focus={quote(namespace, safe='')}/{quote(name, safe='')}&done=disconnected")

    async def start(self, request: web.Request) -> web.Response:
        principal = self._require(request)
        namespace, name = await self._form(request, principal)
        nonce = flow_nonce()
        try:
            url = await self.ctl.begin_authorization(namespace, name, principal.user, browser=browser_binding(nonce))
        except NotAllowed as exc:
            raise Refused(403, "Not your account", str(exc)) from None
        except ProblemFound as exc:
            raise Refused(503, "Not set up yet", exc.problem.message) from None
        except ProviderError as exc:
            raise Refused(502, "The provider could not be reached", f"{exc}. Try again in a moment.") from None
        response = web.HTTPSeeOther(url)
        # Only this browser can finish the flow: the callback needs this cookie (sent on the provider's
        # top-level redirect back: SameSite=Lax), and the pending record holds only its hash.
        response.set_cookie(FLOW_COOKIE, nonce, httponly=True, samesite="Lax", secure=self.secure_cookie, path=FLOW_COOKIE_PATH,
                            max_age=int(self.settings.flow_ttl.total_seconds()))
        raise response

    async def callback(self, request: web.Request) -> web.Response:
        principal = self.principal(request)
        state = request.query.get("state", "")
        try:
            record = self.ctl.take_state(state)  # consumed whatever follows: a leaked callback URL is spent
        except StateRejected as exc:
            log.warning("OAuth callback refused: %s", exc.reason)
            raise Refused(400, "Sign-in not accepted", str(exc)) from None
        if principal is None or principal.user != record.user or not same_browser(record, request.cookies.get(FLOW_COOKIE)):
            log.warning("OAuth callback for %s/%s refused: not the browser and user that started it", record.namespace, record.name)
            raise Refused(403, "Sign-in not accepted", "This sign-in was started by another user or in another browser. Start again from the connect page.")
        if "error" in request.query:
            error = request.query.get("error", "")
            description = request.query.get("error_description", "")
            if error == "access_denied":
                message = "You declined access at the provider. Nothing was connected; you can try again any time."
            else:
                message = f"The provider reported {error!r}" + (f": {description[:200]}" if description else "") + ". Start again from the connect page."
            log.info("OAuth callback for %s/%s: provider error %s", record.namespace, record.name, error[:64])
            return self._clear_flow(_html(pages.result(False, "Not connected", message), 400))
        code = request.query.get("code", "")
        if not code:
            raise Refused(400, "Sign-in not accepted", "The provider's answer carried no authorization code. Start again from the connect page.")
        outcome = await self.ctl.complete_authorization(record, code)
        log.info("OAuth callback for %s/%s: %s", record.namespace, record.name, "connected" if outcome.ok else "failed")
        return self._clear_flow(_html(pages.result(outcome.ok, outcome.title, outcome.message), 200 if outcome.ok else 400))

    def _clear_flow(self, response: web.Response) -> web.Response:
        response.del_cookie(FLOW_COOKIE, path=FLOW_COOKIE_PATH)
        return response


async def serve(server: ConnectServer, *, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(server.app(), access_log=None)  # callback URLs carry authorization codes
    await runner.setup()
    site = web.TCPSite(runner, host=host, port=port)
    await site.start()
    log.info("connect page listening on %s:%d (base URL %s)", host, port, server.settings.base_url)
    return runner
