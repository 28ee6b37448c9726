"""A rotated SSH key reaches every place the user's workspaces use it, within seconds, on the real API server
with the real operator: the user's other WorkspaceSecrets that are already bound to running workspaces (not only
ones still looking for their workspace, which re-check on their own), and the user's git provider accounts
(addSSHKey: the key the workspaces use, of any type, is uploaded; a rotation replaces it there; keys the user added
by hand are never touched)."""

from __future__ import annotations

import base64
import time

import pytest
import requests
from attack_support import Tenant, installed_policies, secret_manifest, token_manifest, ws_manifest
from helpers import Api, wait_for
from operator_process import OperatorProcess, other_operators_stopped
from test_user_token import applications, assert_no_token_leaks, connect, create_token, get_token  # noqa: F401 (fixture)

from fakes.git_providers import FakeGitProvider, fetch_state
from workspace_secrets.api import constants as c
from workspace_secrets.user_keys import sshkeys
from workspace_secrets.user_keys.naming import user_key_secret_name
from workspace_secrets.user_keys.sshkeys import KeySpec


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture
def lone_operator(cluster, namespace, tmp_path):
    """An operator of its own whose periodic resync never comes during the test (600 s): what happens within
    seconds is the operator's reaction, not the safety net. The session's shared operator is stopped meanwhile."""
    operator = OperatorProcess(str(cluster.kubeconfig), tmp_path / "operator", "--namespace", namespace,
                               "--resync-interval", "600")
    with other_operators_stopped(operator):
        operator.start()
        try:
            yield operator
        finally:
            operator.stop()


def queue_state(operator) -> tuple[float, float]:
    """(WorkspaceSecret keys waiting in the work queue, WorkspaceSecret reconciles finished so far), from /metrics."""
    depth = done = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith(f'wso_workqueue_depth{{queue="{c.WORKSPACE_SECRET_PLURAL}"}}'):
            depth = float(line.rsplit(" ", 1)[1])
        elif line.startswith("wso_reconciles_total{") and f'kind="{c.WORKSPACE_SECRET_KIND}"' in line:
            done += float(line.rsplit(" ", 1)[1])
    return depth, done


def settled(operator, window: float = 0.5) -> bool:
    """Nothing queued, and no reconcile finished during `window` (none was running: each is seconds at most here)."""
    depth, before = queue_state(operator)
    if depth:
        return False
    time.sleep(window)
    return queue_state(operator) == (0.0, before)


def pod_ref(name: str) -> dict:
    return {"kind": "Pod", "name": name}


def test_a_rotation_reaches_the_users_other_bound_workspaces_within_seconds(api, namespace, lone_operator):
    for name in ("w1", "w2"):
        api.create_pod(namespace, f"pod-{name}", user="uma")
        api.create_ws(namespace, name, {"user": "uma", "workspaceRef": pod_ref(f"pod-{name}")})
    for name in ("w1", "w2"):
        api.wait_condition(namespace, name, type_="WorkspaceBound", timeout=30)
        api.wait_condition(namespace, name)
    # Another user's workspace, to show the fan-out stays with the user.
    api.create_pod(namespace, "pod-v1", user="vic")
    api.create_ws(namespace, "v1", {"user": "vic", "workspaceRef": pod_ref("pod-v1")})
    api.wait_condition(namespace, "v1", type_="WorkspaceBound", timeout=30)
    api.wait_condition(namespace, "v1")
    before = api.secret_digests(namespace, "w2")[c.KEY_SSH_PRIVATE]
    assert api.secret_digests(namespace, "w1")[c.KEY_SSH_PRIVATE] == before
    other_user = api.secret_digests(namespace, "v1")
    # Every bound WorkspaceSecret settled (nothing of theirs queued or running): what changes w2 below is the fan-out.
    wait_for(lambda: settled(lone_operator), timeout=30, interval=0.1, what="the operator's work queue settled")

    api.patch_ws(namespace, "w1", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "now"}}})
    started = time.monotonic()
    rotated = wait_for(lambda: (d := api.secret_digests(namespace, "w1")[c.KEY_SSH_PRIVATE]) != before and d,
                       timeout=15, what="w1's Secret has the new key")
    wait_for(lambda: api.secret_digests(namespace, "w2")[c.KEY_SSH_PRIVATE] == rotated, timeout=5,
             what="w2's Secret (the user's other, bound workspace) has the new key within seconds")
    print(f"\nw2 followed {time.monotonic() - started:.1f} s after the annotation")
    wait_for(lambda: api.get_ws(namespace, "w2")["status"]["sshKeyFingerprint"] == api.get_ws(namespace, "w1")["status"]["sshKeyFingerprint"],
             timeout=5, what="w2's status shows the new key")
    assert api.secret_digests(namespace, "v1") == other_user, "another user's workspace must not change"

    # A change made by anyone else (here a platform admin deletes the user's key Secret) reaches them through the
    # Secret watch: a new key for every workspace of the user, again within seconds.
    api.core.delete_namespaced_secret(user_key_secret_name("uma", KeySpec()), namespace)
    replaced = wait_for(lambda: (d := api.secret_digests(namespace, "w1")[c.KEY_SSH_PRIVATE]) != rotated and d,
                        timeout=5, what="w1 has a new key after its user's key Secret was deleted")
    wait_for(lambda: api.secret_digests(namespace, "w2")[c.KEY_SSH_PRIVATE] == replaced, timeout=5, what="w2 has it too")
    assert api.secret_digests(namespace, "v1") == other_user


