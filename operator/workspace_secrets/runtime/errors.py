"""Map controller failures to kopf's retry semantics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import kopf

from ..controllers.workspace_secret import RetryLater
from ..kube.client import KubeError

_TRANSIENT = {408, 429, 500, 502, 503, 504}


@contextlib.contextmanager
def retry_policy() -> Iterator[None]:
    """Races retry at once; API throttling and outages back off; anything else (RBAC, validation) waits
    longer, since it needs a human, but is still retried so that a fix is picked up without a restart."""
    try:
        yield
    except RetryLater as exc:
        raise kopf.TemporaryError(str(exc), delay=0.5) from None
    except KubeError as exc:
        delay = 5 if exc.status in _TRANSIENT else 30
        delay = max(delay, exc.retry_after or 0)  # never sooner than the API server asked
        raise kopf.TemporaryError(f"Kubernetes API answered {exc.status} {exc.reason}: {exc.message}", delay=delay) from None
