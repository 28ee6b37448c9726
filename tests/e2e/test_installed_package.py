"""The operator works from an installed package, not only from a checkout: the CRDs ship as package data.

A wheel is built from a copy of the source tree (`pip wheel --no-deps`), installed into an empty directory
(`pip install --no-deps --target`), and `python -m workspace_secrets crds` run from there (its dependencies from the
dev venv, PYTHONPATH putting the installed copy first) prints exactly the CRDs of crds/, which the real API server
accepts (`kubectl apply --server-side --dry-run=server -f -`). `make run`'s launcher (devcluster.dev) applies the CRDs
the same way, through the installed package's `workspace-secrets-operator crds`: checked with the installed copy's
console script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from devcluster import dev

REPO = Path(__file__).resolve().parents[2]


def _documents(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.timeout(600)
def test_crds_from_an_installed_wheel(cluster, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "crds", source / "crds")
    shutil.copytree(REPO / "operator", source / "operator", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(wheels), str(source)], check=True, cwd=tmp_path, timeout=500)
    (wheel,) = wheels.glob("workspace_secrets_operator-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True, cwd=tmp_path, timeout=120)
    assert (target / "workspace_secrets" / "crds").is_dir() and not (target / "workspace_secrets" / "crds").is_symlink()

    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import workspace_secrets; print(workspace_secrets.__file__)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(target), f"imported {where}, not the installed copy"
    printed = subprocess.run([sys.executable, "-m", "workspace_secrets", "crds"], check=True, capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=60).stdout

    expected = [d for path in sorted((REPO / "crds").glob("*.yaml")) for d in _documents(path.read_text())]
    assert _documents(printed) == expected
    applied = cluster.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=wso-e2e",
                              "-o", "name", "-f", "-", input=printed).stdout.split()
    assert sorted(applied) == sorted(f"customresourcedefinition.apiextensions.k8s.io/{d['metadata']['name']}" for d in expected)

    # `make run` / wso-dev: the CRDs through the installed package's console script, applied and Established.
    script = target / "bin" / "workspace-secrets-operator"
    assert script.is_file()
    established = dev.apply_crds(str(script), str(cluster.tools["kubectl"]), {**cluster.env(), "PYTHONPATH": str(target)})
    assert sorted(established) == sorted(applied)
