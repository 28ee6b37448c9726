"""The harness's own API access: the operator's JSON client (same transport, same pool sizing) used
synchronously from a thread pool, plus the few things a benchmark needs and the operator does not
(raw text for /metrics, namespaces that are waited for, parallel fan-out)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.kube import Kube, KubeError, core_path, group_path

T = TypeVar("T")
R = TypeVar("R")

BENCH_LABEL = "bench.workspace-secrets.io/run"
WS_COLLECTION = f"/apis/{c.API_VERSION}/{c.WORKSPACE_SECRET_PLURAL}"


class BenchKube(Kube):
    """Blocking calls (the harness fans out with threads; the operator's event loop is not involved)."""

    @classmethod
    def connect(cls, kubeconfig: str, concurrency: int = 48) -> BenchKube:
        kube = cls.from_environment(kubeconfig=kubeconfig, max_concurrency=concurrency)
        assert isinstance(kube, BenchKube)
        return kube

    def call(self, method: str, path: str, body: Any = None, *, content_type: str | None = None,
             query: Mapping[str, str] | None = None, timeout: float = 60) -> Any:
        return self._call(method, path, body=body, content_type=content_type, query=query, timeout=timeout)

    def text(self, path: str) -> str:
        response = self._request("GET", path, timeout=30)
        if response.status != 200:
            raise KubeError(response.status, "", response.data[:200].decode(errors="replace"))
        return response.data.decode()

    def get_or_none(self, path: str) -> Any:
        try:
            return self.call("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def watch(self, path: str, query: Mapping[str, str], timeout: float) -> Iterator[dict[str, Any]]:
        return self.stream(path, query, timeout=timeout)

    # --- namespaces -----------------------------------------------------------------------------
    def ensure_namespace(self, name: str, *, wait_service_account: bool = True, timeout: float = 60) -> None:
        """Create the namespace (waiting out a previous incarnation's termination) and, since Pods are
        refused until it exists, its `default` ServiceAccount."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": name, "labels": {BENCH_LABEL: "namespace"}}})
                break
            except KubeError as exc:
                if exc.status != 409:
                    raise
                existing = self.get_or_none(f"/api/v1/namespaces/{name}")
                if existing is not None and not existing["metadata"].get("deletionTimestamp"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"namespace {name} is still terminating") from None
                time.sleep(0.5)
        while wait_service_account and self.get_or_none(core_path(name, "serviceaccounts", "default")) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no default ServiceAccount in {name}")
            time.sleep(0.2)

    def delete_namespaces(self, names: Iterable[str], *, wait: bool = True, timeout: float = 900) -> float:
        """Delete and (optionally) wait until gone, so that the namespace controller's deletions do not
        load the API server during the next measurement. Returns the seconds waited."""
        names = list(names)
        started = time.monotonic()
        for name in names:
            try:
                self.call("DELETE", f"/api/v1/namespaces/{name}")
            except KubeError as exc:
                if exc.status != 404:
                    raise
        while wait and any(self.get_or_none(f"/api/v1/namespaces/{n}") is not None for n in names):
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"namespaces {names} not deleted after {timeout}s")
            time.sleep(1)
        return time.monotonic() - started

    def count(self, path: str, label_selector: str | None = None) -> int:
        """How many objects a list returns (paged, so 10k Secrets never arrive in one response)."""
        total, token = 0, None
        while True:
            query = {"limit": "500", **({"labelSelector": label_selector} if label_selector else {}),
                     **({"continue": token} if token else {})}
            page = self.call("GET", path, query=query)
            total += len(page.get("items", ()))
            token = page["metadata"].get("continue")
            if not token:
                return total


def fan_out(fn: Callable[[T], R], items: Iterable[T], *, concurrency: int) -> list[R]:
    """Run fn over items with `concurrency` threads; results in input order; the first error raises."""
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench") as pool:
        return list(pool.map(fn, items))


# --- object bodies --------------------------------------------------------------------------------
def pod(name: str, run: str, user: str) -> dict[str, Any]:
    """A workspace anchor of `user` (label workspace-secrets.io/user: a WorkspaceSecret binds only to a
    workspace of its own user). Without a kubelet or scheduler it stays Pending forever and costs only its
    etcd entry; an unscheduled Pod is deleted at once (no graceful termination)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {BENCH_LABEL: run, c.LABEL_USER: user}},
        "spec": {"automountServiceAccountToken": False,
                 "containers": [{"name": "workspace", "image": "registry.invalid/workspace:1"}]},
    }


def workspace_secret(name: str, user: str, anchor: str, run: str, *, key_type: str = "ed25519",
                     rsa_bits: int | None = None, credentials: list[dict[str, Any]] | None = None,
                     owner: dict[str, Any] | None = None) -> dict[str, Any]:
    ssh: dict[str, Any] = {"keyType": key_type, "knownHosts": [
        "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"]}
    if rsa_bits:
        ssh["rsaBits"] = rsa_bits
    spec: dict[str, Any] = {"user": user, "workspaceRef": {"kind": "Pod", "name": anchor}, "ssh": ssh}
    if credentials:
        spec["credentials"] = credentials
    meta: dict[str, Any] = {"name": name, "labels": {BENCH_LABEL: run}}
    if owner:
        meta["ownerReferences"] = [owner]
    return {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": meta, "spec": spec}


def ws_path(namespace: str, name: str | None = None, *, status: bool = False) -> str:
    return group_path(c.API_VERSION, namespace, c.WORKSPACE_SECRET_PLURAL, name, subresource="status" if status else None)


def is_ready(obj: Mapping[str, Any]) -> bool:
    for condition in (obj.get("status") or {}).get("conditions") or ():
        if condition.get("type") == c.CONDITION_READY:
            return condition.get("status") == "True"
    return False


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
