"""Dynamic credentials on the real control plane: Kubernetes ServiceAccount tokens (the API server itself)
and AWS IAM access keys (moto's real server mode, which checks keys)."""

from __future__ import annotations

import signal
import time

import pytest
import yaml
from botocore.exceptions import ClientError
from helpers import Api, wait_for
from kubernetes import client as k8s

from workspace_secrets.api import constants as c


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def ref() -> dict:
    return {"kind": "Pod", "name": "not-yet"}


def whoami(cluster, token: str) -> int | str:
    """Authenticate to the API server with a token: the username, or the HTTP status when refused."""
    base = k8s_config_for(cluster)
    base.api_key = {"BearerToken": f"Bearer {token}", "authorization": f"Bearer {token}"}
    base.cert_file = base.key_file = None
    with k8s.ApiClient(base) as api_client:
        try:
            review = k8s.AuthenticationV1Api(api_client).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
            return review.status.user_info.username
        except k8s.ApiException as exc:
            return exc.status


def k8s_config_for(cluster) -> k8s.Configuration:
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration, persist_config=False)
    return configuration


def aws_identity(moto, key_id: str, secret: str) -> str:
    """sts:GetCallerIdentity with the key: the ARN, or the error code when moto refuses it."""
    try:
        return moto.client("sts", key_id, secret).get_caller_identity()["Arn"]
    except ClientError as exc:
        return exc.response["Error"]["Code"]


def test_kubernetes_token_works_while_the_workspace_lives_and_dies_with_it(api, cluster, namespace, wso_operator):
    api.core.create_namespaced_service_account(namespace, {"metadata": {"name": "ci-bot"}})
    api.create_ws(namespace, "tok", {"user": "alice", "workspaceRef": ref(), "credentials": [
        {"name": "kube", "provider": "cluster-tokens", "lifecycle": "WhileExists", "parameters": {"serviceAccount": "ci-bot", "expirationSeconds": "3600"}}]})
    api.wait_condition(namespace, "tok")
    status = api.get_ws(namespace, "tok")["status"]
    entry = status["credentials"][0]
    assert entry["provider"] == "cluster-tokens" and entry["id"] and entry["expiresAt"]
    token = api.secret_data(namespace, "tok")["kube.token"].decode()
    assert whoami(cluster, token) == f"system:serviceaccount:{namespace}:ci-bot"
    assert token not in str(status)
    # delivery Files: KUBECONFIG names a kubeconfig whose user reads the token file (it holds no token itself).
    kubeconfig = yaml.safe_load(api.secret_data(namespace, "tok")["kube.kubeconfig"])
    assert kubeconfig["users"][0]["user"] == {"tokenFile": f"{c.DEFAULT_MOUNT_PATH}/kube.token"}
    assert kubeconfig["contexts"][0]["context"]["namespace"] == namespace and token not in str(kubeconfig)
    assert {e["name"]: e["key"] for e in status["env"]}["KUBECONFIG"] == "kube.KUBECONFIG"
    api.wait_event(namespace, "tok", "CredentialIssued")

    api.delete_ws(namespace, "tok")
    wait_for(lambda: api.get_ws(namespace, "tok") is None, timeout=60, what="WorkspaceSecret gone")
    wait_for(lambda: whoami(cluster, token) == 401, timeout=30, what="token refused after deletion")


def test_policy_violations_are_conditions(api, namespace, wso_operator):
    api.create_ws(namespace, "denied", {"user": "alice", "workspaceRef": ref(), "credentials": [
        {"name": "kube", "provider": "cluster-tokens", "parameters": {"serviceAccount": "admin"}}]})
    cond = api.wait_condition(namespace, "denied", status="False", reason="PolicyViolation")
    assert "spec.credentials[0].parameters" in cond["message"] and "'admin' is not allowed" in cond["message"]
    api.create_ws(namespace, "unknown", {"user": "alice", "workspaceRef": ref(), "credentials": [{"name": "x", "provider": "vault-prod"}]})
    cond = api.wait_condition(namespace, "unknown", status="False", reason="UnknownProvider")
    assert "'vault-prod' is not configured" in cond["message"] and "aws-dev" in cond["message"]
    # The SSH part is still delivered.
    assert api.get_secret(namespace, "unknown") is not None


def test_a_provider_without_an_allow_rule_serves_nobody(api, namespace, wso_operator):
    """Issue 14, instance 10: every provider needs the platform's explicit allow rule; tokens explicit audiences."""
    api.core.create_namespaced_service_account(namespace, {"metadata": {"name": "ci-bot"}})
    api.create_ws(namespace, "nobody", {"user": "alice", "workspaceRef": ref(), "credentials": [
        {"name": "kube", "provider": "unallowed-tokens", "parameters": {"serviceAccount": "ci-bot"}}]})
    cond = api.wait_condition(namespace, "nobody", status="False", type_=c.CONDITION_CREDENTIALS_READY, reason="PolicyViolation")
    assert "provider 'unallowed-tokens' is not allowed for user 'alice'" in cond["message"]
    assert "the platform must add an allow rule" in cond["message"]
    assert not [k for k in api.secret_data(namespace, "nobody") if k.startswith("kube.")]
    api.create_ws(namespace, "aud", {"user": "alice", "workspaceRef": ref(), "credentials": [
        {"name": "kube", "provider": "cluster-tokens", "parameters": {"serviceAccount": "ci-bot", "audiences": "https://evil.example.com"}}]})
    cond = api.wait_condition(namespace, "aud", status="False", reason="PolicyViolation")
    assert "audiences 'https://evil.example.com' are not allowed" in cond["message"]


