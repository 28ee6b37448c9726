"""The pure decisions behind a WorkspaceSecret: spec parsing, the desired Secret, the action, the status."""

import base64
import shlex
from datetime import datetime, timedelta, timezone

import pytest

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import SpecError, WorkspaceSecret
from workspace_secrets.api import conditions as cond
from workspace_secrets.user_keys import sshkeys
from workspace_secrets.workspace_secret import policy
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType

KEY = sshkeys.generate(KeySpec(), comment="alice@test")
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


def body(**spec_overrides):
    spec = {"user": "alice", "workspaceRef": {"kind": "Deployment", "name": "ws-alice"}, **spec_overrides}
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.WORKSPACE_SECRET_KIND,
        "metadata": {"name": "alice-ws", "namespace": "team", "uid": "uid-1", "generation": 3, "resourceVersion": "7"},
        "spec": spec,
    }


def ws(**spec_overrides):
    return WorkspaceSecret.from_body(body(**spec_overrides))


# --- spec ---------------------------------------------------------------------------------------
def test_defaults_are_applied_when_the_api_server_did_not():
    parsed = ws()
    assert parsed.secret_name == "alice-ws"
    assert parsed.mount_path == c.DEFAULT_MOUNT_PATH
    assert parsed.ssh.key_type == "ed25519" and parsed.ssh.host_key_policy == "Strict"
    assert parsed.workspace_ref.api_version == "apps/v1"


@pytest.mark.parametrize(
    "overrides,field",
    [
        ({"user": ""}, "spec.user"),
        ({"workspaceRef": {"kind": "CronJob", "name": "x"}}, "spec.workspaceRef.kind"),
        ({"workspaceRef": {"kind": "Pod", "name": "x", "apiVersion": "apps/v1"}}, "spec.workspaceRef.apiVersion"),
        ({"ssh": {"keyType": "dsa"}}, "spec.ssh.keyType"),
        ({"ssh": {"keyType": "rsa", "rsaBits": 1024}}, "spec.ssh.rsaBits"),
        ({"ssh": {"keyType": "ed25519", "rsaBits": 4096}}, "spec.ssh.rsaBits"),
        ({"ssh": {"hostKeyPolicy": "Maybe"}}, "spec.ssh.hostKeyPolicy"),
    ],
)
def test_unusable_specs_name_the_field(overrides, field):
    with pytest.raises(SpecError) as info:
        ws(**overrides)
    assert info.value.field == field and str(info.value).startswith(field)


@pytest.mark.parametrize("field", ["mountPath", "userSecrets.mountPath"])
@pytest.mark.parametrize("path,why", [
    ("/x", "at least two components"), ("/a/./b", "normalized"), ("/a/../etc", "normalized"), ("/a//b", "normalized"),
    ("/a/b/", "normalized"), ("relative/path", "absolute"),
    ("/etc/ssh", "system directory"), ("/usr/local/bin", "system directory"), ("/lib64/x", "system directory"),
    ("/proc/self", "system directory"), ("/dev/shm", "system directory"), ("/boot/x", "system directory"),
    ("/bin/x", "system directory"), ("/sbin/x", "system directory"), ("/sys/x", "system directory"),
    ("/home/bob", "home directory"),
])
def test_mount_paths_are_bounded(field, path, why):
    spec = {"mountPath": path} if field == "mountPath" else {"userSecrets": {"mountPath": path}}
    with pytest.raises(SpecError) as info:
        ws(**spec)
    assert info.value.field == f"spec.{field}" and why in str(info.value)


@pytest.mark.parametrize("path", ["/var/run/workspace-secrets", "/home/coder/.secrets", "/root/.config/x", "/workspace/secrets", "/etcetera/x", "/opt/x"])
def test_ordinary_mount_paths_are_accepted(path):
    assert ws(mountPath=path).mount_path == path


