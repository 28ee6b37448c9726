"""The Helm chart's values contract: every value is documented, and the schema rejects unknown keys at
every level (so a typo fails `helm install` instead of being silently ignored)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

CHART = Path("deploy/helm/workspace-secrets-operator")
KEY_LINE = re.compile(r"^(?P<indent> *)(?:- )?(?P<key>[A-Za-z][\w.-]*):")
#: Schema nodes passed through verbatim, validated by whoever reads them: Kubernetes objects (the API server)
#: and a provider's type-specific `config` (the operator, at start-up).
OPAQUE_OBJECTS = {"#/$defs/kubernetesObject", "#/$defs/providerConfig"}


def _values_keys_without_comment(text: str) -> list[str]:
    """Keys of values.yaml whose line is not directly preceded by a comment line."""
    undocumented: list[str] = []
    lines = text.splitlines()
    block_indent: int | None = None  # inside a default value's block (e.g. resources:), keys are data
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match["indent"])
        if block_indent is not None and indent > block_indent:
            continue
        block_indent = None
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#"):
            undocumented.append(f"line {number + 1}: {match['key']}")
        # A documented map/list default ("resources:", "objectSelector:") carries example data below it.
        if line.rstrip().endswith(":") and _is_data_block(lines, number):
            block_indent = indent
    return undocumented


def _is_data_block(lines: list[str], number: int) -> bool:
    """True if the comment above the key documents the whole block as one value (marked with `-- `)
    and the block's children carry no comments of their own."""
    comment = lines[number - 1].strip()
    following = lines[number + 1].strip() if number + 1 < len(lines) else ""
    return comment.startswith("# --") and not following.startswith("#")


def test_every_value_is_documented(repo_root: Path) -> None:
    text = (repo_root / CHART / "values.yaml").read_text()
    assert _values_keys_without_comment(text) == []


def test_the_documentation_check_notices_an_undocumented_key() -> None:
    text = "# -- documented\nfoo: 1\nbar:\n  # -- documented\n  baz: 2\n  qux: 3\n"
    assert _values_keys_without_comment(text) == ["line 3: bar", "line 6: qux"]


def _objects_without_closed_properties(node: Any, path: str, found: list[str]) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and path not in OPAQUE_OBJECTS and "additionalProperties" not in node:
            found.append(path)
        if node.get("additionalProperties") is True:
            found.append(path)
        for key, child in node.items():
            _objects_without_closed_properties(child, f"{path}/{key}", found)
    elif isinstance(node, list):
        for index, child in enumerate(node):
            _objects_without_closed_properties(child, f"{path}/{index}", found)


def test_schema_closes_every_object(repo_root: Path) -> None:
    schema = json.loads((repo_root / CHART / "values.schema.json").read_text())
    found: list[str] = []
    _objects_without_closed_properties(schema, "#", found)
    assert found == [], "objects that would accept a misspelt key"


def test_schema_and_values_name_the_same_keys(repo_root: Path) -> None:
    """Every default in values.yaml has a schema entry, and every schema property is a documented value."""
    values = yaml.safe_load((repo_root / CHART / "values.yaml").read_text())
    schema = json.loads((repo_root / CHART / "values.schema.json").read_text())

    def walk(value: Any, node: dict[str, Any], path: str, problems: list[str]) -> None:
        properties = node.get("properties")
        if properties is None or not isinstance(value, dict) or value == {}:
            return  # a leaf, a free-form map, a Kubernetes object, or an optional object empty by default
        for key in sorted(set(value) | set(properties)):
            if key not in properties:
                problems.append(f"{path}.{key}: in values.yaml, not in the schema")
            elif key not in value:
                problems.append(f"{path}.{key}: in the schema, no default in values.yaml")
            else:
                walk(value[key], properties[key], f"{path}.{key}", problems)

    problems: list[str] = []
    walk(values, schema, "", problems)
    assert problems == []


def test_chart_app_version_is_the_operator_version(repo_root: Path) -> None:
    import tomllib

    from workspace_secrets import __version__

    chart = yaml.safe_load((repo_root / CHART / "Chart.yaml").read_text())
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"] == __version__


def test_chart_runs_the_image_as_the_dockerfile_user(repo_root: Path) -> None:
    """The chart's runAsUser/runAsGroup are the Dockerfile's numeric non-root USER (a named user would make
    the kubelet refuse runAsNonRoot), and the image's entry point is the operator's `run` command."""
    dockerfile = (repo_root / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\d+):(\d+)\s*$", dockerfile, re.MULTILINE)
    assert len(users) == 1, "exactly one numeric USER uid:gid line"
    uid, gid = map(int, users[0])
    assert uid != 0
    values = yaml.safe_load((repo_root / CHART / "values.yaml").read_text())
    assert (values["podSecurityContext"]["runAsUser"], values["podSecurityContext"]["runAsGroup"]) == (uid, gid)
    assert re.search(r'^ENTRYPOINT \["workspace-secrets-operator", "run"\]$', dockerfile, re.MULTILINE)
    # The image recipe (deploy/image/operator.toml, which the Dockerfile is generated from and the daemonless
    # build reads) says the same user, and exposes the port the chart's probes use.
    import tomllib

    recipe = tomllib.loads((repo_root / "deploy" / "image" / "operator.toml").read_text())
    assert recipe["config"]["user"] == f"{uid}:{gid}"
    assert values["operator"]["healthPort"] in recipe["config"]["exposed_ports"]
