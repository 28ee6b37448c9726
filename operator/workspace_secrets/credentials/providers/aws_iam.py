"""AWS IAM access keys, one per-workspace IAM user per entry (CreateAccessKey / DeleteAccessKey).

The IAM user is named after the scope tag under the path /workspace-secrets/ and tagged with the
workspace's identity, so `list` (ListAccessKeys) finds every key ever minted for it -- including one
minted just before a crash -- and the orphan sweep finds users whose workspace is gone. IAM allows two
access keys per user: enough for a rotation overlap, which is why orphans are revoked before minting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, ClassVar

from workspace_secrets.runtime.sensitive import Sensitive
from workspace_secrets.runtime.egress import cleartext_problem
from workspace_secrets.runtime.http import Egress, provider_tls_error
from workspace_secrets.credentials.providers.base import FileContext, FileRef, Issued, ProviderError, Scope

USER_PATH = "/workspace-secrets/"


def shared_files(values: Mapping[str, Sensitive]) -> dict[str, Sensitive]:
    """The AWS shared credentials file (profile default) and, with a region, the config file."""
    if "AWS_ACCESS_KEY_ID" not in values or "AWS_SECRET_ACCESS_KEY" not in values:
        return {}
    files = {"credentials": Sensitive(f"[default]\naws_access_key_id = {_line(values['AWS_ACCESS_KEY_ID'])}\n"
                                      f"aws_secret_access_key = {_line(values['AWS_SECRET_ACCESS_KEY'])}\n")}
    if "AWS_REGION" in values:
        files["config"] = Sensitive(f"[default]\nregion = {_line(values['AWS_REGION'])}\n")
    return files


def _line(value: Sensitive) -> str:
    return value.reveal_text().replace("\r", "").replace("\n", "")


class AwsIamProvider:
    type_name: ClassVar[str] = "aws-iam"
    access = None  # the platform's allow rule (credentials.ledger.AccessRule), set by credentials/setup.py

    def __init__(self, name: str, client: Any, *, region: str | None, policy_arns: list[str], endpoint: str = "") -> None:
        self.name = name
        self._endpoint = endpoint
        self._iam = client
        self._region = region
        self._policy_arns = policy_arns

    @classmethod
    def from_config(cls, *, name: str, config: Mapping[str, Any], admin: Mapping[str, Sensitive], kube: Any,
                    egress: Egress | None = None) -> AwsIamProvider:
        import boto3  # imported only when an aws-iam provider is configured
        from botocore.config import Config

        try:
            key_id, secret = admin["AWS_ACCESS_KEY_ID"], admin["AWS_SECRET_ACCESS_KEY"]
        except KeyError as exc:
            raise ValueError(f"admin credentials Secret lacks {exc.args[0]}") from None
        # allowPlainHTTP: true -- the platform's explicit choice for an AWS look-alike served in clear inside its
        # network (LocalStack, moto in a dev cluster): the keys minted then cross that network in clear.
        plain_http_allowed = config.get("allowPlainHTTP") is True
        if config.get("endpointURL") and not plain_http_allowed and (problem := cleartext_problem(str(config["endpointURL"]))):
            raise ValueError(f"config.endpointURL: {problem}")  # checked before a client is made of it
        egress = egress or Egress.from_environment()

        def client(proxies: dict[str, str] | None, verify: str | None) -> Any:
            return boto3.client(
                "iam",
                endpoint_url=config.get("endpointURL"),
                region_name=config.get("region", "us-east-1"),
                aws_access_key_id=key_id.reveal_text(),
                aws_secret_access_key=secret.reveal_text(),
                verify=verify,
                config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=15,
                              proxies=proxies),
            )

        # The operator's proxy for the client's endpoint (NO_PROXY decided as for every client; {}: directly, not
        # botocore's own reading of the environment) and its CAs. The endpoint is known once a client exists.
        endpoint = client(None, None).meta.endpoint_url
        if not plain_http_allowed and (problem := cleartext_problem(endpoint)):  # SigV4 signs the requests, but the keys minted come back in clear
            raise ValueError(f"config.endpointURL: {problem}")
        proxies, verify = egress.botocore_arguments(endpoint)
        built = client(proxies, verify)
        return cls(name, built, region=config.get("region"), policy_arns=list(config.get("policyArns", [])),
                   endpoint=endpoint)

    def env(self) -> Mapping[str, str]:
        env = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}
        if self._region:
            env["AWS_REGION"] = "AWS_REGION"
        return env

    def file_env(self) -> Mapping[str, str | FileRef]:
        """The AWS SDKs and CLI read the shared credentials file named by AWS_SHARED_CREDENTIALS_FILE (the region
        from AWS_CONFIG_FILE, and AWS_REGION: the platform's region, which never rotates)."""
        env: dict[str, str | FileRef] = {"AWS_SHARED_CREDENTIALS_FILE": FileRef("credentials")}
        if self._region:
            env["AWS_CONFIG_FILE"] = FileRef("config")
            env["AWS_REGION"] = "AWS_REGION"
        return env

    def files(self, values: Mapping[str, Sensitive], where: FileContext) -> Mapping[str, Sensitive]:
        return shared_files(values)

    def validate(self, parameters: Mapping[str, str]) -> str | None:
        if parameters:
            return f"aws-iam takes no parameters (the platform's provider configuration sets the policies), got {', '.join(sorted(parameters))}"
        return None

    async def issue(self, scope: Scope, parameters: Mapping[str, str], generation: int) -> Issued:
        await self._call("CreateUser", self._ensure_user, scope)
        response = await self._call("CreateAccessKey", lambda: self._iam.create_access_key(UserName=scope.tag))
        key = response["AccessKey"]
        values = {"AWS_ACCESS_KEY_ID": Sensitive(key["AccessKeyId"]), "AWS_SECRET_ACCESS_KEY": Sensitive(key["SecretAccessKey"])}
        if self._region:
            values["AWS_REGION"] = Sensitive(self._region)
        return Issued(id=key["AccessKeyId"], values=values)

    def _ensure_user(self, scope: Scope) -> None:
        from botocore.exceptions import ClientError

        tags = [{"Key": "workspace-secrets.io/namespace", "Value": scope.namespace},
                {"Key": "workspace-secrets.io/workspace", "Value": scope.workspace},
                {"Key": "workspace-secrets.io/uid", "Value": scope.workspace_uid},
                {"Key": "workspace-secrets.io/entry", "Value": scope.entry}]
        try:
            self._iam.create_user(UserName=scope.tag, Path=USER_PATH, Tags=tags)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "EntityAlreadyExists":
                raise
        for arn in self._policy_arns:
            self._iam.attach_user_policy(UserName=scope.tag, PolicyArn=arn)

    async def revoke(self, scope: Scope, credential_id: str) -> None:
        await self._call("DeleteAccessKey", self._delete_key, scope.tag, credential_id)

    def _delete_key(self, user: str, key_id: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._iam.delete_access_key(UserName=user, AccessKeyId=key_id)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NoSuchEntity":
                raise

    async def list(self, scope: Scope) -> list[str]:
        return await self._call("ListAccessKeys", self._list_keys, scope.tag)

    def _list_keys(self, user: str) -> list[str]:
        from botocore.exceptions import ClientError

        try:
            metadata = self._iam.list_access_keys(UserName=user)["AccessKeyMetadata"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchEntity":
                return []
            raise
        return [k["AccessKeyId"] for k in metadata]

    async def release(self, scope: Scope) -> None:
        await self._call("DeleteUser", self._delete_user, scope.tag)

    def _delete_user(self, user: str) -> None:
        from botocore.exceptions import ClientError

        try:
            for policy in self._iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]:
                self._iam.detach_user_policy(UserName=user, PolicyArn=policy["PolicyArn"])
            self._iam.delete_user(UserName=user)
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "NoSuchEntity":
                raise

    async def sweep(self) -> list[str]:
        def users() -> list[str]:
            paginator = self._iam.get_paginator("list_users")
            return [u["UserName"] for page in paginator.paginate(PathPrefix=USER_PATH) for u in page["Users"]]

        return await self._call("ListUsers", users)

    async def _call(self, action: str, fn: Any, *args: Any) -> Any:
        """Run a blocking boto3 call in a thread; map its errors to ProviderError without any secret."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(fn, *args)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            retryable = status >= 500 or status == 429 or error.get("Code") in ("Throttling", "ServiceUnavailable")
            raise ProviderError(f"IAM {action} failed: {error.get('Code', 'Error')}: {error.get('Message', '')}", retryable=retryable) from None
        except BotoCoreError as exc:
            tls = provider_tls_error(exc, self._endpoint) if self._endpoint else None
            raise ProviderError(f"IAM {action} failed: {tls or type(exc).__name__}", retryable=True) from None
