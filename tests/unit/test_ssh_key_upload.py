"""addSSHKey uploads the keys the user's workspaces use: which keys (pure: user_keys.policy), and one UserToken pass
keeping a provider in step (the controller over the in-memory API server and a provider with an SSH key API)."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta

from fakes.http import json_response
from unit.test_user_token_controller import NOW, NS, UT_PATH, FakeGitLab, setup

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.http import Request, Response
from workspace_secrets.user_keys import policy, sshkeys

KEYS = {name: sshkeys.generate(spec, comment="alice@workspace-secrets-operator") for name, spec in {
    "ed": sshkeys.KeySpec(), "ec": sshkeys.KeySpec(sshkeys.KeyType.ECDSA), "rsa": sshkeys.KeySpec(sshkeys.KeyType.RSA, 3072),
    "ed2": sshkeys.KeySpec(), "ed3": sshkeys.KeySpec(), "ed4": sshkeys.KeySpec(), "ed5": sshkeys.KeySpec()}.items()}
WS_PATH = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"


def body(name: str) -> str:
    return " ".join(KEYS[name].public_openssh.split()[:2])


def fp(name: str) -> str:
    return KEYS[name].fingerprint


def workspace_secret(name: str, key: str, *, uid: str | None = None, user: str = "alice", secret_name: str | None = None,
                     labels: dict | None = None, owner_uid: str | None = None, controller: bool = True) -> dict:
    uid = uid or f"uid-{name}"
    return {
        "metadata": {"name": secret_name or name, "namespace": NS, "resourceVersion": "1",
                     "labels": labels if labels is not None else {c.LABEL_MANAGED_BY: c.OPERATOR_NAME,
                                                                  c.LABEL_COMPONENT: c.COMPONENT_WORKSPACE_SECRET, c.LABEL_USER: user},
                     "annotations": {c.ANNOTATION_SSH_FINGERPRINT: KEYS[key].fingerprint},
                     "ownerReferences": [{"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "name": name,
                                          "uid": owner_uid or uid, "controller": controller}]},
        "data": {c.KEY_SSH_PUBLIC: base64.b64encode((KEYS[key].public_openssh + "\n").encode()).decode()},
    }


# --- pure: whose Secret counts --------------------------------------------------------------------------------
def test_only_the_secret_the_operator_wrote_for_that_workspace_secret_counts() -> None:
    def read(secret: dict | None, secret_name: str = "w1") -> str | None:
        return policy.workspace_public_key(secret, secret_name=secret_name, ws_uid="uid-w1", user="alice")

    assert read(workspace_secret("w1", "rsa")) == KEYS["rsa"].public_openssh
    refused = {
        "absent": None,
        "another name": workspace_secret("w1", "rsa", secret_name="elsewhere"),
        "no controller": workspace_secret("w1", "rsa", controller=False),
        "another owner": workspace_secret("w1", "rsa", owner_uid="uid-mallory"),
        "another user's label": workspace_secret("w1", "rsa", user="mallory"),
        "a tenant's labels": workspace_secret("w1", "rsa", labels={c.LABEL_USER: "alice"}),
        "the per-user key's component": workspace_secret("w1", "rsa", labels={
            c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY, c.LABEL_USER: "alice"}),
    }
    for case, secret in refused.items():
        assert read(secret) is None, case
    assert policy.workspace_owner(workspace_secret("w1", "rsa")) == "w1"
    assert policy.workspace_owner(workspace_secret("w1", "rsa", controller=False)) is None
    damaged = workspace_secret("w1", "rsa")
    damaged["data"][c.KEY_SSH_PUBLIC] = "not base64!"
    assert read(damaged) is None


def test_keys_in_use_are_distinct_typed_and_ordered_by_the_oldest_workspace() -> None:
    found = [("2026-03", "c", KEYS["ed"].public_openssh), ("2026-01", "b", KEYS["rsa"].public_openssh),
             ("2026-02", "a", KEYS["ed"].public_openssh), ("2026-04", "d", "ssh-ed25519 garbage"),
             ("2026-05", "e", KEYS["ec"].public_openssh)]
    keys = policy.keys_in_use(found)
    assert [(k.key.type, k.workspaces) for k in keys] == [("rsa-3072", ("b",)), ("ed25519", ("a", "c")), ("ecdsa-p256", ("e",))]
    assert keys[0].key.body == body("rsa") and keys[0].key.fingerprint == fp("rsa")
    assert "rsa-3072, used by b" in policy.key_summary(keys[0])


# --- pure: what to upload and remove --------------------------------------------------------------------------
def in_use(*names: str) -> list[policy.KeyInUse]:
    return policy.keys_in_use([(i, f"ws-{n}", KEYS[n].public_openssh) for i, n in enumerate(names)])


def rec(name: str, id_: str, added_by: str = policy.ADDED_BY_OPERATOR) -> policy.RecordedKey:
    return policy.RecordedKey(id_, "t", fp(name), "", added_by)


def test_a_new_key_is_uploaded_and_a_recorded_one_kept() -> None:
    plan = policy.upload_plan(in_use("ed", "rsa"), [rec("ed", "1")])
    assert [k.id for k in plan.keep] == ["1"] and [k.key.fingerprint for k in plan.upload] == [fp("rsa")]
    assert plan.remove == plan.forget == plan.left_out == ()


def test_a_rotation_uploads_the_new_key_and_removes_only_the_old_one_the_operator_uploaded() -> None:
    recorded = [rec("ed", "1"), rec("rsa", "2", policy.ADDED_BY_USER)]
    plan = policy.upload_plan(in_use("ed2"), recorded)  # both old keys went out of use; ed2 is the new one
    assert [k.key.fingerprint for k in plan.upload] == [fp("ed2")]
    assert [k.id for k in plan.remove] == ["1"]  # the operator's
    assert [k.id for k in plan.forget] == ["2"]  # the user's own: dropped from status, never deleted
    assert plan.keep == ()


def test_nothing_in_use_removes_what_the_operator_uploaded() -> None:
    plan = policy.upload_plan([], [rec("ed", "1")])
    assert [k.id for k in plan.remove] == ["1"] and plan.upload == ()


def test_at_most_max_uploaded_keys_the_oldest_workspaces_first() -> None:
    names = ("ed", "ec", "rsa", "ed2", "ed3", "ed4", "ed5")
    plan = policy.upload_plan(in_use(*names), [])
    assert len(plan.upload) == policy.MAX_UPLOADED_KEYS == 5
    assert [k.key.fingerprint for k in plan.left_out] == [fp("ed4"), fp("ed5")]


OURS = "workspace-secrets-operator team/alice"


def test_status_of_earlier_versions_is_read_and_bounded() -> None:
    legacy = {"sshKey": {"id": "7", "title": OURS, "fingerprint": fp("ed")}}
    assert policy.recorded_keys(legacy, operator_title=OURS) == [policy.RecordedKey("7", OURS, fp("ed"))]
    many = {"sshKeys": [{"id": str(i), "fingerprint": "x"} for i in range(100)] + [{"id": "1"}, "junk"]}
    assert len(policy.recorded_keys(many, operator_title=OURS)) == policy.MAX_RECORDED_KEYS
    assert policy.recorded_keys({"sshKeys": [{"id": "1", "addedBy": "User"}, {"id": "1"}]}, operator_title=OURS) == [
        policy.RecordedKey("1", "", "", "", policy.ADDED_BY_USER)]


def test_an_earlier_versions_key_under_another_title_is_the_users_and_never_removed() -> None:
    """Earlier versions adopted a key the user had added by hand (same public key, the user's title) into status.sshKey.
    Only an entry under the operator's own title is the operator's upload; anything else is the user's: kept while a
    workspace uses it, forgotten (never deleted at the provider) when none does."""
    for title in ("my laptop", "", OURS + " ", "workspace-secrets-operator team/bob"):
        legacy = {"sshKey": {"id": "7", "title": title, "fingerprint": fp("ed"), "addedBy": "Operator"}}
        [key] = policy.recorded_keys(legacy, operator_title=OURS)
        assert key.added_by == policy.ADDED_BY_USER, title
        gone = policy.upload_plan(in_use("rsa"), [key])  # the workspaces moved to another key (rotation)
        assert gone.remove == () and [k.id for k in gone.forget] == ["7"]
        assert policy.upload_plan([], [key]).remove == ()  # none uses it (e.g. addSSHKey's cleanup on disconnect)
    [ours] = policy.recorded_keys({"sshKey": {"id": "7", "title": OURS, "fingerprint": fp("ed")}}, operator_title=OURS)
    assert ours.added_by == policy.ADDED_BY_OPERATOR
    assert [k.id for k in policy.upload_plan(in_use("rsa"), [ours]).remove] == ["7"]
    # status.sshKeys (this version's) wins over the legacy field; its addedBy is taken as written by the operator.
    both = {"sshKeys": [{"id": "8", "title": "my laptop", "fingerprint": fp("ed")}], "sshKey": {"id": "7", "title": "my laptop"}}
    assert policy.recorded_keys(both, operator_title=OURS) == [policy.RecordedKey("8", "my laptop", fp("ed"))]


def test_status_ssh_keys_never_outgrows_the_crds_max_items() -> None:
    """Uploads come before removals, and a failed removal keeps its entry: status.sshKeys could grow with every
    rotation while the provider refuses deletes. Beyond MAX_RECORDED_KEYS (the CRD's maxItems, which the API server
    enforces on the whole status write) uploads are deferred instead, so no uploaded key is ever left unrecorded."""
    import pathlib

    import yaml

    crd = yaml.safe_load((pathlib.Path(__file__).parents[2] / "crds" / "usertokens.yaml").read_text())
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["sshKeys"]["maxItems"] == policy.MAX_RECORDED_KEYS
    pending = [policy.RecordedKey(str(i), "t", f"SHA256:old{i}") for i in range(policy.MAX_RECORDED_KEYS - 2)]
    plan = policy.upload_plan(in_use("ed", "ec", "rsa"), pending)
    assert [k.key.fingerprint for k in plan.upload] == [fp("ed"), fp("ec")] and [k.key.fingerprint for k in plan.deferred] == [fp("rsa")]
    assert len(pending) + len(plan.upload) == policy.MAX_RECORDED_KEYS and len(plan.remove) == len(pending)
    full = [policy.RecordedKey(str(i), "t", f"SHA256:old{i}") for i in range(policy.MAX_RECORDED_KEYS)]
    assert policy.upload_plan(in_use("ed"), full).upload == ()


def test_only_a_changed_fingerprint_is_a_change_of_the_workspace_key() -> None:
    secret = workspace_secret("w1", "ed")
    assert policy.workspace_key_change(None, "ADDED", secret) == (True, fp("ed"))
    assert policy.workspace_key_change(fp("ed"), "MODIFIED", secret) == (False, fp("ed"))  # e.g. a credential rotated
    assert policy.workspace_key_change(fp("rsa"), "MODIFIED", secret) == (True, fp("ed"))
    assert policy.workspace_key_change(fp("ed"), "DELETED", secret) == (True, None)


# --- a UserToken pass against a provider ----------------------------------------------------------------------
class Provider(FakeGitLab):
    """GitLab's /user/keys: list, add (201), delete (204/404)."""

    def __init__(self, kube) -> None:
        super().__init__(kube)
        self.keys: list[dict] = []
        self.next_id = 100

    async def __call__(self, request: Request) -> Response:
        if "/user/keys" in request.url:
            if request.method == "POST":
                self.next_id += 1
                self.keys.append({"id": self.next_id, "title": request.json["title"], "key": request.json["key"]})
                return json_response(201, self.keys[-1])
            if request.method == "DELETE":
                key_id = int(request.url.rsplit("/", 1)[1])
                before = len(self.keys)
                self.keys = [k for k in self.keys if k["id"] != key_id]
                return json_response(204 if len(self.keys) < before else 404, {})
            return json_response(200, self.keys if "page=1" in request.url else [])
        return await super().__call__(request)


class Scene:
    def __init__(self) -> None:
        self.clock = [NOW + timedelta(minutes=10)]
        self.provider: Provider | None = None
        self.controller, self.kube, _, self.events = setup(self.clock, lambda request: self.provider(request))  # type: ignore[misc]
        self.provider = Provider(self.kube)
        self.kube.edit(UT_PATH, {"spec": {"addSSHKey": True}})

    def workspace(self, name: str, key: str, *, created: str = "2026-11-01T00:00:00Z") -> None:
        self.kube.put(WS_PATH, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND,
                                "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}", "creationTimestamp": created},
                                "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}}})
        self.kube.put(SECRETS, workspace_secret(name, key))

    def remove(self, name: str) -> None:
        self.kube.remove(f"{WS_PATH}/{name}")
        self.kube.remove(f"{SECRETS}/{name}")

    def run(self) -> dict:
        asyncio.run(self.controller.maintain(NS, "gl"))
        return self.kube.objects[UT_PATH]["status"]

    def at_provider(self) -> list[str]:
        assert self.provider is not None
        return sorted(k["key"] for k in self.provider.keys)

    def condition(self) -> dict:
        return next(x for x in self.kube.objects[UT_PATH]["status"]["conditions"] if x["type"] == c.CONDITION_SSH_KEY_UPLOADED)


def test_the_keys_the_workspaces_use_are_uploaded_kept_in_step_and_a_hand_added_key_survives() -> None:
    scene = Scene()
    scene.workspace("ws-rsa", "rsa")
    status = scene.run()
    assert scene.at_provider() == [body("rsa")]
    assert [(k["fingerprint"], k["type"], k["addedBy"]) for k in status["sshKeys"]] == [(fp("rsa"), "rsa-3072", "Operator")]
    assert status["sshKey"]["fingerprint"] == fp("rsa")  # the compatibility field: the first key
    cond = scene.condition()
    assert cond["status"] == "True" and fp("rsa") in cond["message"] and "ws-rsa" in cond["message"]

    # The user adds a key by hand (their own title); a workspace starts using it: it is not uploaded twice.
    assert scene.provider is not None
    scene.provider.keys.append({"id": 7, "title": "my laptop", "key": body("ec")})
    scene.workspace("ws-ec", "ec", created="2026-11-02T00:00:00Z")
    status = scene.run()
    assert scene.at_provider() == sorted([body("rsa"), body("ec")])
    assert {k["fingerprint"]: k["addedBy"] for k in status["sshKeys"]} == {fp("rsa"): "Operator", fp("ec"): "User"}
    assert "added by the user" in scene.condition()["message"]

    # A rotation of the rsa workspace's key: the new key is uploaded, the old one removed.
    scene.kube.put(SECRETS, workspace_secret("ws-rsa", "ed"))
    scene.run()
    assert scene.at_provider() == sorted([body("ed"), body("ec")])
    # The workspace that used the hand-added key goes: the key stays at the provider, only status forgets it.
    scene.remove("ws-ec")
    status = scene.run()
    assert scene.at_provider() == sorted([body("ed"), body("ec")])
    assert [k["fingerprint"] for k in status["sshKeys"]] == [fp("ed")]
    reasons = [reason for reason, _ in scene.events.posted]
    assert reasons.count("SSHKeyUploaded") == 2 and reasons.count("SSHKeyRemoved") == 1

    # addSSHKey turned off: what the operator uploaded goes, the hand-added key stays.
    scene.kube.edit(UT_PATH, {"spec": {"addSSHKey": False}})
    status = scene.run()
    assert scene.at_provider() == [body("ec")] and "sshKeys" not in status and "sshKey" not in status


def test_an_upload_already_made_by_an_interrupted_pass_is_adopted_not_repeated() -> None:
    scene = Scene()
    scene.workspace("ws-1", "ed")
    assert scene.provider is not None
    scene.provider.keys.append({"id": 9, "title": f"{c.OPERATOR_NAME} {NS}/alice", "key": body("ed")})
    status = scene.run()
    assert scene.at_provider() == [body("ed")] and status["sshKeys"][0]["id"] == "9" and status["sshKeys"][0]["addedBy"] == "Operator"


def test_a_hand_added_key_an_earlier_version_adopted_survives_rotation_and_disconnect() -> None:
    """status.sshKey of an earlier version names the user's own key (adopted: the user's title): the migration to
    status.sshKeys records it as the user's, so neither a rotation nor the connect page's Disconnect removes it."""
    scene = Scene()
    scene.workspace("ws-1", "ed")
    assert scene.provider is not None
    scene.provider.keys.append({"id": 7, "title": "my laptop", "key": body("ed")})
    scene.kube.edit(UT_PATH, {"status": {"sshKey": {"id": "7", "title": "my laptop", "fingerprint": fp("ed")}}})
    status = scene.run()
    assert [(k["id"], k["addedBy"]) for k in status["sshKeys"]] == [("7", "User")]
    scene.kube.put(SECRETS, workspace_secret("ws-1", "rsa"))  # the workspace's key is rotated
    status = scene.run()
    assert scene.at_provider() == sorted([body("ed"), body("rsa")])  # the new one uploaded, the user's kept
    assert [k["addedBy"] for k in status["sshKeys"]] == ["Operator"]
    assert asyncio.run(scene.controller.disconnect(NS, "gl", "alice")).ok
    assert scene.at_provider() == [body("ed")]  # the operator's upload removed, the user's key never


def test_an_earlier_versions_own_upload_is_still_removed_on_rotation() -> None:
    scene = Scene()
    scene.workspace("ws-1", "ed")
    assert scene.provider is not None
    title = f"{c.OPERATOR_NAME} {NS}/alice"
    scene.provider.keys.append({"id": 7, "title": title, "key": body("ed")})
    scene.kube.edit(UT_PATH, {"status": {"sshKey": {"id": "7", "title": title, "fingerprint": fp("ed")}}})
    scene.kube.put(SECRETS, workspace_secret("ws-1", "rsa"))
    status = scene.run()
    assert scene.at_provider() == [body("rsa")] and [k["addedBy"] for k in status["sshKeys"]] == ["Operator"]


def test_with_status_ssh_keys_full_the_removals_come_first_and_the_upload_follows() -> None:
    scene = Scene()
    scene.workspace("ws-1", "ed")
    old = [{"id": str(i), "title": f"{c.OPERATOR_NAME} {NS}/alice", "fingerprint": f"SHA256:old{i}", "addedBy": "Operator"}
           for i in range(policy.MAX_RECORDED_KEYS)]
    scene.kube.edit(UT_PATH, {"status": {"sshKeys": old}})
    status = scene.run()  # the removals (404: already gone) make room; the upload waits for the next pass
    assert scene.at_provider() == [] and "sshKeys" not in status
    cond = scene.condition()
    assert (cond["status"], cond["reason"]) == ("False", "UploadPending") and fp("ed") in cond["message"]
    status = scene.run()
    assert scene.at_provider() == [body("ed")] and scene.condition()["reason"] == "Uploaded"


def test_more_keys_than_the_cap_are_reported_not_uploaded() -> None:
    scene = Scene()
    for i, key in enumerate(("ed", "ec", "rsa", "ed2", "ed3", "ed4")):
        scene.workspace(f"ws-{i}", key, created=f"2026-11-0{i + 1}T00:00:00Z")
    status = scene.run()
    assert len(scene.at_provider()) == policy.MAX_UPLOADED_KEYS and body("ed4") not in scene.at_provider()
    assert len(status["sshKeys"]) == policy.MAX_UPLOADED_KEYS
    cond = scene.condition()
    assert (cond["status"], cond["reason"]) == ("False", "TooManyKeys") and fp("ed4") in cond["message"]


def test_a_secret_labelled_for_the_user_but_controlled_by_another_users_workspace_secret_is_not_read() -> None:
    scene = Scene()
    scene.kube.put(WS_PATH, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND,
                             "metadata": {"name": "bob-ws", "namespace": NS, "uid": "uid-bob-ws"},
                             "spec": {"user": "bob", "workspaceRef": {"kind": "Pod", "name": "p"}}})
    scene.kube.put(SECRETS, workspace_secret("bob-ws", "rsa"))  # labelled alice, controlled by bob's WorkspaceSecret
    scene.kube.put(SECRETS, workspace_secret("ghost", "ec"))  # labelled alice, controlled by no existing WorkspaceSecret
    scene.run()
    assert scene.at_provider() == [] and scene.condition()["reason"] == "UserKeyNotFound"
