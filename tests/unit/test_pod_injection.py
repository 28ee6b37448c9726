"""The pure pod-injection decision: what a labelled pod gets from its WorkspaceSecret."""

from __future__ import annotations

import copy
import shlex

import pytest
from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.pod_injection import policy as inj
from workspace_secrets.workspace_secret import policy

MOUNT = c.DEFAULT_MOUNT_PATH
GIT = {"name": "GIT_SSH_COMMAND", "valueFrom": {"secretKeyRef": {"name": "alice-secrets", "key": "GIT_SSH_COMMAND"}}}


def ws_body(*, status: dict | None = None, **spec) -> dict:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.WORKSPACE_SECRET_KIND,
        "metadata": {"name": "alice-ws", "namespace": "team", "uid": "u1", "generation": 1},
        "spec": {"user": "alice", "workspaceRef": {"kind": "Deployment", "name": "ws"}, "secretName": "alice-secrets", **spec},
        "status": status if status is not None else {
            "conditions": [{"type": "Ready", "status": "True", "reason": "SecretReady", "message": "ok"}],
            "env": [{"name": "GIT_SSH_COMMAND", "key": "GIT_SSH_COMMAND"}],
        },
    }


SOURCE = inj.mount_source(ws_body())


def pod(*containers: dict, init: tuple[dict, ...] = (), annotations: dict | None = None, volumes: list | None = None,
        security: dict | None = None) -> dict:
    spec: dict = {"containers": list(containers)}
    if init:
        spec["initContainers"] = list(init)
    if volumes is not None:
        spec["volumes"] = volumes
    if security is not None:
        spec["securityContext"] = security
    return {"metadata": {"generateName": "ws-", "namespace": "team",
                         "labels": {c.LABEL_WORKSPACE_SECRET: "alice-ws", c.LABEL_USER: "alice"},
                         "annotations": annotations or {}}, "spec": spec}


def injected(p: dict, source: inj.MountSource = SOURCE) -> tuple[dict, inj.Injection]:
    result = inj.inject(p, source)
    return inj.apply_patch(p, result.patch), result


def mounts(container: dict) -> list[tuple[str, str, bool]]:
    return [(m["name"], m["mountPath"], m.get("readOnly", False)) for m in container.get("volumeMounts", ())]


# --- the happy paths --------------------------------------------------------------------------------
def test_every_container_gets_the_mount_and_env_and_init_containers_do_not():
    original = pod({"name": "workspace"}, {"name": "sidecar", "env": [{"name": "A", "value": "1"}]}, init=({"name": "setup"},))
    after, result = injected(original)
    assert after["spec"]["volumes"] == [{"name": "workspace-secrets", "secret": {"secretName": "alice-secrets", "defaultMode": 0o400}}]
    for container in after["spec"]["containers"]:
        assert mounts(container) == [("workspace-secrets", MOUNT, True)]
        assert GIT in container["env"]
    assert after["spec"]["containers"][1]["env"][0] == {"name": "A", "value": "1"}  # appended, not replaced
    assert "volumeMounts" not in after["spec"]["initContainers"][0] and "env" not in after["spec"]["initContainers"][0]
    assert result.conflicts == [] and result.warnings == []
    assert original == pod({"name": "workspace"}, {"name": "sidecar", "env": [{"name": "A", "value": "1"}]}, init=({"name": "setup"},))


def test_patch_appends_to_existing_lists_and_creates_missing_ones():
    p = pod({"name": "w", "env": [{"name": "A", "value": "1"}], "volumeMounts": [{"name": "home", "mountPath": "/home"}]},
            volumes=[{"name": "home", "emptyDir": {}}])
    result = inj.inject(p, SOURCE)
    assert [(op["op"], op["path"]) for op in result.patch] == [
        ("add", "/spec/volumes/-"), ("add", "/spec/containers/0/volumeMounts/-"), ("add", "/spec/containers/0/env/-"),
    ]
    assert all("value" in op and op["op"] == "add" for op in result.patch)
    fresh = inj.inject(pod({"name": "w"}), SOURCE)
    assert [op["path"] for op in fresh.patch] == ["/spec/volumes", "/spec/containers/0/volumeMounts", "/spec/containers/0/env"]


