"""WorkspaceSecret on the real control plane, with the real operator process."""

from __future__ import annotations

import base64
import subprocess

import pytest
from helpers import Api, digest, wait_for

from workspace_secrets.api import constants as c
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.user_keys.sshkeys import KeySpec


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def deployment_ref(name: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}


def fingerprint_of(private_key: bytes, tmp_path) -> str:
    path = tmp_path / "key"
    path.write_bytes(private_key)
    path.chmod(0o600)
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    path.unlink()
    return out.split()[1]


def test_create_gives_a_ready_secret_with_a_working_key(api, namespace, wso_operator, tmp_path):
    api.create_deployment(namespace, "ws-alice", user="alice")
    api.create_ws(namespace, "alice-ws", {"user": "alice", "workspaceRef": deployment_ref("ws-alice"),
                                          "display": [{"key": "editor", "value": "vscode"},
                                                      {"key": "public key", "valueFrom": {"secretKeyRef": {"key": c.KEY_SSH_PUBLIC}}}]})
    api.wait_condition(namespace, "alice-ws")
    ws = api.get_ws(namespace, "alice-ws")
    status = ws["status"]
    data = api.secret_data(namespace, "alice-ws")
    assert set(data) == {c.KEY_SSH_PRIVATE, c.KEY_SSH_PUBLIC, c.KEY_KNOWN_HOSTS, c.KEY_GIT_SSH_COMMAND}
    assert fingerprint_of(data[c.KEY_SSH_PRIVATE], tmp_path) == status["sshKeyFingerprint"]
    assert data[c.KEY_SSH_PUBLIC].decode().strip() == status["sshPublicKey"]
    assert status["secretName"] == "alice-ws" and status["sshKeySource"] == "Generated"
    assert status["display"] == [{"key": "editor", "value": "vscode", "sensitive": False},
                                 {"key": "public key", "value": status["sshPublicKey"], "sensitive": False}]
    assert status["observedGeneration"] == ws["metadata"]["generation"]
    secret = api.get_secret(namespace, "alice-ws")
    assert secret.type == "kubernetes.io/ssh-auth"
    assert secret.metadata.labels[c.LABEL_MANAGED_BY] == c.OPERATOR_NAME
    assert [o.uid for o in secret.metadata.owner_references] == [ws["metadata"]["uid"]]
    # Bound to the Deployment: it owns the WorkspaceSecret now.
    api.wait_condition(namespace, "alice-ws", type_="WorkspaceBound")
    ws = api.get_ws(namespace, "alice-ws")
    assert [o["kind"] for o in ws["metadata"]["ownerReferences"]] == ["Deployment"]
    events = api.events_for(namespace, "alice-ws")
    # Created and bound in one reconcile (the Deployment was there): one Event says both.
    created = [e for e in events if e.reason == "SecretCreated"]
    assert len(created) == 1 and "WorkspaceBound" not in {e.reason for e in events}, [e.reason for e in events]
    assert "bound to Deployment 'ws-alice'" in created[0].message
    # The printer columns show it.
    out = subprocess.run([*wso_operator.kubectl, "get", "wss", "-n", namespace, "-o", "wide"], capture_output=True, text=True, check=True).stdout
    assert "alice-ws" in out and status["sshKeyFingerprint"] in out and "True" in out


def test_workspaces_of_one_user_share_a_key_and_other_users_do_not(api, namespace, wso_operator):
    for name, user in (("a1", "alice"), ("a2", "alice"), ("b1", "bob")):
        api.create_ws(namespace, name, {"user": user, "workspaceRef": deployment_ref(f"ws-{name}")})
    for name in ("a1", "a2", "b1"):
        api.wait_condition(namespace, name)
    keys = {name: api.secret_digests(namespace, name)[c.KEY_SSH_PRIVATE] for name in ("a1", "a2", "b1")}
    assert keys["a1"] == keys["a2"] != keys["b1"]
    user_key = api.get_secret(namespace, user_key_secret_name("alice", KeySpec()))
    assert user_key is not None and not user_key.metadata.owner_references
    # Not workspace-bound yet: Ready anyway, waiting for the workspace.
    bound = api.condition(namespace, "a1", "WorkspaceBound")
    assert bound["status"] == "False" and bound["reason"] == "WorkspaceNotFound"


