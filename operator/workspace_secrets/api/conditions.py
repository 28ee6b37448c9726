"""Kubernetes-style status Conditions (the metav1.Condition shape), computed, never mutated in place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool
    reason: str
    message: str

    @property
    def status_text(self) -> str:
        return "True" if self.status else "False"


@dataclass(frozen=True)
class Problem:
    """Why something could not be done: a stable reason (a Condition reason) and a message that says how to fix it."""

    reason: str
    message: str


class ProblemFound(Exception):
    """Something only a human can fix: reported as a Condition (and an Event), not retried in a hot loop."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def merge(
    existing: Sequence[Mapping[str, Any]] | None,
    wanted: Iterable[Condition],
    *,
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new conditions list: `lastTransitionTime` moves only when a condition's status flips.

    Conditions of other types already present (set by another part of the operator) are kept.
    """
    by_type = {c.get("type"): dict(c) for c in existing or ()}
    timestamp = now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for condition in wanted:
        old = by_type.get(condition.type)
        transition = timestamp
        if old and old.get("status") == condition.status_text and old.get("lastTransitionTime"):
            transition = old["lastTransitionTime"]
        by_type[condition.type] = {
            "type": condition.type,
            "status": condition.status_text,
            "reason": condition.reason,
            "message": condition.message,
            "observedGeneration": generation,
            "lastTransitionTime": transition,
        }
    return sorted(by_type.values(), key=lambda c: c["type"])


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
