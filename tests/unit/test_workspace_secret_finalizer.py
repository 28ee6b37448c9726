"""The WorkspaceSecret finalizer is the controller's own (no kopf handler watches WorkspaceSecrets): added before the
first credential is minted, removed once none is asked for and none is live, and on deletion removed only after
every credential was revoked -- a failure keeps it and is retried on a backoff of its own, not on every watch event.
The real reconcile, credential manager and kubernetes-token provider over the in-memory API server."""

from __future__ import annotations

import asyncio
import base64
from datetime import datetime, timezone

from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.credentials.ledger import AccessRule
from workspace_secrets.credentials.manager import CredentialManager
from workspace_secrets.credentials.providers import registry
from workspace_secrets.runtime.errors import RetryLater
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
NS = "team"
WS = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
PROVIDER = "finalizer-tokens"
CREDENTIAL = {"name": "kube", "provider": PROVIDER, "parameters": {"serviceAccount": "ci-bot"}, "lifecycle": "WhileExists"}


class World:
    def __init__(self) -> None:
        self.kube = FakeKube(clock=lambda: NOW)
        self.kube.put(f"/api/v1/namespaces/{NS}/serviceaccounts/ci-bot", {"metadata": {"name": "ci-bot"}})
        provider = registry.build(PROVIDER, "kubernetes-token", {"allowedServiceAccounts": ["ci-*"], "audiences": ["aud"]}, {}, self.kube)
        provider.access = AccessRule(namespaces=(NS,))
        self.scheduled: list[tuple[str, float]] = []
        self.controller = WorkspaceSecretController(
            self.kube, EventRecorder(self.kube), credentials=CredentialManager({PROVIDER: provider}, clock=lambda: NOW),  # type: ignore[arg-type]
            clock=lambda: NOW, schedule=lambda ns, name, delay: self.scheduled.append((name, delay)))

    def create(self, name: str, *, credentials: bool = True, finalizers: list[str] | None = None) -> None:
        spec = {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}}
        if credentials:
            spec["credentials"] = [CREDENTIAL]
        self.kube.put(WS, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND,
                           "metadata": {"name": name, **({"finalizers": finalizers} if finalizers else {})}, "spec": spec})

    def reconcile(self, name: str) -> None:
        asyncio.run(self.controller.reconcile_by_name(NS, name))

    def obj(self, name: str) -> dict | None:
        return self.kube.get_object(f"{WS}/{name}")

    def finalizers(self, name: str) -> list[str]:
        return list((self.obj(name) or {}).get("metadata", {}).get("finalizers") or [])

    def token(self, name: str) -> str:
        return base64.b64decode(self.kube.get_object(f"{SECRETS}/{name}")["data"]["kube.token"]).decode()

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.kube.list_objects(f"/api/v1/namespaces/{NS}/events")]


def test_the_finalizer_is_set_before_the_first_credential_is_minted_and_only_with_credentials():
    world = World()
    minted_when_added: list[int] = []
    original_patch = world.kube.merge_patch

    async def patched(path: str, patch: dict) -> dict:
        if "finalizers" in (patch.get("metadata") or {}):
            minted_when_added.append(len(world.kube.token_requests))
        return await original_patch(path, patch)

    world.kube.merge_patch = patched  # type: ignore[method-assign]
    world.create("with")
    world.create("without", credentials=False)
    world.reconcile("with")
    world.reconcile("without")
    assert world.finalizers("with") == [c.FINALIZER]
    assert world.finalizers("without") == []
    assert minted_when_added == [0] and len(world.kube.token_requests) == 1, "the finalizer first, then the token"
    assert world.kube.review_token(world.token("with")) is not None
    world.reconcile("with")  # idempotent: nothing more to add
    assert world.finalizers("with") == [c.FINALIZER]


def test_deletion_revokes_then_lets_the_object_go_and_keeps_another_finalizer():
    world = World()
    world.create("ws", finalizers=["example.com/other"])
    world.reconcile("ws")
    token = world.token("ws")
    assert world.finalizers("ws") == ["example.com/other", c.FINALIZER]
    world.kube.remove(f"{WS}/ws")  # a user's delete: held by the finalizers
    body = world.obj("ws")
    assert body is not None and body["metadata"].get("deletionTimestamp")
    world.controller.observe("MODIFIED", body)
    assert world.scheduled[-1] == ("ws", 0.0)
    world.reconcile("ws")
    assert world.kube.review_token(token) is None, "revoked before the finalizer went"
    assert world.finalizers("ws") == ["example.com/other"], "only our finalizer is removed"
    assert "CredentialsRevoked" in world.reasons()


