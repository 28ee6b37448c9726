"""The operator guard on the real API server: the chart's operator-guard policy limits what the operator's own
ServiceAccount may do to pods and Deployments, whatever its RBAC allows (docs/operators/security.md, "a
compromised operator rewrites workloads").

The chart is rendered for a release of its own (cluster-wide mode); its operator ClusterRole and binding and the
guard policy are applied, and the operator's ServiceAccount is impersonated (`kubectl --as
system:serviceaccount:...`), so every request here is one the operator itself could send. Shown: the operator
removes its gate from a workspace pod (the operator's own JSON patch, pods.ungate_patch), deletes a workspace pod
still held at the gate, and stamps workspace-secrets.io/restartedAt on a workspace Deployment; it is refused
(by the policy, not RBAC: each refusal is of a request RBAC allows) changing a pod's image or labels, adding a
gate, deleting an unlabelled or an ungated pod, and changing a Deployment's image, replicas or another
annotation, or an unlabelled Deployment; and the victim object is unchanged after each refusal.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import wait_for

from devcluster.controlplane import pinned_versions
from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.workspace_secret.pods import parse_pods, ungate_patch

CHART = Path(__file__).resolve().parents[2] / "deploy" / "helm" / "workspace-secrets-operator"
RELEASE, RELEASE_NAMESPACE = "guard", "wso-guard-system"
FULLNAME = f"{RELEASE}-workspace-secrets-operator"
OPERATOR = f"system:serviceaccount:{RELEASE_NAMESPACE}:{FULLNAME}"
POLICY = f"ValidatingAdmissionPolicy '{FULLNAME}-operator-guard'"
GATE = c.SCHEDULING_GATE
WS, USER = "ws", "alice"
IMAGE, OTHER_IMAGE = "registry.example/workspace:1", "registry.example/miner:1"


class Kubectl:
    def __init__(self, cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace

    def __call__(self, *args: str, operator: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
        identity = [f"--as={OPERATOR}"] if operator else []
        return self.cluster.kubectl(*identity, "-n", self.namespace, *args, input=input, check=False)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out = self("get", kind, name, "-o", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def exists(self, kind: str, name: str) -> bool:
        return self("get", kind, name, "--ignore-not-found", "-o", "name").stdout.strip() != ""


def refused(result: subprocess.CompletedProcess[str], *parts: str) -> bool:
    return result.returncode != 0 and POLICY in result.stderr and all(p in result.stderr for p in parts)


def _applied(docs: list[dict]) -> list[dict]:
    """The operator's cluster-wide RBAC and the guard, from the rendered chart."""
    wanted = {("ClusterRole", FULLNAME), ("ClusterRoleBinding", FULLNAME),
              ("ValidatingAdmissionPolicy", f"{FULLNAME}-operator-guard"),
              ("ValidatingAdmissionPolicyBinding", f"{FULLNAME}-operator-guard")}
    found = [d for d in docs if (d["kind"], d["metadata"]["name"]) in wanted]
    assert sorted((d["kind"], d["metadata"]["name"]) for d in found) == sorted(wanted)
    return found


@pytest.fixture(scope="module")
def k(cluster, module_namespace) -> Iterator[Kubectl]:
    out = cluster.helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
                       "--kube-version", pinned_versions()["K8S_VERSION"], "-f", "-", input="{}").stdout
    docs = _applied([d for d in yaml.safe_load_all(out) if d])
    manifest = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    kubectl = Kubectl(cluster, module_namespace)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        # More than the chart grants (pods create/delete, evictions), in the test namespace only: whatever the
        # operator's RBAC is or becomes (the gate will delete pods), these requests are decided by the policy.
        kubectl("create", "role", "guard-test-wider", "--verb=create,delete", "--resource=pods,pods/eviction")
        kubectl("create", "rolebinding", "guard-test-wider", "--role=guard-test-wider",
                f"--serviceaccount={RELEASE_NAMESPACE}:{FULLNAME}")
        create_pod(kubectl, "probe")
        wait_for(lambda: refused(kubectl("patch", "pod", "probe", "--dry-run=server", "--type=json", "-p",
                                         json.dumps(image_patch()), operator=True), "may not edit"),
                 timeout=30, what="the operator guard to be enforced")
        yield kubectl
    finally:
        for d in reversed(docs):
            cluster.kubectl("delete", "--ignore-not-found", d["kind"].lower(), d["metadata"]["name"], check=False)
        kubectl("delete", "rolebinding,role", "guard-test-wider", "--ignore-not-found")


