"""The aws-iam provider against moto's IAM and STS in-process (mock_aws), with moto's request authentication
switched on: a minted key is proven by signing requests with it, a revoked one by being refused."""

from __future__ import annotations

import asyncio
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws
from moto.core import set_initial_no_auth_action_count

from workspace_secrets.credentials.providers import registry
from workspace_secrets.credentials.providers.aws_iam import USER_PATH, AwsIamProvider
from workspace_secrets.credentials.providers.base import ProviderError, Scope
from workspace_secrets.runtime.sensitive import Sensitive

SCOPE = Scope.of("team-a", "alice-ws", "0d1e2f3a", "aws")
OTHER = Scope.of("team-a", "bob-ws", "4b5c6d7e", "aws")
REGION = "eu-west-1"
#: Actions moto answers without authentication before it starts checking signatures: the admin's setup below.
SETUP_ACTIONS = 3


def run(coro):
    return asyncio.run(coro)


def admin_credentials() -> dict[str, Sensitive]:
    """The platform's admin key (an IAM user allowed everything), made while moto does not check requests yet."""
    root = boto3.client("iam", region_name="us-east-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="unused")
    root.create_user(UserName="platform-admin")
    root.put_user_policy(UserName="platform-admin", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = root.create_access_key(UserName="platform-admin")["AccessKey"]
    return {"AWS_ACCESS_KEY_ID": Sensitive(key["AccessKeyId"]), "AWS_SECRET_ACCESS_KEY": Sensitive(key["SecretAccessKey"])}


def admin_iam(admin: dict[str, Sensitive]):
    return boto3.client("iam", region_name="us-east-1", aws_access_key_id=admin["AWS_ACCESS_KEY_ID"].reveal_text(),
                        aws_secret_access_key=admin["AWS_SECRET_ACCESS_KEY"].reveal_text())


def identity(key_id: str, secret: str) -> str:
    """sts:GetCallerIdentity signed with the key: its ARN, or the error code when it is refused."""
    sts = boto3.client("sts", region_name="us-east-1", aws_access_key_id=key_id, aws_secret_access_key=secret)
    try:
        return sts.get_caller_identity()["Arn"]
    except ClientError as exc:
        return exc.response["Error"]["Code"]


def provider(admin: dict[str, Sensitive], **config) -> AwsIamProvider:
    return registry.build("aws", "aws-iam", {"region": REGION, **config}, admin, None)


@set_initial_no_auth_action_count(SETUP_ACTIONS)
@mock_aws
def test_an_issued_key_authenticates_as_the_scopes_user_until_it_is_revoked():
    admin = admin_credentials()
    iam = admin_iam(admin)
    policy_arn = iam.create_policy(PolicyName="workspace-read", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))["Policy"]["Arn"]
    aws = provider(admin, policyArns=[policy_arn])

    issued = run(aws.issue(SCOPE, {}, 1))
    key_id, secret = issued.values["AWS_ACCESS_KEY_ID"].reveal_text(), issued.values["AWS_SECRET_ACCESS_KEY"].reveal_text()
    assert issued.id == key_id
    assert issued.values["AWS_REGION"].reveal_text() == REGION
    assert identity(key_id, secret) == f"arn:aws:iam::123456789012:user{USER_PATH}{SCOPE.tag}"

    # The user carries the workspace's identity (how the orphan sweep and a human find where it came from)
    # and the platform's policies.
    user = iam.get_user(UserName=SCOPE.tag)["User"]
    assert user["Path"] == USER_PATH
    tags = {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName=SCOPE.tag)["Tags"]}
    assert tags == {"workspace-secrets.io/namespace": "team-a", "workspace-secrets.io/workspace": "alice-ws",
                    "workspace-secrets.io/uid": "0d1e2f3a", "workspace-secrets.io/entry": "aws"}
    assert [p["PolicyArn"] for p in iam.list_attached_user_policies(UserName=SCOPE.tag)["AttachedPolicies"]] == [policy_arn]

    run(aws.revoke(SCOPE, key_id))
    assert identity(key_id, secret) == "InvalidClientTokenId"
    assert run(aws.list(SCOPE)) == []