def test_a_failed_revocation_keeps_the_finalizer_and_retries_on_its_own_backoff():
    world = World()
    world.create("ws")
    world.reconcile("ws")
    token = world.token("ws")
    world.kube.remove(f"{WS}/ws")
    world.kube.fail("DELETE", f"{SECRETS}/*", 503, times=3)  # the token's anchor cannot be deleted: revocation fails
    delays = []
    for _ in range(3):
        world.scheduled.clear()
        world.reconcile("ws")
        assert world.finalizers("ws") == [c.FINALIZER], "the deletion waits while revocation fails"
        delays.append(world.scheduled[-1][1])
        # Our own status write (RevocationFailed) comes back as a watch event: no hot loop.
        world.scheduled.clear()
        world.controller.observe("MODIFIED", world.obj("ws"))
        assert world.scheduled == []
    assert delays == [1.0, 2.0, 4.0]
    conditions = {x["type"]: x for x in world.obj("ws")["status"]["conditions"]}
    assert conditions[c.CONDITION_CREDENTIALS_READY]["reason"] == "RevocationFailed"
    world.reconcile("ws")  # the provider is back
    assert world.obj("ws") is None and world.kube.review_token(token) is None


def test_abandon_cleanup_lets_it_go_without_revoking_and_says_so():
    world = World()
    world.create("ws")
    world.reconcile("ws")
    token = world.token("ws")
    world.kube.edit(f"{WS}/ws", {"metadata": {"annotations": {c.ANNOTATION_ABANDON_CLEANUP: "true"}}})
    world.kube.remove(f"{WS}/ws")
    world.reconcile("ws")
    assert world.obj("ws") is None
    assert world.kube.review_token(token) is not None, "abandoned: not revoked (the Event lists what to revoke)"
    assert "CleanupAbandoned" in world.reasons()


def test_removing_every_credential_revokes_them_and_then_drops_the_finalizer():
    world = World()
    world.create("ws")
    world.reconcile("ws")
    token = world.token("ws")
    world.kube.edit(f"{WS}/ws", {"spec": {"credentials": None}})
    world.reconcile("ws")
    assert world.kube.review_token(token) is None
    assert world.finalizers("ws") == [], "nothing asked for and nothing live: a deletion need not wait"
    world.kube.remove(f"{WS}/ws")
    assert world.obj("ws") is None


def test_a_deleted_object_without_our_finalizer_is_left_to_the_garbage_collector():
    world = World()
    world.create("plain", credentials=False, finalizers=["example.com/other"])
    world.reconcile("plain")
    world.scheduled.clear()  # its re-check for the workspace, which does not exist
    world.kube.remove(f"{WS}/plain")
    world.controller.observe("MODIFIED", world.obj("plain"))
    assert world.scheduled == []
    world.reconcile("plain")
    assert world.finalizers("plain") == ["example.com/other"]
    assert world.kube.requests("PATCH", f"{WS}/plain") == []


def test_losing_the_race_to_add_the_finalizer_mints_nothing_and_is_retried():
    world = World()
    world.create("ws")
    world.kube.fail("PATCH", f"{WS}/ws", 409)
    try:
        world.reconcile("ws")
    except RetryLater:
        pass
    else:
        raise AssertionError("a lost compare-and-swap must be retried")
    assert world.kube.token_requests == [], "nothing minted without the finalizer"
    world.reconcile("ws")
    assert world.finalizers("ws") == [c.FINALIZER] and world.kube.token_requests


def test_an_invalid_spec_on_deletion_keeps_the_finalizer_says_what_to_do_and_abandon_still_works():
    """An object stored before a schema rule (the CRD refuses this today) cannot be parsed on deletion: the finalizer
    stays (its credentials are live), a Warning says to fix the spec or abandon the cleanup, and the annotation works."""
    world = World()
    world.create("ws")
    world.reconcile("ws")
    token = world.token("ws")
    world.kube.edit(f"{WS}/ws", {"spec": {"workspaceRef": {"kind": "Nope"}}})
    world.kube.remove(f"{WS}/ws")
    world.scheduled.clear()
    world.reconcile("ws")
    assert world.finalizers("ws") == [c.FINALIZER] and world.scheduled == [("ws", 1.0)]
    warnings = [e for e in world.kube.list_objects(f"/api/v1/namespaces/{NS}/events") if e["reason"] == "RevocationFailed"]
    assert warnings and "spec is invalid" in warnings[-1]["message"] and c.ANNOTATION_ABANDON_CLEANUP in warnings[-1]["message"]
    world.kube.edit(f"{WS}/ws", {"metadata": {"annotations": {c.ANNOTATION_ABANDON_CLEANUP: "true"}}})
    world.reconcile("ws")
    assert world.obj("ws") is None
    assert world.kube.review_token(token) is not None, "abandoned, as the annotation says"
