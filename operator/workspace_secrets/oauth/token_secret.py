"""The token Secret's format: what the UserToken side writes and the workspace side reads. One module for both, so
the writer (user_token/policy.py) and the reader (workspace_secret/tokens.py, the token's copy in a workspace) agree
without either feature room importing the other. Pure: no I/O."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

from workspace_secrets.api import constants as c
from workspace_secrets.oauth.protocol import TokenSet
from workspace_secrets.runtime.sensitive import Sensitive


def is_owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == owner_uid and r.get("controller") for r in refs)


def is_token_secret_of(secret: Mapping[str, Any] | None, uid: str, user: str) -> bool:
    """Whether `secret` is the token Secret the operator wrote for the UserToken with this uid and user: controller-owned
    by it, labelled managed-by the operator, component user-token, user <user>. Anything else of the right name -- a
    tenant's forgery, a leftover of a deleted namesake -- is never read."""
    if secret is None:
        return False
    labels = (secret.get("metadata") or {}).get("labels") or {}
    return (is_owned_by(secret, uid)
            and labels.get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME
            and labels.get(c.LABEL_COMPONENT) == c.COMPONENT_USER_TOKEN
            and labels.get(c.LABEL_USER) == user)


def git_credentials_line(git_url: str, username: str, token: bytes) -> bytes:
    """One line of git's credential store (`git config credential.helper 'store --file=...'`):
    scheme://user:password@host[:port], both parts percent-encoded as git expects."""
    parts = urlsplit(git_url)
    user = quote(username, safe="").encode()
    password = quote(token.decode(), safe="").encode()
    return parts.scheme.encode() + b"://" + user + b":" + password + b"@" + parts.netloc.encode() + b"\n"


def format_time(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


ANNOTATION_ISSUED_AT = f"{c.GROUP}/token-issued-at"
ANNOTATION_SCOPES = f"{c.GROUP}/token-scopes"  # granted scopes (not secret), kept for validation and status


@dataclass(frozen=True)
class StoredToken:
    """The token as read back from its Secret."""

    tokens: TokenSet
    issued_at: datetime | None
    generation: str | None


def read_token_secret(secret: Mapping[str, Any]) -> StoredToken | None:
    data = secret.get("data") or {}
    if c.KEY_TOKEN not in data:
        return None
    meta = secret.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    refresh = base64.b64decode(data[c.KEY_REFRESH_TOKEN]) if c.KEY_REFRESH_TOKEN in data else None
    expires = parse_time(base64.b64decode(data[c.KEY_EXPIRES_AT]).decode()) if c.KEY_EXPIRES_AT in data else None
    token_type = base64.b64decode(data[c.KEY_TOKEN_TYPE]).decode() if c.KEY_TOKEN_TYPE in data else "bearer"
    scopes = annotations.get(ANNOTATION_SCOPES)
    return StoredToken(
        tokens=TokenSet(
            access_token=Sensitive(base64.b64decode(data[c.KEY_TOKEN])),
            refresh_token=Sensitive(refresh) if refresh else None,
            token_type=token_type,
            expires_at=expires,
            scopes=tuple(scopes.split()) if scopes is not None else None,
        ),
        issued_at=parse_time(annotations.get(ANNOTATION_ISSUED_AT)),
        generation=annotations.get(c.ANNOTATION_TOKEN_GENERATION),
    )
