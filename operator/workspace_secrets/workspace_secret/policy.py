"""What a WorkspaceSecret's Secret and status should be, decided from the spec and the observed state.

The controller gathers an `Observation` (I/O), these functions decide (pure), and the controller writes
only what differs. Shaped after cert-manager's policy chains: inputs -> (reason, message).
"""

from __future__ import annotations

import base64
import dataclasses
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from datetime import datetime
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import HOST_KEY_POLICIES, WorkspaceSecret
from workspace_secrets.api.conditions import Condition, Problem
from workspace_secrets.api.conditions import find as find_condition
from workspace_secrets.runtime.sensitive import MASK
from workspace_secrets.user_keys.policy import SSH_AUTH_SECRET_TYPE
from workspace_secrets.user_keys.sshkeys import SSHKeyPair
from workspace_secrets.workspace_secret.pods import NOT_LISTED, Pods
from workspace_secrets.workspace_secret.tokens import TokensOutcome
from workspace_secrets.workspace_secret.tokens import condition as tokens_condition
from workspace_secrets.workspace_secret.user_secrets import UserSecretsPlan

SECRET_TYPE = SSH_AUTH_SECRET_TYPE

KEY_SOURCE_GENERATED = "Generated"  # status.sshKeySource: the user's key, made by the operator
KEY_SOURCE_EXISTING = "Existing"  # a key the user brought (spec.ssh.existingSecretRef)

#: How often an unbound WorkspaceSecret looks for its workspace, by its age: often while it is young
#: (the workspace is usually created right after it), rarely once it has waited a while -- each look is
#: a full reconcile (a few GETs), so thousands of forever-unbound objects must not poll every 5 s.
BIND_RECHECK_SCHEDULE = ((120.0, 5.0), (600.0, 15.0))  # (age below, re-check every)
BIND_RECHECK_SLOWEST = 60.0


# --- the workspace Secret ------------------------------------------------------------------------
def git_ssh_command(mount_path: str, host_key_policy: str) -> str:
    key = shlex.quote(f"{mount_path.rstrip('/')}/{c.KEY_SSH_PRIVATE}")
    known_hosts = shlex.quote(f"{mount_path.rstrip('/')}/{c.KEY_KNOWN_HOSTS}")
    return (
        f"ssh -i {key} -o IdentitiesOnly=yes -o UserKnownHostsFile={known_hosts}"
        f" -o StrictHostKeyChecking={HOST_KEY_POLICIES[host_key_policy]}"
    )


def known_hosts(lines: tuple[str, ...]) -> str:
    return "".join(f"{line.strip()}\n" for line in lines if line.strip())


def managed_labels(ws: WorkspaceSecret, component: str) -> dict[str, str]:
    return {
        c.LABEL_MANAGED_BY: c.OPERATOR_NAME,
        c.LABEL_NAME: c.OPERATOR_NAME,
        c.LABEL_PART_OF: c.OPERATOR_NAME,
        c.LABEL_COMPONENT: component,
        c.LABEL_INSTANCE: ws.name,
        c.LABEL_USER: ws.user,
    }


def owner_reference(ws: WorkspaceSecret) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.WORKSPACE_SECRET_KIND,
        "name": ws.name,
        "uid": ws.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_secret(
    ws: WorkspaceSecret,
    key: SSHKeyPair,
    *,
    extra_data: Mapping[str, str] | None = None,
    ledger: str | None = None,
) -> dict[str, Any]:
    """The full workspace Secret. Its data is the only place key material and credentials ever go.

    `extra_data` is already base64 (dynamic credentials); `ledger` is the credential ledger annotation
    (ids only), written in the same request as the values it describes."""
    data = {
        c.KEY_SSH_PRIVATE: key.private_openssh.reveal(),
        c.KEY_SSH_PUBLIC: (key.public_openssh + "\n").encode(),
        c.KEY_KNOWN_HOSTS: known_hosts(ws.ssh.known_hosts).encode(),
        c.KEY_GIT_SSH_COMMAND: git_ssh_command(ws.mount_path, ws.ssh.host_key_policy).encode(),
    }
    annotations = {c.ANNOTATION_SSH_FINGERPRINT: key.fingerprint}
    if ledger:
        annotations[c.ANNOTATION_CREDENTIALS] = ledger
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SECRET_TYPE,
        "metadata": {
            "name": ws.secret_name,
            "namespace": ws.namespace,
            "labels": managed_labels(ws, c.COMPONENT_WORKSPACE_SECRET),
            "annotations": annotations,
            "ownerReferences": [owner_reference(ws)],
        },
        "data": {**{k: base64.b64encode(v).decode() for k, v in data.items()}, **(extra_data or {})},
    }


