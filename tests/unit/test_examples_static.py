"""The examples a platform team copies (examples/providers/, examples/helm/, examples/coder/) are what the operator
and the chart accept -- checked with their own code, no cluster involved.

- examples/providers/: one file per provider type of the operator's registry. Each is read by the operator's own
  providers-config loader (credentials/setup.py `load_providers`, with the admin Secret built from exactly the
  keys the file's `kubectl create secret` comment names), builds without error, has an `allow` rule, and accepts
  the WorkspaceSecret `credentials` entry its comment shows. Each is also a valid Helm values file: the chart
  renders it into the providers ConfigMap unchanged.
- examples/helm/values-production.yaml: linted (`helm lint --strict`, like every example) and rendered by the
  pinned helm (which validates it against values.schema.json; so does this test, with jsonschema); the rendered
  Deployment runs what the file promises (replicas, leader election, spread, webhook with cert-manager, metrics,
  CA bundle, proxy, connect sign-in), with arguments the operator's own parser accepts.
- examples/coder/: the Terraform snippet is well-formed HCL (`terraform fmt -check`, offline, when terraform is
  installed), labels the workspace pods and anchors its WorkspaceSecret the way the operator expects, and uses
  only fields of the WorkspaceSecret CRD.
- docs/operators/cli.md names every flag of `run` with its WSO_ variable and its default.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fakes.kube import FakeKube

from workspace_secrets.api import constants as c
from workspace_secrets.credentials.providers import registry
from workspace_secrets.credentials.setup import load_providers
from chart_support import CHART, helm, render  # noqa: F401 (helm: fixture)

from devcluster.controlplane import REPO_ROOT, pinned_versions

EXAMPLES = REPO_ROOT / "examples"
PROVIDER_EXAMPLES = sorted((EXAMPLES / "providers").glob("*.yaml"))
PRODUCTION_VALUES = EXAMPLES / "helm" / "values-production.yaml"
CODER_TEMPLATE = EXAMPLES / "coder" / "main.tf"
OPERATOR_NAMESPACE = "workspace-secrets-system"
#: `--from-literal=KEY=...` / `--from-file=KEY=...` in a `kubectl create secret generic` comment.
SECRET_KEY = re.compile(r"--from-(?:literal|file)=([A-Za-z0-9_.-]+)=")


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _comment_block(path: Path, heading: str) -> list[str]:
    """The indented comment lines ("#   ...") right after the comment line containing `heading`."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading in line)
    block: list[str] = []
    for line in lines[start + 1:]:
        if not line.startswith("#   "):
            break
        block.append(line[4:])
    return block


def _gcp_admin_key() -> bytes:
    """A service-account JSON key of the shape GCP issues (its private key is a fresh RSA key)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps({
        "type": "service_account", "project_id": "my-workspaces-project", "private_key_id": "0" * 40,
        "private_key": pem, "client_email": "wso-admin@my-workspaces-project.iam.gserviceaccount.com",
        "client_id": "1" * 21, "token_uri": "https://oauth2.googleapis.com/token",
    }).encode()


#: A stand-in value per admin key whose format the provider checks at start-up; any other key gets a dummy.
ADMIN_VALUES = {"TWILIO_ACCOUNT_SID": lambda: b"AC" + b"0123456789abcdef" * 2, "key.json": _gcp_admin_key}


def _admin_secret(path: Path) -> dict[str, Any] | None:
    """The Secret the example's `kubectl create secret generic` comment creates, with stand-in values."""
    lines = path.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("#") and "create secret generic" in line]
    if not starts:
        return None
    command = [lines[starts[0]]]
    while command[-1].rstrip().endswith("\\"):
        command.append(lines[starts[0] + len(command)])
    text = " ".join(command)
    keys = SECRET_KEY.findall(text)
    assert keys, f"{path.name}: the create-secret comment names no key"
    name = re.search(r"create secret generic ([a-z0-9-]+)", text)[1]  # type: ignore[index]
    data = {k: base64.b64encode(ADMIN_VALUES.get(k, lambda: b"stand-in-value")()).decode() for k in keys}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque", "data": data}


def test_every_provider_type_has_one_example_named_after_it() -> None:
    types = {path.stem: [item["type"] for item in _load(path)["providers"]] for path in PROVIDER_EXAMPLES}
    assert set(types) == set(registry.PROVIDER_TYPES)
    assert all(found == [stem] for stem, found in types.items()), types


