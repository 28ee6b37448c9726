"""The Helm chart drives the real operator: its interface is `workspace-secrets-operator run`'s command line.

- Every `--flag` the chart's Deployment passes, for each documented variant, is an option of the operator's
  own argparse parser (exact name, no abbreviation), and the whole argument list parses; the parsed values
  point where the chart mounts things (certificate directory, providers file).
- The connect page's flags (port, public URL, the auth proxy's user header and trusted proxies, the signing
  key file) parse to what the values say, and the key file is where the chart mounts the Secret.
- The MutatingWebhookConfiguration the chart renders equals, field for field, the entry the operator
  writes (domain/webhook_configuration.py), except caBundle, which only the operator sets.
- The providers ConfigMap is the `providers` value in the file format the operator reads.

Renders with the pinned helm (`tools/build-tools.sh`, built by `make test`/`make unit` before the tests run):
`helm template` is a pure renderer, no cluster is involved.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from workspace_secrets import cli
from workspace_secrets.api import constants as c
from workspace_secrets.runtime.webhook import configuration as desired
from workspace_secrets.credentials.providers import registry
from chart_support import CHART, NAMESPACE, RELEASE, helm, render  # noqa: F401 (helm: fixture)
from devcluster.controlplane import pinned_versions


FULLNAME = f"{RELEASE}-workspace-secrets-operator"
TOKEN_PROVIDER = {"name": "cluster-tokens", "type": "kubernetes-token", "allow": {"namespaces": ["ci-*"]},
                  "config": {"allowedServiceAccounts": ["ci-*"], "audiences": ["https://ci.example.com"],
                             "maxExpirationSeconds": 7200}}
AWS_PROVIDER = {"name": "aws-dev", "type": "aws-iam", "credentialsSecret": "aws-admin",
                "allow": {"namespaces": ["workspaces"], "users": ["alice", "bob"]},
                "config": {"region": "eu-west-1", "policyArns": ["arn:aws:iam::123456789012:policy/workspace-dev"]}}

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["team-b", "team-a"]},
    "peering-ha": {"replicaCount": 2, "peering": {"enabled": True}},
    "tuned": {"operator": {"verbose": True, "logFormat": "plain", "apiConcurrency": 8, "workers": 2,
                           "resyncInterval": 120, "extraArgs": ["--sweep-interval=900"]}},
    "webhook": {"webhook": {"enabled": True}},
    "webhook-namespaced": {"webhook": {"enabled": True}, "watchNamespaces": ["team-b", "team-a"]},
    "webhook-ha-provided-cert": {"replicaCount": 2, "peering": {"enabled": True},
                                 "webhook": {"enabled": True, "certSecret": "webhook-tls"}},
    "providers": {"providers": [TOKEN_PROVIDER, AWS_PROVIDER]},
    "metrics": {"metrics": {"enabled": True, "port": 9191}},
    "leader-election-ha": {"replicaCount": 3, "leaderElection": {"leaseDuration": 30, "renewDeadline": 20, "retryPeriod": 4}},
    "webhook-cert-manager": {"replicaCount": 2, "webhook": {"enabled": True, "certManager": {"enabled": True}}},
    "trusted-ca-and-proxy": {"trustedCABundle": {"configMap": {"name": "corporate-ca"}},
                             "proxy": {"httpsProxy": "http://proxy.example.com:3128", "noProxy": ".example.com"}},
    "connect": {"connect": {"enabled": True, "port": 8001, "publicURL": "https://wso.example.com"}},
    "connect-signed-in": {"connect": {
        "enabled": True, "publicURL": "https://wso.example.com",
        "auth": {"userHeader": "X-Auth-Request-User", "trustedProxies": ["10.0.0.0/8", "fd00::/8"]},
        "signingKey": {"secretName": "wso-connect-signing-key", "key": "hmac"}}},
    "everything": {"webhook": {"enabled": True}, "providers": [TOKEN_PROVIDER], "metrics": {"enabled": True},
                   "connect": {"enabled": True, "publicURL": "https://wso.example.com",
                               "auth": {"userHeader": "X-Forwarded-User", "trustedProxies": ["10.1.0.0/16"]},
                               "signingKey": {"secretName": "signing"}},
                   "watchNamespaces": ["team-a"]},
}


def _run_parser() -> argparse.ArgumentParser:
    subcommands = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subcommands.choices["run"]


KNOWN_FLAGS = frozenset(_run_parser()._option_string_actions)


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {[d['metadata']['name'] for d in docs if d['kind'] == kind]}"
    return found[0]


def operator_cluster_role(docs: list[dict]) -> dict:
    """The operator's ClusterRole (cluster-wide mode) -- not the workspace users' role the chart also ships."""
    return named(docs, "ClusterRole", FULLNAME)


def pod_spec(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def parse_run(args: list[str]) -> argparse.Namespace:
    """`workspace-secrets-operator run ARGS` as the operator parses it; argparse's complaint on failure."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return cli._parser().parse_args(["run", *args])
    except SystemExit:
        pytest.fail(f"the operator refuses the chart's arguments {args}: {stderr.getvalue().strip()}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_flag_the_chart_passes_is_an_operator_flag(helm: Path, variant: str) -> None:
    args = pod_spec(render(helm, VARIANTS[variant]))["containers"][0]["args"]
    assert all(a.startswith("--") for a in args), "one --flag=value per item, so every flag is checked"
    unknown = sorted({flag_name(a) for a in args} - KNOWN_FLAGS)
    assert unknown == [], f"flags the operator does not have (argparse would exit): {unknown}"
    parse_run(args)


@pytest.mark.parametrize("variant", ["metrics", "connect", "connect-signed-in", "everything"])
def test_metrics_and_connect_flags_are_what_the_values_say(helm: Path, variant: str) -> None:
    values = VARIANTS[variant]
    spec = pod_spec(render(helm, values))
    parsed = parse_run(spec["containers"][0]["args"])
    if values.get("metrics"):
        assert parsed.metrics_bind_address == f":{values['metrics'].get('port', 9090)}"
    connect = values.get("connect")
    if not connect:
        return
    assert parsed.connect_port == connect.get("port", 8000)
    assert parsed.connect_base_url == connect["publicURL"]
    config = cli._connect_config(parsed)
    auth = connect.get("auth", {})
    assert config.user_header == (auth.get("userHeader") or None)
    assert config.trusted_proxies == tuple(auth.get("trustedProxies", []))
    signing = connect.get("signingKey")
    if signing:
        mount = _mount(spec, "connect-signing-key")
        assert mount["readOnly"] is True
        directory, _, file_name = config.signing_key_file.rpartition("/")
        assert directory == mount["mountPath"]
        assert _volume(spec, "connect-signing-key")["secret"] == {
            "secretName": signing["secretName"], "items": [{"key": signing.get("key", "signing-key"), "path": file_name}],
            "defaultMode": 0o440}
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"], "the key is group-readable"
    else:
        assert config.signing_key_file is None


def test_connect_flags_are_off_by_default(helm: Path) -> None:
    default = pod_spec(render(helm, {}))["containers"][0]["args"]
    assert not [a for a in default if a.startswith("--connect")]
    assert parse_run(default).metrics_bind_address == "0", "metrics.enabled=false: no metrics listener"
    # Sign-in without the page: nothing is rendered either.
    args = pod_spec(render(helm, {"connect": {"auth": {"userHeader": "X-User", "trustedProxies": ["10.0.0.0/8"]}}}))
    assert not [a for a in args["containers"][0]["args"] if a.startswith("--connect")]


def _mount(spec: dict, volume: str) -> dict:
    mounts = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume]
    assert len(mounts) == 1, f"one mount of volume {volume}"
    return mounts[0]


