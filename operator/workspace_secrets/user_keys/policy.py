"""The per-user key Secret: what it holds, and whether a Secret found at its name is the operator's (pure)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.user_keys.sshkeys import SSHKeyPair

#: The type of every Secret holding an SSH key (the per-user key, and a WorkspaceSecret's Secret).
SSH_AUTH_SECRET_TYPE = "kubernetes.io/ssh-auth"


def comment(user: str) -> str:
    """The comment of the user's public key (`<user>@workspace-secrets-operator`)."""
    return f"{user}@{c.OPERATOR_NAME}"


def is_user_key_secret(secret: Mapping[str, Any], user: str) -> bool:
    """Whether a Secret at the user's key name carries the operator's labels for that user (a WorkspaceSecret then
    uses and may rotate it; anything else there is a conflict, left untouched)."""
    labels = secret["metadata"].get("labels") or {}
    return (
        labels.get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME
        and labels.get(c.LABEL_COMPONENT) == c.COMPONENT_USER_SSH_KEY
        and labels.get(c.LABEL_USER) == user
    )


def is_operator_user_key(secret: Mapping[str, Any], user: str, expected_name: str) -> bool:
    """Whether `secret` is proven to be the operator's per-user SSH key of `user` (what addSSHKey may upload):
    the derived name, the operator's labels for that user, and no ownerReferences (the operator's per-user key
    is owned by no object; a Secret that is some object's -- e.g. a WorkspaceSecret's Secret made at a
    squatted name -- is not it)."""
    meta = secret.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        meta.get("name") == expected_name
        and labels.get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME
        and labels.get(c.LABEL_COMPONENT) == c.COMPONENT_USER_SSH_KEY
        and labels.get(c.LABEL_USER) == user
        and not meta.get("ownerReferences")
    )


def user_key_body(namespace: str, user: str, name: str, key: SSHKeyPair, request_id: str | None) -> dict[str, Any]:
    """The per-user key Secret. `request_id` (the rotation request it answers) is stamped in the same write as
    the key, so a crash before the requester's status update is recognized instead of rotating twice."""
    annotations = {c.ANNOTATION_SSH_FINGERPRINT: key.fingerprint}
    if request_id:
        annotations[c.ANNOTATION_ROTATION_REQUEST] = request_id
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SSH_AUTH_SECRET_TYPE,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                c.LABEL_MANAGED_BY: c.OPERATOR_NAME,
                c.LABEL_NAME: c.OPERATOR_NAME,
                c.LABEL_PART_OF: c.OPERATOR_NAME,
                c.LABEL_COMPONENT: c.COMPONENT_USER_SSH_KEY,
                c.LABEL_USER: user,
            },
            "annotations": annotations,
        },
        "data": {
            c.KEY_SSH_PRIVATE: base64.b64encode(key.private_openssh.reveal()).decode(),
            c.KEY_SSH_PUBLIC: base64.b64encode((key.public_openssh + "\n").encode()).decode(),
        },
    }
