"""Scenarios over the Kube interface whose answers the in-memory fake (tests/fakes/kube.py) must give exactly as
a real API server does. Each scenario returns observations (no names, uids or resourceVersions, only what they
imply), so the two runs compare with ==: tests/unit/test_fake_kube.py pins the expected answers against the
fake, tests/e2e/test_fake_kube_contract.py requires the fake's answers to equal the real API server's."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.kube import KubeError, core_path, group_path

Observation = tuple[Any, ...]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret(name: str | None, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": labels or {}}
    if name:
        meta["name"] = name
    return {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "data": {k: b64(v) for k, v in (data or {"k": "1"}).items()}}


async def failure(call: Awaitable[Any]) -> Observation:
    """How a request fails: the exception class the client raises, the status and the reason."""
    try:
        await call
    except KubeError as exc:
        return (type(exc).__name__, exc.status, exc.reason)
    return ("no error",)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> bool:
    """For what a real API server does a moment later (caches behind it); the fake answers at once."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


async def writes(kube: Any, ns: str) -> list[Observation]:
    s = core_path(ns, "secrets")
    out: list[Observation] = []
    a = await kube.create(s, secret("a", {"x": "1"}))
    meta = a["metadata"]
    out.append(("create", bool(meta.get("uid")), bool(meta.get("creationTimestamp")), meta["name"], meta["namespace"]))
    out.append(("create a taken name", await failure(kube.create(s, secret("a")))))
    out.append(("get a missing object", await kube.get(f"{s}/nope")))
    got = await kube.get(f"{s}/a")
    out.append(("get", got["metadata"]["resourceVersion"] == meta["resourceVersion"], got["data"]))
    updated = await kube.replace(f"{s}/a", {**got, "data": {"k": b64("2")}})
    out.append(("replace", int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"]),
                updated["metadata"]["uid"] == meta["uid"], updated["data"]))
    out.append(("replace with a stale version", await failure(kube.replace(f"{s}/a", {**got, "data": {"k": b64("3")}}))))
    out.append(("replace a missing object", await failure(kube.replace(f"{s}/nope", secret("nope")))))
    out.append(("patch with a stale version", await failure(
        kube.merge_patch(f"{s}/a", {"metadata": {"resourceVersion": meta["resourceVersion"]}, "data": {"k": b64("4")}}))))
    same = await kube.merge_patch(f"{s}/a", {"data": {"k": b64("2")}})
    out.append(("a no-op patch keeps the version", same["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]))
    patched = await kube.merge_patch(f"{s}/a", {"metadata": {"resourceVersion": same["metadata"]["resourceVersion"],
                                                            "labels": {"x": None, "y": "2"}}, "data": {"k": None, "j": b64("5")}})
    out.append(("patch", patched["data"], patched["metadata"]["labels"]))
    out.append(("patch a missing object", await failure(kube.merge_patch(f"{s}/nope", {"data": {}}))))
    out.append(("data that is not base64", await failure(kube.create(s, {**secret("bad"), "data": {"k": "%%%"}}))))
    out.append(("no name", await failure(kube.create(s, secret(None)))))
    generated = await kube.create(s, {**secret(None), "metadata": {"generateName": "gen-"}})
    name = generated["metadata"]["name"]
    out.append(("generateName", name.startswith("gen-"), len(name) - len("gen-")))
    out.append(("delete another incarnation", await failure(kube.delete(f"{s}/a", uid="00000000-0000-4000-8000-000000000000"))))
    out.append(("delete", await kube.delete(f"{s}/a", uid=meta["uid"]), await kube.get(f"{s}/a")))
    out.append(("delete again", await kube.delete(f"{s}/a")))
    return out


async def cache_reads(kube: Any, ns: str) -> list[Observation]:
    """GET from the watch cache (workspace_secret/token_reader.py): "0" answers what the cache holds; a version answers
    a state not older than it -- what a change's watch event carries -- so the change is seen at once."""
    s = core_path(ns, "secrets")
    out: list[Observation] = []
    created = await kube.create(s, secret("c", **{"k": "1"}))

    async def cached() -> bool:
        return ((await kube.get(f"{s}/c", resource_version="0")) or {}).get("data") == {"k": b64("1")}
    out.append(("any version, eventually", await eventually(cached)))
    changed = await kube.merge_patch(f"{s}/c", {"data": {"k": b64("2")}})
    got = await kube.get(f"{s}/c", resource_version=changed["metadata"]["resourceVersion"])
    out.append(("not older than the change", got["data"], got["metadata"]["uid"] == created["metadata"]["uid"]))
    await kube.delete(f"{s}/c")
    out.append(("a deleted object at its last version, eventually", await eventually(
        lambda: _gone(kube, f"{s}/c", changed["metadata"]["resourceVersion"]))))
    return out


async def _gone(kube: Any, path: str, version: str) -> bool:
    return await kube.get(path, resource_version=version) is None


async def selectors_and_pages(kube: Any, ns: str) -> list[Observation]:
    s = core_path(ns, "secrets")
    labels = {"s1": {"a": "1", "b": "x"}, "s2": {"a": "2"}, "s3": {"a": "3", "b": "y"}, "s4": {}, "s5": {"b": "x"}}
    for name, value in labels.items():
        await kube.create(s, secret(name, value))
    out: list[Observation] = []
    for selector in ("a=1", "a==2", "a!=1", "a", "!a", "a in (1,3)", "a notin (1, 2)", "a,b=x", "b=x,a!=1", "nolabel"):
        listing = await kube.list(s, label_selector=selector)
        out.append((selector, sorted(i["metadata"]["name"] for i in listing["items"])))
    pages = [sorted(i["metadata"]["name"] for i in page) async for page in kube.list_pages(s, page_size=2)]
    out.append(("pages", [len(p) for p in pages], sorted(n for p in pages for n in p)))
    rv = await kube.resource_version(s, label_selector="a")
    out.append(("resourceVersion", rv.isdigit()))
    return out


async def finalizers(kube: Any, ns: str) -> list[Observation]:
    s = core_path(ns, "secrets")
    held = await kube.create(s, {**secret("held"), "metadata": {"name": "held", "finalizers": ["example.com/hold"]}})
    out: list[Observation] = [("delete", await kube.delete(f"{s}/held"))]
    still = await kube.get(f"{s}/held")
    out.append(("still there, being deleted", still is not None and bool(still["metadata"].get("deletionTimestamp")),
                int(still["metadata"]["resourceVersion"]) > int(held["metadata"]["resourceVersion"])))
    out.append(("delete again", await kube.delete(f"{s}/held")))
    out.append(("no new finalizer", await failure(
        kube.merge_patch(f"{s}/held", {"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}}))))
    await kube.merge_patch(f"{s}/held", {"metadata": {"finalizers": None}})
    out.append(("the last finalizer goes, so does the object", await kube.get(f"{s}/held")))
    return out


async def status_subresource(kube: Any, ns: str) -> list[Observation]:
    w = group_path(c.API_VERSION, ns, c.WORKSPACE_SECRET_PLURAL)
    body = {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "ws"},
            "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}}, "status": {"observedGeneration": 7}}
    created = await kube.create(w, body)
    out: list[Observation] = [("create drops status", created.get("status"), created["metadata"]["generation"])]
    ignored = await kube.merge_patch(f"{w}/ws", {"status": {"observedGeneration": 3}})
    out.append(("the main resource ignores status", ignored.get("status"),
                ignored["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]))
    status = await kube.merge_patch(f"{w}/ws/status", {"status": {"observedGeneration": 1}, "metadata": {"labels": {"z": "1"}},
                                                       "spec": {"user": "mallory"}})
    out.append(("/status changes only status", status["status"], status["metadata"].get("labels"), status["spec"]["user"],
                status["metadata"]["generation"]))
    labelled = await kube.merge_patch(f"{w}/ws", {"metadata": {"labels": {"z": "2"}}})
    out.append(("metadata keeps the generation", labelled["metadata"]["generation"], labelled["status"]))
    respec = await kube.merge_patch(f"{w}/ws", {"spec": {"mountPath": "/var/run/contract"}})
    out.append(("spec moves the generation", respec["metadata"]["generation"], respec["status"]))
    replaced = await kube.replace(f"{w}/ws", {**respec, "status": {"observedGeneration": 9}})
    out.append(("replace keeps status", replaced["status"],
                replaced["metadata"]["resourceVersion"] == respec["metadata"]["resourceVersion"]))
    out.append(("status of a missing object", await failure(kube.merge_patch(f"{w}/nope/status", {"status": {}}))))
    return out


async def tokens(kube: Any, ns: str) -> list[Observation]:
    s = core_path(ns, "secrets")
    await kube.create(core_path(ns, "serviceaccounts"), {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "contract-sa"}})
    anchor = await kube.create(s, secret("anchor"))
    token_path = core_path(ns, "serviceaccounts", "contract-sa", subresource="token")

    def request(name: str, uid: str, seconds: int = 3600) -> dict[str, Any]:
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": ["contract-aud"], "expirationSeconds": seconds,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": name, "uid": uid}}}

    async def authenticated(token: str, audiences: list[str] | None = None) -> Any:
        review = await kube.create("/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, **({"audiences": audiences} if audiences else {})}})
        status = review.get("status") or {}
        return (status.get("authenticated") or False, (status.get("user") or {}).get("username"))

    issued = await kube.create(token_path, request("anchor", anchor["metadata"]["uid"]))
    token = issued["status"]["token"]
    out: list[Observation] = [("issued", bool(token), bool(issued["status"].get("expirationTimestamp")),
                               issued["spec"]["audiences"], issued["spec"]["expirationSeconds"])]
    out.append(("bound to another incarnation", await failure(kube.create(token_path, request("anchor", "00000000-0000-4000-8000-000000000000")))))
    out.append(("bound to a missing object", await failure(kube.create(token_path, request("gone", "00000000-0000-4000-8000-000000000000")))))
    out.append(("a missing account", await failure(kube.create(core_path(ns, "serviceaccounts", "nobody", subresource="token"),
                                                               request("anchor", anchor["metadata"]["uid"])))))
    out.append(("shorter than 10 minutes", await failure(kube.create(token_path, request("anchor", anchor["metadata"]["uid"], 599)))))
    out.append(("review for its audience", await authenticated(token, ["contract-aud"])))
    out.append(("review for the API server's audience", (await authenticated(token))[0]))
    await kube.delete(f"{s}/anchor")
    out.append(("review after the bound object is gone", await eventually(
        lambda: _not_authenticated(authenticated, token)), (await authenticated(token, ["contract-aud"]))[0]))
    return out


async def _not_authenticated(authenticated: Callable[..., Awaitable[Any]], token: str) -> bool:
    return not (await authenticated(token, ["contract-aud"]))[0]


async def watch(kube: Any, ns: str) -> list[Observation]:
    s = core_path(ns, "secrets")
    rv = await kube.resource_version(s, label_selector="w=1")
    seen: list[Observation] = []

    def run(query: dict[str, str]) -> None:
        try:
            for event in kube.stream(s, query, timeout=15):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    seen.append(("ERROR", obj.get("code"), obj.get("reason")))
                elif event.get("type") != "BOOKMARK":
                    seen.append((event.get("type"), obj["metadata"]["name"], (obj["metadata"].get("labels") or {}).get("w")))
        except KubeError as exc:
            seen.append(("raised", exc.status, exc.reason))

    query = {"watch": "true", "labelSelector": "w=1", "resourceVersion": rv, "timeoutSeconds": "2"}
    thread = threading.Thread(target=run, args=(query,), daemon=True)
    thread.start()
    await kube.create(s, secret("one", {"w": "1"}))
    await kube.create(s, secret("two", {"w": "2"}))
    await kube.merge_patch(f"{s}/one", {"data": {"k": b64("changed")}})
    await kube.merge_patch(f"{s}/two", {"metadata": {"labels": {"w": "1"}}})  # selected from now on
    await kube.merge_patch(f"{s}/one", {"metadata": {"labels": {"w": "2"}}})  # not any more
    await kube.delete(f"{s}/one")
    await kube.delete(f"{s}/two")
    await asyncio.to_thread(thread.join, 20)
    # (A watch from a compacted resourceVersion is not compared: when a real API server compacts is its own
    # business. The fake's ERROR 410 event has the shape of the real one: code, reason Expired, a message.)
    return [("events", list(seen))]


async def json_patch(kube: Any, ns: str) -> list[Observation]:
    """RFC 6902 with `test` guards (how the scheduling gate is removed: only if nothing changed meanwhile)."""
    s = core_path(ns, "secrets")
    await kube.create(s, secret("jp", {"a": "1"}))
    out: list[Observation] = []
    done = await kube.json_patch(f"{s}/jp", [{"op": "test", "path": "/metadata/labels/a", "value": "1"},
                                             {"op": "add", "path": "/metadata/labels/b", "value": "2"}])
    out.append(("a passing test", done["metadata"]["labels"]))
    out.append(("a failing test", await failure(kube.json_patch(f"{s}/jp", [
        {"op": "test", "path": "/metadata/labels/a", "value": "2"}, {"op": "remove", "path": "/metadata/labels/b"}]))))
    out.append(("nothing of it applied", (await kube.get(f"{s}/jp"))["metadata"]["labels"]))
    out.append(("a test of a missing path", await failure(kube.json_patch(f"{s}/jp", [
        {"op": "test", "path": "/metadata/labels/nope", "value": "1"}]))))
    out.append(("remove a missing path", await failure(kube.json_patch(f"{s}/jp", [{"op": "remove", "path": "/metadata/labels/nope"}]))))
    out.append(("a missing object", await failure(kube.json_patch(f"{s}/nope", [{"op": "remove", "path": "/metadata/labels/a"}]))))
    return out


SCENARIOS: dict[str, Callable[[Any, str], Awaitable[list[Observation]]]] = {
    "json_patch": json_patch,
    "cache_reads": cache_reads,
    "writes": writes,
    "selectors_and_pages": selectors_and_pages,
    "finalizers": finalizers,
    "status_subresource": status_subresource,
    "tokens": tokens,
    "watch": watch,
}