def test_reserved_secret_names_are_the_per_user_key_pattern():
    from workspace_secrets.user_keys.naming import RESERVED_SECRET_NAME_PATTERN, is_reserved_secret_name

    assert RESERVED_SECRET_NAME_PATTERN == "^ssh-.+-(ecdsa-p256|ed25519|rsa-[0-9]+)-[0-9a-f]{8}$"
    for spec in (KeySpec(), KeySpec(KeyType.ECDSA), KeySpec(KeyType.RSA, 3072), KeySpec(KeyType.RSA, 4096)):
        for user in ("bob", "Alice.Smith", "x"):
            assert is_reserved_secret_name(user_key_secret_name(user, spec))
    assert is_reserved_secret_name("ssh-bob-rsa-2048-0123abcd")
    for name in ("alice-ws", "ssh-bob-ed25519", "ssh-bob-ed25519-0123ABCD", "ssh-bob-dsa-0123abcd", "my-ssh-bob-ed25519-0123abcd"):
        assert not is_reserved_secret_name(name)


def test_a_reserved_secret_name_is_an_invalid_spec():
    assert policy.reserved_name_problem(ws(), False) is None
    problem = policy.reserved_name_problem(ws(secretName="ssh-bob-ed25519-0123abcd"), True)
    assert problem is not None and problem.reason == "InvalidSpec"
    assert problem.message.startswith("spec.secretName: 'ssh-bob-ed25519-0123abcd'") and "reserved" in problem.message


def test_only_a_workspace_labelled_with_the_user_binds():
    def workspace(labels):
        return {"metadata": {"name": "ws-alice", "uid": "w1", "labels": labels}}

    assert policy.workspace_user_problem(workspace({c.LABEL_USER: "alice"}), ws()) is None
    for labels in ({}, {c.LABEL_USER: "bob"}, {c.LABEL_USER: "Alice"}):
        problem = policy.workspace_user_problem(workspace(labels), ws())
        assert problem is not None and problem.reason == "WorkspaceUserMismatch"
        assert "Deployment 'ws-alice' is not labelled workspace-secrets.io/user=alice" in problem.message
    obs = policy.Observation(key=KEY, key_source="Generated", problem=None, secret_action=policy.SecretAction.UNCHANGED,
                             secret_data={}, workspace_uid=None, workspace_problem=problem)
    bound = {x.type: x for x in policy.conditions(ws(), obs)}["WorkspaceBound"]
    assert not bound.status and bound.reason == "WorkspaceUserMismatch" and bound.message == problem.message


def test_rsa_defaults_to_3072_bits():
    assert ws(ssh={"keyType": "rsa"}).ssh.rsa_bits == 3072


def test_rotation_annotation_is_read():
    b = body()
    b["metadata"]["annotations"] = {c.ANNOTATION_ROTATE_SSH_KEY: "2026-11-29"}
    assert WorkspaceSecret.from_body(b).rotate_ssh_key == "2026-11-29"


# --- names --------------------------------------------------------------------------------------
def test_user_key_names_are_deterministic_valid_and_distinct():
    a = user_key_secret_name("Alice", KeySpec())
    assert a == user_key_secret_name("Alice", KeySpec())
    assert a != user_key_secret_name("alice", KeySpec())
    assert a != user_key_secret_name("Alice", KeySpec(KeyType.RSA, 4096))
    long = user_key_secret_name("u" * 63, KeySpec(KeyType.RSA, 4096))
    assert len(long) <= 63 and long.startswith("ssh-uuu")
    for name in (a, long, user_key_secret_name("a.b_c", KeySpec(KeyType.ECDSA))):
        assert name == name.lower() and all(ch.isalnum() or ch == "-" for ch in name)


# --- the Secret ---------------------------------------------------------------------------------
def decoded(secret):
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_desired_secret_carries_key_known_hosts_and_a_matching_git_ssh_command():
    w = ws(mountPath="/home/coder/.wss", ssh={"knownHosts": ["git.example ssh-ed25519 AAAA", "  "], "hostKeyPolicy": "AcceptNew"})
    secret = policy.desired_secret(w, KEY)
    data = decoded(secret)
    assert secret["type"] == "kubernetes.io/ssh-auth"
    assert data[c.KEY_SSH_PRIVATE] == KEY.private_openssh.reveal_text()
    assert data[c.KEY_SSH_PUBLIC] == KEY.public_openssh + "\n"
    assert data[c.KEY_KNOWN_HOSTS] == "git.example ssh-ed25519 AAAA\n"
    argv = shlex.split(data[c.KEY_GIT_SSH_COMMAND])
    assert argv[:3] == ["ssh", "-i", f"/home/coder/.wss/{c.KEY_SSH_PRIVATE}"]
    assert "UserKnownHostsFile=/home/coder/.wss/known_hosts" in argv
    assert "StrictHostKeyChecking=accept-new" in argv and "IdentitiesOnly=yes" in argv
    meta = secret["metadata"]
    assert meta["labels"][c.LABEL_MANAGED_BY] == c.OPERATOR_NAME and meta["labels"][c.LABEL_USER] == "alice"
    assert meta["ownerReferences"] == [policy.owner_reference(w)] and meta["ownerReferences"][0]["controller"]
    assert meta["annotations"] == {c.ANNOTATION_SSH_FINGERPRINT: KEY.fingerprint}


