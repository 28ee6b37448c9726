"""GCP service-account keys (IAM v1 projects.serviceAccounts.keys), on one service account per entry.

The service account's accountId IS the scope tag ("wso-<12 hex>": 16 characters of [a-z0-9-], inside
GCP's 6-30 rule), so `list` (keys.list of that account, user-managed keys only) finds every key minted for
an entry -- including one created just before a crash -- and the orphan sweep finds accounts whose
workspace is gone. `release` deletes the account once its keys are revoked. The key is delivered as the
JSON key file GCP returns (`<entry>.key.json`), and GOOGLE_APPLICATION_CREDENTIALS points at it.

The operator authenticates with the platform's admin service-account key (credentialsSecret key
`key.json`) through google-auth's JWT-bearer flow. `endpoint` and `tokenURI` are configurable (private
service connect, or the test suite's fake).

Roles: the per-workspace service account gets no IAM role binding from the operator; grant access to the
accounts by the platform's own means (e.g. resource-level bindings managed alongside the workspace
template). See docs/users/credentials.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.parse
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, ClassVar

from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.egress import cleartext_problem
from workspace_secrets.runtime.http import Egress, provider_tls_error
from workspace_secrets.credentials.providers.base import FileContext, FileRef, Issued, ProviderError, Scope

DEFAULT_ENDPOINT = "https://iam.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
ACCOUNT_TAG = re.compile(r"^(wso-[0-9a-f]{12})@")  # service accounts this operator creates
KEY_ID = re.compile(r"^[0-9a-f]{8,64}$")
DESCRIPTION_MARK = "workspace-secrets-operator"
RETRYABLE_STATUSES = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "DEADLINE_EXCEEDED"}
NEVER = datetime(9999, 1, 1, tzinfo=timezone.utc)


def account_email(tag: str, project: str) -> str:
    return f"{tag}@{project}.iam.gserviceaccount.com"


def account_path(project: str, email: str) -> str:
    return f"/v1/projects/{urllib.parse.quote(project, safe='')}/serviceAccounts/{urllib.parse.quote(email, safe='@')}"


def create_account_body(scope: Scope) -> dict[str, Any]:
    return {"accountId": scope.tag,
            "serviceAccount": {"displayName": f"workspace {scope.namespace}/{scope.workspace}"[:100],
                               "description": scope.description[:256]}}


def create_key_body(algorithm: str) -> dict[str, str]:
    return {"privateKeyType": "TYPE_GOOGLE_CREDENTIALS_FILE", "keyAlgorithm": algorithm}


def parse_created_key(key: Mapping[str, Any]) -> tuple[str, bytes, datetime | None]:
    """(key id, the JSON key file, expiry) from a keys.create response; errors never quote the key."""
    name = key.get("name") or ""
    key_id = name.rsplit("/", 1)[-1]
    if not KEY_ID.match(key_id):
        raise ProviderError("IAM keys.create answered without a key name", retryable=True)
    try:
        key_file = base64.b64decode(key.get("privateKeyData") or "", validate=True)
        document = json.loads(key_file)
        valid = isinstance(document, dict) and document.get("type") == "service_account" and document.get("private_key_id") == key_id
    except ValueError:
        valid = False
    if not valid:
        raise ProviderError(f"IAM keys.create for key {key_id}: privateKeyData is not a service-account JSON key file", retryable=False)
    expires = None
    if before := key.get("validBeforeTime"):
        try:
            parsed = datetime.strptime(re.sub(r"\.\d+Z$", "Z", before), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            expires = parsed if parsed < NEVER else None
        except ValueError:
            expires = None
    return key_id, key_file, expires


def error_from_response(action: str, status: int, body: bytes) -> ProviderError:
    """Google's error document is {"error": {"code", "message", "status"}}; messages name resources only."""
    message, code = "", ""
    try:
        error = (json.loads(body or b"{}") or {}).get("error") or {}
        if isinstance(error, dict):
            message, code = str(error.get("message") or ""), str(error.get("status") or "")
    except (ValueError, AttributeError):
        pass
    retryable = status == 429 or status >= 500 or code in RETRYABLE_STATUSES
    hint = ""
    if status in (401, 403):
        hint = " (check the admin service account's key and its roles: Service Account Admin, Service Account Key Admin)"
    if code == "FAILED_PRECONDITION" and action == "keys.create":
        hint = " (GCP allows 10 user-managed keys per service account)"
    return ProviderError(f"IAM {action} failed: HTTP {status} {code}".rstrip() + (f": {message[:200]}" if message else "") + hint,
                         retryable=retryable)


