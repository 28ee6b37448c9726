"""Deterministic names for everything the operator creates, so a retry or a restart finds what an earlier
attempt made instead of making it twice."""

from __future__ import annotations

import hashlib
import re

from .sshkeys import KeySpec

_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def short_hash(*parts: str, length: int = 8) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:length]


def dns_slug(text: str, max_length: int) -> str:
    slug = _NOT_DNS.sub("-", text.lower()).strip("-")
    return slug[:max_length].rstrip("-") or "x"


def user_key_secret_name(user: str, key: KeySpec) -> str:
    """`ssh-<user>-<type>-<hash>`: one key pair per (namespace, user, key type).

    The hash is over the exact user name, so users whose names differ only in case or punctuation
    ("Alice" and "alice") never share a key.
    """
    return f"ssh-{dns_slug(user, 40)}-{key.slug}-{short_hash(user, key.slug)}"
