"""The workspace gate on the real API server (issue 17, part 2): a pod of a WorkspaceSecret that requires a user
token (or a WhileRunning credential) is admitted with the scheduling gate workspace-secrets.io/ready, waits there
with Events on the pod and the WorkspaceSecret that say what it waits for and where its user connects, and the
operator removes the gate within seconds of the token becoming valid.

No node is needed: what proves it is the pod's spec.schedulingGates as the API server stores it (a gated pod is
never scheduled; once the gate is gone the scheduler may place it -- on the real node, test_real_node.py).

The attacks are alice's, impersonated with exactly the shipped workspace-secrets-user role (and the shipped
admission policies) in a namespace she shares with bob: she cannot create a pod at all, nor touch bob's gated
pod; given pod creation by her platform, a pod of hers labelled with bob's WorkspaceSecret is refused; and a pod
relabelled to bob's WorkspaceSecret but not to bob is never released by it nor told bob's connect link.
"""

from __future__ import annotations

import json
import time

import pytest
from attack_support import Tenant, Victim, installed_policies, rbac_forbidden, refused
from helpers import Api, wait_for
from kubernetes.client.rest import ApiException
from test_user_token import applications, connect, create_token, oidc, oidc_app, page_link, ut_spec  # noqa: F401 (fixtures)

from workspace_secrets.api import constants as c

GATE = {"name": c.SCHEDULING_GATE}
#: How soon after the token becomes valid the pod is released (the issue: "within seconds").
RELEASE_WITHIN = 10.0


@pytest.fixture
def api(cluster, wso_operator) -> Api:
    if not wso_operator.webhook:
        pytest.skip("the webhook is not reachable from an external cluster without WSO_E2E_WEBHOOK_HOST")
    return Api(cluster.api_client())


@pytest.fixture(autouse=True)
def deployer(api, namespace) -> None:
    """The ServiceAccount the tests' kubernetes-token credential is minted for (a provider that needs no outside
    service: the gate is what these tests are about)."""
    api.core.create_namespaced_service_account(namespace, {"metadata": {"name": "deployer"}})


def pod_body(name: str, ws: str, user: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {c.LABEL_WORKSPACE_SECRET: ws, c.LABEL_USER: user}},
            "spec": {"containers": [{"name": "workspace", "image": "registry.invalid/workspace:1"}]}}


def gates(api: Api, namespace: str, name: str) -> list[dict]:
    pod = api.core.read_namespaced_pod(name, namespace)
    return [{"name": g.name} for g in pod.spec.scheduling_gates or ()]


def events(api: Api, namespace: str, kind: str, name: str, reason: str | None = None) -> list:
    return [e for e in api.core.list_namespaced_event(namespace).items
            if e.involved_object.kind == kind and e.involved_object.name == name and (reason is None or e.reason == reason)]


def ws_spec(user: str, tokens: list[dict], **extra) -> dict:
    return {"user": user, "workspaceRef": {"kind": "Pod", "name": f"{user}-pod"}, "userTokens": tokens, **extra}