def _volume(spec: dict, name: str) -> dict:
    return next(v for v in spec["volumes"] if v["name"] == name)


@pytest.mark.parametrize("variant", ["webhook", "webhook-namespaced", "webhook-ha-provided-cert"])
def test_webhook_flags_point_at_what_the_chart_creates(helm: Path, variant: str) -> None:
    docs = render(helm, VARIANTS[variant])
    spec = pod_spec(docs)
    parsed = parse_run(spec["containers"][0]["args"])
    webhook = cli._webhook_config(parsed)
    service = one(docs, "Service")
    configuration = one(docs, "MutatingWebhookConfiguration")
    assert webhook.enabled
    assert webhook.service == (NAMESPACE, service["metadata"]["name"]) and webhook.service_port == 443
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    assert {"name": "webhook", "containerPort": webhook.port, "protocol": "TCP"} in spec["containers"][0]["ports"]
    assert webhook.listen_address == "0.0.0.0"
    assert webhook.configuration_name == configuration["metadata"]["name"] == f"{FULLNAME}-webhook"
    assert webhook.cert_dir == _mount(spec, "webhook-certs")["mountPath"]
    if VARIANTS[variant]["webhook"].get("certSecret"):
        assert _volume(spec, "webhook-certs")["secret"]["secretName"] == "webhook-tls"
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    else:
        assert _volume(spec, "webhook-certs")["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("variant", ["webhook", "webhook-namespaced"])
def test_rendered_webhook_configuration_is_what_the_operator_writes(helm: Path, variant: str) -> None:
    """Field for field, so `helm upgrade` and the operator's resync never undo each other; caBundle is the
    operator's alone (the chart never sets it, so Helm's three-way merge leaves it alone)."""
    docs = render(helm, VARIANTS[variant])
    parsed = parse_run(pod_spec(docs)["containers"][0]["args"])
    webhook = cli._webhook_config(parsed)
    rendered = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert len(rendered) == 1
    entry = rendered[0]
    assert "caBundle" not in entry["clientConfig"]
    ca_bundle = "Q0E="
    entry["clientConfig"]["caBundle"] = ca_bundle
    operator_entry = desired.desired_webhook(
        desired.service_client_config(*webhook.service, webhook.service_port, ca_bundle), parsed.namespaces)
    assert entry == operator_entry
    live = {"webhooks": [entry]}
    assert desired.drift(live, operator_entry) is None
    assert entry["objectSelector"]["matchExpressions"][0]["key"] == c.LABEL_WORKSPACE_SECRET


def test_webhook_rbac_is_what_the_operator_does_to_its_configuration(helm: Path) -> None:
    """kube/webhook_configuration.py: get by name, create, and a compare-and-swap PUT (update) by name."""
    docs = render(helm, VARIANTS["webhook"])
    name = one(docs, "MutatingWebhookConfiguration")["metadata"]["name"]
    rules = [r for r in operator_cluster_role(docs)["rules"] if "mutatingwebhookconfigurations" in r["resources"]]
    assert sorted((tuple(r.get("resourceNames", [])), tuple(r["verbs"])) for r in rules) == [
        ((), ("create",)), ((name,), ("get", "update"))]


def test_providers_are_the_operator_configuration_file(helm: Path) -> None:
    docs = render(helm, VARIANTS["providers"])
    spec = pod_spec(docs)
    parsed = parse_run(spec["containers"][0]["args"])
    assert parsed.operator_namespace == NAMESPACE
    config_map = named(docs, "ConfigMap", f"{FULLNAME}-providers")
    mount = _mount(spec, "providers")
    assert mount["readOnly"] is True
    assert _volume(spec, "providers")["configMap"]["name"] == config_map["metadata"]["name"]
    directory, _, file_name = parsed.providers_config.rpartition("/")
    assert directory == mount["mountPath"]
    document = yaml.safe_load(config_map["data"][file_name])
    assert document == {"providers": [TOKEN_PROVIDER, AWS_PROVIDER]}
    # The operator builds the token provider from exactly this (provider_setup.load_providers does the same).
    item = document["providers"][0]
    provider = registry.build(item["name"], item["type"], item.get("config") or {}, {}, kube=None)
    assert provider.validate({"serviceAccount": "ci-bot"}) is None
    assert "not allowed" in (provider.validate({"serviceAccount": "admin"}) or "")
    # A changed configuration rolls the pod (the operator reads it at start-up only).
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    other = render(helm, {"providers": [TOKEN_PROVIDER]})
    other_annotations = one(other, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/providers"] != other_annotations["checksum/providers"]


def test_operator_namespace_comes_from_the_pod_namespace(helm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without providers the chart passes no --operator-namespace: the CLI's default reads POD_NAMESPACE,
    which the chart sets from the downward API."""
    spec = pod_spec(render(helm, {}))
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert not any(n.startswith("WSO_") for n in env), "the operator reads no WSO_* settings from the chart"
    monkeypatch.setenv("POD_NAMESPACE", "release-ns")
    assert parse_run(spec["containers"][0]["args"]).operator_namespace == "release-ns"


def test_schema_knows_every_provider_type_of_the_operator() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    types = set(schema["properties"]["providers"]["items"]["properties"]["type"]["enum"])
    assert set(registry.PROVIDER_TYPES) <= types


def test_the_local_nodes_operator_image_installs_as_is(helm: Path) -> None:
    """The image the daemonless build imports into the local node (tests/e2e/test_real_node.py installs the chart
    with it): its reference splits into image.repository and image.tag, renders back to itself, and is never
    pulled (there is no registry)."""
    from devcluster.images import OPERATOR_IMAGE

    repository, _, tag = OPERATOR_IMAGE.rpartition(":")
    container = pod_spec(render(helm, {"image": {"repository": repository, "tag": tag, "pullPolicy": "Never"}}))["containers"][0]
    assert (container["image"], container["imagePullPolicy"]) == (OPERATOR_IMAGE, "Never")


def test_health_probes_point_at_the_operator_health_endpoints(helm: Path) -> None:
    spec = pod_spec(render(helm, {}))
    main = spec["containers"][0]
    parsed = parse_run(main["args"])
    port = next(p["containerPort"] for p in main["ports"] if p["name"] == "health")
    assert parsed.health_probe_bind_address == f":{port}"
    assert [main[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")] == ["/healthz", "/healthz", "/readyz"]


def test_leader_election_flags_are_what_the_values_say(helm: Path) -> None:
    values = VARIANTS["leader-election-ha"]
    parsed = parse_run(pod_spec(render(helm, values))["containers"][0]["args"])
    assert parsed.leader_elect is True
    assert parsed.leader_election_id == FULLNAME and parsed.leader_election_namespace == NAMESPACE
    assert (parsed.leader_election_lease_duration, parsed.leader_election_renew_deadline, parsed.leader_election_retry_period) == (30, 20, 4)
    single = parse_run(pod_spec(render(helm, {}))["containers"][0]["args"])
    assert not single.leader_elect


def test_cert_manager_certificate_is_the_one_the_chart_renders(helm: Path) -> None:
    docs = render(helm, VARIANTS["webhook-cert-manager"])
    spec = pod_spec(docs)
    parsed = parse_run(spec["containers"][0]["args"])
    certificate = next(d for d in docs if d["kind"] == "Certificate" and not d["spec"].get("isCA"))
    assert parsed.webhook_cert_manager_certificate == f"{NAMESPACE}/{certificate['metadata']['name']}"
    assert _volume(spec, "webhook-certs")["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert _mount(spec, "webhook-certs")["mountPath"] == parsed.webhook_cert_dir


def test_trusted_ca_bundle_file_is_where_the_chart_mounts_it(helm: Path) -> None:
    spec = pod_spec(render(helm, VARIANTS["trusted-ca-and-proxy"]))
    parsed = parse_run(spec["containers"][0]["args"])
    directory, _, key = parsed.ca_bundle_file.rpartition("/")
    assert directory == _mount(spec, "ca-bundle")["mountPath"] and key == "ca.crt"
    assert _volume(spec, "ca-bundle")["configMap"] == {"name": "corporate-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}


# --- leader election durations, proxies, the pod's identity, probes, kopf's CRDs (review of 3869b85) ----------
def _template(helm: Path, values: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--kube-version", pinned_versions()["K8S_VERSION"], "-f", "-"],
        input=json.dumps(values), capture_output=True, text=True, check=False, timeout=60,
    )


@pytest.mark.parametrize("lease,renew,retry", [(15, 10, 2), (13, 10, 2), (12, 10, 2), (12, 10, 3), (3, 1, 1), (2, 1, 1),
                                               (30, 20, 4), (20, 20, 1), (6, 1, 4), (5, 1, 4)])
def test_the_chart_refuses_exactly_the_lease_durations_the_operator_refuses(helm: Path, lease: int, renew: int, retry: int) -> None:
    """leaseDuration > renewDeadline + retryPeriod (runtime/leader.py's durations_problem): the chart fails the
    render instead of installing an operator that refuses to start; values below the schema's minimums never reach
    the template."""
    from workspace_secrets.runtime.leader import durations_problem

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["leaderElection"]["properties"]
    result = _template(helm, {"replicaCount": 2, "leaderElection": {"leaseDuration": lease, "renewDeadline": renew, "retryPeriod": retry}})
    if lease < schema["leaseDuration"]["minimum"]:
        assert result.returncode != 0 and "at '/leaderElection/leaseDuration'" in result.stderr, result.stderr
        assert durations_problem(lease, renew, retry) is not None
        return
    operator_refuses = durations_problem(lease, renew, retry) is not None
    assert (result.returncode != 0) == operator_refuses, result.stderr
    if operator_refuses:
        assert "leaderElection: needs leaseDuration > renewDeadline + retryPeriod" in result.stderr
    else:
        parsed = parse_run(pod_spec([d for d in yaml.safe_load_all(result.stdout) if d])["containers"][0]["args"])
        assert (parsed.leader_election_lease_duration, parsed.leader_election_renew_deadline,
                parsed.leader_election_retry_period) == (lease, renew, retry)


def test_lease_durations_are_not_checked_without_leader_election(helm: Path) -> None:
    assert _template(helm, {"leaderElection": {"leaseDuration": 10, "renewDeadline": 10}}).returncode == 0


PROXY_CANDIDATES = ["", "http://proxy.example.com:3128", "http://proxy:3128/", "http://user:pass@proxy:3128",
                    "http://[fd00::1]:3128", "http://10.0.0.1", "https://proxy.example.com:3128",
                    "socks5://proxy:1080", "http://proxy:3128/path", "http://proxy:3128?x=1", "http://proxy:3128#f",
                    "proxy.example.com:3128", "HTTPS://proxy:3128", "http://", "http://proxy:3128 extra"]


@pytest.mark.parametrize("key,variable", [("httpsProxy", "HTTPS_PROXY"), ("httpProxy", "HTTP_PROXY")])
def test_the_proxy_schema_accepts_only_proxies_the_operator_accepts(key: str, variable: str) -> None:
    """Whatever values.schema.json lets through, runtime/egress.py takes (it refuses https://, socks5:// and a path
    at start). The schema is stricter in one way only: it wants the http:// the operator would assume."""
    import jsonschema

    from workspace_secrets.runtime.egress import ProxyConfigError, ProxySettings

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["proxy"]["properties"][key]
    accepted = []
    for value in PROXY_CANDIDATES:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError:
            continue
        accepted.append(value)
        try:
            ProxySettings.from_environ({variable: value})
        except ProxyConfigError as exc:
            pytest.fail(f"the schema accepts {key}={value!r}, the operator refuses it: {exc}")
    # Not http://user:pass@proxy:3128: credentials would sit in the pod spec, readable with `view` (existingSecret).
    assert accepted == ["", "http://proxy.example.com:3128", "http://proxy:3128/", "http://[fd00::1]:3128", "http://10.0.0.1"]


def test_proxy_credentials_come_from_a_secret_never_the_pod_spec(helm: Path) -> None:
    spec = pod_spec(render(helm, {"proxy": {"existingSecret": "corporate-proxy", "noProxy": ".corp.example"}}))
    env = {e["name"]: e for e in spec["containers"][0]["env"]}
    for variable in ("HTTPS_PROXY", "HTTP_PROXY"):
        assert "value" not in env[variable]
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "corporate-proxy", "key": variable, "optional": True}
    assert env["NO_PROXY"]["value"].split(",")[:2] == [".corp.example", "$(KUBERNETES_SERVICE_HOST)"]


def test_proxy_urls_come_from_one_place(helm: Path) -> None:
    # Both would render HTTPS_PROXY twice (the later silently wins): refused.
    result = _template(helm, {"proxy": {"existingSecret": "corporate-proxy", "httpsProxy": "http://proxy:3128"}})
    assert result.returncode != 0 and "exclude each other" in result.stderr


def test_no_service_links_are_read_as_settings(helm: Path) -> None:
    # A Service named like a flag (wso-metrics) would inject WSO_METRICS_PORT=tcp://...: the chart turns links off.
    assert pod_spec(render(helm, {}))["enableServiceLinks"] is False


def test_the_pod_name_is_the_operators_identity(helm: Path) -> None:
    """POD_ID (read by the CLI for the Lease's holderIdentity, the peering status and Events) is the pod's name."""
    for values in ({}, VARIANTS["leader-election-ha"]):
        env = {e["name"]: e for e in pod_spec(render(helm, values))["containers"][0]["env"]}
        assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert "os.environ.get('POD_ID')" in Path(cli.__file__).read_text()


def test_a_new_leader_has_the_startup_budget_to_start(helm: Path) -> None:
    """After a takeover the leader starts the operator with /healthz at 503, and only the liveness probe counts:
    by default it waits at least as long as the startup probe does at the container's start."""
    container = pod_spec(render(helm, {"replicaCount": 2}))["containers"][0]
    startup, liveness = container["startupProbe"], container["livenessProbe"]
    assert (liveness["failureThreshold"] - 1) * liveness["periodSeconds"] >= startup["failureThreshold"] * startup["periodSeconds"]


@pytest.mark.parametrize("values", [{}, {"peering": {"enabled": True}}, {"replicaCount": 2, "peering": {"enabled": True}},
                                    {"peering": {"enabled": True}, "watchNamespaces": ["team-a"]}])
def test_the_chart_never_renders_kopfs_shared_peering_crds(helm: Path, values: dict[str, Any]) -> None:
    docs = render(helm, values)
    crds = sorted(d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition")
    assert crds == ["oauthapplications.workspace-secrets.io", "usertokens.workspace-secrets.io", "workspacesecrets.workspace-secrets.io"]
