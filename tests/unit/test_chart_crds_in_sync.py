"""The Helm chart ships copies of the CRDs; the single source of truth is the top-level crds/.

Helm installs only what is in the chart's own crds/ directory, so the chart carries byte-for-byte copies
of every file in crds/. This test fails if the two directories drift (a file added, removed or edited on
one side only). Fix a failure with: make chart-crds
"""

from __future__ import annotations

import shutil
from pathlib import Path

CHART_CRDS = Path("deploy/helm/workspace-secrets-operator/crds")


def drift(source: Path, shipped: Path) -> str | None:
    """None if `shipped` holds exactly the files of `source`, byte for byte; else what differs."""
    def files(directory: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()} if directory.is_dir() else {}

    src, dst = files(source), files(shipped)
    missing = sorted(set(src) - set(dst))
    extra = sorted(set(dst) - set(src))
    differing = sorted(name for name in set(src) & set(dst) if src[name] != dst[name])
    if missing or extra or differing:
        return f"missing in the chart: {missing}; not in crds/: {extra}; different content: {differing}"
    return None


def test_chart_ships_exactly_the_crds_of_the_repository(repo_root: Path) -> None:
    assert any((repo_root / "crds").glob("*.yaml")), "crds/ is empty"
    problem = drift(repo_root / "crds", repo_root / CHART_CRDS)
    assert problem is None, f"{CHART_CRDS} is out of sync with crds/ ({problem}). Run `make chart-crds`."


def test_drift_is_detected_for_an_edit_an_addition_and_a_removal(repo_root: Path, tmp_path: Path) -> None:
    source, shipped = tmp_path / "crds", tmp_path / "chart-crds"
    shutil.copytree(repo_root / "crds", source)
    shutil.copytree(repo_root / "crds", shipped)
    assert drift(source, shipped) is None
    victim = next(iter(sorted(shipped.glob("*.yaml"))))
    victim.write_bytes(victim.read_bytes() + b" ")  # one trailing byte
    assert victim.name in (drift(source, shipped) or "")
    shutil.copy(source / victim.name, victim)
    (source / "usertokens.yaml").write_text("kind: CustomResourceDefinition\n")
    assert "usertokens.yaml" in (drift(source, shipped) or "")
    (source / "usertokens.yaml").unlink()
    victim.unlink()
    assert victim.name in (drift(source, shipped) or "")