def test_aws_key_authenticates_until_the_workspace_is_deleted(api, namespace, wso_operator, credential_backends):
    moto = credential_backends.moto
    api.create_ws(namespace, "aws", {"user": "bob", "workspaceRef": ref(), "credentials": [{"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists"}]})
    api.wait_condition(namespace, "aws")
    data = api.secret_data(namespace, "aws")
    key_id, secret = data["aws.AWS_ACCESS_KEY_ID"].decode(), data["aws.AWS_SECRET_ACCESS_KEY"].decode()
    status = api.get_ws(namespace, "aws")["status"]
    assert status["credentials"][0]["id"] == key_id and secret not in str(status)
    arn = aws_identity(moto, key_id, secret)
    assert arn.startswith("arn:aws:iam::") and "/workspace-secrets/" in arn, arn
    iam_user = arn.rsplit("/", 1)[1]  # the workspace's own IAM user, which deletion must remove
    admin = moto.client("iam", moto.admin_key_id, moto.admin_secret)
    assert [u for u in admin.list_users(PathPrefix="/workspace-secrets/")["Users"] if u["UserName"] == iam_user]
    api.delete_ws(namespace, "aws")
    wait_for(lambda: api.get_ws(namespace, "aws") is None, timeout=60, what="WorkspaceSecret gone")
    assert aws_identity(moto, key_id, secret) == "InvalidClientTokenId"
    assert not [u for u in admin.list_users(PathPrefix="/workspace-secrets/")["Users"] if u["UserName"] == iam_user]


def test_aws_rotation_writes_the_new_key_before_revoking_the_old(api, namespace, wso_operator, credential_backends):
    moto = credential_backends.moto
    api.create_ws(namespace, "rot", {"user": "carol", "workspaceRef": ref(), "credentials": [
        {"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists", "rotateAfter": "15s", "overlap": "10s"}]})
    api.wait_condition(namespace, "rot")
    first = api.secret_data(namespace, "rot")
    old = (first["aws.AWS_ACCESS_KEY_ID"].decode(), first["aws.AWS_SECRET_ACCESS_KEY"].decode())
    wait_for(lambda: api.secret_data(namespace, "rot")["aws.AWS_ACCESS_KEY_ID"].decode() != old[0], timeout=40, what="rotated")
    second = api.secret_data(namespace, "rot")
    new = (second["aws.AWS_ACCESS_KEY_ID"].decode(), second["aws.AWS_SECRET_ACCESS_KEY"].decode())
    assert aws_identity(moto, *new).startswith("arn:")
    assert aws_identity(moto, *old).startswith("arn:")  # still valid during the overlap
    status = api.get_ws(namespace, "rot")["status"]["credentials"][0]
    assert status["retiring"] == [old[0]] and status["generation"] == 2
    wait_for(lambda: aws_identity(moto, *old) == "InvalidClientTokenId", timeout=30, what="old key revoked after the overlap")
    assert aws_identity(moto, *new).startswith("arn:")


def test_provider_outage_then_recovery(api, namespace, wso_operator, credential_backends):
    proxy = credential_backends.moto.proxy
    proxy.outage = True
    try:
        api.create_ws(namespace, "outage", {"user": "dave", "workspaceRef": ref(), "credentials": [{"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists"}]})
        cond = api.wait_condition(namespace, "outage", status="False", reason="ProviderError", timeout=60)
        assert "aws-dev" in cond["message"] and "retrying" in cond["message"]
        before = proxy.requests
        time.sleep(5)
        assert proxy.requests - before < 40, "the operator must back off, not hot-loop, during an outage"
    finally:
        proxy.outage = False
    api.wait_condition(namespace, "outage", timeout=60)


def test_kill_between_minting_and_recording_leaks_nothing(api, namespace, wso_operator, credential_backends):
    moto = credential_backends.moto
    admin = moto.client("iam", moto.admin_key_id, moto.admin_secret)
    killed = []

    def kill_after_create(method: str, path: str, body: bytes):
        if b"Action=CreateAccessKey" in body and not killed:
            killed.append(True)
            return lambda: wso_operator.process.process.send_signal(signal.SIGKILL)
        return None

    moto.proxy.on_request = kill_after_create
    try:
        api.create_ws(namespace, "crash", {"user": "erin", "workspaceRef": ref(), "credentials": [{"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists"}]})
        wait_for(lambda: killed and wso_operator.process.process.poll() is not None, timeout=30, what="operator killed after minting")
    finally:
        moto.proxy.on_request = None
    wso_operator.process.start()
    api.wait_condition(namespace, "crash", timeout=60)
    ws = api.get_ws(namespace, "crash")
    user = ws["status"]["credentials"][0]
    recorded = api.secret_data(namespace, "crash")["aws.AWS_ACCESS_KEY_ID"].decode()
    iam_users = admin.list_users(PathPrefix="/workspace-secrets/")["Users"]
    keys = [k["AccessKeyId"] for u in iam_users for k in admin.list_access_keys(UserName=u["UserName"])["AccessKeyMetadata"]
            if _tag(admin, u["UserName"], "workspace-secrets.io/uid") == ws["metadata"]["uid"]]
    assert keys == [recorded] == [user["id"]], "exactly one live key, the recorded one: the orphan was revoked"
    api.wait_event(namespace, "crash", "CredentialRevoked")


def _tag(admin, user: str, key: str) -> str | None:
    tags = admin.list_user_tags(UserName=user)["Tags"]
    return next((t["Value"] for t in tags if t["Key"] == key), None)
