"""What the chart's NOTES.txt (shown after `helm install/upgrade`) warns about.

`helm template` never renders NOTES.txt, so the test renders it the way Helm does (the same template engine, the
same values) from a copy of the chart in which a ConfigMap carries `tpl` of the notes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_support import CHART, NAMESPACE, RELEASE, helm  # noqa: F401 (helm: fixture)
from devcluster.controlplane import pinned_versions

OPENSHIFT_WARNING = "WARNING: securityContext.runAsUser or runAsGroup is set"


def notes(helm: Path, tmp_path: Path, values: dict[str, Any] | str) -> str:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    shutil.copy(chart / "templates" / "NOTES.txt", chart / "notes.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ tpl (.Files.Get "notes.txt") . | quote }}\n')
    result = subprocess.run(
        [str(helm), "template", RELEASE, str(chart), "--namespace", NAMESPACE, "--kube-version", pinned_versions()["K8S_VERSION"],
         "--show-only", "templates/zz-notes.yaml", "-f", "-"],
        input=values if isinstance(values, str) else json.dumps(values), capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["data"]["notes"]


@pytest.mark.parametrize("values", [
    "securityContext:\n  runAsUser: null\n  runAsGroup: null\n",  # chart 0.3.0's OpenShift advice, as a values file
    "securityContext:\n  runAsUser: 1000680000\n",
    {"securityContext": {"runAsGroup": 0}},
])
def test_an_old_openshift_security_context_is_warned_about(helm: Path, tmp_path: Path, values: dict | str) -> None:
    text = notes(helm, tmp_path, values)
    assert OPENSHIFT_WARNING in text and "podSecurityContext.runAsUser=null" in text


def test_no_security_context_warning_by_default(helm: Path, tmp_path: Path) -> None:
    text = notes(helm, tmp_path, {"podSecurityContext": {"runAsUser": None, "runAsGroup": None}})
    assert OPENSHIFT_WARNING not in text and "peering.enabled is DEPRECATED" not in text


def test_peering_says_kopfs_crds_are_not_the_charts(helm: Path, tmp_path: Path) -> None:
    text = notes(helm, tmp_path, {"peering": {"enabled": True}})
    assert "peering.enabled is DEPRECATED" in text and "kubectl apply --server-side -f crds/kopf-peering.yaml" in text