def test_a_pod_waits_for_its_token_and_starts_within_seconds_of_connecting(api, namespace, wso_operator, oidc, applications):
    app = oidc_app(applications, oidc, "wso")
    create_token(api, namespace, "alice-gh", ut_spec(app))
    api.create_ws(namespace, "alice-ws", ws_spec("alice", [{"name": "alice-gh"}]))
    api.wait_condition(namespace, "alice-ws", status="False", type_=c.CONDITION_TOKENS_READY)
    link = page_link(wso_operator, namespace, "alice-gh")

    created = api.core.create_namespaced_pod(namespace, pod_body("alice-pod", "alice-ws", "alice"))
    assert [{"name": g.name} for g in created.spec.scheduling_gates] == [GATE]  # gated at admission

    # The pod and the WorkspaceSecret say what it waits for and where alice connects (a plain link).
    [waiting] = wait_for(lambda: events(api, namespace, "Pod", "alice-pod", c.EVENT_WAITING_FOR_TOKEN), what="the pod's Event")
    assert waiting.type == "Warning" and "'alice-gh'" in waiting.message and link in waiting.message
    # The WorkspaceSecret says it once: TokensReady's Warning (the gate does not post a second one for the same cause).
    told = wait_for(lambda: [e for e in events(api, namespace, c.WORKSPACE_SECRET_KIND, "alice-ws")
                             if e.type == "Warning" and "alice-gh" in e.message], what="the WorkspaceSecret's Event")
    assert not events(api, namespace, c.WORKSPACE_SECRET_KIND, "alice-ws", c.EVENT_WAITING_FOR_TOKEN), [e.reason for e in told]
    # More reconciles while it waits: a user's annotation, and another pod of the workspace (its Event proves that
    # reconcile ran). Still waiting, and each pod told only once.
    api.patch_ws(namespace, "alice-ws", {"metadata": {"annotations": {"example.com/touched": "1"}}})
    api.core.create_namespaced_pod(namespace, pod_body("alice-pod-b", "alice-ws", "alice"))
    wait_for(lambda: events(api, namespace, "Pod", "alice-pod-b", c.EVENT_WAITING_FOR_TOKEN), what="the other pod's Event")
    assert gates(api, namespace, "alice-pod") == [GATE]
    assert len(events(api, namespace, "Pod", "alice-pod", c.EVENT_WAITING_FOR_TOKEN)) == 1
    assert len(events(api, namespace, "Pod", "alice-pod-b", c.EVENT_WAITING_FOR_TOKEN)) == 1
    assert not events(api, namespace, c.WORKSPACE_SECRET_KIND, "alice-ws", c.EVENT_WAITING_FOR_TOKEN)

    connect(api, wso_operator, namespace, "alice-gh")
    valid_at = time.monotonic()
    wait_for(lambda: gates(api, namespace, "alice-pod") == [], timeout=RELEASE_WITHIN, interval=0.1, what="the gate removed")
    released_after = time.monotonic() - valid_at
    assert released_after < RELEASE_WITHIN
    api.wait_condition(namespace, "alice-ws", type_=c.CONDITION_TOKENS_READY)
    # The Secret held the token when the pod was released (the key only: values are never read into the test).
    assert "token.alice-gh.token" in (api.get_secret(namespace, "alice-ws").data or {})
    wait_for(lambda: events(api, namespace, "Pod", "alice-pod", c.EVENT_GATE_REMOVED), what="the release Event")
    print(f"released {released_after:.1f}s after the token became valid")

    # Another pod of the running workspace (a restart, a second replica): gated at admission, released by the pod
    # watch alone (the WorkspaceSecret is bound and settled: no other reconcile is due).
    created = api.core.create_namespaced_pod(namespace, pod_body("alice-pod-2", "alice-ws", "alice"))
    assert [{"name": g.name} for g in created.spec.scheduling_gates] == [GATE]
    wait_for(lambda: gates(api, namespace, "alice-pod-2") == [], timeout=5, interval=0.1, what="the second pod released")
    assert not events(api, namespace, "Pod", "alice-pod-2", c.EVENT_WAITING_FOR_TOKEN)


def env_names(pod) -> set[str]:
    return {e.name for ct in pod.spec.containers for e in ct.env or ()}


def test_a_template_applied_with_its_workspace_secret_starts_with_every_env_var(api, namespace, wso_operator, cluster):
    """One `kubectl apply` of a WorkspaceSecret and its Deployment: the first pod is admitted before the operator's
    first reconcile published status.env (it gets GIT_SSH_COMMAND only). The gate never releases such a pod: it is
    deleted and its ReplicaSet re-creates it, admitted with everything. The pod that is released has every env var
    of status.env."""
    labels = {c.LABEL_WORKSPACE_SECRET: "fay-ws", c.LABEL_USER: "fay"}
    manifest = {"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "fay-ws"},
         "spec": {"user": "fay", "workspaceRef": {"kind": "Deployment", "name": "fay"},
                  "credentials": [{"name": "kube", "provider": "cluster-tokens", "parameters": {"serviceAccount": "deployer"}}]}},  # WhileRunning: the pods wait for it
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "fay"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "fay"}},
                  "template": {"metadata": {"labels": {"app": "fay", **labels}},
                               "spec": {"containers": [{"name": "workspace", "image": "registry.invalid/workspace:1"}]}}}},
    ]}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))

    def released():
        pods = [p for p in api.core.list_namespaced_pod(namespace, label_selector="app=fay").items if not p.metadata.deletion_timestamp]
        return [p for p in pods if not p.spec.scheduling_gates] or None
    [pod] = wait_for(released, timeout=60, what="the Deployment's pod released")
    published = {e["name"] for e in api.get_ws(namespace, "fay-ws")["status"]["env"]}
    assert "KUBECONFIG" in published and c.KEY_GIT_SSH_COMMAND in published, sorted(published)
    assert published <= env_names(pod), sorted(published - env_names(pod))
    for ct in pod.spec.containers:
        for e in ct.env or ():  # by reference only: no value in the pod spec
            assert e.value is None and e.value_from.secret_key_ref.name == "fay-ws", e.name
    recreated = events(api, namespace, c.WORKSPACE_SECRET_KIND, "fay-ws", "WorkspacePodRecreated")
    print(f"\nincomplete pods deleted for re-creation: {len(recreated)}")
    # Only pods that never ran and lacked something were deleted: the released one stays.
    time.sleep(1)
    assert api.core.read_namespaced_pod(pod.metadata.name, namespace).metadata.deletion_timestamp is None


