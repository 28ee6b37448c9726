"""Test support: a local Kubernetes control plane for the end-to-end tests and for development.

Deliberately free of kopf (and of the operator's own modules) so that starting a control plane never
imports the code under test.
"""

from workspace_secrets.testing.controlplane import (
    ControlPlane,
    ControlPlaneError,
    pinned_versions,
    resolve_bin_dir,
)

__all__ = ["ControlPlane", "ControlPlaneError", "pinned_versions", "resolve_bin_dir"]
