"""What a workspace pod gets from its WorkspaceSecret: one Secret volume, read-only mounts and env vars
by `secretKeyRef` (pure).

The admission webhook reads the WorkspaceSecret named by the pod's label, and asks this module:
`mount_source` (may the pod use it, and what does it publish?) and `inject` (which RFC 6902 "add"
operations turn the pod into a workspace pod?). The answer never copies a secret value into the pod spec
and never replaces anything the pod already defines: a volume, mount or env var of the same name that
differs is reported as a conflict (a warning for the API client, an Event on the WorkspaceSecret).
Injecting into an already-injected pod yields no operations, so the webhook is idempotent.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import SpecError, WorkspaceSecret
from workspace_secrets.api.conditions import find
from workspace_secrets.user_keys.naming import is_reserved_secret_name

# Kubernetes' rules for env var names and Secret keys (validation.IsEnvVarName / IsConfigMapKey).
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

# Ready=False reasons after which the Secret named by the WorkspaceSecret is not (and will not become,
# without a human) the operator's: mounting it would hand the pod someone else's Secret.
_REFUSED_REASONS = frozenset({"SecretConflict", "InvalidSpec"})

JSONPatch = list[dict[str, Any]]


@dataclass(frozen=True)
class EnvBinding:
    """One entry of a WorkspaceSecret's `status.env`: container env var `name` = Secret key `key`."""

    name: str
    key: str


# What a WorkspaceSecret publishes before its controller has written status.env (a just-created one):
# every workspace Secret carries GIT_SSH_COMMAND.
DEFAULT_ENV: tuple[EnvBinding, ...] = (EnvBinding(c.KEY_GIT_SSH_COMMAND, c.KEY_GIT_SSH_COMMAND),)


@dataclass(frozen=True)
class FileBinding:
    """One entry of `status.files` (user secrets): Secret key `key` as the file `path` (relative)."""

    key: str
    path: str
    mode: int | None = None


@dataclass(frozen=True)
class MountSource:
    """The parts of a WorkspaceSecret a pod needs. `notes` are warnings about the WorkspaceSecret itself."""

    workspace_secret: str
    secret_name: str
    mount_path: str
    env: tuple[EnvBinding, ...] = DEFAULT_ENV
    notes: tuple[str, ...] = ()
    files: tuple[FileBinding, ...] = ()  # user-secret files, mounted in their own directory
    files_mount_path: str = c.DEFAULT_USER_FILES_PATH
    user: str = ""  # the WorkspaceSecret's spec.user: the pod must be labelled with it
    gate: bool = False  # the pod waits (scheduling gate) until the controller says the Secret holds everything


@dataclass(frozen=True)
class Injection:
    patch: JSONPatch  # RFC 6902 "add" operations against the pod as admitted
    warnings: list[str] = field(default_factory=list)  # for the admission response (conflicts included)
    conflicts: list[str] = field(default_factory=list)  # what the pod already defines: also an Event


class Refused(Exception):
    """The pod must not be admitted. The message names what is wrong and how to fix it."""