# --- addSSHKey: the keys the workspaces use, in step at the provider ----------------------------------------------
CLIENT_SECRET = "fake-client-secret-0123456789"


@pytest.fixture
def github():
    server = FakeGitProvider("github", clients={"wso-client": CLIENT_SECRET}).start()
    yield server
    server.stop()


def public_of(api: Api, namespace: str, ws: str) -> str:
    return " ".join(api.get_ws(namespace, ws)["status"]["sshPublicKey"].split()[:2])


def at_provider(fake) -> set[str]:
    return {k["key"] for k in fetch_state(fake.url)["keys"]}


def brought_key(api: Api, namespace: str, name: str, key: sshkeys.SSHKeyPair) -> None:
    """The user's own key Secret (what spec.ssh.existingSecretRef names), labelled for the user."""
    body = {"metadata": {"name": name, "labels": {c.LABEL_USER: "alice"}},
            "data": {c.KEY_SSH_PRIVATE: base64.b64encode(key.private_openssh.reveal()).decode()}}
    if api.get_secret(namespace, name) is None:
        api.core.create_namespaced_secret(namespace, body)
    else:
        api.core.replace_namespaced_secret(name, namespace, body)


def test_add_ssh_key_uploads_the_keys_the_workspaces_use_and_keeps_the_provider_in_step(api, namespace, wso_operator, github, applications):  # noqa: F811
    # alice's workspaces: one with a generated RSA key, one with her own (brought) ECDSA key.
    api.create_ws(namespace, "gen", {"user": "alice", "workspaceRef": pod_ref("p-gen"), "ssh": {"keyType": "rsa", "rsaBits": 3072}})
    brought_key(api, namespace, "alice-own-key", sshkeys.generate(sshkeys.KeySpec(sshkeys.KeyType.ECDSA), comment="alice@laptop"))
    api.create_ws(namespace, "byo", {"user": "alice", "workspaceRef": pod_ref("p-byo"), "ssh": {"existingSecretRef": {"name": "alice-own-key"}}})
    api.wait_condition(namespace, "gen", timeout=60)
    api.wait_condition(namespace, "byo")
    app = applications("wso-client", {"type": "github", "host": github.url}, secret=CLIENT_SECRET)
    create_token(api, namespace, "git", {"user": "alice", "application": app, "addSSHKey": True})
    connect(api, wso_operator, namespace, "git")
    used = {public_of(api, namespace, "gen"), public_of(api, namespace, "byo")}
    wait_for(lambda: at_provider(github) == used, timeout=20, what="both workspace keys uploaded (no default ed25519)")
    status = get_token(api, namespace, "git")["status"]
    assert sorted((k["type"], k["addedBy"]) for k in status["sshKeys"]) == [("ecdsa-p256", "Operator"), ("rsa-3072", "Operator")]
    condition = next(x for x in status["conditions"] if x["type"] == c.CONDITION_SSH_KEY_UPLOADED)
    assert condition["status"] == "True" and "gen" in condition["message"] and "byo" in condition["message"]

    # alice adds a key by hand at the provider, with her own title.
    token = api.secret_data(namespace, "git-token")[c.KEY_TOKEN]
    laptop = " ".join(sshkeys.generate(sshkeys.KeySpec(), comment="x").public_openssh.split()[:2])
    answer = requests.post(f"{github.url}/api/v3/user/keys", json={"title": "alice's laptop", "key": laptop},
                           headers={"Authorization": f"Bearer {token.decode()}"}, timeout=10)
    assert answer.status_code == 201, answer.status_code

    # A rotation of the generated key: the new key is uploaded, the old one removed, within seconds.
    old_rsa = public_of(api, namespace, "gen")
    api.patch_ws(namespace, "gen", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "r1"}}})
    wait_for(lambda: public_of(api, namespace, "gen") != old_rsa, timeout=30, what="gen rotated")
    wait_for(lambda: at_provider(github) == {public_of(api, namespace, "gen"), public_of(api, namespace, "byo"), laptop},
             timeout=15, what="the rotated key replaced at the provider, the hand-added key kept")

    # alice replaces her own key: the workspace Secret changes, the provider follows within seconds.
    old_byo = public_of(api, namespace, "byo")
    brought_key(api, namespace, "alice-own-key", sshkeys.generate(sshkeys.KeySpec(sshkeys.KeyType.RSA, 3072), comment="alice@laptop"))
    wait_for(lambda: public_of(api, namespace, "byo") != old_byo, timeout=30, what="byo follows alice's key")
    wait_for(lambda: at_provider(github) == {public_of(api, namespace, "gen"), public_of(api, namespace, "byo"), laptop},
             timeout=15, what="the brought key replaced at the provider")

    # The UserToken's deletion removes what the operator uploaded, never the hand-added key.
    api.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "git")
    wait_for(lambda: get_token(api, namespace, "git") is None, timeout=30, what="UserToken deleted")
    assert at_provider(github) == {laptop}
    events = {e.reason for e in api.core.list_namespaced_event(namespace).items}
    assert {"SSHKeyUploaded", "SSHKeyRemoved"} <= events
    assert_no_token_leaks(api, namespace, wso_operator, [token, CLIENT_SECRET.encode()])


