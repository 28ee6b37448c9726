"""The per-user SSH key pair: one per (namespace, user, key type), created once and shared by the user's
workspaces, rotated on request, uploaded by the user's UserTokens. One service both CRDs use:
WorkspaceSecrets `ensure()` it (create, rotate, load). UserTokens upload the keys the user's workspaces use
(`workspace_keys()`: generated keys of any type and brought keys, read from the workspace Secrets the operator
wrote), and their Secret watch asks `workspace_key_changed()` whether an event changed one.

Every step is idempotent and keyed by the deterministic name (naming.user_key_secret_name); a lost race is a
RetryLater, a Secret at the name that is not the operator's is a ProblemFound (left untouched).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Problem, ProblemFound
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.kube import Conflict, Kube, core_path, group_path
from workspace_secrets.user_keys import policy, sshkeys
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType, SSHKeyPair

if TYPE_CHECKING:
    from workspace_secrets.runtime.secret_index import SecretIndex

#: Parsed keys kept, by (namespace, name, resourceVersion); cleared when it grows past this. Small: a generated key
#: parses in well under a millisecond, and each entry holds a private key (memory per user at 10,000 users).
CACHE_SIZE = 256


@dataclass(frozen=True)
class UserKey:
    name: str  # the Secret's name
    key: SSHKeyPair
    written: Mapping[str, Any] | None = None  # the Secret as this call wrote it (None: read, not written)
    operation: str | None = None  # "create" | "update" (a rotation) | None
    resource_version: str = ""  # of the Secret as read or written (workspace_secret/inputs.py records it)


#: The watch-fed index of the operator's Secrets in a namespace (runtime/secret_index.py), when there is one.
IndexFor = Callable[[str], "SecretIndex | None"]


class UserKeys:
    def __init__(self, kube: Kube, *, index_for: IndexFor | None = None) -> None:
        self._kube = kube
        # A key Secret the synced index does not know is created without a GET first (one request less per new
        # user); should it exist after all (the index lags a moment), the create's 409 retries the reconcile.
        self._index_for = index_for or (lambda namespace: None)
        self._cache: dict[tuple[str, ...], SSHKeyPair] = {}
        # The key fingerprint of each workspace Secret as last seen by the Secret watch (workspace_key_changed).
        self._workspace_fingerprints: dict[tuple[str, str], str] = {}

    async def ensure(self, namespace: str, user: str, spec: KeySpec, *, rotation_request: str | None = None,
                     look: bool = False) -> UserKey:
        """The user's key pair of this type: created if missing, regenerated for a new `rotation_request` (an id
        stamped on the Secret in the same write as the new key), else loaded."""
        name = user_key_secret_name(user, spec)
        path = core_path(namespace, "secrets", name)
        index = self._index_for(namespace)
        known_absent = not look and index is not None and index.synced and index.version(namespace, name) is None
        existing = None if known_absent else await self._kube.get(path)
        if existing is not None and not policy.is_user_key_secret(existing, user):
            raise ProblemFound(Problem(
                "UserKeyConflict",
                f"Secret {name!r} (where the operator keeps {user!r}'s {spec.slug} key) exists but was not created "
                f"by the operator for this user; it was left untouched. Remove or rename it.",
            ))
        if existing is None:
            key = await _generate(spec, policy.comment(user))
            try:
                created = await self._kube.create(path.rsplit("/", 1)[0], policy.user_key_body(namespace, user, name, key, rotation_request))
            except Conflict:  # another workspace of this user won the race: use its key
                if known_absent:  # or a Secret the index cannot know (not labelled as ours): look, as without an index
                    return await self.ensure(namespace, user, spec, rotation_request=rotation_request, look=True)
                raise RetryLater(f"user key {name!r} was created concurrently") from None
            return UserKey(name, key, created, "create", created["metadata"]["resourceVersion"])
        if rotation_request and (existing["metadata"].get("annotations") or {}).get(c.ANNOTATION_ROTATION_REQUEST) != rotation_request:
            key = await _generate(spec, policy.comment(user))
            body = policy.user_key_body(namespace, user, name, key, rotation_request)
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            try:
                replaced = await self._kube.replace(path, body)
            except Conflict:
                raise RetryLater(f"user key {name!r} changed while rotating") from None
            return UserKey(name, key, replaced, "update", replaced["metadata"]["resourceVersion"])
        return UserKey(name, self._load(existing, user), resource_version=existing["metadata"]["resourceVersion"])

    async def workspace_keys(self, namespace: str, user: str) -> list[policy.KeyInUse]:
        """The distinct public keys the user's WorkspaceSecrets in `namespace` use, oldest workspace first: each
        read from the WorkspaceSecret's own Secret, and only from a Secret proven to be the one the operator wrote
        for it (policy.workspace_public_key) -- never from a Secret a tenant named, labelled or filled. One list of
        the user's workspace Secrets (label-selected, from the watch cache), one read of each one's WorkspaceSecret
        (at most policy.MAX_WORKSPACES_READ): the cost follows the user's workspaces, not the namespace's."""
        if not policy.is_label_value(user):
            return []
        selector = f"{c.MANAGED_SELECTOR},{c.LABEL_COMPONENT}={c.COMPONENT_WORKSPACE_SECRET},{c.LABEL_USER}={user}"
        listing = await self._kube.list(core_path(namespace, "secrets"), label_selector=selector, from_cache=True)
        secrets = sorted(listing.get("items", ()), key=lambda s: s["metadata"]["name"])[:policy.MAX_WORKSPACES_READ]
        found = []
        for secret in secrets:
            owner = policy.workspace_owner(secret)
            if owner is None:
                continue
            ws = await self._kube.get(group_path(c.API_VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, owner))
            if ws is None or (ws.get("spec") or {}).get("user") != user or ws["metadata"].get("deletionTimestamp"):
                continue
            meta = ws["metadata"]
            secret_name = (ws.get("spec") or {}).get("secretName") or meta["name"]
            line = policy.workspace_public_key(secret, secret_name=secret_name, ws_uid=meta.get("uid", ""), user=user)
            if line:
                found.append((meta.get("creationTimestamp") or "", meta["name"], line))
        return policy.keys_in_use(found)

    def workspace_key_changed(self, event_type: str, secret: Mapping[str, Any]) -> bool:
        """Whether a watch event of a workspace Secret changed the key it holds (remembered per Secret)."""
        meta = secret.get("metadata") or {}
        where = (meta.get("namespace", ""), meta.get("name", ""))
        changed, fingerprint = policy.workspace_key_change(self._workspace_fingerprints.get(where), event_type, secret)
        if fingerprint is None:
            self._workspace_fingerprints.pop(where, None)
        else:
            self._workspace_fingerprints[where] = fingerprint
        return changed

    def forget_workspace_key(self, secret: Mapping[str, Any]) -> None:
        """Drop what workspace_key_changed remembers of this workspace Secret."""
        meta = secret.get("metadata") or {}
        self._workspace_fingerprints.pop((meta.get("namespace", ""), meta.get("name", "")), None)

    def _load(self, secret: Mapping[str, Any], user: str) -> SSHKeyPair:
        meta = secret["metadata"]
        cache_key = (meta["namespace"], meta["name"], meta["resourceVersion"])
        key = self._cache.get(cache_key)
        if key is None:
            try:
                private = base64.b64decode((secret.get("data") or {})[c.KEY_SSH_PRIVATE])
                key = sshkeys.load(private, comment=policy.comment(user))
            except (KeyError, ValueError) as exc:
                reason = exc if isinstance(exc, sshkeys.InvalidKey) else "the key is missing"
                raise ProblemFound(Problem(
                    "InvalidUserKey",
                    f"Secret {meta['name']!r} holding {user!r}'s key is damaged ({reason}); delete it and the "
                    f"operator generates a new key for every workspace of the user.",
                )) from None
            if len(self._cache) > CACHE_SIZE:
                self._cache.clear()
            self._cache[cache_key] = key
        return key


async def _generate(spec: KeySpec, comment: str) -> SSHKeyPair:
    if spec.type is KeyType.RSA:  # ~0.1-2 s of CPU: keep it off the event loop so other objects progress
        return await asyncio.to_thread(sshkeys.generate, spec, comment=comment)
    return sshkeys.generate(spec, comment=comment)