# Annotations whose absence from the desired Secret means "remove it".
OWNED_ANNOTATIONS = (c.ANNOTATION_CREDENTIALS,)


class SecretAction(str, Enum):
    CREATE = "Create"
    UPDATE = "Update"
    UNCHANGED = "Unchanged"
    CONFLICT = "Conflict"


def is_owned_by(obj: Mapping[str, Any], owner_uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == owner_uid and r.get("controller") for r in refs)


def secret_action(existing: Mapping[str, Any] | None, desired: Mapping[str, Any], owner_uid: str) -> SecretAction:
    """Never overwrite a Secret that this WorkspaceSecret does not control."""
    if existing is None:
        return SecretAction.CREATE
    if not is_owned_by(existing, owner_uid):
        return SecretAction.CONFLICT
    meta, want = existing.get("metadata") or {}, desired["metadata"]
    same = (
        (existing.get("data") or {}) == desired["data"]
        and existing.get("type") == desired["type"]
        and _contains(meta.get("labels"), want["labels"])
        and _contains(meta.get("annotations"), want["annotations"])
        and not any(k in (meta.get("annotations") or {}) for k in OWNED_ANNOTATIONS if k not in want["annotations"])
    )
    return SecretAction.UNCHANGED if same else SecretAction.UPDATE


def merged_for_update(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """PUT body: our data and metadata, keeping labels/annotations others added and the resourceVersion,
    so the write is a compare-and-swap against what we looked at."""
    meta = dict(existing["metadata"])
    meta["labels"] = {**(meta.get("labels") or {}), **desired["metadata"]["labels"]}
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in OWNED_ANNOTATIONS}
    meta["annotations"] = {**kept, **desired["metadata"]["annotations"]}
    return {**desired, "metadata": {**meta, "ownerReferences": desired["metadata"]["ownerReferences"]}}


def _contains(actual: Mapping[str, str] | None, wanted: Mapping[str, str]) -> bool:
    actual = actual or {}
    return all(actual.get(k) == v for k, v in wanted.items())


def conflict_message(existing: Mapping[str, Any], ws: WorkspaceSecret) -> str:
    owners = [f"{r.get('kind')}/{r.get('name')}" for r in (existing.get("metadata") or {}).get("ownerReferences") or ()]
    held = f"owned by {', '.join(owners)}" if owners else "not created by this operator"
    return (
        f"Secret {ws.secret_name!r} already exists and is {held}; it was left untouched. "
        f"Delete or rename it, or set spec.secretName to another name."
    )


# --- the workspace binding -----------------------------------------------------------------------
REASON_WORKSPACE_USER_MISMATCH = "WorkspaceUserMismatch"


def workspace_user_problem(workspace: Mapping[str, Any], ws: WorkspaceSecret) -> Problem | None:
    """May this WorkspaceSecret bind to this workspace object? Only to a workspace of its own user.

    The workspace object says whose it is with the label workspace-secrets.io/user (set by whoever creates
    workspaces: the platform's provisioner). Without it, a WorkspaceSecret of one user could name another
    user's workspace and become part of its lifecycle (issue 14, instance 5)."""
    labels = (workspace.get("metadata") or {}).get("labels") or {}
    if labels.get(c.LABEL_USER) == ws.user:
        return None
    ref = ws.workspace_ref
    return Problem(
        REASON_WORKSPACE_USER_MISMATCH,
        f"{ref.kind} {ref.name!r} is not labelled {c.LABEL_USER}={ws.user}, so it is not known to be a workspace of "
        f"user {ws.user!r} and is not bound. The platform labels a workspace with its user when it creates it "
        f"(metadata.labels[\"{c.LABEL_USER}\"]: \"{ws.user}\"); the binding follows once the label is there.",
    )


def reserved_name_problem(ws: WorkspaceSecret, reserved: bool) -> Problem | None:
    if not reserved:
        return None
    where = "spec.secretName" if ws.secret_name != ws.name else "metadata.name (the Secret's name when spec.secretName is unset)"
    return Problem(
        "InvalidSpec",
        f"{where}: {ws.secret_name!r} has the shape of the operator's per-user key Secrets (ssh-<user>-<key type>-<hash>), "
        f"a name reserved for them; choose another name. Nothing was written.",
    )