@set_initial_no_auth_action_count(SETUP_ACTIONS)
@mock_aws
def test_a_second_issue_reuses_the_user_and_list_finds_every_key_of_the_scope_only():
    admin = admin_credentials()
    aws = provider(admin)
    first, second = run(aws.issue(SCOPE, {}, 1)), run(aws.issue(SCOPE, {}, 2))  # a rotation: the user exists already
    theirs = run(aws.issue(OTHER, {}, 1))
    assert first.id != second.id
    assert sorted(run(aws.list(SCOPE))) == sorted([first.id, second.id])
    assert run(aws.list(OTHER)) == [theirs.id]
    assert run(aws.list(Scope.of("team-a", "nobody", "00", "aws"))) == []  # no user: nothing, not an error
    # Both keys of the scope work during the overlap; revoking one leaves the other (and the other scope) alone.
    run(aws.revoke(SCOPE, first.id))
    assert run(aws.list(SCOPE)) == [second.id] and run(aws.list(OTHER)) == [theirs.id]
    assert identity(second.id, second.values["AWS_SECRET_ACCESS_KEY"].reveal_text()).endswith(f"/{SCOPE.tag}")
    run(aws.revoke(SCOPE, first.id))  # idempotent: already gone is revoked


@set_initial_no_auth_action_count(SETUP_ACTIONS)
@mock_aws
def test_iams_two_key_limit_is_a_non_retryable_error_that_names_no_secret():
    admin = admin_credentials()
    aws = provider(admin)
    keys = [run(aws.issue(SCOPE, {}, n)) for n in (1, 2)]
    with pytest.raises(ProviderError) as caught:
        run(aws.issue(SCOPE, {}, 3))
    assert caught.value.retryable is False and "IAM CreateAccessKey failed: LimitExceeded" in str(caught.value)
    secrets = [k.values["AWS_SECRET_ACCESS_KEY"].reveal_text() for k in keys] + [admin["AWS_SECRET_ACCESS_KEY"].reveal_text()]
    assert not any(s in str(caught.value) for s in secrets)


@set_initial_no_auth_action_count(SETUP_ACTIONS)
@mock_aws
def test_release_removes_the_user_and_its_policies_and_sweep_sees_only_our_path():
    admin = admin_credentials()
    iam = admin_iam(admin)
    policy_arn = iam.create_policy(PolicyName="p", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}]}))["Policy"]["Arn"]
    iam.create_user(UserName="someone-elses", Path="/")
    iam.create_user(UserName="wso-000000000000", Path="/other-tool/")  # a name like ours, not under our path
    aws = provider(admin, policyArns=[policy_arn])
    for scope in (SCOPE, OTHER):
        run(aws.revoke(scope, run(aws.issue(scope, {}, 1)).id))
    assert sorted(run(aws.sweep())) == sorted([SCOPE.tag, OTHER.tag])

    run(aws.release(SCOPE))
    assert sorted(run(aws.sweep())) == [OTHER.tag]
    with pytest.raises(ClientError, match="NoSuchEntity"):
        iam.get_user(UserName=SCOPE.tag)
    assert iam.get_policy(PolicyArn=policy_arn)["Policy"]["AttachmentCount"] == 1  # OTHER's attachment only
    run(aws.release(SCOPE))  # idempotent


@set_initial_no_auth_action_count(SETUP_ACTIONS)
@mock_aws
def test_sweep_follows_pages():
    admin = admin_credentials()
    iam = admin_iam(admin)
    tags = {f"wso-{n:012x}" for n in range(105)}  # ListUsers answers at most 100 per page
    for tag in tags:
        iam.create_user(UserName=tag, Path=USER_PATH)
    assert set(run(provider(admin).sweep())) == tags


@set_initial_no_auth_action_count(SETUP_ACTIONS)
@mock_aws
def test_a_refused_admin_key_is_reported_without_the_key():
    admin = admin_credentials()
    wrong = {**admin, "AWS_SECRET_ACCESS_KEY": Sensitive("not-the-admin-secret")}
    with pytest.raises(ProviderError) as caught:
        run(provider(wrong).issue(SCOPE, {}, 1))
    assert str(caught.value).startswith("IAM CreateUser failed: SignatureDoesNotMatch") and caught.value.retryable is False
    assert "not-the-admin-secret" not in str(caught.value) and admin["AWS_SECRET_ACCESS_KEY"].reveal_text() not in str(caught.value)