def test_workspace_created_later_is_bound_and_its_deletion_collects_everything(api, namespace, wso_operator):
    api.create_ws(namespace, "late", {"user": "carol", "workspaceRef": {"kind": "Pod", "name": "ws-late"}})
    api.wait_condition(namespace, "late")
    api.create_pod(namespace, "ws-late", user="carol")
    api.wait_condition(namespace, "late", type_="WorkspaceBound", timeout=30)
    api.core.delete_namespaced_pod("ws-late", namespace, grace_period_seconds=0)
    # Kubernetes' garbage collector removes the WorkspaceSecret, then its Secret. (Its discovery of a
    # freshly installed CRD can take up to ~30 s, hence the generous timeout.)
    wait_for(lambda: api.get_ws(namespace, "late") is None, timeout=90, what="WorkspaceSecret collected")
    wait_for(lambda: api.get_secret(namespace, "late") is None, timeout=30, what="Secret collected")
    assert api.get_secret(namespace, user_key_secret_name("carol", KeySpec())) is not None


def test_deployment_deletion_while_the_operator_is_down_is_cleaned_up(api, namespace, wso_operator):
    api.create_deployment(namespace, "ws-dan", user="dan")
    api.create_ws(namespace, "dan", {"user": "dan", "workspaceRef": deployment_ref("ws-dan")})
    api.wait_condition(namespace, "dan", type_="WorkspaceBound")
    wso_operator.process.stop()
    try:
        api.apps.delete_namespaced_deployment("ws-dan", namespace)
        wait_for(lambda: api.get_ws(namespace, "dan") is None, timeout=90, what="WorkspaceSecret collected")
        wait_for(lambda: api.get_secret(namespace, "dan") is None, timeout=30, what="Secret collected")
    finally:
        wso_operator.process.start()
    assert api.get_secret(namespace, user_key_secret_name("dan", KeySpec())) is not None


def test_deleting_the_workspacesecret_removes_its_secret(api, namespace, wso_operator):
    api.create_ws(namespace, "gone", {"user": "erin", "workspaceRef": deployment_ref("nothing")})
    api.wait_condition(namespace, "gone")
    api.delete_ws(namespace, "gone")
    wait_for(lambda: api.get_secret(namespace, "gone") is None, timeout=90, what="Secret collected")


def test_drift_is_repaired(api, namespace, wso_operator):
    api.create_ws(namespace, "drift", {"user": "frank", "workspaceRef": deployment_ref("nothing")})
    api.wait_condition(namespace, "drift")
    original = api.secret_digests(namespace, "drift")
    api.core.patch_namespaced_secret("drift", namespace, {"data": {c.KEY_SSH_PRIVATE: base64.b64encode(b"tampered").decode()}})
    wait_for(lambda: api.secret_digests(namespace, "drift") == original, timeout=15, what="edited Secret restored")
    api.core.delete_namespaced_secret("drift", namespace)
    wait_for(lambda: api.secret_digests(namespace, "drift") == original, timeout=15, what="deleted Secret restored")


def test_a_foreign_secret_is_never_overwritten(api, namespace, wso_operator):
    api.create_secret(namespace, "taken", {"token": b"platform-owned"})
    api.create_ws(namespace, "clash", {"user": "gina", "workspaceRef": deployment_ref("nothing"), "secretName": "taken"})
    cond = api.wait_condition(namespace, "clash", status="False", reason="SecretConflict")
    assert "'taken'" in cond["message"] and "left untouched" in cond["message"]
    assert api.secret_digests(namespace, "taken") == {"token": digest(b"platform-owned")}
    api.wait_event(namespace, "clash", "SecretConflict")


