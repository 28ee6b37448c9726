"""Signed, expiring, purpose-bound tokens for the connect page: per-UserToken links, browser sessions,
CSRF tokens and OAuth `state` values. HMAC-SHA256 over (purpose, payload); the payload is JSON with an
`exp` (Unix seconds). A value signed for one purpose never verifies for another."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from workspace_secrets.runtime.sensitive import Sensitive


class BadSignature(ValueError):
    """Forged, tampered with, or signed for another purpose or with another key."""


class Expired(ValueError):
    """Correctly signed, but past its expiry."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, key: Sensitive) -> None:
        if len(key.reveal()) < 32:
            raise ValueError("the signing key must be at least 32 bytes")
        self._key = key

    @classmethod
    def generate(cls) -> Signer:
        return cls(Sensitive(secrets.token_bytes(32)))

    def _mac(self, purpose: str, body: str) -> str:
        return b64url(hmac.new(self._key.reveal(), f"{purpose}\x00{body}".encode(), hashlib.sha256).digest())

    def sign(self, purpose: str, payload: Mapping[str, Any], *, expires: datetime) -> str:
        body = b64url(json.dumps({**payload, "exp": int(expires.timestamp())}, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{self._mac(purpose, body)}"

    def verify(self, purpose: str, token: str, *, now: datetime) -> dict[str, Any]:
        body, dot, mac = (token or "").partition(".")
        if not dot or not hmac.compare_digest(mac.encode(), self._mac(purpose, body).encode()):
            raise BadSignature(f"invalid {purpose} signature")
        try:
            payload = json.loads(unb64url(body))
        except ValueError:
            raise BadSignature(f"malformed {purpose}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("exp"), int):
            raise BadSignature(f"malformed {purpose}")
        if payload["exp"] <= now.timestamp():
            raise Expired(f"the {purpose} has expired")
        return payload
