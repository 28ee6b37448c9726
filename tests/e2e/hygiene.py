"""Feeds the session's secret-hygiene scanner (secret_hygiene) from the cluster.

`snapshot_namespace` runs before each test namespace is deleted (the conftest's namespace fixtures call
it) and records, from that namespace, every Secret's values (needles) and the Events and the status and
metadata of every WorkspaceSecret/UserToken (haystacks). `final_sweep` does the same once more across
the cluster at the end of the session, and the operator's log files are added as haystacks then.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from workspace_secrets.api import constants as c
from secret_hygiene import SecretHygiene

#: Our custom resources, by plural. UserToken's CRD may be absent (then it is skipped).
CUSTOM_RESOURCES = (("WorkspaceSecret", c.WORKSPACE_SECRET_PLURAL), ("UserToken", "usertokens"))


def _secret_data(secret: k8s.V1Secret) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}


def _add_secrets(hygiene: SecretHygiene, secrets: Iterable[k8s.V1Secret]) -> None:
    for secret in secrets:
        hygiene.add_secret(secret.metadata.namespace, secret.metadata.name, _secret_data(secret))


def _custom_objects(api: k8s.ApiClient, plural: str, namespace: str | None) -> list[dict[str, Any]]:
    custom = k8s.CustomObjectsApi(api)
    try:
        if namespace is None:
            listing = custom.list_cluster_custom_object(c.GROUP, c.VERSION, plural)
        else:
            listing = custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, plural)
    except ApiException as exc:
        if exc.status == 404:  # CRD not installed
            return []
        raise
    return listing.get("items", [])


def _add_custom_objects(hygiene: SecretHygiene, api: k8s.ApiClient, namespace: str | None) -> None:
    for kind, plural in CUSTOM_RESOURCES:
        for obj in _custom_objects(api, plural, namespace):
            meta = obj.get("metadata") or {}
            public_key = (obj.get("status") or {}).get("sshPublicKey")
            if public_key:  # public by design; a private key file contains its pieces
                hygiene.add_public(public_key)
            # Annotations include kopf's bookkeeping (last-handled-configuration, handler progress).
            watched = {"annotations": meta.get("annotations"), "labels": meta.get("labels"), "status": obj.get("status")}
            hygiene.add_object(f"{kind} {meta.get('namespace')}/{meta.get('name')} (status, labels, annotations)", watched)


def _add_events(hygiene: SecretHygiene, api: k8s.ApiClient, namespace: str) -> None:
    for event in k8s.CoreV1Api(api).list_namespaced_event(namespace).items:
        hygiene.add_object(f"Event {namespace}/{event.metadata.name}", api.sanitize_for_serialization(event))


def snapshot_namespace(hygiene: SecretHygiene, api: k8s.ApiClient, namespace: str) -> None:
    """Record one namespace's secret values and texts, just before it is deleted."""
    _add_secrets(hygiene, k8s.CoreV1Api(api).list_namespaced_secret(namespace).items)
    _add_events(hygiene, api, namespace)
    _add_custom_objects(hygiene, api, namespace)


def final_sweep(hygiene: SecretHygiene, api: k8s.ApiClient, namespace_prefix: str) -> None:
    """At the end of the session: the operator's Secrets everywhere, and everything in test namespaces
    that still exist (deleted namespaces were recorded by snapshot_namespace)."""
    core = k8s.CoreV1Api(api)
    _add_secrets(hygiene, core.list_secret_for_all_namespaces(label_selector=c.MANAGED_SELECTOR).items)
    for ns in core.list_namespace().items:
        name = ns.metadata.name
        if name.startswith(namespace_prefix) and not ns.metadata.deletion_timestamp:
            _add_secrets(hygiene, core.list_namespaced_secret(name).items)
            _add_events(hygiene, api, name)
    _add_custom_objects(hygiene, api, None)


def operator_logs(root: Path) -> dict[str, str]:
    """Every operator log file of the session (OperatorProcess writes `operator.log` in its directory)."""
    return {
        f"operator log {path}": path.read_text(errors="replace")
        for path in sorted(root.rglob("operator*.log"))
        if path.is_file()
    }
