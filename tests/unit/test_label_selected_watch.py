"""The label-selected Secret watch against the shared in-memory API server (tests/fakes/kube.py), whose watches
end, break and expire on request: what reaches the handler, resuming without losing or replaying changes,
relisting on 410, backoff, and the health the liveness probe and the metrics report."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from fakes.kube import FakeKube
from prometheus_client import REGISTRY

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.watch import LabelSelectedWatch

NS = "team"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"
OURS = {c.LABEL_MANAGED_BY: c.OPERATOR_NAME}


def secret(name: str, labels: dict[str, str] | None = None, value: bytes = b"v") -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS, "labels": labels or {}},
            "data": {"k": base64.b64encode(value).decode()}}


def restarts(reason: str) -> float:
    return REGISTRY.get_sample_value("wso_watch_restarts_total", {"resource": "secrets", "reason": reason}) or 0.0


def healthy_gauge() -> float | None:
    return REGISTRY.get_sample_value("wso_watch_healthy", {"resource": "secrets"})


async def stop(task: asyncio.Task, kube: FakeKube) -> None:
    """Cancel the watch and let its stream threads end while the loop still runs (they post their end to it)."""
    task.cancel()
    kube.close()
    with pytest.raises(asyncio.CancelledError):
        await task
    for thread in threading.enumerate():
        if thread.name.startswith("watch/"):
            await asyncio.to_thread(thread.join, 5)


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def watching(scenario: Callable[[FakeKube, LabelSelectedWatch, list[tuple[str, str]]], Awaitable[None]],
             *, path: str = SECRETS, selector: str = c.MANAGED_SELECTOR, handler: Any = None, kube: FakeKube | None = None,
             **options: Any) -> list[tuple[str, str]]:
    """Run the watch in the background while `scenario` changes the API server; returns what the handler saw."""
    kube = kube or FakeKube()
    seen: list[tuple[str, str]] = []

    def record(type_: str, obj: dict) -> None:
        seen.append((type_, obj["metadata"]["name"]))

    watch = LabelSelectedWatch(kube, path, selector, handler or record, **options)  # type: ignore[arg-type]

    async def main() -> None:
        task = asyncio.create_task(watch.run())
        try:
            await until(lambda: watch.healthy, "the watch to connect")
            await scenario(kube, watch, seen)
        finally:
            await stop(task, kube)

    asyncio.run(main())
    return seen


def test_only_selected_secrets_reach_the_handler_from_the_moment_the_watch_starts():
    kube = FakeKube()
    kube.put(SECRETS, secret("before", OURS))  # existing objects are the resync's business, not the watch's

    async def scenario(kube, watch, seen):
        kube.put(SECRETS, secret("theirs", {c.LABEL_USER: "alice"}))
        kube.put("/api/v1/namespaces/other/secrets", {**secret("elsewhere", OURS), "metadata": {"name": "elsewhere", "namespace": "other", "labels": OURS}})
        kube.put(SECRETS, secret("ours", OURS))
        kube.edit(f"{SECRETS}/ours", {"data": {"k": base64.b64encode(b"w").decode()}})
        kube.edit(f"{SECRETS}/theirs", {"metadata": {"labels": OURS}})  # labelled into the selection
        kube.edit(f"{SECRETS}/ours", {"metadata": {"labels": {c.LABEL_MANAGED_BY: None}}})  # labelled out of it
        kube.remove(f"{SECRETS}/theirs")
        kube.remove(f"{SECRETS}/ours")  # no longer selected: not seen again
        await until(lambda: len(seen) >= 5, "five events")
        await asyncio.sleep(0.1)

    seen = watching(scenario, kube=kube)
    assert seen == [("ADDED", "ours"), ("MODIFIED", "ours"), ("ADDED", "theirs"), ("DELETED", "ours"), ("DELETED", "theirs")]


def test_a_closed_watch_resumes_where_it_was_without_losing_or_replaying_changes():
    before = restarts("timeout")

    async def scenario(kube, watch, seen):
        kube.put(SECRETS, secret("a", OURS))
        await until(lambda: seen == [("ADDED", "a")], "a")
        kube.fail("WATCH", SECRETS, 500)  # the next connection fails once: the watch waits a backoff
        kube.end_watches()
        await until(lambda: not watch.healthy, "the watch to notice")
        kube.put(SECRETS, secret("b", OURS))  # while no watch is open
        await until(lambda: ("ADDED", "b") in seen, "b, made while disconnected")
        assert watch.healthy

    seen = watching(scenario)
    assert seen == [("ADDED", "a"), ("ADDED", "b")]
    assert restarts("timeout") == before + 1


def test_bookmarks_move_the_resume_point_without_calling_the_handler():
    async def scenario(kube, watch, seen):
        kube.put(SECRETS, secret("theirs", {c.LABEL_USER: "alice"}))  # moves the resourceVersion, not selected
        kube.bookmark()
        await asyncio.sleep(0.2)
        kube.end_watches()
        await until(lambda: len(kube.watch_queries) >= 2, "the watch to reconnect")
        first, second = kube.watch_queries[:2]
        assert first["allowWatchBookmarks"] == "true" and first["labelSelector"] == c.MANAGED_SELECTOR
        assert int(second["resourceVersion"]) == int(first["resourceVersion"]) + 1

    assert watching(scenario) == []


def test_an_expired_resource_version_is_relisted_and_the_watch_goes_on():
    before = restarts("expired")

    async def scenario(kube, watch, seen):
        lists = len(kube.requests("LIST"))
        kube.expire_watches()
        await until(lambda: len(kube.requests("LIST")) > lists, "a relist")
        await until(lambda: len(kube.watch_queries) >= 2 and watch.healthy, "a new watch")
        kube.put(SECRETS, secret("after", OURS))
        await until(lambda: seen == [("ADDED", "after")], "the event after the relist")
        assert kube.requests("LIST", SECRETS)  # only the resourceVersion: a list of at most one item

    watching(scenario)
    assert restarts("expired") == before + 1


def test_errors_back_off_at_least_the_servers_retry_after_and_health_follows():
    before = restarts("error")

    async def scenario(kube, watch, seen):
        assert healthy_gauge() == 1 and watch.unhealthy_for() == 0
        kube.fail("WATCH", SECRETS, 429, retry_after=2.5)
        kube.break_watches()  # the connection drops; the reconnect gets 429 Retry-After: 2.5 (the backoff is ~1 s)
        await until(lambda: not watch.healthy, "unhealthy")
        assert healthy_gauge() == 0
        await until(lambda: len(kube.requests("WATCH")) >= 3 and watch.healthy, "connected again", timeout=10)
        times = [t for (verb, _), t in zip(kube.calls, kube.call_times) if verb == "WATCH"]
        assert times[2] - times[1] >= 2.5  # waited as long as the server asked
        assert healthy_gauge() == 1

    watching(scenario)
    assert restarts("error") == before + 2  # the dropped connection and the 429


def test_a_server_that_ends_every_watch_at_once_does_not_make_it_spin():
    async def scenario(kube, watch, seen):
        kube.close()  # from now on every watch ends as soon as it starts
        started = len(kube.requests("WATCH"))
        await asyncio.sleep(1.6)
        assert len(kube.requests("WATCH")) - started <= 4  # 0.5 s, 1 s, ... with jitter; not hundreds

    watching(scenario)


def test_a_failing_handler_does_not_stop_the_watch():
    calls: list[str] = []

    async def handler(type_: str, obj: dict) -> None:
        calls.append(obj["metadata"]["name"])
        if obj["metadata"]["name"] == "bad":
            raise RuntimeError("handler bug")

    async def scenario(kube, watch, seen):
        kube.put(SECRETS, secret("bad", OURS))
        kube.put(SECRETS, secret("good", OURS))
        await until(lambda: calls == ["bad", "good"], "both events")
        assert watch.healthy and len(kube.requests("WATCH")) == 1

    watching(scenario, handler=handler)


def test_an_unhealthy_watch_reports_for_how_long():
    kube = FakeKube()
    kube.fail("LIST", SECRETS, 503, times=None)  # the API server is down from the start
    watch = LabelSelectedWatch(kube, SECRETS, c.MANAGED_SELECTOR, lambda t, o: None)  # type: ignore[arg-type]
    constructed = time.monotonic()

    async def main() -> None:
        task = asyncio.create_task(watch.run())
        await until(lambda: len(kube.requests("LIST")) >= 2, "two attempts")
        # Unhealthy since it was made; the first retry waits at least 0.375 s (0.5 s with -25% jitter).
        assert not watch.healthy and watch.unhealthy_for() >= time.monotonic() - constructed > 0.3
        assert watch.unhealthy_for(now=time.monotonic() + 60) > 60
        await stop(task, kube)

    asyncio.run(main())


def test_with_deliver_listed_every_listed_object_reaches_the_handler_at_start_and_after_each_relist():
    """The WorkspaceSecrets' watch (our own, not kopf's): the (re)list hands every object over with type None, page by
    page, and the watch goes on from that list's resourceVersion, so no change is lost or replayed."""
    path = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
    kube = FakeKube()
    for name in ("a", "b"):
        kube.put(path, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name}, "spec": {}})

    async def scenario(kube, watch, seen):
        await until(lambda: len(seen) >= 2, "the initial listing")
        kube.put(path, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "c"}, "spec": {}})
        await until(lambda: ("ADDED", "c") in seen, "a change after the listing")
        kube.expire_watches()  # away for longer than the history: a relist, delivered again
        await until(lambda: seen.count((None, "c")) == 1, "the relist")
        kube.remove(f"{path}/a")
        await until(lambda: ("DELETED", "a") in seen, "a change after the relist")

    seen = watching(scenario, kube=kube, path=path, selector="", deliver_listed=True)
    assert seen == [(None, "a"), (None, "b"), ("ADDED", "c"), (None, "a"), (None, "b"), (None, "c"), ("DELETED", "a")]
    assert all("labelSelector" not in q or q["labelSelector"] == "" for q in kube.watch_queries)


def test_a_watch_either_delivers_its_list_or_indexes_it():
    from workspace_secrets.runtime.secret_index import SecretIndex

    with pytest.raises(ValueError):
        LabelSelectedWatch(FakeKube(), SECRETS, "", lambda t, o: None, index=SecretIndex(), deliver_listed=True)
