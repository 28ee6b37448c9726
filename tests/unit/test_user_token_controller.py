"""The UserToken controller against the shared in-memory Kubernetes API (tests/fakes/kube.py) and a mock
transport: a single-use refresh token is never spent twice under concurrent triggers, the rotated token is in
the Secret before it is validated, a failed Secret write keeps the token for the next attempt, and the metrics
count passes, refresh failures and tokens."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.user_token.controller import ConnectSettings, UserTokenController
from workspace_secrets.oauth import token_secret
from workspace_secrets.user_token import policy
from workspace_secrets.oauth.protocol import PendingAuthorizations, TokenSet
from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.signing import Signer
from workspace_secrets.runtime.kube import KubeError
from fakes.http import MockTransport, json_response
from workspace_secrets.runtime.http import Request, Response
from workspace_secrets.oauth.registry import ProviderCache

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)
NS = "team"
OPERATOR_NS = "wso-system"
APP_PATH = f"/apis/{c.API_VERSION}/oauthapplications/gitlab-app"
UT_PATH = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.USER_TOKEN_PLURAL}/gl"
SECRET_PATH = f"/api/v1/namespaces/{NS}/secrets/gl-token"


class Events:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str]] = []

    async def normal(self, obj: Any, reason: str, message: str) -> None:
        self.posted.append((reason, message))

    async def warning(self, obj: Any, reason: str, message: str) -> None:
        self.posted.append((reason, message))


class FakeGitLab:
    """The token endpoint and user API of GitLab for the controller: rotating, single-use refresh tokens."""

    def __init__(self, kube: FakeKube) -> None:
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


def application(**spec) -> dict:
    return {"apiVersion": c.API_VERSION, "kind": "OAuthApplication", "metadata": {"name": "gitlab-app", "resourceVersion": "1"},
            "spec": {"type": "gitlab", "clientSecretRef": {"name": "gl-app"}, "allowedNamespaces": ["team", "other-*"], **spec}}


def setup(clock_value: list[datetime], handler: Any = None) -> tuple[UserTokenController, FakeKube, FakeGitLab, Events]:
    kube = FakeKube()
    gitlab = FakeGitLab(kube)
    events = Events()
    signer = Signer(Sensitive(b"k" * 32))
    clock = lambda: clock_value[0]  # noqa: E731
    controller = UserTokenController(kube, events, ProviderCache(MockTransport(handler or gitlab), clock=clock),  # type: ignore[arg-type]
                                     PendingAuthorizations(signer), ConnectSettings(base_url="https://ops"),
                                     operator_namespace=OPERATOR_NS, clock=clock)
    kube.put(APP_PATH, application())
    kube.put(f"/api/v1/namespaces/{OPERATOR_NS}/secrets/gl-app", {
        "metadata": {"name": "gl-app", "namespace": OPERATOR_NS, "resourceVersion": "0"},
        "data": {"client-id": base64.b64encode(b"cid").decode(), "client-secret": base64.b64encode(b"cs").decode()}})
    kube.put(UT_PATH, {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND,
                       "metadata": {"name": "gl", "namespace": NS, "uid": "uid-gl", "generation": 1},
                       "spec": {"user": "alice", "application": "gitlab-app"}, "status": {"phase": "Valid"}})
    from workspace_secrets.api.oauth_application import OAuthApplication
    from workspace_secrets.api.user_token import UserToken

    ut = UserToken.from_body(kube.objects[UT_PATH]).bind(OAuthApplication.from_body(application()))
    tokens = TokenSet(Sensitive("at-1"), Sensitive("rt-1"), expires_at=NOW + timedelta(hours=2), scopes=("api",))
    secret = policy.desired_token_secret(ut, tokens, issued_at=NOW, generation="g0", git=policy.GitAccess("oauth2", "https://gitlab.com"))
    kube.put(SECRET_PATH, secret)
    return controller, kube, gitlab, events


def secret_token(kube: FakeKube) -> bytes:
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
    kube.fail(("POST", "PUT"), SECRET_PATH, 503, message="etcd leader changed")
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
    kube.edit(UT_PATH, {"status": {"lastValidationTime": token_secret.format_time(clock[0])}})
    delay = asyncio.run(controller.maintain(NS, "gl"))
    assert gitlab.refresh_calls == 0 and secret_token(kube) == b"at-1"
    planned = policy.refresh_at(NOW, NOW + timedelta(hours=2), "uid-gl")
    validation = policy.validation_due(clock[0], clock[0], "uid-gl")
    assert abs(delay - (min(planned, validation) - clock[0]).total_seconds()) < 1  # the next pass is queued for the next of them
    assert kube.objects[UT_PATH]["status"]["nextRefreshAt"] == token_secret.format_time(planned)


# --- the OAuthApplication is the platform's (issue 14, instance 1) ---------------------------------------------
def ready(kube: FakeKube) -> dict:
    return next(x for x in kube.objects[UT_PATH]["status"]["conditions"] if x["type"] == c.CONDITION_READY)


def test_a_missing_or_not_allowed_application_gives_one_message_and_no_request():
    clock = [NOW + timedelta(minutes=10)]
    controller, kube, gitlab, events = setup(clock)
    messages = []
    for change in (lambda: kube.remove(APP_PATH),  # no such application
                   lambda: kube.put(APP_PATH, application(allowedNamespaces=["other-*"])),  # not for "team"
                   lambda: kube.put(APP_PATH, application(allowedNamespaces=[]))):  # deny by default
        change()
        delay = asyncio.run(controller.maintain(NS, "gl"))
        condition = ready(kube)
        assert (condition["status"], condition["reason"]) == ("False", "ApplicationNotFound") and delay == 60
        assert kube.objects[UT_PATH]["status"]["phase"] == "Error"
        messages.append(condition["message"])
    assert len(set(messages)) == 1 and "spec.application" in messages[0] and "'gitlab-app'" in messages[0]
    assert gitlab.refresh_calls == 0 and not gitlab.secret_token_when_validated  # nothing was sent anywhere
    assert ("ApplicationNotFound", messages[0]) in events.posted
    kube.put(APP_PATH, application(allowedNamespaces=["t*"]))  # the platform allows it: the next pass works
    asyncio.run(controller.maintain(NS, "gl"))
    assert ready(kube)["status"] == "True"
    assert kube.objects[UT_PATH]["status"]["type"] == "gitlab" and kube.objects[UT_PATH]["status"]["host"] == "https://gitlab.com"


def test_the_client_secret_is_read_from_the_operator_namespace_only():
    clock = [NOW + timedelta(hours=1, minutes=45)]  # a refresh is due: it needs the client
    controller, kube, gitlab, _ = setup(clock)
    tenant_copy = kube.get_object(f"/api/v1/namespaces/{OPERATOR_NS}/secrets/gl-app")
    kube.remove(f"/api/v1/namespaces/{OPERATOR_NS}/secrets/gl-app")
    kube.put(f"/api/v1/namespaces/{NS}/secrets/gl-app", {**tenant_copy, "metadata": {"name": "gl-app", "namespace": NS}})
    asyncio.run(controller.maintain(NS, "gl"))
    assert gitlab.refresh_calls == 0 and ready(kube)["reason"] == "ApplicationNotReady"
    assert "client-id" not in ready(kube)["message"]  # nothing about the Secret's keys


def test_the_provider_follows_the_application_version():
    controller, kube, _, _ = setup([NOW])
    from workspace_secrets.api.oauth_application import OAuthApplication

    cache = controller._ctx.providers
    first = cache.for_application(OAuthApplication.from_body(application()))
    assert cache.for_application(OAuthApplication.from_body(application())) is first
    changed = application(type="gitlab-self-managed", host="https://gitlab.example.com")
    changed["metadata"]["resourceVersion"] = "2"
    second = cache.for_application(OAuthApplication.from_body(changed))
    assert second is not first and second.web == "https://gitlab.example.com"


# --- addSSHKey uploads only the operator's own key of the user (instance 2) ------------------------------------
KEY_NAME = "ssh-alice-ed25519-" + __import__("hashlib").sha256(b"alice\x00ed25519").hexdigest()[:8]
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@wso"


class GitLabWithKeys(FakeGitLab):
    def __init__(self, kube: FakeKube) -> None:
        super().__init__(kube)
        self.keys: list[dict] = []

    async def __call__(self, request: Request) -> Response:
        if "/user/keys" in request.url:
            if request.method == "POST":
                self.keys.append({"id": len(self.keys) + 1, "title": request.json["title"], "key": request.json["key"]})
                return json_response(201, self.keys[-1])
            return json_response(200, self.keys)
        return await super().__call__(request)


def key_secret(**meta) -> dict:
    labels = {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY, c.LABEL_USER: "alice"}
    return {"metadata": {"name": KEY_NAME, "namespace": NS, "resourceVersion": "0", "labels": labels, **meta},
            "data": {c.KEY_SSH_PUBLIC: base64.b64encode(PUBLIC_KEY.encode()).decode()}}


def ssh_condition(kube: FakeKube) -> dict:
    return next(x for x in kube.objects[UT_PATH]["status"]["conditions"] if x["type"] == c.CONDITION_SSH_KEY_UPLOADED)


def test_add_ssh_key_uploads_only_a_secret_proven_to_be_the_users_operator_key():
    from workspace_secrets.user_keys.naming import user_key_secret_name
    from workspace_secrets.user_keys.sshkeys import KeySpec

    assert user_key_secret_name("alice", KeySpec()) == KEY_NAME
    squats = [
        key_secret(ownerReferences=[{"apiVersion": c.API_VERSION, "kind": "WorkspaceSecret", "name": "mallory-ws", "uid": "u"}]),
        key_secret(labels={c.LABEL_USER: "alice"}),  # a tenant's Secret at the name
        key_secret(labels={c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY, c.LABEL_USER: "mallory"}),
        None,  # absent
    ]
    messages = set()
    for squat in squats:
        kube_holder: list[FakeKube] = []
        clock = [NOW + timedelta(minutes=10)]
        provider = None

        def handler(request: Request, _k=kube_holder):
            return provider(request)

        controller, kube, _, _ = setup(clock, handler)
        provider = GitLabWithKeys(kube)
        kube.edit(UT_PATH, {"spec": {"addSSHKey": True}})
        if squat is not None:
            kube.put(f"/api/v1/namespaces/{NS}/secrets/{KEY_NAME}", squat)
        asyncio.run(controller.maintain(NS, "gl"))
        condition = ssh_condition(kube)
        assert (condition["status"], condition["reason"]) == ("False", "UserKeyNotFound") and provider.keys == []
        messages.add(condition["message"])
    assert len(messages) == 1  # absent or not proven: the same words

    clock = [NOW + timedelta(minutes=10)]
    controller, kube, _, _ = setup(clock, lambda request: provider(request))
    provider = GitLabWithKeys(kube)
    kube.edit(UT_PATH, {"spec": {"addSSHKey": True}})
    kube.put(f"/api/v1/namespaces/{NS}/secrets/{KEY_NAME}", key_secret())  # the per-user key itself is not it either
    asyncio.run(controller.maintain(NS, "gl"))
    assert ssh_condition(kube)["reason"] == "UserKeyNotFound" and provider.keys == []
    # What is uploaded: the key in a WorkspaceSecret's own Secret, the one the operator wrote for it
    # (tests/unit/test_ssh_key_upload.py has the cases).
    kube.put(f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}/alice-ws", {
        "apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "alice-ws", "namespace": NS, "uid": "ws-uid"},
        "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}}})
    kube.put(f"/api/v1/namespaces/{NS}/secrets/alice-ws", key_secret(
        name="alice-ws", labels={c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_WORKSPACE_SECRET, c.LABEL_USER: "alice"},
        ownerReferences=[{"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "name": "alice-ws", "uid": "ws-uid", "controller": True}]))
    asyncio.run(controller.maintain(NS, "gl"))
    assert ssh_condition(kube)["status"] == "True" and [k["key"] for k in provider.keys] == [" ".join(PUBLIC_KEY.split()[:2])]


# --- no hot loops (instance 8) ----------------------------------------------------------------------------
def test_a_provider_answering_expires_in_1_cannot_make_a_refresh_loop():
    clock = [NOW + timedelta(hours=1, minutes=45)]
    controller, kube, gitlab, _ = setup(clock)

    async def short_lived(request: Request) -> Response:
        if request.url.endswith("/oauth/token"):
            gitlab.refresh_calls += 1
            return json_response(200, {"access_token": f"at-x{gitlab.refresh_calls}", "refresh_token": "rt", "expires_in": 1})
        return await gitlab(request)

    controller._ctx.providers._transport = MockTransport(short_lived)  # type: ignore[attr-defined]
    delay = asyncio.run(controller.maintain(NS, "gl"))
    assert gitlab.refresh_calls == 1 and delay >= 59
    for _ in range(5):  # passes come early (watch events, annotations): nothing is due yet
        asyncio.run(controller.maintain(NS, "gl"))
    assert gitlab.refresh_calls == 1
    clock[0] += timedelta(seconds=60)
    asyncio.run(controller.maintain(NS, "gl"))
    assert gitlab.refresh_calls == 2


# --- the connect page's side: links and device codes (instances 3, 4) ------------------------------------------
def test_the_authorization_url_is_a_plain_link_and_the_device_code_stays_in_memory():
    clock = [NOW]
    controller, kube, gitlab, _ = setup(clock)
    kube.remove(SECRET_PATH)
    kube.edit(UT_PATH, {"status": None})
    kube.edit(UT_PATH, {"status": {"userCode": "OLD-CODE", "authorizationURLExpiresAt": "2026-01-01T00:00:00Z"}})
    asyncio.run(controller.maintain(NS, "gl"))
    status = kube.objects[UT_PATH]["status"]
    assert status["authorizationURL"] == "https://ops/accounts?focus=team/gl"
    assert "userCode" not in status and "authorizationURLExpiresAt" not in status

    async def device(request: Request) -> Response:
        if request.url.endswith("/oauth/authorize_device"):
            return json_response(200, {"device_code": "dc-secret", "user_code": "WXYZ-1234", "verification_uri": "https://gitlab.com/oauth/device",
                                       "expires_in": 600, "interval": 0})
        return json_response(400, {"error": "authorization_pending"})

    controller._ctx.providers._transport = MockTransport(device)  # type: ignore[attr-defined]
    kube.edit(UT_PATH, {"spec": {"flow": "Device"}})
    delay = asyncio.run(controller.maintain(NS, "gl"))
    status = kube.objects[UT_PATH]["status"]
    assert "userCode" not in status and status["authorizationURL"] == "https://ops/accounts?focus=team/gl"
    assert "WXYZ" not in str(status) and delay >= 5  # the interval 0 is floored
    mine = asyncio.run(controller.list_for_user("alice", NS))
    assert [(t.name, t.user_code, t.verification_url, t.type) for t in mine] == [("gl", "WXYZ-1234", "https://gitlab.com/oauth/device", "gitlab")]
    assert asyncio.run(controller.list_for_user("bob", NS)) == []


def test_device_polls_are_one_per_interval_whatever_the_triggers():
    """A scheduled pass, a change of the object and the connect page can pass over one token at the same moment: the token
    endpoint still sees at most one poll per interval (a strict provider answers slow_down otherwise)."""
    clock = [NOW]
    controller, kube, _, _ = setup(clock)
    kube.remove(SECRET_PATH)
    polls: list[datetime] = []

    async def device(request: Request) -> Response:
        if request.url.endswith("/oauth/authorize_device"):
            return json_response(200, {"device_code": "dc-secret", "user_code": "WXYZ-1234", "verification_uri": "https://gitlab.com/oauth/device",
                                       "expires_in": 600, "interval": 0})
        if request.url.endswith("/oauth/token"):
            polls.append(clock[0])
            return json_response(400, {"error": "authorization_pending"})
        return json_response(404, {})

    controller._ctx.providers._transport = MockTransport(device)  # type: ignore[attr-defined]
    kube.edit(UT_PATH, {"spec": {"flow": "Device"}})

    async def triggers(n: int) -> None:
        await asyncio.gather(*(controller.maintain(NS, "gl") for _ in range(n)))

    asyncio.run(triggers(3))  # requests the code; nobody polls before the interval
    assert polls == []
    clock[0] += timedelta(seconds=5)
    asyncio.run(triggers(3))
    assert polls == [NOW + timedelta(seconds=5)]
    clock[0] += timedelta(seconds=2)
    asyncio.run(triggers(3))  # too early for the next poll
    assert len(polls) == 1
    clock[0] += timedelta(seconds=3)
    asyncio.run(triggers(3))
    assert polls == [NOW + timedelta(seconds=5), NOW + timedelta(seconds=10)]


# --- metrics: passes, refresh failures, the token count ---------------------------------------------------------
def metric_value(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_passes_and_refresh_failures_are_counted():
    def passes(result: str) -> float:
        return metric_value("wso_reconciles_total", kind=c.USER_TOKEN_KIND, result=result)

    def refresh_failures(reason: str) -> float:
        return metric_value("wso_token_refresh_failures_total", provider="gitlab", reason=reason)

    def answering(status: int, body: dict):
        async def handler(request: Request) -> Response:
            if request.url.endswith("/oauth/token"):
                return json_response(status, body)
            return json_response(200, {"id": 1, "username": "alice"})
        return handler

    due = [NOW + timedelta(hours=1, minutes=45)]  # a refresh is due
    before = {r: passes(r) for r in ("success", "problem", "gone", "error")}
    rejected, unavailable = refresh_failures("RefreshRejected"), refresh_failures("ProviderUnavailable")
    controller, kube, _, _ = setup(due, answering(400, {"error": "invalid_grant"}))
    asyncio.run(controller.maintain(NS, "gl"))  # the grant is gone: the user must reconnect
    assert refresh_failures("RefreshRejected") == rejected + 1 and passes("problem") == before["problem"] + 1
    controller, kube, _, _ = setup(due, answering(503, {}))
    asyncio.run(controller.maintain(NS, "gl"))  # an outage: retried with backoff, the token is still good
    assert refresh_failures("ProviderUnavailable") == unavailable + 1 and ready(kube)["status"] == "True"
    assert passes("success") == before["success"] + 1
    kube.remove(UT_PATH)
    assert asyncio.run(controller.maintain(NS, "gl")) is None
    assert passes("gone") == before["gone"] + 1 and passes("error") == before["error"]
    kube.fail("GET", UT_PATH, 500)
    with pytest.raises(KubeError):
        asyncio.run(controller.maintain(NS, "gl"))
    assert passes("error") == before["error"] + 1


def test_the_token_gauge_counts_by_type_and_phase_and_forgets_what_is_gone():
    controller, kube, _, _ = setup([NOW + timedelta(minutes=10)])

    def tokens(provider: str, state: str) -> float | None:
        from prometheus_client import REGISTRY

        return REGISTRY.get_sample_value("wso_tokens", {"provider": provider, "state": state})

    asyncio.run(controller.maintain(NS, "gl"))  # records status.type
    kube.put(f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.USER_TOKEN_PLURAL}", {
        "metadata": {"name": "odd"}, "spec": {"user": "bob", "application": "gitlab-app"},
        "status": {"type": "x" * 300, "phase": "Whatever"}})  # a status written by hand cannot grow the label sets
    assert asyncio.run(controller.count_tokens()) == {("gitlab", "Valid"): 1, ("other", "other"): 1}
    assert tokens("gitlab", "Valid") == 1 and tokens("other", "other") == 1
    kube.remove(UT_PATH)
    asyncio.run(controller.count_tokens())
    assert tokens("gitlab", "Valid") == 0 and tokens("other", "other") == 1


# --- the reconcile model: watch events -> the work queue -> a pass -> the next pass scheduled -------------------
def scheduled_setup(clock: list[datetime]) -> tuple[UserTokenController, FakeKube, FakeGitLab, list[tuple[str, str, float]]]:
    controller, kube, gitlab, _ = setup(clock)
    calls: list[tuple[str, str, float]] = []
    controller._ctx.schedule = lambda namespace, name, delay: calls.append((namespace, name, delay))  # type: ignore[method-assign]
    return controller, kube, gitlab, calls


def test_watch_events_queue_a_pass_only_when_the_essence_changes():
    """Like WorkspaceSecrets: the echo of our own status write (and kopf's bookkeeping) queues nothing; a spec
    change, a refresh/validate/skip-revocation annotation, a new incarnation does. No API call in observe."""
    controller, kube, _, calls = scheduled_setup([NOW])
    body = kube.objects[UT_PATH]
    controller.observe(None, body)  # kopf's initial listing at start-up
    assert calls == [(NS, "gl", 0.0)]
    echo = {**body, "status": {"phase": "Refreshing"},
            "metadata": {**body["metadata"], "resourceVersion": "99",
                         "annotations": {f"{c.GROUP}/last-handled-configuration": "{}"}}}
    controller.observe("MODIFIED", echo)
    assert len(calls) == 1
    for annotation in (c.ANNOTATION_REFRESH_TOKEN, c.ANNOTATION_VALIDATE_TOKEN, c.ANNOTATION_SKIP_REVOCATION):
        calls.clear()
        changed = {**body, "metadata": {**body["metadata"], "annotations": {annotation: "1"}}}
        controller.observe("MODIFIED", changed)
        assert calls == [(NS, "gl", 0.0)], annotation
    calls.clear()
    controller.observe("MODIFIED", {**body, "metadata": {**body["metadata"], "generation": 2}})
    assert calls == [(NS, "gl", 0.0)]
    calls.clear()
    deleting = {**body, "metadata": {**body["metadata"], "generation": 2, "deletionTimestamp": "2026-11-29T12:00:00Z"}}
    controller.observe("MODIFIED", deleting)  # the finalizer cleans up; no pass
    controller.observe("DELETED", deleting)
    assert calls == []
    controller.observe("ADDED", {**body, "metadata": {**body["metadata"], "uid": "uid-gl-2"}})  # a new one, same name
    assert calls == [(NS, "gl", 0.0)]


def test_a_pass_schedules_the_next_one_when_something_is_due_at_most_max_sleep_away():
    from workspace_secrets.user_token.context import MAX_SLEEP

    clock = [NOW + timedelta(minutes=10)]
    controller, kube, gitlab, calls = scheduled_setup(clock)
    asyncio.run(controller.reconcile_by_name(NS, "gl"))  # validated now; the refresh is ~75 min away
    assert calls == [(NS, "gl", MAX_SLEEP)] and gitlab.refresh_calls == 0
    calls.clear()
    clock[0] = NOW + timedelta(hours=1, minutes=59)  # overdue; not the first pass: at once
    asyncio.run(controller.reconcile_by_name(NS, "gl"))
    assert gitlab.refresh_calls == 1
    (_, _, delay), = calls
    assert 0.05 <= delay <= MAX_SLEEP
    calls.clear()
    kube.remove(UT_PATH)
    asyncio.run(controller.reconcile_by_name(NS, "gl"))  # gone: not queued again
    assert calls == []


def test_the_first_pass_of_a_key_after_a_start_spreads_an_overdue_refresh():
    clock = [NOW + timedelta(hours=1, minutes=59)]  # overdue (refresh due at 65-75 % of two hours)
    controller, kube, gitlab, calls = scheduled_setup(clock)
    asyncio.run(controller.reconcile_by_name(NS, "gl"))
    assert gitlab.refresh_calls == 0  # spread over the start-up spread: not all tokens in the same second
    (_, _, delay), = calls
    assert 0.05 <= delay <= 30
    clock[0] += timedelta(seconds=delay)
    asyncio.run(controller.reconcile_by_name(NS, "gl"))
    assert gitlab.refresh_calls == 1


def test_secret_events_wake_the_token():
    controller, kube, _, calls = scheduled_setup([NOW])
    secret = kube.objects[SECRET_PATH]
    asyncio.run(controller.secret_changed("DELETED", secret))
    assert calls == [(NS, "gl", 0.0)]


def test_a_new_user_key_wakes_only_the_users_uploading_tokens_without_a_list():
    """A user's key Secret appearing wakes the UserTokens that upload it (addSSHKey), found in the index kopf's events
    keep -- never by listing the namespace's UserTokens (O(N) per new user, issue #18)."""
    controller, kube, _, calls = scheduled_setup([NOW])
    body = kube.objects[UT_PATH]
    user = body["spec"]["user"]
    key_secret = {"metadata": {"namespace": NS, "name": "ssh-key", "labels": {c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY, c.LABEL_USER: user}}}
    controller.observe(None, body)
    calls.clear()
    asyncio.run(controller.secret_changed("ADDED", key_secret))
    assert calls == []  # no addSSHKey: nothing to upload
    controller.observe("MODIFIED", {**body, "spec": {**body["spec"], "addSSHKey": True}})
    calls.clear()
    asyncio.run(controller.secret_changed("ADDED", key_secret))
    assert calls == [(NS, "gl", 0.0)]
    assert not [p for v, p in kube.calls if v == "LIST"]


def test_the_work_queue_runs_passes_and_is_paused_on_a_standby_replica():
    """The App's wiring in small: a WorkQueue over reconcile_by_name, scheduling through add_after."""
    from workspace_secrets.runtime.workqueue import WorkQueue

    clock = [NOW + timedelta(minutes=10)]
    controller, kube, gitlab, _ = setup(clock)

    async def run() -> tuple[int, int]:
        active = asyncio.Event()  # a standby replica: nothing runs
        queue = WorkQueue(lambda key: controller.reconcile_by_name(*key), workers=2, name="usertokens-test", active=active)
        controller._ctx.schedule = lambda namespace, name, delay: queue.add_after((namespace, name), delay)  # type: ignore[method-assign]
        queue.start()
        try:
            controller.observe(None, kube.objects[UT_PATH])
            await asyncio.sleep(0.2)
            standby = len(kube.objects[UT_PATH].get("status", {}).get("conditions") or [])
            active.set()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if kube.objects[UT_PATH]["status"].get("conditions"):
                    break
            return standby, len(kube.objects[UT_PATH]["status"].get("conditions") or [])
        finally:
            await queue.stop()

    standby, active_conditions = asyncio.run(run())
    assert standby == 0 and active_conditions > 0


def test_a_queued_pass_never_waits_on_a_busy_lock_it_comes_back_shortly():
    """One tenant's tokens behind one (namespace, user, application) lock must not hold the work queue's
    workers: a pass that finds the lock busy is scheduled again and returns, uncounted, not marked passed."""
    from prometheus_client import REGISTRY

    from workspace_secrets.user_token.controller import BUSY_RETRY

    def passes() -> float:
        return sum(REGISTRY.get_sample_value("wso_reconciles_total", {"kind": c.USER_TOKEN_KIND, "result": r}) or 0.0
                   for r in ("success", "problem", "retry", "error", "gone"))

    clock = [NOW + timedelta(minutes=10)]
    controller, kube, gitlab, calls = scheduled_setup(clock)

    async def run() -> None:
        lock = controller._ctx.lock((NS, "alice", "gitlab-app"))  # the connect page (or finalize) holds it
        async with lock:
            await asyncio.wait_for(controller.reconcile_by_name(NS, "gl"), timeout=1.0)

    asyncio.run(controller.reconcile_by_name(NS, "gl"))  # counted: the metric is there
    assert passes() > 0
    calls.clear()
    controller._passed.clear()
    kube.objects[UT_PATH]["status"].pop("conditions", None)
    before = passes()
    asyncio.run(run())
    assert calls == [(NS, "gl", BUSY_RETRY)]
    assert passes() == before and (NS, "gl") not in controller._passed
    assert not kube.objects[UT_PATH]["status"].get("conditions")  # nothing was done


def test_the_connect_path_still_waits_for_the_lock():
    clock = [NOW + timedelta(minutes=10)]
    controller, kube, _, _ = setup(clock)

    async def run() -> float | None:
        lock = controller._ctx.lock((NS, "alice", "gitlab-app"))
        await lock.acquire()
        asyncio.get_running_loop().call_later(0.05, lock.release)
        return await controller.maintain(NS, "gl")

    asyncio.run(run())
    assert kube.objects[UT_PATH]["status"].get("conditions")


def test_a_takeover_spreads_overdue_refreshes_again():
    """The replica was active, passed over the token, became a standby, and is active again: the first pass
    after the second takeover spreads an overdue refresh like the first one after a start."""
    from workspace_secrets.app import App
    from workspace_secrets.settings import OperatorConfig

    clock = [NOW + timedelta(minutes=10)]
    controller, kube, gitlab, calls = scheduled_setup(clock)
    asyncio.run(controller.reconcile_by_name(NS, "gl"))  # active: validated, passed
    assert (NS, "gl") in controller._passed
    app = App(OperatorConfig())
    app.user_tokens = controller

    async def nothing() -> None:
        return None

    app._enqueue_all = nothing  # type: ignore[method-assign]
    app._enqueue_user_tokens = nothing  # type: ignore[method-assign]
    app._enqueue_gated_pods = nothing  # type: ignore[method-assign]

    async def activate() -> None:
        app._on_activated()
        await asyncio.gather(*app.tasks)

    asyncio.run(activate())  # a standby meanwhile; now active again
    clock[0] = NOW + timedelta(hours=1, minutes=59)  # overdue
    calls.clear()
    asyncio.run(controller.reconcile_by_name(NS, "gl"))
    assert gitlab.refresh_calls == 0  # spread, not all at once
    (_, _, delay), = calls
    assert 0.05 <= delay <= 30


def test_the_token_secret_watch_is_gated_on_the_active_replica():
    """The UserToken side gets the token Secrets' events from the shared managed-Secret watch (app.py dispatches each
    event to both controllers), only on the active replica."""
    from workspace_secrets import app as app_module
    from workspace_secrets.settings import OperatorConfig
    from workspace_secrets.user_keys.service import UserKeys

    kube = FakeKube()
    token_secret = {"metadata": {"name": "gl-token", "namespace": NS,
                                 "labels": {c.LABEL_COMPONENT: c.COMPONENT_USER_TOKEN},
                                 "ownerReferences": [{"kind": c.USER_TOKEN_KIND, "name": "gl"}]}}

    async def run() -> tuple[int, int]:
        app = app_module.App(OperatorConfig(namespaces=(NS,)))
        app.kube, app.user_keys, app.active = kube, UserKeys(kube), asyncio.Event()  # type: ignore[assignment]
        await app._start_user_tokens()
        try:
            app.user_token_queue._active = asyncio.Event()  # hold what is queued, to count it
            handler = app._managed_secret_changed
            await handler("DELETED", token_secret)  # a standby replica: the activation pass covers it
            standby = len(app.user_token_queue)
            app.active.set()
            await handler("DELETED", token_secret)
            return standby, len(app.user_token_queue)
        finally:
            for task in app.tasks:
                task.cancel()
            await asyncio.gather(*app.tasks, return_exceptions=True)
            await app.user_token_queue.stop()
            if app._transport is not None:
                await app._transport.close()

    assert asyncio.run(run()) == (0, 1)


def test_a_callback_landing_while_the_token_is_being_deleted_saves_nothing():
    """The callback waited for the lock while the finalizer ran: under the lock the UserToken is being deleted,
    so no code is exchanged and no token is saved (it would never be revoked)."""
    from workspace_secrets.oauth.protocol import PendingAuthorization

    clock = [NOW + timedelta(minutes=10)]
    controller, kube, gitlab, _ = setup(clock)
    before = dict(kube.objects[SECRET_PATH]["data"])
    record = PendingAuthorization(namespace=NS, name="gl", uid="uid-gl", user="alice", code_verifier=Sensitive("v" * 43),
                                  redirect_uri="https://ops/oauth/callback", expires_at=NOW + timedelta(minutes=20))

    async def run() -> Any:
        lock = controller._ctx.lock((NS, "alice", "gitlab-app"))
        async with lock:  # the finalizer holds it
            callback = asyncio.create_task(controller.complete_authorization(record, "the-code"))
            await asyncio.sleep(0.05)  # the callback read the token (not yet deleted) and waits for the lock
            body = kube.objects[UT_PATH]
            body["metadata"] = {**body["metadata"], "deletionTimestamp": "2026-11-29T12:10:00Z"}
        return await callback

    result = asyncio.run(run())
    assert not result.ok and "no longer exists" in result.title
    assert gitlab.refresh_calls == 0  # no code exchanged
    assert kube.objects[SECRET_PATH]["data"] == before


def test_deleting_a_token_forgets_its_device_code():
    """What the operator keeps in memory about a token (a device code is a Sensitive value) goes with the token."""
    clock = [NOW]
    controller, kube, gitlab, _ = setup(clock)
    kube.remove(SECRET_PATH)
    kube.edit(UT_PATH, {"status": None})

    async def device(request: Request) -> Response:
        if request.url.endswith("/oauth/authorize_device"):
            return json_response(200, {"device_code": "dc-secret", "user_code": "WXYZ-1234", "verification_uri": "https://gitlab.com/oauth/device",
                                       "expires_in": 600, "interval": 5})
        return json_response(400, {"error": "authorization_pending"})

    controller._ctx.providers._transport = MockTransport(device)  # type: ignore[attr-defined]
    kube.edit(UT_PATH, {"spec": {"flow": "Device"}})
    asyncio.run(controller.maintain(NS, "gl"))
    memory = controller._ctx.memory
    assert "uid-gl" in memory.devices and "uid-gl" in memory.device_next_poll
    memory.failures["uid-gl"] = 2
    asyncio.run(controller.finalize(kube.objects[UT_PATH]))
    assert not any("uid-gl" in kept for kept in (memory.devices, memory.device_next_poll, memory.device_requested,
                                                   memory.failures, memory.unsaved))


def device_provider(requests: list[str], *, code: str = "WXYZ-1234"):
    """GitLab's device authorization (a code; the user never enters it), its revocation and user API."""

    async def handler(request: Request) -> Response:
        requests.append(request.url.rsplit("/", 2)[-2] + "/" + request.url.rsplit("/", 1)[-1])
        if request.url.endswith("/oauth/authorize_device"):
            return json_response(200, {"device_code": "dc-secret", "user_code": code, "verification_uri": "https://gitlab.com/oauth/device",
                                       "expires_in": 600, "interval": 5})
        if request.url.endswith("/oauth/revoke"):
            return json_response(200, {})
        if request.url.endswith("/oauth/token"):
            return json_response(400, {"error": "authorization_pending"})
        if request.url.endswith("/oauth/token/info"):
            return json_response(200, {"scope": ["api"]})
        return json_response(200, {"id": 1, "username": "alice"})

    return handler


def test_after_a_disconnect_a_device_token_gets_no_new_code_until_the_user_clicks_connect():
    """Disconnect on the connect page means "not connected until I connect again": the passes after it (a watch event,
    the schedule, an operator restart) request no device code and poll nothing; Ready says Disconnected. Connect asks
    for a code at once."""
    clock = [NOW]
    controller, kube, _, events = setup(clock)
    requests: list[str] = []
    controller._ctx.providers._transport = MockTransport(device_provider(requests))  # type: ignore[attr-defined]
    kube.edit(UT_PATH, {"spec": {"flow": "Device"}})
    asyncio.run(controller.maintain(NS, "gl"))
    assert kube.objects[UT_PATH]["status"]["phase"] == "Valid"

    result = asyncio.run(controller.disconnect(NS, "gl", "alice"))
    assert result.ok and SECRET_PATH not in kube.objects
    assert "oauth/revoke" in requests
    ready = next(x for x in kube.objects[UT_PATH]["status"]["conditions"] if x["type"] == c.CONDITION_READY)
    assert (ready["status"], ready["reason"]) == ("False", "Disconnected") and "click Connect" in ready["message"]

    requests.clear()
    for minutes in (0, 1, 30):  # passes right after, later, and after an operator restart (memory gone)
        clock[0] = NOW + timedelta(minutes=minutes)
        if minutes == 30:
            controller._ctx.memory.forget("uid-gl")
        asyncio.run(controller.maintain(NS, "gl", just_started=minutes == 30))
    assert requests == [] and "uid-gl" not in controller._ctx.memory.devices
    status = kube.objects[UT_PATH]["status"]
    ready = next(x for x in status["conditions"] if x["type"] == c.CONDITION_READY)
    assert status["phase"] == "AwaitingAuthorization" and ready["reason"] == "Disconnected"
    assert status["authorizationURL"] == "https://ops/accounts?focus=team/gl"
    [summary] = asyncio.run(controller.list_for_user("alice", NS))
    assert summary.user_code is None and summary.reason == "Disconnected"

    # The user clicks Connect: a code at once, and Ready no longer says Disconnected.
    asyncio.run(controller.begin_authorization(NS, "gl", "alice"))
    assert requests == ["oauth/authorize_device"]
    [summary] = asyncio.run(controller.list_for_user("alice", NS))
    assert summary.user_code == "WXYZ-1234"
    ready = next(x for x in kube.objects[UT_PATH]["status"]["conditions"] if x["type"] == c.CONDITION_READY)
    assert ready["reason"] == "AwaitingAuthorization"


def test_a_hand_deleted_device_token_secret_gets_a_new_code_as_before():
    """Deleting the token Secret is not the user's Disconnect: the next pass asks for a new code (as on creation)."""
    clock = [NOW]
    controller, kube, _, _ = setup(clock)
    requests: list[str] = []
    controller._ctx.providers._transport = MockTransport(device_provider(requests))  # type: ignore[attr-defined]
    kube.edit(UT_PATH, {"spec": {"flow": "Device"}})
    asyncio.run(controller.maintain(NS, "gl"))
    kube.remove(SECRET_PATH)
    requests.clear()
    asyncio.run(controller.maintain(NS, "gl"))
    assert requests == ["oauth/authorize_device"] and "uid-gl" in controller._ctx.memory.devices


def test_after_a_disconnect_an_authorization_code_token_says_disconnected_until_it_connects():
    clock = [NOW]
    controller, kube, _, _ = setup(clock)
    requests: list[str] = []
    controller._ctx.providers._transport = MockTransport(device_provider(requests))  # type: ignore[attr-defined]
    asyncio.run(controller.maintain(NS, "gl"))
    assert asyncio.run(controller.disconnect(NS, "gl", "alice")).ok
    asyncio.run(controller.maintain(NS, "gl"))
    status = kube.objects[UT_PATH]["status"]
    ready = next(x for x in status["conditions"] if x["type"] == c.CONDITION_READY)
    assert status["phase"] == "AwaitingAuthorization" and ready["reason"] == "Disconnected"
    assert "connect again" in ready["message"] and "authorize_device" not in str(requests)