def test_no_key_material_outside_data():
    secret = policy.desired_secret(ws(), KEY)
    outside = repr({k: v for k, v in secret.items() if k != "data"})
    assert "PRIVATE KEY" not in outside and base64.b64encode(KEY.private_openssh.reveal()).decode() not in outside


def owned(secret, uid="uid-1"):
    out = {**secret, "metadata": {**secret["metadata"], "resourceVersion": "9"}}
    out["metadata"]["ownerReferences"] = [{"uid": uid, "controller": True, "kind": "WorkspaceSecret", "name": "x"}]
    return out


def test_secret_action_for_every_branch():
    w = ws()
    desired = policy.desired_secret(w, KEY)
    assert policy.secret_action(None, desired, w.uid) is policy.SecretAction.CREATE
    assert policy.secret_action(owned(desired), desired, w.uid) is policy.SecretAction.UNCHANGED
    drifted = owned(desired)
    drifted["data"] = {**drifted["data"], c.KEY_SSH_PRIVATE: "dGFtcGVyZWQ="}
    assert policy.secret_action(drifted, desired, w.uid) is policy.SecretAction.UPDATE
    extra_key = owned(desired)
    extra_key["data"] = {**extra_key["data"], "injected": "eA=="}
    assert policy.secret_action(extra_key, desired, w.uid) is policy.SecretAction.UPDATE
    relabelled = owned(desired)
    relabelled["metadata"]["labels"] = {}
    assert policy.secret_action(relabelled, desired, w.uid) is policy.SecretAction.UPDATE
    foreign = {"metadata": {"name": "alice-ws"}, "data": {}}
    assert policy.secret_action(foreign, desired, w.uid) is policy.SecretAction.CONFLICT
    other_owner = owned(desired, uid="someone-else")
    assert policy.secret_action(other_owner, desired, w.uid) is policy.SecretAction.CONFLICT


def test_update_keeps_foreign_labels_and_the_resource_version():
    w = ws()
    desired = policy.desired_secret(w, KEY)
    existing = owned(desired)
    existing["metadata"]["labels"] = {"team": "blue"}
    merged = policy.merged_for_update(existing, desired)
    assert merged["metadata"]["resourceVersion"] == "9"
    assert merged["metadata"]["labels"]["team"] == "blue"
    assert merged["metadata"]["labels"][c.LABEL_MANAGED_BY] == c.OPERATOR_NAME
    assert merged["data"] == desired["data"]


def test_conflict_message_says_who_owns_it_and_what_to_do():
    msg = policy.conflict_message({"metadata": {}}, ws())
    assert "'alice-ws'" in msg and "not created by this operator" in msg and "spec.secretName" in msg


# --- status -------------------------------------------------------------------------------------
def obs(**kw):
    base = dict(key=KEY, key_source="Generated", problem=None, secret_action=policy.SecretAction.CREATE,
                secret_data=None, workspace_uid="wuid")
    return policy.Observation(**{**base, **kw})


def test_ready_status_when_everything_is_in_place():
    w = ws()
    conds = {x.type: x for x in policy.conditions(w, obs())}
    assert conds["Ready"].status and conds["Ready"].reason == "SecretReady"
    assert conds["SSHKeyReady"].status and KEY.fingerprint in conds["SSHKeyReady"].message
    assert conds["WorkspaceBound"].status
    status = policy.desired_status(w, obs())
    assert status["sshPublicKey"] == KEY.public_openssh and status["sshKeyFingerprint"] == KEY.fingerprint
    assert status["secretName"] == "alice-ws" and status["workspaceUID"] == "wuid"


