"""The kubernetes-token provider binds tokens only to anchors it made (issue 14: a tenant can compute an anchor's
name from the WorkspaceSecret's uid and create a Secret there first)."""

from __future__ import annotations

import asyncio
import copy

import pytest

from workspace_secrets.kube.client import Conflict
from workspace_secrets.providers.credentials.base import ProviderError, Scope
from workspace_secrets.providers.credentials.kubernetes_token import KubernetesTokenProvider

SCOPE = Scope.of("team", "bob-ws", "uid-bob-ws", "kube")


class MemoryKube:
    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.deleted: list[str] = []
        self.token_requests: list[dict] = []

    async def create(self, path: str, body: dict) -> dict:
        if path.endswith("/token"):
            self.token_requests.append(body)
            return {"status": {"token": "t0ken", "expirationTimestamp": "2030-01-01T00:00:00Z"}}
        target = f"{path}/{body['metadata']['name']}"
        if target in self.objects:
            raise Conflict(409, "AlreadyExists", "exists")
        stored = copy.deepcopy(body)
        stored["metadata"]["uid"] = f"uid-{body['metadata']['name']}"
        self.objects[target] = stored
        return copy.deepcopy(stored)

    async def get(self, path: str) -> dict | None:
        return copy.deepcopy(self.objects.get(path))

    async def delete(self, path: str, *, uid: str | None = None) -> bool:
        self.deleted.append(path)
        return self.objects.pop(path, None) is not None

    async def list(self, path: str, *, label_selector: str | None = None) -> dict:
        key, _, value = (label_selector or "").partition("=")
        return {"items": [copy.deepcopy(o) for p, o in self.objects.items()
                          if p.startswith(path + "/") and (o["metadata"].get("labels") or {}).get(key) == value]}


def provider(kube: MemoryKube) -> KubernetesTokenProvider:
    return KubernetesTokenProvider.from_config(name="tokens", config={"allowedServiceAccounts": ["ci"], "audiences": ["aud"]},
                                               admin={}, kube=kube)  # type: ignore[arg-type]


def test_an_anchor_name_taken_by_someone_elses_secret_is_never_adopted():
    kube = MemoryKube()
    tokens = provider(kube)
    # Proves it can tell: issued normally, the anchor is ours and the token is bound to it.
    issued = asyncio.run(tokens.issue(SCOPE, {"serviceAccount": "ci"}, 1))
    path = f"/api/v1/namespaces/team/secrets/{issued.id}"
    assert kube.token_requests[-1]["spec"]["boundObjectRef"]["uid"] == kube.objects[path]["metadata"]["uid"]
    assert asyncio.run(tokens.list(SCOPE)) == [issued.id]

    # alice computed the next anchor's name and created a Secret there first (labels copied, no owner: the
    # policies refuse her an ownerReference to a WorkspaceSecret).
    kube2 = MemoryKube()
    squat = copy.deepcopy(kube.objects[path])
    squat["metadata"]["ownerReferences"] = []
    kube2.objects[path] = squat
    with pytest.raises(ProviderError, match="not this WorkspaceSecret's token anchor"):
        asyncio.run(provider(kube2).issue(SCOPE, {"serviceAccount": "ci"}, 1))
    assert kube2.token_requests == []  # nothing minted against her Secret
    assert asyncio.run(provider(kube2).list(SCOPE)) == []  # nor listed as ours

    # Revoking never deletes a Secret that is not our anchor; it deletes ours.
    asyncio.run(provider(kube2).revoke(SCOPE, issued.id))
    assert kube2.deleted == [] and path in kube2.objects
    asyncio.run(tokens.revoke(SCOPE, issued.id))
    assert path not in kube.objects
