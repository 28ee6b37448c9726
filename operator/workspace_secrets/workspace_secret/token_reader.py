"""Reading what a WorkspaceSecret's spec.userTokens name: the UserTokens, their OAuthApplications and token Secrets
(I/O). What they give the workspace is decided by tokens.py (pure).

Where the reads come from (a refresh reconciles every WorkspaceSecret naming the token: 10,000 workspaces are
10,000 reads of one token Secret, which must not each be a quorum read from etcd):

- the UserToken and its token Secret from the API server's watch cache, asking for a state NOT OLDER than the last
  watch event this process saw of that object (`Versions`: the UserToken's from kopf's watch, the Secret's from the
  operator's Secret watch; GET with resourceVersion=<that version>). A revocation or a Disconnect deletes or rewrites
  the token Secret and changes the UserToken's phase; each is a watch event that queues the reconcile which reads
  with that event's version, so the read sees the change (a deleted object reads as 404): a stale read can never
  deliver a revoked or disconnected token beyond that one event round trip. An object of which no event has been
  seen yet (just started, a standby that just took over, a deletion) is read from etcd (quorum), and its version is
  then the floor for the next reads -- unless an event arrived meanwhile (that event decides). A cache that cannot
  catch up within its ~3 s (504) is answered by a quorum read.
- the OAuthApplication from etcd (quorum), once per application per reconcile: its own change queues no
  WorkspaceSecret, but the UserToken's change it causes does (an application created after the template: the token
  becomes AwaitingAuthorization), and that reconcile must not read the application as it was before -- a stale "not
  allowed" would then stand until the periodic resync.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from workspace_secrets.api import conditions as cond
from workspace_secrets.api import constants as c
from workspace_secrets.api.oauth_application import app_path
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.oauth.registry import ProviderCache
from workspace_secrets.runtime.http import Request, Response, TransportError
from workspace_secrets.runtime.kube import Kube, KubeError, core_path, group_path
from workspace_secrets.workspace_secret.tokens import TokensOutcome, compose, unavailable, view, VALID_PHASES

def user_token_path(namespace: str, name: str) -> str:
    return group_path(c.API_VERSION, namespace, c.USER_TOKEN_PLURAL, name)


def secret_path(namespace: str, name: str) -> str:
    return core_path(namespace, "secrets", name)


class _NoNetwork:
    """The providers are built here for their capabilities only (git access, tool files): never a request."""

    async def send(self, request: Request, *, timeout: float = 30.0) -> Response:
        raise TransportError("the workspace token reader makes no provider calls")


class Versions:
    """The resourceVersion of the last watch event seen per object path: the floor of the next cached read of it.
    No I/O; a few dozen bytes per UserToken and token Secret."""

    def __init__(self) -> None:
        self._floors: dict[str, str] = {}
        self._events = 0  # bumped by every event: a quorum read overlapping one records nothing

    def saw(self, path: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event (kopf's, or the Secret watch's) of the object at `path`."""
        self._events += 1
        version = (body.get("metadata") or {}).get("resourceVersion")
        if event_type == "DELETED" or not isinstance(version, str) or not version:
            self._floors.pop(path, None)  # read from etcd next time (a 404, unless it was re-created)
        else:
            self._floors[path] = version

    def floor(self, path: str) -> str | None:
        return self._floors.get(path)

    def mark(self) -> int:
        return self._events

    def read(self, path: str, body: Mapping[str, Any] | None, mark: int) -> None:
        """A quorum read's answer becomes the floor, unless an event of anything arrived while it was in flight."""
        version = ((body or {}).get("metadata") or {}).get("resourceVersion")
        if mark == self._events and path not in self._floors and isinstance(version, str) and version:
            self._floors[path] = version

    def __len__(self) -> int:
        return len(self._floors)


class WorkspaceTokens:
    def __init__(self, kube: Kube, *, providers: ProviderCache | None = None,
                 clock: Callable[[], datetime] = cond.utcnow) -> None:
        self._kube = kube
        self._providers = providers or ProviderCache(_NoNetwork())
        self._clock = clock
        self.versions = Versions()

    async def collect(self, ws: WorkspaceSecret) -> TokensOutcome | None:
        """Read the referenced UserTokens, their applications and token Secrets; None without spec.userTokens."""
        if not ws.user_tokens:
            return None
        apps: dict[str, Mapping[str, Any] | None] = {}
        views = []
        now = self._clock()
        for ref in ws.user_tokens:
            body = await self._fresh(user_token_path(ws.namespace, ref.name))
            spec = (body or {}).get("spec") or {}
            if body is None or spec.get("user") != ws.user:
                views.append(unavailable(ws, ref))  # nothing more is read for another user's token
                continue
            application = spec.get("application")
            app_body = None
            if isinstance(application, str) and application:
                if application not in apps:
                    apps[application] = await self._kube.get(app_path(application))
                app_body = apps[application]
            secret = None
            secret_name = spec.get("secretName") or f"{ref.name}-token"
            if (body.get("status") or {}).get("phase") in VALID_PHASES and isinstance(secret_name, str):
                secret = await self._fresh(secret_path(ws.namespace, secret_name))
            views.append(view(ws, ref, body, app_body, secret, now=now, provider_for=self._providers.for_application))
        return compose(ws, views)

    async def _fresh(self, path: str) -> Mapping[str, Any] | None:
        """The object at `path`, no older than the last watch event seen of it (see the module's docstring)."""
        floor = self.versions.floor(path)
        if floor is not None:
            try:
                return await self._kube.get(path, resource_version=floor)
            except KubeError as exc:
                if exc.status != 504:  # 504: the cache did not catch up in time; etcd answers
                    raise
        mark = self.versions.mark()
        body = await self._kube.get(path)
        self.versions.read(path, body, mark)
        return body
