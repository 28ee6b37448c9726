"""Private CAs, against a real local TLS server whose CA no system store holds: every outgoing client (the aiohttp
transport of OAuth and Vault, requests of Twilio and GCP, boto3 of AWS) refuses it by default with a clear message,
and trusts it with --ca-bundle-file; an OAuthApplication's spec.caBundle is trusted for that application only."""

from __future__ import annotations

import asyncio
import threading

import pytest
from aiohttp import web
from tls_support import PrivateCA

from workspace_secrets.api.oauth_application import OAuthApplication
from workspace_secrets.api.workspace_secret import SpecError
from workspace_secrets.oauth.base import ProviderMisconfigured
from workspace_secrets.oauth.protocol import TokenSet
from workspace_secrets.oauth.registry import ProviderCache
from workspace_secrets.runtime.egress import ProxySettings
from workspace_secrets.runtime.http import AiohttpTransport, Egress, Request, TLSVerificationFailed, read_ca_bundle, with_ca_bundle
from workspace_secrets.runtime.sensitive import Sensitive

TOKEN = "glpat-private-ca-token-0123456789"
TOKENS = TokenSet(Sensitive(TOKEN))


class TLSServer:
    """aiohttp over TLS on 127.0.0.1 (a thread of its own, so blocking clients can call it): GitLab's /user, and
    an IAM-like error for anything else."""

    def __init__(self, context) -> None:  # type: ignore[no-untyped-def]
        self.context = context
        self.port = 0
        self.seen: list[str] = []

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(f"{request.method} {request.path}")
        if request.path == "/api/v4/user":
            return web.json_response({"id": 7, "username": "alice"})
        if request.path == "/oauth/token/info":
            return web.json_response({"scope": ["read_user"]})
        if request.path.startswith("/v1/Keys"):
            return web.json_response({"keys": [], "meta": {}})
        return web.Response(status=403, content_type="text/xml", text=(
            "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>denied</Message></Error>"
            "<RequestId>1</RequestId></ErrorResponse>"))

    def __enter__(self) -> TLSServer:
        ready = threading.Event()

        def run() -> None:
            loop = self.loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handler)
            self.runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.context)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self.runner.cleanup())

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:  # type: ignore[no-untyped-def]
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def ca() -> PrivateCA:
    return PrivateCA()


@pytest.fixture
def server(ca):
    with TLSServer(ca.server_context("127.0.0.1")) as s:
        yield s


def app_body(host: str, ca_bundle: str | None = None, rv: str = "1") -> dict:
    spec = {"type": "gitlab-self-managed", "host": host, "clientSecretRef": {"name": "s"}, "allowedNamespaces": ["*"]}
    if ca_bundle is not None:
        spec["caBundle"] = ca_bundle
    return {"metadata": {"name": "corp-gitlab", "resourceVersion": rv}, "spec": spec}


def test_the_transport_refuses_a_private_ca_and_trusts_it_per_application_or_from_the_bundle_file(ca, server, tmp_path):
    async def scenario() -> None:
        transport = AiohttpTransport(egress=Egress(ProxySettings()))
        try:
            request = Request("GET", f"{server.url}/api/v4/user?x=1", {"Authorization": f"Bearer {TOKEN}"})
            with pytest.raises(TLSVerificationFailed) as caught:
                await transport.send(request)
            assert caught.value.origin == server.url and "certificate" in caught.value.reason
            assert TOKEN not in str(caught.value) and "x=1" not in str(caught.value)
            assert server.seen == []  # nothing was sent over the unverified connection
            # The application's caBundle: trusted for its own requests only; the shared transport still refuses.
            trusting = with_ca_bundle(transport, ca.cert_pem)
            assert (await trusting.send(request)).json() == {"id": 7, "username": "alice"}
            with pytest.raises(TLSVerificationFailed):
                await transport.send(request)
            # Another CA's bundle does not help.
            with pytest.raises(TLSVerificationFailed):
                await with_ca_bundle(transport, PrivateCA("Someone Else").cert_pem).send(request)
        finally:
            await transport.close()
        # --ca-bundle-file: every request trusts it.
        bundle = ca.write(tmp_path)
        transport = AiohttpTransport(egress=Egress.from_environment(str(bundle), environ={}))
        try:
            assert (await transport.send(Request("GET", f"{server.url}/api/v4/user"))).status == 200
        finally:
            await transport.close()

    asyncio.run(scenario())