# --- objects -----------------------------------------------------------------------------------------------
def pod(name: str, *, gated: bool, workspace: bool, labels: dict[str, str] | None = None) -> dict:
    meta_labels = {"app": "workspace", **({c.LABEL_WORKSPACE_SECRET: WS, c.LABEL_USER: USER} if workspace else {}),
                   **(labels or {})}
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": IMAGE}]}
    if gated:
        spec["schedulingGates"] = [{"name": GATE}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": meta_labels}, "spec": spec}


def create_pod(k: Kubectl, name: str, *, gated: bool = True, workspace: bool = True) -> dict:
    """Created unlabelled, then labelled (the pod-injection webhook, when one is installed, looks at labelled pod
    creations only; labelling later keeps it out of this test)."""
    manifest = pod(name, gated=gated, workspace=False)
    assert k("create", "-f", "-", input=json.dumps(manifest)).returncode == 0
    if workspace:
        assert k("label", "pod", name, f"{c.LABEL_WORKSPACE_SECRET}={WS}", f"{c.LABEL_USER}={USER}").returncode == 0
    return k.get("pod", name)


def image_patch(index: int = 0) -> list[dict]:
    return [{"op": "replace", "path": f"/spec/containers/{index}/image", "value": OTHER_IMAGE}]


def json_patch(k: Kubectl, kind: str, name: str, patch: list[dict] | dict, *, kind_of_patch: str = "json"):
    return k("patch", kind, name, f"--type={kind_of_patch}", "-p", json.dumps(patch), operator=True)


def deployment(name: str, *, user: str | None = USER) -> dict:
    labels = {"app": name, **({c.LABEL_USER: user} if user else {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}, "annotations": {"team": "a"}},
                                  "spec": {"containers": [{"name": "main", "image": IMAGE}]}}}}


def restart_patch(uid: str, stamp: str) -> dict:
    """The operator's restart (workspace_secret/rollout.py): the pod-template annotation, with a uid precondition."""
    return {"metadata": {"uid": uid}, "spec": {"template": {"metadata": {"annotations": {c.ANNOTATION_RESTARTED_AT: stamp}}}}}


def workload_state(obj: dict) -> dict:
    return {"labels": obj["metadata"].get("labels"), "annotations": obj["metadata"].get("annotations"),
            "spec": obj["spec"]}


# --- pods ------------------------------------------------------------------------------------------------
def test_operator_removes_its_gate_from_a_workspace_pod(k: Kubectl) -> None:
    live = create_pod(k, "gated")
    ws = WorkspaceSecret.from_body({"metadata": {"name": WS, "namespace": k.namespace},
                                    "spec": {"user": USER, "workspaceRef": {"kind": "Pod", "name": "gated"}}})
    (workspace_pod,) = parse_pods([live], ws).items
    out = json_patch(k, "pod", "gated", ungate_patch(workspace_pod, ws))
    assert out.returncode == 0, out.stderr
    assert "schedulingGates" not in k.get("pod", "gated")["spec"]


