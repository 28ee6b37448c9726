"""Smoke tests proving the e2e cluster is a real one: the controllers the operator relies on run
(deployment/replicaset, garbage collector), the CRDs are served, and the pinned tools work.

If these fail, operator e2e failures are about the environment, not the operator.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from typing import TypeVar

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from devcluster.controlplane import listening_addresses, pinned_versions

T = TypeVar("T")

VERSIONS = pinned_versions()


def wait_until(probe: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``probe`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _owned_by(obj: object, uid: str) -> bool:
    refs = getattr(getattr(obj, "metadata"), "owner_references", None) or []
    return any(ref.uid == uid for ref in refs)


def test_crds_established(cluster) -> None:
    if not cluster.crd_names:
        pytest.skip("no CRD manifests in crds/")
    with cluster.api_client() as api:
        extensions = k8s.ApiextensionsV1Api(api)
        for name in cluster.crd_names:
            crd = extensions.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            assert conditions.get("NamesAccepted") == "True", (name, conditions)
            assert conditions.get("Established") == "True", (name, conditions)


def test_deployment_creates_replicaset_and_pod(cluster, namespace: str) -> None:
    """The deployment and replicaset controllers run. No kubelet exists, so the Pod stays Pending."""
    labels = {"app.kubernetes.io/name": "smoke"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "smoke"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "pause", "image": "registry.invalid/pause:1"}]},
            },
        },
    }
    with cluster.api_client() as api:
        apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
        created = apps.create_namespaced_deployment(namespace, deployment)
        replicaset = wait_until(
            lambda: next(
                (
                    rs
                    for rs in apps.list_namespaced_replica_set(namespace).items
                    if _owned_by(rs, created.metadata.uid)
                ),
                None,
            ),
            timeout=60,
            what="a ReplicaSet owned by the Deployment",
        )
        pod = wait_until(
            lambda: next(
                (
                    pod
                    for pod in core.list_namespaced_pod(namespace).items
                    if _owned_by(pod, replicaset.metadata.uid)
                ),
                None,
            ),
            timeout=60,
            what="a Pod owned by the ReplicaSet",
        )
        assert pod.metadata.labels.items() >= labels.items()
        if not cluster.external:
            assert pod.status.phase == "Pending"


def test_owner_reference_cascading_deletion(cluster, namespace: str) -> None:
    """The garbage collector runs: deleting an owner deletes its dependents (the operator's Secrets
    rely on exactly this)."""
    with cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
        core.create_namespaced_config_map(
            namespace,
            {
                "metadata": {
                    "name": "dependent",
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
                    ],
                }
            },
        )
        core.delete_namespaced_config_map("owner", namespace)

        def dependent_gone() -> bool:
            try:
                core.read_namespaced_config_map("dependent", namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return True
                raise
            return False

        wait_until(dependent_gone, timeout=60, what="the garbage collector to delete the dependent")


def test_kubectl_version(cluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    server = versions["serverVersion"]["gitVersion"]
    client = versions["clientVersion"]["gitVersion"]
    if cluster.external:
        assert server.startswith("v1."), server
    else:
        assert server == VERSIONS["K8S_VERSION"]
        assert client == VERSIONS["K8S_VERSION"]


def test_helm_works_against_cluster(cluster) -> None:
    version = cluster.helm("version", "--short").stdout.strip()
    if not cluster.external:
        major_minor = VERSIONS["HELM_VERSION"].rsplit(".", 1)[0]  # v3.22.0 -> v3.22
        assert version.startswith(major_minor + "."), version
    listing = cluster.helm("list", "-A")
    assert listing.stdout.split()[:2] == ["NAME", "NAMESPACE"], listing.stdout


def test_control_plane_listens_on_loopback_only(cluster) -> None:
    """Loopback only; with a node, also the node IP (an address on the launcher's bridge that nothing off the
    machine reaches), never every interface."""
    if cluster.control_plane is None:
        pytest.skip("external cluster")
    plane = cluster.control_plane
    allowed = {plane.node_ip} if plane.has_node else set()
    for proc in plane.processes:
        addresses = listening_addresses(proc.pid)
        assert addresses, f"{proc.name} listens nowhere?"
        for host, port in addresses:
            assert ipaddress.ip_address(host).is_loopback or host in allowed, f"{proc.name} listens on {host}:{port}"
