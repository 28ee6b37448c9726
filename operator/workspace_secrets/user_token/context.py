"""What the parts of the UserToken room share, explicitly: the clients, the per-token coordination (locks, the
schedule: the work queue), what the operator remembers about tokens between passes, and the reads every part
needs (the OAuthApplication binding, its client Secret) and the status write.

The controller (controller.py) builds one Context; a maintenance pass (maintenance.py), the connect flow
(connect.py) and the deletion (cleanup.py) get it instead of reaching into the controller."""

from __future__ import annotations

import asyncio
import base64
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.conditions import Condition, Problem, ProblemFound
from workspace_secrets.api.oauth_application import OAuthApplication, app_path, unavailable_application
from workspace_secrets.api.user_token import UserToken
from workspace_secrets.api.workspace_secret import SpecError
from workspace_secrets.oauth.base import ClientCredentials, DeviceAuthorization, OAuthProvider
from workspace_secrets.oauth.protocol import TokenSet
from workspace_secrets.oauth.registry import ProviderCache
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.runtime.kube import Kube, core_path, group_path
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.user_keys.service import UserKeys
from workspace_secrets.user_token import policy

MAX_SLEEP = 300.0  # every token gets a pass at least this often (the work queue's ceiling on a pass's next delay)


@dataclass(frozen=True)
class ConnectSettings:
    base_url: str  # where users reach the connect page; the OAuth callback is <base_url>/oauth/callback
    schedule: policy.Schedule = policy.Schedule()

    @property
    def redirect_uri(self) -> str:
        return f"{self.base_url.rstrip('/')}/oauth/callback"


@dataclass
class TokenMemory:
    """What the operator keeps in memory about tokens, by UserToken uid (lost with the process, by design)."""

    failures: dict[str, int] = field(default_factory=dict)  # consecutive temporary failures (backoff)
    unsaved: dict[str, tuple[TokenSet, datetime]] = field(default_factory=dict)  # a rotated token not yet written
    devices: dict[str, DeviceAuthorization] = field(default_factory=dict)  # the device authorization being polled
    device_requested: set[str] = field(default_factory=set)  # whose user asked for a new device code
    # When the device authorization may be polled next. Several triggers (a watch event, a scheduled pass, the
    # connect page) can pass over one token at the same moment; the token endpoint sees one poll per interval all
    # the same (RFC 8628 3.5: a faster poll earns slow_down).
    device_next_poll: dict[str, datetime] = field(default_factory=dict)
    refreshes: int = 0  # refresh calls made (for tests)

    def forget(self, uid: str) -> None:
        """The token is deleted: drop everything kept about it (a device code among it)."""
        self.failures.pop(uid, None)
        self.unsaved.pop(uid, None)
        self.devices.pop(uid, None)
        self.device_requested.discard(uid)
        self.device_next_poll.pop(uid, None)

    def backoff(self, uid: str, retry_after: float | None = None) -> float:
        failures = self.failures[uid] = self.failures.get(uid, 0) + 1
        delay = min(2.0 * 2 ** (failures - 1), MAX_SLEEP)
        return max(delay, retry_after or 0.0)


