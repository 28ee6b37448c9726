"""Rendering the Helm chart with the pinned helm, for the chart's unit tests (no cluster involved)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster.controlplane import REPO_ROOT, pinned_versions, resolve_bin_dir

CHART = REPO_ROOT / "deploy" / "helm" / "workspace-secrets-operator"
RELEASE, NAMESPACE = "wso", "wso-system"


@pytest.fixture(scope="session")
def helm() -> Path:
    return resolve_bin_dir() / "helm"


def render(helm: Path, values: dict[str, Any]) -> list[dict]:
    """`helm template` of the chart with these values, as a list of documents."""
    result = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--kube-version", pinned_versions()["K8S_VERSION"], "-f", "-"],
        input=json.dumps(values), capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
