"""A test transport for the OAuth providers: every request goes to a test function (runtime.http.Transport)."""

from __future__ import annotations

import json as jsonlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from workspace_secrets.runtime.http import MAX_BODY, Request, Response, too_large


Handler = Callable[[Request], Response | Awaitable[Response]]


class MockTransport:
    """For unit tests: every request goes to `handler`, and is recorded in `requests`."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[Request] = []

    async def send(self, request: Request, *, timeout: float = 30.0) -> Response:
        self.requests.append(request)
        result = self._handler(request)
        response = result if isinstance(result, Response) else await result
        if len(response.body) > MAX_BODY:  # as AiohttpTransport: a bigger answer never reaches a provider
            raise too_large(request)
        return response


def json_response(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, {"content-type": "application/json", **{k.lower(): v for k, v in (headers or {}).items()}},
                    jsonlib.dumps(payload).encode())
