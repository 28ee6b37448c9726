"""Tenant isolation on the real API server: the admission policies in deploy/policies/, exercised by
impersonated users (`kubectl --as alice`), and the operator's refusal to copy another user's key.

The impersonated users get RBAC to create WorkspaceSecrets (the shipped workspace-secrets-user role) and,
for the label tests, full rights on Secrets, so every refusal here comes from a policy, not from RBAC.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Api, wait_for

from workspace_secrets.api import constants as c
from workspace_secrets.domain.naming import user_key_secret_name
from workspace_secrets.domain.sshkeys import KeySpec

POLICY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "policies"
PARAMS_NAMESPACE, PARAMS_NAME = "workspace-secrets-system", "workspace-secrets-tenancy"
ISOLATION_POLICY = "ValidatingAdmissionPolicy 'workspace-secrets-user-isolation'"
LABEL_POLICY = "ValidatingAdmissionPolicy 'workspace-secrets-user-secret-labels'"
PLATFORM_GROUP = "wso-e2e-platform"
#: Users with full rights on Secrets in the test namespace (for the label tests).
SECRET_EDITORS = ("dave", "erin")


class Kubectl:
    def __init__(self, cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace

    def __call__(self, *args: str, user: str | None = None, groups: tuple[str, ...] = (), input: str | None = None,
                 check: bool = False) -> subprocess.CompletedProcess[str]:
        identity = [f"--as={user}", *(f"--as-group={g}" for g in groups)] if user else []
        return self.cluster.kubectl(*identity, "-n", self.namespace, *args, input=input, check=check)

    def apply(self, manifest: dict, **identity) -> subprocess.CompletedProcess[str]:
        return self("apply", "--validate=strict", "-f", "-", input=json.dumps(manifest), **identity)

    def dry_run(self, manifest: dict, **identity) -> subprocess.CompletedProcess[str]:
        return self("create", "--dry-run=server", "-f", "-", input=json.dumps(manifest), **identity)


def ws_manifest(name: str, user: str, **spec) -> dict:
    return {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name},
            "spec": {"user": user, "workspaceRef": {"kind": "Pod", "name": f"{name}-pod"}, **spec}}


def secret_manifest(name: str, user: str | None, value: str = "a value that is not a key") -> dict:
    labels = {c.LABEL_USER: user} if user else {}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels}, "stringData": {"v": value}}


def refused(result: subprocess.CompletedProcess[str], policy: str, *parts: str) -> bool:
    return result.returncode != 0 and policy in result.stderr and all(p in result.stderr for p in parts)


def set_params(cluster, **data: str) -> None:
    cluster.kubectl("patch", "configmap", "-n", PARAMS_NAMESPACE, PARAMS_NAME, "--type=merge",
                    "-p", json.dumps({"data": data}))


@pytest.fixture(scope="module")
def kubectl(cluster, module_namespace) -> Iterator[Kubectl]:
    """The policies installed from deploy/policies (exactly as shipped), the test namespace's platform
    identities added to the parameters, RBAC for the impersonated users; all removed afterwards."""
    k = Kubectl(cluster, module_namespace)
    created_ns = cluster.kubectl("get", "namespace", PARAMS_NAMESPACE, check=False).returncode != 0
    if created_ns:
        cluster.kubectl("create", "namespace", PARAMS_NAMESPACE)
    cluster.kubectl("apply", "-f", str(POLICY_DIR))
    try:
        shipped = json.loads(cluster.kubectl("get", "configmap", "-n", PARAMS_NAMESPACE, PARAMS_NAME, "-o", "json").stdout)["data"]
        set_params(
            cluster,
            platformUsers=f"{shipped['platformUsers']}, system:serviceaccount:{module_namespace}:provisioner",
            platformGroups=f"{shipped['platformGroups']}, {PLATFORM_GROUP}",
        )
        k("create", "rolebinding", "workspace-users", "--clusterrole=workspace-secrets-user",
          *(f"--user={u}" for u in ("alice", "bob", "carol", "oidc:carol", *SECRET_EDITORS)),
          f"--serviceaccount={module_namespace}:provisioner", f"--serviceaccount={module_namespace}:default",
          f"--group={PLATFORM_GROUP}", check=True)
        k("create", "role", "secret-editor", "--verb=get,list,create,update,patch", "--resource=secrets", check=True)
        k("create", "rolebinding", "secret-editors", "--role=secret-editor", *(f"--user={u}" for u in SECRET_EDITORS),
          f"--group={PLATFORM_GROUP}", check=True)
        # Policies and parameter changes reach the API server's admission through informers: wait for both.
        wait_for(lambda: refused(k.dry_run(ws_manifest("probe", "bob"), user="alice"), ISOLATION_POLICY),
                 timeout=30, what="the user-isolation policy to be enforced")
        wait_for(lambda: k.dry_run(ws_manifest("probe", "bob"), user="x", groups=(PLATFORM_GROUP,)).returncode == 0,
                 timeout=30, what="the test's platform group to be allowed")
        wait_for(lambda: refused(k.dry_run(secret_manifest("probe", "bob"), user="dave"), LABEL_POLICY),
                 timeout=30, what="the secret-label policy to be enforced")
        yield k
    finally:
        # Uninstall in the documented order: policies and bindings first, and only once the API server no
        # longer enforces them the parameters -- a binding without parameters refuses everything it matches.
        for name in ("user-isolation.yaml", "user-secret-labels.yaml"):
            cluster.kubectl("delete", "--ignore-not-found", "-f", str(POLICY_DIR / name), check=False)
        wait_for(lambda: not refused(k.dry_run(ws_manifest("probe", "bob"), user="alice"), ISOLATION_POLICY)
                 and not refused(k.dry_run(secret_manifest("probe", "bob"), user="dave"), LABEL_POLICY),
                 timeout=30, what="the policies to be gone")
        for name in ("workspace-user-role.yaml", "tenancy-params.yaml"):
            cluster.kubectl("delete", "--ignore-not-found", "-f", str(POLICY_DIR / name), check=False)
        if created_ns:
            cluster.kubectl("delete", "namespace", PARAMS_NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def api(cluster) -> Api:
    return Api(cluster.api_client())


# --- WorkspaceSecret ----------------------------------------------------------------------------------
def test_a_user_creates_their_own_workspace_secret_but_not_another_users(kubectl, api, module_namespace):
    assert kubectl("auth", "can-i", "create", "workspacesecrets.workspace-secrets.io", user="alice").stdout.strip() == "yes"
    assert kubectl.apply(ws_manifest("alice-own", "alice"), user="alice").returncode == 0

    result = kubectl.apply(ws_manifest("alice-steals", "bob"), user="alice")
    assert refused(result, ISOLATION_POLICY, "spec.user:", "'alice' (workspace user 'alice') may not create a WorkspaceSecret for user 'bob'"), result.stderr
    assert api.get_ws(module_namespace, "alice-steals") is None


def test_a_user_cannot_edit_another_users_workspace_secret(kubectl, api, module_namespace):
    assert kubectl.apply(ws_manifest("bob-ws", "bob"), user="bob").returncode == 0
    before = api.get_ws(module_namespace, "bob-ws")
    for patch in (
        {"spec": {"display": [{"key": "key", "valueFrom": {"secretKeyRef": {"key": "ssh-publickey"}}}]}},
        {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "by-alice"}}},  # would rotate bob's key
        {"metadata": {"labels": {"harmless": "x"}}},
    ):
        result = kubectl("patch", "wss", "bob-ws", "--type=merge", "-p", json.dumps(patch), user="alice")
        assert refused(result, ISOLATION_POLICY, "may not edit WorkspaceSecret 'bob-ws' of user 'bob'"), result.stderr
    after = api.get_ws(module_namespace, "bob-ws")
    assert after["spec"] == before["spec"]
    assert c.ANNOTATION_ROTATE_SSH_KEY not in (after["metadata"].get("annotations") or {})
    assert "harmless" not in (after["metadata"].get("labels") or {})
    # The owner may.
    assert kubectl("annotate", "wss", "bob-ws", "note=mine", user="bob").returncode == 0


def test_platform_identities_act_for_any_user(kubectl):
    provisioner = f"system:serviceaccount:{kubectl.namespace}:provisioner"
    assert kubectl.apply(ws_manifest("by-provisioner", "bob"), user=provisioner).returncode == 0
    assert kubectl.apply(ws_manifest("by-group", "carol"), user="ops-person", groups=(PLATFORM_GROUP,)).returncode == 0
    assert kubectl("annotate", "wss", "by-group", "touched=yes", user=provisioner).returncode == 0
    # A ServiceAccount that is not listed maps to no workspace user and may act for nobody.
    other = f"system:serviceaccount:{kubectl.namespace}:default"
    result = kubectl.apply(ws_manifest("by-default-sa", "bob"), user=other)
    assert refused(result, ISOLATION_POLICY, f"'{other}' (which maps to no workspace user)"), result.stderr


def test_usernames_map_to_spec_user_by_the_configured_prefix(kubectl, cluster):
    set_params(cluster, userPrefix="oidc:")
    try:
        wait_for(lambda: kubectl.dry_run(ws_manifest("probe", "carol"), user="oidc:carol").returncode == 0,
                 timeout=30, what="userPrefix oidc: to take effect")
        assert kubectl.apply(ws_manifest("carol-oidc", "carol"), user="oidc:carol").returncode == 0
        result = kubectl.apply(ws_manifest("carol-steals", "bob"), user="oidc:carol")
        assert refused(result, ISOLATION_POLICY, "'oidc:carol' (workspace user 'carol')"), result.stderr
        # Without the prefix, a username maps to nobody (it did not come through the identity provider).
        result = kubectl.apply(ws_manifest("carol-plain", "carol"), user="carol")
        assert refused(result, ISOLATION_POLICY, "'carol' (which maps to no workspace user)"), result.stderr
    finally:
        set_params(cluster, userPrefix="")
    wait_for(lambda: kubectl.dry_run(ws_manifest("probe", "carol"), user="carol").returncode == 0,
             timeout=30, what="userPrefix reset")


def test_user_tokens_follow_the_same_rule(kubectl, cluster):
    if cluster.kubectl("get", "crd", "usertokens.workspace-secrets.io", check=False).returncode != 0:
        pytest.skip("the UserToken CRD is not installed yet")
    import yaml  # only needed once UserToken exists

    examples = Path(__file__).resolve().parents[2] / "examples"
    docs = [d for p in sorted(examples.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d and d.get("kind") == "UserToken"]
    assert docs, "examples/ has no UserToken to start from"
    token = {"apiVersion": docs[0]["apiVersion"], "kind": "UserToken", "metadata": {"name": "alice-token"},
             "spec": {**docs[0]["spec"], "user": "bob"}}
    result = kubectl.apply(token, user="alice")
    assert refused(result, ISOLATION_POLICY, "may not create a UserToken for user 'bob'"), result.stderr
    token["spec"]["user"] = "alice"
    result = kubectl.apply(token, user="alice")
    assert result.returncode == 0, result.stderr


# --- Secret labels ----------------------------------------------------------------------------------------
def test_only_the_user_labels_a_secret_as_theirs(kubectl):
    assert kubectl("auth", "can-i", "patch", "secrets", user="dave").stdout.strip() == "yes"
    assert kubectl.apply(secret_manifest("dave-own", "dave"), user="dave").returncode == 0
    result = kubectl.apply(secret_manifest("dave-for-erin", "erin"), user="dave")
    assert refused(result, LABEL_POLICY, "metadata.labels[workspace-secrets.io/user]:", "may not label a Secret workspace-secrets.io/user=erin"), result.stderr

    # Labelling an unlabelled Secret as someone else's, or taking over someone else's Secret: refused.
    assert kubectl.apply(secret_manifest("plain", None), user="dave").returncode == 0
    result = kubectl("label", "secret", "plain", f"{c.LABEL_USER}=erin", user="dave")
    assert refused(result, LABEL_POLICY, "workspace-secrets.io/user=erin"), result.stderr
    result = kubectl("label", "secret", "dave-own", f"{c.LABEL_USER}=erin", "--overwrite", user="erin")
    assert refused(result, LABEL_POLICY, "may not edit Secret 'dave-own', which is labelled for user 'dave'"), result.stderr
    result = kubectl("patch", "secret", "dave-own", "-p", json.dumps({"stringData": {"v": "erin's now"}}), user="erin")
    assert refused(result, LABEL_POLICY, "labelled for user 'dave'"), result.stderr
    result = kubectl("label", "secret", "dave-own", f"{c.LABEL_USER}-", user="erin")
    assert refused(result, LABEL_POLICY, "labelled for user 'dave'"), result.stderr

    # The user edits their own; a platform identity labels for anyone; unlabelled Secrets are not our concern.
    assert kubectl("label", "secret", "dave-own", "purpose=git", user="dave").returncode == 0
    assert kubectl("label", "secret", "plain", f"{c.LABEL_USER}=erin", user="ops", groups=(PLATFORM_GROUP,)).returncode == 0
    assert kubectl.apply(secret_manifest("erin-unlabelled", None), user="erin").returncode == 0


# --- the operator: no key crosses users -----------------------------------------------------------------
def test_a_user_cannot_bring_another_users_key(kubectl, api, module_namespace, wso_operator):
    ns = module_namespace
    # bob's workspace: the operator generates bob's key in ssh-bob-ed25519-<hash>.
    assert kubectl.apply(ws_manifest("bob-key-holder", "bob"), user="bob").returncode == 0
    api.wait_condition(ns, "bob-key-holder")
    bobs_key = user_key_secret_name("bob", KeySpec())
    assert kubectl("auth", "can-i", "get", f"secret/{bobs_key}", user="alice").stdout.strip() == "no"

    # alice asks for her own WorkspaceSecret, but with bob's generated key as her "own" key: admission lets
    # it through (it is alice's object), the operator refuses to copy the key.
    stolen = ws_manifest("alice-byo-bobs", "alice", ssh={"existingSecretRef": {"name": bobs_key}})
    assert kubectl.apply(stolen, user="alice").returncode == 0
    cond = api.wait_condition(ns, "alice-byo-bobs", status="False", reason="ExistingKeyNotOwned")
    assert "managed by the operator" in cond["message"]
    assert api.get_secret(ns, "alice-byo-bobs") is None

    # Nor a key Secret that bob (or the platform for him) labelled as his.
    api.create_secret(ns, "bob-laptop-key", {"ssh-privatekey": api.secret_data(ns, "bob-key-holder")[c.KEY_SSH_PRIVATE]},
                      labels={c.LABEL_USER: "bob"})
    stolen = ws_manifest("alice-byo-bobs-own", "alice", ssh={"existingSecretRef": {"name": "bob-laptop-key"}})
    assert kubectl.apply(stolen, user="alice").returncode == 0
    cond = api.wait_condition(ns, "alice-byo-bobs-own", status="False", reason="ExistingKeyNotOwned")
    assert "not labelled workspace-secrets.io/user=alice" in cond["message"]
    assert api.get_secret(ns, "alice-byo-bobs-own") is None
    # bob may use it.
    assert kubectl.apply(ws_manifest("bob-byo", "bob", ssh={"existingSecretRef": {"name": "bob-laptop-key"}}), user="bob").returncode == 0
    api.wait_condition(ns, "bob-byo")


# --- the policies do not get in the way of Kubernetes itself -------------------------------------------------
def gc_knows_workspace_secrets(api: Api, ns: str) -> None:
    """The garbage collector discovers a new resource type up to ~30 s after its CRD appears; until then
    it neither orphans nor deletes WorkspaceSecrets. Wait until it collects a throwaway one."""
    owner = api.core.create_namespaced_config_map(ns, {"metadata": {"name": "gc-probe-owner"}})
    api.create_ws(ns, "gc-probe", {"user": "probe", "workspaceRef": {"kind": "Pod", "name": "gc-probe"}})
    api.patch_ws(ns, "gc-probe", {"metadata": {"ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "gc-probe-owner", "uid": owner.metadata.uid}]}})
    api.core.delete_namespaced_config_map("gc-probe-owner", ns)
    wait_for(lambda: api.get_ws(ns, "gc-probe") is None, timeout=90, what="the garbage collector to know WorkspaceSecrets")


def test_the_garbage_collector_may_finish_a_foreground_deletion(kubectl, api, module_namespace, wso_operator):
    """`kubectl delete --cascade=foreground` puts a finalizer on the WorkspaceSecret that Kubernetes' garbage
    collector removes -- an UPDATE by system:serviceaccount:kube-system:generic-garbage-collector, which
    the shipped parameters allow -- once its Secret is gone. Were it refused, the deletion would hang."""
    ns = module_namespace
    gc_knows_workspace_secrets(api, ns)
    assert kubectl.apply(ws_manifest("foreground", "bob"), user="bob").returncode == 0
    api.wait_condition(ns, "foreground")
    kubectl("delete", "wss", "foreground", "--cascade=foreground", "--wait=false", user="bob", check=True)
    wait_for(lambda: api.get_ws(ns, "foreground") is None, timeout=90, what="the foreground deletion to finish")
    assert api.get_secret(ns, "foreground") is None


def test_without_parameters_the_policies_fail_closed(kubectl, cluster):
    saved = json.loads(cluster.kubectl("get", "configmap", "-n", PARAMS_NAMESPACE, PARAMS_NAME, "-o", "json").stdout)
    cluster.kubectl("delete", "configmap", "-n", PARAMS_NAMESPACE, PARAMS_NAME)
    try:
        wait_for(lambda: refused(kubectl.dry_run(ws_manifest("probe", "alice"), user="alice"), ISOLATION_POLICY),
                 timeout=30, what="a refusal without parameters")
        result = kubectl.dry_run(ws_manifest("probe", "alice"), user="alice")
        assert "params" in result.stderr.lower(), result.stderr
    finally:
        restored = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": PARAMS_NAME, "namespace": PARAMS_NAMESPACE, "labels": saved["metadata"].get("labels")}, "data": saved["data"]}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(restored))
    wait_for(lambda: kubectl.dry_run(ws_manifest("probe", "alice"), user="alice").returncode == 0,
             timeout=30, what="parameters restored")
