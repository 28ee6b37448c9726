"""Credentials follow the workspace's life and reach it as files (issue 17, parts 3 and 4), on the real API
server and kube-controller-manager, with AWS IAM in moto's server mode (which checks keys).

- lifecycle WhileRunning (the default): no pod of the workspace, no credential; a labelled pod starts -> minted
  within seconds; the pod goes -> revoked at the provider and removed from the Secret. WhileExists: unaffected.
- delivery Files (the default): the env vars only name files (AWS_SHARED_CREDENTIALS_FILE), never a value.
- delivery Env into a Deployment: a rotation stamps the pod template (workspace-secrets.io/restartedAt), the
  controller-manager rolls a new ReplicaSet, and the old key stays valid past its overlap for as long as the
  rollout has not finished. There is no node here, so the new pod never becomes available: the rollout is
  finished by scaling the Deployment to zero (the controller-manager then reports it complete), after which
  the old key is revoked. That a restarted pod on a node sees the new value in its env is the real node's
  proof (test_real_node.py), not this file's.
"""

from __future__ import annotations

import configparser
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from helpers import Api, digest, wait_for
from test_credentials import aws_identity

from workspace_secrets.api import constants as c

#: The issue: "within seconds" of the pod appearing or going.
FOLLOWS_WITHIN = 20


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def home_pvc(api: Api, namespace: str, name: str, user: str) -> None:
    """The workspace anchor the README recommends: the user's home volume (it never binds here: no storage)."""
    api.core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": name, "labels": {c.LABEL_USER: user}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})


def workspace_pod(api: Api, namespace: str, name: str, ws: str, user: str) -> None:
    api.create_pod(namespace, name, labels={c.LABEL_WORKSPACE_SECRET: ws}, user=user)


def entries(api: Api, namespace: str, name: str) -> dict[str, dict]:
    return {e["name"]: e for e in (api.get_ws(namespace, name) or {}).get("status", {}).get("credentials") or ()}


class AwsKey:
    """A delivered AWS key pair. Its repr is a digest, and it is used only through methods, so a failing
    assertion (pytest shows operands and call arguments) never prints the secret."""

    def __init__(self, key_id: str, secret: str) -> None:
        self.id, self._secret = key_id, secret

    def __repr__(self) -> str:
        return f"AwsKey({digest(self.id.encode())})"

    @property
    def id_digest(self) -> str:
        return digest(self.id.encode())

    def identity(self, moto) -> str:
        """What moto makes of the key: the caller's ARN, or the error code."""
        return aws_identity(moto, self.id, self._secret)

    def found_in(self, text: str) -> bool:
        return self._secret in text


def aws_keys(data: dict[str, bytes]) -> AwsKey | None:
    if "aws.credentials" not in data:
        return None
    parser = configparser.ConfigParser()
    parser.read_string(data["aws.credentials"].decode())
    return AwsKey(parser["default"]["aws_access_key_id"], parser["default"]["aws_secret_access_key"])


def env_key(data: dict[str, bytes]) -> AwsKey:
    """The key delivered as env values (delivery Env)."""
    return AwsKey(data["aws.AWS_ACCESS_KEY_ID"].decode(), data["aws.AWS_SECRET_ACCESS_KEY"].decode())


def identity_from_files(moto, data: dict[str, bytes], scratch, monkeypatch) -> str:
    """What the AWS SDK itself makes of the delivered files (AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE as in
    the pod's env; nothing else): the caller's ARN, or the error code."""
    (scratch / "credentials").write_bytes(data["aws.credentials"])
    (scratch / "config").write_bytes(data["aws.config"])
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(scratch / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(scratch / "config"))
    try:
        return boto3.Session().client("sts", endpoint_url=moto.url).get_caller_identity()["Arn"]
    except ClientError as exc:
        return exc.response["Error"]["Code"]


