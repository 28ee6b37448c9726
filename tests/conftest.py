"""Shared pytest wiring. Deliberately nothing cluster-related: unit tests must stay process-free;
the control plane lives in tests/e2e/conftest.py and is only loaded when e2e tests are collected."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root, for tests that read manifests (crds/, deploy/, examples/)."""
    return REPO_ROOT
