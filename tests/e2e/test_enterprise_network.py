"""Enterprise networks, on the real API server with the real operator process: a git server behind a private CA
(a TLS server whose CA no system store holds: GitHub Enterprise's OAuth and REST contract, the fake of
tests/fakes/git_providers.py served over TLS) reached through a real forward proxy (tinyproxy, from Debian).

- Without the CA: the sign-in fails with a message naming the server and OpenSSL's reason, and how to fix it; a
  connected token whose CA is taken away reports Ready=False with that message. Nothing is sent to the server.
- The OAuthApplication's spec.caBundle, or the operator's --ca-bundle-file: the code exchange and the validation work.
- HTTPS_PROXY: the operator's requests go through tinyproxy (its log shows the CONNECT to the server's host:port,
  and never a token: the TLS session runs inside the tunnel); NO_PROXY bypasses it.
- Attacks: a discovery document naming a token endpoint on another host stays refused through the proxy (the
  proxy is never asked for that host); a tenant cannot set an application's caBundle; the CRD takes certificates only.

The server and the proxy listen on this machine's non-loopback address: loopback is never proxied (Go's rule,
and ours: plain http is allowed for loopback only, so a request in clear never passes a proxy).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import urljoin

import pytest
from aiohttp import web
from helpers import Api, digest, wait_for
from operator_process import OperatorProcess, free_port, other_operators_stopped
from tls_support import PrivateCA
from user_token_support import BrowserSession, _form_for, create_application, delete_application, get_token

from backends import ADMIN_NAMESPACE
from fakes.git_providers import FakeGitProvider
from workspace_secrets.api import constants as c

CLIENT_ID, CLIENT_SECRET = "ghe-client", "ghe-client-secret-0123456789abcdef"
TINYPROXY = "/usr/bin/tinyproxy"


def node_ip() -> str | None:
    """This machine's address on its default route (no packet is sent), or None if it has only loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


HOST_IP = node_ip()
pytestmark = [
    pytest.mark.skipif(not os.path.exists(TINYPROXY), reason="tinyproxy is needed: run tools/install-system-deps.sh"),
    pytest.mark.skipif(HOST_IP is None, reason="needs a non-loopback address (loopback is never proxied)"),
]


# --- the servers ------------------------------------------------------------------------------------------
class TLSFakeGitHub(FakeGitProvider):
    """The GitHub fake served over TLS on the machine's address, with a certificate of the private CA."""

    def __init__(self, ca: PrivateCA, host: str) -> None:
        super().__init__("github", clients={CLIENT_ID: CLIENT_SECRET})
        self.host = host
        self.context = ca.server_context(host)

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> TLSFakeGitHub:
        ready = threading.Event()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._runner = web.AppRunner(self.app(), access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, 0, ssl_context=self.context)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-ghe-tls", daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self