# --- when to reconcile ---------------------------------------------------------------------------
#: Annotations only kopf wrote on a WorkspaceSecret while it handled them (its diff base, the progress of the old
#: revoke-credentials delete handler): objects from then may still carry them, and their changes are never a reason
#: to reconcile again.
KOPF_BOOKKEEPING_ANNOTATIONS = frozenset({f"{c.GROUP}/last-handled-configuration", f"{c.GROUP}/revoke-credentials"})


def essence(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a reconcile's outcome depends on in the object itself: its incarnation (uid), its spec (by
    generation), its labels and annotations (a rotation request, or any annotation a user sets to ask
    for a fresh look). The operator's own writes -- status, ownerReferences, kopf's bookkeeping -- leave
    it unchanged, so watch events that only echo those writes are recognized without an API call."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in KOPF_BOOKKEEPING_ANNOTATIONS}
    return (
        meta.get("uid"),
        meta.get("generation"),
        tuple(sorted((meta.get("labels") or {}).items())),
        tuple(sorted(annotations.items())),
    )


# --- status --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """Everything the controller learned in one reconcile, in the form the status decision needs."""

    key: SSHKeyPair | None
    key_source: str | None  # "Generated" or "Existing"
    problem: Problem | None
    secret_action: SecretAction | None
    # base64 data of the Secret as written (for display items): secret, so never part of a repr
    secret_data: Mapping[str, str] | None = dataclasses.field(repr=False)
    workspace_uid: str | None  # None: the workspace does not exist (yet)
    rotation_handled: str | None = None
    credentials: list[dict[str, Any]] | None = None  # status entries (ids, never values)
    credential_problems: tuple[Problem, ...] = ()
    credential_env: tuple[dict[str, str], ...] = ()
    user_secrets: UserSecretsPlan | None = None  # None: disabled for this WorkspaceSecret
    workspace_problem: Problem | None = None  # why the workspace is not bound although it may exist
    pods: Pods = NOT_LISTED  # the workspace's pods (pods.py): running, gated
    tokens: TokensOutcome | None = None  # spec.userTokens as delivered (tokens.py); None: none, or not written
    inputs_digest: str | None = None  # inputs.digest of what the Secret was composed from; None: not recordable


def conditions(ws: WorkspaceSecret, obs: Observation) -> list[Condition]:
    result = [*_credential_conditions(ws, obs), user_secrets_condition(obs)]
    token_condition = tokens_condition(ws, obs.tokens if obs.key is not None else None)
    if not token_condition.status and result[0].type == c.CONDITION_READY and result[0].status:
        # The SSH part and the credentials are fine: Ready says which token the workspace waits for.
        result[0] = Condition(c.CONDITION_READY, False, token_condition.reason, token_condition.message)
    return [*result, token_condition]


def _credential_conditions(ws: WorkspaceSecret, obs: Observation) -> list[Condition]:
    result = _ssh_and_binding_conditions(ws, obs)
    if not ws.credentials and not obs.credential_problems:
        return [*result, Condition(c.CONDITION_CREDENTIALS_READY, True, "NoCredentials", "No dynamic credentials requested.")]
    if obs.credential_problems:
        first = obs.credential_problems[0]
        message = " ".join(p.message for p in obs.credential_problems)
        creds = Condition(c.CONDITION_CREDENTIALS_READY, False, first.reason, message)
        if result[0].status:  # the SSH part is fine: Ready says what is wrong with the credentials
            result[0] = Condition(c.CONDITION_READY, False, first.reason, message)
        return [*result, creds]
    return [*result, credentials_ready(ws, obs.credentials or ())]


