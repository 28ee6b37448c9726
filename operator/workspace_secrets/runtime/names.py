"""Deterministic names for everything the operator creates, so a retry or a restart finds what an earlier
attempt made instead of making it twice (pure)."""

from __future__ import annotations

import hashlib
import re

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]


def dns_slug(text: str, max_length: int) -> str:
    slug = _NOT_DNS.sub("-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "x"
