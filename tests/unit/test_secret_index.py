"""The SecretIndex (runtime/secret_index.py), the metadata-only paged list that feeds it (Kube.list_metadata_pages),
and the label-selected watch that keeps it current (runtime/watch.py with `index=`): what it holds and what not,
what a relist and each watch event do to it, and that the handler runs after the index has the event."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import threading
import time
import tracemalloc
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.kube import METADATA_LIST, Kube
from workspace_secrets.runtime.secret_index import Entry, SecretIndex
from workspace_secrets.runtime.watch import LabelSelectedWatch

NS = "team"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
USER_SELECTOR = c.USER_SECRETS_SELECTOR


def meta(name: str, rv: str, user: str | None = "alice", namespace: str = NS, **labels: str) -> dict[str, Any]:
    all_labels = {**({c.LABEL_USER: user} if user else {}), **labels}
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": rv, "labels": all_labels,
                         "annotations": {"note": "not kept"}, "uid": f"uid-{name}"}}


def secret(name: str, user: str | None = "alice", value: bytes = b"v", **labels: str) -> dict[str, Any]:
    all_labels = {**({c.LABEL_USER: user} if user else {}), **labels}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS, "labels": all_labels},
            "data": {"k": base64.b64encode(value).decode()}}


# --- the index alone ------------------------------------------------------------------------------------
def test_a_full_list_fills_it_with_versions_and_the_users_secrets_and_nothing_else():
    index = SecretIndex()
    assert not index.synced and len(index) == 0 and index.version(NS, "a") is None
    index.replace([meta("b", "11"), meta("a", "10"), meta("c", "12", user="bob", **{c.LABEL_COMPONENT: "user-ssh-key"}),
                   meta("d", "13", user=None), {"metadata": {"name": "no-namespace"}}], "20")
    assert index.synced and len(index) == 4 and index.list_resource_versions == {None: "20"}
    assert index.version(NS, "a") == "10" and index.version(NS, "d") == "13" and index.version("other", "a") is None
    assert index.names_for_user(NS, "alice") == [("a", "10"), ("b", "11")]  # sorted by name
    assert index.names_for_user(NS, "bob") == [("c", "12")] and index.names_for_user("other", "alice") == []
    assert index.get(NS, "c") == Entry("12", "bob", "user-ssh-key")
    assert index.get(NS, "d") == Entry("13", None, None)
    assert (NS, "a") in index and (NS, "x") not in index and sorted(index) == [(NS, n) for n in "abcd"]


def test_watch_events_add_change_move_between_users_and_remove():
    index = SecretIndex()
    index.replace([meta("a", "1")], "1")
    index.apply("ADDED", meta("b", "2"))
    index.apply("MODIFIED", meta("a", "3"))
    assert index.names_for_user(NS, "alice") == [("a", "3"), ("b", "2")]
    index.apply("MODIFIED", meta("a", "4", user="bob"))  # relabelled to another user
    assert index.names_for_user(NS, "alice") == [("b", "2")] and index.names_for_user(NS, "bob") == [("a", "4")]
    index.apply("MODIFIED", meta("a", "5", user=None))  # no user any more: still indexed, nobody's
    assert index.names_for_user(NS, "bob") == [] and index.version(NS, "a") == "5"
    index.apply("DELETED", meta("b", "6"))
    index.apply("DELETED", meta("never-seen", "7"))
    index.apply("BOOKMARK", {"metadata": {"resourceVersion": "8"}})
    index.apply("ERROR", {"code": 410})
    assert index.names_for_user(NS, "alice") == [] and len(index) == 1 and index.version(NS, "b") is None
    index.apply("DELETED", meta("a", "9", user=None))
    assert len(index) == 0 and index._by_user == {} and index._objects == {}  # nothing left behind


def test_a_relist_replaces_everything_it_held():
    index = SecretIndex()
    index.replace([meta("a", "1"), meta("b", "2", user="bob")], "2")
    index.replace([meta("b", "5", user="carol"), meta("c", "6")], "6")
    assert sorted(index) == [(NS, "b"), (NS, "c")]
    assert index.names_for_user(NS, "alice") == [("c", "6")] and index.names_for_user(NS, "bob") == []
    assert index.names_for_user(NS, "carol") == [("b", "5")]


def test_a_full_list_says_whether_it_changed_what_the_index_held():
    index = SecretIndex()
    assert index.replace([meta("a", "1")], "1")  # the first list: everything is new
    assert not index.replace([meta("a", "1")], "9"), "the same Secrets at the same versions: nothing was missed"
    assert index.replace([meta("a", "2")], "10"), "a new resourceVersion"
    assert index.replace([meta("a", "2"), meta("b", "3")], "11"), "one more"
    assert index.replace([meta("b", "3")], "12"), "one less"
    assert index.replace([meta("b", "3", user="bob")], "12"), "another user at the same version (never in practice)"
    # Per namespace: only that namespace's entries count.
    index.replace([meta("x", "1", namespace="other")], "13", namespace="other")
    assert not index.replace([meta("b", "3", user="bob"), meta("x", "7", namespace="other")], "14", namespace=NS)


def test_per_namespace_watches_share_one_index_and_it_is_synced_when_all_have_listed():
    index = SecretIndex()
    index.expect("one")
    index.expect("two")
    index.replace([meta("a", "1", namespace="one"), meta("stray", "1", namespace="two")], "1", namespace="one")
    assert not index.synced and len(index) == 1  # "two" has not listed; its items are not one's to add
    index.replace([meta("a", "2", namespace="two")], "2", namespace="two")
    assert index.synced and index.version("one", "a") == "1" and index.version("two", "a") == "2"
    index.replace([], "3", namespace="one")  # one's relist replaces only one's entries
    assert sorted(index) == [("two", "a")] and index.names_for_user("one", "alice") == []
    assert index.names_for_user("two", "alice") == [("a", "2")]


def test_it_keeps_no_data_labels_or_annotations():
    index = SecretIndex()
    obj = secret("a", value=b"s3cret-value", extra="label-value")
    obj["metadata"].update(resourceVersion="1", annotations={"annotation": "annotation-value"})
    index.replace([obj], "1")
    index.apply("MODIFIED", {**obj, "metadata": {**obj["metadata"], "resourceVersion": "2"}})
    held = repr((index._objects, index._by_user, index.list_resource_versions))
    for value in ("s3cret", base64.b64encode(b"s3cret-value").decode(), "label-value", "annotation-value", "extra"):
        assert value not in held


def test_memory_per_secret_is_a_few_hundred_bytes():
    n = 10_000
    gc.collect()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        # Fresh strings, as parsed from the API server's JSON (names and versions are all different).
        pages = json.loads(json.dumps([[meta(f"user{i % 500}-secret-{i:05d}", str(10_000_000 + i), user=f"user{i % 500}",
                                             **{c.LABEL_COMPONENT: "user-secret", "other": "x" * 64})
                                        for i in range(p, p + 500)] for p in range(0, n, 500)]))
        index = SecretIndex()
        entries = []
        for page in pages:
            entries += SecretIndex.entries_of(page)
        index.replace_entries(entries, "1")
        del pages, entries
        gc.collect()
        per_object = (tracemalloc.get_traced_memory()[0] - baseline) / n
    finally:
        tracemalloc.stop()
    assert len(index) == n
    assert per_object < 600, per_object  # name, resourceVersion, an Entry, dict slots, the user index


# --- the metadata-only paged list ---------------------------------------------------------------------
class _Response:
    def __init__(self, body: dict[str, Any]) -> None:
        self.status, self.data, self.headers = 200, json.dumps(body).encode(), {}


def _kube_answering(pages: list[dict[str, Any]], sent: list[dict[str, Any]]) -> Kube:
    def request(method: str, url: str, **kwargs: Any) -> _Response:
        sent.append({"method": method, "url": url, "accept": kwargs["headers"]["Accept"]})
        return _Response(pages[len(sent) - 1])

    configuration = SimpleNamespace(host="https://api.example", auth_settings=dict)
    pool = SimpleNamespace(connection_pool_kw={}, request=request)
    api = SimpleNamespace(configuration=configuration, user_agent="test", rest_client=SimpleNamespace(pool_manager=pool),
                          close=lambda: None)
    return Kube(api)  # type: ignore[arg-type]


def test_list_metadata_pages_asks_for_metadata_only_and_follows_continue_tokens():
    item = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": {"name": "a", "resourceVersion": "5"}}
    pages = [{"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "7", "continue": "tok/1"}, "items": [item]},
             {"kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "7"}, "items": [item, item]}]
    sent: list[dict[str, Any]] = []
    kube = _kube_answering(pages, sent)

    async def collect() -> list[tuple[list[dict[str, Any]], str]]:
        return [page async for page in kube.list_metadata_pages(SECRETS, label_selector="a=b", page_size=2)]

    try:
        got = asyncio.run(collect())
    finally:
        kube.close()
    assert [(len(items), version) for items, version in got] == [(1, "7"), (2, "7")]
    assert all(s["accept"] == METADATA_LIST for s in sent) and METADATA_LIST.startswith(
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1")
    assert sent[0]["url"] == f"https://api.example{SECRETS}?limit=2&labelSelector=a%3Db"
    assert sent[1]["url"] == f"https://api.example{SECRETS}?limit=2&labelSelector=a%3Db&continue=tok%2F1"


def test_a_server_that_answers_with_full_objects_is_reduced_to_their_metadata():
    full = {"kind": "SecretList", "metadata": {"resourceVersion": "3"},
            "items": [{"kind": "Secret", "metadata": {"name": "a"}, "data": {"k": "c2VjcmV0"}}]}
    sent: list[dict[str, Any]] = []
    kube = _kube_answering([full], sent)

    async def collect() -> list[tuple[list[dict[str, Any]], str]]:
        return [page async for page in kube.list_metadata_pages(SECRETS)]

    try:
        assert asyncio.run(collect()) == [([{"metadata": {"name": "a"}}], "3")]
    finally:
        kube.close()


# --- the watch that feeds it ------------------------------------------------------------------------------
async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def stop(task: asyncio.Task, kube: FakeKube) -> None:
    task.cancel()
    kube.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    for thread in threading.enumerate():
        if thread.name.startswith("watch/"):
            await asyncio.to_thread(thread.join, 5)


def test_prime_lists_metadata_into_the_index_and_the_watch_goes_on_from_there():
    kube = FakeKube()
    kube.put(SECRETS, secret("mine", value=b"s3cret"))
    kube.put(SECRETS, secret("bobs", user="bob"))
    kube.put(SECRETS, secret("ours", **{c.LABEL_MANAGED_BY: c.OPERATOR_NAME}))  # not selected
    index = SecretIndex()
    seen: list[tuple[str, str, str | None]] = []

    def handler(type_: str, obj: dict[str, Any]) -> None:  # what the index says when the handler runs
        name = obj["metadata"]["name"]
        seen.append((type_, name, index.version(NS, name)))

    watch = LabelSelectedWatch(kube, SECRETS, USER_SELECTOR, handler, index=index)  # type: ignore[arg-type]

    async def main() -> None:
        assert not index.synced
        assert await watch.prime()
        assert index.synced and [n for n, _ in index.names_for_user(NS, "alice")] == ["mine"]
        assert index.names_for_user(NS, "bob") == [("bobs", kube.objects[f"{SECRETS}/bobs"]["metadata"]["resourceVersion"])]
        listed_at = index.list_resource_versions[NS]
        assert "s3cret" not in repr(index._objects) and len(kube.requests("LIST")) == 1
        task = asyncio.create_task(watch.run())
        try:
            await until(lambda: watch.healthy, "the watch to connect")
            assert kube.watch_queries[0]["resourceVersion"] == listed_at  # no gap, no second list
            assert len(kube.requests("LIST")) == 1
            kube.put(SECRETS, secret("new"))
            kube.edit(f"{SECRETS}/mine", {"data": {"k": base64.b64encode(b"w").decode()}})
            kube.edit(f"{SECRETS}/bobs", {"metadata": {"labels": {c.LABEL_USER: "alice"}}})
            kube.remove(f"{SECRETS}/new")
            await until(lambda: len(seen) >= 4, "four events")
        finally:
            await stop(task, kube)

    asyncio.run(main())
    version = {name: kube.objects[f"{SECRETS}/{name}"]["metadata"]["resourceVersion"] for name in ("mine", "bobs")}
    assert [s[:2] for s in seen] == [("ADDED", "new"), ("MODIFIED", "mine"), ("MODIFIED", "bobs"), ("DELETED", "new")]
    assert seen[1][2] == version["mine"] and seen[2][2] == version["bobs"]  # applied before the handler ran
    assert seen[0][2] is not None and seen[3][2] is None
    assert index.names_for_user(NS, "alice") == [("bobs", version["bobs"]), ("mine", version["mine"])]
    assert index.names_for_user(NS, "bob") == []


def test_the_index_follows_even_when_the_handler_does_nothing_or_fails():
    kube = FakeKube()
    index = SecretIndex()

    def standby(type_: str, obj: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    watch = LabelSelectedWatch(kube, SECRETS, USER_SELECTOR, standby, index=index)  # type: ignore[arg-type]

    async def main() -> None:
        task = asyncio.create_task(watch.run())  # without prime(): run() lists first
        try:
            await until(lambda: watch.healthy and index.synced, "the list and the watch")
            kube.put(SECRETS, secret("a"))
            kube.put(SECRETS, secret("b"))
            await until(lambda: len(index) == 2, "both Secrets indexed")
            assert watch.healthy and len(kube.requests("WATCH")) == 1
        finally:
            await stop(task, kube)

    asyncio.run(main())


def test_a_relist_after_410_replaces_the_index_with_what_changed_while_it_was_not_watching():
    kube = FakeKube()
    kube.put(SECRETS, secret("stays"))
    kube.put(SECRETS, secret("goes"))
    index = SecretIndex()

    async def main() -> None:
        task = asyncio.create_task(watch.run())
        try:
            await until(lambda: watch.healthy and len(index) == 2, "the first list")
            down = kube.fail("WATCH", SECRETS, 503, times=None)  # no watch for a while
            kube.end_watches()
            await until(lambda: not watch.healthy, "the watch to notice")
            kube.remove(f"{SECRETS}/goes")
            kube.put(SECRETS, secret("came", user="bob"))
            kube.compact()  # ... long enough for its resourceVersion to expire
            lists = len(kube.requests("LIST"))
            down.times = 0
            await until(lambda: len(kube.requests("LIST")) > lists and watch.healthy, "a relist and a new watch", timeout=10)
            assert sorted(index) == [(NS, "came"), (NS, "stays")]
            assert index.names_for_user(NS, "alice") == [("stays", kube.objects[f"{SECRETS}/stays"]["metadata"]["resourceVersion"])]
            assert missed == [1], "the owner hears once that events were missed"
            kube.put(SECRETS, secret("after"))
            await until(lambda: (NS, "after") in index, "the event after the relist")
        finally:
            await stop(task, kube)

    missed: list[int] = []
    watch = LabelSelectedWatch(kube, SECRETS, USER_SELECTOR, lambda t, o: None, index=index,  # type: ignore[arg-type]
                               on_missed_events=lambda: missed.append(1))
    asyncio.run(main())
    assert missed == [1]


def test_a_relist_that_finds_nothing_changed_and_the_first_list_say_nothing_was_missed():
    kube = FakeKube()
    kube.put(SECRETS, secret("stays"))
    index = SecretIndex()
    missed: list[int] = []
    watch = LabelSelectedWatch(kube, SECRETS, USER_SELECTOR, lambda t, o: None, index=index,  # type: ignore[arg-type]
                               on_missed_events=lambda: missed.append(1))

    async def main() -> None:
        assert await watch.prime()
        task = asyncio.create_task(watch.run())
        try:
            await until(lambda: watch.healthy, "the watch")
            down = kube.fail("WATCH", SECRETS, 503, times=None)
            kube.end_watches()
            await until(lambda: not watch.healthy, "the watch to notice")
            kube.put(f"/api/v1/namespaces/{NS}/configmaps", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})
            kube.compact()  # history lost, but no Secret changed meanwhile
            lists = len(kube.requests("LIST"))
            down.times = 0
            await until(lambda: len(kube.requests("LIST")) > lists and watch.healthy, "a relist and a new watch", timeout=10)
        finally:
            await stop(task, kube)

    asyncio.run(main())
    assert missed == []


def test_a_failed_prime_leaves_the_list_to_run_and_the_index_unsynced():
    kube = FakeKube()
    kube.put(SECRETS, secret("a"))
    fault = kube.fail("LIST", SECRETS, 503, times=None)
    index = SecretIndex()
    watch = LabelSelectedWatch(kube, SECRETS, USER_SELECTOR, lambda t, o: None, index=index)  # type: ignore[arg-type]

    async def main() -> None:
        assert not await watch.prime() and not index.synced
        fault.times = 0
        task = asyncio.create_task(watch.run())
        try:
            await until(lambda: index.synced and watch.healthy, "run() to list", timeout=10)
            assert list(index) == [(NS, "a")]
        finally:
            await stop(task, kube)

    asyncio.run(main())


def test_without_an_index_prime_asks_only_for_the_resource_version():
    kube = FakeKube()
    kube.put(SECRETS, secret("a"))
    seen: list[str] = []
    watch = LabelSelectedWatch(kube, SECRETS, USER_SELECTOR, lambda t, o: seen.append(t))  # type: ignore[arg-type]

    async def main() -> None:
        assert await watch.prime() and watch.index is None
        task = asyncio.create_task(watch.run())
        try:
            await until(lambda: watch.healthy, "the watch")
            assert kube.requests("LIST") == [SECRETS]  # one list (of at most one item), from prime()
            assert kube.watch_queries[0]["resourceVersion"] == kube.objects[f"{SECRETS}/a"]["metadata"]["resourceVersion"]
        finally:
            await stop(task, kube)

    asyncio.run(main())
    assert seen == []