class TLSIssuer:
    """An OIDC issuer over TLS whose discovery document names a token endpoint on ANOTHER host (`elsewhere`):
    what a compromised or misconfigured issuer would answer. Records every request."""

    def __init__(self, ca: PrivateCA, host: str, elsewhere: str) -> None:
        self.host, self.elsewhere, self.context = host, elsewhere, ca.server_context(host)
        self.requests: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if request.path == "/.well-known/openid-configuration":
            return web.json_response({"issuer": self.url, "authorization_endpoint": f"{self.url}/auth",
                                      "token_endpoint": f"{self.elsewhere}/token", "userinfo_endpoint": f"{self.elsewhere}/me"})
        return web.json_response({}, status=404)

    def start(self) -> TLSIssuer:
        ready = threading.Event()

        def run() -> None:
            loop = self.loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self.runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, self.host, 0, ssl_context=self.context)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class TinyProxy:
    """tinyproxy (Debian's package), a real forward proxy: CONNECT for https, on 127.0.0.1 only."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o777)  # tinyproxy may drop to another user; it writes its log here
        self.port = free_port()
        self.log_path = self.dir / "tinyproxy.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> TinyProxy:
        config = self.dir / "tinyproxy.conf"
        config.write_text(f'Port {self.port}\nListen 127.0.0.1\nTimeout 60\nLogFile "{self.log_path}"\nLogLevel Connect\n'
                          "MaxClients 50\nAllow 127.0.0.1\nDisableViaHeader Yes\n")
        out = open(self.dir / "stdout.log", "ab")
        self.process = subprocess.Popen([TINYPROXY, "-d", "-c", str(config)], stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        out.close()
        wait_for(lambda: _listening(self.port), timeout=10, what="tinyproxy listening")
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def connects(self) -> list[str]:
        """host:port of every CONNECT the proxy received, in order."""
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP", self.log())


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture(scope="module")
def ca() -> PrivateCA:
    return PrivateCA()


@pytest.fixture
def ghe(ca):
    server = TLSFakeGitHub(ca, HOST_IP).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(tmp_path):
    p = TinyProxy(tmp_path / "tinyproxy").start()
    yield p
    p.stop()


@pytest.fixture
def applications(cluster, api, namespace):
    # The operator's namespace (client Secrets), as the session's credential backends make it; kept afterwards like theirs.
    if cluster.kubectl("get", "namespace", ADMIN_NAMESPACE, check=False).returncode != 0:
        cluster.kubectl("create", "namespace", ADMIN_NAMESPACE, check=False)
    made: list[str] = []

    def make(spec: dict, *, client: bool = True) -> str:
        name = f"{namespace}-ent-{len(made)}"
        create_application(api, name, {**spec, "allowedNamespaces": [namespace]}, operator_namespace=ADMIN_NAMESPACE,
                           client_id=CLIENT_ID if client else None, client_secret=CLIENT_SECRET if client else None)
        made.append(name)
        return name

    yield make
    for name in made:
        delete_application(api, name, operator_namespace=ADMIN_NAMESPACE)


@pytest.fixture
def operators(cluster, namespace, tmp_path):
    """Operators of the test's own (its environment and flags), one at a time, with the session's shared operator
    stopped meanwhile so that it cannot do the work in their place."""
    started: list[OperatorProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> OperatorProcess:
        for running in started:
            running.stop()
        # The test run's own proxy variables never leak into the operator: only what the test gives.
        clean = {k: "" for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy",
                                 "ALL_PROXY", "all_proxy", "WSO_CA_BUNDLE_FILE")}
        operator = OperatorProcess(str(cluster.kubeconfig), tmp_path / f"operator-{len(started)}", "--namespace", namespace,
                                   "--operator-namespace", ADMIN_NAMESPACE, *args, env={**clean, **(env or {})})
        started.append(operator)
        operator.start()
        return operator

    with other_operators_stopped():
        try:
            yield start
        finally:
            for operator in started:
                operator.stop()


# --- helpers ----------------------------------------------------------------------------------------------
def create_token(api: Api, namespace: str, name: str, application: str) -> None:
    body = {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "metadata": {"name": name},
            "spec": {"user": "alice", "application": application}}
    api.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, body)


def wait_phase(api: Api, namespace: str, name: str, phase: str, timeout: float = 40) -> dict:
    return wait_for(lambda: (u := get_token(api, namespace, name)) and (u.get("status") or {}).get("phase") == phase and u,
                    timeout=timeout, what=f"{name} {phase} (now {((get_token(api, namespace, name) or {}).get('status') or {}).get('conditions')})")


def sign_in(operator: OperatorProcess, ca_path: Path, namespace: str, name: str):  # type: ignore[no-untyped-def]
    """The user's browser (which trusts the corporate CA, as the company's laptops do) clicks Connect."""
    browser = BrowserSession.of(operator)
    browser.http.trust_env = False  # or REQUESTS_CA_BUNDLE of the test's environment would replace `verify`
    browser.http.verify = str(ca_path)
    return browser.connect(f"{operator.connect_url}/accounts?focus={namespace}/{name}", namespace, name)


def ready(ut: dict) -> dict:
    return next(x for x in ut["status"]["conditions"] if x["type"] == c.CONDITION_READY)


def assert_no_secret_in(texts: dict[str, str], secrets: list[bytes]) -> None:
    leaks = [(where, digest(s)) for s in secrets if s for where, text in texts.items() if s in text.encode()]
    assert not leaks, f"secret bytes found in: {leaks}"


def events_text(api: Api, namespace: str) -> str:
    return json.dumps([api.core.api_client.sanitize_for_serialization(e) for e in api.core.list_namespaced_event(namespace).items])


# --- the tests ----------------------------------------------------------------------------------------------
def test_private_ca_through_a_forward_proxy(api, namespace, ca, ghe, proxy, applications, operators, tmp_path):
    ca_path = ca.write(tmp_path)
    target = f"{HOST_IP}:{ghe.port}"
    operator = operators(env={"HTTPS_PROXY": proxy.url, "NO_PROXY": "example.invalid"})
    assert "outgoing HTTPS: https http://127.0.0.1" in operator.log_text()

    # 1. No caBundle: the operator does not trust the server. The sign-in fails with what failed and how to fix it;
    #    the server never got the code (nothing is sent over an unverified connection). It went through the proxy.
    app = applications({"type": "github-enterprise", "host": ghe.url})
    create_token(api, namespace, "ghe", app)
    wait_phase(api, namespace, "ghe", c.PHASE_AWAITING_AUTHORIZATION)
    page = sign_in(operator, ca_path, namespace, "ghe")
    assert "data-ok='true'" not in page.text
    assert f"TLS verification of {ghe.url} failed" in page.text and "spec.caBundle" in page.text, page.text[-800:]
    assert ghe.state.counts["code"] == 0
    wait_for(lambda: f"TLS verification of {ghe.url} failed" in events_text(api, namespace), timeout=10, what="ConnectFailed event")
    assert target in proxy.connects()

    # 2. The platform adds its CA to the application: the exchange and the validation work, through the proxy.
    api.custom.patch_cluster_custom_object(c.GROUP, c.VERSION, "oauthapplications", app, {"spec": {"caBundle": ca.cert_pem}})
    before = len(proxy.connects())
    page = sign_in(operator, ca_path, namespace, "ghe")
    assert "data-ok='true'" in page.text, page.text[-800:]
    ut = wait_phase(api, namespace, "ghe", c.PHASE_VALID)
    assert ut["status"]["login"] == "octo-alice" and ghe.state.counts["code"] == 1
    assert proxy.connects()[before:] and set(proxy.connects()[before:]) == {target}
    token = api.secret_data(namespace, "ghe-token")[c.KEY_TOKEN]

    # 3. The CA is taken away again (a rotated server certificate, a wrong bundle): the connected token reports it.
    api.custom.patch_cluster_custom_object(c.GROUP, c.VERSION, "oauthapplications", app, {"spec": {"caBundle": None}})
    api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "ghe",
                                              {"metadata": {"annotations": {c.ANNOTATION_REFRESH_TOKEN: "after-ca-removed"}}})
    ut = wait_for(lambda: (u := get_token(api, namespace, "ghe")) and ready(u)["status"] == "False"
                  and "TLS verification" in ready(u).get("message", "") and u, timeout=40, what="Ready=False naming TLS")
    message = ready(ut)["message"]
    assert ready(ut)["reason"] == "TLSVerificationFailed", ready(ut)
    assert ghe.url in message and "spec.caBundle" in message and "--ca-bundle-file" in message, message

    # Nothing secret anywhere: not in the proxy's log (CONNECT only), the operator's log, the status or Events.
    assert_no_secret_in({"tinyproxy log": proxy.log(), "operator log": operator.log_text(), "events": events_text(api, namespace),
                         "usertoken": json.dumps(get_token(api, namespace, "ghe"))}, [token, CLIENT_SECRET.encode()])
    assert "/login/oauth" not in proxy.log() and "/api/v3" not in proxy.log()  # paths stay inside the tunnel

    # 4. The proxy goes away: what a tenant can read (the Event, the page, the UserToken) says "the configured proxy",
    #    never which one; the operator's log names it.
    api.custom.patch_cluster_custom_object(c.GROUP, c.VERSION, "oauthapplications", app, {"spec": {"caBundle": ca.cert_pem}})
    create_token(api, namespace, "ghe-2", app)
    wait_phase(api, namespace, "ghe-2", c.PHASE_AWAITING_AUTHORIZATION)
    proxy.stop()
    page = sign_in(operator, ca_path, namespace, "ghe-2")
    assert "data-ok='true'" not in page.text
    wait_for(lambda: "via the configured proxy" in events_text(api, namespace), timeout=15, what="ConnectFailed naming no proxy")
    hidden = f"127.0.0.1:{proxy.port}"
    for where, text in (("events", events_text(api, namespace)), ("page", page.text), ("usertoken", json.dumps(get_token(api, namespace, "ghe-2")))):
        assert hidden not in text, where
    assert f"via the proxy {proxy.url}" in operator.log_text()


def test_ca_bundle_file_and_no_proxy(api, namespace, ca, ghe, proxy, applications, operators, tmp_path):
    """--ca-bundle-file trusts the CA for every application (none has a caBundle here); NO_PROXY sends the
    server's address past the proxy, which then sees nothing."""
    ca_path = ca.write(tmp_path)
    operator = operators("--ca-bundle-file", str(ca_path), env={"HTTPS_PROXY": proxy.url, "NO_PROXY": f"localhost,{HOST_IP}"})
    app = applications({"type": "github-enterprise", "host": ghe.url})
    create_token(api, namespace, "ghe", app)
    wait_phase(api, namespace, "ghe", c.PHASE_AWAITING_AUTHORIZATION)
    page = sign_in(operator, ca_path, namespace, "ghe")
    assert "data-ok='true'" in page.text, page.text[-800:]
    assert wait_phase(api, namespace, "ghe", c.PHASE_VALID)["status"]["login"] == "octo-alice"
    assert proxy.connects() == []

    # The same operator, the env variable instead of the flag: WSO_CA_BUNDLE_FILE.
    operator = operators(env={"WSO_CA_BUNDLE_FILE": str(ca_path)})
    api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "ghe",
                                              {"metadata": {"annotations": {c.ANNOTATION_REFRESH_TOKEN: "env"}}})
    wait_for(lambda: ghe.state.counts["refresh"] >= 1, timeout=40, what="refreshed with WSO_CA_BUNDLE_FILE")
    wait_phase(api, namespace, "ghe", c.PHASE_VALID)
    assert f"trusting the system's CAs and those of {ca_path}" in operator.log_text()


