"""Twilio API keys through the IAM v1 Keys resource (POST /v1/Keys, DELETE /v1/Keys/{Sid}, GET /v1/Keys).

A key's FriendlyName starts with the scope tag, so `list` (the account's keys, paged) finds every key minted
for an entry -- including one created just before a crash -- and the orphan sweep finds keys whose
workspace is gone. Twilio returns a key's secret only in the create response: it goes straight into the
Issued values and nowhere else. Keys are Standard keys unless the platform configures a `policy`, which
makes them Restricted keys with exactly those permissions.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, ClassVar

from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.egress import cleartext_problem
from workspace_secrets.runtime.http import Egress, provider_tls_error
from workspace_secrets.credentials.providers.base import FileContext, FileRef, Issued, ProviderError, Scope

DEFAULT_BASE_URL = "https://iam.twilio.com"
KEY_SID = re.compile(r"^SK[0-9a-fA-F]{32}$")
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
TAGGED_NAME = re.compile(r"^(wso-[0-9a-f]{12})(?: |$)")  # FriendlyNames this operator writes
FRIENDLY_NAME_MAX = 64  # Twilio: "It can be up to 64 characters long."
PAGE_SIZE = 1000  # the maximum the contract allows: one request for most accounts
MAX_PAGES = 100


ENV_FILE_KEYS = ("TWILIO_ACCOUNT_SID", "TWILIO_API_KEY", "TWILIO_API_SECRET")


def dotenv(values: Mapping[str, Sensitive]) -> dict[str, Sensitive]:
    """`twilio.env`: the key as a dotenv file (python-dotenv, `set -a; . "$TWILIO_ENV_FILE"`)."""
    if any(k not in values for k in ENV_FILE_KEYS):
        return {}
    lines = "".join(f"{k}={values[k].reveal_text().strip()}\n" for k in ENV_FILE_KEYS)
    return {"twilio.env": Sensitive(lines)}


def friendly_name(scope: Scope) -> str:
    """The tag first (what `list` matches), then where the key belongs, cut to Twilio's limit."""
    return f"{scope.tag} {scope.namespace}/{scope.workspace}/{scope.entry}"[:FRIENDLY_NAME_MAX].rstrip()


def tag_of(name: str | None) -> str | None:
    match = TAGGED_NAME.match(name or "")
    return match.group(1) if match else None


def create_form(account_sid: str, scope: Scope, policy: Mapping[str, Any] | None) -> dict[str, str]:
    form = {"AccountSid": account_sid, "FriendlyName": friendly_name(scope)}
    if policy is not None:
        form["KeyType"] = "restricted"
        form["Policy"] = json.dumps(policy, separators=(",", ":"), sort_keys=True)
    return form


def error_from_response(action: str, status: int, body: bytes, headers: Mapping[str, str]) -> ProviderError:
    """Twilio's error document is {"code", "message", "more_info", "status"}; it names resources, not secrets."""
    code, message = None, ""
    try:
        document = json.loads(body or b"{}")
        if isinstance(document, dict):
            code, message = document.get("code"), str(document.get("message") or "")
    except ValueError:
        pass
    retry_after = None
    if (value := headers.get("Retry-After")) and value.isdigit():
        retry_after = float(value)
    retryable = status == 429 or status >= 500
    hint = ""
    if status in (401, 403):
        hint = " (the admin credentials Secret's TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN were refused)"
    text = f"Twilio {action} failed: HTTP {status}" + (f" (code {code})" if code else "") + (f": {message[:200]}" if message else "") + hint
    return ProviderError(text, retryable=retryable, retry_after=retry_after)