def credentials_ready(ws: WorkspaceSecret, entries: Sequence[Mapping[str, Any]]) -> Condition:
    """CredentialsReady when nothing is wrong: what is issued, what is stopped with the workspace (lifecycle
    WhileRunning), and which env values cannot follow a rotation (delivery Env into a Pod or PVC workspace)."""
    active = [e["name"] for e in entries if e.get("phase") != "Stopped"]
    stopped = [e["name"] for e in entries if e.get("phase") == "Stopped"]
    parts = []
    if active:
        parts.append(f"Credentials issued and current: {', '.join(active)}.")
    if stopped:
        parts.append(f"The workspace is not running: {', '.join(stopped)} (lifecycle WhileRunning) revoked; minted again when a pod "
                     f"of the workspace starts.")
    frozen = [s.name for s in ws.credentials if s.delivery == "Env"] if ws.workspace_ref.kind in ("Pod", "PersistentVolumeClaim") else []
    if frozen:
        parts.append(f"delivery Env into a {ws.workspace_ref.kind} workspace: the env values of {', '.join(frozen)} cannot follow a "
                     f"rotation (no Deployment or StatefulSet to restart; running containers keep the old values until the "
                     f"replaced credential is revoked). Their files do follow it: use delivery Files, or a Deployment/StatefulSet workspace.")
    return Condition(c.CONDITION_CREDENTIALS_READY, True, "Issued" if active or not stopped else "WorkspaceStopped", " ".join(parts))


def user_secrets_condition(obs: Observation) -> Condition:
    plan = obs.user_secrets
    if plan is None:
        return Condition(c.CONDITION_USER_SECRETS_READY, True, "Disabled", "User secrets are not delivered to this workspace (spec.userSecrets.enabled=false).")
    if plan.problems:
        return Condition(c.CONDITION_USER_SECRETS_READY, False, "InvalidUserSecrets", "; ".join(plan.problems)[:2000] + ". Other user secrets are delivered.")
    delivered = ", ".join(plan.delivered) or "none"
    return Condition(c.CONDITION_USER_SECRETS_READY, True, "Delivered", f"User secrets delivered: {delivered}.")


def _ssh_and_binding_conditions(ws: WorkspaceSecret, obs: Observation) -> list[Condition]:
    ref = ws.workspace_ref
    if obs.workspace_uid:
        bound = Condition(c.CONDITION_WORKSPACE_BOUND, True, "Bound", f"Bound to {ref.kind} {ref.name!r}; deleting it deletes this WorkspaceSecret and its Secret.")
    elif obs.workspace_problem is not None:
        bound = Condition(c.CONDITION_WORKSPACE_BOUND, False, obs.workspace_problem.reason, obs.workspace_problem.message)
    else:
        bound = Condition(c.CONDITION_WORKSPACE_BOUND, False, "WorkspaceNotFound", f"{ref.kind} {ref.name!r} does not exist yet; the Secret is ready for it and will be bound when it appears.")
    if obs.problem:
        key_ok = obs.key is not None
        return [
            Condition(c.CONDITION_READY, False, obs.problem.reason, obs.problem.message),
            Condition(c.CONDITION_SSH_KEY_READY, key_ok, obs.key_source or obs.problem.reason,
                      _key_message(obs) if key_ok else obs.problem.message),
            bound,
        ]
    return [
        Condition(c.CONDITION_READY, True, "SecretReady", f"Secret {ws.secret_name!r} holds the workspace's SSH key, known_hosts and GIT_SSH_COMMAND."),
        Condition(c.CONDITION_SSH_KEY_READY, True, obs.key_source or "Generated", _key_message(obs)),
        bound,
    ]


def _key_message(obs: Observation) -> str:
    assert obs.key is not None
    if obs.key_source == "Existing":
        return f"Using the user's own {obs.key.type} key {obs.key.fingerprint}."
    return f"Using the user's operator-generated {obs.key.type} key {obs.key.fingerprint}."


#: Keys of the workspace Secret whose values are public by construction; display items may show them.
PUBLIC_KEYS = frozenset({c.KEY_SSH_PUBLIC, c.KEY_KNOWN_HOSTS, c.KEY_GIT_SSH_COMMAND})


def is_public_key(secret_key: str) -> bool:
    """Whether a display item may copy this key's value into status: the public SSH key, known_hosts,
    GIT_SSH_COMMAND, and credential identifiers ("<entry>.<FIELD>", FIELD in PUBLIC_CREDENTIAL_FIELDS).
    Everything else -- private key, tokens, user secrets ("user.<secret>.<key>") -- is masked, whatever the
    item says: status is readable by every user who may list WorkspaceSecrets (issue 14, instance 12)."""
    if secret_key in PUBLIC_KEYS:
        return True
    entry, dot, field_name = secret_key.rpartition(".")
    return bool(dot and entry and "." not in entry and field_name in c.PUBLIC_CREDENTIAL_FIELDS)


