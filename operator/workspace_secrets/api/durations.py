"""Durations as Kubernetes users write them: "90s", "30m", "12h", "1h30m", "7d"."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+)(d|h|m|s)")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
PATTERN = r"^([0-9]+(d|h|m|s))+$"  # the same rule, for the CRD schema


def parse_duration(text: str) -> timedelta:
    if not re.fullmatch(PATTERN, text or ""):
        raise ValueError(f"{text!r} is not a duration like 90s, 30m, 12h, 1h30m or 7d")
    return timedelta(seconds=sum(int(n) * _UNITS[u] for n, u in _PART.findall(text)))


def format_duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    out = ""
    for unit, size in _UNITS.items():
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"