class TwilioApiKeyProvider:
    type_name: ClassVar[str] = "twilio-api-key"
    access = None  # the platform's allow rule (credentials.ledger.AccessRule), set by credentials/setup.py

    def __init__(self, name: str, *, account_sid: str, auth_token: Sensitive, base_url: str = DEFAULT_BASE_URL,
                 policy: Mapping[str, Any] | None = None, timeout: float = 15.0, session: Any = None,
                 egress: Egress | None = None) -> None:
        import requests

        self.name = name
        self._account_sid = account_sid
        self._auth = (account_sid, auth_token)
        self._base_url = base_url.rstrip("/")
        self._policy = policy
        self._timeout = timeout
        # The operator's proxies and CAs (runtime/http.py Egress); a test's own session is taken as it is.
        self._session = session or (egress or Egress.from_environment()).configure_requests(requests.Session())

    @classmethod
    def from_config(cls, *, name: str, config: Mapping[str, Any], admin: Mapping[str, Sensitive], kube: Any,
                    egress: Egress | None = None) -> TwilioApiKeyProvider:
        try:
            account_sid, token = admin["TWILIO_ACCOUNT_SID"].reveal_text().strip(), admin["TWILIO_AUTH_TOKEN"]
        except KeyError as exc:
            raise ValueError(f"admin credentials Secret lacks {exc.args[0]!r} (keys: TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)") from None
        if not ACCOUNT_SID.match(account_sid):
            raise ValueError("TWILIO_ACCOUNT_SID in the admin credentials Secret is not an account SID (AC + 32 hex digits)")
        policy = config.get("policy")
        if policy is not None and not isinstance(policy, Mapping):
            raise ValueError("config.policy must be a mapping like {allow: [\"/twilio/messaging/messages/read\"]}")
        base_url = str(config.get("baseURL", DEFAULT_BASE_URL))
        if problem := cleartext_problem(base_url):  # the master auth token goes in every request's Basic auth
            raise ValueError(f"config.baseURL: {problem}")
        return cls(name, account_sid=account_sid, auth_token=Sensitive(token.reveal_text().strip()),
                   base_url=base_url, policy=policy,
                   timeout=float(config.get("timeoutSeconds", 15)), egress=egress)

    def env(self) -> Mapping[str, str]:
        return {"TWILIO_ACCOUNT_SID": "TWILIO_ACCOUNT_SID", "TWILIO_API_KEY": "TWILIO_API_KEY", "TWILIO_API_SECRET": "TWILIO_API_SECRET"}

    def file_env(self) -> Mapping[str, str | FileRef]:
        # The account SID is the platform's and never rotates; the key and its secret are in the dotenv file.
        return {"TWILIO_ACCOUNT_SID": "TWILIO_ACCOUNT_SID", "TWILIO_ENV_FILE": FileRef("twilio.env")}

    def files(self, values: Mapping[str, Sensitive], where: FileContext) -> Mapping[str, Sensitive]:
        return dotenv(values)

    def validate(self, parameters: Mapping[str, str]) -> str | None:
        if parameters:
            return (f"twilio-api-key takes no parameters (the platform's provider configuration sets the key type and policy), "
                    f"got {', '.join(sorted(parameters))}")
        return None

    # --- HTTP ----------------------------------------------------------------------------------------
    def _request(self, action: str, method: str, path: str, *, data: Mapping[str, str] | None = None,
                 params: Mapping[str, Any] | None = None, ok: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        import requests

        username, token = self._auth
        try:
            response = self._session.request(method, f"{self._base_url}{path}", data=data, params=params,
                                             auth=(username, token.reveal_text()), timeout=self._timeout,
                                             headers={"Accept": "application/json"}, allow_redirects=False)
        except requests.RequestException as exc:
            tls = provider_tls_error(exc, self._base_url)
            raise ProviderError(f"Twilio {action} failed: {tls or f'{type(exc).__name__} reaching {self._base_url}'}", retryable=True) from None
        if response.status_code not in ok:
            raise error_from_response(action, response.status_code, response.content, response.headers)
        if response.status_code == 204 or not response.content:
            return response.status_code, None
        try:
            return response.status_code, response.json()
        except ValueError:
            raise ProviderError(f"Twilio {action} answered HTTP {response.status_code} without JSON", retryable=True) from None

    async def _call(self, *args: Any, **kwargs: Any) -> tuple[int, Any]:
        return await asyncio.to_thread(self._request, *args, **kwargs)

    # --- the provider interface -----------------------------------------------------------------------
    async def issue(self, scope: Scope, parameters: Mapping[str, str], generation: int) -> Issued:
        _, key = await self._call("CreateNewKey", "POST", "/v1/Keys", data=create_form(self._account_sid, scope, self._policy), ok=(201, 200))
        sid, secret = (key or {}).get("sid"), (key or {}).get("secret")
        if not isinstance(sid, str) or not KEY_SID.match(sid) or not secret:
            # A key without its secret is useless (Twilio never shows it again): revoke it at once.
            if isinstance(sid, str) and KEY_SID.match(sid):
                await self.revoke(scope, sid)
            raise ProviderError("Twilio CreateNewKey answered without a key SID and secret", retryable=True)
        values = {"TWILIO_ACCOUNT_SID": Sensitive(self._account_sid), "TWILIO_API_KEY": Sensitive(sid),
                  "TWILIO_API_SECRET": Sensitive(secret)}
        return Issued(id=sid, values=values)

    async def revoke(self, scope: Scope, credential_id: str) -> None:
        if not KEY_SID.match(credential_id):
            raise ProviderError(f"refusing to delete {credential_id!r}: not a Twilio key SID", retryable=False)
        await self._call("DeleteKey", "DELETE", f"/v1/Keys/{credential_id}", ok=(204, 404))  # 404: already gone

    async def _keys(self) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = []
        params: Mapping[str, Any] | None = {"AccountSid": self._account_sid, "PageSize": PAGE_SIZE}
        path = "/v1/Keys"
        for _ in range(MAX_PAGES):
            _, page = await self._call("ListGetKeys", "GET", path, params=params)
            keys += list((page or {}).get("keys") or ())
            next_url = ((page or {}).get("meta") or {}).get("next_page_url")
            if not next_url:
                return keys
            # Follow the page token, but always against the configured base URL: the admin credentials are
            # never sent to a host the configuration did not name.
            parsed = urllib.parse.urlsplit(next_url)
            path, params = parsed.path, dict(urllib.parse.parse_qsl(parsed.query))
        raise ProviderError(f"Twilio ListGetKeys: more than {MAX_PAGES} pages of keys", retryable=False)

    async def list(self, scope: Scope) -> list[str]:
        return sorted(k["sid"] for k in await self._keys() if tag_of(k.get("friendly_name")) == scope.tag and k.get("sid"))

    async def release(self, scope: Scope) -> None:
        return None  # nothing per scope besides the keys

    async def sweep(self) -> list[str]:
        return sorted({tag for k in await self._keys() if (tag := tag_of(k.get("friendly_name")))})
