"""One in-memory Kubernetes API server for unit tests, behind the operator's Kube client interface.

`FakeKube` answers the calls the controllers, providers and watches make on `workspace_secrets.runtime.kube.Kube`
(get, list, list_pages, list_metadata_pages, resource_version, create, replace, merge_patch, json_patch, delete,
stream) with the API server's behaviour that the operator relies on -- each line below is something some code path
depends on:

- every write bumps one cluster-wide resourceVersion; a no-op write does not (no new version, no watch event);
- create: 409 AlreadyExists for a taken name, `generateName` names made up by the server, a new uid and
  creationTimestamp, status dropped for kinds with a status subresource, 422 without a name;
- json_patch (RFC 6902: test, add, remove, replace): a failed test or a missing path refuses the whole patch (422);
- replace (PUT) and merge_patch (RFC 7386): 404 for a missing object, 409 Conflict when the body's (or the
  patch's) metadata.resourceVersion is stale; uid and creationTimestamp kept; on kinds with a status
  subresource the main resource never changes status, `/status` changes nothing else, and metadata.generation
  grows only when the spec changes;
- delete: 409 on a uid precondition that does not match, deletionTimestamp instead of removal while finalizers
  remain (the object goes when the last finalizer is patched away); `collect_garbage()` does the garbage
  collector's work on ownerReferences when a test asks for it;
- Secrets: data values must be base64 (400 otherwise), as the API server decodes them;
- label selectors (=, ==, !=, exists, !exists, in, notin) on lists and watches; list pages with `continue`
  tokens over a snapshot taken at the first page;
- watches (`stream`, blocking, run in a thread like the real one): events after the given resourceVersion;
  an object that starts or stops matching the selector arrives as ADDED, or as DELETED with its last matching
  state; BOOKMARKs on request (`bookmark`); an ERROR 410 Expired event for a resourceVersion older than the
  last `compact()`; the server ending or breaking open watches on request (`end_watches`, `break_watches`,
  `expire_watches`);
- TokenRequest (POST .../serviceaccounts/<name>/token): 404 without the ServiceAccount or the bound object,
  409 when the bound object's uid differs, 422 under 10 minutes; a TokenReview (POST
  /apis/authentication.k8s.io/v1/tokenreviews, or `review_token()`) authenticates a token only while its
  ServiceAccount and bound object (same uid) exist and it has not expired.

tests/e2e/test_fake_kube_contract.py runs the scenarios of tests/fakes/kube_contract.py against this fake and a
real API server and requires the same answers: where the two differ, the fake is wrong.

Errors are raised as the real client raises them: built by the client's own `_error` from a Status body
(NotFound for 404, Conflict for 409, KubeError with retry_after otherwise). `fail()` injects errors; `calls`
records (verb, path) of every request. Tests arrange and change state as another client would, through
`put`, `edit` and `remove` (synchronous, with resourceVersions and watch events); `objects` is the store,
for reading.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import fnmatch
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.kube import KubeError, _error

JSON = dict[str, Any]

#: Kinds (by plural) whose CRD has `subresources: status` (crds/*.yaml).
STATUS_SUBRESOURCES = frozenset({c.WORKSPACE_SECRET_PLURAL, c.USER_TOKEN_PLURAL, "oauthapplications"})

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed",
            409: "Conflict", 410: "Expired", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the API server's generateName alphabet


def api_error(status: int, message: str = "", *, reason: str | None = None, retry_after: float | None = None) -> KubeError:
    """The exception the real client raises for this HTTP status and Status body."""
    raw = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
                      "reason": reason if reason is not None else _REASONS.get(status, ""), "message": message}).encode()
    return _error(status, raw, None if retry_after is None else str(retry_after))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- paths ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ref:
    prefix: str  # "/api/v1" or "/apis/<group>/<version>"
    namespace: str | None
    plural: str
    name: str | None = None
    subresource: str | None = None

    @property
    def collection(self) -> str:
        return f"{self.prefix}/namespaces/{self.namespace}/{self.plural}" if self.namespace else f"{self.prefix}/{self.plural}"

    @property
    def key(self) -> str:
        return f"{self.collection}/{self.name}"

    def named(self, name: str) -> Ref:
        return Ref(self.prefix, self.namespace, self.plural, name)

    def contains(self, other: Ref) -> bool:
        """Whether the object `other` is in this collection (an all-namespaces collection holds every namespace's)."""
        return (other.prefix, other.plural) == (self.prefix, self.plural) and self.namespace in (None, other.namespace)


def parse(path: str) -> Ref:
    parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        prefix, rest = "/api/v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        prefix, rest = f"/apis/{parts[1]}/{parts[2]}", parts[3:]
    else:
        raise api_error(404, "the server could not find the requested resource")
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or not all(rest):
        raise api_error(404, "the server could not find the requested resource")
    return Ref(prefix, namespace, rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None)


# --- label selectors ----------------------------------------------------------------------------------
_REQUIREMENT = re.compile(r"^\s*(?:(!)\s*(\S+)|(\S+?)\s+(in|notin)\s+\((.*)\)|(\S+?)\s*(==|!=|=)\s*(\S*)|(\S+))\s*$")


def selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A label selector's predicate over an object."""
    requirements: list[Callable[[Mapping[str, str]], bool]] = []
    for part in re.split(r",(?![^()]*\))", text or ""):
        if not part.strip():
            continue
        m = _REQUIREMENT.match(part)
        if m is None:
            raise api_error(400, f"unable to parse requirement: {part!r}")
        if m.group(1):
            requirements.append(lambda labels, k=m.group(2): k not in labels)
        elif m.group(4):
            values = {v.strip() for v in m.group(5).split(",")}
            if m.group(4) == "in":
                requirements.append(lambda labels, k=m.group(3), vs=values: labels.get(k) in vs)
            else:
                requirements.append(lambda labels, k=m.group(3), vs=values: labels.get(k) not in vs)
        elif m.group(7):
            if m.group(7) == "!=":
                requirements.append(lambda labels, k=m.group(6), v=m.group(8): labels.get(k) != v)
            else:
                requirements.append(lambda labels, k=m.group(6), v=m.group(8): k in labels and labels[k] == v)
        else:
            requirements.append(lambda labels, k=m.group(9): k in labels)
    return lambda obj: all(r((obj.get("metadata") or {}).get("labels") or {}) for r in requirements)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge recursively, null deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- the fake --------------------------------------------------------------------------------------
def json_patch(target: JSON, operations: list[JSON]) -> JSON:
    """RFC 6902 on a copy of `target`. A failed `test`, and a path that is not there, refuse the whole patch with
    422 Invalid, as the API server does."""
    doc = copy.deepcopy(target)
    for op in operations:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = doc
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if op["op"] == "test":
                current = node[int(last)] if isinstance(node, list) else node[last]
                if current != op["value"]:
                    raise api_error(JSON_PATCH_TEST_FAILED, f"the server rejected our request: testing value {op['path']} failed")
            elif op["op"] == "remove":
                del node[int(last) if isinstance(node, list) else last]
            elif op["op"] in ("add", "replace"):
                if isinstance(node, list):
                    node.insert(len(node) if last == "-" else int(last), copy.deepcopy(op["value"]))
                    if op["op"] == "replace":
                        del node[int(last) + 1]
                else:
                    node[last] = copy.deepcopy(op["value"])
            else:
                raise api_error(400, f"unsupported JSON patch operation {op['op']!r}")
        except (KeyError, IndexError, ValueError, TypeError):
            raise api_error(422, f"the server rejected our request due to an error in our request: {op['path']}") from None
    return doc


#: What the API server answers to a JSON patch whose `test` fails.
JSON_PATCH_TEST_FAILED = 422


@dataclass
class Fault:
    verbs: tuple[str, ...]  # of GET LIST POST PUT PATCH DELETE WATCH, or ("*",)
    path: str  # glob over the request path (for POST also the new object's path)
    error: BaseException
    times: int | None  # None: every time

    def matches(self, verb: str, paths: tuple[str, ...]) -> bool:
        return (self.times != 0 and ("*" in self.verbs or verb in self.verbs)
                and any(fnmatch.fnmatchcase(p, self.path) for p in paths))


@dataclass
class IssuedToken:
    namespace: str
    service_account: str
    audiences: list[str]
    expires_at: datetime
    bound: tuple[str, str] | None  # (object path, uid)


@dataclass
class _History:
    seq: int  # position in the history (bookmarks included); never reused, compaction or not
    revision: int
    type: str  # ADDED MODIFIED DELETED BOOKMARK
    ref: Ref | None
    old: JSON | None
    new: JSON | None


@dataclass
class _Watch:
    ref: Ref
    ended: bool = False
    error: BaseException | None = None
    expired: bool = False
    events: list[JSON] = field(default_factory=list)


class FakeKube:
    """An in-memory API server with the interface of kube.client.Kube (see the module's docstring)."""

    def __init__(self, *, clock: Callable[[], datetime] = _now, status_subresources: frozenset[str] = STATUS_SUBRESOURCES,
                 token_audiences: tuple[str, ...] = ("https://kubernetes.default.svc",)) -> None:
        self.objects: dict[str, JSON] = {}  # object path -> stored object; read it, change it with put/edit/remove
        self.calls: list[tuple[str, str]] = []  # (verb, path) of every request, in order
        self.call_times: list[float] = []  # time.monotonic() of each of them
        self.watch_queries: list[dict[str, str]] = []  # the query of every watch request
        self.token_requests: list[JSON] = []
        self.tokens: dict[str, IssuedToken] = {}
        self.clock = clock
        self._status_kinds = status_subresources
        self._token_audiences = list(token_audiences)
        self._revision = 0
        self._seq = 0
        self._compacted = 0
        self._history: list[_History] = []
        self._faults: list[Fault] = []
        self._snapshots: dict[str, list[JSON]] = {}
        self._watches: set[int] = set()
        self._watch_state: dict[int, _Watch] = {}
        self._names = itertools.count(1)
        self._token_serial = itertools.count(1)
        self._lock = threading.Condition(threading.RLock())
        self._closed = False

    # --- the Kube interface ---------------------------------------------------------------------------
    async def get(self, path: str, *, resource_version: str | None = None) -> JSON | None:
        # resource_version (a watch-cache read) changes nothing here: this store is never stale.
        await asyncio.sleep(0)  # a real call yields to other tasks
        with self._lock:
            self._request("GET", path)
            ref = parse(path)
            if ref.name is None:
                raise api_error(405, "get needs a name")
            return copy.deepcopy(self.objects.get(ref.key))

    async def list(self, path: str, *, label_selector: str | None = None, from_cache: bool = False,
                   not_older_than: str | None = None) -> JSON:
        await asyncio.sleep(0)
        with self._lock:
            self._request("LIST", path)
            return self._list(parse(path), label_selector)

    async def list_pages(self, path: str, *, label_selector: str | None = None, page_size: int = 500) -> AsyncIterator[list[JSON]]:
        token: str | None = None
        while True:
            await asyncio.sleep(0)
            with self._lock:
                self._request("LIST", path)
                if token is None:
                    items = self._list(parse(path), label_selector)["items"]
                else:
                    items = self._snapshots.pop(token)
                page, rest = items[:page_size], items[page_size:]
                token = None
                if rest:
                    token = uuid.uuid4().hex
                    self._snapshots[token] = rest
            yield page
            if token is None:
                return

    async def list_versioned_pages(self, path: str, *, label_selector: str | None = None,
                                   page_size: int = 500) -> AsyncIterator[tuple[list[JSON], str]]:
        """Like list_pages, every page with the snapshot's resourceVersion."""
        token: str | None = None
        version = ""
        while True:
            await asyncio.sleep(0)
            with self._lock:
                self._request("LIST", path)
                if token is None:
                    listing = self._list(parse(path), label_selector)
                    version = listing["metadata"]["resourceVersion"]
                    items = listing["items"]
                else:
                    items = self._snapshots.pop(token)
                page, rest = items[:page_size], items[page_size:]
                token = None
                if rest:
                    token = uuid.uuid4().hex
                    self._snapshots[token] = rest
            yield page, version
            if token is None:
                return

    async def list_metadata_pages(self, path: str, *, label_selector: str | None = None,
                                  page_size: int = 500) -> AsyncIterator[tuple[list[JSON], str]]:
        """Like the API server's PartialObjectMetadataList: metadata only, every page with the snapshot's version."""
        async for page, version in self.list_versioned_pages(path, label_selector=label_selector, page_size=page_size):
            yield [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]} for o in page], version

    async def resource_version(self, path: str, *, label_selector: str | None = None) -> str:
        await asyncio.sleep(0)
        with self._lock:
            self._request("LIST", path)
            return self._list(parse(path), label_selector)["metadata"]["resourceVersion"]

    async def create(self, path: str, body: JSON) -> JSON:
        await asyncio.sleep(0)
        with self._lock:
            ref = parse(path)
            name = (body.get("metadata") or {}).get("name")
            self._request("POST", path, *([f"{path}/{name}"] if name and ref.name is None else []))
            if ref.plural == "serviceaccounts" and ref.subresource == "token" and ref.namespace:
                return self._token_request(ref, body)
            if (ref.prefix, ref.plural, ref.name) == ("/apis/authentication.k8s.io/v1", "tokenreviews", None):
                return self._token_review(body)
            if ref.name is not None:
                raise api_error(405, f"POST is not supported on {path}")
            return copy.deepcopy(self._create(ref, body, seeding=False))

    async def replace(self, path: str, body: JSON) -> JSON:
        await asyncio.sleep(0)
        with self._lock:
            self._request("PUT", path)
            ref = parse(path)
            current = self._existing(ref)
            _check_version(ref, current, (body.get("metadata") or {}).get("resourceVersion"))
            if (body.get("metadata") or {}).get("name") not in (None, ref.name):
                raise api_error(400, "the name of the object does not match the name on the URL")
            return copy.deepcopy(self._update(ref, current, copy.deepcopy(body)))

    async def merge_patch(self, path: str, patch: JSON) -> JSON:
        await asyncio.sleep(0)
        with self._lock:
            self._request("PATCH", path)
            ref = parse(path)
            current = self._existing(ref)
            _check_version(ref, current, (patch.get("metadata") or {}).get("resourceVersion"))
            return copy.deepcopy(self._update(ref, current, merge_patch(current, patch)))

    async def json_patch(self, path: str, operations: list[JSON]) -> JSON:
        """RFC 6902 (test, add, remove, replace): a failed test refuses the whole patch."""
        await asyncio.sleep(0)
        with self._lock:
            self._request("PATCH", path)
            ref = parse(path)
            current = self._existing(ref)
            return copy.deepcopy(self._update(ref, current, json_patch(current, operations)))

    async def delete(self, path: str, *, uid: str | None = None, resource_version: str | None = None) -> bool:
        await asyncio.sleep(0)
        with self._lock:
            try:
                self._request("DELETE", path)
                ref = parse(path)
                current = self._existing(ref)
            except KubeError as exc:
                if exc.status == 404:
                    return False  # as the client answers
                raise
            if uid is not None and current["metadata"].get("uid") != uid:
                raise api_error(409, f"Operation cannot be fulfilled on {ref.plural} \"{ref.name}\": the UID in the precondition "
                                     f"({uid}) does not match the UID in record ({current['metadata'].get('uid')}). "
                                     "The object might have been deleted and then recreated")
            if resource_version is not None and current["metadata"].get("resourceVersion") != resource_version:
                raise api_error(409, f"Operation cannot be fulfilled on {ref.plural} \"{ref.name}\": the ResourceVersion in the "
                                     f"precondition ({resource_version}) does not match the ResourceVersion in record")
            self._delete(ref, current)
            return True

    def stream(self, path: str, query: Mapping[str, str], *, timeout: float,
               on_connected: Callable[[], None] | None = None) -> Iterator[JSON]:
        """Blocking, like the real client's: run it in a thread. Ends after the query's timeoutSeconds."""
        with self._lock:
            self.watch_queries.append(dict(query))
            self._request("WATCH", path)
            ref = parse(path)
            matches = selector(query.get("labelSelector"))
            start = int(query.get("resourceVersion") or 0)
            bookmarks = query.get("allowWatchBookmarks") == "true"
            state = _Watch(ref)
            watch_id = id(state)
            self._watch_state[watch_id] = state
            seen = self._seq
            if start == 0:  # "any version": the current objects as ADDED, then changes
                state.events += [{"type": "ADDED", "object": copy.deepcopy(o)} for k, o in sorted(self.objects.items())
                                 if ref.contains(parse(k)) and matches(o)]
            elif start < self._compacted:
                state.events.append(_expired(start, self._revision))
                state.ended = True
            else:
                seen = next((h.seq - 1 for h in self._history if h.revision > start), self._seq)
        deadline = time.monotonic() + min(float(query.get("timeoutSeconds") or timeout), timeout)
        if on_connected is not None:
            on_connected()
        try:
            while True:
                with self._lock:
                    for entry in self._history:
                        if entry.seq > seen:
                            seen = entry.seq
                            if (event := _translate(entry, ref, matches, bookmarks)) is not None:
                                state.events.append(event)
                    pending, state.events = state.events, []
                    if not pending:
                        if state.error is not None:
                            raise state.error
                        if state.ended or self._closed or time.monotonic() >= deadline:
                            return
                        self._lock.wait(min(0.05, max(0.0, deadline - time.monotonic())))
                        continue
                yield from pending
        finally:
            with self._lock:
                self._watch_state.pop(watch_id, None)

    # --- arranging and changing state as another client ------------------------------------------------
    def put(self, path: str, body: JSON) -> JSON:
        """Create or overwrite an object as an admin would (metadata.uid, status, generation,
        deletionTimestamp and finalizers in `body` are kept). `path`: the collection or the object's path."""
        with self._lock:
            ref = parse(path)
            body = copy.deepcopy(body)
            meta = body.setdefault("metadata", {})
            if ref.name is not None:
                meta["name"] = ref.name
                ref = Ref(ref.prefix, ref.namespace, ref.plural)
            if ref.namespace is not None:
                meta.setdefault("namespace", ref.namespace)
            current = self.objects.get(ref.named(meta["name"]).key) if meta.get("name") else None
            if current is None:
                return copy.deepcopy(self._create(ref, body, seeding=True))
            meta.pop("resourceVersion", None)
            meta.setdefault("uid", current["metadata"].get("uid"))
            return copy.deepcopy(self._commit(ref.named(meta["name"]), current, body))

    def edit(self, path: str, patch: JSON) -> JSON:
        """Merge-patch an object as another client (any field, status included)."""
        with self._lock:
            ref = parse(path)
            current = self._existing(ref)
            new = merge_patch(current, patch)
            new["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
            return copy.deepcopy(self._commit(Ref(ref.prefix, ref.namespace, ref.plural, ref.name), current, new))

    def remove(self, path: str, *, force: bool = False) -> bool:
        """Delete an object as a user would (finalizers hold it unless `force`). False if it was not there."""
        with self._lock:
            ref = parse(path)
            current = self.objects.get(ref.key)
            if current is None:
                return False
            if force:
                current = {**current, "metadata": {**current["metadata"], "finalizers": []}}
            self._delete(ref, current)
            return True

    def get_object(self, path: str) -> JSON | None:
        with self._lock:
            return copy.deepcopy(self.objects.get(parse(path).key))

    def list_objects(self, path: str, label_selector: str | None = None) -> list[JSON]:
        with self._lock:
            return self._list(parse(path), label_selector)["items"]

    def collect_garbage(self) -> list[str]:
        """What Kubernetes' garbage collector does: delete every object all of whose owners are gone
        (by uid), until nothing changes. Returns the paths deleted."""
        deleted: list[str] = []
        with self._lock:
            while True:
                uids = {o["metadata"].get("uid") for o in self.objects.values()}
                orphans = [k for k, o in self.objects.items() if (owners := o["metadata"].get("ownerReferences"))
                           and not o["metadata"].get("deletionTimestamp")
                           and all(owner.get("uid") not in uids for owner in owners)]
                if not orphans:
                    return deleted
                for key in orphans:
                    self._delete(parse(key), self.objects[key])
                    deleted.append(key)

    def fail(self, verb: str | tuple[str, ...], path: str = "*", error: BaseException | int = 500, *, times: int | None = 1,
             message: str = "injected", retry_after: float | None = None) -> Fault:
        """Make the next `times` requests with one of these verbs and a path matching the glob fail (None: all
        of them). `error`: an HTTP status (raised as the client raises it) or any exception (a connection
        failure, say). For POST the glob is also tried on the new object's path (collection/name)."""
        if isinstance(error, int):
            error = api_error(error, message, retry_after=retry_after)
        fault = Fault((verb,) if isinstance(verb, str) else tuple(verb), path, error, times)
        with self._lock:
            self._faults.append(fault)
        return fault

    def requests(self, verb: str | None = None, path: str = "*") -> list[str]:
        """Paths of the requests made so far, by verb and path glob."""
        return [p for v, p in self.calls if verb in (None, v) and fnmatch.fnmatchcase(p, path)]

    # --- watches -------------------------------------------------------------------------------------
    def bookmark(self) -> None:
        with self._lock:
            self._record("BOOKMARK", None, None, None)
            self._lock.notify_all()

    def compact(self) -> None:
        """Forget the history: a watch from an older resourceVersion gets 410 Expired."""
        with self._lock:
            self._compacted = self._revision
            self._history.clear()

    def end_watches(self) -> None:
        """The server closes every open watch normally (as it does after timeoutSeconds)."""
        self._for_watches(lambda w: setattr(w, "ended", True))

    def break_watches(self, error: BaseException | None = None) -> None:
        """Every open watch fails mid-stream (a connection reset, an API server restart)."""
        error = error or ConnectionResetError("connection reset by peer")
        self._for_watches(lambda w: setattr(w, "error", error))

    def expire_watches(self) -> None:
        """Every open watch gets an ERROR 410 event and ends (its resourceVersion was compacted away)."""
        def expire(w: _Watch) -> None:
            w.events.append(_expired(0, self._revision))
            w.ended = True
        self.compact()
        self._for_watches(expire)

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watch_state)

    def close(self) -> None:
        """End every open watch and refuse new ones to block (call at the end of a test)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    async def aclose(self) -> None:
        self.close()

    # --- TokenRequest / TokenReview ---------------------------------------------------------------------
    def review_token(self, token: str, audience: str | None = None) -> IssuedToken | None:
        """The token's identity if it would authenticate now (as a TokenReview answers), else None."""
        with self._lock:
            issued = self.tokens.get(token)
            if issued is None or self.clock() >= issued.expires_at:
                return None
            if audience is not None and audience not in issued.audiences:
                return None
            if f"/api/v1/namespaces/{issued.namespace}/serviceaccounts/{issued.service_account}" not in self.objects:
                return None
            if issued.bound is not None:
                bound = self.objects.get(issued.bound[0])
                if bound is None or bound["metadata"].get("uid") != issued.bound[1]:
                    return None
            return issued

    def _token_review(self, body: JSON) -> JSON:
        spec = body.get("spec") or {}
        audiences = spec.get("audiences") or list(self._token_audiences)
        issued = self.review_token(spec.get("token", ""))
        matched = [a for a in audiences if issued is not None and a in issued.audiences]
        status: JSON = {"authenticated": False, "user": {}}
        if issued is not None and matched:
            status = {"authenticated": True, "audiences": matched,
                      "user": {"username": f"system:serviceaccount:{issued.namespace}:{issued.service_account}"}}
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": spec, "status": status}

    def _token_request(self, ref: Ref, body: JSON) -> JSON:
        account = self.objects.get(Ref(ref.prefix, ref.namespace, ref.plural, ref.name).key)
        if account is None:
            raise api_error(404, f'serviceaccounts "{ref.name}" not found')
        spec = copy.deepcopy(body.get("spec") or {})
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise api_error(422, f"TokenRequest.authentication.k8s.io \"{ref.name}\" is invalid: spec.expirationSeconds: "
                                 f"Invalid value: {seconds}: may not specify a duration less than 10 minutes")
        bound = None
        if (target := spec.get("boundObjectRef")) is not None:
            if target.get("apiVersion") != "v1" or target.get("kind") not in ("Secret", "Pod"):
                raise api_error(400, f"cannot bind token to object of type {target.get('apiVersion')}, Kind={target.get('kind')}")
            plural = "secrets" if target["kind"] == "Secret" else "pods"
            path = f"/api/v1/namespaces/{ref.namespace}/{plural}/{target.get('name')}"
            obj = self.objects.get(path)
            if obj is None:
                raise api_error(404, f'{plural} "{target.get("name")}" not found')
            if target.get("uid") and target["uid"] != obj["metadata"].get("uid"):
                raise api_error(409, f'Operation cannot be fulfilled on {target["kind"]} "{target.get("name")}": the UID in the bound '
                                     f"object reference ({target['uid']}) does not match the UID in record. "
                                     "The object might have been deleted and then recreated")
            bound = (path, obj["metadata"]["uid"])
        spec["audiences"] = spec.get("audiences") or list(self._token_audiences)
        spec["expirationSeconds"] = seconds
        expires = self.clock().replace(microsecond=0) + timedelta(seconds=seconds)
        token = f"fake-sa-token-{next(self._token_serial)}"
        self.token_requests.append(copy.deepcopy(body))
        self.tokens[token] = IssuedToken(ref.namespace or "", ref.name or "", list(spec["audiences"]), expires, bound)
        return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "metadata": {"name": ref.name, "namespace": ref.namespace, "creationTimestamp": None},
                "spec": spec, "status": {"token": token, "expirationTimestamp": _stamp(expires)}}

    # --- the store -------------------------------------------------------------------------------------
    def _request(self, verb: str, path: str, *more: str) -> None:
        self.calls.append((verb, path))
        self.call_times.append(time.monotonic())
        for fault in self._faults:
            if fault.matches(verb, (path, *more)):
                if fault.times is not None:
                    fault.times -= 1
                raise fault.error

    def _existing(self, ref: Ref) -> JSON:
        if ref.name is None:
            raise api_error(405, "the operation needs a name")
        current = self.objects.get(ref.key)
        if current is None:
            raise api_error(404, f'{ref.plural} "{ref.name}" not found')
        return current

    def _list(self, ref: Ref, label_selector: str | None) -> JSON:
        if ref.name is not None:
            raise api_error(405, "list needs a collection")
        matches = selector(label_selector)
        items = [copy.deepcopy(o) for k, o in sorted(self.objects.items()) if ref.contains(parse(k)) and matches(o)]
        return {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._revision)}, "items": items}

    def _create(self, ref: Ref, body: JSON, *, seeding: bool) -> JSON:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if ref.namespace is not None and meta.setdefault("namespace", ref.namespace) != ref.namespace:
            raise api_error(400, "the namespace of the provided object does not match the namespace sent on the request")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise api_error(422, f'{obj.get("kind", "object")} "" is invalid: metadata.name: Required value: '
                                     "name or generateName is required")
            meta["name"] = meta["generateName"] + _suffix(next(self._names))
            while ref.named(meta["name"]).key in self.objects:
                meta["name"] = meta["generateName"] + _suffix(next(self._names))
        target = ref.named(meta["name"])
        if target.key in self.objects:
            raise api_error(409, f'{ref.plural} "{meta["name"]}" already exists', reason="AlreadyExists")
        _validate(target, obj)
        if not seeding:
            for volatile in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp", "generation"):
                meta.pop(volatile, None)
            if ref.plural in self._status_kinds:
                obj.pop("status", None)
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _stamp(self.clock()))
        if ref.plural in self._status_kinds:
            meta.setdefault("generation", 1)
        meta.pop("resourceVersion", None)
        return self._write(target, None, obj)

    def _update(self, ref: Ref, current: JSON, new: JSON) -> JSON:
        """A write through the API (PUT or PATCH) of the object or its status subresource."""
        target = Ref(ref.prefix, ref.namespace, ref.plural, ref.name)
        status_kind = ref.plural in self._status_kinds
        if ref.subresource == "status":
            if not status_kind:
                raise api_error(404, "the server could not find the requested resource")
            new = {**copy.deepcopy(current), "status": new.get("status")}
            if new["status"] is None:
                new.pop("status")
        elif ref.subresource is not None:
            raise api_error(404, "the server could not find the requested resource")
        elif status_kind:
            new.pop("status", None)
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
        meta = new.setdefault("metadata", {})
        for kept in ("uid", "creationTimestamp", "deletionTimestamp", "generation", "namespace", "name"):
            if kept in current["metadata"]:
                meta[kept] = current["metadata"][kept]
            else:
                meta.pop(kept, None)
        if current["metadata"].get("deletionTimestamp"):  # no new finalizers on an object being deleted
            added = set(meta.get("finalizers") or ()) - set(current["metadata"].get("finalizers") or ())
            if added:
                raise api_error(422, f"metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)!r}")
        _validate(target, new)
        return self._commit(target, current, new)

    def _commit(self, target: Ref, current: JSON, new: JSON) -> JSON:
        """Store `new` over `current`: a new resourceVersion unless nothing changed; the generation follows
        the spec on kinds with a status subresource; an object being deleted goes with its last finalizer."""
        meta = new.setdefault("metadata", {})
        meta["resourceVersion"] = current["metadata"].get("resourceVersion")
        if target.plural in self._status_kinds:
            meta["generation"] = current["metadata"].get("generation", 1) + (_spec(new) != _spec(current))
        if new == current:
            return current  # a no-op: no new version, no event
        meta.pop("resourceVersion")
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(target, new)
        return self._write(target, current, new)

    def _write(self, target: Ref, old: JSON | None, new: JSON) -> JSON:
        self._revision += 1
        new["metadata"]["resourceVersion"] = str(self._revision)
        self.objects[target.key] = new
        self._record("ADDED" if old is None else "MODIFIED", target, old, new)
        return new

    def _delete(self, ref: Ref, current: JSON) -> None:
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(current)
                new["metadata"]["deletionTimestamp"] = _stamp(self.clock())
                self._write(Ref(ref.prefix, ref.namespace, ref.plural, ref.name), current, new)
            return
        self._remove(Ref(ref.prefix, ref.namespace, ref.plural, ref.name), current)

    def _remove(self, target: Ref, last: JSON) -> JSON:
        self._revision += 1
        gone = copy.deepcopy(last)
        gone["metadata"]["resourceVersion"] = str(self._revision)
        before = self.objects.pop(target.key, None)
        self._record("DELETED", target, before or last, gone)
        return gone

    def _record(self, type_: str, target: Ref | None, old: JSON | None, new: JSON | None) -> None:
        self._seq += 1
        self._history.append(_History(self._seq, self._revision, type_, target, copy.deepcopy(old), copy.deepcopy(new)))
        self._lock.notify_all()

    def _for_watches(self, change: Callable[[_Watch], None]) -> None:
        with self._lock:
            for state in self._watch_state.values():
                change(state)
            self._lock.notify_all()