def test_a_disallowed_host_stays_refused_through_the_proxy(api, namespace, ca, proxy, applications, operators, tmp_path):
    """An issuer's discovery document names a token endpoint on another host (here: another port of the same
    address, trusted by the same caBundle, so only the origin rule can refuse it). Through the proxy the operator
    refuses it before asking the proxy for it: the proxy only ever CONNECTs to the issuer; the other host gets
    nothing (not the client secret, not a code)."""
    elsewhere = TLSIssuer(ca, HOST_IP, "https://unused").start()  # the "other host": records what reaches it
    issuer = TLSIssuer(ca, HOST_IP, elsewhere.url).start()
    try:
        operator = operators(env={"HTTPS_PROXY": proxy.url})
        app = applications({"type": "oidc", "host": issuer.url, "caBundle": ca.cert_pem})
        create_token(api, namespace, "idp", app)
        wait_phase(api, namespace, "idp", c.PHASE_AWAITING_AUTHORIZATION)
        browser = BrowserSession.of(operator)
        page = browser.open(f"{operator.connect_url}/accounts?focus={namespace}/idp")
        response = browser.post(urljoin(operator.connect_url, "/connect/start"), data=_form_for(page.text, namespace, "idp"),
                                allow_redirects=False)
        assert response.status_code != 303, "the operator sent the browser on"
        assert "token_endpoint is not on the issuer" in response.text, response.text[-600:]
        assert issuer.requests == ["GET /.well-known/openid-configuration"]
        assert elsewhere.requests == []
        assert set(proxy.connects()) == {f"{HOST_IP}:{issuer.port}"}
        assert CLIENT_SECRET not in proxy.log()
    finally:
        issuer.stop()
        elsewhere.stop()