def credential_phase(api: Api, namespace: str, name: str) -> str | None:
    entry = next((e for e in (api.get_ws(namespace, name) or {}).get("status", {}).get("credentials") or () if e["name"] == "kube"), {})
    return entry.get("phase")


def test_a_stopping_pod_keeps_its_credentials_until_it_is_gone(api, namespace, wso_operator):
    """A pod being deleted still runs (preStop, graceful shutdown): its WhileRunning credential stays Active until
    the pod is gone; then it is revoked within seconds (the reconcile after the DELETED event does not see the pod
    in a stale listing)."""
    # Anchored to the workspace's home volume (which need not exist here), not to the pod: a WorkspaceSecret bound to
    # the pod would be garbage-collected with it, and its deletion (not the stop) would revoke the credential.
    api.create_ws(namespace, "gus-ws", {"user": "gus", "workspaceRef": {"kind": "PersistentVolumeClaim", "name": "gus-home"},
                                        "credentials": [{"name": "kube", "provider": "cluster-tokens", "parameters": {"serviceAccount": "deployer"}}]})
    body = pod_body("gus-pod", "gus-ws", "gus")
    body["metadata"]["finalizers"] = ["example.com/graceful"]  # stands in for a kubelet's graceful shutdown
    # Bound to a node (that does not exist): the pod garbage collector marks a terminating pod that was never scheduled
    # Failed at once; one bound to a missing node only after its 40 s quarantine, long after this test.
    body["spec"]["nodeName"] = "gus-node"
    api.core.create_namespaced_pod(namespace, body)
    wait_for(lambda: credential_phase(api, namespace, "gus-ws") == "Active", timeout=30, what="gus's credential issued")

    api.core.delete_namespaced_pod("gus-pod", namespace, grace_period_seconds=0)  # no kubelet: the finalizer alone holds it
    assert api.core.read_namespaced_pod("gus-pod", namespace).metadata.deletion_timestamp
    api.patch_ws(namespace, "gus-ws", {"metadata": {"annotations": {"example.com/touched": "1"}}})  # a reconcile now
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:  # the pod event and the annotation's reconcile: still running
        assert credential_phase(api, namespace, "gus-ws") == "Active"
        time.sleep(0.2)

    api.core.patch_namespaced_pod("gus-pod", namespace, {"metadata": {"finalizers": None}})
    gone_at = time.monotonic()
    def stopped():
        return credential_phase(api, namespace, "gus-ws") == "Stopped"
    try:
        wait_for(stopped, timeout=20, interval=0.1, what="the credential revoked once the pod is gone")
    except AssertionError:
        status = (api.get_ws(namespace, "gus-ws") or {}).get("status") or {}
        pods_left = [p.metadata.name for p in api.core.list_namespaced_pod(namespace).items]
        ready = [x.get("message") for x in status.get("conditions") or () if x.get("type") == c.CONDITION_CREDENTIALS_READY]
        raise AssertionError(f"not Stopped 20 s after the pod was gone: pods {pods_left}, credentials {status.get('credentials')}, "
                             f"CredentialsReady {ready}") from None
    print(f"\nrevoked {time.monotonic() - gone_at:.1f}s after the pod was gone")


def test_a_pod_of_a_workspace_that_requires_nothing_is_not_gated(api, namespace, wso_operator):
    api.create_ws(namespace, "plain", ws_spec("carol", [{"name": "carol-gh", "optional": True}]))
    created = api.core.create_namespaced_pod(namespace, pod_body("carol-pod", "plain", "carol"))
    assert not created.spec.scheduling_gates


def test_a_while_running_credential_gates_the_pod_until_it_is_issued(api, namespace, wso_operator):
    api.create_ws(namespace, "dyn", {"user": "dave", "workspaceRef": {"kind": "Pod", "name": "dave-pod"},
                                     "credentials": [{"name": "kube", "provider": "cluster-tokens", "parameters": {"serviceAccount": "deployer"}}]})  # WhileRunning: the default
    created = api.core.create_namespaced_pod(namespace, pod_body("dave-pod", "dyn", "dave"))
    assert [{"name": g.name} for g in created.spec.scheduling_gates] == [GATE]
    wait_for(lambda: gates(api, namespace, "dave-pod") == [], timeout=30, what="the gate removed once the credential is issued")
    entry = next(e for e in api.get_ws(namespace, "dyn")["status"]["credentials"] if e["name"] == "kube")
    assert entry["phase"] == "Active"


# --- attacks --------------------------------------------------------------------------------------------------
@pytest.fixture
def tenant(cluster, namespace, api):
    t = Tenant(cluster, namespace)
    with installed_policies(cluster, t, ("alice", "bob")):
        yield t


