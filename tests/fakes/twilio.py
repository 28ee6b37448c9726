"""A FAKE of Twilio's IAM v1 Keys API -- stateful, in-process, checked against Twilio's own OpenAPI contract.

No Twilio emulator exists. This fake implements the API-key part of IAM v1 as the vendored contract
(tests/contracts/twilio_iam_v1.json) describes it: POST /v1/Keys (the secret is returned only here),
GET /v1/Keys (paged by PageSize/Page/PageToken, `meta` with page URLs), GET/POST/DELETE /v1/Keys/{Sid}.
Every request and response is validated against the contract (see contract.py). Behaviour from Twilio's
documentation that the contract does not state:
- HTTP Basic auth: account SID + auth token, or API key SID + secret. Standard and Restricted keys may NOT
  use the Keys resource (Twilio answers 401 with error 20003); the account's own credentials may.
- Errors are Twilio's error document {"code", "message", "more_info", "status"}.
- Outside the IAM contract, one read-only REST API v2010 resource that any valid key may call,
  GET /2010-04-01/Accounts/{AccountSid}/Messages.json (an empty message list): the way a test proves that a
  minted key authenticates, and that it no longer does once deleted.

Fault injection for tests: `outage = True` answers 503 (code 20503); `fail_next(status)` fails the next
N requests with that status.
"""

from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .contract import CONTRACTS, OpenApiContract

MESSAGES_PATH = "/2010-04-01/Accounts/{}/Messages.json"


def _now() -> str:
    return format_datetime(datetime.now(timezone.utc).replace(microsecond=0), usegmt=False)


@dataclass
class Key:
    sid: str
    account_sid: str
    friendly_name: str | None
    secret: str
    created: int  # creation order: lists are newest first
    date_created: str
    date_updated: str
    policy: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:  # iam.v1.key
        return {"sid": self.sid, "friendly_name": self.friendly_name, "date_created": self.date_created,
                "date_updated": self.date_updated, "policy": self.policy}

    def list_view(self) -> dict[str, Any]:  # iam.v1.get_keys
        return {"sid": self.sid, "friendly_name": self.friendly_name, "date_created": self.date_created,
                "date_updated": self.date_updated, "flags": ["rest_api", "signing"]}


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def twilio_error(status: int, code: int, message: str) -> Response:
    return Response(status, {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status})


