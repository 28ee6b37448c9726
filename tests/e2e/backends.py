"""Credential backends started by the tests: real servers where they exist locally (moto's server mode
for AWS IAM/STS), and the operator's provider configuration pointing at them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from http_proxy import FaultProxy
from operator_process import free_port

ADMIN_NAMESPACE = "wso-system"


@dataclass
class Moto:
    """moto in server mode: a real HTTP server speaking the IAM/STS wire protocol, checking access keys."""

    port: int
    process: subprocess.Popen
    admin_key_id: str = ""
    admin_secret: str = ""
    proxy: FaultProxy | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, service: str, key_id: str, secret: str):
        return boto3.client(service, endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)

    @classmethod
    def start(cls, log_dir: Path) -> Moto:
        port = free_port()
        # After this many unauthenticated calls (our admin bootstrap below), moto checks every request's
        # access key against its IAM state: a revoked key really fails with InvalidClientTokenId.
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "3", "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        log = open(log_dir / "moto.log", "wb")
        moto_server = Path(sys.executable).with_name("moto_server")
        process = subprocess.Popen([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        moto = cls(port, process)
        bootstrap = moto.client("iam", "bootstrap", "bootstrap")
        bootstrap.create_user(UserName="wso-admin")
        bootstrap.put_user_policy(UserName="wso-admin", PolicyName="all",
                                  PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}')
        key = bootstrap.create_access_key(UserName="wso-admin")["AccessKey"]
        moto.admin_key_id, moto.admin_secret = key["AccessKeyId"], key["SecretAccessKey"]
        moto.proxy = FaultProxy("127.0.0.1", port).start()
        return moto

    def stop(self) -> None:
        if self.proxy:
            self.proxy.stop()
        self.process.terminate()
        self.process.wait(10)


@dataclass
class Backends:
    config_path: Path
    moto: Moto
    providers: dict = field(default_factory=dict)


def providers_yaml(moto: Moto) -> str:
    assert moto.proxy is not None
    return f"""\
providers:
  - name: cluster-tokens
    type: kubernetes-token
    config:
      allowedServiceAccounts: ["ci-*", "deployer"]
      maxExpirationSeconds: 7200
  - name: aws-dev
    type: aws-iam
    credentialsSecret: aws-admin
    config:
      endpointURL: http://127.0.0.1:{moto.proxy.port}
      region: us-east-1
"""
