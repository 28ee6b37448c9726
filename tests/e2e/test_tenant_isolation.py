"""Tenant isolation on the real API server: the admission policies in deploy/policies/, exercised by
impersonated users (`kubectl --as alice`), and the operator's refusal to copy another user's key.

The impersonated users get RBAC to create and delete WorkspaceSecrets (the shipped workspace-secrets-user
role) and, for the Secret tests, full rights on Secrets, so every refusal here comes from a policy, not from
RBAC (each test first shows RBAC would allow it). Each rule is shown three ways: the tenant is refused with
the policy's message, a platform identity is allowed, and the victim's objects are untouched.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Api, wait_for

from workspace_secrets.api import constants as c
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.workspace_secret.policy import REASON_EXISTING_KEY_NOT_FOUND
from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType

POLICY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "policies"
PARAMS_NAMESPACE, PARAMS_NAME = "workspace-secrets-system", "workspace-secrets-tenancy"
ISOLATION_POLICY = "ValidatingAdmissionPolicy 'workspace-secrets-user-isolation'"
LABEL_POLICY = "ValidatingAdmissionPolicy 'workspace-secrets-user-secret-labels'"
RESERVED_POLICY = "ValidatingAdmissionPolicy 'workspace-secrets-reserved-secrets'"
PLATFORM_GROUP = "wso-e2e-platform"
#: Users with full rights on Secrets in the test namespace (for the Secret tests).
SECRET_EDITORS = ("dave", "erin", "bob")
#: A name of the operator's per-user key Secrets (ssh-<user>-<type>-<hash>).
RESERVED_PROBE = user_key_secret_name("probe", KeySpec())


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


def secret_manifest(name: str, user: str | None, value: str = "a value that is not a key", **metadata) -> dict:
    labels = {c.LABEL_USER: user} if user else {}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels, **metadata},
            "stringData": {"v": value}}


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
          *(f"--user={u}" for u in dict.fromkeys(("alice", "bob", "carol", "oidc:carol", *SECRET_EDITORS))),
          f"--serviceaccount={module_namespace}:provisioner", f"--serviceaccount={module_namespace}:default",
          f"--group={PLATFORM_GROUP}", check=True)
        k("create", "role", "secret-editor", "--verb=get,list,create,update,patch,delete", "--resource=secrets", check=True)
        k("create", "rolebinding", "secret-editors", "--role=secret-editor", *(f"--user={u}" for u in SECRET_EDITORS),
          f"--group={PLATFORM_GROUP}", check=True)
        # Policies and parameter changes reach the API server's admission through informers: wait for both.
        wait_for(lambda: refused(k.dry_run(ws_manifest("probe", "bob"), user="alice"), ISOLATION_POLICY),
                 timeout=30, what="the user-isolation policy to be enforced")
        wait_for(lambda: k.dry_run(ws_manifest("probe", "bob"), user="x", groups=(PLATFORM_GROUP,)).returncode == 0,
                 timeout=30, what="the test's platform group to be allowed")
        wait_for(lambda: refused(k.dry_run(secret_manifest("probe", "bob"), user="dave"), LABEL_POLICY),
                 timeout=30, what="the secret-label policy to be enforced")
        wait_for(lambda: refused(k.dry_run(secret_manifest(RESERVED_PROBE, None), user="dave"), RESERVED_POLICY),
                 timeout=30, what="the reserved-secrets policy to be enforced")
        yield k
    finally:
        # Uninstall in the documented order: policies and bindings first, and only once the API server no
        # longer enforces them the parameters -- a binding without parameters refuses everything it matches.
        for name in ("user-isolation.yaml", "user-secret-labels.yaml", "reserved-secrets.yaml", "operator-guard.yaml"):
            cluster.kubectl("delete", "--ignore-not-found", "-f", str(POLICY_DIR / name), check=False)
        wait_for(lambda: not refused(k.dry_run(ws_manifest("probe", "bob"), user="alice"), ISOLATION_POLICY)
                 and not refused(k.dry_run(secret_manifest("probe", "bob"), user="dave"), LABEL_POLICY)
                 and not refused(k.dry_run(secret_manifest(RESERVED_PROBE, None), user="dave"), RESERVED_POLICY),
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


def test_no_user_can_write_the_status_digest_that_lets_the_operator_skip_a_workspace(kubectl, api, module_namespace, wso_operator):
    """status.inputsDigest tells the operator after a restart or on a resync that nothing changed (issue #18): whoever
    could write it could keep a Secret the operator would otherwise repair. Users get only `get` on status, and a
    status sent with a create is dropped (the status subresource)."""
    manifest = ws_manifest("bob-digest", "bob")
    manifest["status"] = {"inputsDigest": "v1-forged-at-create"}
    assert kubectl.apply(manifest, user="bob").returncode == 0
    api.create_pod(module_namespace, "bob-digest-pod", user="bob")
    wait_for(lambda: ((api.get_ws(module_namespace, "bob-digest") or {}).get("status") or {}).get("inputsDigest"),
             timeout=60, what="the operator's own digest")
    recorded = api.get_ws(module_namespace, "bob-digest")["status"]["inputsDigest"]
    assert recorded != "v1-forged-at-create"
    for who in ("bob", "alice"):  # the owner, and another user
        result = kubectl("patch", "wss", "bob-digest", "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": {"inputsDigest": "v1-forged"}}), user=who)
        assert result.returncode != 0 and "forbidden" in result.stderr.lower(), result.stderr
    assert api.get_ws(module_namespace, "bob-digest")["status"]["inputsDigest"] == recorded


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


def test_a_user_cannot_delete_another_users_workspace_secret(kubectl, api, module_namespace):
    """Deleting bob's WorkspaceSecret would revoke his credentials and free the name for alice to re-create
    it as hers, bound to his workspace."""
    assert kubectl.apply(ws_manifest("bob-keeps", "bob"), user="bob").returncode == 0
    before = api.get_ws(module_namespace, "bob-keeps")
    assert kubectl("auth", "can-i", "delete", "workspacesecrets.workspace-secrets.io/bob-keeps", user="alice").stdout.strip() == "yes"
    result = kubectl("delete", "wss", "bob-keeps", "--wait=false", user="alice")
    assert refused(result, ISOLATION_POLICY, "'alice' (workspace user 'alice') may not delete WorkspaceSecret 'bob-keeps' of user 'bob'",
                   "only that user or a platform identity"), result.stderr
    after = api.get_ws(module_namespace, "bob-keeps")
    assert after is not None and after["metadata"]["uid"] == before["metadata"]["uid"] and not after["metadata"].get("deletionTimestamp")
    # The owner and a platform identity may.
    assert kubectl("delete", "wss", "bob-keeps", "--wait=false", user="bob").returncode == 0
    assert kubectl.apply(ws_manifest("bob-by-platform", "bob"), user="bob").returncode == 0
    provisioner = f"system:serviceaccount:{module_namespace}:provisioner"
    assert kubectl("delete", "wss", "bob-by-platform", "--wait=false", user=provisioner).returncode == 0


def test_only_the_platform_names_the_secret(kubectl, api, module_namespace):
    """spec.secretName set by a tenant could squat another user's Secret name or the operator's reserved
    per-user key name (instance 2/9): a tenant's object writes the Secret named after it."""
    bobs_key = user_key_secret_name("bob", KeySpec())
    assert kubectl.apply(ws_manifest("bob-named", "bob"), user="bob").returncode == 0
    for target in ("bob-named", "anything-else", bobs_key):
        result = kubectl.apply(ws_manifest("alice-squats", "alice", secretName=target), user="alice")
        if target == bobs_key and ISOLATION_POLICY not in result.stderr:
            assert result.returncode != 0 and "reserved" in result.stderr, result.stderr  # the CRD's own rule came first
        else:
            assert refused(result, ISOLATION_POLICY, f"spec.secretName: 'alice' (workspace user 'alice') may not set spec.secretName ('{target}')",
                           "only a platform identity"), result.stderr
        assert api.get_ws(module_namespace, "alice-squats") is None
    # The object's own name is no choice at all; a platform identity may pick any other.
    assert kubectl.dry_run(ws_manifest("alice-plain", "alice", secretName="alice-plain"), user="alice").returncode == 0
    result = kubectl.dry_run(ws_manifest("for-bob", "bob", secretName="bob-chosen"), user="ops", groups=(PLATFORM_GROUP,))
    assert result.returncode == 0, result.stderr
    assert api.get_ws(module_namespace, "bob-named")["spec"].get("secretName") is None


@pytest.mark.parametrize("annotation", [c.ANNOTATION_ABANDON_CLEANUP, c.ANNOTATION_SKIP_REVOCATION])
def test_only_the_platform_keeps_credentials_alive(kubectl, api, module_namespace, annotation):
    """abandon-cleanup / skip-revocation would let an owner delete the object and keep what was issued to it."""
    name = f"keep-{annotation.rsplit('/', 1)[1]}"
    assert kubectl.apply(ws_manifest(name, "bob"), user="bob").returncode == 0
    result = kubectl("annotate", "wss", name, f"{annotation}=true", user="bob")
    assert refused(result, ISOLATION_POLICY, f"metadata.annotations: 'bob' (workspace user 'bob') may not set {annotation}",
                   "only by a platform identity"), result.stderr
    manifest = ws_manifest(f"{name}-new", "bob")
    manifest["metadata"]["annotations"] = {annotation: "true"}
    result = kubectl.apply(manifest, user="bob")
    assert refused(result, ISOLATION_POLICY, f"may not set {annotation}"), result.stderr
    assert annotation not in (api.get_ws(module_namespace, name)["metadata"].get("annotations") or {})
    # A platform identity may set it; the owner may then still edit the object (unchanged annotation) or drop it.
    assert kubectl("annotate", "wss", name, f"{annotation}=true", user="ops", groups=(PLATFORM_GROUP,)).returncode == 0
    assert kubectl("annotate", "wss", name, "note=mine", user="bob").returncode == 0
    result = kubectl("annotate", "wss", name, f"{annotation}=false", "--overwrite", user="bob")
    assert refused(result, ISOLATION_POLICY, f"may not set {annotation}"), result.stderr
    assert kubectl("annotate", "wss", name, f"{annotation}-", user="bob").returncode == 0


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
def test_only_the_user_labels_a_secret_as_theirs(kubectl, api, module_namespace):
    assert kubectl("auth", "can-i", "patch", "secrets", user="dave").stdout.strip() == "yes"
    assert kubectl.apply(secret_manifest("dave-own", "dave"), user="dave").returncode == 0
    result = kubectl.apply(secret_manifest("dave-for-erin", "erin"), user="dave")
    assert refused(result, LABEL_POLICY, "metadata.labels[workspace-secrets.io/user]:",
                   "'dave' (workspace user 'dave') may not create a Secret labelled workspace-secrets.io/user=erin",
                   "only user 'erin' (when creating the Secret) or a platform identity"), result.stderr
    assert api.get_secret(module_namespace, "dave-for-erin") is None

    # Taking over someone else's Secret: relabelling, editing, unlabelling, deleting -- refused.
    victim = api.secret_digests(module_namespace, "dave-own")
    result = kubectl("label", "secret", "dave-own", f"{c.LABEL_USER}=erin", "--overwrite", user="erin")
    assert refused(result, LABEL_POLICY, "may not edit Secret 'dave-own', which is labelled for user 'dave'"), result.stderr
    result = kubectl("patch", "secret", "dave-own", "-p", json.dumps({"stringData": {"v": "erin's now"}}), user="erin")
    assert refused(result, LABEL_POLICY, "labelled for user 'dave'"), result.stderr
    result = kubectl("label", "secret", "dave-own", f"{c.LABEL_USER}-", user="erin")
    assert refused(result, LABEL_POLICY, "labelled for user 'dave'"), result.stderr
    result = kubectl("delete", "secret", "dave-own", user="erin")
    assert refused(result, LABEL_POLICY, "may not delete Secret 'dave-own', which is labelled for user 'dave'"), result.stderr
    assert api.secret_digests(module_namespace, "dave-own") == victim
    # The owner may not hand it to another user either.
    result = kubectl("label", "secret", "dave-own", f"{c.LABEL_USER}=erin", "--overwrite", user="dave")
    assert refused(result, LABEL_POLICY, "may not relabel Secret 'dave-own' from user 'dave' to 'erin'"), result.stderr

    # The user edits their own; a platform identity labels for anyone; unlabelled Secrets are not our concern.
    assert kubectl("label", "secret", "dave-own", "purpose=git", user="dave").returncode == 0
    assert kubectl.apply(secret_manifest("plain", None), user="dave").returncode == 0
    assert kubectl("label", "secret", "plain", f"{c.LABEL_USER}=erin", user="ops", groups=(PLATFORM_GROUP,)).returncode == 0
    assert kubectl.apply(secret_manifest("erin-unlabelled", None), user="erin").returncode == 0


def test_the_label_is_set_only_when_the_secret_is_created(kubectl, api, module_namespace):
    """Labelling an existing Secret would claim what someone else put there (a platform Secret, a
    ServiceAccount token Kubernetes filled in) -- even for oneself. Keeping or removing it is fine."""
    assert kubectl.apply(secret_manifest("platform-thing", None, "the platform's value"), user="ops", groups=(PLATFORM_GROUP,)).returncode == 0
    before = api.secret_digests(module_namespace, "platform-thing")
    for user in ("dave", "erin"):
        result = kubectl("label", "secret", "platform-thing", f"{c.LABEL_USER}={user}", user=user)
        assert refused(result, LABEL_POLICY, f"'{user}' (workspace user '{user}') may not add the label workspace-secrets.io/user={user} "
                       "to existing Secret 'platform-thing'", "create a new Secret"), result.stderr
    secret = api.get_secret(module_namespace, "platform-thing")
    assert c.LABEL_USER not in (secret.metadata.labels or {}) and api.secret_digests(module_namespace, "platform-thing") == before

    # Created labelled: the owner keeps it, may remove the label, but not add it back.
    assert kubectl.apply(secret_manifest("dave-temp", "dave"), user="dave").returncode == 0
    assert kubectl("label", "secret", "dave-temp", f"{c.LABEL_USER}-", user="dave").returncode == 0
    result = kubectl("label", "secret", "dave-temp", f"{c.LABEL_USER}=dave", user="dave")
    assert refused(result, LABEL_POLICY, "may not add the label workspace-secrets.io/user=dave to existing Secret 'dave-temp'"), result.stderr
    assert kubectl("delete", "secret", "dave-temp", user="dave").returncode == 0


@pytest.mark.parametrize("secret_type,allowed", [
    ("kubernetes.io/service-account-token", False), ("bootstrap.kubernetes.io/token", False), ("example.com/custom", False),
    ("Opaque", True), ("kubernetes.io/basic-auth", True), ("kubernetes.io/ssh-auth", True),
    ("kubernetes.io/dockerconfigjson", True), ("kubernetes.io/tls", True),
])
def test_a_user_secret_has_a_user_data_type(kubectl, api, module_namespace, secret_type, allowed):
    """A labelled kubernetes.io/service-account-token Secret would be filled by Kubernetes with a token of
    any ServiceAccount and copied into the user's workspace."""
    data = {"kubernetes.io/basic-auth": {"username": "u", "password": "not-a-password"},
            "kubernetes.io/ssh-auth": {"ssh-privatekey": "not a key"},
            "kubernetes.io/dockerconfigjson": {".dockerconfigjson": "{}"},
            "kubernetes.io/tls": {"tls.crt": "", "tls.key": ""},
            "bootstrap.kubernetes.io/token": {"token-id": "abcdef", "token-secret": "0123456789abcdef"}}.get(secret_type, {"v": "x"})
    name = f"typed-{secret_type.replace('/', '-').replace('.', '-').lower()}"[:63]
    manifest = {"apiVersion": "v1", "kind": "Secret", "type": secret_type, "stringData": data, "metadata": {
        "name": name, "labels": {c.LABEL_USER: "dave"},
        "annotations": {"kubernetes.io/service-account.name": "default"} if "service-account" in secret_type else {}}}
    result = kubectl.dry_run(manifest, user="dave")
    if allowed:
        assert result.returncode == 0, result.stderr
        return
    assert refused(result, LABEL_POLICY, f"type: 'dave' (workspace user 'dave') may not label a Secret of type '{secret_type}'",
                   "Opaque, kubernetes.io/basic-auth"), result.stderr
    assert kubectl.dry_run({**manifest, "metadata": {**manifest["metadata"], "labels": {}}}, user="dave").returncode == 0, \
        "without the label the same Secret is allowed: the refusal is the label's"
    assert kubectl.dry_run(manifest, user="ops", groups=(PLATFORM_GROUP,)).returncode == 0


# --- the operator's own Secrets ---------------------------------------------------------------------------
def test_tenants_cannot_create_secrets_the_operator_would_take_for_its_own(kubectl, api, module_namespace):
    """A Secret at bob's per-user key name (before the operator makes it), with the operator's managed-by
    label, or owned by a WorkspaceSecret would be taken for the operator's own (instances 2 and 9)."""
    assert kubectl("auth", "can-i", "create", "secrets", user="dave").stdout.strip() == "yes"
    bobs_key = user_key_secret_name("bob-new", KeySpec())
    rsa_key = user_key_secret_name("bob-new", KeySpec(KeyType.RSA, 4096))
    for name in (bobs_key, rsa_key):
        result = kubectl.apply(secret_manifest(name, None), user="dave")
        assert refused(result, RESERVED_POLICY, f"metadata.name: 'dave' (workspace user 'dave') may not create Secret '{name}'",
                       "reserved for the operator's per-user SSH keys", "only the operator or a platform identity"), result.stderr
        assert api.get_secret(module_namespace, name) is None
    managed = secret_manifest("looks-managed", None)
    managed["metadata"]["labels"] = {c.LABEL_MANAGED_BY: c.OPERATOR_NAME}
    result = kubectl.apply(managed, user="dave")
    assert refused(result, RESERVED_POLICY, "may not create Secret 'looks-managed', labelled app.kubernetes.io/managed-by=workspace-secrets-operator"), result.stderr
    assert kubectl.apply(ws_manifest("owner-ws", "dave"), user="dave").returncode == 0
    owner = api.get_ws(module_namespace, "owner-ws")
    owned = secret_manifest("owned-by-ws", None, ownerReferences=[{
        "apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "name": "owner-ws", "uid": owner["metadata"]["uid"]}])
    result = kubectl.apply(owned, user="dave")
    assert refused(result, RESERVED_POLICY, "may not create Secret 'owned-by-ws', owned by a workspace-secrets.io object"), result.stderr
    # Nor added later to a Secret of one's own.
    assert kubectl.apply(secret_manifest("dave-plain", None), user="dave").returncode == 0
    result = kubectl("label", "secret", "dave-plain", f"{c.LABEL_MANAGED_BY}={c.OPERATOR_NAME}", user="dave")
    assert refused(result, RESERVED_POLICY, "may not edit Secret 'dave-plain'"), result.stderr
    # Similar names are not reserved; a platform identity may write reserved ones.
    assert kubectl.dry_run(secret_manifest("ssh-dave-ed25519-notahash", None), user="dave").returncode == 0
    assert kubectl.dry_run(secret_manifest(bobs_key, None), user="ops", groups=(PLATFORM_GROUP,)).returncode == 0


def test_tenants_cannot_touch_the_operators_secrets(kubectl, api, module_namespace, wso_operator):
    ns = module_namespace
    assert kubectl.apply(ws_manifest("bob-reserved", "bob"), user="bob").returncode == 0
    api.wait_condition(ns, "bob-reserved")
    bobs_key = user_key_secret_name("bob", KeySpec())
    before = {name: api.secret_digests(ns, name) for name in (bobs_key, "bob-reserved")}
    assert all(before.values())
    assert kubectl("auth", "can-i", "delete", f"secret/{bobs_key}", user="dave").stdout.strip() == "yes"
    def refused_as_reserved(result, verb: str, name: str, why: str = "") -> bool:
        # A per-user key Secret is also labelled for its user, so the label policy may answer first: the API
        # server reports one refusing policy.
        if LABEL_POLICY in result.stderr:
            return refused(result, LABEL_POLICY, f"may not {verb} Secret '{name}', which is labelled for user")
        return refused(result, RESERVED_POLICY, f"may not {verb} Secret '{name}'", why)

    for name, why in ((bobs_key, "reserved for the operator's per-user SSH keys"),
                      ("bob-reserved", "workspace-secrets-operator")):
        result = kubectl("patch", "secret", name, "-p", json.dumps({"stringData": {"ssh-publickey": "ssh-ed25519 AAAA dave"}}), user="dave")
        assert refused_as_reserved(result, "edit", name, why), result.stderr
        result = kubectl("label", "secret", name, f"{c.LABEL_MANAGED_BY}-", user="dave")
        assert refused_as_reserved(result, "edit", name), result.stderr
        result = kubectl("delete", "secret", name, user="dave")
        assert refused_as_reserved(result, "delete", name), result.stderr
    # bob himself is a tenant too: the operator's Secrets are the operator's.
    result = kubectl("delete", "secret", "bob-reserved", user="bob")
    assert refused_as_reserved(result, "delete", "bob-reserved"), result.stderr
    assert {name: api.secret_digests(ns, name) for name in before} == before


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
    cond = api.wait_condition(ns, "alice-byo-bobs", status="False", reason=REASON_EXISTING_KEY_NOT_FOUND)
    assert f"{bobs_key}" in cond["message"] and "is not a key Secret of user 'alice'" in cond["message"]
    assert api.get_secret(ns, "alice-byo-bobs") is None

    # Nor a key Secret that bob (or the platform for him) labelled as his.
    api.create_secret(ns, "bob-laptop-key", {"ssh-privatekey": api.secret_data(ns, "bob-key-holder")[c.KEY_SSH_PRIVATE]},
                      labels={c.LABEL_USER: "bob"})
    stolen = ws_manifest("alice-byo-bobs-own", "alice", ssh={"existingSecretRef": {"name": "bob-laptop-key"}})
    assert kubectl.apply(stolen, user="alice").returncode == 0
    cond = api.wait_condition(ns, "alice-byo-bobs-own", status="False", reason=REASON_EXISTING_KEY_NOT_FOUND)
    assert "is not a key Secret of user 'alice'" in cond["message"]
    assert cond["message"] == api.wait_condition(ns, "alice-byo-bobs", status="False")["message"].replace(bobs_key, "bob-laptop-key"), \
        "one answer for every Secret alice may not use: it reveals nothing about the Secret"
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