def test_attack_mallory_cannot_get_her_key_uploaded_to_alices_account(cluster, api, namespace, wso_operator, github, applications):  # noqa: F811
    """The keys uploaded are read from the workspace Secrets the operator wrote for alice's WorkspaceSecrets. mallory
    (the shipped user role, create/patch on Secrets) tries every way to put her key there; alice's account at the
    provider keeps exactly alice's workspace key."""
    tenant = Tenant(cluster, namespace)
    with installed_policies(cluster, tenant, ("alice", "mallory")):
        assert tenant.create(ws_manifest("alice-ws", "alice"), user="alice").check()
        api.wait_condition(namespace, "alice-ws")
        app = applications("wso-client", {"type": "github", "host": github.url}, secret=CLIENT_SECRET)
        assert tenant.create(token_manifest("git", "alice", app, addSSHKey=True), user="alice").check()
        connect(api, wso_operator, namespace, "git")
        alice_key = public_of(api, namespace, "alice-ws")
        wait_for(lambda: at_provider(github) == {alice_key}, timeout=20, what="alice's key uploaded")
        alice_secret_before = api.secret_digests(namespace, "alice-ws")

        mallory = sshkeys.generate(sshkeys.KeySpec(), comment="mallory@evil")
        private, public = mallory.private_openssh.reveal(), (mallory.public_openssh + "\n").encode()
        alice_ws_uid = api.get_ws(namespace, "alice-ws")["metadata"]["uid"]
        workspace_labels = {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_WORKSPACE_SECRET}
        attempts = {
            "her key Secret labelled for alice": tenant.create(
                secret_manifest("m-key-for-alice", user="alice", data={c.KEY_SSH_PRIVATE: private}), user="mallory"),
            "a WorkspaceSecret of alice's bringing a key": tenant.create(
                ws_manifest("m-ws-for-alice", "alice", ssh={"existingSecretRef": {"name": "m-key"}}), user="mallory"),
            "a Secret shaped like a workspace Secret of alice's": tenant.create(secret_manifest(
                "alice-ws-2", user="alice", labels=workspace_labels, data={c.KEY_SSH_PUBLIC: public},
                owner={"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "name": "alice-ws", "uid": alice_ws_uid,
                       "controller": True}), user="mallory"),
            "alice's workspace Secret patched": tenant.api_patch(
                "secrets", "alice-ws", {"data": {c.KEY_SSH_PUBLIC: base64.b64encode(public).decode()}}, user="mallory"),
        }
        for what, result in attempts.items():
            assert not result.ok, f"{what}: accepted"
        # mallory's own workspace with her own key is fine -- and stays hers.
        assert tenant.create(secret_manifest("m-key", user="mallory", data={c.KEY_SSH_PRIVATE: private}), user="mallory").check()
        assert tenant.create(ws_manifest("m-ws", "mallory", ssh={"existingSecretRef": {"name": "m-key"}}), user="mallory").check()
        api.wait_condition(namespace, "m-ws")

        # A pass of alice's token after all that (the validate annotation): her account holds her key only.
        api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "git",
                                                  {"metadata": {"annotations": {c.ANNOTATION_VALIDATE_TOKEN: "after-attack"}}})
        wait_for(lambda: (get_token(api, namespace, "git")["status"].get("validateRequest") == "after-attack"), timeout=20,
                 what="alice's token passed again")
        assert at_provider(github) == {alice_key}
        assert api.secret_digests(namespace, "alice-ws") == alice_secret_before
        assert [k["fingerprint"] for k in get_token(api, namespace, "git")["status"]["sshKeys"]] == [
            api.get_ws(namespace, "alice-ws")["status"]["sshKeyFingerprint"]]
