"""The per-user key Secret: what it holds, and whether a Secret found at its name is the operator's (pure)."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.user_keys.sshkeys import MAX_PUBLIC_KEY_LINE, InvalidKey, PublicKey, SSHKeyPair, public_key

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


# --- addSSHKey: which keys a UserToken keeps at the provider ----------------------------------------------
#: At most this many distinct keys of one user are uploaded by one UserToken (the user's workspaces could use
#: every generated type and any number of brought keys; a provider account is no place for an unbounded list).
MAX_UPLOADED_KEYS = 5
#: Entries of status.sshKeys at most (crds/usertokens.yaml maxItems): the MAX_UPLOADED_KEYS in use plus the ones
#: whose removal at the provider is still pending (a removal failed). upload_plan defers uploads beyond it, so
#: every key the operator uploaded stays recorded (and is removed once the provider lets it).
MAX_RECORDED_KEYS = 4 * MAX_UPLOADED_KEYS
ADDED_BY_OPERATOR = "Operator"  # uploaded by the operator: removed when no workspace uses it any more
ADDED_BY_USER = "User"  # already at the provider under another title (the user added it): never removed


@dataclass(frozen=True)
class KeyInUse:
    """A public key the user's workspaces use, and which of their WorkspaceSecrets use it."""

    key: PublicKey
    workspaces: tuple[str, ...]


@dataclass(frozen=True)
class RecordedKey:
    """A key status.sshKeys says is at the provider for the user's workspaces."""

    id: str
    title: str
    fingerprint: str
    type: str = ""
    added_by: str = ADDED_BY_OPERATOR

    def status(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "fingerprint": self.fingerprint, "type": self.type, "addedBy": self.added_by}


@dataclass(frozen=True)
class UploadPlan:
    keep: tuple[RecordedKey, ...]  # recorded and still used
    upload: tuple[KeyInUse, ...]  # used, not recorded: look for it at the provider, else upload it
    remove: tuple[RecordedKey, ...]  # recorded by the operator's upload, no longer used: delete at the provider
    forget: tuple[RecordedKey, ...]  # recorded as the user's own, no longer used: dropped from status, never deleted
    left_out: tuple[KeyInUse, ...]  # used beyond MAX_UPLOADED_KEYS: not uploaded
    deferred: tuple[KeyInUse, ...] = ()  # to upload once pending removals made room in status.sshKeys (MAX_RECORDED_KEYS)


_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")


def is_label_value(value: str) -> bool:
    """Whether `value` is a valid label value (spec.user is one, by the CRDs): safe inside a label selector."""
    return bool(_LABEL_VALUE.fullmatch(value))


#: Workspace Secrets of one user read at most per pass (each costs a read of its WorkspaceSecret).
MAX_WORKSPACES_READ = 100


def workspace_owner(secret: Mapping[str, Any]) -> str | None:
    """The name of the WorkspaceSecret that controls this Secret (to be read and checked), or None."""
    for ref in (secret.get("metadata") or {}).get("ownerReferences") or ():
        if ref.get("kind") == c.WORKSPACE_SECRET_KIND and ref.get("controller") and isinstance(ref.get("name"), str):
            return ref["name"]
    return None


def workspace_public_key(secret: Mapping[str, Any] | None, *, secret_name: str, ws_uid: str, user: str) -> str | None:
    """The public key in a WorkspaceSecret's own Secret, or None unless the Secret is proven to be the one the
    operator wrote for that WorkspaceSecret: its name, the operator's labels for that user (component
    workspace-secret), and the WorkspaceSecret (by uid) as its controller. Tenants can neither set those labels
    nor such an ownerReference (deploy/policies/reserved-secrets.yaml); a Secret a tenant named alike is never it."""
    if secret is None:
        return None
    meta = secret.get("metadata") or {}
    labels = meta.get("labels") or {}
    owned = any(r.get("kind") == c.WORKSPACE_SECRET_KIND and r.get("uid") == ws_uid and r.get("controller")
                for r in meta.get("ownerReferences") or ())
    if not (meta.get("name") == secret_name and owned
            and labels.get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME
            and labels.get(c.LABEL_COMPONENT) == c.COMPONENT_WORKSPACE_SECRET
            and labels.get(c.LABEL_USER) == user):
        return None
    encoded = (secret.get("data") or {}).get(c.KEY_SSH_PUBLIC)
    if not isinstance(encoded, str) or len(encoded) > 2 * MAX_PUBLIC_KEY_LINE:
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode().strip() or None
    except ValueError:
        return None