def test_the_containers_annotation_selects_containers_and_init_containers():
    p = pod({"name": "workspace"}, {"name": "proxy"}, init=({"name": "clone"}, {"name": "other"}),
            annotations={c.ANNOTATION_CONTAINERS: " clone , workspace"})
    after, _ = injected(p)
    spec = after["spec"]
    assert mounts(spec["containers"][0]) == [("workspace-secrets", MOUNT, True)] and GIT in spec["containers"][0]["env"]
    assert mounts(spec["initContainers"][0]) == [("workspace-secrets", MOUNT, True)] and GIT in spec["initContainers"][0]["env"]
    assert "env" not in spec["containers"][1] and "env" not in spec["initContainers"][1]


def test_an_unknown_container_in_the_annotation_is_refused():
    with pytest.raises(inj.Refused, match=r"names 'wrokspace'.*its containers: 'workspace'"):
        inj.inject(pod({"name": "workspace"}, annotations={c.ANNOTATION_CONTAINERS: "wrokspace"}), SOURCE)


def test_fs_group_makes_the_files_group_readable():
    after, result = injected(pod({"name": "w"}, security={"runAsUser": 1000, "fsGroup": 1000}))
    assert after["spec"]["volumes"][0]["secret"]["defaultMode"] == 0o440
    assert result.warnings == []


def test_non_root_without_fs_group_is_warned_about():
    _, result = injected(pod({"name": "w", "securityContext": {"runAsUser": 1000}}))
    assert any("non-root" in w and "fsGroup" in w for w in result.warnings)
    assert result.conflicts == []


def test_status_env_entries_become_secret_key_refs():
    source = inj.mount_source(ws_body(status={"env": [
        {"name": "GIT_SSH_COMMAND", "key": "GIT_SSH_COMMAND"},
        {"name": "TWILIO_API_SECRET", "key": "twilio-api-secret"},
        {"name": "bad name", "key": "x"},
    ]}))
    after, result = injected(pod({"name": "w"}), source)
    env = after["spec"]["containers"][0]["env"]
    assert env == [GIT, {"name": "TWILIO_API_SECRET", "valueFrom": {"secretKeyRef": {"name": "alice-secrets", "key": "twilio-api-secret"}}}]
    assert all("value" not in e for e in env)
    assert any("'bad name'" in w for w in result.warnings)


# --- idempotency and conflicts ------------------------------------------------------------------------
def test_an_already_mutated_pod_is_unchanged():
    p = pod({"name": "a"}, {"name": "b"}, init=({"name": "i"},), annotations={c.ANNOTATION_CONTAINERS: "a,b,i"},
            security={"fsGroup": 2000})
    once, first = injected(p)
    assert first.patch
    again = inj.inject(once, SOURCE)
    assert again.patch == [] and again.conflicts == [] and again.warnings == []
    assert inj.apply_patch(once, again.patch) == once


def test_the_manual_mount_of_the_same_secret_is_recognized():
    """A pod mounting the Secret by hand (examples/workspace-with-ssh-key.yaml) under another volume name."""
    p = pod({"name": "w", "volumeMounts": [{"name": "ssh", "mountPath": MOUNT + "/", "readOnly": True}], "env": [GIT]},
            volumes=[{"name": "ssh", "secret": {"secretName": "alice-secrets", "defaultMode": 0o440}}])
    result = inj.inject(p, SOURCE)
    assert result.patch == [] and result.conflicts == []


def test_a_second_container_reuses_the_existing_secret_volume():
    p = pod({"name": "w", "volumeMounts": [{"name": "ssh", "mountPath": MOUNT}]}, {"name": "x"},
            volumes=[{"name": "ssh", "secret": {"secretName": "alice-secrets"}}])
    after, result = injected(p)
    assert [v["name"] for v in after["spec"]["volumes"]] == ["ssh"]
    assert mounts(after["spec"]["containers"][1]) == [("ssh", MOUNT, True)]
    assert result.conflicts == []


def test_conflicting_env_var_is_kept_and_reported_without_its_value():
    p = pod({"name": "w", "env": [{"name": "GIT_SSH_COMMAND", "value": "ssh -i /home/me/key-literal-value"}]}, {"name": "ok"})
    after, result = injected(p)
    assert after["spec"]["containers"][0]["env"] == [{"name": "GIT_SSH_COMMAND", "value": "ssh -i /home/me/key-literal-value"}]
    assert GIT in after["spec"]["containers"][1]["env"]
    assert len(result.conflicts) == 1 and "'w'" in result.conflicts[0] and "GIT_SSH_COMMAND" in result.conflicts[0]
    assert "key-literal-value" not in " ".join(result.warnings)
    assert result.conflicts[0] in result.warnings
    # The mount is still added: only the env var conflicts.
    assert mounts(after["spec"]["containers"][0]) == [("workspace-secrets", MOUNT, True)]


