"""The one exception type of the launcher."""

from __future__ import annotations


class ControlPlaneError(RuntimeError):
    """The local cluster (control plane or node) could not be started, reached, or stopped."""
