"""The UserToken controller against an in-memory Kubernetes API and a mock transport: a single-use refresh
token is never spent twice under concurrent triggers, the rotated token is in the Secret before it is
validated, and a failed Secret write keeps the token for the next attempt."""

from __future__ import annotations

import asyncio
import base64
import copy
import itertools
from datetime import datetime, timedelta, timezone
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.controllers.user_token import ConnectSettings, UserTokenController
from workspace_secrets.domain import usertoken as policy
from workspace_secrets.domain.oauth import PendingAuthorizations, TokenSet
from workspace_secrets.domain.sensitive import Sensitive
from workspace_secrets.domain.signing import Signer
from workspace_secrets.kube.client import Conflict, KubeError
from workspace_secrets.providers.http import MockTransport, Request, Response, json_response
from workspace_secrets.providers.oauth.registry import ProviderCache

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
NS = "team"
UT_PATH = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.USER_TOKEN_PLURAL}/gl"
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/gl-token"


class MemoryKube:
    """Just enough of kube.client.Kube: objects by path, resourceVersions, compare-and-swap replace."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.versions = itertools.count(1)
        self.fail_secret_writes = 0

    def _stamp(self, obj: dict) -> dict:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self.versions))
        return copy.deepcopy(obj)

    async def get(self, path: str) -> dict | None:
        await asyncio.sleep(0)  # a real API call yields to other tasks
        return copy.deepcopy(self.objects.get(path))

    async def list(self, path: str, *, label_selector: str | None = None) -> dict:
        return {"items": [copy.deepcopy(o) for p, o in self.objects.items() if p.startswith(path + "/")]}

    async def create(self, path: str, body: dict) -> dict:
        await asyncio.sleep(0)
        target = f"{path}/{body['metadata']['name']}"
        if target in self.objects:
            raise Conflict(409, "AlreadyExists", "exists")
        self._check_secret_write(target)
        body = copy.deepcopy(body)
        body["metadata"].setdefault("uid", f"uid-{body['metadata']['name']}")
        self.objects[target] = body
        return self._stamp(body)

    async def replace(self, path: str, body: dict) -> dict:
        await asyncio.sleep(0)
        current = self.objects[path]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "Conflict", "stale")
        self._check_secret_write(path)
        self.objects[path] = copy.deepcopy(body)
        return self._stamp(self.objects[path])

    async def merge_patch(self, path: str, patch: dict) -> dict:
        await asyncio.sleep(0)
        target = self.objects[path.removesuffix("/status")]
        for key, value in patch.items():
            if isinstance(value, dict):
                section = target.setdefault(key, {})
                for k, v in value.items():
                    if v is None:
                        section.pop(k, None)
                    else:
                        section[k] = v
        return self._stamp(target)

    async def delete(self, path: str, *, uid: str | None = None) -> bool:
        return self.objects.pop(path, None) is not None

    def _check_secret_write(self, path: str) -> None:
        if path == SECRET_PATH and self.fail_secret_writes:
            self.fail_secret_writes -= 1
            raise KubeError(503, "ServiceUnavailable", "etcd leader changed")


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []

    async def normal(self, obj: Any, reason: str, message: str) -> None:
        self.posted.append((reason, message))

    async def warning(self, obj: Any, reason: str, message: str) -> None:
        self.posted.append((reason, message))


class FakeGitLab:
    """The token endpoint and user API of GitLab for the controller: rotating, single-use refresh tokens."""

    def __init__(self, kube: MemoryKube) -> None:
        self.kube = kube
        self.generation = 1
        self.refresh_calls = 0
        self.spent: set[str] = set()
        self.secret_token_when_validated: list[bytes] = []

    async def __call__(self, request: Request) -> Response:
        await asyncio.sleep(0.01)  # the provider takes a moment: other triggers arrive meanwhile
        if request.url.endswith("/oauth/token"):
            self.refresh_calls += 1
            refresh = request.form["refresh_token"]
            if refresh in self.spent or refresh != f"rt-{self.generation}":
                return json_response(400, {"error": "invalid_grant"})
            self.spent.add(refresh)
            self.generation += 1
            return json_response(200, {"access_token": f"at-{self.generation}", "refresh_token": f"rt-{self.generation}",
                                       "expires_in": 7200, "token_type": "Bearer", "scope": "api"})
        # Validation: record which token the Secret holds at this moment.
        secret = self.kube.objects.get(SECRET_PATH) or {}
        self.secret_token_when_validated.append(base64.b64decode((secret.get("data") or {}).get(c.KEY_TOKEN, "")))
        if request.url.endswith("/oauth/token/info"):
            return json_response(200, {"scope": ["api"]})
        return json_response(200, {"id": 1, "username": "alice"})


def setup(clock_value: list[datetime]) -> tuple[UserTokenController, MemoryKube, FakeGitLab, Events]:
    kube = MemoryKube()
    gitlab = FakeGitLab(kube)
    events = Events()
    signer = Signer(Sensitive(b"k" * 32))
    clock = lambda: clock_value[0]  # noqa: E731
    controller = UserTokenController(kube, events, ProviderCache(MockTransport(gitlab), clock=clock), signer,  # type: ignore[arg-type]
                                     PendingAuthorizations(signer), ConnectSettings(base_url="https://ops"), clock=clock)
    kube.objects[f"/api/v1/namespaces/{NS}/secrets/gl-app"] = {
        "metadata": {"name": "gl-app", "namespace": NS, "resourceVersion": "0"},
        "data": {"client-id": base64.b64encode(b"cid").decode(), "client-secret": base64.b64encode(b"cs").decode()}}
    kube.objects[UT_PATH] = {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND,
                             "metadata": {"name": "gl", "namespace": NS, "uid": "uid-gl", "generation": 1, "resourceVersion": "0"},
                             "spec": {"user": "alice", "type": "gitlab", "clientSecretRef": {"name": "gl-app"}}, "status": {"phase": "Valid"}}
    from workspace_secrets.api.usertoken import UserToken

    ut = UserToken.from_body(kube.objects[UT_PATH])
    tokens = TokenSet(Sensitive("at-1"), Sensitive("rt-1"), expires_at=NOW + timedelta(hours=2), scopes=("api",))
    secret = policy.desired_token_secret(ut, tokens, issued_at=NOW, generation="g0", git=policy.GitAccess("oauth2", "https://gitlab.com"))
    secret["metadata"]["resourceVersion"] = "0"
    kube.objects[SECRET_PATH] = secret
    return controller, kube, gitlab, events


def secret_token(kube: MemoryKube) -> bytes:
    return base64.b64decode(kube.objects[SECRET_PATH]["data"][c.KEY_TOKEN])


def test_concurrent_triggers_spend_the_refresh_token_once():
    clock = [NOW + timedelta(hours=1, minutes=45)]  # past the planned refresh, before expiry
    controller, kube, gitlab, _ = setup(clock)

    async def scenario() -> None:
        await asyncio.gather(*(controller.maintain(NS, "gl") for _ in range(5)))

    asyncio.run(scenario())
    assert gitlab.refresh_calls == 1 and gitlab.generation == 2
    assert secret_token(kube) == b"at-2"
    assert kube.objects[UT_PATH]["status"]["phase"] == "Valid" and kube.objects[UT_PATH]["status"]["login"] == "alice"


def test_the_rotated_token_is_in_the_secret_before_it_is_validated():
    clock = [NOW + timedelta(hours=1, minutes=45)]
    controller, kube, gitlab, events = setup(clock)
    asyncio.run(controller.maintain(NS, "gl"))
    assert gitlab.secret_token_when_validated and set(gitlab.secret_token_when_validated) == {b"at-2"}
    assert "TokenRefreshed" in [reason for reason, _ in events.posted]
    assert not any("at-2" in message or "rt-2" in message for _, message in events.posted)


def test_a_failed_secret_write_keeps_the_rotated_token_for_the_next_pass():
    clock = [NOW + timedelta(hours=1, minutes=45)]
    controller, kube, gitlab, _ = setup(clock)
    kube.fail_secret_writes = 1
    try:
        asyncio.run(controller.maintain(NS, "gl"))
    except KubeError:
        pass
    assert secret_token(kube) == b"at-1" and gitlab.generation == 2  # spent at the provider, not yet stored
    asyncio.run(controller.maintain(NS, "gl"))
    assert secret_token(kube) == b"at-2" and gitlab.refresh_calls == 1  # stored from memory, not refreshed again
    assert base64.b64decode(kube.objects[SECRET_PATH]["data"][c.KEY_REFRESH_TOKEN]) == b"rt-2"


def test_nothing_is_due_before_the_planned_refresh():
    clock = [NOW + timedelta(minutes=10)]
    controller, kube, gitlab, _ = setup(clock)
    kube.objects[UT_PATH]["status"]["lastValidationTime"] = policy.format_time(clock[0])
    delay = asyncio.run(controller.maintain(NS, "gl"))
    assert gitlab.refresh_calls == 0 and secret_token(kube) == b"at-1"
    planned = policy.refresh_at(NOW, NOW + timedelta(hours=2), "uid-gl")
    validation = policy.validation_due(clock[0], clock[0], "uid-gl")
    assert abs(delay - (min(planned, validation) - clock[0]).total_seconds()) < 1  # the daemon sleeps until the next of them
    assert kube.objects[UT_PATH]["status"]["nextRefreshAt"] == policy.format_time(planned)
