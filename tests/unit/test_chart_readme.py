"""The chart README's values table is generated from values.yaml's comments (tools/chart_readme.py) and
committed: this fails when values.yaml changed and the README was not regenerated. Fix: make chart-crds"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

CHART = Path("deploy/helm/workspace-secrets-operator")


def _generator(repo_root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_readme", repo_root / "tools" / "chart_readme.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_readme"] = module
    spec.loader.exec_module(module)
    return module


def test_the_committed_readme_table_is_current(repo_root: Path) -> None:
    generator = _generator(repo_root)
    readme = (repo_root / CHART / "README.md").read_text()
    assert generator.with_table(readme, (repo_root / CHART / "values.yaml").read_text()) == readme, \
        "the values table of the chart README is stale: run `make chart-crds`"
    assert generator.main(["--check", "--chart", str(repo_root / CHART)]) == 0


def test_every_documented_value_has_a_row_with_its_default(repo_root: Path) -> None:
    generator = _generator(repo_root)
    text = (repo_root / CHART / "values.yaml").read_text()
    rows = {row.key: row for row in generator.rows(text)}
    values = yaml.safe_load(text)
    for key in ("crds.enabled", "crds.keep", "leaderElection.enabled", "webhook.certManager.issuerRef", "proxy.noProxy",
                "trustedCABundle.configMap.key", "rbac.aggregateToDefaultRoles", "podSecurityContext", "extraVolumes"):
        assert key in rows, key
    # Every top-level value has a row (itself, or its documented entries).
    for top in values:
        assert any(k == top or k.startswith(f"{top}.") for k in rows), top
    assert rows["crds.keep"].default == "true" and rows["crds.keep"].type == "bool"
    assert rows["resources"].default == '{"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}'
    assert not any(k.startswith("resources.") for k in rows), "a value documented as a whole is one row"


def test_rows_sections_blocks_and_pipes() -> None:
    generator = _generator(Path(__file__).resolve().parents[2])
    text = ("# A section, not a value.\nsection:\n  # -- first line\n  # second | line\n  leaf: 1\n"
            "# intro line\n# -- a whole map\nwhole:\n  a: 1\n  b: [x]\n")
    assert [(r.key, r.type, r.default, r.description) for r in generator.rows(text)] == [
        ("section.leaf", "int", "1", "first line second | line"),
        ("whole", "object", '{"a": 1, "b": ["x"]}', "a whole map")]
    assert "| `section.leaf` | int | `1` | first line second \\| line |" in generator.table(text)


def test_the_markers_are_required() -> None:
    generator = _generator(Path(__file__).resolve().parents[2])
    with pytest.raises(generator.ReadmeError, match="values-table"):
        generator.with_table("# no markers\n", "# -- x\nx: 1\n")
    assert generator.with_table("a\n<!-- values-table -->\nold\n<!-- /values-table -->\nb\n", "# -- x\nx: 1\n") == (
        "a\n<!-- values-table -->\n| Key | Type | Default | Description |\n|---|---|---|---|\n| `x` | int | `1` | x |\n"
        "<!-- /values-table -->\nb\n")
