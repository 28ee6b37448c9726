"""Every file in examples/ applies cleanly, and every WorkspaceSecret in it gets a condition."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from helpers import Api

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_every_example_applies(cluster, namespace, wso_operator):
    api = Api(cluster.api_client())
    files = sorted(EXAMPLES.glob("*.yaml"))
    assert files, "examples/ is empty"
    for path in files:
        out = cluster.kubectl("apply", "-n", namespace, "-f", str(path))
        assert out.returncode == 0, out.stderr
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] == "WorkspaceSecret":
                name = doc["metadata"]["name"]
                if "existingSecretRef" in doc["spec"].get("ssh", {}):
                    # The example's own key Secret is created by the user; without it the condition says so.
                    api.wait_condition(namespace, name, status="False", reason="ExistingKeyNotFound")
                else:
                    api.wait_condition(namespace, name)
