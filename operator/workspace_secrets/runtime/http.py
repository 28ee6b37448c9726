"""HTTP behind a small interface (the httpx transport idea): providers build `Request`s and read
`Response`s; `AiohttpTransport` sends them for real (unit tests use tests/fakes/http.py's MockTransport).

`Egress` is how every outgoing client of the operator leaves the network: the forward proxy from HTTPS_PROXY /
HTTP_PROXY / NO_PROXY (runtime/egress.py decides per URL), and the CAs trusted -- the system store, plus the
operator's --ca-bundle-file, plus (for one OAuthApplication) its spec.caBundle. The aiohttp transport (OAuth, Vault),
the requests sessions (Twilio, GCP) and boto3 (AWS) are all configured from it. ~/.netrc is never read.

Nothing here logs a request's or a response's headers or body: they carry tokens. A failed request's method, path
and proxy are logged (the proxy is named in the operator's log only, never in a message that reaches a status).
"""

from __future__ import annotations

import atexit
import hashlib
import json as jsonlib
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

import aiohttp

from workspace_secrets.api.pem import certificates_problem
from workspace_secrets.runtime.egress import Proxy, ProxySettings, cleartext_problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] | None = None  # application/x-www-form-urlencoded body
    json: Any = None  # application/json body
    basic_auth: tuple[str, str] | None = None

    def __repr__(self) -> str:  # never the headers or body: they carry tokens
        return f"Request({self.method} {self.url.split('?', 1)[0]})"


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        """The JSON body, or None if it is not JSON (an HTML error page from a proxy, say)."""
        try:
            return jsonlib.loads(self.body) if self.body else None
        except ValueError:
            return None

    def form(self) -> dict[str, str]:
        """GitHub answers form-encoded when asked without Accept: application/json."""
        return dict(parse_qsl(self.body.decode("utf-8", "replace")))

    def __repr__(self) -> str:
        return f"Response({self.status})"


class TransportError(Exception):
    """The request did not get an HTTP answer (DNS, refused connection, timeout, TLS)."""


class CleartextRefused(TransportError):
    """Not sent: plain http to a host that is not loopback (runtime/egress.py cleartext_problem). Not an outage:
    the configuration names the URL, retrying gives the same answer."""


class TLSVerificationFailed(TransportError):
    """The server's certificate was not accepted: signed by a CA the operator does not trust, expired, or not for
    this host. Not an outage: retrying gives the same answer until someone fixes the trust (or the certificate)."""

    def __init__(self, message: str, *, origin: str, reason: str) -> None:
        super().__init__(message)
        self.origin = origin
        self.reason = reason


