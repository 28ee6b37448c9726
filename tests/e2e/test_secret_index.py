"""Against the real API server: the metadata-only paged list (Kube.list_metadata_pages) gets a
PartialObjectMetadataList -- no Secret data on the wire -- and a label-selected watch with a SecretIndex follows
creates, updates and deletes. No operator runs."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.kube import METADATA_LIST, Kube, core_path
from workspace_secrets.runtime.secret_index import SecretIndex
from workspace_secrets.runtime.watch import LabelSelectedWatch

VALUE = b"index-e2e-value-7f3a"


def _secret(name: str, user: str | None) -> dict[str, Any]:
    labels = {c.LABEL_USER: user} if user else {}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels},
            "data": {"k": base64.b64encode(VALUE).decode()}}


async def _until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_metadata_pages_carry_no_data_and_a_watch_keeps_the_index_current(cluster, namespace):
    path = core_path(namespace, "secrets")
    kube = Kube.from_environment(kubeconfig=str(cluster.kubeconfig))

    async def scenario() -> None:
        for name, user in (("a", "alice"), ("b", "alice"), ("c", "bob"), ("unlabelled", None)):
            await kube.create(path, _secret(name, user))

        raw = await kube._run("GET", path, query={"labelSelector": c.USER_SECRETS_SELECTOR, "limit": "2"}, accept=METADATA_LIST)
        assert raw["kind"] == "PartialObjectMetadataList" and raw["apiVersion"] == "meta.k8s.io/v1"
        assert {item["kind"] for item in raw["items"]} == {"PartialObjectMetadata"}
        assert all(set(item) <= {"kind", "apiVersion", "metadata"} for item in raw["items"])

        pages = [page async for page in kube.list_metadata_pages(path, label_selector=c.USER_SECRETS_SELECTOR, page_size=2)]
        assert [len(items) for items, _ in pages] == [2, 1]
        assert len({version for _, version in pages}) == 1  # one snapshot
        assert sorted(item["metadata"]["name"] for items, _ in pages for item in items) == ["a", "b", "c"]
        assert base64.b64encode(VALUE).decode() not in repr(pages)

        index = SecretIndex()
        seen: list[tuple[str, str, str | None]] = []

        def handler(type_: str, obj: dict[str, Any]) -> None:
            name = obj["metadata"]["name"]
            seen.append((type_, name, index.version(namespace, name)))

        watch = LabelSelectedWatch(kube, path, c.USER_SECRETS_SELECTOR, handler, index=index, timeout_seconds=10)
        assert await watch.prime() and index.synced
        assert [n for n, _ in index.names_for_user(namespace, "alice")] == ["a", "b"] and len(index) == 3
        task = asyncio.create_task(watch.run())
        try:
            await _until(lambda: watch.healthy, "the watch to connect")
            created = await kube.create(path, _secret("d", "alice"))
            current = await kube.get(f"{path}/c")
            assert current is not None
            current["metadata"]["labels"][c.LABEL_USER] = "alice"
            updated = await kube.replace(f"{path}/c", current)
            assert await kube.delete(f"{path}/a")
            await _until(lambda: len(seen) >= 3, "three events")
            assert [s[:2] for s in seen] == [("ADDED", "d"), ("MODIFIED", "c"), ("DELETED", "a")]
            assert seen[0][2] == created["metadata"]["resourceVersion"]  # indexed before the handler ran
            assert seen[1][2] == updated["metadata"]["resourceVersion"] and seen[2][2] is None
            assert index.names_for_user(namespace, "alice") == [
                ("b", index.version(namespace, "b")), ("c", updated["metadata"]["resourceVersion"]),
                ("d", created["metadata"]["resourceVersion"])]
            assert index.names_for_user(namespace, "bob") == [] and (namespace, "unlabelled") not in index
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        kube.close()
