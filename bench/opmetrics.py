"""The operator's own Prometheus metrics (its /metrics endpoint), read by the harness.

What they are for: knowing what the operator has *done* without looking at its API requests -- after a
restart with everything unchanged it may (by design) send none for an object, and still has to look at it.
An object "looked at" is one counted by `wso_reconciles_total` (a reconcile: any result) or by
`wso_reconciles_skipped_total` (found unchanged from what the operator already knows, no request), for
kind WorkspaceSecret; `wso_workqueue_depth` is how many keys still wait. `wso_kube_requests_total` counts
the requests of the operator's own API client (not kopf's), a cross-check of the API server's count, which
also includes the controller-manager's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

Sample = tuple[str, frozenset[tuple[str, str]]]  # (metric name, labels)

_LINE = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

RECONCILES = "wso_reconciles_total"
SKIPPED = ("wso_reconciles_skipped_total", "wso_reconcile_skipped_total")  # the name, and an early spelling
CLIENT_REQUESTS = "wso_kube_requests_total"
DEPTH = "wso_workqueue_depth"
WORKSPACE_SECRET = "WorkspaceSecret"
QUEUE = "workspacesecrets"


def parse(text: str) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match:
            out[(match["name"], frozenset(_LABEL.findall(match["labels"] or "")))] = float(match["value"])
    return out


def total(samples: Mapping[Sample, float], name: str, **labels: str) -> float:
    """Sum of `name` over every label set that has `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def by_label(samples: Mapping[Sample, float], name: str | tuple[str, ...], label: str, **labels: str) -> dict[str, float]:
    want, names = set(labels.items()), (name,) if isinstance(name, str) else name
    out: dict[str, float] = {}
    for (n, ls), v in samples.items():
        if n in names and want <= ls:
            key = dict(ls).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


@dataclass(frozen=True)
class Progress:
    """What one scrape says about the WorkspaceSecrets."""

    at: float  # time.monotonic() of the scrape
    reconciles: dict[str, float]  # by result
    skipped: dict[str, float]  # by reason (0 entries: an operator without that counter)
    depth: float  # keys waiting in the WorkspaceSecret work queue

    @property
    def looked_at(self) -> int:
        return int(sum(self.reconciles.values()) + sum(self.skipped.values()))

    @classmethod
    def of(cls, samples: Mapping[Sample, float], at: float) -> Progress:
        return cls(at=at,
                   reconciles=by_label(samples, RECONCILES, "result", kind=WORKSPACE_SECRET),
                   skipped=by_label(samples, SKIPPED, "reason", kind=WORKSPACE_SECRET),
                   depth=total(samples, DEPTH, queue=QUEUE))

    def minus(self, earlier: Progress | None) -> Progress:
        if earlier is None:
            return self
        return Progress(at=self.at,
                        reconciles={k: v - earlier.reconciles.get(k, 0.0) for k, v in self.reconciles.items()},
                        skipped={k: v - earlier.skipped.get(k, 0.0) for k, v in self.skipped.items()},
                        depth=self.depth)

    def to_json(self) -> dict[str, object]:
        return {"looked_at": self.looked_at, "reconciles": {k: int(v) for k, v in sorted(self.reconciles.items()) if v},
                "skipped": {k: int(v) for k, v in sorted(self.skipped.items()) if v}, "queue_depth": int(self.depth)}


def client_requests(samples: Mapping[Sample, float]) -> dict[str, int]:
    """Requests of the operator's own client so far, by verb (every response code)."""
    return {verb: int(v) for verb, v in sorted(by_label(samples, CLIENT_REQUESTS, "verb").items()) if v}