def tls_failure_reason(exc: BaseException) -> str | None:
    """OpenSSL's reason when `exc` (or what it wraps: requests -> urllib3 -> ssl) is a certificate verification
    failure, e.g. "unable to get local issuer certificate"; None otherwise. The reason names no secret."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        certificate_error = getattr(current, "certificate_error", None)  # aiohttp's ClientConnectorCertificateError
        if isinstance(current, ssl.SSLCertVerificationError) and certificate_error is None:
            return str(getattr(current, "verify_message", None) or getattr(current, "reason", None) or "certificate verify failed")[:200]
        kwargs = getattr(current, "kwargs", None)  # botocore's SSLError(endpoint_url=..., error=...)
        todo += [certificate_error, current.__cause__, current.__context__, getattr(current, "reason", None),
                 *[a for a in current.args if isinstance(a, BaseException)],
                 *(kwargs.values() if isinstance(kwargs, dict) else ())]
    return None


def url_origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def tls_hint(origin: str, reason: str, *, per_application: bool) -> str:
    """What failed and how to fix it, for a Condition or an error (no secret: an origin and OpenSSL's reason)."""
    fix = ("put the PEM certificate of the CA that signed it in the OAuthApplication's spec.caBundle, or start the "
           "operator with --ca-bundle-file" if per_application else
           "start the operator with --ca-bundle-file naming a PEM file with the CA that signed it")
    return (f"TLS verification of {origin} failed ({reason}): the operator does not trust its certificate. If the server "
            f"uses a certificate from a private CA, {fix}")


#: The largest response body read (1 MiB): token, user and discovery answers are a few KiB. A bigger one is
#: refused without reading it into memory.
MAX_BODY = 1024 * 1024


class ResponseTooLarge(TransportError):
    """The answer's body is larger than MAX_BODY: nothing of it was kept."""


def too_large(request: Request) -> ResponseTooLarge:
    return ResponseTooLarge(f"{request.method} {request.url.split('?', 1)[0]}: the answer is larger than {MAX_BODY // 1024} KiB")


class Transport(Protocol):
    async def send(self, request: Request, *, timeout: float = 30.0) -> Response: ...


# --- trust and proxies ---------------------------------------------------------------------------------
def read_ca_bundle(path: str) -> str:
    """The PEM certificates of a CA bundle file; ValueError with a clear message if it holds none (or a private key)."""
    with open(path, encoding="ascii", errors="replace") as f:
        text = f.read()
    problem = pem_problem(text)
    if problem:
        raise ValueError(f"--ca-bundle-file {path}: {problem}")
    return text


def pem_problem(text: str) -> str | None:
    """Why `text` is not a bundle of PEM CA certificates (None: it is): api/pem.py's allowlist (CERTIFICATE blocks
    only), text between the blocks allowed as in any bundle file. The text itself is never quoted."""
    return certificates_problem(text, text_between=True)


@dataclass
class Egress:
    """The proxies and the trusted CAs of every outgoing HTTP client (see the module's docstring)."""

    proxies: ProxySettings = field(default_factory=ProxySettings)
    ca_bundle_file: str | None = None
    ca_bundle: str = ""  # the file's PEM, read once at start
    _contexts: dict[str, ssl.SSLContext] = field(default_factory=dict, repr=False)
    _verify_path: str | None = field(default=None, repr=False)

    @classmethod
    def from_environment(cls, ca_bundle_file: str | None = None, environ: Mapping[str, str] | None = None) -> Egress:
        """HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment and the --ca-bundle-file; raises ValueError (a
        message to show, no proxy password) if either is unusable."""
        proxies = ProxySettings.from_environ(os.environ if environ is None else environ)
        return cls(proxies, ca_bundle_file, read_ca_bundle(ca_bundle_file) if ca_bundle_file else "")

    def describe(self) -> str:
        trust = f"the system's CAs and those of {self.ca_bundle_file}" if self.ca_bundle_file else "the system's CAs"
        return f"outgoing HTTPS: {self.proxies.describe()}; trusting {trust}"

    def ssl_context(self, extra_pem: str | None = None) -> ssl.SSLContext:
        """A verifying context: the system store + --ca-bundle-file + `extra_pem` (an OAuthApplication's caBundle).
        One per distinct bundle (aiohttp pools connections per context)."""
        key = hashlib.sha256((extra_pem or "").encode()).hexdigest()
        context = self._contexts.get(key)
        if context is None:
            context = ssl.create_default_context()
            if self.ca_bundle:
                context.load_verify_locations(cadata=self.ca_bundle)
            if extra_pem:
                context.load_verify_locations(cadata=extra_pem)
            if len(self._contexts) >= 256:  # applications come and go: do not keep contexts of old bundles for ever
                self._contexts.clear()
            self._contexts[key] = context
        return context

    def verify(self) -> str | bool:
        """requests' and botocore's `verify` (they take a path, not a context). Without --ca-bundle-file: what
        requests reads itself (REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else its own store: True). With it: a file with
        those, AWS_CA_BUNDLE, certifi's store, the system store and the bundle."""
        environ = os.environ
        requests_default = environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE") or None
        if not self.ca_bundle:
            return requests_default or True
        if self._verify_path is None or not os.path.exists(self._verify_path):
            import certifi

            parts = []
            sources = (requests_default, environ.get("AWS_CA_BUNDLE"), certifi.where(), ssl.get_default_verify_paths().cafile)
            for path in dict.fromkeys(p for p in sources if p):
                if os.path.isfile(path):
                    with open(path, encoding="ascii", errors="replace") as f:
                        parts.append(f.read())
            parts.append(self.ca_bundle)
            fd, path = tempfile.mkstemp(prefix="wso-ca-bundle-", suffix=".pem")
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write("\n".join(p.strip() + "\n" for p in parts))
            self._verify_path = path
            atexit.register(_remove, path)
        return self._verify_path

    def requests_proxies(self, url: str) -> dict[str, str]:
        """requests' `proxies` for one URL ({}: directly)."""
        proxy = self.proxies.proxy_for(url)
        if proxy is None:
            return {}
        scheme = urlsplit(url).scheme.lower()
        return {scheme: proxy.with_credentials()}

    def configure_requests(self, session: Any) -> Any:
        """Make a requests Session (or google-auth's AuthorizedSession) use this egress: the proxy chosen per URL,
        these CAs, and no environment reading of its own (trust_env: ~/.netrc credentials, REQUESTS_CA_BUNDLE)."""
        from requests.adapters import HTTPAdapter
        from requests.exceptions import InvalidURL

        egress = self

        class RequestsCleartextRefused(InvalidURL):
            """CleartextRefused as requests raises errors (a RequestException: the providers' handling applies)."""

            cleartext_refused = True

        class EgressAdapter(HTTPAdapter):
            def send(self, request, stream=False, timeout=None, verify=True, cert=None, proxies=None):  # type: ignore[no-untyped-def]
                # Every request, redirects and google-auth's token requests included: nothing in clear off loopback.
                if problem := cleartext_problem(request.url or ""):
                    raise RequestsCleartextRefused(problem, request=request)
                return super().send(request, stream=stream, timeout=timeout, verify=verify, cert=cert,
                                    proxies=egress.requests_proxies(request.url or ""))

        session.trust_env = False
        session.verify = self.verify()
        session.mount("https://", EgressAdapter())
        session.mount("http://", EgressAdapter())
        return session

    def botocore_arguments(self, endpoint_url: str) -> tuple[dict[str, str], str | None]:
        """(Config(proxies=...), boto3.client(verify=...)) for a client of `endpoint_url`; verify None (botocore's
        own default, AWS_CA_BUNDLE) without --ca-bundle-file."""
        return self.requests_proxies(endpoint_url), self.verify() if self.ca_bundle else None  # type: ignore[return-value]


def provider_tls_error(exc: BaseException, endpoint: str) -> str | None:
    """A credential provider's clear message when `exc` is a TLS verification failure reaching `endpoint`, or a
    request refused for plain http off loopback (requests wrapped in google-auth's errors included), else None."""
    refused = _cleartext_refusal(exc)
    if refused is not None:
        return str(refused)
    reason = tls_failure_reason(exc)
    return None if reason is None else tls_hint(url_origin(endpoint), reason, per_application=False)


def _cleartext_refusal(exc: BaseException) -> BaseException | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, CleartextRefused) or getattr(current, "cleartext_refused", False):
            return current
        current = current.__cause__ or current.__context__
    return None