@pytest.mark.parametrize("path", PROVIDER_EXAMPLES, ids=lambda p: p.stem)
def test_provider_example_is_read_by_the_operator(path: Path) -> None:
    document = _load(path)
    kube = FakeKube()
    secret = _admin_secret(path)
    for item in document["providers"]:
        if item.get("credentialsSecret"):
            assert secret is not None and secret["metadata"]["name"] == item["credentialsSecret"], (
                f"{path.name}: the comment must show how to create the Secret {item['credentialsSecret']!r}")
    if secret is not None:
        kube.put(f"/api/v1/namespaces/{OPERATOR_NAMESPACE}/secrets", secret)

    providers, broken = asyncio.run(load_providers(str(path), kube, OPERATOR_NAMESPACE))

    assert broken == {}
    assert set(providers) == {item["name"] for item in document["providers"]}
    for provider in providers.values():
        assert provider.access is not None, "an example without `allow` would serve nobody"
    # The WorkspaceSecret entry shown in the comment is one the provider accepts.
    usage = yaml.safe_load("\n".join(_comment_block(path, "A WorkspaceSecret uses it")))
    for entry in usage["credentials"]:
        assert entry["provider"] in providers
        assert providers[entry["provider"]].validate(entry.get("parameters") or {}) is None


@pytest.mark.parametrize("path", PROVIDER_EXAMPLES, ids=lambda p: p.stem)
def test_provider_example_is_chart_values(helm: Path, path: Path) -> None:
    values = _load(path)
    docs = render(helm, values)
    config_maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-providers")]
    assert len(config_maps) == 1
    (content,) = config_maps[0]["data"].values()
    assert yaml.safe_load(content) == {"providers": values["providers"]}


# --- examples/helm/values-production.yaml ---------------------------------------------------------------------

