"""The one mapping of the operator's exceptions to kopf's retry semantics (both CRDs' handlers use it).

- RetryLater (a lost compare-and-swap race, a provider cleanup that must be retried): after its own delay.
- KubeError: API throttling and outages back off 5 s; anything else (RBAC, validation) waits 30 s, since it
  needs a human, but is still retried so that a fix is picked up without a restart. Never sooner than the
  API server's Retry-After.
- anything else, where a handler must never give up (a finalizer that would leak a token): 10 s.
An admission review cannot be retried by kopf: a KubeError there is answered 503 (the API server's caller retries).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import kopf

from workspace_secrets.api import constants as c
from workspace_secrets.runtime.kube import KubeError

_TRANSIENT = {408, 429, 500, 502, 503, 504}


class RetryLater(Exception):
    """A transient condition (e.g. a compare-and-swap lost to another writer): try again after `delay` seconds."""

    def __init__(self, message: str, delay: float = 0.5) -> None:
        super().__init__(message)
        self.delay = delay


def temporary_error(exc: Exception) -> kopf.TemporaryError:
    """The kopf retry for one of our exceptions."""
    if isinstance(exc, RetryLater):
        return kopf.TemporaryError(str(exc), delay=exc.delay)
    if isinstance(exc, KubeError):
        delay = 5 if exc.status in _TRANSIENT else 30
        delay = max(delay, exc.retry_after or 0)  # never sooner than the API server asked
        return kopf.TemporaryError(f"Kubernetes API answered {exc.status} {exc.reason}: {exc.message}", delay=delay)
    return kopf.TemporaryError(f"{type(exc).__name__}: {exc}", delay=10)


@contextlib.contextmanager
def retry_policy(*, retry_everything: bool = False) -> Iterator[None]:
    """Turn RetryLater and KubeError (and, with `retry_everything`, any other exception) into kopf retries."""
    try:
        yield
    except (RetryLater, KubeError) as exc:
        raise temporary_error(exc) from None
    except Exception as exc:  # noqa: BLE001 - only with retry_everything: e.g. a finalizer that must never give up
        if not retry_everything:
            raise
        raise temporary_error(exc) from None


def admission_error(exc: Exception) -> Exception:
    """The answer to an admission review that failed with `exc`: a KubeError is a 503 the caller may retry;
    anything else is returned as it is (kopf answers it as an error)."""
    if isinstance(exc, KubeError):
        return kopf.AdmissionError(
            f"{c.OPERATOR_NAME} could not read the pod's WorkspaceSecret (Kubernetes API answered {exc.status} "
            f"{exc.reason}); retry, or check the operator's RBAC for workspacesecrets get.", code=503,
        )
    return exc
