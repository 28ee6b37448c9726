"""Support for the UserToken e2e tests: the real OAuth server (oidc-provider on Node), the platform's
OAuthApplications (created by the test as the admin, client Secrets in the operator's namespace), and a
user's browser session driven over plain HTTP (requests) through the platform's auth proxy to the connect
page, the provider's login/consent pages and the callback. The real-browser test (test_user_token_browser.py)
drives the same path with Chromium behind a small reverse proxy playing the auth proxy."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from html import unescape
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from operator_process import free_port
from workspace_secrets.api import constants as c

SERVER_DIR = Path(__file__).resolve().parent / "oauth_server"


class OIDCServer:
    """panva's oidc-provider (a certified OpenID provider) run by Node from tests/e2e/oauth_server."""

    def __init__(self, clients: list[dict], log_dir: Path, *, short_ttl: int = 20) -> None:
        self.clients = clients
        self.log_path = log_dir / "oidc-provider.log"
        self.short_ttl = short_ttl
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> OIDCServer:
        node = shutil.which("node")
        if node is None or not (SERVER_DIR / "node_modules" / "oidc-provider").exists():
            raise RuntimeError("node and tests/e2e/oauth_server/node_modules are needed: run tools/install-system-deps.sh")
        log = open(self.log_path, "ab")
        env = {**os.environ, "PORT": str(self.port), "OIDC_CLIENTS": json.dumps(self.clients), "SHORT_TTL": str(self.short_ttl)}
        self.process = subprocess.Popen([node, "server.mjs"], cwd=SERVER_DIR, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.issuer}/.well-known/openid-configuration", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("oidc-provider did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)

    def events(self) -> list[dict]:
        with urllib.request.urlopen(f"{self.issuer}/__test__/events", timeout=5) as response:
            return json.loads(response.read())

    def refreshes(self, client_id: str) -> list[dict]:
        return [e for e in self.events() if e.get("client_id") == client_id and e.get("grant_type") == "refresh_token"]

    def revoke(self, client_id: str, client_secret: str, token: str, hint: str = "refresh_token") -> None:
        response = requests.post(f"{self.issuer}/token/revocation", data={"token": token, "token_type_hint": hint},
                                 auth=(client_id, client_secret), timeout=10)
        assert response.status_code == 200, response.status_code


APPLICATION_PLURAL = "oauthapplications"


def create_application(api, name: str, spec: dict, *, operator_namespace: str, client_id: str | None = None,
                       client_secret: str | None = None) -> dict:
    """What the platform does: the OAuthApplication (cluster-scoped) and, unless it is a vault one, its client
    Secret in the operator's namespace (named after the application)."""
    spec = dict(spec)
    if client_id is not None:
        secret = f"oauthapp-{name}"
        data = {"client-id": client_id.encode(), **({"client-secret": client_secret.encode()} if client_secret else {})}
        api.create_secret(operator_namespace, secret, data)
        spec["clientSecretRef"] = {"name": secret}
    body = {"apiVersion": c.API_VERSION, "kind": "OAuthApplication", "metadata": {"name": name}, "spec": spec}
    return api.custom.create_cluster_custom_object(c.GROUP, c.VERSION, APPLICATION_PLURAL, body)


def delete_application(api, name: str, *, operator_namespace: str) -> None:
    for call in (lambda: api.custom.delete_cluster_custom_object(c.GROUP, c.VERSION, APPLICATION_PLURAL, name),
                 lambda: api.core.delete_namespaced_secret(f"oauthapp-{name}", operator_namespace)):
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - ApiException 404: already gone
            if getattr(exc, "status", None) != 404:
                raise


def get_token(api, namespace: str, name: str) -> dict | None:
    """A UserToken as the API has it, or None."""
    from workspace_secrets.api import constants as c

    try:
        return api.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, name)
    except Exception as exc:  # noqa: BLE001
        if getattr(exc, "status", None) == 404:
            return None
        raise