def test_the_ca_bundle_is_the_platforms_and_takes_certificates_only(cluster, api, namespace, ca, applications):
    """A tenant with the shipped roles reads OAuthApplications and cannot change one (a caBundle of the tenant's
    would make the operator trust the tenant's server for everyone's tokens). The CRD refuses anything but
    certificates (CERTIFICATE blocks, whitespace between), a private key above all."""
    repo = Path(__file__).resolve().parents[2]
    app = applications({"type": "github-enterprise", "host": "https://git.corp.example"})
    created = []
    for kind, name in (("clusterrole", "workspace-secrets-user"), ("clusterrole", "workspace-secrets-oauth-applications-reader")):
        if cluster.kubectl("get", kind, name, check=False).returncode != 0:
            created.append((kind, name))
    cluster.kubectl("apply", "-f", str(repo / "deploy" / "policies" / "workspace-user-role.yaml"))
    binding = f"{namespace}-mallory-apps"
    cluster.kubectl("create", "clusterrolebinding", binding, "--clusterrole=workspace-secrets-oauth-applications-reader", "--user=mallory")
    cluster.kubectl("create", "rolebinding", "mallory", "-n", namespace, "--clusterrole=workspace-secrets-user", "--user=mallory")
    try:
        as_mallory = ["--as=mallory"]
        assert cluster.kubectl(*as_mallory, "get", "oauthapplication", app, check=False).returncode == 0
        patch = json.dumps({"spec": {"caBundle": PrivateCA("Mallory").cert_pem}})
        out = cluster.kubectl(*as_mallory, "patch", "oauthapplication", app, "--type=merge", "-p", patch, check=False)
        assert out.returncode != 0 and "forbidden" in out.stderr.lower(), out.stderr
        out = cluster.kubectl(*as_mallory, "auth", "can-i", "update", "oauthapplications", check=False)
        assert out.stdout.strip() == "no"
        body = api.custom.get_cluster_custom_object(c.GROUP, c.VERSION, "oauthapplications", app)
        assert "caBundle" not in body["spec"]
    finally:
        cluster.kubectl("delete", "clusterrolebinding", binding, "--ignore-not-found", check=False)
        cluster.kubectl("delete", "rolebinding", "mallory", "-n", namespace, "--ignore-not-found", check=False)
        for kind, name in created:
            cluster.kubectl("delete", kind, name, "--ignore-not-found", check=False)

    key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"
    pgp = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGVzZWNyZXQ=\n-----END PGP PRIVATE KEY BLOCK-----\n"
    for bad, words in ((ca.cert_pem + key, "never a private key"), ("not a certificate", "must be PEM certificates"),
                       (ca.cert_pem + pgp, "no other PEM block"), ("# corp root\n" + ca.cert_pem, "no other text"),
                       (ca.cert_pem.replace("CERTIFICATE", "TRUSTED CERTIFICATE"), "must be PEM certificates")):
        out = cluster.kubectl("patch", "oauthapplication", app, "--type=merge", "-p", json.dumps({"spec": {"caBundle": bad}}),
                              check=False)
        assert out.returncode != 0 and words in out.stderr, out.stderr
    ok = cluster.kubectl("patch", "oauthapplication", app, "--type=merge", "-p", json.dumps({"spec": {"caBundle": ca.cert_pem}}),
                         check=False)
    assert ok.returncode == 0, ok.stderr


