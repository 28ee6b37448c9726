"""A FAKE of Google Cloud IAM v1 service accounts and keys, plus Google's OAuth2 token endpoint.

No GCP emulator exists. This fake implements the methods the operator uses -- projects.serviceAccounts
create/get/list/delete and projects.serviceAccounts.keys create/get/list/delete -- as the discovery document
shipped in google-api-python-client describes them (vendored: tests/contracts/gcp_iam_v1.json). Routes come
from the document's own `flatPath`s; every request and response is validated against its schemas (see
contract.py); methods it does not implement answer 501 UNIMPLEMENTED. Behaviour the document does not state,
modelled on GCP's documentation:
- `privateKeyData` is base64 of a JSON key file holding a REAL 2048-bit RSA key in PKCS#8 PEM, whose
  `token_uri` is this fake's token endpoint; the fake keeps only the public part.
- Every account also has one SYSTEM_MANAGED key (as in GCP), so a client must filter by keyTypes.
- 10 user-managed keys per account: the 11th keys.create fails 400 FAILED_PRECONDITION.
- accountId must be 6-30 characters of [a-z]([-a-z0-9]*[a-z0-9]); a duplicate is 409 ALREADY_EXISTS.
- Errors are {"error": {"code", "message", "status"}}.
- POST /token: the OAuth2 JWT-bearer grant (RFC 7523) as google-auth performs it. The assertion's RS256
  signature is verified with the public key named by its `kid`; a deleted key or account is refused with
  Google's `invalid_grant` answers. GET /tokeninfo?access_token= tells whose token it is.
- API calls need a Bearer token of an account holding the fake's admin grant (`admins`); others get 403.

Fault injection for tests: `outage = True` answers 503 UNAVAILABLE; `fail_next(status)`;
`on_request(method, path)` may return a callback run after the fake answered internally and before the
client receives the answer (to SIGKILL the operator between "minted" and "recorded").
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from .contract import CONTRACTS, DiscoveryContract

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ACCOUNT_ID = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])$")
KEYS_PER_ACCOUNT = 10
FAR_FUTURE = "9999-12-31T23:59:59Z"


def _ts(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


@dataclass
class Key:
    key_id: str
    public_key: rsa.RSAPublicKey
    algorithm: str
    key_type: str  # USER_MANAGED | SYSTEM_MANAGED
    valid_after: str
    valid_before: str = FAR_FUTURE


@dataclass
class Account:
    project: str
    account_id: str
    unique_id: str
    display_name: str = ""
    description: str = ""
    keys: dict[str, Key] = field(default_factory=dict)

    @property
    def email(self) -> str:
        return f"{self.account_id}@{self.project}.iam.gserviceaccount.com"

    @property
    def name(self) -> str:
        return f"projects/{self.project}/serviceAccounts/{self.email}"

    def view(self) -> dict[str, Any]:
        out = {"name": self.name, "projectId": self.project, "uniqueId": self.unique_id, "email": self.email,
               "etag": base64.b64encode(b"\x00\x00\x00\x00\x00\x00\x00\x01").decode(), "oauth2ClientId": self.unique_id}
        if self.display_name:
            out["displayName"] = self.display_name
        if self.description:
            out["description"] = self.description
        return out

    def key_view(self, key: Key) -> dict[str, Any]:
        return {"name": f"{self.name}/keys/{key.key_id}", "validAfterTime": key.valid_after, "validBeforeTime": key.valid_before,
                "keyAlgorithm": key.algorithm, "keyOrigin": "GOOGLE_PROVIDED", "keyType": key.key_type}


@dataclass
class Response:
    status: int
    body: Any = None
    content_type: str = "application/json; charset=UTF-8"


def google_error(code: int, status: str, message: str) -> Response:
    return Response(code, {"error": {"code": code, "message": message, "status": status}})


def oauth_error(error: str, description: str, status: int = 400) -> Response:
    return Response(status, {"error": error, "error_description": description})


class FakeGcpIam:
    def __init__(self, project: str = "wso-fake-project") -> None:
        self.contract = DiscoveryContract(CONTRACTS / "gcp_iam_v1.json")
        self.project = project
        self.accounts: dict[str, Account] = {}  # by email
        self.tokens: dict[str, tuple[str, float]] = {}  # access token -> (email, expiry)
        self.admins: set[str] = set()
        self.lock = threading.RLock()
        self.outage = False
        self._failures: list[int] = []
        self._unique = itertools.count(104_000_000_000_000_000_001)
        self.requests = 0
        self.on_request: Callable[[str, str], Callable[[], None] | None] | None = None
        self.server: ThreadingHTTPServer | None = None
        # Google's own keys never leave Google: one public key stands for all system-managed keys here.
        self._system_public_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()

    # --- test controls ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def fail_next(self, status: int, times: int = 1) -> None:
        self._failures += [status] * times

    def bootstrap_admin(self, account_id: str = "wso-operator-admin") -> bytes:
        """Create the platform's admin service account with the admin grant; return its JSON key file."""
        with self.lock:
            account = self._new_account(account_id, "workspace-secrets-operator admin", "")
            self.admins.add(account.email)
            return self._new_key(account, "KEY_ALG_RSA_2048")[1]

    def start(self) -> FakeGcpIam:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                after = fake.on_request(self.command, self.path) if fake.on_request else None
                response = fake.handle(self.command, self.path, self.headers.get("Authorization", ""), body)
                if after is not None:
                    after()
                payload = b"" if response.body is None else json.dumps(response.body).encode()
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="fake-gcp-iam").start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # --- state ------------------------------------------------------------------------------------
    def _new_account(self, account_id: str, display_name: str, description: str) -> Account:
        account = Account(self.project, account_id, str(next(self._unique)), display_name, description)
        self.accounts[account.email] = account
        system = Key(secrets.token_hex(20), self._system_public_key, "KEY_ALG_RSA_2048", "SYSTEM_MANAGED", _ts(datetime.now(timezone.utc)),
                     _ts(datetime.now(timezone.utc) + timedelta(days=14)))
        account.keys[system.key_id] = system
        return account

    def _new_key(self, account: Account, algorithm: str) -> tuple[Key, bytes]:
        private = rsa.generate_private_key(public_exponent=65537, key_size=1024 if algorithm == "KEY_ALG_RSA_1024" else 2048)
        key = Key(secrets.token_hex(20), private.public_key(), algorithm, "USER_MANAGED", _ts(datetime.now(timezone.utc)))
        account.keys[key.key_id] = key
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        key_file = {
            "type": "service_account",
            "project_id": account.project,
            "private_key_id": key.key_id,
            "private_key": pem.decode(),
            "client_email": account.email,
            "client_id": account.unique_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{urllib.parse.quote(account.email)}",
            "universe_domain": "googleapis.com",
        }
        return key, json.dumps(key_file, indent=2).encode()

    def _find(self, project: str, account: str) -> Account | None:
        if project not in (self.project, "-"):
            return None
        found = self.accounts.get(account)
        return found or next((a for a in self.accounts.values() if a.unique_id == account), None)

    def user_keys(self, email: str) -> list[str]:
        account = self.accounts.get(email)
        return sorted(k.key_id for k in account.keys.values() if k.key_type == "USER_MANAGED") if account else []

    # --- HTTP -------------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, authorization: str, body: bytes) -> Response:
        with self.lock:
            self.requests += 1
            if self.outage:
                return google_error(503, "UNAVAILABLE", "The service is currently unavailable.")
            if self._failures:
                status = self._failures.pop(0)
                return google_error(status, {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL"}.get(status, "UNAVAILABLE"), "Injected failure.")
            parsed = urllib.parse.urlsplit(raw_path)
            query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
            if parsed.path == "/token" and method == "POST":
                return self._token(dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)))
            if parsed.path == "/tokeninfo":
                return self._tokeninfo((query.get("access_token") or [""])[0])
            return self._api(method, parsed.path, query, authorization, body)

    def _api(self, method: str, path: str, query: dict[str, list[str]], authorization: str, body: bytes) -> Response:
        found = self.contract.method(method, path)
        if found is None:
            return google_error(404, "NOT_FOUND", f"The requested URL {path} was not found on this server.")
        spec, params = found
        scheme, _, token = authorization.partition(" ")
        principal = self.tokens.get(token) if scheme.lower() == "bearer" else None
        if principal is None or principal[1] < time.time() or principal[0] not in self.accounts:
            return google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials. Expected OAuth 2 access "
                                "token, login cookie or other valid authentication credential.")
        try:
            document = json.loads(body) if body else None
        except ValueError:
            return google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if problems := self.contract.check_request(method, path, query, document):
            return google_error(400, "INVALID_ARGUMENT", f"Invalid request: {problems[0]}")
        method_name = spec["id"].removeprefix("iam.projects.")  # e.g. serviceAccounts.keys.create
        permission = "iam." + method_name.replace("serviceAccounts.keys.", "serviceAccountKeys.")
        if principal[0] not in self.admins:
            return google_error(403, "PERMISSION_DENIED", f"Permission '{permission}' denied on resource (or it may not exist).")
        params = {k: urllib.parse.unquote(v) for k, v in params.items()}
        handler = getattr(self, "_" + method_name.replace(".", "_"), None)
        if handler is None:
            return google_error(501, "UNIMPLEMENTED", f"{spec['id']} is not implemented by the fake.")
        response = handler(params, query, document or {})
        self.contract.check_response(method, path, response.status, response.body)
        return response

    # projects.serviceAccounts
    def _serviceAccounts_create(self, params: dict[str, str], query: Any, body: dict[str, Any]) -> Response:
        if params["projectsId"] != self.project:
            return google_error(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.create' denied on resource (or it may not exist).")
        account_id = body.get("accountId") or ""
        if not (6 <= len(account_id) <= 30 and ACCOUNT_ID.match(account_id)):
            return google_error(400, "INVALID_ARGUMENT", f"Invalid account ID '{account_id}'. The account ID must be between 6 and 30 "
                                "characters, start with a lowercase letter, and consist of lowercase alphanumeric characters and dashes.")
        if f"{account_id}@{self.project}.iam.gserviceaccount.com" in self.accounts:
            return google_error(409, "ALREADY_EXISTS", f"Service account {account_id} already exists within project projects/{self.project}.")
        details = body.get("serviceAccount") or {}
        if len((details.get("displayName") or "").encode()) > 100 or len((details.get("description") or "").encode()) > 256:
            return google_error(400, "INVALID_ARGUMENT", "displayName is limited to 100 bytes and description to 256 bytes.")
        account = self._new_account(account_id, details.get("displayName") or "", details.get("description") or "")
        return Response(200, account.view())

    def _serviceAccounts_get(self, params: dict[str, str], query: Any, body: Any) -> Response:
        account = self._find(params["projectsId"], params["serviceAccountsId"])
        if account is None:
            return google_error(404, "NOT_FOUND", f"Unknown service account: {params['serviceAccountsId']}")
        return Response(200, account.view())

    def _serviceAccounts_list(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Response:
        if params["projectsId"] != self.project:
            return google_error(403, "PERMISSION_DENIED", "Permission 'iam.serviceAccounts.list' denied on resource (or it may not exist).")
        size = min(int((query.get("pageSize") or ["20"])[0]) or 20, 100)
        start = int(base64.urlsafe_b64decode((query.get("pageToken") or [""])[0] or "MA==").decode() or 0)
        ordered = sorted(self.accounts.values(), key=lambda a: a.email)
        page = ordered[start:start + size]
        out: dict[str, Any] = {"accounts": [a.view() for a in page]}
        if start + size < len(ordered):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return Response(200, out)

    def _serviceAccounts_delete(self, params: dict[str, str], query: Any, body: Any) -> Response:
        account = self._find(params["projectsId"], params["serviceAccountsId"])
        if account is None:
            return google_error(404, "NOT_FOUND", f"Service account projects/{params['projectsId']}/serviceAccounts/{params['serviceAccountsId']} does not exist.")
        del self.accounts[account.email]
        return Response(200, {})

    # projects.serviceAccounts.keys
    def _serviceAccounts_keys_create(self, params: dict[str, str], query: Any, body: dict[str, Any]) -> Response:
        account = self._find(params["projectsId"], params["serviceAccountsId"])
        if account is None:
            return google_error(404, "NOT_FOUND", f"Service account projects/{params['projectsId']}/serviceAccounts/{params['serviceAccountsId']} does not exist.")
        key_type = body.get("privateKeyType") or "TYPE_GOOGLE_CREDENTIALS_FILE"
        if key_type not in ("TYPE_UNSPECIFIED", "TYPE_GOOGLE_CREDENTIALS_FILE"):
            return google_error(400, "INVALID_ARGUMENT", f"privateKeyType {key_type} is not supported by the fake.")
        algorithm = body.get("keyAlgorithm") or "KEY_ALG_RSA_2048"
        if algorithm == "KEY_ALG_UNSPECIFIED":
            algorithm = "KEY_ALG_RSA_2048"
        if len([k for k in account.keys.values() if k.key_type == "USER_MANAGED"]) >= KEYS_PER_ACCOUNT:
            return google_error(400, "FAILED_PRECONDITION", "Precondition check failed.")
        key, key_file = self._new_key(account, algorithm)
        return Response(200, {**account.key_view(key), "privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE",
                              "privateKeyData": base64.b64encode(key_file).decode()})

    def _serviceAccounts_keys_list(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Response:
        account = self._find(params["projectsId"], params["serviceAccountsId"])
        if account is None:
            return google_error(404, "NOT_FOUND", f"Service account projects/{params['projectsId']}/serviceAccounts/{params['serviceAccountsId']} does not exist.")
        types = set(query.get("keyTypes") or ()) or {"USER_MANAGED", "SYSTEM_MANAGED"}
        if "KEY_TYPE_UNSPECIFIED" in types:
            return google_error(400, "INVALID_ARGUMENT", "KEY_TYPE_UNSPECIFIED is not a valid key type.")
        return Response(200, {"keys": [account.key_view(k) for k in account.keys.values() if k.key_type in types]})

    def _serviceAccounts_keys_get(self, params: dict[str, str], query: dict[str, list[str]], body: Any) -> Response:
        account = self._find(params["projectsId"], params["serviceAccountsId"])
        key = account.keys.get(params["keysId"]) if account else None
        if account is None or key is None:
            return google_error(404, "NOT_FOUND", f"Service account key {params['keysId']} does not exist.")
        view = account.key_view(key)
        if (query.get("publicKeyType") or ["TYPE_NONE"])[0] == "TYPE_X509_PEM_FILE":
            view["publicKeyData"] = base64.b64encode(self._certificate(account, key)).decode()
        return Response(200, view)

    def _serviceAccounts_keys_delete(self, params: dict[str, str], query: Any, body: Any) -> Response:
        account = self._find(params["projectsId"], params["serviceAccountsId"])
        key = account.keys.get(params["keysId"]) if account else None
        if account is None or key is None or key.key_type != "USER_MANAGED":
            return google_error(404, "NOT_FOUND", f"Service account key {params['keysId']} does not exist.")
        del account.keys[key.key_id]
        return Response(200, {})

    @staticmethod
    def _certificate(account: Account, key: Key) -> bytes:
        """GCP publishes a user-managed key's public part as a self-signed X.509 certificate. The fake has no
        private key to sign with, so the certificate is signed by a throwaway key: the embedded public key is
        the real one, the signature is not verifiable (nothing in the operator reads it)."""
        signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, account.unique_id)])
        now = datetime.now(timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=3650))
                .sign(signer, hashes.SHA256()))
        return cert.public_bytes(serialization.Encoding.PEM)

    # --- OAuth2 -----------------------------------------------------------------------------------
    def _token(self, form: dict[str, str]) -> Response:
        if form.get("grant_type") != JWT_BEARER:
            return oauth_error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
        try:
            header_b64, payload_b64, signature_b64 = (form.get("assertion") or "").split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(payload_b64))
            signature = _b64url_decode(signature_b64)
        except ValueError:
            return oauth_error("invalid_request", "Invalid JWT: malformed assertion.")
        if header.get("alg") != "RS256":
            return oauth_error("invalid_grant", "Invalid JWT: unsupported algorithm.")
        account = self.accounts.get(claims.get("iss") or "")
        if account is None:
            return oauth_error("invalid_grant", "Invalid grant: account not found")
        candidates = [account.keys[header["kid"]]] if header.get("kid") in account.keys else (
            [] if header.get("kid") else list(account.keys.values()))
        signed = f"{header_b64}.{payload_b64}".encode()
        verified = False
        for key in candidates:
            try:
                key.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
                verified = True
                break
            except InvalidSignature:
                continue
        if not verified:
            return oauth_error("invalid_grant", "Invalid JWT Signature.")
        # google-auth always asserts Google's canonical token URI as audience, whatever token_uri it posts to.
        if claims.get("aud") not in (GOOGLE_TOKEN_URI, self.token_uri):
            return oauth_error("invalid_grant", f"Invalid JWT: Failed audience check. The right audience is {GOOGLE_TOKEN_URI}")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not (isinstance(iat, int) and isinstance(exp, int) and iat <= now + 300 and exp > now and exp - iat <= 3600):
            return oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                               "timeframe. Check your iat and exp values in the JWT claim.")
        if not claims.get("scope"):
            return oauth_error("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        token = "ya29.fake." + secrets.token_urlsafe(48)
        self.tokens[token] = (account.email, now + 3599)
        return Response(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _tokeninfo(self, token: str) -> Response:
        found = self.tokens.get(token)
        if found is None or found[1] < time.time() or found[0] not in self.accounts:
            return oauth_error("invalid_token", "Invalid Value")
        account = self.accounts[found[0]]
        return Response(200, {"azp": account.unique_id, "aud": account.unique_id, "scope": "https://www.googleapis.com/auth/cloud-platform",
                              "exp": str(int(found[1])), "expires_in": str(int(found[1] - time.time())), "email": account.email,
                              "email_verified": "true", "access_type": "online"})
