"""kopf's peering objects (group kopf.dev): read their status, and create them if missing.

kopf never creates the peering object it is told to use (`--peering NAME`), and without it every replica
stays paused forever, so the operator creates it at start-up (the CRDs come from crds/kopf-peering.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .client import Conflict, Kube, NotFound, group_path

GROUP_VERSION = "kopf.dev/v1"


def peering_path(name: str, namespace: str | None) -> str:
    if namespace is None:
        return f"/apis/{GROUP_VERSION}/clusterkopfpeerings/{name}"
    return group_path(GROUP_VERSION, namespace, "kopfpeerings", name)


async def read_status(kube: Kube, name: str, namespace: str | None) -> Mapping[str, Any] | None:
    """The peering object's status (replica identity -> keep-alive), or None if the object is missing."""
    obj = await kube.get(peering_path(name, namespace))
    return None if obj is None else (obj.get("status") or {})


async def ensure(kube: Kube, name: str, namespace: str | None) -> bool:
    """Create the peering object if it does not exist. True if we created it."""
    if await kube.get(peering_path(name, namespace)) is not None:
        return False
    kind = "ClusterKopfPeering" if namespace is None else "KopfPeering"
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    try:
        await kube.create(peering_path(name, namespace).rsplit("/", 1)[0], {"apiVersion": GROUP_VERSION, "kind": kind, "metadata": metadata})
    except Conflict:
        return False  # another replica created it first
    except NotFound as exc:
        raise NotFound(exc.status, exc.reason, f"{kind} is not served: apply crds/kopf-peering.yaml ({exc.message})") from None
    return True