# --- the request -------------------------------------------------------------------------------------
def requested_workspace_secret(pod: Mapping[str, Any]) -> str | None:
    """The WorkspaceSecret a pod opts into by label, or None for a pod that did not opt in."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(c.LABEL_WORKSPACE_SECRET) or None


def pod_name(pod: Mapping[str, Any]) -> str:
    """The pod's name for messages; a ReplicaSet's pod has only a generateName at admission."""
    meta = pod.get("metadata") or {}
    return meta.get("name") or f"{meta.get('generateName') or 'pod-'}<generated>"


def missing_message(name: str, namespace: str) -> str:
    return (
        f"label {c.LABEL_WORKSPACE_SECRET}={name}: WorkspaceSecret {name!r} does not exist in namespace "
        f"{namespace!r} (the label names a WorkspaceSecret in the pod's own namespace). Create it before the "
        f"pod, or remove the label and mount a Secret by hand."
    )


# --- the WorkspaceSecret ---------------------------------------------------------------------------------
def mount_source(body: Mapping[str, Any]) -> MountSource:
    """What a pod may mount from this WorkspaceSecret; `Refused` when it must not use it.

    A WorkspaceSecret that is not Ready yet is usable: its Secret's name is deterministic, and the kubelet
    starts the pod once the Secret exists. Refused are: one being deleted, one with an invalid spec, and one
    whose Secret name is held by a Secret the operator does not own (Ready=False/SecretConflict).
    """
    meta = body.get("metadata") or {}
    name = meta.get("name", "")
    where = f"label {c.LABEL_WORKSPACE_SECRET}={name}: WorkspaceSecret {name!r}"
    if meta.get("deletionTimestamp"):
        raise Refused(f"{where} is being deleted; its Secret goes with it. Point the label at another WorkspaceSecret.")
    try:
        ws = WorkspaceSecret.from_body(body)
    except SpecError as exc:
        raise Refused(f"{where} has an invalid spec ({exc}); fix the WorkspaceSecret, then create the pod again.") from None
    if is_reserved_secret_name(ws.secret_name):
        raise Refused(f"{where} names Secret {ws.secret_name!r}, a name reserved for the operator's per-user keys; it is never mounted.")
    ready = find((body.get("status") or {}).get("conditions"), c.CONDITION_READY) or {}
    if ready.get("status") == "False" and ready.get("reason") in _REFUSED_REASONS:
        raise Refused(f"{where} is not usable ({ready['reason']}: {ready.get('message', '')})")
    notes: list[str] = []
    if ready.get("status") != "True":
        state = f"{ready.get('reason')}: {ready.get('message')}" if ready else "not reconciled yet"
        notes.append(
            f"WorkspaceSecret {name!r} is not Ready ({state}); the pod mounts Secret {ws.secret_name!r}, "
            f"and the kubelet starts it once that Secret holds everything."
        )
    env, env_notes = env_bindings(ws.status, name)
    files = tuple(
        FileBinding(f["key"], f["path"], f.get("mode"))
        for f in ws.status.get("files") or ()
        if isinstance(f, Mapping) and _SECRET_KEY.match(str(f.get("key", ""))) and f.get("path")
    )
    return MountSource(
        workspace_secret=name,
        secret_name=ws.secret_name,
        mount_path=ws.mount_path,
        env=env,
        notes=(*notes, *env_notes),
        files=files,
        files_mount_path=ws.user_files_path,
        user=ws.user,
        gate=ws.requires_gate,
    )


def env_bindings(status: Mapping[str, Any], name: str = "") -> tuple[tuple[EnvBinding, ...], list[str]]:
    """Parse `status.env` (the controller's contract with the webhook); unusable entries become notes."""
    raw = status.get("env")
    if raw is None:
        return DEFAULT_ENV, []
    bindings: list[EnvBinding] = []
    notes: list[str] = []
    seen: set[str] = set()
    for entry in raw if isinstance(raw, list) else ():
        env_name, key = (entry or {}).get("name"), (entry or {}).get("key")
        if not (isinstance(env_name, str) and _ENV_NAME.match(env_name) and isinstance(key, str) and _SECRET_KEY.match(key)):
            notes.append(f"WorkspaceSecret {name!r}: status.env entry {env_name!r} is not a valid env var name / Secret key; skipped")
        elif env_name not in seen:
            seen.add(env_name)
            bindings.append(EnvBinding(env_name, key))
    return tuple(bindings), notes


# --- the pod ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    field: str  # "containers" or "initContainers"
    index: int
    container: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.container.get("name", f"#{self.index}"))

    @property
    def path(self) -> str:
        return f"/spec/{self.field}/{self.index}"


