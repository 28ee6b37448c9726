"""Counting API requests, to verify "no redundant writes" from the API server's side.

The API server's own counter (`apiserver_request_total` on /metrics, by verb/resource/subresource) sees
every client. The harness counts its own requests the same way, so that the difference is what the
operator (and, negligibly, the controller-manager) sent during a phase.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

from .kube import BenchKube

Key = tuple[str, str, str]  # (verb, resource, subresource)
_LINE = re.compile(r'^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')
RESOURCES_OF_INTEREST = ("workspacesecrets", "secrets", "events", "pods", "serviceaccounts", "usertokens", "oauthapplications")


def server_counts(kube: BenchKube) -> Counter[Key]:
    counts: Counter[Key] = Counter()
    for line in kube.text("/metrics").splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        counts[(labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""))] += int(float(match["value"]))
    return counts


def classify(method: str, path: str, query: Mapping[str, str] | None) -> Key:
    """The metric's (verb, resource, subresource) for one request path, as the API server labels it."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    # /api/v1/... or /apis/<group>/<version>/...
    rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    resource = rest[0] if rest else ""
    named = len(rest) >= 2
    subresource = rest[2] if len(rest) >= 3 else ""
    verb = method
    if method == "GET" and not named:
        verb = "WATCH" if (query or {}).get("watch") == "true" else "LIST"
    elif method == "DELETE" and not named:
        verb = "DELETECOLLECTION"
    return verb, resource, subresource


class CountingKube(BenchKube):
    """BenchKube that counts its own requests by metric key."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.own: Counter[Key] = Counter()
        self._count_lock = threading.Lock()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        if not path.startswith("/metrics"):
            key = classify(method, path, kwargs.get("query"))
            with self._count_lock:
                self.own[key] += 1
        return super()._request(method, path, **kwargs)


class RequestWindow:
    """Requests served during a window, minus the harness's own."""

    def __init__(self, kube: CountingKube) -> None:
        self._kube = kube
        self._server = server_counts(kube)
        self._own = Counter(kube.own)

    def close(self) -> dict[str, int]:
        server = server_counts(self._kube) - self._server
        own = Counter(self._kube.own) - self._own
        others = server - own
        return {f"{verb} {resource}{'/' + sub if sub else ''}": n for (verb, resource, sub), n in sorted(others.items())
                if resource in RESOURCES_OF_INTEREST and n > 0}


def per_object(counts: Mapping[str, int], objects: int) -> dict[str, float]:
    return {k: round(v / objects, 2) for k, v in counts.items()} if objects else {}


def writes(counts: Mapping[str, int]) -> int:
    return sum(n for k, n in counts.items() if k.split()[0] in ("POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION"))