def _schema_errors(values: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((CHART / "values.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema) if "$schema" not in schema else \
        jsonschema.validators.validator_for(schema)(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(values))


def _run_args(args: list[str]) -> Any:
    """The Deployment's arguments parsed by the operator's own `run` parser (exact flag names)."""
    import argparse

    from workspace_secrets import cli

    parser = cli._parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = subcommands.choices["run"]
    run.allow_abbrev = False
    known = set(run._option_string_actions)
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    assert [f for f in flags if f not in known] == [], "the chart passes flags the operator does not have"
    return run.parse_args(args[1:] if args and args[0] == "run" else args)


def test_production_values_are_valid_against_the_schema() -> None:
    assert _schema_errors(_load(PRODUCTION_VALUES)) == []


@pytest.mark.parametrize("path", [PRODUCTION_VALUES, *PROVIDER_EXAMPLES], ids=lambda p: p.stem)
def test_example_values_pass_helm_lint_strict(helm: Path, path: Path) -> None:
    result = subprocess.run([str(helm), "lint", "--strict", str(CHART), "-f", str(path),
                             "--kube-version", pinned_versions()["K8S_VERSION"]],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_values_render_what_the_file_promises(helm: Path) -> None:
    docs = render(helm, _load(PRODUCTION_VALUES))
    kinds = {d["kind"] for d in docs}
    for kind in ("Deployment", "ServiceMonitor", "MutatingWebhookConfiguration", "Certificate",
                 "NetworkPolicy", "Ingress", "ValidatingAdmissionPolicy", "OAuthApplication"):
        assert kind in kinds, f"no {kind} rendered"
    # Only the leader is Ready: a PodDisruptionBudget would block draining its node, so none is rendered.
    assert "PodDisruptionBudget" not in kinds
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["revisionHistoryLimit"] == 5
    assert len(spec["topologySpreadConstraints"]) == 2
    container = spec["containers"][0]
    args = container.get("args") or container.get("command", [])[1:]
    parsed = _run_args([a for a in args if a != "workspace-secrets-operator"])
    assert parsed.leader_elect is True
    assert parsed.webhook is True
    assert parsed.providers_config
    assert parsed.connect_user_header == "X-Auth-Request-User"
    # The CA bundle is mounted where --ca-bundle-file points, and the proxy reaches the process as env.
    ca_file = parsed.ca_bundle_file
    assert any(ca_file.startswith(m["mountPath"].rstrip("/") + "/") for m in container["volumeMounts"]), ca_file
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("HTTPS_PROXY") == "http://proxy.corp.example.com:3128"
    assert ".svc" in (env.get("NO_PROXY") or "")
    # cert-manager owns the webhook's CA: the configuration carries the injection annotation, no caBundle.
    webhook_config = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
    assert "cert-manager.io/inject-ca-from" in webhook_config["metadata"].get("annotations", {})
    assert all("caBundle" not in w["clientConfig"] for w in webhook_config["webhooks"])


# --- examples/coder/main.tf -----------------------------------------------------------------------------------

def test_coder_snippet_is_well_formed_terraform(tmp_path: Path) -> None:
    terraform = shutil.which("terraform") or shutil.which("tofu")
    if terraform is None:
        pytest.skip("terraform (or tofu) is not installed")
    result = subprocess.run([terraform, "fmt", "-check", "-diff", "-no-color", str(CODER_TEMPLATE)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TF_CLI_CONFIG_FILE": "/dev/null"})
    assert result.returncode == 0, result.stdout + result.stderr


def _crd_property_names(node: Any, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        for name, child in (node.get("properties") or {}).items():
            found.add(name)
            _crd_property_names(child, found)
        _crd_property_names(node.get("items"), found)
    return found


def test_coder_snippet_speaks_the_operator_s_api() -> None:
    text = CODER_TEMPLATE.read_text()
    assert f'"{c.LABEL_USER}"' in text and f'"{c.LABEL_WORKSPACE_SECRET}"' in text
    assert f'apiVersion = "{c.API_VERSION}"' in text and 'kind       = "WorkspaceSecret"' in text
    crd = next(d for d in yaml.safe_load_all((REPO_ROOT / "crds" / "workspacesecrets.yaml").read_text())
               if d and d["kind"] == "CustomResourceDefinition")
    version = next(v for v in crd["spec"]["versions"] if v["name"] == c.VERSION)
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    known = _crd_property_names(spec_schema, set())
    manifest = text[text.index("spec = {", text.index('resource "kubernetes_manifest"')):text.index('resource "kubernetes_deployment"')]
    # A credential's `parameters` are the provider's (checked below), not the CRD's.
    parameters = re.findall(r"parameters\s*=\s*(\{[^}]*\})", manifest)
    fields = re.sub(r"parameters\s*=\s*\{[^}]*\}", "parameters = {}", manifest)
    used = set(re.findall(r"^\s*([A-Za-z]+)\s*=", fields, re.MULTILINE)) | set(re.findall(r"[{,]\s*([A-Za-z]+)\s*=", fields))
    assert used - known - {"spec"} == set(), "fields the WorkspaceSecret CRD does not have"
    # The snippet's credential is one the kubernetes-token example provider accepts.
    (item,) = _load(EXAMPLES / "providers" / "kubernetes-token.yaml")["providers"]
    provider = registry.build(item["name"], item["type"], item["config"], {}, kube=None)
    assert len(parameters) == 1 and f'provider   = "{item["name"]}"' in manifest
    given = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', parameters[0]))
    assert provider.validate(given) is None
    kinds = spec_schema["properties"]["workspaceRef"]["properties"]["kind"]["enum"]
    assert re.search(r'kind\s+=\s+"PersistentVolumeClaim"', manifest) and "PersistentVolumeClaim" in kinds


# --- docs/operators/cli.md --------------------------------------------------------------------------------------

def _run_actions() -> list[Any]:
    import argparse

    from workspace_secrets import cli

    subcommands = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in subcommands.choices["run"]._actions if not isinstance(a, argparse._HelpAction)]


def test_the_cli_page_names_every_flag_its_variable_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/operators/cli.md lists every flag of `run` (the hidden deprecated ones in their own section) with its
    WSO_ variable, and each visible flag's default as the parser has it."""
    import argparse

    from workspace_secrets import cli

    for name in [n for n in os.environ if n.startswith("WSO_") or n == "POD_NAMESPACE"]:
        monkeypatch.delenv(name)
    text = (REPO_ROOT / "docs" / "operators" / "cli.md").read_text()
    missing: list[str] = []
    for action in _run_actions():
        for flag in action.option_strings:
            if f"`{flag}`" not in text and f"`{flag} " not in text:
                missing.append(flag)
        if action.help is argparse.SUPPRESS:
            continue
        variable = cli.env_name(action)
        if variable and f"`{variable}`" not in text:
            missing.append(variable)
        default = action.default
        if isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        elif isinstance(default, (int, float)):
            shown = f"`{default:g}`"
        elif isinstance(default, str) and default:
            shown = f"`{default}`"
        else:
            continue
        row = next((line for line in text.splitlines() if line.startswith("|") and f"`{action.option_strings[-1]}" in line), "")
        if shown not in row:
            missing.append(f"{action.option_strings[-1]} default {shown}")
    assert missing == []