def test_env_var_from_another_secret_is_a_conflict():
    other = {"name": "GIT_SSH_COMMAND", "valueFrom": {"secretKeyRef": {"name": "someone-else", "key": "GIT_SSH_COMMAND"}}}
    _, result = injected(pod({"name": "w", "env": [other]}))
    assert len(result.conflicts) == 1


def test_conflicting_volume_name_is_kept_and_nothing_is_mounted():
    p = pod({"name": "w"}, volumes=[{"name": "workspace-secrets", "emptyDir": {}}])
    after, result = injected(p)
    assert after["spec"]["volumes"] == [{"name": "workspace-secrets", "emptyDir": {}}]
    assert "volumeMounts" not in after["spec"]["containers"][0]
    assert GIT in after["spec"]["containers"][0]["env"]
    assert len(result.conflicts) == 1 and "volume 'workspace-secrets' already exists" in result.conflicts[0]
    assert inj.inject(after, SOURCE).patch == []  # still idempotent


def test_conflicting_mount_at_the_mount_path_is_kept():
    p = pod({"name": "w", "volumeMounts": [{"name": "scratch", "mountPath": MOUNT}]}, {"name": "x"},
            volumes=[{"name": "scratch", "emptyDir": {}}])
    after, result = injected(p)
    assert mounts(after["spec"]["containers"][0]) == [("scratch", MOUNT, False)]
    assert mounts(after["spec"]["containers"][1]) == [("workspace-secrets", MOUNT, True)]
    assert len(result.conflicts) == 1 and "'scratch'" in result.conflicts[0]


def test_a_secret_volume_with_items_is_not_the_layout_git_ssh_command_expects():
    p = pod({"name": "w", "volumeMounts": [{"name": "ssh", "mountPath": MOUNT}]},
            volumes=[{"name": "ssh", "secret": {"secretName": "alice-secrets", "items": [{"key": "ssh-privatekey", "path": "id"}]}}])
    _, result = injected(p)
    assert len(result.conflicts) == 1


# --- the mount path -----------------------------------------------------------------------------------
def test_mount_path_comes_from_the_workspace_secret():
    source = inj.mount_source(ws_body(mountPath="/srv/ws"))
    after, _ = injected(pod({"name": "w"}, annotations={c.ANNOTATION_MOUNT_PATH: "/srv/ws/"}), source)
    assert mounts(after["spec"]["containers"][0]) == [("workspace-secrets", "/srv/ws", True)]


def test_a_mount_path_annotation_that_disagrees_is_refused():
    with pytest.raises(inj.Refused, match=r"differs from spec.mountPath '/var/run/workspace-secrets'.*Set spec.mountPath to '/other'"):
        inj.inject(pod({"name": "w"}, annotations={c.ANNOTATION_MOUNT_PATH: "/other"}), SOURCE)


def test_mounted_files_are_where_git_ssh_command_looks():
    """The Secret's GIT_SSH_COMMAND names files under spec.mountPath; the volume has every key as a file there."""
    for mount_path in (c.DEFAULT_MOUNT_PATH, "/home/coder/.workspace-secrets"):
        body = ws_body(mountPath=mount_path)
        ws = WorkspaceSecret.from_body(body)
        after, _ = injected(pod({"name": "w"}), inj.mount_source(body))
        volume = after["spec"]["volumes"][0]
        mount = after["spec"]["containers"][0]["volumeMounts"][0]
        assert "items" not in volume["secret"] and mount.get("subPath") is None
        files = {f"{mount['mountPath']}/{key}" for key in (c.KEY_SSH_PRIVATE, c.KEY_SSH_PUBLIC, c.KEY_KNOWN_HOSTS, c.KEY_GIT_SSH_COMMAND)}
        argv = shlex.split(policy.git_ssh_command(ws.mount_path, ws.ssh.host_key_policy))
        identity = argv[argv.index("-i") + 1]
        known_hosts = next(a.split("=", 1)[1] for a in argv if a.startswith("UserKnownHostsFile="))
        assert {identity, known_hosts} <= files


