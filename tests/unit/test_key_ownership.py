"""Tenant isolation in the pure decisions: whose key Secret may be brought, and what status may show."""

import base64

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspacesecret import WorkspaceSecret
from workspace_secrets.domain import workspace_secret as policy
from workspace_secrets.domain.sensitive import MASK


def ws(**spec):
    return WorkspaceSecret.from_body({
        "metadata": {"name": "alice-ws", "namespace": "team", "uid": "u1"},
        "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}, **spec},
    })


def secret(labels=None):
    return {"metadata": {"name": "key", "namespace": "team", "labels": labels or {}}, "data": {}}


WHERE = "spec.ssh.existingSecretRef: Secret 'key'"


def test_the_users_own_labelled_secret_may_be_brought():
    assert policy.existing_key_ownership_problem(secret({c.LABEL_USER: "alice"}), ws(), WHERE) is None


def test_an_unlabelled_secret_is_refused_with_the_command_that_claims_it():
    problem = policy.existing_key_ownership_problem(secret(), ws(), WHERE)
    assert problem is not None and problem.reason == "ExistingKeyNotOwned"
    assert problem.message.startswith(WHERE)
    assert "kubectl label secret key workspace-secrets.io/user=alice" in problem.message


def test_another_users_secret_is_refused():
    problem = policy.existing_key_ownership_problem(secret({c.LABEL_USER: "bob"}), ws(), WHERE)
    assert problem is not None and problem.reason == "ExistingKeyNotOwned"


def test_the_operators_own_secrets_are_refused_even_for_the_same_user():
    # e.g. ssh-alice-ed25519-... (harmless) or ssh-bob-... (theft): never a source of brought keys.
    for user in ("alice", "bob"):
        labels = {c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY, c.LABEL_USER: user}
        problem = policy.existing_key_ownership_problem(secret(labels), ws(), WHERE)
        assert problem is not None and "managed by the operator" in problem.message


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
