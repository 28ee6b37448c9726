"""Whether this replica is the active one, decided from a kopf peering object's status.

kopf pauses its own watches when a live peer with a higher priority -- or with the *same* priority --
exists, but it does not expose that state to other tasks. The operator's own Secret watch, resync loop
and work queue must pause with it, so they apply kopf's rule to the same peering object
(kopf/_core/engines/peering.py: process_peering_event). A peer is alive until lastseen + lifetime.

Replica priorities: with the same priority kopf pauses *every* replica, so replicas need distinct
priorities. `auto_priority` makes the earliest-started replica the highest (it stays active; a restarted
replica queues behind the running one instead of taking over), with random low digits against ties.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

#: Fits in a JSON number exactly (< 2**53): (2**41 - epoch milliseconds) * 1000 + 0..999.
_EPOCH_MS_CEILING = 2**41


@dataclass(frozen=True)
class Peer:
    identity: str
    priority: int
    deadline: datetime


def peers(status: Mapping[str, Any] | None) -> list[Peer]:
    result = []
    for identity, info in (status or {}).items():
        if not isinstance(info, Mapping):
            continue
        try:
            lastseen = datetime.fromisoformat(str(info["lastseen"]).replace("Z", "+00:00"))
            result.append(Peer(identity, int(info.get("priority", 0)), lastseen + timedelta(seconds=int(info.get("lifetime", 60)))))
        except (KeyError, ValueError, TypeError):
            continue  # an entry we cannot read is not a live peer (kopf would fail on it too)
    return result


def blocking_peers(status: Mapping[str, Any] | None, identity: str, priority: int, now: datetime) -> list[Peer]:
    """Live peers (other than us) that make kopf pause this replica: priority >= ours."""
    return [p for p in peers(status) if p.identity != identity and p.deadline > now and p.priority >= priority]


def is_active(status: Mapping[str, Any] | None, identity: str, priority: int, now: datetime) -> bool:
    return not blocking_peers(status, identity, priority, now)


def auto_priority(now: datetime, rng: random.Random | None = None) -> int:
    """Earlier start -> higher priority; see the module docstring."""
    epoch_ms = int(now.timestamp() * 1000)
    return (_EPOCH_MS_CEILING - epoch_ms) * 1000 + (rng or random).randrange(1000)