# --- the WorkspaceSecret --------------------------------------------------------------------------------
def test_a_workspace_secret_not_ready_yet_is_usable_with_a_warning():
    source = inj.mount_source(ws_body(status={}))
    assert source.secret_name == "alice-secrets" and source.env == inj.DEFAULT_ENV
    assert len(source.notes) == 1 and "not Ready" in source.notes[0]
    after, result = injected(pod({"name": "w"}), source)
    assert GIT in after["spec"]["containers"][0]["env"] and result.warnings == list(source.notes) and result.conflicts == []


def test_secret_name_defaults_to_the_workspace_secret_name():
    body = ws_body()
    del body["spec"]["secretName"]
    assert inj.mount_source(body).secret_name == "alice-ws"


@pytest.mark.parametrize("reason", ["SecretConflict", "InvalidSpec"])
def test_a_workspace_secret_whose_secret_is_not_its_own_is_refused(reason):
    status = {"conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": "Secret 'alice-secrets' already exists"}]}
    with pytest.raises(inj.Refused, match=reason):
        inj.mount_source(ws_body(status=status))


def test_a_key_problem_is_only_a_warning():
    status = {"conditions": [{"type": "Ready", "status": "False", "reason": "ExistingKeyNotFound", "message": "create it"}]}
    source = inj.mount_source(ws_body(status=status))
    assert "ExistingKeyNotFound" in source.notes[0]


def test_a_workspace_secret_being_deleted_or_invalid_is_refused():
    body = ws_body()
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    with pytest.raises(inj.Refused, match="being deleted"):
        inj.mount_source(body)
    broken = ws_body()
    del broken["spec"]["user"]
    with pytest.raises(inj.Refused, match="spec.user"):
        inj.mount_source(broken)


def test_the_missing_message_names_the_label_and_namespace():
    message = inj.missing_message("nope", "team")
    assert c.LABEL_WORKSPACE_SECRET in message and "'nope'" in message and "'team'" in message


def test_requested_workspace_secret_and_pod_name():
    assert inj.requested_workspace_secret(pod({"name": "w"})) == "alice-ws"
    assert inj.requested_workspace_secret({"metadata": {"labels": {"app": "x"}}}) is None
    assert inj.pod_name(pod({"name": "w"})) == "ws-<generated>"


def test_the_controller_publishes_the_env_contract():
    ws = WorkspaceSecret.from_body(ws_body())
    assert policy.published_env(ws) == [{"name": "GIT_SSH_COMMAND", "key": "GIT_SSH_COMMAND"}]
    bindings, notes = inj.env_bindings({"env": policy.published_env(ws)})
    assert bindings == inj.DEFAULT_ENV and notes == []


def test_apply_patch_leaves_the_input_alone():
    p = pod({"name": "w"})
    snapshot = copy.deepcopy(p)
    inj.apply_patch(p, inj.inject(p, SOURCE).patch)
    assert p == snapshot
    with pytest.raises(ValueError):
        inj.apply_patch(p, [{"op": "remove", "path": "/spec"}])


# --- the admission controller, with stand-ins for the API server ----------------------------------------
class FakeEvents:
    def __init__(self) -> None:
        self.posted: list[tuple[str, str, str]] = []

    async def warning(self, obj, reason, message):
        self.posted.append((obj["metadata"]["name"], reason, message))


def admit(objects, p, *, namespaces=(), dry_run=False):
    import asyncio

    from workspace_secrets.pod_injection.controller import PodInjectionController

    kube, events = FakeKube(), FakeEvents()
    for name, body in objects.items():
        kube.put(f"/apis/{c.API_VERSION}/namespaces/team/{c.WORKSPACE_SECRET_PLURAL}/{name}", body)
    result = asyncio.run(PodInjectionController(kube, events, namespaces=namespaces).admit(p, namespace="team", dry_run=dry_run))  # type: ignore[arg-type]
    return result, events.posted, kube.requests("GET")