def _check_version(ref: Ref, current: JSON, expected: str | None) -> None:
    if expected and expected != current["metadata"].get("resourceVersion"):
        raise api_error(409, f'Operation cannot be fulfilled on {ref.plural} "{ref.name}": the object has been modified; '
                             "please apply your changes to the latest version and try again")


def _validate(ref: Ref, obj: JSON) -> None:
    if ref.plural == "secrets" and ref.prefix == "/api/v1":
        for key, value in (obj.get("data") or {}).items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise api_error(400, f"Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data in key {key!r}") from None


def _spec(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _suffix(n: int) -> str:
    out = ""
    for _ in range(5):
        n, digit = divmod(n, len(_NAME_CHARS))
        out += _NAME_CHARS[digit]
    return out


def _expired(start: int, current: int) -> JSON:
    return {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                        "message": f"too old resource version: {start} ({current})", "reason": "Expired", "code": 410}}


def _translate(entry: _History, ref: Ref, matches: Callable[[Mapping[str, Any]], bool], bookmarks: bool) -> JSON | None:
    """What a watch on `ref` with this selector sees of one change."""
    if entry.type == "BOOKMARK":
        return {"type": "BOOKMARK", "object": {"kind": "Bookmark", "metadata": {"resourceVersion": str(entry.revision)}}} if bookmarks else None
    if entry.ref is None or not ref.contains(entry.ref):
        return None
    was = entry.old is not None and matches(entry.old)
    if entry.type == "DELETED":
        return {"type": "DELETED", "object": copy.deepcopy(entry.new)} if was else None
    now = entry.new is not None and matches(entry.new)
    if now:
        return {"type": "MODIFIED" if was else "ADDED", "object": copy.deepcopy(entry.new)}
    if was:  # no longer selected: the watch sees it leave, as it last matched
        return {"type": "DELETED", "object": copy.deepcopy(entry.old)}
    return None