def inject(pod: Mapping[str, Any], source: MountSource) -> Injection:
    """The operations that give `pod` the WorkspaceSecret's volume, mounts and env vars.

    Targets: every container, or the (init) containers the containers annotation lists; init containers
    only when listed. Raises `Refused` for a containers annotation naming no such container, or a
    mount-path annotation that disagrees with the WorkspaceSecret's spec.mountPath (GIT_SSH_COMMAND in the
    Secret points at spec.mountPath, so a pod mounting elsewhere would get a command that cannot work).
    """
    check_pod_user(pod, source)
    spec = pod.get("spec") or {}
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    _check_mount_path(annotations, source)
    targets = _targets(spec, annotations)
    volumes: Sequence[Mapping[str, Any]] = spec.get("volumes") or ()
    mount_path = source.mount_path.rstrip("/") or "/"
    patch: JSONPatch = []
    conflicts: list[str] = []

    # Mounts: a container that already mounts our Secret at the mount path is done; one that mounts
    # something else there is a conflict (left untouched); the others get a mount.
    needs_mount: list[_Target] = []
    for target in targets:
        existing = next((m for m in target.container.get("volumeMounts") or () if _same_path(m.get("mountPath"), mount_path)), None)
        if existing is None:
            needs_mount.append(target)
        elif not _mounts_secret(existing, volumes, source.secret_name):
            conflicts.append(
                f"container {target.name!r} already mounts volume {existing.get('name')!r} at {mount_path}; "
                f"left as it is, so the files of Secret {source.secret_name!r} are not mounted there"
            )
    if needs_mount:
        volume = next((v["name"] for v in volumes if _is_secret_volume(v, source.secret_name)), None)
        if volume is None and any(v.get("name") == c.POD_VOLUME_NAME for v in volumes):
            conflicts.append(
                f"volume {c.POD_VOLUME_NAME!r} already exists and is not Secret {source.secret_name!r}; left as it "
                f"is, so no container gets the Secret's files at {mount_path}"
            )
            needs_mount = []
        elif volume is None:
            volume = c.POD_VOLUME_NAME
            mode = c.MODE_GROUP_READABLE if (spec.get("securityContext") or {}).get("fsGroup") is not None else c.MODE_OWNER_ONLY
            patch += _append("/spec", spec, "volumes", [{"name": volume, "secret": {"secretName": source.secret_name, "defaultMode": mode}}])
        for target in needs_mount:
            mount = {"name": volume, "mountPath": mount_path, "readOnly": True}
            patch += _append(target.path, target.container, "volumeMounts", [mount])

    # Env vars: by secretKeyRef only. An env var of the same name that is not this reference is kept.
    for target in targets:
        defined = {e.get("name"): e for e in target.container.get("env") or ()}
        new = []
        for binding in source.env:
            current = defined.get(binding.name)
            if current is None:
                new.append({"name": binding.name, "valueFrom": {"secretKeyRef": {"name": source.secret_name, "key": binding.key}}})
            elif not _is_secret_ref(current, source.secret_name, binding.key):
                conflicts.append(
                    f"container {target.name!r} already defines env var {binding.name}; left as it is, so it does "
                    f"not come from key {binding.key!r} of Secret {source.secret_name!r}"
                )
        patch += _append(target.path, target.container, "env", new)

    if source.files:  # computed on the pod as patched so far, so list appends compose
        patched = apply_patch(pod, patch)
        patched_spec = patched.get("spec") or {}
        patch += _user_files(patched_spec, _targets(patched_spec, annotations), source, conflicts)
    hints = _readability_hints(spec, needs_mount)
    gate_patch, gate_notes = scheduling_gate(spec, source)
    patch += gate_patch
    return Injection(patch=patch, warnings=[*source.notes, *conflicts, *hints, *gate_notes], conflicts=conflicts)


def scheduling_gate(spec: Mapping[str, Any], source: MountSource) -> tuple[JSONPatch, list[str]]:
    """The scheduling gate that holds the pod until its WorkspaceSecret holds everything it requires (a
    required userToken, WhileRunning credentials): the controller removes it. A pod with spec.nodeName set
    bypasses the scheduler, and the API server refuses it with a gate: it is admitted without one, with a
    warning that it may start before its tokens and credentials are there."""
    if not source.gate:
        return [], []
    gates: Sequence[Mapping[str, Any]] = spec.get("schedulingGates") or ()
    if any(g.get("name") == c.SCHEDULING_GATE for g in gates):
        return [], []
    if spec.get("nodeName"):
        return [], [
            f"the pod sets spec.nodeName, so it cannot wait (scheduling gate {c.SCHEDULING_GATE}) for what WorkspaceSecret "
            f"{source.workspace_secret!r} requires: it may start before its tokens and credentials are in Secret "
            f"{source.secret_name!r}; use a nodeSelector or node affinity instead"
        ]
    return _append("/spec", spec, "schedulingGates", [{"name": c.SCHEDULING_GATE}]), []