@pytest.mark.parametrize("code, status, retryable", [
    ("Throttling", 400, True), ("ServiceUnavailable", 503, True), ("ServiceFailure", 500, True),
    ("NoSuchEntity", 404, False), ("AccessDenied", 403, False),
])
def test_error_mapping(code, status, retryable):
    client = boto3.client("iam", region_name="us-east-1", aws_access_key_id="AKIAIOSFODNN7EXAMPLE", aws_secret_access_key="x")
    aws = AwsIamProvider("aws", client, region=None, policy_arns=[])
    with Stubber(client) as stub:
        stub.add_client_error("list_users", service_error_code=code, service_message="told so", http_status_code=status)
        with pytest.raises(ProviderError) as caught:
            run(aws.sweep())
    assert caught.value.retryable is retryable and str(caught.value) == f"IAM ListUsers failed: {code}: told so"


def test_an_unreachable_endpoint_is_retryable():
    admin = {"AWS_ACCESS_KEY_ID": Sensitive("AKIAIOSFODNN7EXAMPLE"), "AWS_SECRET_ACCESS_KEY": Sensitive("s3cr3t-admin")}
    aws = provider(admin, endpointURL="http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(ProviderError) as caught:
        run(aws.list(SCOPE))
    assert caught.value.retryable is True and str(caught.value) == "IAM ListAccessKeys failed: EndpointConnectionError"


def test_configuration_and_parameters():
    with pytest.raises(ValueError, match="lacks AWS_SECRET_ACCESS_KEY"):
        registry.build("aws", "aws-iam", {}, {"AWS_ACCESS_KEY_ID": Sensitive("AKIA")}, None)
    admin = {"AWS_ACCESS_KEY_ID": Sensitive("AKIAIOSFODNN7EXAMPLE"), "AWS_SECRET_ACCESS_KEY": Sensitive("x")}
    regional, global_ = provider(admin), registry.build("aws", "aws-iam", {}, admin, None)
    assert dict(regional.env()) == {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                                    "AWS_REGION": "AWS_REGION"}
    assert "AWS_REGION" not in global_.env()
    assert regional.validate({}) is None
    assert "takes no parameters" in (regional.validate({"policy": "admin"}) or "")


@pytest.mark.parametrize("endpoint", ["http://iam.corp.example", "http://10.0.0.5:5000"])
def test_a_plain_http_endpoint_off_loopback_is_refused_in_the_configuration(endpoint):
    """SigV4 signs the requests, but the keys the provider mints come back in the answers: never in clear."""
    admin = {"AWS_ACCESS_KEY_ID": Sensitive("AKIAIOSFODNN7EXAMPLE"), "AWS_SECRET_ACCESS_KEY": Sensitive("s3cr3t-admin")}
    with pytest.raises(ValueError, match="config.endpointURL: .* is plain http") as caught:
        provider(admin, endpointURL=endpoint)
    assert "s3cr3t-admin" not in str(caught.value)
    assert provider(admin, endpointURL="http://127.0.0.1:9")._endpoint == "http://127.0.0.1:9"


def test_plain_http_off_loopback_only_when_the_platform_says_so():
    """LocalStack or moto in a dev cluster: `allowPlainHTTP: true` is the platform's explicit choice (only `true`)."""
    admin = {"AWS_ACCESS_KEY_ID": Sensitive("AKIAIOSFODNN7EXAMPLE"), "AWS_SECRET_ACCESS_KEY": Sensitive("x")}
    assert provider(admin, endpointURL="http://10.0.0.5:5000", allowPlainHTTP=True)._endpoint == "http://10.0.0.5:5000"
    with pytest.raises(ValueError, match="is plain http"):
        provider(admin, endpointURL="http://10.0.0.5:5000", allowPlainHTTP="true")