class FakeTwilio:
    """The fake service. `start()` serves it on a free loopback port in a background thread."""

    def __init__(self) -> None:
        self.contract = OpenApiContract(CONTRACTS / "twilio_iam_v1.json")
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.keys: dict[str, Key] = {}
        self._order = itertools.count()
        self.lock = threading.Lock()
        self.outage = False
        self._failures: list[int] = []
        self.requests = 0
        self.on_request: Callable[[str, str], Callable[[], None] | None] | None = None
        self.server: ThreadingHTTPServer | None = None

    # --- test controls ----------------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1) -> None:
        self._failures += [status] * times

    @property
    def pending_failures(self) -> int:
        return len(self._failures)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeTwilio:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass  # request lines carry key SIDs; keep test output quiet

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                after = fake.on_request(self.command, self.path) if fake.on_request else None
                response = fake.handle(self.command, self.path, self.headers.get("Authorization", ""),
                                       self.headers.get("Content-Type", ""), body)
                if after is not None:
                    after()
                payload = b"" if response.body is None else json.dumps(response.body).encode()
                self.send_response(response.status)
                if response.body is not None:
                    self.send_header("Content-Type", "application/json")
                for key, value in response.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="fake-twilio").start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    # --- the API ----------------------------------------------------------------------------------
    def _principal(self, authorization: str) -> tuple[str, str] | None:
        """('account', sid) or ('key', sid) for valid Basic credentials, else None."""
        scheme, _, encoded = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        if username == self.account_sid and secrets.compare_digest(password, self.auth_token):
            return ("account", username)
        key = self.keys.get(username)
        if key is not None and secrets.compare_digest(password, key.secret):
            return ("key", username)
        return None

    def handle(self, method: str, raw_path: str, authorization: str, content_type: str, body: bytes) -> Response:
        with self.lock:
            self.requests += 1
            if self.outage:
                return twilio_error(503, 20503, "Service Unavailable")
            if self._failures:
                status = self._failures.pop(0)
                response = twilio_error(status, 20429 if status == 429 else 20500, "Too Many Requests" if status == 429 else "Internal Server Error")
                if status == 429:
                    response.headers["Retry-After"] = "1"
                return response
            parsed = urllib.parse.urlsplit(raw_path)
            path, query = parsed.path, dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
            form = dict(urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)) if body else {}
            principal = self._principal(authorization)
            if principal is None:
                return twilio_error(401, 20003, "Authenticate")
            if path.startswith("/2010-04-01/"):
                return self._messages(principal, path, query)
            if self.contract.operation(method, path) is None:
                return twilio_error(404, 20404, f"The requested resource {path} was not found")
            if principal[0] != "account":
                # Standard/Restricted keys cannot use the Keys resource (a Main key, created only in the
                # Console, could): Twilio answers 20003.
                return twilio_error(401, 20003, "Authentication Error - invalid username")
            if content_type and body and not content_type.startswith("application/x-www-form-urlencoded"):
                return twilio_error(400, 20001, "Content-Type must be application/x-www-form-urlencoded")
            if problems := self.contract.check_request(method, path, query, form):
                return twilio_error(400, 20001, f"Invalid parameter: {problems[0]}")
            response = self._route(method, path, query, form)
            self.contract.check_response(method, path, response.status, response.body)
            return response

    def _route(self, method: str, path: str, query: dict[str, str], form: dict[str, str]) -> Response:
        if path == "/v1/Keys":
            return self._create(form) if method == "POST" else self._list(query)
        sid = path.rsplit("/", 1)[-1]
        key = self.keys.get(sid)
        if key is None or key.account_sid != self.account_sid:
            return twilio_error(404, 20404, f"The requested resource {path} was not found")
        if method == "GET":
            return Response(200, key.view())
        if method == "DELETE":
            del self.keys[sid]
            return Response(204)
        if "FriendlyName" in form:  # POST: update
            if len(form["FriendlyName"]) > 64:
                return twilio_error(400, 20001, "FriendlyName must be at most 64 characters")
            key.friendly_name = form["FriendlyName"]
            key.date_updated = _now()
        return Response(200, key.view())

    def _create(self, form: dict[str, str]) -> Response:
        if form["AccountSid"] != self.account_sid:
            return twilio_error(403, 20403, "Forbidden: AccountSid does not match the authenticated account")
        name = form.get("FriendlyName")
        if name is not None and len(name) > 64:
            return twilio_error(400, 20001, "FriendlyName must be at most 64 characters")
        policy = None
        if form.get("KeyType") == "restricted":
            try:
                policy = json.loads(form.get("Policy") or "")
            except ValueError:
                return twilio_error(400, 20001, "Policy must be a JSON document")
            if not isinstance(policy, dict) or not isinstance(policy.get("allow"), list):
                return twilio_error(400, 20001, "Policy must be a JSON object with an 'allow' list")
        elif "Policy" in form:
            return twilio_error(400, 20001, "Policy requires KeyType=restricted")
        now = _now()
        key = Key(sid="SK" + secrets.token_hex(16), account_sid=self.account_sid, friendly_name=name,
                  secret=secrets.token_urlsafe(24)[:32], created=next(self._order),
                  date_created=now, date_updated=now, policy=policy)
        self.keys[key.sid] = key
        return Response(201, {**key.view(), "secret": key.secret})

    def _list(self, query: dict[str, str]) -> Response:
        if query["AccountSid"] != self.account_sid:
            return twilio_error(403, 20403, "Forbidden: AccountSid does not match the authenticated account")
        size = int(query.get("PageSize", 50))
        page = int(query.get("Page", 0))
        # PageToken: "PA<sid>" = the last key of the previous page (Twilio's tokens are opaque; so is ours).
        ordered = sorted((k for k in self.keys.values() if k.account_sid == self.account_sid), key=lambda k: (-k.created, k.sid))
        start = 0
        if token := query.get("PageToken"):
            sids = [k.sid for k in ordered]
            start = sids.index(token[2:]) + 1 if token[2:] in sids else len(sids)
        chunk = ordered[start:start + size]

        def url(page_number: int, token: str | None = None) -> str:
            params = {"AccountSid": self.account_sid, "PageSize": size, "Page": page_number}
            if token:
                params["PageToken"] = token
            return f"{self.url}/v1/Keys?{urllib.parse.urlencode(params)}"

        has_next = start + size < len(ordered)
        meta = {
            "first_page_url": url(0), "key": "keys", "page": page, "page_size": size,
            "next_page_url": url(page + 1, "PA" + chunk[-1].sid) if has_next and chunk else None,
            "previous_page_url": url(page - 1) if page > 0 else None,
            "url": url(page, query.get("PageToken")),
        }
        return Response(200, {"keys": [k.list_view() for k in chunk], "meta": meta})

    def _messages(self, principal: tuple[str, str], path: str, query: dict[str, str]) -> Response:
        account = self.account_sid
        if path != MESSAGES_PATH.format(account):
            return twilio_error(404, 20404, f"The requested resource {path} was not found")
        uri = f"{path}?PageSize=50&Page=0"
        return Response(200, {"messages": [], "end": 0, "first_page_uri": uri, "next_page_uri": None, "page": 0,
                              "page_size": 50, "previous_page_uri": None, "start": 0, "uri": uri})

    # --- helpers for tests ------------------------------------------------------------------------
    def authenticates(self, username: str, password: str) -> int:
        """HTTP status of the v2010 Messages read with these Basic credentials (200: they authenticate)."""
        import requests

        response = requests.get(self.url + MESSAGES_PATH.format(self.account_sid), auth=(username, password), timeout=10)
        return response.status_code