def test_an_oauth_provider_says_what_failed_and_how_to_fix_it(ca, server):
    """Not an outage (TemporaryFailure, retried for ever) but a human's fix: the message names the server, OpenSSL's
    reason and spec.caBundle, and never the token."""
    async def scenario() -> None:
        transport = AiohttpTransport(egress=Egress(ProxySettings()))
        try:
            cache = ProviderCache(transport)
            provider = cache.for_application(OAuthApplication.from_body(app_body(server.url)))
            with pytest.raises(ProviderMisconfigured) as caught:
                await provider.identity(TOKENS)
            message = str(caught.value)
            assert caught.value.code == "tls_verification_failed"
            assert f"TLS verification of {server.url} failed" in message and "spec.caBundle" in message
            assert "--ca-bundle-file" in message and TOKEN not in message
            # The platform adds the CA: the application's new version trusts it.
            provider = cache.for_application(OAuthApplication.from_body(app_body(server.url, ca.cert_pem, rv="2")))
            assert (await provider.identity(TOKENS)).login == "alice"
        finally:
            await transport.close()

    asyncio.run(scenario())


def test_requests_based_providers_use_the_bundle_file(ca, server, tmp_path):
    from workspace_secrets.credentials.providers.base import ProviderError
    from workspace_secrets.credentials.providers.twilio import TwilioApiKeyProvider

    admin = {"TWILIO_ACCOUNT_SID": Sensitive("AC" + "0" * 32), "TWILIO_AUTH_TOKEN": Sensitive("twilio-admin-secret")}

    def provider(egress: Egress) -> TwilioApiKeyProvider:
        return TwilioApiKeyProvider.from_config(name="tw", config={"baseURL": server.url}, admin=admin, kube=None, egress=egress)

    with pytest.raises(ProviderError) as caught:
        provider(Egress(ProxySettings()))._request("keys.list", "GET", "/v1/Keys")
    message = str(caught.value)
    assert f"TLS verification of {server.url} failed" in message and "--ca-bundle-file" in message
    assert "twilio-admin-secret" not in message
    assert server.seen == []
    egress = Egress.from_environment(str(ca.write(tmp_path)), environ={})
    assert provider(egress)._request("keys.list", "GET", "/v1/Keys")[0] == 200


def test_boto3_uses_the_bundle_file(ca, server, tmp_path):
    pytest.importorskip("boto3")
    from workspace_secrets.credentials.providers.aws_iam import AwsIamProvider
    from workspace_secrets.credentials.providers.base import ProviderError

    admin = {"AWS_ACCESS_KEY_ID": Sensitive("AKIAEXAMPLEEXAMPLE00"), "AWS_SECRET_ACCESS_KEY": Sensitive("aws-admin-secret")}

    def provider(egress: Egress) -> AwsIamProvider:
        return AwsIamProvider.from_config(name="aws", config={"endpointURL": server.url}, admin=admin, kube=None, egress=egress)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(provider(Egress(ProxySettings())).sweep())
    assert f"TLS verification of {server.url} failed" in str(caught.value) and "aws-admin-secret" not in str(caught.value)
    # Trusted: the request reaches the server (which refuses it: an answer, not a TLS failure).
    with pytest.raises(ProviderError, match="AccessDenied"):
        asyncio.run(provider(Egress.from_environment(str(ca.write(tmp_path)), environ={})).sweep())
    assert server.seen and server.seen[0].startswith("POST /")


def test_the_ca_bundle_field_takes_certificates_only_and_never_echoes_them(ca):
    app = OAuthApplication.from_body(app_body("https://git.corp.example", ca.cert_pem))
    assert app.ca_bundle == ca.cert_pem
    assert OAuthApplication.from_body(app_body("https://git.corp.example")).ca_bundle is None
    key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
    for bad, why in ((ca.cert_pem + key, "private key"), ("not a certificate c2VjcmV0", "PEM certificates"),
                     ("-----BEGIN CERTIFICATE-----\nc2VjcmV0\n-----END CERTIFICATE-----\n", "PEM certificates")):
        with pytest.raises(SpecError, match=why) as caught:
            OAuthApplication.from_body(app_body("https://git.corp.example", bad))
        assert caught.value.field == "spec.caBundle" and "c2VjcmV0" not in str(caught.value)