def test_operator_may_not_change_a_pods_image_or_labels(k: Kubectl) -> None:
    before = create_pod(k, "victim")
    assert k("auth", "can-i", "patch", "pods", operator=True).stdout.strip() == "yes", "RBAC allows the patch"
    ungate = {"op": "remove", "path": "/spec/schedulingGates/0"}
    cases = {
        "image": image_patch(),
        "image with the gate's removal": [ungate, *image_patch()],
        "a label": [{"op": "replace", "path": "/metadata/labels/app", "value": "other"}],
        "the user label": [{"op": "replace", "path": "/metadata/labels/workspace-secrets.io~1user", "value": "bob"}],
        "an annotation": [{"op": "add", "path": "/metadata/annotations", "value": {"x": "y"}}],
        "a toleration": [{"op": "add", "path": "/spec/tolerations/-", "value": {"operator": "Exists"}}],
        # (mutable while the pod is gated: where it runs)
        "a node selector": [{"op": "add", "path": "/spec/nodeSelector", "value": {"kubernetes.io/hostname": "n1"}}],
    }
    for what, patch in cases.items():
        out = json_patch(k, "pod", "victim", patch)
        assert refused(out, "may not edit"), f"{what}: {out.returncode} {out.stderr}"
    after = k.get("pod", "victim")
    assert after["spec"] == before["spec"] and after["metadata"]["labels"] == before["metadata"]["labels"]
    assert after["metadata"].get("annotations") == before["metadata"].get("annotations")
    # The platform (the test's admin) is not the operator: the guard does not stand in its way.
    assert k("patch", "pod", "victim", "--type=json", "-p", json.dumps(image_patch())).returncode == 0


def test_operator_may_not_remove_a_foreign_gate_or_ungate_a_foreign_pod(k: Kubectl) -> None:
    create_pod(k, "plain", workspace=False)
    out = json_patch(k, "pod", "plain", [{"op": "remove", "path": "/spec/schedulingGates/0"}])
    assert refused(out, "not labelled"), out.stderr
    assert k.get("pod", "plain")["spec"]["schedulingGates"] == [{"name": GATE}]
    manifest = pod("foreign-gate", gated=True, workspace=False)
    manifest["spec"]["schedulingGates"] = [{"name": "example.com/quota"}, {"name": GATE}]
    assert k("create", "-f", "-", input=json.dumps(manifest)).returncode == 0
    assert k("label", "pod", "foreign-gate", f"{c.LABEL_WORKSPACE_SECRET}={WS}", f"{c.LABEL_USER}={USER}").returncode == 0
    out = json_patch(k, "pod", "foreign-gate", [{"op": "remove", "path": "/spec/schedulingGates/0"}])
    assert refused(out, "may not edit"), out.stderr
    assert json_patch(k, "pod", "foreign-gate", [{"op": "remove", "path": "/spec/schedulingGates/1"}]).returncode == 0
    assert k.get("pod", "foreign-gate")["spec"]["schedulingGates"] == [{"name": "example.com/quota"}]


def test_operator_deletes_only_gated_workspace_pods(k: Kubectl) -> None:
    create_pod(k, "unlabelled", workspace=False)
    create_pod(k, "ungated", gated=False)
    create_pod(k, "held")
    out = k("delete", "pod", "unlabelled", "--wait=false", operator=True)
    assert refused(out, "not labelled"), out.stderr
    out = k("delete", "pod", "ungated", "--wait=false", operator=True)
    assert refused(out, "may not delete", GATE), out.stderr
    assert k.exists("pod", "unlabelled") and k.exists("pod", "ungated")
    out = k("delete", "pod", "held", "--wait=false", operator=True)
    assert out.returncode == 0, out.stderr
    wait_for(lambda: not k.exists("pod", "held"), timeout=30, what="the gated pod to be deleted")


def test_operator_creates_no_pods_and_uses_no_subresources(k: Kubectl) -> None:
    assert k("auth", "can-i", "create", "pods", operator=True).stdout.strip() == "yes", "RBAC (the test's) allows it"
    out = k("create", "-f", "-", input=json.dumps(pod("made", gated=False, workspace=False)), operator=True)
    assert refused(out, "may not create a pod"), out.stderr
    assert not k.exists("pod", "made")
    create_pod(k, "evictee")
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "evictee", "namespace": k.namespace}}
    out = k("create", "--raw", f"/api/v1/namespaces/{k.namespace}/pods/evictee/eviction", "-f", "-",
            input=json.dumps(eviction), operator=True)
    assert refused(out, "subresource eviction"), out.stderr
    assert k.exists("pod", "evictee")


