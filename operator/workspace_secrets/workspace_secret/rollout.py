"""Restart-on-rotation for credentials delivered as env vars (spec.credentials[].delivery: Env).

Env vars are fixed when a container starts, so a rotated value reaches a running workspace only through new
pods: the operator stamps the workspace Deployment's/StatefulSet's pod template with ANNOTATION_RESTARTED_AT
(what `kubectl rollout restart` does with its own annotation) and keeps the superseded credential valid until
the overlap has passed AND that rollout has finished (the ledger records the stamp each retiring credential
waits for, so a crash between writing the Secret and patching the template converges: the next reconcile
patches again). A Pod or PVC workspace cannot be restarted: its env values cannot follow a rotation.

`observe` and `restart` do the I/O; `rollout_complete` decides (pure).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WORKSPACE_KINDS, WorkspaceSecret
from workspace_secrets.runtime.kube import Conflict, Kube, KubeError, NotFound, group_path
from workspace_secrets.workspace_secret import policy

RESTARTABLE_KINDS = ("Deployment", "StatefulSet")


@dataclass(frozen=True)
class Workload:
    """What the credentials' revocation needs to know about the workspace workload."""

    kind: str
    restartable: bool = False  # a Deployment/StatefulSet of the WorkspaceSecret's user that exists
    uid: str = ""
    stamp: str | None = None  # its pod template's ANNOTATION_RESTARTED_AT
    complete: bool = True  # the rollout of its current template has finished
    failure: str | None = None  # why its rollout cannot finish by itself (rollout_failure); None: it can
    problem: str | None = None  # what the operator cannot do with it (an API error, e.g. 403 Forbidden)

    def rolled_out(self, stamp: str) -> bool:
        """Whether the restart `stamp` has reached every pod. Nothing to restart (a Pod or PVC workspace, or none
        at all): nothing to wait for -- the superseded credential is revoked after its overlap, as ever."""
        if not self.restartable:
            return True
        return self.stamp is not None and self.stamp >= stamp and self.complete


def rollout_complete(obj: Mapping[str, Any]) -> bool:
    """`kubectl rollout status`'s rule: the controller has seen the latest template and every replica runs it
    (Deployment: updated, available, no old replicas left; StatefulSet: the update revision is current and
    every replica is ready). Scaled to zero: complete (no pod holds an old value)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False
    replicas = int(spec.get("replicas", 1) if spec.get("replicas") is not None else 1)
    updated = int(status.get("updatedReplicas") or 0)
    if obj.get("kind") == "StatefulSet":
        if replicas == 0:
            return int(status.get("replicas") or 0) == 0
        return (updated >= replicas and int(status.get("readyReplicas") or 0) >= replicas
                and (status.get("updateRevision") or "") == (status.get("currentRevision") or ""))
    return (updated >= replicas and int(status.get("replicas") or 0) <= updated
            and int(status.get("availableReplicas") or 0) >= updated)


def rollout_failure(obj: Mapping[str, Any]) -> str | None:
    """Why a rollout cannot finish by itself (then a retiring credential does not wait for it): a Deployment
    paused or past its progress deadline (condition Progressing=False, reason ProgressDeadlineExceeded), a
    StatefulSet with updateStrategy OnDelete (its pods are replaced only when deleted). None: it can."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    kind = obj.get("kind")
    if kind == "StatefulSet":
        if ((spec.get("updateStrategy") or {}).get("type")) == "OnDelete":
            return "StatefulSet updateStrategy OnDelete: its pods are replaced only when deleted"
        return None
    if spec.get("paused"):
        return "the Deployment is paused"
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Progressing" and str(cond.get("status")) == "False":
            return f"the Deployment's rollout failed ({cond.get('reason') or 'Progressing=False'})"
    return None


def api_problem(verb: str, kind: str, name: str, exc: KubeError) -> str:
    """The Problem message of an API call on the workspace workload that failed (no value in it: the server's
    own status line)."""
    resource = "deployments" if kind == "Deployment" else "statefulsets"
    return (f"the operator cannot {verb} {kind} {name!r}: {exc.status} {exc.reason}; the platform must grant the "
            f"operator apps {resource} get and patch in this namespace (Helm chart RBAC)")


class Rollouts:
    def __init__(self, kube: Kube) -> None:
        self._kube = kube

    def _path(self, ws: WorkspaceSecret) -> str:
        ref = ws.workspace_ref
        api_version, plural = WORKSPACE_KINDS[ref.kind]
        return group_path(api_version, ws.namespace, plural, ref.name)

    async def observe(self, ws: WorkspaceSecret) -> Workload:
        kind = ws.workspace_ref.kind
        if kind not in RESTARTABLE_KINDS:
            return Workload(kind)
        try:
            obj = await self._kube.get(self._path(ws))
        except NotFound:
            obj = None
        except KubeError as exc:
            if exc.status not in (401, 403):
                raise
            # Cannot look: nothing to wait for (revoked after the overlap), and a condition says why.
            return Workload(kind, problem=api_problem("read", kind, ws.workspace_ref.name, exc))
        # Only the user's own workload is ever restarted (the same label rule as the workspace binding).
        if obj is None or obj["metadata"].get("deletionTimestamp") or policy.workspace_user_problem(obj, ws) is not None:
            return Workload(kind)
        obj = {**obj, "kind": kind}
        annotations = ((((obj.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("annotations") or {})
        return Workload(kind, True, obj["metadata"].get("uid", ""), annotations.get(c.ANNOTATION_RESTARTED_AT),
                        rollout_complete(obj), rollout_failure(obj))

    async def restart(self, ws: WorkspaceSecret, workload: Workload, stamp: str) -> bool | str:
        """Stamp the pod template (a new stamp rolls every pod). False when the workload is gone or was replaced
        (the uid precondition): nothing to restart. A string: the API refused (e.g. 403) -- a Problem for the
        platform, not a failed reconcile (the retiring credential waits at most ledger.ROLLOUT_TIMEOUT)."""
        if not workload.restartable:
            return False
        patch = {"metadata": {"uid": workload.uid},
                 "spec": {"template": {"metadata": {"annotations": {c.ANNOTATION_RESTARTED_AT: stamp}}}}}
        try:
            await self._kube.merge_patch(self._path(ws), patch)
        except (NotFound, Conflict):
            return False
        except KubeError as exc:
            if exc.status in (401, 403, 422):
                return api_problem("restart", workload.kind, ws.workspace_ref.name, exc)
            raise
        return True
