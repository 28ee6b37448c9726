"""HTTP behind a small interface (the httpx transport idea): providers build `Request`s and read
`Response`s; `AiohttpTransport` sends them for real (unit tests use tests/fakes/http.py's MockTransport).

Nothing here logs a request or a response: bodies and headers carry tokens.
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode

import aiohttp


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


#: The largest response body read (1 MiB): token, user and discovery answers are a few KiB. A bigger one is
#: refused without reading it into memory.
MAX_BODY = 1024 * 1024


class ResponseTooLarge(TransportError):
    """The answer's body is larger than MAX_BODY: nothing of it was kept."""


def too_large(request: Request) -> ResponseTooLarge:
    return ResponseTooLarge(f"{request.method} {request.url.split('?', 1)[0]}: the answer is larger than {MAX_BODY // 1024} KiB")


class Transport(Protocol):
    async def send(self, request: Request, *, timeout: float = 30.0) -> Response: ...


class AiohttpTransport:
    """Sends requests with one shared aiohttp session (connection pooling, system CA bundle)."""

    def __init__(self, session: aiohttp.ClientSession | None = None) -> None:
        self._session = session
        self._owned = session is None

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=False, raise_for_status=False)
            self._owned = True
        return self._session

    async def send(self, request: Request, *, timeout: float = 30.0) -> Response:
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
        try:
            async with session.request(
                request.method, request.url, headers=headers, data=data, auth=auth, allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
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
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception's text can include the URL; our URLs carry no tokens (they go in headers/bodies).
            raise TransportError(f"{request.method} {request.url.split('?', 1)[0]}: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._owned and self._session is not None:
            await self._session.close()

