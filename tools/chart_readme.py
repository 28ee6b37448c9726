"""Generate the values table of the Helm chart's README from values.yaml (`make chart-crds`).

Every value the chart documents carries a comment starting with `# -- ` directly above its key (the helm-docs
convention; tests/unit/test_chart_values.py makes sure no key lacks one). This script turns those comments,
the keys' dotted paths and their defaults into a Markdown table and writes it into README.md between the
markers `<!-- values-table -->` and `<!-- /values-table -->`, leaving the hand-written text around them alone.
A value documented as a whole (a `# --` comment above a map or list whose entries carry no comment of their
own, e.g. `resources`) is one row, with the whole default.

    python tools/chart_readme.py           # rewrite the table in README.md
    python tools/chart_readme.py --check   # exit 1 if README.md's table is not what values.yaml gives
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "deploy" / "helm" / "workspace-secrets-operator"
BEGIN, END = "<!-- values-table -->", "<!-- /values-table -->"
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):(?P<rest>.*)$")


@dataclass(frozen=True)
class Row:
    key: str
    type: str
    default: str
    description: str


class ReadmeError(ValueError):
    """README.md or values.yaml is not in the shape the generator needs (it says what)."""


def _comment_block(lines: list[str], number: int) -> list[str]:
    """The comment lines directly above line `number`, top to bottom, without their '#'."""
    block: list[str] = []
    index = number - 1
    while index >= 0 and lines[index].lstrip().startswith("#"):
        block.insert(0, lines[index].lstrip()[1:])
        index -= 1
    return block


def _description(block: list[str]) -> str | None:
    """The text from the `-- ` marker on, as one line (None: the key is a section, not a documented value)."""
    for start, line in enumerate(block):
        if line.startswith(" -- "):
            text = " ".join([line[4:], *block[start + 1:]])
            return re.sub(r"\s+", " ", text).strip()
    return None


def _lookup(values: Any, path: list[str]) -> Any:
    for key in path:
        values = values[key]
    return values


def _type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "bool or null" if value is None else type(value).__name__


def rows(values_text: str) -> list[Row]:
    """One row per documented value, in the order of values.yaml."""
    values = yaml.safe_load(values_text)
    lines = values_text.splitlines()
    path: list[tuple[int, str]] = []  # (indent, key) of the enclosing maps
    skip_deeper_than: int | None = None
    result: list[Row] = []
    for number, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        if skip_deeper_than is not None:
            if indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        while path and path[-1][0] >= indent:
            path.pop()
        keys = [k for _, k in path] + [match["key"]]
        description = _description(_comment_block(lines, number))
        opens_block = not match["rest"].strip()
        if description is not None:
            default = _lookup(values, keys)
            result.append(Row(".".join(keys), _type(default), json.dumps(default, ensure_ascii=False), description))
            following = lines[number + 1].strip() if number + 1 < len(lines) else ""
            if opens_block and not following.startswith("#"):
                skip_deeper_than = indent  # a documented whole: its entries are the default, not values
                continue
        if opens_block:
            path.append((indent, match["key"]))
    return result


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(values_text: str) -> str:
    out = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for row in rows(values_text):
        out.append(f"| `{row.key}` | {row.type} | `{_cell(row.default)}` | {_cell(row.description)} |")
    return "\n".join(out) + "\n"


def with_table(readme: str, values_text: str) -> str:
    """README.md's text with the table between the markers replaced."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise ReadmeError(f"README.md needs exactly one {BEGIN} ... {END} section")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table(values_text)}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check README.md (exit 1 if stale), write nothing")
    parser.add_argument("--chart", type=Path, default=CHART, help="chart directory (default: %(default)s)")
    args = parser.parse_args(argv)
    readme_path = args.chart / "README.md"
    readme = readme_path.read_text()
    wanted = with_table(readme, (args.chart / "values.yaml").read_text())
    if args.check:
        if wanted != readme:
            print(f"{readme_path}: the values table is stale; run `make chart-crds`", file=sys.stderr)
            return 1
        return 0
    if wanted != readme:
        readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