@dataclass
class Context:
    kube: Kube
    events: EventRecorder
    providers: ProviderCache
    user_keys: UserKeys
    settings: ConnectSettings
    operator_namespace: str = "workspace-secrets-system"  # where OAuthApplications' client Secrets live
    namespaces: tuple[str, ...] = ()  # served namespaces; empty: all
    clock: Callable[[], datetime] = cond.utcnow
    memory: TokenMemory = field(default_factory=TokenMemory)
    locks: weakref.WeakValueDictionary[tuple[str, ...], asyncio.Lock] = field(default_factory=weakref.WeakValueDictionary)
    #: Queue a pass over (namespace, name) in so many seconds: the UserToken work queue (app.py); a no-op alone.
    schedule: Callable[[str, str, float], None] = lambda namespace, name, delay: None

    # --- per-token coordination ---
    def lock(self, key: tuple[str, ...]) -> asyncio.Lock:
        """One lock per (namespace, user, application): see controller.py."""
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
        return lock

    def wake(self, namespace: str, name: str) -> None:
        """Queue a pass over the token now (deduplicated with any pass already waiting)."""
        self.schedule(namespace, name, 0.0)

    # --- reads every part needs ---
    def provider(self, ut: UserToken) -> OAuthProvider:
        return self.providers.for_token(ut)

    async def bind(self, ut: UserToken) -> UserToken:
        """The UserToken with its OAuthApplication, read now (a GET: few objects, always current). Raises
        ProblemFound when it does not exist, is not allowed in the UserToken's namespace or does not fit."""
        body = await self.kube.get(app_path(ut.application))
        if body is None:
            raise ProblemFound(application_problem(ut))
        try:
            app = OAuthApplication.from_body(body)
        except SpecError as exc:
            raise ProblemFound(Problem("ApplicationInvalid", f"OAuthApplication {ut.application!r} is not usable ({exc.field}); ask the platform team.")) from None
        if not app.allows(ut.namespace):
            raise ProblemFound(application_problem(ut))
        try:
            return ut.bind(app)
        except SpecError as exc:
            raise ProblemFound(Problem("InvalidSpec", str(exc))) from None

    async def client(self, ut: UserToken) -> ClientCredentials | None:
        """The application's client, from its Secret in the operator's namespace (never the tenant's)."""
        ref = ut.client_secret_ref
        if ref is None:
            return None
        secret = await self.kube.get(core_path(self.operator_namespace, "secrets", ref.name))
        data = (secret or {}).get("data") or {}
        if ref.client_id_key not in data:
            # Platform configuration: the tenant cannot fix it, and learns nothing about the Secret's contents.
            raise ProblemFound(Problem("ApplicationNotReady", f"OAuthApplication {ut.application!r} has no usable client credentials "
                                       "yet (its client Secret in the operator's namespace is missing or incomplete); ask the platform team."))
        client_id = base64.b64decode(data[ref.client_id_key]).decode().strip()
        client_secret = base64.b64decode(data[ref.client_secret_key]).strip() if ref.client_secret_key in data else None
        return ClientCredentials(client_id, Sensitive(client_secret) if client_secret else None)

    def served_paths(self) -> list[str]:
        """The UserToken collections this operator serves (its namespaces, or the cluster)."""
        if self.namespaces:
            return [group_path(c.API_VERSION, ns, c.USER_TOKEN_PLURAL) for ns in self.namespaces]
        return [f"/apis/{c.API_VERSION}/{c.USER_TOKEN_PLURAL}"]

    # --- the status write ---
    async def write_status(self, body: Mapping[str, Any], fields: Mapping[str, Any], conditions: list[Condition]) -> dict[str, Any]:
        meta = body["metadata"]
        current = body.get("status") or {}
        generation = int(meta.get("generation", 0))
        merged = {**current, **fields, "observedGeneration": generation}
        new = {k: v for k, v in merged.items() if v is not None}
        existing = current.get("conditions") or []
        if conditions:  # SSHKeyUploaded is dropped when it no longer applies (addSSHKey turned off)
            wanted = {k.type for k in conditions}
            existing = [x for x in existing if x.get("type") in wanted or x.get("type") != c.CONDITION_SSH_KEY_UPLOADED]
        new["conditions"] = cond.merge(existing, conditions, generation=generation, now=self.clock())
        if new == current:
            return new
        patch = {k: v for k, v in new.items() if current.get(k) != v}
        patch.update({k: None for k in current if k not in new})
        await self.kube.merge_patch(ut_path(meta["namespace"], meta["name"], status=True), {"status": patch})
        return new


def ut_path(namespace: str, name: str, *, status: bool = False) -> str:
    return group_path(c.API_VERSION, namespace, c.USER_TOKEN_PLURAL, name, subresource="status" if status else None)


def event_ref(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")}}


def where(ut: UserToken) -> str:
    """The provider, as users read it in Events and messages: `github`, `gitlab at https://git.example.com`."""
    return ut.type + (f" at {ut.host}" if ut.host else "")


def application_problem(ut: UserToken) -> Problem:
    return unavailable_application(ut.application, ut.namespace)