def display_items(ws: WorkspaceSecret, secret_data: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """The seed's coder_metadata. Sensitive items, and items referring to a non-public key, are only ever
    shown masked."""
    items = []
    for item in ws.display:
        sensitive = item.sensitive or (item.secret_key is not None and not is_public_key(item.secret_key))
        if sensitive:
            value = MASK
        elif item.secret_key is not None:
            raw = (secret_data or {}).get(item.secret_key)
            value = _decode_displayable(raw) if raw is not None else "<missing>"
        else:
            value = item.value or ""
        items.append({"key": item.key, "value": value, "sensitive": sensitive})
    return items


def _decode_displayable(b64: str) -> str:
    try:
        text = base64.b64decode(b64).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return "<binary>"
    return text.strip()[:256]


def published_env(ws: WorkspaceSecret) -> list[dict[str, str]]:
    """`status.env`: the env vars a workspace pod gets from the Secret, each `{name, key}` (a key of the
    Secret). The pod-injection webhook maps every entry to a `secretKeyRef`; features that add keys to the
    Secret (dynamic credentials, user secrets) add their entries here. Names only, never values."""
    return [{"name": c.KEY_GIT_SSH_COMMAND, "key": c.KEY_GIT_SSH_COMMAND}]


def desired_status(ws: WorkspaceSecret, obs: Observation) -> dict[str, Any]:
    """The status fields this controller owns (conditions are merged separately, see conditions.merge)."""
    status: dict[str, Any] = {
        "observedGeneration": ws.generation,
        "secretName": ws.secret_name,
        "display": display_items(ws, obs.secret_data),
        "workspaceUID": obs.workspace_uid,
    }
    if obs.key is not None:
        status.update(
            sshPublicKey=obs.key.public_openssh,
            sshKeyFingerprint=obs.key.fingerprint,
            sshKeyType=obs.key.type,
            sshKeySource=obs.key_source,
        )
    else:  # keep what was published before, so a broken BYO key does not blank a working workspace
        for field in ("sshPublicKey", "sshKeyFingerprint", "sshKeyType", "sshKeySource"):
            if field in ws.status:
                status[field] = ws.status[field]
    status["credentials"] = obs.credentials or None
    if obs.key is not None:  # the Secret was (re)written: publish what pod injection wires up
        env = [*published_env(ws), *obs.credential_env]
        plan = obs.user_secrets
        status["env"] = env + (plan.env if plan else []) + (obs.tokens.env if obs.tokens else [])
        status["files"] = ((plan.files if plan else []) + (obs.tokens.files if obs.tokens else [])) or None
        status["tokens"] = (obs.tokens.status if obs.tokens else None) or None
        status["userSecrets"] = (plan.delivered if plan else None) or None
    handled = obs.rotation_handled if obs.rotation_handled is not None else ws.status.get("sshKeyRotation")
    if handled is not None:
        status["sshKeyRotation"] = handled
    status["inputsDigest"] = obs.inputs_digest
    return status


# --- bring-your-own keys --------------------------------------------------------------------------
REASON_EXISTING_KEY_NOT_FOUND = "ExistingKeyNotFound"


def existing_key_unavailable(ws: WorkspaceSecret, where: str) -> Problem:
    """The one answer for "no such Secret", "not labelled for this user" and "the operator's own Secret".

    A tenant may not read other users' Secrets, so the operator must not tell them apart for her either:
    different messages would reveal which Secrets exist (and whose they are)."""
    return Problem(
        REASON_EXISTING_KEY_NOT_FOUND,
        f"{where} is not a key Secret of user {ws.user!r} in namespace {ws.namespace!r}: it does not exist, or it "
        f"was not created with the label {c.LABEL_USER}={ws.user}, or it is managed by the operator. Create it with "
        f"that label and the private key under the key named by privateKeyKey (see examples/bring-your-own-key.yaml), "
        f"or remove existingSecretRef to use the operator-generated key.",
    )


def existing_key_ownership_problem(secret: Mapping[str, Any] | None, ws: WorkspaceSecret, where: str) -> Problem | None:
    """May this WorkspaceSecret take its key from this Secret (None: it does not exist)? Only from the
    user's own Secret.

    Without this check, anyone allowed to create a WorkspaceSecret for themselves could name another
    user's key Secret -- or the operator's per-user key Secret `ssh-<user>-...` -- in existingSecretRef,
    and have the operator copy that key into a Secret their own workspace mounts. A Secret is the user's
    when it carries the label workspace-secrets.io/user=<spec.user> and is not the operator's; the
    admission policies let only that user (or a platform identity) set that label, at creation.
    """
    if secret is None:
        return existing_key_unavailable(ws, where)
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(c.LABEL_MANAGED_BY) == c.OPERATOR_NAME or labels.get(c.LABEL_USER) != ws.user:
        return existing_key_unavailable(ws, where)
    return None


# --- the user's key, the workspace binding -----------------------------------------------------------
def rotation_request(ws: WorkspaceSecret) -> str | None:
    """The id of a rotation this WorkspaceSecret asks for and has not had yet (the rotate annotation's value
    differs from status.sshKeyRotation), else None. Stamped on the user-key Secret with the new key."""
    if ws.rotate_ssh_key is None or ws.status.get("sshKeyRotation") == ws.rotate_ssh_key:
        return None
    return f"{ws.uid}/{ws.rotate_ssh_key}"


def bind_recheck_delay(creation_timestamp: str | None, now: datetime) -> float:
    """Seconds until an unbound WorkspaceSecret looks for its workspace again (BIND_RECHECK_SCHEDULE)."""
    age = _age_seconds(creation_timestamp, now) or 0.0
    return next((every for below, every in BIND_RECHECK_SCHEDULE if age < below), BIND_RECHECK_SLOWEST)


def _age_seconds(timestamp: str | None, now: datetime) -> float | None:
    if not timestamp:
        return None
    try:
        return (now - datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return None


# --- Events ----------------------------------------------------------------------------------------------
def announcements(status: Mapping[str, Any], ws: WorkspaceSecret, obs: Observation) -> list[tuple[str, str, str]]:
    """The Events (type, reason, message) a reconcile posts, from the status before it and what it observed:
    the Secret written, a new problem (once per reason), recovery, a first Ready after an interrupted run, a
    user-secret conflict, the workspace bound."""
    events: list[tuple[str, str, str]] = []
    previous = find_condition(status.get("conditions"), c.CONDITION_READY) or {}
    newly_bound = bool(obs.workspace_uid and not status.get("workspaceUID"))
    if obs.secret_action is SecretAction.CREATE:
        # Created and bound in one reconcile (the usual start of a workspace): one Event says both -- each Event is a
        # write to the API server, and the WorkspaceBound condition already records the binding.
        bound = f"; bound to {ws.workspace_ref.kind} {ws.workspace_ref.name!r}, deleted with it" if newly_bound else ""
        events.append(("Normal", "SecretCreated", f"Created Secret {ws.secret_name!r} with {obs.key.type} key {obs.key.fingerprint}{bound}."))  # type: ignore[union-attr]
    elif obs.secret_action is SecretAction.UPDATE:
        events.append(("Normal", "SecretUpdated", f"Updated Secret {ws.secret_name!r} to match the spec (key {obs.key.fingerprint})."))  # type: ignore[union-attr]
    if obs.problem and previous.get("reason") != obs.problem.reason:
        events.append(("Warning", obs.problem.reason, obs.problem.message))
    elif not obs.problem and previous.get("status") == "False":
        # Recovered (a fixed key, a removed conflicting Secret): the state change gets its Event too.
        events.append(("Normal", "SecretReady", f"Ready again (was {previous.get('reason')}): Secret {ws.secret_name!r} is up to date."))
    elif not obs.problem and not previous and obs.secret_action is SecretAction.UNCHANGED:
        # First Ready without a write: an earlier run created the Secret and was killed before it could
        # record that (status, Event). Say so now, so the object's history still shows it became Ready.
        events.append(("Normal", "SecretReady", f"Secret {ws.secret_name!r} is up to date (created by an earlier, interrupted reconcile)."))
    previous_user = find_condition(status.get("conditions"), c.CONDITION_USER_SECRETS_READY) or {}
    if obs.user_secrets is not None and obs.user_secrets.problems and previous_user.get("status") != "False":
        events.append(("Warning", "UserSecretConflict", "; ".join(obs.user_secrets.problems)[:1000]))
    if newly_bound and obs.secret_action is not SecretAction.CREATE:
        r = ws.workspace_ref
        events.append(("Normal", "WorkspaceBound", f"Bound to {r.kind} {r.name!r}: the WorkspaceSecret and its Secret are deleted with it."))
    return events