class TLSProviderAPI:
    """One TLS server playing the credential providers' APIs the operator calls (as their fakes do): Twilio's key
    list, Google's token endpoint and service-account list, and an IAM refusal (AccessDenied) for AWS's Query API."""

    def __init__(self, ca: PrivateCA, host: str) -> None:
        self.host, self.context = host, ca.server_context(host)
        self.requests: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if request.path == "/v1/Keys":
            return web.json_response({"keys": [], "meta": {}})
        if request.path == "/token":
            return web.json_response({"access_token": "ya29.gcp-admin-access-token", "expires_in": 3600, "token_type": "Bearer"})
        if request.path.endswith("/serviceAccounts"):
            return web.json_response({"accounts": []})
        return web.Response(status=403, content_type="text/xml", text=(
            "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>denied</Message></Error>"
            "<RequestId>1</RequestId></ErrorResponse>"))

    start = TLSIssuer.start
    stop = TLSIssuer.stop


def test_credential_provider_clients_use_the_proxy_and_the_bundle_file(ca, proxy, tmp_path, monkeypatch):
    """The providers' own HTTP clients, built as the operator builds them (from_config with its Egress): Twilio
    (requests), GCP (google-auth's session, and its token request) and AWS (boto3) go through tinyproxy to a server
    of the private CA, trusting it through --ca-bundle-file; without it each fails saying so. No operator process or
    API server is involved: the clients are the part under test."""
    import base64 as b64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from workspace_secrets.credentials.providers.aws_iam import AwsIamProvider
    from workspace_secrets.credentials.providers.base import ProviderError
    from workspace_secrets.credentials.providers.gcp_iam import GcpServiceAccountKeyProvider
    from workspace_secrets.credentials.providers.twilio import TwilioApiKeyProvider
    from workspace_secrets.runtime.http import Egress
    from workspace_secrets.runtime.sensitive import Sensitive

    server = TLSProviderAPI(ca, HOST_IP).start()
    try:
        target = f"{HOST_IP}:{server.port}"
        env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost"}
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AWS_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        trusted = Egress.from_environment(str(ca.write(tmp_path)), environ=env)
        untrusted = Egress.from_environment(None, environ=env)
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
        key_json = json.dumps({"type": "service_account", "project_id": "corp", "private_key_id": "k1", "private_key": rsa_key,
                               "client_email": "admin@corp.iam.gserviceaccount.com", "client_id": "1",
                               "token_uri": f"{server.url}/token"}).encode()
        admins = {
            "twilio": {"TWILIO_ACCOUNT_SID": Sensitive("AC" + "0" * 32), "TWILIO_AUTH_TOKEN": Sensitive("twilio-admin-secret")},
            "gcp": {"key.json": Sensitive(key_json)},
            "aws": {"AWS_ACCESS_KEY_ID": Sensitive("AKIAEXAMPLEEXAMPLE00"), "AWS_SECRET_ACCESS_KEY": Sensitive("aws-admin-secret")},
        }

        def build(kind: str, egress: Egress):  # type: ignore[no-untyped-def]
            if kind == "twilio":
                return TwilioApiKeyProvider.from_config(name="tw", config={"baseURL": server.url}, admin=admins[kind], kube=None, egress=egress)
            if kind == "gcp":
                return GcpServiceAccountKeyProvider.from_config(name="gcp", config={"endpoint": server.url, "project": "corp"},
                                                                admin=admins[kind], kube=None, egress=egress)
            return AwsIamProvider.from_config(name="aws", config={"endpointURL": server.url}, admin=admins[kind], kube=None, egress=egress)

        for kind in ("twilio", "gcp", "aws"):
            before = len(proxy.connects())
            with pytest.raises(ProviderError) as caught:
                asyncio.run(build(kind, untrusted).sweep())
            assert f"TLS verification of {server.url} failed" in str(caught.value) and "--ca-bundle-file" in str(caught.value), str(caught.value)
            assert proxy.connects()[before:] and set(proxy.connects()[before:]) == {target}, kind
            seen = len(server.requests)
            if kind == "aws":  # the server's refusal: an answer over a verified connection, not a TLS failure
                with pytest.raises(ProviderError, match="AccessDenied"):
                    asyncio.run(build(kind, trusted).sweep())
            else:
                assert asyncio.run(build(kind, trusted).sweep()) == []
            assert len(server.requests) > seen, kind
        assert server.requests[:2] == ["GET /v1/Keys", "POST /token"]  # google-auth's token request went the same way
        assert set(proxy.connects()) == {target}
        log = proxy.log()
        for secret in ("twilio-admin-secret", "aws-admin-secret", "ya29.gcp-admin-access-token", b64.b64encode(b"AC" + b"0" * 32).decode()):
            assert secret not in log
    finally:
        server.stop()


