"""A WorkspaceSecret's SSH key: the user's key (user_keys.UserKeys: created, rotated, shared by the user's
workspaces) or a key the user brought (spec.ssh.existingSecretRef, read from the user's own Secret)."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Problem, ProblemFound
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.kube import Kube, core_path
from workspace_secrets.user_keys import sshkeys
from workspace_secrets.user_keys.policy import comment
from workspace_secrets.user_keys.service import UserKeys
from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType, SSHKeyPair
from workspace_secrets.workspace_secret import policy
from workspace_secrets.workspace_secret.refs import event_ref, log_ref

log = logging.getLogger(__name__)

#: Brought keys are decrypted and parsed here, never on the event loop: even bounded (sshkeys.check_work_bounds)
#: a key costs up to about a second of CPU, and the loop also answers the pod-injection webhook. Two threads:
#: one tenant's keys can occupy them, never the loop; further keys wait their turn.
KEY_PARSE_WORKERS = 2
KEY_PARSE_DEADLINE = 30.0  # seconds, queueing included; a key that takes longer is reported, not waited for
_key_parser = ThreadPoolExecutor(max_workers=KEY_PARSE_WORKERS, thread_name_prefix="byo-key")
CACHE_SIZE = 4096

#: Called with each Secret written (the object, its component label, create | update).
Written = Callable[[Mapping[str, Any], str, str], None]
#: Called after the user's key was rotated (namespace, user): every WorkspaceSecret of that user is queued.
Rotated = Callable[[str, str], Awaitable[None]]


class Keys:
    def __init__(self, kube: Kube, user_keys: UserKeys, events: EventRecorder, *, written: Written,
                 rotated: Rotated | None = None) -> None:
        self._kube = kube
        self._user_keys = user_keys
        self._events = events
        self._written = written
        self._rotated = rotated
        self._cache: dict[tuple[str, ...], SSHKeyPair] = {}
        # Brought keys that failed to load, by the same key as _cache (the Secret's resourceVersion among it):
        # a wrong passphrase on an expensive key is paid once per change of the Secret, not once per reconcile.
        self._refused: dict[tuple[str, ...], str] = {}

    async def key(self, ws: WorkspaceSecret) -> tuple[SSHKeyPair | None, str, str | None, Problem | None, str]:
        """(the key, its source, the rotation request handled, why there is no key, the resourceVersion of the
        user's key Secret it came from -- "" for a brought key)."""
        if ws.ssh.existing_secret_ref is not None:
            key, problem = await self.brought(ws)
            return key, policy.KEY_SOURCE_EXISTING, None, problem, ""
        try:
            key, version = await self._users(ws)
        except ProblemFound as exc:
            return None, policy.KEY_SOURCE_GENERATED, None, exc.problem, ""
        return key, policy.KEY_SOURCE_GENERATED, ws.rotate_ssh_key, None, version

    async def _users(self, ws: WorkspaceSecret) -> tuple[SSHKeyPair, str]:
        """The (namespace, user, key type) key pair, created once and shared by that user's workspaces; a new
        value of the rotate annotation regenerates it."""
        spec = KeySpec(KeyType(ws.ssh.key_type), ws.ssh.rsa_bits)
        result = await self._user_keys.ensure(ws.namespace, ws.user, spec, rotation_request=policy.rotation_request(ws))
        key = result.key
        fanned_out = True
        if result.operation == "update" and self._rotated is not None:
            # A rotation: every WorkspaceSecret of the user follows now. The watch event of our own write is
            # skipped as an echo, so the watch would not -- the user's bound workspaces would keep the old key
            # until the periodic resync. Should queueing them fail, the write is not remembered as ours: its
            # watch event then fans out instead (a change made by anyone else always does).
            try:
                await self._rotated(ws.namespace, ws.user)
            except Exception as exc:  # noqa: BLE001 - the watch event covers it
                fanned_out = False
                log.warning("Could not queue %r's workspaces after the rotation (%s); the Secret watch does.", ws.user, exc, extra=log_ref(ws))
        if result.written is not None and result.operation is not None and fanned_out:
            self._written(result.written, c.COMPONENT_USER_SSH_KEY, result.operation)
        if result.operation == "create":
            log.info("Created Secret %r with %r's %s key %s.", result.name, ws.user, key.type, key.fingerprint, extra=log_ref(ws))
        elif result.operation == "update":
            log.info("Rotated %r's %s key to %s.", ws.user, key.type, key.fingerprint, extra=log_ref(ws))
            await self._events.normal(event_ref(ws), "SSHKeyRotated", f"Rotated {ws.user!r}'s {key.type} key to {key.fingerprint}; every workspace of the user gets the new key.")
        return key, result.resource_version

    async def brought(self, ws: WorkspaceSecret) -> tuple[SSHKeyPair | None, Problem | None]:
        ref = ws.ssh.existing_secret_ref
        assert ref is not None
        where = f"spec.ssh.existingSecretRef: Secret {ref.name!r}"
        source = await self._kube.get(core_path(ws.namespace, "secrets", ref.name))
        not_owned = policy.existing_key_ownership_problem(source, ws, where)
        if not_owned is not None or source is None:
            return None, not_owned
        # From here on the Secret is the user's own: naming its keys tells them nothing new (never list them).
        data = source.get("data") or {}
        if ref.private_key_key not in data:
            return None, Problem("InvalidExistingKey", f"{where} has no key {ref.private_key_key!r}; put the private key there, or set privateKeyKey.")
        passphrase = None
        if ref.passphrase_key:
            if ref.passphrase_key not in data:
                return None, Problem("InvalidExistingKey", f"{where} has no key {ref.passphrase_key!r} named by passphraseKey.")
            passphrase = base64.b64decode(data[ref.passphrase_key]).rstrip(b"\r\n")
        meta = source["metadata"]
        cache_key = (meta.get("namespace", ""), meta.get("name", ""), meta.get("resourceVersion", ""), ref.private_key_key, ref.passphrase_key or "", ws.user)
        key = self._cache.get(cache_key)
        if key is not None:
            return key, None
        refused = self._refused.get(cache_key)
        if refused is not None:  # the same bytes were refused before: never pay their KDF again
            return None, Problem("InvalidExistingKey", f"{where}, key {ref.private_key_key!r}: {refused}.")
        try:
            key = await _load_off_loop(base64.b64decode(data[ref.private_key_key]), passphrase, comment(ws.user))
        except sshkeys.InvalidKey as exc:
            if len(self._refused) > CACHE_SIZE:
                self._refused.clear()
            self._refused[cache_key] = str(exc)
            return None, Problem("InvalidExistingKey", f"{where}, key {ref.private_key_key!r}: {exc}.")
        if len(self._cache) > CACHE_SIZE:
            self._cache.clear()
        self._cache[cache_key] = key
        return key, None


async def _load_off_loop(private_key: bytes, passphrase: bytes | None, comment: str) -> SSHKeyPair:
    """sshkeys.load in the key-parsing threads, with a deadline (the thread finishes its bounded work)."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(_key_parser, lambda: sshkeys.load(private_key, passphrase=passphrase, comment=comment))
    try:
        return await asyncio.wait_for(future, KEY_PARSE_DEADLINE)
    except asyncio.TimeoutError:  # the threads are busy with other keys: the work queue retries with backoff
        raise RetryLater(f"a brought key could not be checked within {KEY_PARSE_DEADLINE:.0f} s") from None