def test_admission_posts_an_event_for_conflicts_but_not_on_a_dry_run():
    conflicting = pod({"name": "w", "env": [{"name": "GIT_SSH_COMMAND", "value": "x"}]})
    result, events, paths = admit({"alice-ws": ws_body()}, conflicting)
    assert paths == [f"/apis/{c.API_VERSION}/namespaces/team/{c.WORKSPACE_SECRET_PLURAL}/alice-ws"]
    assert [(name, reason) for name, reason, _ in events] == [("alice-ws", c.EVENT_POD_INJECTION_CONFLICT)]
    assert "'ws-<generated>'" in events[0][2] and result.patch  # the mount is still added
    _, events, _ = admit({"alice-ws": ws_body()}, conflicting, dry_run=True)
    assert events == []


def test_admission_refuses_a_missing_workspace_secret_and_skips_unserved_namespaces():
    with pytest.raises(inj.Refused, match="does not exist in namespace 'team'"):
        admit({}, pod({"name": "w"}))
    result, events, paths = admit({"alice-ws": ws_body()}, pod({"name": "w"}), namespaces=("other",))
    assert result.patch == [] and paths == [] and events == [] and "did not inject" in result.warnings[0]


def test_user_secret_files_get_their_own_volume_with_items_at_the_declared_paths():
    from workspace_secrets.pod_injection.policy import FileBinding, MountSource, apply_patch, inject

    source = MountSource(workspace_secret="ws", secret_name="ws", mount_path="/var/run/workspace-secrets",
                         files=(FileBinding("user.npm.npmrc", ".npmrc", 0o600),), files_mount_path="/var/run/workspace-secrets-user", user="alice")
    pod = {"metadata": {"name": "p", "labels": {c.LABEL_USER: "alice"}}, "spec": {"containers": [{"name": "main"}]}}
    injection = inject(pod, source)
    mutated = apply_patch(pod, injection.patch)
    volume = next(v for v in mutated["spec"]["volumes"] if v["name"] == "workspace-secrets-user-files")
    assert volume["secret"]["items"] == [{"key": "user.npm.npmrc", "path": ".npmrc", "mode": 0o600}]
    mounts = {m["mountPath"]: m for m in mutated["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/var/run/workspace-secrets-user"]["readOnly"] is True
    assert inject(mutated, source).patch == []  # idempotent


# --- whose pod (issue 14, instance 5) ----------------------------------------------------------------
@pytest.mark.parametrize("labels,found", [({}, "is missing"), ({c.LABEL_USER: "bob"}, "is 'bob'"), ({c.LABEL_USER: ""}, "is ''")])
def test_a_pod_of_another_user_or_of_nobody_is_refused(labels, found):
    p = pod({"name": "w"})
    p["metadata"]["labels"] = {c.LABEL_WORKSPACE_SECRET: "alice-ws", **labels}
    with pytest.raises(inj.Refused) as info:
        inj.inject(p, SOURCE)
    message = str(info.value)
    assert f"label {c.LABEL_USER} {found}" in message and "belongs to user 'alice'" in message
    assert f"{c.LABEL_USER}=alice" in message


def test_the_users_own_pod_is_injected():
    assert SOURCE.user == "alice"
    assert inj.inject(pod({"name": "w"}), SOURCE).patch


def test_a_workspace_secret_at_a_reserved_name_is_never_mounted():
    with pytest.raises(inj.Refused, match="reserved"):
        inj.mount_source(ws_body(secretName="ssh-bob-ed25519-0123abcd"))


@pytest.mark.parametrize("field", ["mountPath", "userSecrets"])
@pytest.mark.parametrize("path", ["/etc/profile.d", "/root", "/home/bob", "/usr/local/bin", "/lib64/x", "/x", "/a/../b", "/a//b", "/a/b/"])
def test_a_workspace_secret_with_a_dangerous_mount_path_is_refused(field, path):
    spec = {"mountPath": path} if field == "mountPath" else {"userSecrets": {"mountPath": path}}
    with pytest.raises(inj.Refused, match="invalid spec"):
        inj.mount_source(ws_body(**spec))


def test_admission_refuses_a_pod_of_another_user_after_the_workspace_secret_was_re_created():
    """bob's workspace pod names 'alice-ws'; whoever re-created it with spec.user alice gets nothing into it."""
    bobs = pod({"name": "w"})
    bobs["metadata"]["labels"][c.LABEL_USER] = "bob"
    with pytest.raises(inj.Refused, match="belongs to user 'alice'"):
        admit({"alice-ws": ws_body()}, bobs)