def test_bring_your_own_key(api, namespace, wso_operator, tmp_path):
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "s3cret phrase", "-f", str(path)], check=True)
    # Labelled as hank's: the operator takes a brought key only from the user's own Secret.
    api.create_secret(namespace, "my-key", {"ssh-privatekey": path.read_bytes(), "passphrase": b"s3cret phrase\n"},
                      labels={c.LABEL_USER: "hank"})
    api.create_ws(namespace, "byo", {"user": "hank", "workspaceRef": deployment_ref("nothing"),
                                     "ssh": {"existingSecretRef": {"name": "my-key", "passphraseKey": "passphrase"}}})
    api.wait_condition(namespace, "byo")
    status = api.get_ws(namespace, "byo")["status"]
    expected = subprocess.run(["ssh-keygen", "-l", "-f", str(path) + ".pub"], capture_output=True, text=True, check=True).stdout.split()[1]
    assert status["sshKeyFingerprint"] == expected and status["sshKeySource"] == "Existing"
    materialized = api.secret_data(namespace, "byo")[c.KEY_SSH_PRIVATE]
    assert fingerprint_of(materialized, tmp_path) == expected
    assert not any(b"s3cret phrase" in v for v in api.secret_data(namespace, "byo").values())

    # A broken key: a clear condition, and the working Secret is left as it was.
    api.core.patch_namespaced_secret("my-key", namespace, {"data": {"ssh-privatekey": base64.b64encode(b"ssh-ed25519 AAAA pasted-public-key").decode()}})
    api.patch_ws(namespace, "byo", {"metadata": {"annotations": {"touch": "1"}}})
    cond = api.wait_condition(namespace, "byo", status="False", reason="InvalidExistingKey")
    assert "not a private key" in cond["message"] and "existingSecretRef" in cond["message"]
    assert api.secret_digests(namespace, "byo")[c.KEY_SSH_PRIVATE] == digest(materialized)

    api.create_ws(namespace, "byo-missing", {"user": "hank", "workspaceRef": deployment_ref("nothing"),
                                             "ssh": {"existingSecretRef": {"name": "no-such-secret"}}})
    cond = api.wait_condition(namespace, "byo-missing", status="False", reason="ExistingKeyNotFound")
    assert "'no-such-secret'" in cond["message"]
    assert api.get_secret(namespace, "byo-missing") is None
    # Another user's key Secret gets the very same answer as a missing one: nothing tells them apart.
    api.create_secret(namespace, "kims-key", {"ssh-privatekey": path.read_bytes()}, labels={c.LABEL_USER: "kim"})
    api.create_ws(namespace, "byo-foreign", {"user": "hank", "workspaceRef": deployment_ref("nothing"),
                                             "ssh": {"existingSecretRef": {"name": "kims-key"}}})
    foreign = api.wait_condition(namespace, "byo-foreign", status="False", reason="ExistingKeyNotFound")
    assert foreign["message"] == cond["message"].replace("no-such-secret", "kims-key")


def test_a_workspace_of_another_user_is_not_bound(api, namespace, wso_operator):
    """A WorkspaceSecret binds only to a workspace labelled with its spec.user (issue 14, instance 5)."""
    api.create_deployment(namespace, "ws-kate", user="kate")
    api.create_deployment(namespace, "ws-unlabelled")
    api.create_ws(namespace, "not-kates", {"user": "lou", "workspaceRef": deployment_ref("ws-kate")})
    api.create_ws(namespace, "unlabelled", {"user": "lou", "workspaceRef": deployment_ref("ws-unlabelled")})
    for name, workspace in (("not-kates", "ws-kate"), ("unlabelled", "ws-unlabelled")):
        cond = api.wait_condition(namespace, name, status="False", type_="WorkspaceBound", reason="WorkspaceUserMismatch")
        assert f"Deployment {workspace!r} is not labelled {c.LABEL_USER}=lou" in cond["message"]
        assert not api.get_ws(namespace, name)["metadata"].get("ownerReferences")
        api.wait_condition(namespace, name)  # the Secret is still ready
    # Labelling the workspace for its user binds it at the next re-check.
    api.apps.patch_namespaced_deployment("ws-unlabelled", namespace, {"metadata": {"labels": {c.LABEL_USER: "lou"}}})
    api.wait_condition(namespace, "unlabelled", type_="WorkspaceBound", timeout=30)
    assert [o["name"] for o in api.get_ws(namespace, "unlabelled")["metadata"]["ownerReferences"]] == ["ws-unlabelled"]
    assert not api.get_ws(namespace, "not-kates")["metadata"].get("ownerReferences")