# --- Deployments -------------------------------------------------------------------------------------------
def test_operator_restarts_a_workspace_deployment(k: Kubectl) -> None:
    assert k("create", "-f", "-", input=json.dumps(deployment("workspace"))).returncode == 0
    before = k.get("deployment", "workspace")
    out = json_patch(k, "deployment", "workspace", restart_patch(before["metadata"]["uid"], "2026-01-01T00:00:00Z"),
                     kind_of_patch="merge")
    assert out.returncode == 0, out.stderr
    after = k.get("deployment", "workspace")
    assert after["spec"]["template"]["metadata"]["annotations"] == {"team": "a", c.ANNOTATION_RESTARTED_AT: "2026-01-01T00:00:00Z"}
    # A later rotation stamps again.
    out = json_patch(k, "deployment", "workspace", restart_patch(before["metadata"]["uid"], "2026-01-02T00:00:00Z"),
                     kind_of_patch="merge")
    assert out.returncode == 0, out.stderr


def test_operator_may_not_rewrite_a_deployment(k: Kubectl) -> None:
    assert k("create", "-f", "-", input=json.dumps(deployment("target"))).returncode == 0
    before = k.get("deployment", "target")
    uid = before["metadata"]["uid"]
    assert k("auth", "can-i", "patch", "deployments.apps", operator=True).stdout.strip() == "yes", "RBAC allows the patch"
    cases = {
        "image": {"spec": {"template": {"spec": {"containers": [{"name": "main", "image": OTHER_IMAGE}]}}}},
        "image with a restart": {"spec": {"template": {
            "metadata": {"annotations": {c.ANNOTATION_RESTARTED_AT: "x"}},
            "spec": {"containers": [{"name": "main", "image": OTHER_IMAGE}]}}}},
        "replicas": {"spec": {"replicas": 5}},
        "another template annotation": {"spec": {"template": {"metadata": {"annotations": {"team": "b"}}}}},
        "a template label": {"spec": {"template": {"metadata": {"labels": {"extra": "x"}}}}},
        "an annotation of the Deployment": {"metadata": {"annotations": {"x": "y"}}},
        "a label of the Deployment": {"metadata": {"labels": {c.LABEL_USER: "bob"}}},
        "paused": {"spec": {"paused": True}},
    }
    for what, patch in cases.items():
        out = json_patch(k, "deployment", "target", {"metadata": {"uid": uid}, **patch} if "metadata" not in patch else patch,
                         kind_of_patch="strategic")
        assert refused(out, "may not edit"), f"{what}: {out.returncode} {out.stderr}"
    assert workload_state(k.get("deployment", "target")) == workload_state(before)
    out = k("delete", "deployment", "target", "--wait=false", operator=True)
    assert out.returncode != 0 and k.exists("deployment", "target")


def test_operator_may_not_restart_an_unlabelled_deployment(k: Kubectl) -> None:
    assert k("create", "-f", "-", input=json.dumps(deployment("platform", user=None))).returncode == 0
    before = k.get("deployment", "platform")
    out = json_patch(k, "deployment", "platform", restart_patch(before["metadata"]["uid"], "x"), kind_of_patch="merge")
    assert refused(out, "not labelled", c.LABEL_USER), out.stderr
    assert workload_state(k.get("deployment", "platform")) == workload_state(before)


def test_statefulsets_likewise(k: Kubectl) -> None:
    manifest = deployment("db")
    manifest["kind"] = "StatefulSet"
    manifest["spec"]["serviceName"] = "db"
    assert k("create", "-f", "-", input=json.dumps(manifest)).returncode == 0
    before = k.get("statefulset", "db")
    uid = before["metadata"]["uid"]
    out = json_patch(k, "statefulset", "db", {"metadata": {"uid": uid}, "spec": {"template": {"spec": {
        "containers": [{"name": "main", "image": OTHER_IMAGE}]}}}}, kind_of_patch="strategic")
    assert refused(out, "may not edit"), out.stderr
    assert workload_state(k.get("statefulset", "db")) == workload_state(before)
    out = json_patch(k, "statefulset", "db", restart_patch(uid, "2026-01-01T00:00:00Z"), kind_of_patch="merge")
    assert out.returncode == 0, out.stderr
