"""An index of Secrets' metadata, fed by a label-selected watch (runtime/watch.py): which Secrets exist, at which
resourceVersion, and whose they are -- so that a question like "which Secrets does this user have in this
namespace, and did any change?" costs no request, instead of a label-selected LIST that the API server answers by
filtering its whole watch cache (O(N) per question, O(N²) for a burst of N objects).

What it holds, per (namespace, name): the resourceVersion and two labels (the user's, `workspace-secrets.io/user`,
and `app.kubernetes.io/component`), in a tuple. Never Secret data, never the full labels or annotations: memory per
object stays a few hundred bytes (repeated strings -- namespaces, users, components -- are interned). A secondary
index maps (namespace, user) to the names.

Fed by `replace()` (a full list: the watch's list before it starts watching, and its relist after 410 Gone; it says
whether the content changed, i.e. whether the watch missed events) and `apply()` (each watch event, before the
watch's handler runs). `synced` is False until every watch that feeds the
index has listed once: until then callers must not trust an absence (ask the API server instead).

Pure: no I/O. Used from the event loop only (no locking).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from workspace_secrets.api import constants as c

__all__ = ["Entry", "SecretIndex"]


class Entry(NamedTuple):
    """What the index keeps of one Secret."""

    resource_version: str
    user: str | None
    component: str | None


def _intern(value: Any) -> str | None:
    return sys.intern(value) if isinstance(value, str) else None


class SecretIndex:
    """(namespace, name) -> Entry, and (namespace, user) -> names. See the module's docstring."""

    def __init__(self) -> None:
        # namespace -> name -> Entry (no (namespace, name) tuple per object: one dict per namespace instead)
        self._objects: dict[str, dict[str, Entry]] = {}
        # (namespace, user) -> names
        self._by_user: dict[tuple[str, str], set[str]] = {}
        #: Scopes (a namespace, or None for all) that feed this index and must have listed before it is synced.
        self._expected: set[str | None] = set()
        self._listed: set[str | None] = set()
        #: The resourceVersion of the last full list, per scope (for diagnostics).
        self.list_resource_versions: dict[str | None, str] = {}

    # --- who feeds it --------------------------------------------------------------------------------
    def expect(self, namespace: str | None) -> None:
        """A watch on `namespace` (None: all namespaces) feeds this index: it is not synced before that watch
        has listed. (LabelSelectedWatch calls this when it is given the index.)"""
        self._expected.add(namespace)

    @property
    def synced(self) -> bool:
        """True once every watch feeding the index has done its first full list (without any: after the first
        `replace()`). Before that, an absent entry means "unknown", not "absent"."""
        if not self._listed:
            return False
        return self._expected <= self._listed

    # --- feeding ---------------------------------------------------------------------------------------
    def replace(self, items: Iterable[Mapping[str, Any]], resource_version: str, *, namespace: str | None = None) -> bool:
        """A full list: the index holds exactly `items` afterwards. With `namespace`, only that namespace's entries
        are replaced (a per-namespace watch sharing the index with others); without, all of them. True if that
        changed what the index held (a Secret added, removed, or at another resourceVersion)."""
        return self.replace_entries(self.entries_of(items), resource_version, namespace=namespace)

    @staticmethod
    def entries_of(items: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, Entry]]:
        """(namespace, name, Entry) of each object: what `replace_entries` takes. A list read in pages is reduced
        page by page with this, so that the pages' metadata is not all held at once."""
        out = []
        for item in items:
            key = _key(item)
            if key is not None:
                out.append((*key, _entry(item)))
        return out

    def replace_entries(self, entries: Iterable[tuple[str, str, Entry]], resource_version: str, *,
                        namespace: str | None = None) -> bool:
        """`replace()` with the entries `entries_of()` made."""
        objects: dict[str, dict[str, Entry]] = {}
        for ns, name, entry in entries:
            if namespace is None or ns == namespace:
                objects.setdefault(ns, {})[name] = entry
        if namespace is None:
            changed = objects != self._objects
        else:
            changed = objects.get(namespace, {}) != self._objects.get(namespace, {})
        if namespace is None:
            self._objects = objects
            self._by_user = {}
        else:
            for name, entry in self._objects.pop(namespace, {}).items():
                self._unlink(namespace, name, entry)
            if namespace in objects:
                self._objects[namespace] = objects[namespace]
        for ns, names in objects.items():
            for name, entry in names.items():
                self._link(ns, name, entry)
        scope = _intern(namespace)
        self._listed.add(scope)
        self.list_resource_versions[scope] = resource_version
        return changed

    def apply(self, event_type: str, obj: Mapping[str, Any]) -> None:
        """One watch event: ADDED and MODIFIED store the object's entry, DELETED removes it (BOOKMARK, ERROR and
        anything else change nothing)."""
        if event_type not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key = _key(obj)
        if key is None:
            return
        namespace, name = key
        names = self._objects.get(namespace)
        old = names.get(name) if names is not None else None
        if old is not None:
            self._unlink(namespace, name, old)
        if event_type == "DELETED":
            if names is not None:
                names.pop(name, None)
                if not names:
                    del self._objects[namespace]
            return
        entry = _entry(obj)
        if names is None:
            names = self._objects[namespace] = {}
        names[name] = entry
        self._link(namespace, name, entry)

    # --- questions -------------------------------------------------------------------------------------
    def version(self, namespace: str, name: str) -> str | None:
        """The Secret's resourceVersion as last seen, or None if the index does not hold it."""
        entry = self.get(namespace, name)
        return entry.resource_version if entry is not None else None

    def get(self, namespace: str, name: str) -> Entry | None:
        names = self._objects.get(namespace)
        return names.get(name) if names is not None else None

    def names_for_user(self, namespace: str, user: str) -> list[tuple[str, str]]:
        """The user's Secrets in the namespace, as (name, resourceVersion), sorted by name."""
        names = self._by_user.get((namespace, user))
        if not names:
            return []
        entries = self._objects[namespace]
        return [(name, entries[name].resource_version) for name in sorted(names)]

    def __len__(self) -> int:
        return sum(len(names) for names in self._objects.values())

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """(namespace, name) of every Secret held."""
        for namespace, names in self._objects.items():
            for name in names:
                yield namespace, name

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) != 2:
            return False
        return self.get(*key) is not None

    # --- the secondary index ---------------------------------------------------------------------------
    def _link(self, namespace: str, name: str, entry: Entry) -> None:
        if entry.user is not None:
            self._by_user.setdefault((namespace, entry.user), set()).add(name)

    def _unlink(self, namespace: str, name: str, entry: Entry) -> None:
        if entry.user is None:
            return
        key = (namespace, entry.user)
        names = self._by_user.get(key)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_user[key]


def _key(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace"), meta.get("name")
    if not isinstance(namespace, str) or not isinstance(name, str) or not namespace or not name:
        return None
    return sys.intern(namespace), name


def _entry(obj: Mapping[str, Any]) -> Entry:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    return Entry(str(meta.get("resourceVersion") or ""), _intern(labels.get(c.LABEL_USER)),
                 _intern(labels.get(c.LABEL_COMPONENT)))