class SourceAddressAdapter(HTTPAdapter):
    """What the platform's auth proxy does: connect from its own address and, for a signed-in user, add the user
    header -- to every request through this adapter, however the session is called."""

    def __init__(self, source: str, header: str | None = None, user: str | None = None) -> None:
        self.source, self.header, self.user = source, header, user
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["source_address"] = (self.source, 0)
        return super().init_poolmanager(*args, **kwargs)

    def add_headers(self, request, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if self.header and self.user is not None:
            request.headers[self.header] = self.user


class BrowserSession:
    """A user's browser, approximated with requests: cookies, redirects, forms. Requests to the connect page go
    through the platform's auth proxy (from its trusted address, with the user header naming `user`), the
    way a browser reaches the page in production; requests to the provider go directly. `user=None`: a
    browser nobody signed in."""

    def __init__(self, connect_url: str, *, user: str | None = "alice", header: str = "X-Remote-User",
                 source: str = "127.0.0.2") -> None:
        self.connect_url = connect_url
        self.header = header
        self.http = requests.Session()
        self._proxy = SourceAddressAdapter(source, header, user)
        self.http.mount(connect_url.rstrip("/") + "/", self._proxy)

    @property
    def user(self) -> str | None:
        """Who the auth proxy says this browser is; set it to have the proxy say someone else from now on."""
        return self._proxy.user

    @user.setter
    def user(self, value: str | None) -> None:
        self._proxy.user = value

    @classmethod
    def of(cls, process, user: str | None = "alice") -> BrowserSession:
        """A browser of `user`, signed in by the auth proxy in front of this operator's connect page."""
        return cls(process.connect_url, user=user, header=process.connect_user_header, source=process.connect_trusted_proxy)

    def get(self, url: str, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
        return self.http.get(url, timeout=kwargs.pop("timeout", 15), **kwargs)

    def post(self, url: str, **kwargs) -> requests.Response:  # type: ignore[no-untyped-def]
        return self.http.post(url, timeout=kwargs.pop("timeout", 15), **kwargs)

    def open(self, url: str) -> requests.Response:
        response = self.get(url, allow_redirects=False)
        for _ in range(5):  # same-site redirects (e.g. an old link to the page): keep the proxy's header
            if response.status_code not in (301, 302, 303, 307, 308):
                break
            response = self.get(urljoin(response.url, response.headers["Location"]), allow_redirects=False)
        return response

    def connect(self, link: str, namespace: str, name: str, *, login: str = "alice") -> requests.Response:
        """Open the link (status.authorizationURL: the connect page), click Connect for namespace/name, pass the
        provider's pages, return the operator's result page."""
        page = self.open(link)
        assert page.status_code == 200 and "Connect your accounts" in page.text, page.status_code
        return self.click_connect(page.text, namespace, name, login=login)

    def click_connect(self, html: str, namespace: str, name: str, *, login: str = "alice") -> requests.Response:
        form = _form_for(html, namespace, name)
        response = self.post(urljoin(self.connect_url, "/connect/start"), data=form, allow_redirects=False)
        assert response.status_code == 303, (response.status_code, response.text[:300])
        return self.follow(response.headers["Location"], login=login)

    def start(self, html: str, namespace: str, name: str) -> str:
        """Click Connect; return the provider URL the operator redirects to."""
        form = _form_for(html, namespace, name)
        response = self.post(urljoin(self.connect_url, "/connect/start"), data=form, allow_redirects=False)
        assert response.status_code == 303, (response.status_code, response.text[:300])
        return response.headers["Location"]

    def follow(self, url: str, *, login: str = "alice", max_steps: int = 20, stop_at_callback: bool = False) -> requests.Response | str:
        """Follow redirects and submit oidc-provider's development login and consent forms. With
        stop_at_callback, return the callback URL instead of visiting it."""
        response = self.get(url, allow_redirects=False)
        for _ in range(max_steps):
            if response.status_code in (301, 302, 303, 307, 308):
                target = urljoin(response.url, response.headers["Location"])
                if target.startswith(self.connect_url) and "/oauth/callback" in target:
                    self.last_callback = target
                    if stop_at_callback:
                        return target
                response = self.get(target, allow_redirects=False, timeout=30)
                continue
            if response.status_code == 200 and 'name="prompt" value="login"' in response.text:
                action = urljoin(response.url, unescape(re.search(r'action="([^"]+)"', response.text).group(1)))
                response = self.post(action, data={"prompt": "login", "login": login, "password": "any"}, allow_redirects=False)
                continue
            if response.status_code == 200 and 'name="prompt" value="consent"' in response.text:
                action = urljoin(response.url, unescape(re.search(r'action="([^"]+)"', response.text).group(1)))
                response = self.post(action, data={"prompt": "consent"}, allow_redirects=False)
                continue
            return response
        raise AssertionError("too many redirects")


def device_code_on_page(html: str, namespace: str, name: str) -> tuple[str, str] | None:
    """(user code, verification URL) the connect page shows for a Device-flow UserToken, if any."""
    row = re.search(rf"<tr id='{re.escape(namespace)}/{re.escape(name)}'.*?</tr>", html, re.S)
    if row is None:
        return None
    code = re.search(r"<code id='user-code'[^>]*>([^<]+)</code>", row.group(0))
    link = re.search(r"<a href='([^']+)'", row.group(0))
    return (unescape(code.group(1)), unescape(link.group(1))) if code and link else None


def _form_for(html: str, namespace: str, name: str) -> dict[str, str]:
    for form in re.findall(r"<form method=post action='/connect/start'>(.*?)</form>", html, re.S):
        fields = dict(re.findall(r"name=(\w+) value='([^']*)'", form))
        if fields.get("namespace") == namespace and fields.get("name") == name:
            return {k: unescape(v) for k, v in fields.items()}
    raise AssertionError(f"no Connect button for {namespace}/{name} on the page")


def via_proxy(url: str, *, user: str | None, header: str, source: str, method: str = "GET") -> tuple[int, str]:
    """A request from `source` (a loopback address) with the user header: how the platform's auth proxy,
    or someone forging the header, reaches the connect page."""
    import http.client

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10, source_address=(source, 0))
    headers = {header: user} if user is not None else {}
    conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers)
    response = conn.getresponse()
    body = response.read().decode("utf-8", "replace")
    conn.close()
    return response.status, body


def approve_device_code(verification_url: str, *, login: str = "alice") -> requests.Response:
    """What the user does with a device code at oidc-provider: open the verification page (the code is
    prefilled from verification_uri_complete), submit it, confirm, sign in, consent."""
    browser = requests.Session()
    page = browser.get(verification_url, timeout=15)
    for _ in range(8):
        html = page.text
        action = re.search(r'<form[^>]*action="([^"]+)"', html)
        fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', html))
        if 'id="op.deviceInputForm"' in html:
            code = re.search(r'value="([^"]+)"\s+type="text" name="user_code"', html)
            fields["user_code"] = code.group(1) if code else fields.get("user_code", "")
        elif 'name="prompt" value="login"' in html:
            fields.update(login=login, password="any")
        elif "Sign-in Success" in html:
            return page
        elif action is None:
            return page
        page = browser.post(urljoin(page.url, unescape(action.group(1))), data={k: unescape(v) for k, v in fields.items()}, timeout=15)
    return page