def test_while_running_credentials_follow_the_workspace_pods(api, namespace, wso_operator, credential_backends, tmp_path, monkeypatch):
    moto = credential_backends.moto
    api.core.create_namespaced_service_account(namespace, {"metadata": {"name": "ci-life"}})
    home_pvc(api, namespace, "home-lena", "lena")
    api.create_ws(namespace, "lena", {"user": "lena", "workspaceRef": {"kind": "PersistentVolumeClaim", "name": "home-lena"},
                                      "credentials": [
                                          {"name": "aws", "provider": "aws-dev"},  # WhileRunning, Files: the defaults
                                          {"name": "kube", "provider": "cluster-tokens", "lifecycle": "WhileExists",
                                           "parameters": {"serviceAccount": "ci-life"}}]})
    # No pod: the AWS key is not minted; the WhileExists token is.
    wait_for(lambda: entries(api, namespace, "lena").get("aws", {}).get("phase") == "Stopped", timeout=30, what="aws Stopped")
    assert entries(api, namespace, "lena")["kube"]["phase"] == "Active"
    token_id = entries(api, namespace, "lena")["kube"]["id"]
    data = api.secret_data(namespace, "lena")
    assert aws_keys(data) is None and "aws.AWS_SECRET_ACCESS_KEY" not in data and "kube.token" in data
    cond = api.condition(namespace, "lena", c.CONDITION_CREDENTIALS_READY)
    assert cond["status"] == "True" and "not running: aws (lifecycle WhileRunning) revoked" in cond["message"]
    admin = moto.admin()
    before = {u["UserName"] for u in admin.list_users(PathPrefix="/workspace-secrets/")["Users"]}

    # The workspace starts: a pod labelled with the WorkspaceSecret and its user.
    started = time.monotonic()
    workspace_pod(api, namespace, "lena-1", "lena", "lena")
    wait_for(lambda: aws_keys(api.secret_data(namespace, "lena") or {}) is not None, timeout=FOLLOWS_WITHIN, what="AWS key minted on start")
    minted_after = time.monotonic() - started
    data = api.secret_data(namespace, "lena")
    key = aws_keys(data)
    assert key is not None
    sdk_identity = identity_from_files(moto, data, tmp_path, monkeypatch)  # outside the assert: `data` holds the secret
    assert sdk_identity.startswith("arn:"), "the SDK authenticates with the delivered files"
    assert data["aws.AWS_SHARED_CREDENTIALS_FILE"].decode() == f"{c.DEFAULT_MOUNT_PATH}/aws.credentials"
    assert "region = us-east-1" in data["aws.config"].decode()
    status = api.get_ws(namespace, "lena")["status"]
    env = {e["name"]: e["key"] for e in status["env"]}
    # delivery Files: env vars name files (or carry the region, which never rotates) -- never the rotating key.
    assert {"AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_REGION", "KUBECONFIG"} <= set(env)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "AWS_ACCESS_KEY_ID" not in env
    in_status = key.found_in(str(status))  # outside the assert: a failure must not print the status holding it
    assert entries(api, namespace, "lena")["aws"]["phase"] == "Active"
    assert not in_status, "the secret access key is in the WorkspaceSecret's status"

    # The workspace stops: the pod goes. The key is revoked at the provider and leaves the Secret.
    stopped = time.monotonic()
    api.core.delete_namespaced_pod("lena-1", namespace, grace_period_seconds=0)
    wait_for(lambda: key.identity(moto) == "InvalidClientTokenId", timeout=FOLLOWS_WITHIN, what="AWS key revoked on stop")
    revoked_after = time.monotonic() - stopped
    wait_for(lambda: aws_keys(api.secret_data(namespace, "lena") or {}) is None, timeout=10, what="AWS key gone from the Secret")
    wait_for(lambda: entries(api, namespace, "lena")["aws"]["phase"] == "Stopped", timeout=10, what="aws Stopped again")
    data = api.secret_data(namespace, "lena")
    assert not [k for k in data if k.startswith("aws.AWS_") and k != "aws.AWS_SHARED_CREDENTIALS_FILE" and k != "aws.AWS_CONFIG_FILE"]
    assert {u["UserName"] for u in admin.list_users(PathPrefix="/workspace-secrets/")["Users"]} == before, "the IAM user is released"
    api.wait_event(namespace, "lena", "CredentialRevoked")
    # WhileExists: the token lived through it all.
    assert entries(api, namespace, "lena")["kube"]["id"] == token_id and "kube.token" in data

    # It starts again: a new key (generation 2), which works.
    workspace_pod(api, namespace, "lena-2", "lena", "lena")
    wait_for(lambda: aws_keys(api.secret_data(namespace, "lena") or {}) is not None, timeout=FOLLOWS_WITHIN, what="minted on restart")
    again = aws_keys(api.secret_data(namespace, "lena"))
    assert again is not None and again.id_digest != key.id_digest and again.identity(moto).startswith("arn:")
    assert entries(api, namespace, "lena")["aws"]["generation"] == 2
    print(f"minted {minted_after:.1f}s after the pod appeared, revoked {revoked_after:.1f}s after it went")


