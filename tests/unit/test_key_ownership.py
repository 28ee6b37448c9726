"""Tenant isolation in the pure decisions: whose key Secret may be brought, and what status may show."""

import base64

import pytest

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.workspace_secret import policy
from workspace_secrets.runtime.sensitive import MASK


def ws(**spec):
    return WorkspaceSecret.from_body({
        "metadata": {"name": "alice-ws", "namespace": "team", "uid": "u1"},
        "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}, **spec},
    })


def secret(labels=None):
    return {"metadata": {"name": "key", "namespace": "team", "labels": labels or {}},
            "data": {"id_rsa": "c2VjcmV0", "other-users-key-name": "eA=="}}


WHERE = "spec.ssh.existingSecretRef: Secret 'key'"


def test_the_users_own_labelled_secret_may_be_brought():
    assert policy.existing_key_ownership_problem(secret({c.LABEL_USER: "alice"}), ws(), WHERE) is None


OPERATOR = {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY}


@pytest.mark.parametrize("source", [
    None,  # does not exist
    secret(),  # unlabelled
    secret({c.LABEL_USER: "bob"}),  # another user's
    # the operator's own Secrets, e.g. ssh-alice-ed25519-... (harmless) or ssh-bob-... (theft): never a source
    secret({**OPERATOR, c.LABEL_USER: "alice"}),
    secret({**OPERATOR, c.LABEL_USER: "bob"}),
], ids=["missing", "unlabelled", "another-user", "operator-own-user", "operator-other-user"])
def test_missing_and_not_yours_get_one_and_the_same_answer(source):
    """A tenant may not read other users' Secrets: the answer must not tell "absent" from "not yours"."""
    problem = policy.existing_key_ownership_problem(source, ws(), WHERE)
    assert problem == policy.existing_key_unavailable(ws(), WHERE)
    assert problem.reason == "ExistingKeyNotFound" and problem.message.startswith(WHERE)
    assert "workspace-secrets.io/user=alice" in problem.message
    for leak in ("bob", "id_rsa", "other-users-key-name"):
        assert leak not in problem.message


def test_the_private_key_is_masked_in_status_even_if_the_item_is_not_marked_sensitive():
    # The CRD refuses such an item; an object stored before that rule must still not publish the key.
    w = ws(display=[{"key": "key", "valueFrom": {"secretKeyRef": {"key": c.KEY_SSH_PRIVATE}}},
                    {"key": "pub", "valueFrom": {"secretKeyRef": {"key": c.KEY_SSH_PUBLIC}}}])
    data = {c.KEY_SSH_PRIVATE: base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret").decode(),
            c.KEY_SSH_PUBLIC: base64.b64encode(b"ssh-ed25519 AAAA alice").decode()}
    assert policy.display_items(w, data) == [
        {"key": "key", "value": MASK, "sensitive": True},
        {"key": "pub", "value": "ssh-ed25519 AAAA alice", "sensitive": False},
    ]


def test_an_observation_never_shows_the_secret_data_it_carries():
    data = {c.KEY_SSH_PRIVATE: base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret").decode()}
    obs = policy.Observation(key=None, key_source=None, problem=None, secret_action=None, secret_data=data, workspace_uid=None)
    assert data[c.KEY_SSH_PRIVATE] not in repr(obs)
