"""The kubernetes-token provider binds tokens only to anchors it made, under names nobody can take first
(issue 14: a derived name is computable from the WorkspaceSecret's uid, so a tenant could create a Secret there)."""

from __future__ import annotations

import asyncio
import copy

from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.credentials.providers.base import Scope
from workspace_secrets.credentials.providers.kubernetes_token import LABEL_SCOPE, KubernetesTokenProvider

SCOPE = Scope.of("team", "bob-ws", "uid-bob-ws", "kube")
SECRETS = "/api/v1/namespaces/team/secrets"


def cluster() -> FakeKube:
    kube = FakeKube()
    kube.put("/api/v1/namespaces/team/serviceaccounts/ci", {"apiVersion": "v1", "kind": "ServiceAccount"})
    return kube


def provider(kube: FakeKube) -> KubernetesTokenProvider:
    return KubernetesTokenProvider.from_config(name="tokens", config={"allowedServiceAccounts": ["ci"], "audiences": ["aud"]},
                                               admin={}, kube=kube)  # type: ignore[arg-type]


def test_anchors_get_names_nobody_can_take_first_and_foreign_secrets_are_never_ours():
    kube = cluster()
    tokens = provider(kube)
    # Proves it can tell: the anchor is ours, named by the API server, and the token is bound to it.
    issued = asyncio.run(tokens.issue(SCOPE, {"serviceAccount": "ci"}, 1))
    ours = f"{SECRETS}/{issued.id}"
    assert issued.id.startswith("bob-ws-kube-tok-")
    assert kube.token_requests[-1]["spec"]["boundObjectRef"] == {"apiVersion": "v1", "kind": "Secret", "name": issued.id,
                                                                 "uid": kube.objects[ours]["metadata"]["uid"]}
    again = asyncio.run(tokens.issue(SCOPE, {"serviceAccount": "ci"}, 1))
    assert again.id != issued.id  # a retry never reuses a name someone could have prepared

    # alice's Secret with the anchor's labels (no owner: the policies refuse her an ownerReference to a
    # WorkspaceSecret) is neither listed as one of bob's tokens nor ever deleted by a revocation.
    squat = copy.deepcopy(kube.objects[ours])
    squat["metadata"].update(name="alices", ownerReferences=[])
    kube.put(f"{SECRETS}/alices", squat)
    assert squat["metadata"]["labels"][LABEL_SCOPE] == SCOPE.tag
    assert sorted(asyncio.run(tokens.list(SCOPE))) == sorted([issued.id, again.id])
    asyncio.run(tokens.revoke(SCOPE, "alices"))
    assert f"{SECRETS}/alices" in kube.objects and kube.requests("DELETE") == []
    asyncio.run(tokens.revoke(SCOPE, issued.id))
    assert ours not in kube.objects and kube.requests("DELETE") == [ours]
    assert kube.objects[f"{SECRETS}/{again.id}"]["metadata"]["labels"][c.LABEL_COMPONENT] == c.COMPONENT_TOKEN_ANCHOR
