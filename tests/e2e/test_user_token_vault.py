"""type vault against a REAL Vault (v1.14.2 dev server, built from source by tools/build-vault.sh) whose OIDC
auth method signs users in at the real authorization server (oidc-provider): connect through Vault's
auth_url and callback, renew-self as the refresh, lookup-self as the validation, revoke-self on delete."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from helpers import Api, wait_for
from test_user_token import CLIENT_SECRET, applications, assert_no_token_leaks, connect, create_token, get_token, wait_phase  # noqa: F401
from user_token_support import OIDCServer, free_port

from workspace_secrets.api import constants as c
from devcluster.controlplane import REPO_ROOT


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


class VaultDevServer:
    def __init__(self, log_dir: Path) -> None:
        self.binary = subprocess.run(["bash", str(REPO_ROOT / "tools" / "build-vault.sh")], check=True, capture_output=True,
                                     text=True, timeout=1800).stdout.strip()
        self.port = free_port()
        self.root_token = secrets.token_hex(16)
        self.log_path = log_dir / "vault.log"
        self.process: subprocess.Popen | None = None

    @property
    def addr(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VaultDevServer:
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [self.binary, "server", "-dev", f"-dev-root-token-id={self.root_token}", f"-dev-listen-address=127.0.0.1:{self.port}",
             "-dev-no-store-token"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(self.log_path.parent), "VAULT_LOG_LEVEL": "warn"})
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"vault exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        raise TimeoutError("vault did not start")

    def write(self, path: str, body: dict) -> None:
        response = requests.post(f"{self.addr}/v1/{path}", json=body, headers={"X-Vault-Token": self.root_token}, timeout=10)
        assert response.status_code in (200, 204), (path, response.status_code, response.text[:300])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(15)


@pytest.fixture(scope="module")
def vault(wso_operator, tmp_path_factory):
    callback = f"{wso_operator.process.connect_url}/oauth/callback"
    log_dir = tmp_path_factory.mktemp("vault")
    idp = OIDCServer([{"client_id": "vault", "client_secret": CLIENT_SECRET, "redirect_uris": [callback],
                       "grant_types": ["authorization_code"], "response_types": ["code"]}], log_dir).start()
    server = VaultDevServer(log_dir).start()
    try:
        server.write("sys/auth/oidc", {"type": "oidc"})
        server.write("auth/oidc/config", {"oidc_discovery_url": idp.issuer, "oidc_client_id": "vault",
                                          "oidc_client_secret": CLIENT_SECRET, "default_role": "dev"})
        server.write("auth/oidc/role/dev", {"user_claim": "sub", "allowed_redirect_uris": [callback], "bound_audiences": ["vault"],
                                            "oidc_scopes": ["profile"], "token_ttl": "1h", "token_max_ttl": "4h",
                                            "token_policies": ["default"]})
        yield server
    finally:
        server.stop()
        idp.stop()


def lookup_self(vault: VaultDevServer, token: bytes) -> int:
    return requests.get(f"{vault.addr}/v1/auth/token/lookup-self", headers={"X-Vault-Token": token.decode()}, timeout=10).status_code


def test_vault_token_through_vaults_oidc_auth_method(api, namespace, wso_operator, vault, applications):  # noqa: F811
    app = applications(None, {"type": "vault", "host": vault.addr, "vault": {"role": "dev"}})  # no client: Vault holds it
    create_token(api, namespace, "alice-vault", {"user": "alice", "application": app})
    status = connect(api, wso_operator, namespace, "alice-vault")["status"]
    assert status["login"] == "oidc-alice" and "default" in status["scopes"]
    data = api.secret_data(namespace, "alice-vault-token")
    assert data[c.KEY_VAULT_ADDR].decode() == vault.addr and data[c.KEY_TOKEN_TYPE] == b"vault"
    assert c.KEY_GIT_CREDENTIALS not in data and c.KEY_REFRESH_TOKEN not in data
    assert lookup_self(vault, data[c.KEY_TOKEN]) == 200

    # "Refresh" is renew-self: the same token, a longer lease.
    api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "alice-vault",
                                              {"metadata": {"annotations": {c.ANNOTATION_REFRESH_TOKEN: "1"}}})
    renewed = wait_for(lambda: (u := get_token(api, namespace, "alice-vault")) and u["status"].get("lastRefreshTime") and u,
                       timeout=20, what="renewed")["status"]
    assert renewed["phase"] == c.PHASE_VALID and renewed["expiresAt"] >= status["expiresAt"]
    assert api.secret_data(namespace, "alice-vault-token")[c.KEY_TOKEN] == data[c.KEY_TOKEN]

    # Delete: revoke-self, the token no longer works.
    api.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "alice-vault")
    wait_for(lambda: get_token(api, namespace, "alice-vault") is None, timeout=30, what="UserToken deleted")
    assert lookup_self(vault, data[c.KEY_TOKEN]) == 403
    assert_no_token_leaks(api, namespace, wso_operator, [data[c.KEY_TOKEN]])
    assert "TokenRevoked" in {e.reason for e in api.core.list_namespaced_event(namespace).items}