@pytest.mark.parametrize("env, words", [
    ({"HTTPS_PROXY": "socks5://svc:hunter2-proxy-password@proxy.corp:1080"}, "socks5:// proxy is not supported"),
    ({"WSO_CA_BUNDLE_FILE": "{bundle}"}, "private key"),
])
def test_unusable_settings_stop_the_operator_with_a_clear_message(cluster, namespace, tmp_path, env, words):
    """Retrying cannot fix a proxy the operator cannot use or a bundle that is no CA: it stops at once and says
    why -- without the proxy's password or the file's content."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("-----BEGIN PRIVATE KEY-----\nbm90LWEtY2EtYnV0LWEta2V5\n-----END PRIVATE KEY-----\n")
    env = {k: v.replace("{bundle}", str(bundle)) for k, v in env.items()}
    operator = OperatorProcess(str(cluster.kubeconfig), tmp_path / "operator", "--namespace", namespace,
                               "--operator-namespace", ADMIN_NAMESPACE, env=env)
    with pytest.raises(RuntimeError, match="operator exited"):
        operator.start(timeout=60)
    log = operator.log_text()
    assert words in log, log[-2000:]
    assert "hunter2-proxy-password" not in log and "bm90LWEtY2EtYnV0LWEta2V5" not in log


class PlainProviderAPI(TLSProviderAPI):
    """The same provider API in plain http on the machine's (non-loopback) address: what a platform might
    configure by mistake, e.g. an internal mirror."""

    def __init__(self, host: str) -> None:
        self.host, self.context = host, None
        self.requests = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def test_plain_http_off_loopback_never_leaves(proxy):
    """A provider endpoint in plain http on a non-loopback address is refused in the provider's configuration, and
    every client refuses such a request before connecting: the Twilio master token (Basic auth) or a bearer token
    never crosses the network or HTTP_PROXY in clear. The proxy would have been used: it sees nothing."""
    import requests

    from workspace_secrets.credentials.providers.aws_iam import AwsIamProvider
    from workspace_secrets.credentials.providers.gcp_iam import GcpServiceAccountKeyProvider
    from workspace_secrets.credentials.providers.twilio import TwilioApiKeyProvider
    from workspace_secrets.runtime.egress import ProxySettings
    from workspace_secrets.runtime.http import AiohttpTransport, CleartextRefused, Egress, Request
    from workspace_secrets.runtime.sensitive import Sensitive

    server = PlainProviderAPI(HOST_IP).start()
    try:
        egress = Egress(ProxySettings.from_environ({"HTTP_PROXY": proxy.url, "HTTPS_PROXY": proxy.url}))
        assert egress.proxies.proxy_for(server.url) is not None  # without the rule, it would go through the proxy
        master = "twilio-master-token-0123456789"
        twilio_admin = {"TWILIO_ACCOUNT_SID": Sensitive("AC" + "0" * 32), "TWILIO_AUTH_TOKEN": Sensitive(master)}
        with pytest.raises(ValueError, match="config.baseURL: .* is plain http"):
            TwilioApiKeyProvider.from_config(name="tw", config={"baseURL": server.url}, admin=twilio_admin, kube=None, egress=egress)
        with pytest.raises(ValueError, match="config.endpoint: .* is plain http"):
            GcpServiceAccountKeyProvider.from_config(name="gcp", config={"endpoint": server.url, "project": "corp"},
                                                     admin={"key.json": Sensitive(b"{}")}, kube=None, egress=egress)
        with pytest.raises(ValueError, match="config.endpointURL: .* is plain http"):
            AwsIamProvider.from_config(name="aws", config={"endpointURL": server.url}, kube=None, egress=egress,
                                       admin={"AWS_ACCESS_KEY_ID": Sensitive("AKIAEXAMPLE"), "AWS_SECRET_ACCESS_KEY": Sensitive("x")})
        # The clients themselves, should a URL get past a configuration check (a redirect, a future provider).
        session = egress.configure_requests(requests.Session())
        with pytest.raises(requests.RequestException, match="plain http"):
            session.get(f"{server.url}/v1/Keys", auth=("AC" + "0" * 32, master), timeout=10)

        async def oauth() -> None:
            transport = AiohttpTransport(egress=egress)
            try:
                with pytest.raises(CleartextRefused):
                    await transport.send(Request("POST", f"{server.url}/token", form={"client_secret": CLIENT_SECRET}))
            finally:
                await transport.close()

        asyncio.run(oauth())
        assert server.requests == []
        log = proxy.log()
        assert f"{HOST_IP}:{server.port}" not in log and master not in log and CLIENT_SECRET not in log
    finally:
        server.stop()
