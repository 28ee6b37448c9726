"""The names of the per-user key Secrets, and the pattern reserved for them (pure)."""

from __future__ import annotations

import re

from workspace_secrets.runtime.names import dns_slug, short_hash
from workspace_secrets.user_keys.sshkeys import GENERATED_RSA_BITS, KeySpec, KeyType


def user_key_secret_name(user: str, key: KeySpec) -> str:
    """`ssh-<user>-<type>-<hash>`: one key pair per (namespace, user, key type).

    The hash is over the exact user name, so users whose names differ only in case or punctuation
    ("Alice" and "alice") never share a key.
    """
    return f"ssh-{dns_slug(user, 40)}-{key.slug}-{short_hash(user, key.slug)}"


def _slug_pattern() -> str:
    """The key-type part of user_key_secret_name, from KeySpec.slug: ed25519, ecdsa-p256, rsa-<bits>.

    RSA is reserved for any bit count (`rsa-[0-9]+`), not only the sizes generated today, so a future size
    is reserved before it is ever generated."""
    fixed = sorted({KeySpec(t).slug for t in KeyType if t is not KeyType.RSA})
    rsa_prefix = KeySpec(KeyType.RSA, GENERATED_RSA_BITS[0]).slug.rsplit("-", 1)[0]
    assert all(re.fullmatch(r"[a-z0-9-]+", part) for part in (*fixed, rsa_prefix))  # no regex metacharacters
    return "|".join([*fixed, f"{rsa_prefix}-[0-9]+"])


#: Names the operator keeps for itself: the per-user key Secrets. Nobody else -- a WorkspaceSecret's
#: Secret, a tenant -- may hold such a name, or the operator (or a UserToken's addSSHKey) could take a
#: squatted Secret for a user's key. The same pattern is in crds/workspacesecrets.yaml (CEL) and in the
#: admission policies of deploy/policies.
RESERVED_SECRET_NAME_PATTERN = f"^ssh-.+-({_slug_pattern()})-[0-9a-f]{{8}}$"
_RESERVED = re.compile(RESERVED_SECRET_NAME_PATTERN)


def is_reserved_secret_name(name: str) -> bool:
    """Whether `name` has the shape of an operator per-user key Secret (`ssh-<user>-<type>-<8 hex>`)."""
    return bool(_RESERVED.match(name))