def test_the_bundle_file_must_be_certificates(tmp_path, ca):
    path = tmp_path / "bundle.pem"
    path.write_text("-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match="private key") as caught:
        read_ca_bundle(str(path))
    assert "c2VjcmV0" not in str(caught.value)
    path.write_text("")
    with pytest.raises(ValueError, match="not PEM certificates|no certificate"):
        read_ca_bundle(str(path))
    path.write_text(ca.cert_pem + PrivateCA("Second").cert_pem)
    assert read_ca_bundle(str(path)).count("BEGIN CERTIFICATE") == 2


# --- the allowlist: CERTIFICATE blocks only (api/pem.py, the CRD's CEL rule) ----------------------------------------
PGP_KEY = "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBGVzZWNyZXQ=\n=abcd\n-----END PGP PRIVATE KEY BLOCK-----\n"
PGP_PUBLIC = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQENBGVzZWNyZXQ=\n-----END PGP PUBLIC KEY BLOCK-----\n"
CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBc2VjcmV0\n-----END CERTIFICATE REQUEST-----\n"


def key_as_certificate() -> str:
    """A private key's DER relabelled CERTIFICATE: the label alone proves nothing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    der = ec.generate_private_key(ec.SECP256R1()).private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                                                 serialization.NoEncryption())
    import base64

    return "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der).decode() + "-----END CERTIFICATE-----\n"


def bad_bundles(ca) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [
        (ca.cert_pem + PGP_KEY, "private key"),
        (PGP_KEY, "private key"),
        (ca.cert_pem + PGP_PUBLIC, "another kind of PEM block"),
        (ca.cert_pem + CSR, "another kind of PEM block"),
        (ca.cert_pem.replace("CERTIFICATE", "TRUSTED CERTIFICATE"), "TRUSTED CERTIFICATE"),
        (key_as_certificate(), "not an X.509 certificate"),
        (ca.cert_pem + "-----BEGIN CERTIFICATE-----\nMIIB\n", "lacks its END"),
        (ca.cert_pem.replace("-----END CERTIFICATE-----", "-----END CERTIFICATE REQUEST-----"), "BEGIN and END lines differ"),
        (ca.cert_pem.replace("\n-----END", "\n!!!!\n-----END"), "other than base64"),
    ]


def test_the_ca_bundle_field_is_an_allowlist_of_certificate_blocks(ca):
    """Anything but CERTIFICATE blocks with whitespace between them is refused: a PGP private key block (which has no
    "PRIVATE KEY-----"), any other PEM block, a key relabelled CERTIFICATE, text between the certificates."""
    for bad, why in [*bad_bundles(ca), ("comment\n" + ca.cert_pem, "only whitespace between them"),
                     (ca.cert_pem + "# Issuer: x\n", "only whitespace between them")]:
        with pytest.raises(SpecError, match=why) as caught:
            OAuthApplication.from_body(app_body("https://git.corp.example", bad))
        assert caught.value.field == "spec.caBundle"
        assert "lQOYBGVzZWNyZXQ" not in str(caught.value) and "c2VjcmV0" not in str(caught.value)
    two = ca.cert_pem + "\n\n" + PrivateCA("Second").cert_pem
    for good in (two, two.replace("\n", "\r\n"), "  \n" + ca.cert_pem + "\t\n"):
        assert OAuthApplication.from_body(app_body("https://git.corp.example", good)).ca_bundle == good


def test_the_bundle_file_is_the_same_allowlist_and_may_carry_comments(ca, tmp_path):
    path = tmp_path / "bundle.pem"
    for bad, why in bad_bundles(ca):
        path.write_text(bad)
        with pytest.raises(ValueError, match=why) as caught:
            read_ca_bundle(str(path))
        assert str(path) in str(caught.value) and "lQOYBGVzZWNyZXQ" not in str(caught.value)
    # Text between the blocks, as in certifi's or a distribution's bundle: ignored, as OpenSSL ignores it.
    path.write_text("# Issuer: CN=Corp Root\n# Label: corp\n" + ca.cert_pem + "\n# Second\n" + PrivateCA("Second").cert_pem)
    assert read_ca_bundle(str(path)).count("BEGIN CERTIFICATE") == 2


def test_the_crds_rule_and_the_operators_allowlist_agree(ca):
    """The CEL rule of crds/oauthapplications.yaml (RE2) on the same inputs as the Python allowlist, through the one
    translation RE2 needs for Python ([:space:] inside a bracket)."""
    import re
    from pathlib import Path

    import yaml

    from workspace_secrets.api.oauth_application import ca_bundle_problem

    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "oauthapplications.yaml").read_text())
    field = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["caBundle"]
    rules = [v["rule"] for v in field["x-kubernetes-validations"]]
    matching = [r for r in rules if r.startswith("self.matches(")]
    assert len(matching) == 1, rules
    pattern = matching[0][len("self.matches('"):-len("')")].replace("[:space:]", r" \t\n\r\f\v")
    assert "self.contains('PRIVATE KEY-----')" in " ".join(rules)  # and a private key gets its own message
    samples = [b for b, _ in bad_bundles(ca)] + [
        "comment\n" + ca.cert_pem, ca.cert_pem, ca.cert_pem + PrivateCA("Second").cert_pem, ca.cert_pem.replace("\n", "\r\n")]
    for sample in samples:
        by_crd = re.fullmatch(pattern, sample) is not None
        by_operator = ca_bundle_problem(sample) is None
        # The CRD checks the shape; the operator also parses each certificate (a relabelled key is well-shaped).
        if "not an X.509 certificate" in (ca_bundle_problem(sample) or ""):
            assert by_crd and not by_operator
        else:
            # Never the sample in the message: some are the test's generated private keys.
            assert by_crd == by_operator, (f"sample {samples.index(sample)}", ca_bundle_problem(sample))
