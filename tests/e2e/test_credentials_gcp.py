"""GCP service-account keys on the real control plane with the real operator, against the contract-checked
FAKE of IAM v1 and Google's token endpoint (tests/fakes/gcp_iam.py: no GCP emulator exists)."""

from __future__ import annotations

import json

import google.auth.exceptions
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.transport.requests import Request
from google.oauth2 import service_account
from helpers import Api, wait_for

from workspace_secrets.api import constants as c
from workspace_secrets.credentials.providers.base import Scope


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def ref() -> dict:
    return {"kind": "Pod", "name": "not-yet"}


def identity(fake, key_file: bytes) -> str:
    """Get a token with the key file through google-auth, then ask the token endpoint whose it is;
    or the refusal."""
    credentials = service_account.Credentials.from_service_account_info(
        json.loads(key_file), scopes=["https://www.googleapis.com/auth/cloud-platform"])
    try:
        credentials.refresh(Request())
    except google.auth.exceptions.RefreshError as exc:
        return f"refused: {exc.args[0]}"
    return requests.get(f"{fake.url}/tokeninfo", params={"access_token": credentials.token}, timeout=5).json()["email"]


def test_key_gets_a_token_until_the_workspace_secret_is_deleted(api, namespace, wso_operator, credential_backends):
    fake = credential_backends.gcp
    api.create_ws(namespace, "gcp", {"user": "alice", "workspaceRef": ref(), "credentials": [{"name": "gcp", "provider": "gcp-dev", "lifecycle": "WhileExists"}]})
    api.wait_condition(namespace, "gcp")
    ws = api.get_ws(namespace, "gcp")
    email = f"{Scope.of(namespace, 'gcp', ws['metadata']['uid'], 'gcp').tag}@{fake.project}.iam.gserviceaccount.com"
    data = api.secret_data(namespace, "gcp")
    key_file = data["gcp.key.json"]
    assert data["gcp.GOOGLE_APPLICATION_CREDENTIALS"] == f"{c.DEFAULT_MOUNT_PATH}/gcp.key.json".encode()
    document = json.loads(key_file)
    entry = ws["status"]["credentials"][0]
    assert document["client_email"] == email and document["private_key_id"] == entry["id"]
    assert isinstance(serialization.load_pem_private_key(document["private_key"].encode(), None), rsa.RSAPrivateKey)
    assert document["private_key"] not in str(ws) and document["private_key"] not in wso_operator.process.log_text()
    assert fake.user_keys(email) == [entry["id"]]

    assert identity(fake, key_file) == email

    api.delete_ws(namespace, "gcp")
    wait_for(lambda: api.get_ws(namespace, "gcp") is None, timeout=60, what="WorkspaceSecret gone")
    # Key deleted, then its service account: Google answers "account not found" for a key of a deleted account.
    assert identity(fake, key_file) == "refused: invalid_grant: Invalid grant: account not found"
    assert email not in fake.accounts, "the per-workspace service account is deleted with its last key"
    wait_for(lambda: api.get_secret(namespace, "gcp") is None, timeout=60, what="workspace Secret garbage-collected")
    assert fake.contract.violations.requests == [] and fake.contract.violations.responses == []


def test_kill_between_minting_and_recording_leaves_exactly_the_recorded_key(api, namespace, wso_operator, credential_backends):
    fake = credential_backends.gcp
    killed: list[bool] = []

    def kill_after_key_created(method: str, path: str):
        if method == "POST" and path.endswith("/keys") and not killed:
            killed.append(True)
            return lambda: wso_operator.process.process.send_signal(9)
        return None

    fake.on_request = kill_after_key_created
    try:
        api.create_ws(namespace, "gcpcrash", {"user": "erin", "workspaceRef": ref(), "credentials": [{"name": "gcp", "provider": "gcp-dev", "lifecycle": "WhileExists"}]})
        wait_for(lambda: killed and wso_operator.process.process.poll() is not None, timeout=30, what="operator killed after minting")
    finally:
        fake.on_request = None
    ws = api.get_ws(namespace, "gcpcrash")
    email = f"{Scope.of(namespace, 'gcpcrash', ws['metadata']['uid'], 'gcp').tag}@{fake.project}.iam.gserviceaccount.com"
    orphan = fake.user_keys(email)
    assert len(orphan) == 1, "the key was minted at the provider, then the operator died before recording it"
    wso_operator.process.start()
    api.wait_condition(namespace, "gcpcrash", timeout=60)
    recorded = api.get_ws(namespace, "gcpcrash")["status"]["credentials"][0]["id"]
    assert fake.user_keys(email) == [recorded] and recorded not in orphan, "the orphan was revoked, one key remains"
    api.wait_event(namespace, "gcpcrash", "CredentialRevoked")
    api.delete_ws(namespace, "gcpcrash")
    wait_for(lambda: email not in fake.accounts, timeout=60, what="service account deleted")