def test_attack_a_tenant_cannot_create_or_release_another_users_gated_pod(api, namespace, wso_operator, oidc, applications,
                                                                          tenant, cluster):
    app = oidc_app(applications, oidc, "wso")
    assert tenant.create({"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "metadata": {"name": "bob-gh"},
                          "spec": ut_spec(app, user="bob")}, user="bob").ok
    assert tenant.create({"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "bob-ws"},
                          "spec": ws_spec("bob", [{"name": "bob-gh"}])}, user="bob").ok
    # The platform (its provisioner) creates bob's workspace pod: gated.
    assert tenant.platform("create", "-f", "-", input=json.dumps(pod_body("bob-pod", "bob-ws", "bob"))).ok
    assert gates(api, namespace, "bob-pod") == [GATE]
    [bob_told] = wait_for(lambda: events(api, namespace, "Pod", "bob-pod", c.EVENT_WAITING_FOR_TOKEN), what="bob's pod told")
    bob_link = page_link(wso_operator, namespace, "bob-gh")
    assert bob_link in bob_told.message

    # The probe can tell: the platform may remove a gate (on a gated pod of its own, so bob's stays as it is).
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probe"},
             "spec": {"schedulingGates": [{"name": "example.com/probe"}], "containers": [{"name": "x", "image": "registry.invalid/x:1"}]}}
    assert tenant.platform("create", "-f", "-", input=json.dumps(probe)).ok
    remove = json.dumps([{"op": "remove", "path": "/spec/schedulingGates"}])
    assert tenant.platform("patch", "pod", "probe", "--type=json", "-p", remove).ok and gates(api, namespace, "probe") == []

    bob = Victim(api, namespace, "bob")
    wait_for(lambda: api.get_secret(namespace, "bob-ws"), what="bob's Secret")
    before = bob.snapshot()

    # With the shipped roles alice can neither create a pod nor touch bob's.
    as_alice = tenant.create(pod_body("alice-pod", "bob-ws", "alice"), user="alice")
    assert rbac_forbidden(as_alice), as_alice.stderr
    for attempt in (tenant("patch", "pod", "bob-pod", "--type=json", "-p", remove, user="alice"),
                    tenant("delete", "pod", "bob-pod", user="alice"),
                    tenant("label", "pod", "bob-pod", f"{c.LABEL_USER}=alice", "--overwrite", user="alice")):
        assert rbac_forbidden(attempt), attempt.stderr
    assert gates(api, namespace, "bob-pod") == [GATE]

    # Her platform lets her create pods: one labelled with bob's WorkspaceSecret is refused by the webhook.
    tenant("create", "role", "pod-creator", "--verb=create", "--resource=pods").check()
    tenant("create", "rolebinding", "pod-creator", "--role=pod-creator", "--user=alice").check()
    wait_for(lambda: not rbac_forbidden(tenant.dry_run(pod_body("alice-pod", "bob-ws", "alice"), user="alice")),
             timeout=20, what="alice's pod role in effect")
    refusal = tenant.create(pod_body("alice-pod", "bob-ws", "alice"), user="alice")
    assert refused(refusal, "belongs to user 'bob'", "admission webhook"), refusal.stderr
    with pytest.raises(ApiException) as gone:
        api.core.read_namespaced_pod("alice-pod", namespace)
    assert gone.value.status == 404
    assert gates(api, namespace, "bob-pod") == [GATE]
    bob.assert_untouched(before)

    # A pod relabelled to bob's WorkspaceSecret but not to bob (what someone with pod patch rights could do): it is
    # not bob's workspace, so bob's WorkspaceSecret never releases it and never tells it bob's link.
    assert tenant.platform("create", "-f", "-", input=json.dumps(pod_body("relabelled", "bob-ws", "bob"))).ok
    wait_for(lambda: events(api, namespace, "Pod", "relabelled", c.EVENT_WAITING_FOR_TOKEN), what="the pod told while it was bob's")
    assert tenant.platform("label", "pod", "relabelled", f"{c.LABEL_USER}=alice", "--overwrite").ok
    told_before = {e.metadata.name for e in events(api, namespace, "Pod", "relabelled")}

    connect(api, wso_operator, namespace, "bob-gh", login="bob", user="bob")
    wait_for(lambda: gates(api, namespace, "bob-pod") == [], timeout=RELEASE_WITHIN, interval=0.1, what="bob's pod released")
    time.sleep(2)
    assert gates(api, namespace, "relabelled") == [GATE]
    new = [e for e in events(api, namespace, "Pod", "relabelled") if e.metadata.name not in told_before]
    assert not [e for e in new if bob_link in e.message], [e.reason for e in new]