def test_display_never_copies_a_secret_value_into_status(api, namespace, wso_operator):
    api.create_ws(namespace, "disp", {"user": "mo", "workspaceRef": deployment_ref("nothing"), "display": [
        {"key": "git", "valueFrom": {"secretKeyRef": {"key": c.KEY_GIT_SSH_COMMAND}}},
        {"key": "private", "valueFrom": {"secretKeyRef": {"key": c.KEY_SSH_PRIVATE}}, "sensitive": True},
        {"key": "user secret", "valueFrom": {"secretKeyRef": {"key": "user.npm.token"}}}]})
    api.wait_condition(namespace, "disp")
    shown = {i["key"]: i for i in api.get_ws(namespace, "disp")["status"]["display"]}
    assert shown["git"]["value"].startswith("ssh -i ") and not shown["git"]["sensitive"]
    assert shown["private"] == {"key": "private", "value": "********", "sensitive": True}
    assert shown["user secret"] == {"key": "user secret", "value": "********", "sensitive": True}


def test_reserved_and_unsafe_names_are_refused_at_admission(api, namespace, wso_operator):
    from kubernetes.client.exceptions import ApiException

    reserved = user_key_secret_name("victim", KeySpec())
    cases = [
        ("squat", {"secretName": reserved}, "reserved"),
        (reserved, {}, "reserved"),
        ("etc", {"mountPath": "/etc/profile.d"}, "system directory"),
        ("home", {"userSecrets": {"mountPath": "/home/victim"}}, "home directory"),
        ("dots", {"mountPath": "/var/run/../../etc"}, "normalized"),
    ]
    for name, extra, message in cases:
        with pytest.raises(ApiException) as info:
            api.create_ws(namespace, name, {"user": "mo", "workspaceRef": deployment_ref("nothing"), **extra})
        assert info.value.status == 422 and message in info.value.body, (name, info.value.body)
    assert api.get_secret(namespace, reserved) is None


def test_rotation_replaces_the_key_in_every_workspace_of_the_user(api, namespace, wso_operator):
    for name in ("r1", "r2"):
        api.create_ws(namespace, name, {"user": "ivy", "workspaceRef": deployment_ref("nothing")})
        api.wait_condition(namespace, name)
    before = api.get_ws(namespace, "r1")["status"]["sshKeyFingerprint"]
    api.patch_ws(namespace, "r1", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "2026-11-29"}}})
    after = wait_for(lambda: (f := api.get_ws(namespace, "r1")["status"]["sshKeyFingerprint"]) != before and f,
                     timeout=20, what="r1 rotated")
    wait_for(lambda: api.get_ws(namespace, "r2")["status"]["sshKeyFingerprint"] == after, timeout=20, what="r2 follows")
    assert api.secret_digests(namespace, "r1")[c.KEY_SSH_PRIVATE] == api.secret_digests(namespace, "r2")[c.KEY_SSH_PRIVATE]
    assert api.get_ws(namespace, "r1")["status"]["sshKeyRotation"] == "2026-11-29"
    api.wait_event(namespace, "r1", "SSHKeyRotated")
    # The same annotation value again is not a new request.
    api.patch_ws(namespace, "r1", {"metadata": {"annotations": {"touch": "again"}}})
    api.wait_condition(namespace, "r1")
    assert api.get_ws(namespace, "r1")["status"]["sshKeyFingerprint"] == after


@pytest.mark.parametrize("key_type,extra", [("ecdsa", {}), ("rsa", {"rsaBits": 3072})])
def test_other_key_types(api, namespace, wso_operator, key_type, extra, tmp_path):
    api.create_ws(namespace, f"k-{key_type}", {"user": "jo", "workspaceRef": deployment_ref("nothing"), "ssh": {"keyType": key_type, **extra}})
    api.wait_condition(namespace, f"k-{key_type}", timeout=60)
    status = api.get_ws(namespace, f"k-{key_type}")["status"]
    assert status["sshKeyType"] == {"ecdsa": "ecdsa-p256", "rsa": "rsa-3072"}[key_type]
    assert fingerprint_of(api.secret_data(namespace, f"k-{key_type}")[c.KEY_SSH_PRIVATE], tmp_path) == status["sshKeyFingerprint"]