def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def with_ca_bundle(transport: Transport, pem: str | None) -> Transport:
    """`transport`, trusting `pem` in addition (an OAuthApplication's spec.caBundle). Test transports are kept as
    they are."""
    if pem and isinstance(transport, AiohttpTransport):
        return _TrustingTransport(transport, pem)
    return transport


class AiohttpTransport:
    """Sends requests with one shared aiohttp session (connection pooling), through the proxy and with the CAs of
    its `Egress`. The proxy is chosen per request (never aiohttp's trust_env, which would also read ~/.netrc);
    https goes through it in a CONNECT tunnel."""

    def __init__(self, session: aiohttp.ClientSession | None = None, *, egress: Egress | None = None) -> None:
        self._session = session
        self._owned = session is None
        self.egress = egress or Egress.from_environment()

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=False, raise_for_status=False)
            self._owned = True
        return self._session

    async def send(self, request: Request, *, timeout: float = 30.0) -> Response:
        return await self.send_trusting(request, None, timeout=timeout)

    async def send_trusting(self, request: Request, extra_pem: str | None, *, timeout: float = 30.0) -> Response:
        where = f"{request.method} {request.url.split('?', 1)[0]}"
        if problem := cleartext_problem(request.url):  # nothing in clear off loopback (runtime/egress.py)
            raise CleartextRefused(f"{where}: refused: {problem}")
        session = await self._get_session()
        headers = dict(request.headers)
        data: Any = None
        if request.form is not None:
            data = urlencode(request.form)
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif request.json is not None:
            data = jsonlib.dumps(request.json)
            headers.setdefault("Content-Type", "application/json")
        auth = aiohttp.BasicAuth(*request.basic_auth) if request.basic_auth else None
        proxy: Proxy | None = self.egress.proxies.proxy_for(request.url)
        proxy_auth = aiohttp.BasicAuth(proxy.username, proxy.password or "") if proxy is not None and proxy.username is not None else None
        try:
            async with session.request(
                request.method, request.url, headers=headers, data=data, auth=auth, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout), ssl=self.egress.ssl_context(extra_pem),
                proxy=proxy.url if proxy is not None else None, proxy_auth=proxy_auth,
            ) as response:
                if response.content_length is not None and response.content_length > MAX_BODY:
                    raise too_large(request)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(64 * 1024):
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise too_large(request)
                    chunks.append(chunk)
                return Response(response.status, {k.lower(): v for k, v in response.headers.items()}, b"".join(chunks))
        except aiohttp.ClientHttpProxyError as exc:
            # The proxy answered the CONNECT (or the request) with an error: its status, nothing it sent. The message
            # reaches tenant-readable conditions: "the configured proxy"; which one is for the operator's log only.
            log.warning("%s: the proxy %s refused it (%s)", where, proxy.url if proxy else "?", exc.status)
            raise TransportError(f"{where}: the configured proxy refused it ({exc.status})") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = tls_failure_reason(exc)
            if reason is not None:
                origin = url_origin(request.url)
                raise TLSVerificationFailed(f"{where}: TLS verification failed ({reason})", origin=origin, reason=reason) from None
            # The exception's text can include the URL; our URLs carry no tokens (they go in headers/bodies).
            if proxy is not None:
                log.warning("%s: %s via the proxy %s", where, type(exc).__name__, proxy.url)
            via = " via the configured proxy" if proxy is not None else ""
            raise TransportError(f"{where}: {type(exc).__name__}{via}") from None

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()


class _TrustingTransport:
    """An AiohttpTransport's view that also trusts one OAuthApplication's CA bundle (shares its session)."""

    def __init__(self, inner: AiohttpTransport, pem: str) -> None:
        self._inner = inner
        self._pem = pem

    async def send(self, request: Request, *, timeout: float = 30.0) -> Response:
        return await self._inner.send_trusting(request, self._pem, timeout=timeout)