def check_pod_user(pod: Mapping[str, Any], source: MountSource) -> None:
    """A pod gets a WorkspaceSecret's secrets only when it is a workspace of that WorkspaceSecret's user.

    The pod says whose workspace it is with the label workspace-secrets.io/user, set by whoever creates it
    (the platform's provisioner). The WorkspaceSecret's name alone proves nothing: another user may have
    deleted and re-created it with their own spec.user (issue 14, instance 5)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    user = labels.get(c.LABEL_USER)
    if user == source.user and user:
        return
    found = f"is {user!r}" if user is not None else "is missing"
    raise Refused(
        f"label {c.LABEL_USER} {found}, but WorkspaceSecret {source.workspace_secret!r} belongs to user "
        f"{source.user!r}: a pod gets a WorkspaceSecret only when it is labelled {c.LABEL_USER}={source.user} "
        f"(the workspace's user) next to {c.LABEL_WORKSPACE_SECRET}={source.workspace_secret}. Label the pod (or the "
        f"pod template) with its user, or point {c.LABEL_WORKSPACE_SECRET} at a WorkspaceSecret of that user."
    )


def _user_files(spec: Mapping[str, Any], targets: Sequence[_Target], source: MountSource, conflicts: list[str]) -> JSONPatch:
    """User-secret files: a second volume of the same Secret whose `items` place each declared key at its
    declared relative path, mounted read-only at the user files directory."""
    if not source.files:
        return []
    volumes: Sequence[Mapping[str, Any]] = spec.get("volumes") or ()
    path = source.files_mount_path.rstrip("/") or "/"
    items = [{"key": f.key, "path": f.path, **({"mode": f.mode} if f.mode is not None else {})} for f in source.files]
    existing = next((v for v in volumes if v.get("name") == c.POD_USER_FILES_VOLUME_NAME), None)
    patch: JSONPatch = []
    if existing is None:
        mode = c.MODE_GROUP_READABLE if (spec.get("securityContext") or {}).get("fsGroup") is not None else c.MODE_OWNER_ONLY
        volume = {"name": c.POD_USER_FILES_VOLUME_NAME, "secret": {"secretName": source.secret_name, "defaultMode": mode, "items": items}}
        patch += _append("/spec", spec, "volumes", [volume])
    elif (existing.get("secret") or {}).get("secretName") != source.secret_name:
        conflicts.append(f"volume {c.POD_USER_FILES_VOLUME_NAME!r} already exists and is not Secret {source.secret_name!r}; user files are not mounted")
        return []
    for target in targets:
        mounted = next((m for m in target.container.get("volumeMounts") or () if _same_path(m.get("mountPath"), path)), None)
        if mounted is None:
            patch += _append(target.path, target.container, "volumeMounts", [{"name": c.POD_USER_FILES_VOLUME_NAME, "mountPath": path, "readOnly": True}])
        elif mounted.get("name") != c.POD_USER_FILES_VOLUME_NAME:
            conflicts.append(f"container {target.name!r} already mounts volume {mounted.get('name')!r} at {path}; user files are not mounted there")
    return patch


def _check_mount_path(annotations: Mapping[str, str], source: MountSource) -> None:
    wanted = annotations.get(c.ANNOTATION_MOUNT_PATH)
    if wanted is None or _same_path(wanted, source.mount_path):
        return
    raise Refused(
        f"annotation {c.ANNOTATION_MOUNT_PATH}={wanted!r} differs from spec.mountPath {source.mount_path!r} of "
        f"WorkspaceSecret {source.workspace_secret!r}; GIT_SSH_COMMAND in its Secret points at spec.mountPath. "
        f"Set spec.mountPath to {wanted!r} on the WorkspaceSecret, or remove the annotation."
    )


def _targets(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> list[_Target]:
    regular = [_Target("containers", i, ct) for i, ct in enumerate(spec.get("containers") or ())]
    init = [_Target("initContainers", i, ct) for i, ct in enumerate(spec.get("initContainers") or ())]
    listed = [n.strip() for n in (annotations.get(c.ANNOTATION_CONTAINERS) or "").split(",") if n.strip()]
    if not listed:
        return regular
    by_name = {t.name: t for t in (*regular, *init)}
    unknown = [n for n in listed if n not in by_name]
    if unknown:
        raise Refused(
            f"annotation {c.ANNOTATION_CONTAINERS} names {', '.join(map(repr, unknown))}, which the pod does not "
            f"have (its containers: {', '.join(map(repr, by_name)) or 'none'}); fix the list or remove the annotation."
        )
    return [by_name[n] for n in dict.fromkeys(listed)]


def _readability_hints(spec: Mapping[str, Any], mounted: Sequence[_Target]) -> list[str]:
    """The Secret's files are root-owned; a non-root container can read them only through fsGroup."""
    pod_security = spec.get("securityContext") or {}
    if pod_security.get("fsGroup") is not None:
        return []
    non_root = []
    for target in mounted:
        security = {**pod_security, **{k: v for k, v in (target.container.get("securityContext") or {}).items() if v is not None}}
        if (security.get("runAsUser") or 0) > 0 or security.get("runAsNonRoot"):
            non_root.append(target.name)
    if not non_root:
        return []
    return [
        f"container(s) {', '.join(map(repr, non_root))} run as non-root without spec.securityContext.fsGroup: the "
        f"mounted files are root-owned with mode 0400 and unreadable to them; set fsGroup (the mode becomes 0440)"
    ]