class GcpServiceAccountKeyProvider:
    type_name: ClassVar[str] = "gcp-service-account-key"
    access = None  # the platform's allow rule (credentials.ledger.AccessRule), set by credentials/setup.py

    def __init__(self, name: str, session: Any, *, project: str, endpoint: str = DEFAULT_ENDPOINT,
                 key_algorithm: str = "KEY_ALG_RSA_2048", timeout: float = 20.0) -> None:
        self.name = name
        self._session = session
        self._project = project
        self._endpoint = endpoint.rstrip("/")
        self._algorithm = key_algorithm
        self._timeout = timeout

    @classmethod
    def from_config(cls, *, name: str, config: Mapping[str, Any], admin: Mapping[str, Sensitive], kube: Any,
                    egress: Egress | None = None) -> GcpServiceAccountKeyProvider:
        import requests
        from google.auth.transport.requests import AuthorizedSession, Request  # imported only when configured
        from google.oauth2 import service_account

        endpoint = str(config.get("endpoint", DEFAULT_ENDPOINT))
        if problem := cleartext_problem(endpoint):  # the admin's bearer token goes in every request
            raise ValueError(f"config.endpoint: {problem}")
        if config.get("tokenURI") and (problem := cleartext_problem(str(config["tokenURI"]))):  # the signed assertion
            raise ValueError(f"config.tokenURI: {problem}")
        if "key.json" not in admin:
            raise ValueError("admin credentials Secret lacks 'key.json' (the admin service account's JSON key)")
        try:
            info = json.loads(admin["key.json"].reveal())
            if config.get("tokenURI"):
                info["token_uri"] = str(config["tokenURI"])
            credentials = service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
        except (ValueError, KeyError, TypeError) as exc:
            # Never chained or quoted: a parser's message could include key material.
            raise ValueError(f"admin credentials Secret's key.json is not a service-account JSON key ({type(exc).__name__})") from None
        if (problem := cleartext_problem(str(info.get("token_uri") or "https://oauth2.googleapis.com/token"))):
            raise ValueError(f"the admin key.json's token_uri: {problem}")
        project = str(config.get("project") or info.get("project_id") or "")
        if not project:
            raise ValueError("config.project is required (the project that holds the per-workspace service accounts)")
        algorithm = str(config.get("keyAlgorithm", "KEY_ALG_RSA_2048"))
        if algorithm not in ("KEY_ALG_RSA_2048", "KEY_ALG_RSA_1024"):
            raise ValueError(f"config.keyAlgorithm must be KEY_ALG_RSA_2048 or KEY_ALG_RSA_1024, got {algorithm!r}")
        # Both the API calls and the token requests (tokenURI) through the operator's proxies and CAs.
        egress = egress or Egress.from_environment()
        session = egress.configure_requests(
            AuthorizedSession(credentials, auth_request=Request(session=egress.configure_requests(requests.Session()))))
        return cls(name, session, project=project, endpoint=endpoint,
                   key_algorithm=algorithm, timeout=float(config.get("timeoutSeconds", 20)))

    def env(self) -> Mapping[str, str | FileRef]:
        return {"GOOGLE_APPLICATION_CREDENTIALS": FileRef("key.json")}

    def file_env(self) -> Mapping[str, str | FileRef]:
        return {"GOOGLE_APPLICATION_CREDENTIALS": FileRef("key.json")}

    def files(self, values: Mapping[str, Sensitive], where: FileContext) -> Mapping[str, Sensitive]:
        return {}  # the key file GCP returns is itself the file its tools read

    def validate(self, parameters: Mapping[str, str]) -> str | None:
        if parameters:
            return (f"gcp-service-account-key takes no parameters (the platform's provider configuration sets the project), "
                    f"got {', '.join(sorted(parameters))}")
        return None

    # --- HTTP ----------------------------------------------------------------------------------------
    def _request(self, action: str, method: str, path: str, *, body: Any = None, params: Any = None,
                 ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        import google.auth.exceptions
        import requests

        try:
            response = self._session.request(method, f"{self._endpoint}{path}", json=body, params=params,
                                             timeout=self._timeout, allow_redirects=False)
        except google.auth.exceptions.RefreshError as exc:
            # The token endpoint refused the admin key; its first argument is "error: description", no secret.
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else type(exc).__name__
            raise ProviderError(f"IAM {action}: the admin service account could not get a token: {reason[:200]}",
                                retryable=bool(getattr(exc, "retryable", False))) from None
        except (google.auth.exceptions.TransportError, requests.RequestException) as exc:
            tls = provider_tls_error(exc, self._endpoint)
            raise ProviderError(f"IAM {action} failed: {tls or f'{type(exc).__name__} reaching {self._endpoint}'}", retryable=True) from None
        if response.status_code not in ok:
            raise error_from_response(action, response.status_code, response.content)
        try:
            return response.status_code, (response.json() if response.content else {})
        except ValueError:
            raise ProviderError(f"IAM {action} answered HTTP {response.status_code} without JSON", retryable=True) from None

    async def _call(self, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        return await asyncio.to_thread(self._request, *args, **kwargs)

    def _account(self, tag: str) -> str:
        return account_path(self._project, account_email(tag, self._project))

    # --- the provider interface -----------------------------------------------------------------------
    async def issue(self, scope: Scope, parameters: Mapping[str, str], generation: int) -> Issued:
        await self._call("serviceAccounts.create", "POST", f"/v1/projects/{urllib.parse.quote(self._project, safe='')}/serviceAccounts",
                         body=create_account_body(scope), ok=(200, 409))  # 409 ALREADY_EXISTS: ours from an earlier attempt
        status, key = await self._call("keys.create", "POST", f"{self._account(scope.tag)}/keys",
                                       body=create_key_body(self._algorithm), ok=(200, 404))
        if status == 404:
            # IAM is eventually consistent: a new account can be invisible to keys.create for a moment.
            raise ProviderError(f"IAM keys.create: service account {account_email(scope.tag, self._project)} not visible yet; retrying",
                                retryable=True)
        key_id, key_file, expires = parse_created_key(key)
        return Issued(id=key_id, values={"key.json": Sensitive(key_file)}, expires_at=expires)

    async def revoke(self, scope: Scope, credential_id: str) -> None:
        if not KEY_ID.match(credential_id):
            raise ProviderError(f"refusing to delete {credential_id!r}: not a service-account key id", retryable=False)
        await self._call("keys.delete", "DELETE", f"{self._account(scope.tag)}/keys/{credential_id}", ok=(200, 404))

    async def list(self, scope: Scope) -> list[str]:
        status, listing = await self._call("keys.list", "GET", f"{self._account(scope.tag)}/keys",
                                           params={"keyTypes": "USER_MANAGED"}, ok=(200, 404))
        if status == 404:
            return []  # no service account: nothing was ever minted (or everything is released)
        return sorted(k["name"].rsplit("/", 1)[-1] for k in listing.get("keys", ()) if k.get("keyType", "USER_MANAGED") == "USER_MANAGED")

    async def release(self, scope: Scope) -> None:
        await self._call("serviceAccounts.delete", "DELETE", self._account(scope.tag), ok=(200, 404))

    async def sweep(self) -> list[str]:
        tags: set[str] = set()
        token = None
        for _ in range(1000):
            params = {"pageSize": 100, **({"pageToken": token} if token else {})}
            _, page = await self._call("serviceAccounts.list", "GET", f"/v1/projects/{urllib.parse.quote(self._project, safe='')}/serviceAccounts",
                                       params=params)
            for account in page.get("accounts", ()):
                match = ACCOUNT_TAG.match(account.get("email") or "")
                if match and (account.get("description") or "").startswith(DESCRIPTION_MARK):
                    tags.add(match.group(1))
            token = page.get("nextPageToken")
            if not token:
                return sorted(tags)
        raise ProviderError("IAM serviceAccounts.list: too many pages", retryable=False)
