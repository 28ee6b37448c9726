"""Percentiles and small summaries (nearest-rank, no interpolation: what was actually observed)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Iterable[float], *, unit_scale: float = 1000.0) -> dict[str, float | int]:
    """p50/p95/p99/max in milliseconds (by default) and the count."""
    data = list(values)
    if not data:
        return {"count": 0}
    return {
        "count": len(data),
        "p50_ms": round(percentile(data, 50) * unit_scale, 1),
        "p95_ms": round(percentile(data, 95) * unit_scale, 1),
        "p99_ms": round(percentile(data, 99) * unit_scale, 1),
        "max_ms": round(max(data) * unit_scale, 1),
    }


def deltas(start: Mapping[str, float], end: Mapping[str, float]) -> list[float]:
    """end[name] - start[name] for every name that has both."""
    return [end[name] - t for name, t in start.items() if name in end]