def keys_in_use(found: Iterable[tuple[Any, str, str]]) -> list[KeyInUse]:
    """The distinct keys of the user's workspaces, from (order, WorkspaceSecret name, public key line): ordered by
    the first WorkspaceSecret using each (its creation), so a new workspace never displaces an uploaded key when
    there are more than MAX_UPLOADED_KEYS. Lines that are no public key are skipped."""
    first: dict[str, Any] = {}
    keys: dict[str, PublicKey] = {}
    users: dict[str, list[str]] = {}
    for order, name, line in sorted(found, key=lambda item: (item[0], item[1])):
        try:
            key = public_key(line)
        except InvalidKey:
            continue
        if key.fingerprint not in keys:
            keys[key.fingerprint], first[key.fingerprint], users[key.fingerprint] = key, order, []
        users[key.fingerprint].append(name)
    return [KeyInUse(keys[fp], tuple(users[fp])) for fp in keys]  # dicts keep insertion (= sorted) order


def recorded_keys(status: Mapping[str, Any], *, operator_title: str) -> list[RecordedKey]:
    """What status says is at the provider: status.sshKeys, or the single status.sshKey of earlier versions.

    Earlier versions recorded in status.sshKey also a key the user had added by hand (found at the provider and
    adopted, under the user's title): that entry is the operator's upload only when its title is `operator_title`
    (the title the operator uploads under), otherwise the user's own (addedBy User: never removed)."""
    entries = status.get("sshKeys")
    if not isinstance(entries, list):
        legacy = status.get("sshKey")
        entries = []
        if isinstance(legacy, Mapping):
            ours = isinstance(legacy.get("title"), str) and legacy["title"] == operator_title
            entries = [{k: v for k, v in legacy.items() if k != "addedBy"} | {"addedBy": ADDED_BY_OPERATOR if ours else ADDED_BY_USER}]
    recorded: list[RecordedKey] = []
    seen: set[str] = set()
    for entry in entries[:MAX_RECORDED_KEYS]:
        if not isinstance(entry, Mapping) or not entry.get("id") or str(entry["id"]) in seen:
            continue
        seen.add(str(entry["id"]))
        added_by = ADDED_BY_USER if entry.get("addedBy") == ADDED_BY_USER else ADDED_BY_OPERATOR
        recorded.append(RecordedKey(str(entry["id"]), str(entry.get("title", "")), str(entry.get("fingerprint", "")),
                                    str(entry.get("type", "")), added_by))
    return recorded


def upload_plan(in_use: Sequence[KeyInUse], recorded: Sequence[RecordedKey], *, limit: int = MAX_UPLOADED_KEYS,
                room: int = MAX_RECORDED_KEYS) -> UploadPlan:
    """Which keys to upload and which to remove so that the provider holds exactly the keys the user's workspaces
    use (the first `limit` of them). Only keys the operator uploaded are ever removed. Uploads happen before
    removals, and status must record both until the removals succeed: never more than `room` entries, the other
    uploads are deferred."""
    wanted, left_out = list(in_use[:limit]), tuple(in_use[limit:])
    wanted_fps = {k.key.fingerprint for k in wanted}
    keep: list[RecordedKey] = []
    for r in recorded:
        if r.fingerprint in wanted_fps and r.fingerprint not in {k.fingerprint for k in keep}:
            keep.append(r)
    kept_fps = {r.fingerprint for r in keep}
    upload = tuple(k for k in wanted if k.key.fingerprint not in kept_fps)
    free = max(room - len(recorded), 0)
    stale = [r for r in recorded if r not in keep]
    return UploadPlan(keep=tuple(keep), upload=upload[:free],
                      remove=tuple(r for r in stale if r.added_by == ADDED_BY_OPERATOR),
                      forget=tuple(r for r in stale if r.added_by == ADDED_BY_USER), left_out=left_out, deferred=upload[free:])


def key_summary(key: KeyInUse, limit: int = 3) -> str:
    """`SHA256:... (rsa-3072, used by ws-a, ws-b)` for conditions and Events (public information only)."""
    names = ", ".join(key.workspaces[:limit]) + (f" and {len(key.workspaces) - limit} more" if len(key.workspaces) > limit else "")
    return f"{key.key.fingerprint} ({key.key.type}, used by {names})"


def workspace_key_change(previous: str | None, event_type: str, secret: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether a watch event of a workspace Secret changes which key it holds, and the fingerprint to remember
    (None: forget it). The operator stamps the key's fingerprint on every workspace Secret it writes, so this
    needs no parsing: a Secret rewritten for another reason (a credential's rotation) wakes nobody."""
    if event_type == "DELETED":
        return True, None
    current = ((secret.get("metadata") or {}).get("annotations") or {}).get(c.ANNOTATION_SSH_FINGERPRINT) or ""
    return current != previous, current
