"""The Helm chart's CRD templates are generated from the top-level crds/, the single source of truth.

The chart renders the CRDs as templates (templates/crds/, behind crds.enabled) so that `helm upgrade` applies
schema changes; tools/chart_crds.py (`make chart-crds`) writes them from crds/. This test fails if the
committed templates drift from what the generator makes of crds/ (a file added, removed or edited on one side
only), and checks the generator itself: the rendered CRD is the source CRD plus the chart's labels and the keep
annotation, nothing else. Fix a failure with: make chart-crds
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

CHART = Path("deploy/helm/workspace-secrets-operator")


def _generator(repo_root: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_crds", repo_root / "tools" / "chart_crds.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_crds"] = module
    spec.loader.exec_module(module)
    return module


def test_chart_templates_are_generated_from_the_repository_crds(repo_root: Path) -> None:
    generator = _generator(repo_root)
    assert any((repo_root / "crds").glob("*.yaml")), "crds/ is empty"
    problems = generator.drift(repo_root / "crds", repo_root / CHART / "templates" / "crds")
    assert problems == [], f"templates/crds is out of sync with crds/ ({problems}). Run `make chart-crds`."


def test_the_chart_has_no_crds_directory(repo_root: Path) -> None:
    """Helm installs a chart's crds/ once and never upgrades it; the CRDs are templates now."""
    assert not (repo_root / CHART / "crds").exists()


def _render(template: str, *, keep: bool, enabled: bool = True) -> list[dict]:
    """A minimal stand-in for Helm on the generated text: the only actions the generator writes, with Go
    templates' `{{-` (trims every whitespace before it) and `nindent` (a newline, then the indented text)."""
    text = re.sub(r"\s*\{\{-", "{{-", template)
    assert text.startswith("{{- if .Values.crds.enabled }}") and text.endswith("{{- end }}\n")
    if not enabled:
        return []
    text = text.removeprefix("{{- if .Values.crds.enabled }}").removesuffix("{{- end }}\n")
    text = text.replace('{{- include "wso.crdLabels" . | nindent 4 }}',
                        "\n    helm.sh/chart: c\n    app.kubernetes.io/instance: r\n    app.kubernetes.io/managed-by: Helm")
    text = re.sub(r"\{\{- if \.Values\.crds\.keep \}\}(.*?)\{\{- end \}\}", lambda m: m[1] if keep else "", text, flags=re.DOTALL)
    assert "{{" not in text.replace('{{ "{{" }}', ""), "an action the generator did not write"
    return [d for d in yaml.safe_load_all(text.replace('{{ "{{" }}', "{{")) if d]


def _without_chart_metadata(doc: dict) -> dict:
    meta = dict(doc["metadata"])
    labels = {k: v for k, v in meta.get("labels", {}).items()
              if k not in {"helm.sh/chart", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by"}}
    meta.pop("annotations", None)
    meta.pop("labels", None)
    if labels:
        meta["labels"] = labels
    return {**doc, "metadata": meta}


@pytest.mark.parametrize("keep", [True, False])
def test_a_generated_template_is_the_source_crd_plus_labels_and_keep(repo_root: Path, keep: bool) -> None:
    generator = _generator(repo_root)
    for name, template in generator.templates(repo_root / "crds").items():
        source = [d for d in yaml.safe_load_all((repo_root / "crds" / name).read_text()) if d]
        rendered = _render(template, keep=keep)
        assert [_without_chart_metadata(d) for d in rendered] == source, name
        for doc in rendered:
            assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
            assert doc["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == ("keep" if keep else None)
        assert _render(template, keep=keep, enabled=False) == []


def test_drift_is_detected_for_an_edit_an_addition_and_a_removal(repo_root: Path, tmp_path: Path) -> None:
    generator = _generator(repo_root)
    source, target = tmp_path / "crds", tmp_path / "templates"
    shutil.copytree(repo_root / "crds", source)
    generator.write(source, target)
    assert generator.drift(source, target) == []
    victim = next(p for p in sorted(source.glob("*.yaml")) if p.name not in generator.SHARED)
    victim.write_text(victim.read_text() + "# one more line\n")
    assert generator.drift(source, target) == [f"out of date: templates/crds/{victim.name}"]
    generator.write(source, target)
    (source / "extra.yaml").write_text((source / victim.name).read_text())
    assert generator.drift(source, target) == ["missing: templates/crds/extra.yaml"]
    generator.write(source, target)
    (source / "extra.yaml").unlink()
    assert generator.drift(source, target) == ["not generated from crds/ (stale): templates/crds/extra.yaml"]
    generator.write(source, target)
    assert not (target / "extra.yaml").exists() and generator.drift(source, target) == []


def test_kopfs_shared_peering_crds_are_never_chart_templates(repo_root: Path, tmp_path: Path) -> None:
    """clusterkopfpeerings/kopfpeerings.kopf.dev belong to every kopf operator of the cluster: a release owning them
    would break another operator's install (ownership metadata) and, with crds.keep=false, delete its peering
    objects. They stay in crds/ (the CLI's `crds`, the deprecated --peering) but the chart never renders them."""
    generator = _generator(repo_root)
    assert generator.SHARED == {"kopf-peering.yaml"} and (repo_root / "crds" / "kopf-peering.yaml").is_file()
    assert "kopf-peering.yaml" not in generator.templates(repo_root / "crds")
    rendered = repo_root / CHART / "templates"
    assert not any("kopf.dev" in p.read_text() for p in (rendered / "crds").glob("*.yaml"))
    assert "kind: CustomResourceDefinition" not in "".join(p.read_text() for p in rendered.glob("*.yaml"))
    # Editing the shared file is no drift; a stale template of it is removed.
    source, target = tmp_path / "crds", tmp_path / "templates"
    shutil.copytree(repo_root / "crds", source)
    generator.write(source, target)
    (source / "kopf-peering.yaml").write_text((source / "kopf-peering.yaml").read_text() + "# edited\n")
    assert generator.drift(source, target) == []
    (target / "kopf-peering.yaml").write_text("stale\n")
    assert generator.drift(source, target) == ["not generated from crds/ (stale): templates/crds/kopf-peering.yaml"]
    generator.write(source, target)
    assert not (target / "kopf-peering.yaml").exists()


def test_template_braces_in_a_crd_are_printed_literally(repo_root: Path) -> None:
    generator = _generator(repo_root)
    crd = ("apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: x.example.com\n"
           "spec:\n  description: 'use {{ .name }}'\n")
    template = generator.template_for("x.yaml", crd)
    assert '{{ "{{" }} .name }}' in template
    assert _render(template, keep=True)[0]["spec"]["description"] == "use {{ .name }}"


def test_a_crd_with_its_own_annotations_is_refused(repo_root: Path) -> None:
    generator = _generator(repo_root)
    crd = "kind: CustomResourceDefinition\nmetadata:\n  name: x\n  annotations:\n    a: b\nspec: {}\n"
    with pytest.raises(generator.GenerationError, match="annotations"):
        generator.template_for("x.yaml", crd)
