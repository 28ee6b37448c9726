"""Twilio API keys on the real control plane with the real operator, against the stateful FAKE of Twilio
IAM v1 that checks every exchange against Twilio's OpenAPI contract (tests/fakes/twilio.py)."""

from __future__ import annotations

import pytest
from helpers import Api, wait_for

from workspace_secrets.credentials.providers.base import Scope


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


def test_key_authenticates_until_the_workspace_secret_is_deleted(api, namespace, wso_operator, credential_backends):
    fake = credential_backends.twilio
    api.create_ws(namespace, "tw", {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "not-yet"},
                                    "credentials": [{"name": "twilio", "provider": "twilio-dev", "lifecycle": "WhileExists"}]})
    api.wait_condition(namespace, "tw")
    ws = api.get_ws(namespace, "tw")
    data = api.secret_data(namespace, "tw")
    sid, secret = data["twilio.TWILIO_API_KEY"].decode(), data["twilio.TWILIO_API_SECRET"].decode()
    assert data["twilio.TWILIO_ACCOUNT_SID"].decode() == fake.account_sid
    assert ws["status"]["credentials"][0]["id"] == sid
    assert secret not in str(ws) and secret not in wso_operator.process.log_text()
    tag = Scope.of(namespace, "tw", ws["metadata"]["uid"], "twilio").tag
    assert fake.keys[sid].friendly_name.startswith(f"{tag} {namespace}/tw/")

    assert fake.authenticates(sid, secret) == 200
    # delivery Files (the default): the key as a dotenv file, which an env var names; the secret is in no env var.
    dotenv = dict(line.split("=", 1) for line in data["twilio.twilio.env"].decode().splitlines())
    assert fake.authenticates(dotenv["TWILIO_API_KEY"], dotenv["TWILIO_API_SECRET"]) == 200
    env = {e["name"]: e["key"] for e in ws["status"]["env"]}
    assert data[env["TWILIO_ENV_FILE"]].decode().endswith("/twilio.twilio.env") and "TWILIO_API_SECRET" not in env
    assert fake.authenticates(sid, secret[:-1] + ("x" if secret[-1] != "x" else "y")) == 401

    api.delete_ws(namespace, "tw")
    wait_for(lambda: api.get_ws(namespace, "tw") is None, timeout=60, what="WorkspaceSecret gone")
    assert fake.authenticates(sid, secret) == 401
    assert sid not in fake.keys
    wait_for(lambda: api.get_secret(namespace, "tw") is None, timeout=60, what="workspace Secret garbage-collected")
    assert fake.contract.violations.requests == [] and fake.contract.violations.responses == []


def test_rate_limited_create_is_retried(api, namespace, wso_operator, credential_backends):
    fake = credential_backends.twilio
    fake.fail_next(429, times=2)
    api.create_ws(namespace, "tw429", {"user": "bob", "workspaceRef": {"kind": "Pod", "name": "not-yet"},
                                       "credentials": [{"name": "twilio", "provider": "twilio-dev", "lifecycle": "WhileExists"}]})
    api.wait_condition(namespace, "tw429", timeout=60)
    assert fake.pending_failures == 0, "both 429 answers were received, and the create retried past them"
    sid = api.secret_data(namespace, "tw429")["twilio.TWILIO_API_KEY"].decode()
    tag = Scope.of(namespace, "tw429", api.get_ws(namespace, "tw429")["metadata"]["uid"], "twilio").tag
    assert [k.sid for k in fake.keys.values() if (k.friendly_name or "").startswith(tag)] == [sid]
    api.delete_ws(namespace, "tw429")
    wait_for(lambda: sid not in fake.keys, timeout=60, what="key deleted")
