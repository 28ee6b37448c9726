"""Small helpers shared by the e2e tests."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.rest import ApiException

from workspace_secrets.api import constants as c

T = TypeVar("T")


def wait_for(probe: Callable[[], T], *, timeout: float = 30, interval: float = 0.25, what: str = "condition") -> T:
    """Poll until `probe()` returns something truthy; return it. Fails with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def digest(value: bytes) -> str:
    """Compare secret values by digest, so a failing assertion can never print one."""
    return "sha256:" + hashlib.sha256(value).hexdigest()[:16]


class Api:
    """The bits of the Kubernetes API the tests use, bound to one ApiClient."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # WorkspaceSecrets
    def create_ws(self, namespace: str, name: str, spec: dict, annotations: dict | None = None) -> dict:
        body = {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND,
                "metadata": {"name": name, **({"annotations": annotations} if annotations else {})}, "spec": spec}
        return self.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, body)

    def get_ws(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_ws(self, namespace: str, name: str, patch: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, name, patch)

    def delete_ws(self, namespace: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, name)

    def condition(self, namespace: str, name: str, type_: str = "Ready") -> dict | None:
        ws = self.get_ws(namespace, name) or {}
        return next((x for x in (ws.get("status") or {}).get("conditions", ()) if x["type"] == type_), None)

    def wait_condition(self, namespace: str, name: str, status: str = "True", type_: str = "Ready",
                       reason: str | None = None, timeout: float = 30) -> dict:
        def probe():
            cond = self.condition(namespace, name, type_)
            if cond and cond["status"] == status and (reason is None or cond["reason"] == reason):
                return cond
            return None
        return wait_for(probe, timeout=timeout, what=f"{name} {type_}={status} {reason or ''}")

    # Secrets
    def get_secret(self, namespace: str, name: str) -> client.V1Secret | None:
        try:
            return self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        secret = self.get_secret(namespace, name)
        if secret is None:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def secret_digests(self, namespace: str, name: str) -> dict[str, str] | None:
        data = self.secret_data(namespace, name)
        return None if data is None else {k: digest(v) for k, v in data.items()}

    def create_secret(self, namespace: str, name: str, data: dict[str, bytes], labels: dict | None = None) -> None:
        self.core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            data={k: base64.b64encode(v).decode() for k, v in data.items()},
        ))

    def events_for(self, namespace: str, name: str) -> list[client.CoreV1Event]:
        events = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
        return [e for e in events if e.involved_object.kind == c.WORKSPACE_SECRET_KIND]

    def wait_event(self, namespace: str, name: str, reason: str, *, timeout: float = 10) -> client.CoreV1Event:
        """The WorkspaceSecret's Event with this reason, once it is there (Events are posted around the writes
        a test waits for, not atomically with them)."""
        return wait_for(lambda: next((e for e in self.events_for(namespace, name) if e.reason == reason), None),
                        timeout=timeout, what=f"a {reason} Event of {name}")

    # Workspaces
    def create_deployment(self, namespace: str, name: str, labels: dict | None = None, annotations: dict | None = None,
                          *, user: str | None = None) -> client.V1Deployment:
        """A workspace Deployment. `user` (or a workspace-secrets.io/user entry in `labels`, which go on the pod
        template) labels the Deployment and its pods as that user's workspace: WorkspaceSecrets bind only then."""
        selector = {"app": name}
        labels = {**(labels or {}), **({c.LABEL_USER: user} if user is not None else {})}
        owner = {c.LABEL_USER: labels[c.LABEL_USER]} if c.LABEL_USER in labels else None
        pod_meta = client.V1ObjectMeta(labels={**selector, **labels}, annotations=annotations)
        return self.apps.create_namespaced_deployment(namespace, client.V1Deployment(
            metadata=client.V1ObjectMeta(name=name, labels=owner),
            spec=client.V1DeploymentSpec(
                replicas=1,
                selector=client.V1LabelSelector(match_labels=selector),
                template=client.V1PodTemplateSpec(
                    metadata=pod_meta,
                    spec=client.V1PodSpec(containers=[client.V1Container(name="workspace", image="registry.invalid/workspace:1")]),
                ),
            ),
        ))

    def create_pod(self, namespace: str, name: str, labels: dict | None = None, annotations: dict | None = None,
                   *, user: str | None = None) -> client.V1Pod:
        """A workspace Pod; `user` labels it as that user's workspace (workspace-secrets.io/user)."""
        labels = {**(labels or {}), **({c.LABEL_USER: user} if user is not None else {})} or None
        return self.core.create_namespaced_pod(namespace, client.V1Pod(
            metadata=client.V1ObjectMeta(name=name, labels=labels, annotations=annotations),
            spec=client.V1PodSpec(containers=[client.V1Container(name="workspace", image="registry.invalid/workspace:1")]),
        ))


# The admission webhook
READINESS_PROBE_WS = "wso-webhook-readiness-probe"  # never created: the webhook must refuse a pod naming it


def webhook_answers(api_client: client.ApiClient, namespace: str = "default") -> bool:
    """Whether the API server calls the operator's webhook: a dry-run pod naming a missing WorkspaceSecret
    is refused with the webhook's own message (not admitted, and not a failure to call the webhook)."""
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(generate_name="probe-", labels={c.LABEL_WORKSPACE_SECRET: READINESS_PROBE_WS}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="probe", image="registry.invalid/probe:1")]),
    )
    try:
        client.CoreV1Api(api_client).create_namespaced_pod(namespace, pod, dry_run="All")
    except ApiException as exc:
        return exc.status == 403 and f"WorkspaceSecret {READINESS_PROBE_WS!r} does not exist" in (exc.body or "")
    return False


def tool_env(kubeconfig: Path, scratch: Path, bin_dir: Path) -> dict[str, str]:
    """Environment for subprocesses (kubectl, helm, the operator) that talk to one cluster: its kubeconfig, and
    caches of their own under `scratch`, so no test touches the developer's ~/.kube or Helm state."""
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    env["KUBECACHEDIR"] = str(scratch / "kube-cache")
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(scratch / var.lower())
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    return env