def _same_path(a: object, b: str) -> bool:
    return isinstance(a, str) and (a.rstrip("/") or "/") == (b.rstrip("/") or "/")


def _is_secret_volume(volume: Mapping[str, Any], secret_name: str) -> bool:
    """A volume with every key of the Secret as a file (no `items` remapping), as GIT_SSH_COMMAND expects."""
    secret = volume.get("secret") or {}
    return secret.get("secretName") == secret_name and not secret.get("items")


def _mounts_secret(mount: Mapping[str, Any], volumes: Sequence[Mapping[str, Any]], secret_name: str) -> bool:
    if mount.get("subPath") or mount.get("subPathExpr"):
        return False
    volume = next((v for v in volumes if v.get("name") == mount.get("name")), None)
    return volume is not None and _is_secret_volume(volume, secret_name)


def _is_secret_ref(env: Mapping[str, Any], secret_name: str, key: str) -> bool:
    ref = ((env.get("valueFrom") or {}).get("secretKeyRef")) or {}
    return "value" not in env and ref.get("name") == secret_name and ref.get("key") == key


def _append(base: str, parent: Mapping[str, Any], field_name: str, items: list[dict[str, Any]]) -> JSONPatch:
    """Add `items` to the list `parent[field_name]`: one add of the whole list when it is absent (a JSON
    pointer cannot append to a missing array), else one append ("/-") per item."""
    if not items:
        return []
    path = f"{base}/{field_name}"
    if parent.get(field_name) is None:
        return [{"op": "add", "path": path, "value": items}]
    return [{"op": "add", "path": f"{path}/-", "value": item} for item in items]


def apply_patch(document: Mapping[str, Any], patch: JSONPatch) -> dict[str, Any]:
    """A copy of `document` with the "add" operations `inject` produces applied (the subset of RFC 6902
    this module emits; anything else is a programming error)."""
    result: dict[str, Any] = copy.deepcopy(dict(document))
    for op in patch:
        if op.get("op") != "add":
            raise ValueError(f"unsupported JSON patch operation {op.get('op')!r}")
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = result
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        value = copy.deepcopy(op["value"])
        if isinstance(node, list):
            node.insert(len(node) if last == "-" else int(last), value)
        else:
            node[last] = value
    return result