def test_unbound_workspace_is_not_an_error():
    conds = {x.type: x for x in policy.conditions(ws(), obs(workspace_uid=None))}
    assert conds["Ready"].status
    assert not conds["WorkspaceBound"].status and conds["WorkspaceBound"].reason == "WorkspaceNotFound"


def test_a_problem_keeps_the_previously_published_key():
    b = body(ssh={"existingSecretRef": {"name": "mine"}})
    b["status"] = {"sshPublicKey": "ssh-ed25519 AAAA old", "sshKeyFingerprint": "SHA256:old", "sshKeySource": "Existing"}
    w = WorkspaceSecret.from_body(b)
    problem = policy.Problem("InvalidExistingKey", "spec.ssh.existingSecretRef: ... not a private key")
    o = obs(key=None, key_source="Existing", problem=problem, secret_action=None)
    conds = {x.type: x for x in policy.conditions(w, o)}
    assert not conds["Ready"].status and conds["Ready"].reason == "InvalidExistingKey"
    assert not conds["SSHKeyReady"].status
    status = policy.desired_status(w, o)
    assert status["sshKeyFingerprint"] == "SHA256:old"


def test_display_items_mask_sensitive_values_and_resolve_references():
    w = ws(display=[
        {"key": "region", "value": "eu-west-1"},
        {"key": "key id", "valueFrom": {"secretKeyRef": {"key": "aws.AWS_ACCESS_KEY_ID"}}},
        {"key": "secret", "valueFrom": {"secretKeyRef": {"key": "aws.AWS_SECRET_ACCESS_KEY"}}, "sensitive": True},
        {"key": "absent", "valueFrom": {"secretKeyRef": {"key": "known_hosts"}}},
    ])
    data = {"aws.AWS_ACCESS_KEY_ID": base64.b64encode(b"AKIAEXAMPLE").decode(),
            "aws.AWS_SECRET_ACCESS_KEY": base64.b64encode(b"very-secret").decode()}
    items = {i["key"]: i["value"] for i in policy.display_items(w, data)}
    assert items == {"region": "eu-west-1", "key id": "AKIAEXAMPLE", "secret": "********", "absent": "<missing>"}


def test_display_copies_only_public_keys_whatever_sensitive_says():
    """Status is readable by every user who may list WorkspaceSecrets: only public values are copied."""
    keys = ["ssh-publickey", "known_hosts", "GIT_SSH_COMMAND", "aws.AWS_ACCESS_KEY_ID", "db.PGUSER",  # public
            "aws.AWS_SECRET_ACCESS_KEY", "kube.token", "user.npm.token", "user.x.AWS_REGION", "PGUSER", "ssh-privatekey"]
    w = ws(display=[{"key": k, "valueFrom": {"secretKeyRef": {"key": k}}, "sensitive": False} for k in keys])
    data = {k: base64.b64encode(f"value-of-{k}".encode()).decode() for k in keys}
    shown = {i["key"]: i for i in policy.display_items(w, data)}
    for k in keys[:5]:
        assert shown[k] == {"key": k, "value": f"value-of-{k}", "sensitive": False}
    for k in keys[5:]:
        assert shown[k] == {"key": k, "value": "********", "sensitive": True}


# --- conditions ---------------------------------------------------------------------------------
def test_transition_time_moves_only_when_status_flips():
    first = cond.merge([], [cond.Condition("Ready", False, "A", "a")], generation=1, now=NOW)
    later = NOW + timedelta(minutes=5)
    same = cond.merge(first, [cond.Condition("Ready", False, "B", "b")], generation=2, now=later)
    assert same[0]["lastTransitionTime"] == first[0]["lastTransitionTime"] and same[0]["reason"] == "B"
    assert same[0]["observedGeneration"] == 2
    flipped = cond.merge(same, [cond.Condition("Ready", True, "C", "c")], generation=2, now=later)
    assert flipped[0]["lastTransitionTime"] == "2026-11-29T12:05:00Z"


def test_conditions_of_other_types_are_kept():
    other = [{"type": "CredentialsReady", "status": "True", "reason": "x", "message": "", "lastTransitionTime": "t"}]
    merged = cond.merge(other, [cond.Condition("Ready", True, "R", "m")], generation=1, now=NOW)
    assert [m["type"] for m in merged] == ["CredentialsReady", "Ready"]