def test_env_delivery_restarts_the_deployment_and_revokes_only_after_the_rollout(api, namespace, wso_operator, credential_backends):
    moto = credential_backends.moto
    api.create_deployment(namespace, "vic-workspace", labels={c.LABEL_WORKSPACE_SECRET: "vic"}, user="vic")
    api.create_ws(namespace, "vic", {"user": "vic", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "vic-workspace"},
                                     "credentials": [{"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists",
                                                      "delivery": "Env", "rotateAfter": "15s", "overlap": "5s"}]})
    wait_for(lambda: "aws.AWS_ACCESS_KEY_ID" in (api.secret_data(namespace, "vic") or {}), timeout=30, what="first key")
    old = env_key(api.secret_data(namespace, "vic"))
    env = {e["name"] for e in api.get_ws(namespace, "vic")["status"]["env"]}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SHARED_CREDENTIALS_FILE"} <= env  # delivery Env: values too

    def template_stamp() -> str | None:
        template = api.apps.read_namespaced_deployment("vic-workspace", namespace).spec.template
        return (template.metadata.annotations or {}).get(c.ANNOTATION_RESTARTED_AT)

    assert template_stamp() is None  # the first key needs no restart
    wait_for(lambda: env_key(api.secret_data(namespace, "vic")).id_digest != old.id_digest, timeout=40, what="rotated")
    rotated_at = time.monotonic()
    # One rotation is enough here: stop rotating (the retiring key keeps waiting for its rollout).
    api.patch_ws(namespace, "vic", {"spec": {"credentials": [{"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists",
                                                               "delivery": "Env", "overlap": "5s"}]}})
    wait_for(template_stamp, timeout=FOLLOWS_WITHIN, what="pod template stamped")
    # The Event is posted after the stamp (with the reconcile's other Events): wait for it, do not race it.
    api.wait_event(namespace, "vic", "WorkspaceRestarted")
    # The controller-manager rolls: a new ReplicaSet for the stamped template.
    wait_for(lambda: any((rs.spec.template.metadata.annotations or {}).get(c.ANNOTATION_RESTARTED_AT)
                         for rs in api.apps.list_namespaced_replica_set(namespace).items), timeout=30, what="new ReplicaSet")

    # Past the overlap (5 s) by far: without a node the new pod never becomes available, the rollout is not
    # finished, and the old key -- still in the old pod's env -- stays valid.
    time.sleep(max(0.0, 20 - (time.monotonic() - rotated_at)))
    deployment = api.apps.read_namespaced_deployment("vic-workspace", namespace)
    assert not deployment.status.available_replicas
    assert old.identity(moto).startswith("arn:"), "revoked before the rollout finished"
    assert entries(api, namespace, "vic")["aws"]["retiring"] == [old.id]  # the access key id: public, in the status

    # The rollout finishes (scaled to zero: no pod holds the old value; the controller-manager reports it).
    api.apps.patch_namespaced_deployment_scale("vic-workspace", namespace, {"spec": {"replicas": 0}})
    # No watch on Deployments: the operator looks again with backoff (10 s, then as long as it already waited).
    wait_for(lambda: old.identity(moto) == "InvalidClientTokenId", timeout=90, what="old key revoked after the rollout")
    assert env_key(api.secret_data(namespace, "vic")).identity(moto).startswith("arn:")


def test_env_delivery_into_a_pod_workspace_says_env_cannot_follow(api, namespace, wso_operator, credential_backends):
    api.create_ws(namespace, "pia", {"user": "pia", "workspaceRef": {"kind": "Pod", "name": "pia-pod"},
                                     "credentials": [{"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists", "delivery": "Env"}]})
    cond = api.wait_condition(namespace, "pia", type_=c.CONDITION_CREDENTIALS_READY)
    assert "delivery Env into a Pod workspace: the env values of aws cannot follow a rotation" in cond["message"]


def test_attack_a_tenant_cannot_make_the_operator_restart_another_users_deployment(cluster, api, namespace, wso_operator,
                                                                                    credential_backends):
    """alice (impersonated, with the shipped workspace-secrets-user role and admission policies) writes a
    WorkspaceSecret of hers whose workspaceRef is bob's Deployment, with a fast-rotating delivery Env credential:
    the operator must never stamp (restart) bob's pods. Proves it can tell: vic's own Deployment is restarted
    (test_env_delivery_restarts_the_deployment_and_revokes_only_after_the_rollout)."""
    from attack_support import Tenant, installed_policies, ws_manifest

    api.create_deployment(namespace, "bob-workspace", labels={c.LABEL_WORKSPACE_SECRET: "bob-ws"}, user="bob")
    before = api.apps.read_namespaced_deployment("bob-workspace", namespace)
    tenant = Tenant(cluster, namespace)
    with installed_policies(cluster, tenant, ("alice", "bob")):
        manifest = ws_manifest("alice-env", "alice", workspace="bob-workspace", kind="Deployment", credentials=[
            {"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists", "delivery": "Env", "rotateAfter": "8s", "overlap": "2s"}])
        manifest["spec"]["workspaceRef"]["apiVersion"] = "apps/v1"
        assert tenant.create(manifest, user="alice").check()
        wait_for(lambda: "aws.AWS_ACCESS_KEY_ID" in (api.secret_data(namespace, "alice-env") or {}), timeout=30, what="alice's key")
        first = api.secret_data(namespace, "alice-env")["aws.AWS_ACCESS_KEY_ID"]
        wait_for(lambda: api.secret_data(namespace, "alice-env")["aws.AWS_ACCESS_KEY_ID"] != first, timeout=30, what="alice's key rotated")
        time.sleep(5)  # what a restart would need to land
    after = api.apps.read_namespaced_deployment("bob-workspace", namespace)
    assert c.ANNOTATION_RESTARTED_AT not in (after.spec.template.metadata.annotations or {})
    assert after.metadata.generation == before.metadata.generation, "bob's Deployment was changed"
    assert "WorkspaceRestarted" not in {e.reason for e in api.events_for(namespace, "alice-env")}
    assert api.condition(namespace, "alice-env", c.CONDITION_WORKSPACE_BOUND)["status"] == "False"
