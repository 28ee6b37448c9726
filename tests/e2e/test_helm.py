"""The Helm chart (deploy/helm/workspace-secrets-operator) on the real control plane.

- `helm lint --strict` and `helm template` for the defaults and each documented variant; the values
  schema rejects typos.
- The rendered manifests pass the API server's own validation (`kubectl apply --dry-run=server`).
- `helm install` succeeds (into a namespace enforcing Pod Security "restricted": the ReplicaSet controller
  must be allowed to create the operator's Pod; no kubelet exists, so it stays Pending) and `helm uninstall`
  removes everything except the CRDs.
- RBAC is proven, not assumed: the operator runs out of cluster with a kubeconfig that holds only a
  TokenRequest token of the chart's ServiceAccount, and the whole WorkspaceSecret e2e suite
  (tests/e2e/test_workspacesecret.py, run as a nested pytest with WSO_E2E_OPERATOR_KUBECONFIG) passes with
  exactly those permissions; namespaced mode gets a smoke test the same way. `kubectl auth can-i` with the
  same token shows what the ServiceAccount can NOT do.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Api, wait_for
from kubernetes import client as k8s

from operator_process import OperatorProcess
from workspace_secrets.testing.controlplane import REPO_ROOT, pinned_versions

CHART = REPO_ROOT / "deploy" / "helm" / "workspace-secrets-operator"
CHART_NAME = "workspace-secrets-operator"
KUBE_VERSION = pinned_versions()["K8S_VERSION"]  # for `helm template` (install asks the cluster)
#: Kinds whose CRDs a bare cluster does not have (Prometheus Operator, kopf peering): template-only.
KINDS_NEEDING_THIRD_PARTY_CRDS = {"ServiceMonitor", "KopfPeering", "ClusterKopfPeering"}
#: What the API server (`User "..." cannot list resource ...`) and kopf ("Not enough permissions ...") say
#: when RBAC refuses a request. A bare 403 is not enough: creating in a terminating namespace is a 403 too.
RBAC_DENIED = re.compile(r"cannot [a-z]+ resource|not enough permissions", re.IGNORECASE)


# --- rendering ------------------------------------------------------------------------------------
def render(cluster, values: dict[str, Any], *, release: str = "wso", namespace: str = "wso-system") -> list[dict]:
    out = cluster.helm(
        "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, "-f", "-",
        input=json.dumps(values),
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict]) -> dict:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def rules_of(role: dict) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples; resourceName-limited rules are marked with '#name'."""
    triples = set()
    for rule in role["rules"]:
        names = rule.get("resourceNames")
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    if names:
                        triples |= {(group, f"{resource}#{name}", verb) for name in names}
                    else:
                        triples.add((group, resource, verb))
    return triples


def check_common(docs: list[dict]) -> None:
    """What every variant must satisfy: restricted pod security, kopf's probes, JSON logs."""
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = main["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert "--log-format=json" in main["args"] and "--liveness=http://0.0.0.0:8080/healthz" in main["args"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in main["ports"]
    assert main["image"] == f"{CHART_NAME}:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    for doc in docs:
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "ClusterKopfPeering"}:
            assert doc["metadata"].get("namespace"), f"{doc['kind']} {doc['metadata']['name']} has no namespace"


# --- variants: values and what must be true of their rendering -----------------------------------
def _default(docs: list[dict]) -> None:
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(a.startswith(("--namespace", "--peering")) for a in container(docs)["args"])
    rules = rules_of(one(docs, "ClusterRole"))
    assert ("", "secrets", "list") in rules and ("workspace-secrets.io", "workspacesecrets/status", "patch") in rules
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "watch") in rules
    assert not {r for r in rules if r[1].startswith(("configmaps", "namespaces", "mutatingwebhook", "serviceaccounts", "usertokens"))}
    assert not {r for r in rules if r[1] in {"pods", "deployments", "statefulsets", "persistentvolumeclaims"} and r[2] != "get"}
    assert not of_kind(docs, "Role") and not of_kind(docs, "Service") and not of_kind(docs, "PodDisruptionBudget")
    assert not of_kind(docs, "MutatingWebhookConfiguration") and not of_kind(docs, "NetworkPolicy")


def _namespaced(docs: list[dict]) -> None:
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in of_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    assert [a for a in container(docs)["args"] if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    cluster_rules = rules_of(one(docs, "ClusterRole"))
    assert cluster_rules == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"), ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"), ("", "namespaces", "watch"),
    }, "in namespaced mode nothing namespaced may be granted cluster-wide"
    assert ("", "secrets", "delete") in rules_of(roles[0])


def _namespaced_without_scanning(docs: list[dict]) -> None:
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding")
    assert len(of_kind(docs, "Role")) == 1


def _webhook(docs: list[dict]) -> None:
    config = one(docs, "MutatingWebhookConfiguration")
    hook = config["webhooks"][0]
    assert hook["objectSelector"] == {"matchExpressions": [{"key": "workspace-secrets.io/workspace-secret", "operator": "Exists"}]}
    assert "caBundle" not in hook["clientConfig"], "the operator owns caBundle; the chart must not reset it"
    service = one(docs, "Service")
    assert hook["clientConfig"]["service"] == {"name": service["metadata"]["name"], "namespace": "wso-system", "path": "/mutate-pods", "port": 443}
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container(docs)["ports"]
    rules = rules_of(one(docs, "ClusterRole"))
    name = config["metadata"]["name"]
    assert {("admissionregistration.k8s.io", f"mutatingwebhookconfigurations#{name}", v) for v in ("get", "patch")} <= rules
    assert ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "create") in rules
    assert ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch") not in rules, "patch must be limited by name"


def _webhook_namespaced(docs: list[dict]) -> None:
    hook = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"] == {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}]}


def _metrics(docs: list[dict]) -> None:
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert {"name": "WSO_METRICS_PORT", "value": "9090"} in container(docs)["env"]


def _connect(docs: list[dict]) -> None:
    service = one(docs, "Service")
    ingress = one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"hosts": ["workspace-secrets.example.com"], "secretName": "connect-tls"}]
    rules = rules_of(one(docs, "ClusterRole"))
    assert {("workspace-secrets.io", r, "patch") for r in ("usertokens", "usertokens/status")} <= rules
    assert ("", "secrets#github-oauth", "get") in rules_of(one(docs, "Role"))


def _providers(docs: list[dict]) -> None:
    credentials = one(docs, "Role")
    assert credentials["metadata"]["namespace"] == "wso-system"
    assert rules_of(credentials) == {("", "secrets#aws-admin", "get"), ("", "secrets#pg-admin", "get")}
    env = {e["name"]: e.get("value") for e in container(docs)["env"]}
    assert env["WSO_PROVIDER_AWS_CREDENTIALS_SECRET"] == "aws-admin" and env["WSO_PROVIDER_POSTGRES_CREDENTIALS_SECRET"] == "pg-admin"
    assert "WSO_PROVIDER_GCP_CREDENTIALS_SECRET" not in env
    assert ("", "serviceaccounts/token", "create") in rules_of(one(docs, "ClusterRole"))
    assert not of_kind(docs, "Secret") and not of_kind(docs, "ConfigMap"), "the chart must never carry credentials"


def _peering(docs: list[dict]) -> None:
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert "--peering=wso-workspace-secrets-operator" in container(docs)["args"]
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "wso-workspace-secrets-operator"
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in rules_of(one(docs, "ClusterRole"))


def _network_policy(docs: list[dict]) -> None:
    policy = one(docs, "NetworkPolicy")
    ports = [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]]
    assert ports == ["health", "metrics"] and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"][1]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


@dataclass(frozen=True)
class Variant:
    values: dict[str, Any]
    check: Callable[[list[dict]], None]


VARIANTS: dict[str, Variant] = {
    "default": Variant({}, _default),
    "namespaced": Variant({"watchNamespaces": ["team-a", "team-b"]}, _namespaced),
    "namespaced-no-cluster-scanning": Variant({"watchNamespaces": ["team-a"], "rbac": {"clusterScanning": False}}, _namespaced_without_scanning),
    "webhook": Variant({"webhook": {"enabled": True}}, _webhook),
    "webhook-off": Variant({"webhook": {"enabled": False}}, _default),
    "webhook-namespaced": Variant({"webhook": {"enabled": True}, "watchNamespaces": ["team-a"]}, _webhook_namespaced),
    "metrics": Variant({"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}}, _metrics),
    "connect": Variant({"connect": {"enabled": True, "publicURL": "https://workspace-secrets.example.com",
                                    "oauthClientSecrets": ["github-oauth"],
                                    "ingress": {"enabled": True, "tlsSecretName": "connect-tls"}}}, _connect),
    "providers": Variant({"providers": {"aws": {"credentialsSecret": "aws-admin"}, "postgres": {"credentialsSecret": "pg-admin"},
                                        "kubernetes": {"enabled": True}}}, _providers),
    "peering-ha": Variant({"replicaCount": 2, "peering": {"enabled": True}}, _peering),
    "network-policy": Variant({"networkPolicy": {"enabled": True, "metricsFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        "metrics": {"enabled": True}}, _network_policy),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_lint_strict_and_template(cluster, name: str) -> None:
    variant = VARIANTS[name]
    lint = cluster.helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION, "-f", "-", input=json.dumps(variant.values))
    assert "1 chart(s) linted, 0 chart(s) failed" in lint.stdout
    docs = render(cluster, variant.values)
    check_common(docs)
    variant.check(docs)


@pytest.mark.parametrize(
    "values,message",
    [
        ({"watchNamespace": ["a"]}, "additional properties 'watchNamespace' not allowed"),
        ({"webhook": {"enabeld": True}}, "at '/webhook': additional properties 'enabeld' not allowed"),
        ({"providers": {"aws": {"accessKeyId": "AKIA", "credentialsSecret": ""}}}, "at '/providers/aws': additional properties 'accessKeyId' not allowed"),
        ({"replicaCount": "two"}, "at '/replicaCount'"),
        ({"operator": {"logFormat": "xml"}}, "at '/operator/logFormat'"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
    ],
    ids=["top-level-typo", "nested-typo", "inline-credentials", "wrong-type", "bad-enum", "bad-namespace-name"],
)
def test_values_schema_rejects_mistakes(cluster, values: dict, message: str) -> None:
    result = cluster.helm("template", "wso", str(CHART), "--kube-version", KUBE_VERSION, "-f", "-",
                          input=json.dumps(values), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr and message in result.stderr, result.stderr


def test_several_replicas_need_peering(cluster) -> None:
    result = cluster.helm("template", "wso", str(CHART), "--kube-version", KUBE_VERSION, "--set", "replicaCount=2", check=False)
    assert result.returncode != 0 and "replicaCount > 1 needs peering.enabled=true" in result.stderr


# --- against the API server -----------------------------------------------------------------------
def _create_namespace(cluster, prefix: str, labels: dict[str, str] | None = None) -> str:
    name = f"{prefix}{secrets.token_hex(3)}"
    with cluster.api_client() as api:
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "wso-e2e", **(labels or {})}}})
    return name


def _delete_namespaces(cluster, *names: str) -> None:
    cluster.kubectl("delete", "namespace", "--wait=false", "--ignore-not-found", *names)


@pytest.fixture(scope="module")
def scratch_namespaces(cluster) -> Iterator[dict[str, str]]:
    """A release namespace (enforcing Pod Security "restricted") and two namespaces to watch."""
    names = {
        "release": _create_namespace(cluster, "wso-e2e-helm-", {"pod-security.kubernetes.io/enforce": "restricted"}),
        "team-a": _create_namespace(cluster, "wso-e2e-team-a-"),
        "team-b": _create_namespace(cluster, "wso-e2e-team-b-"),
    }
    yield names
    _delete_namespaces(cluster, *names.values())


@pytest.mark.parametrize("name", VARIANTS)
def test_rendered_manifests_pass_server_side_dry_run(cluster, scratch_namespaces, name: str) -> None:
    values = json.loads(json.dumps(VARIANTS[name].values))
    if "watchNamespaces" in values:
        values["watchNamespaces"] = [scratch_namespaces[n] for n in values["watchNamespaces"]]
    docs = render(cluster, values, namespace=scratch_namespaces["release"], release=f"dry-{name}")
    servable = [d for d in docs if d["kind"] not in KINDS_NEEDING_THIRD_PARTY_CRDS]
    skipped = sorted(d["kind"] for d in docs if d["kind"] in KINDS_NEEDING_THIRD_PARTY_CRDS)
    assert skipped == {"metrics": ["ServiceMonitor"], "peering-ha": ["ClusterKopfPeering"]}.get(name, [])
    result = cluster.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", input=yaml.safe_dump_all(servable))
    assert len(result.stdout.split()) == len(servable), result.stdout
    assert "Warning" not in result.stderr, result.stderr  # e.g. a Pod Security warning on the Deployment


@dataclass
class Release:
    name: str
    namespace: str
    service_account: str
    kubeconfig: Path  # holds only a TokenRequest token of the ServiceAccount


def helm_install(cluster, release: str, namespace: str, values: dict[str, Any]) -> None:
    # No --wait: there is no kubelet, so the operator's pod stays Pending forever.
    cluster.helm("install", release, str(CHART), "--namespace", namespace, "-f", "-", input=json.dumps(values))


def token_kubeconfig(cluster, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig for the same API server (same CA) whose only credential is a ServiceAccount token
    issued through the TokenRequest API. The token is never printed."""
    token = cluster.kubectl("create", "token", service_account, "--namespace", namespace, "--duration", "1h").stdout.strip()
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json").stdout)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [{"name": service_account, "context": {"cluster": "e2e", "user": service_account}}],
        "current-context": service_account,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def whoami(cluster, kubeconfig: Path) -> str:
    return cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout


def can_i(cluster, kubeconfig: Path, *args: str) -> bool:
    result = cluster.kubectl("--kubeconfig", str(kubeconfig), "auth", "can-i", *args, check=False)
    assert result.stdout.strip() in {"yes", "no"}, result.stderr
    return result.stdout.strip() == "yes"


def assert_permissions(cluster, kubeconfig: Path, *, allowed: list[str], denied: list[str]) -> None:
    wrong = [f"allowed but should not be: {q}" for q in denied if can_i(cluster, kubeconfig, *q.split())]
    wrong += [f"denied but needed: {q}" for q in allowed if not can_i(cluster, kubeconfig, *q.split())]
    assert wrong == []


def operator_args_from_deployment(cluster, release: Release) -> list[str]:
    """The chart's own operator flags, minus --liveness (the test process picks a free local port)."""
    deployment = json.loads(cluster.kubectl("get", "deployment", f"{release.name}-{CHART_NAME}",
                                            "-n", release.namespace, "-o", "json").stdout)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return [a for a in args if not a.startswith("--liveness")]


@pytest.fixture(scope="module")
def cluster_wide_release(cluster, scratch_namespaces, tmp_path_factory) -> Iterator[Release]:
    namespace = scratch_namespaces["release"]
    name = "wso"
    helm_install(cluster, name, namespace, {})
    try:
        service_account = f"{name}-{CHART_NAME}"
        kubeconfig = token_kubeconfig(cluster, namespace, service_account, tmp_path_factory.mktemp("sa") / "kubeconfig")
        yield Release(name, namespace, service_account, kubeconfig)
    finally:
        cluster.helm("uninstall", name, "--namespace", namespace, check=False)


def test_install_cluster_wide_runs_a_restricted_pod(cluster, cluster_wide_release) -> None:
    release = cluster_wide_release
    status = json.loads(cluster.helm("status", release.name, "-n", release.namespace, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    # The namespace enforces Pod Security "restricted": the ReplicaSet controller could not create a
    # non-compliant pod. No kubelet runs, so it stays Pending -- its existence is the proof.
    with cluster.api_client() as api:
        core = k8s.CoreV1Api(api)
        selector = f"app.kubernetes.io/instance={release.name},app.kubernetes.io/name={CHART_NAME}"
        pods = wait_for(lambda: core.list_namespaced_pod(release.namespace, label_selector=selector).items,
                        timeout=30, what="the operator pod created by the ReplicaSet")
        assert [p.status.phase for p in pods] == ["Pending"]
        assert pods[0].spec.service_account_name == release.service_account
    assert whoami(cluster, release.kubeconfig) == f"system:serviceaccount:{release.namespace}:{release.service_account}"


def test_cluster_wide_service_account_has_only_what_it_needs(cluster, cluster_wide_release, scratch_namespaces) -> None:
    ns = scratch_namespaces["team-a"]
    assert_permissions(
        cluster, cluster_wide_release.kubeconfig,
        allowed=[
            "list secrets --all-namespaces", f"create secrets -n {ns}", f"delete secrets -n {ns}",
            "watch workspacesecrets.workspace-secrets.io --all-namespaces",
            f"patch workspacesecrets.workspace-secrets.io --subresource=status -n {ns}",
            f"get deployments.apps -n {ns}", f"get pods -n {ns}", f"create events -n {ns}",
            "watch customresourcedefinitions.apiextensions.k8s.io",
        ],
        denied=[
            f"get configmaps -n {ns}", f"create pods -n {ns}", f"delete pods -n {ns}", f"patch deployments.apps -n {ns}",
            "delete namespaces", "list namespaces", "list nodes", f"create serviceaccounts/token -n {ns}",
            f"create workspacesecrets.workspace-secrets.io -n {ns}", f"delete workspacesecrets.workspace-secrets.io -n {ns}",
            "create mutatingwebhookconfigurations.admissionregistration.k8s.io", "create clusterrolebindings.rbac.authorization.k8s.io",
            f"create rolebindings.rbac.authorization.k8s.io -n {ns}", "impersonate serviceaccounts",
            "delete customresourcedefinitions.apiextensions.k8s.io", f"list usertokens.workspace-secrets.io -n {ns}",
        ],
    )
    # A real refusal, with the token: also shows that RBAC_DENIED (the operator-log check) matches the API
    # server's wording.
    refused = cluster.kubectl("--kubeconfig", str(cluster_wide_release.kubeconfig), "get", "configmaps", "-n", ns, check=False)
    assert refused.returncode != 0 and RBAC_DENIED.search(refused.stderr), refused.stderr


@pytest.mark.timeout(420)
def test_workspacesecret_suite_passes_with_only_the_chart_rbac(cluster, cluster_wide_release, shared_operator_paused, tmp_path) -> None:
    """tests/e2e/test_workspacesecret.py in a nested pytest on this same cluster, whose operator process
    authenticates with the ServiceAccount token only (WSO_E2E_OPERATOR_KUBECONFIG); the tests keep the admin
    kubeconfig to create workspaces and inspect results."""
    # cluster.env() puts the pinned kubectl/helm first on PATH, which the nested session then uses.
    env = {k: v for k, v in cluster.env().items() if k not in {"PYTEST_ADDOPTS", "WSO_E2E_USE_KUBECONFIG"}}
    env.update({"WSO_E2E_KUBECONFIG": str(cluster.kubeconfig),
                "WSO_E2E_OPERATOR_KUBECONFIG": str(cluster_wide_release.kubeconfig)})
    basetemp, junit = tmp_path / "nested", tmp_path / "nested.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e/test_workspacesecret.py", "-q", "-p", "no:cacheprovider",
         f"--basetemp={basetemp}", f"--junitxml={junit}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400, check=False,
    )
    assert result.returncode == 0, f"nested e2e run failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= 10 and counts["failures"] == counts["errors"] == counts["skipped"] == 0, counts
    # The operator of the nested run: it used the token kubeconfig, and the API server refused it nothing.
    log = (basetemp / "operator0" / "operator.log").read_text(errors="replace")
    starts = re.findall(r"===== operator start #\d+ \(kubeconfig (\S+)\) =====", log)
    assert starts and set(starts) == {str(cluster_wide_release.kubeconfig)}, starts
    refused = [line for line in log.splitlines() if RBAC_DENIED.search(line)]
    assert refused == [], "the operator was refused requests with the chart's RBAC"


# --- namespaced mode --------------------------------------------------------------------------------
def test_namespaced_mode_smoke(cluster, shared_operator_paused, tmp_path) -> None:
    release_ns = _create_namespace(cluster, "wso-e2e-helm-ns-", {"pod-security.kubernetes.io/enforce": "restricted"})
    watched = _create_namespace(cluster, "wso-e2e-watched-")
    unwatched = _create_namespace(cluster, "wso-e2e-unwatched-")
    name = "wso-ns"
    try:
        helm_install(cluster, name, release_ns, {"watchNamespaces": [watched]})
        release = Release(name, release_ns, f"{name}-{CHART_NAME}",
                          token_kubeconfig(cluster, release_ns, f"{name}-{CHART_NAME}", tmp_path / "kubeconfig"))
        assert_permissions(
            cluster, release.kubeconfig,
            allowed=[f"list secrets -n {watched}", f"create secrets -n {watched}",
                     f"patch workspacesecrets.workspace-secrets.io --subresource=status -n {watched}",
                     "watch namespaces", "watch customresourcedefinitions.apiextensions.k8s.io"],
            denied=[f"list secrets -n {unwatched}", f"get secrets -n {unwatched}", f"get secrets -n {release_ns}",
                    "list secrets --all-namespaces", f"list workspacesecrets.workspace-secrets.io -n {unwatched}",
                    "list workspacesecrets.workspace-secrets.io --all-namespaces", f"get deployments.apps -n {unwatched}",
                    f"create events -n {unwatched}", f"get configmaps -n {watched}", f"create pods -n {watched}",
                    "delete namespaces"],
        )
        args = operator_args_from_deployment(cluster, release)
        assert f"--namespace={watched}" in args
        operator = OperatorProcess(str(release.kubeconfig), tmp_path / "operator", *args)
        operator.start()
        try:
            with cluster.api_client() as api_client:
                api = Api(api_client)
                api.create_ws(unwatched, "ignored", {"user": "zoe", "workspaceRef": {"kind": "Pod", "name": "none"}})
                api.create_deployment(watched, "ws-amy")
                api.create_ws(watched, "amy", {"user": "amy", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ws-amy"}})
                api.wait_condition(watched, "amy")
                api.wait_condition(watched, "amy", type_="WorkspaceBound")
                # The namespaced Secret watch works with the Role: a deleted workspace Secret comes back.
                original = api.secret_digests(watched, "amy")
                api.core.delete_namespaced_secret("amy", watched)
                wait_for(lambda: api.secret_digests(watched, "amy") == original, timeout=20, what="deleted Secret restored")
                assert not (api.get_ws(unwatched, "ignored") or {}).get("status"), "an unwatched namespace was reconciled"
                assert api.get_secret(unwatched, "ignored") is None
        finally:
            operator.stop()
        refused = [line for line in operator.log_text().splitlines() if RBAC_DENIED.search(line)]
        assert refused == [], "the operator was refused requests with the chart's namespaced RBAC"
        cluster.helm("uninstall", name, "--namespace", release_ns)
        assert cluster.kubectl("get", "role,rolebinding", "-n", watched, "-o", "name").stdout.strip() == ""
    finally:
        cluster.helm("uninstall", name, "--namespace", release_ns, check=False)
        _delete_namespaces(cluster, release_ns, watched, unwatched)


# --- uninstall ----------------------------------------------------------------------------------------
INSTALLABLE_EVERYTHING = {
    "webhook": {"enabled": True},
    "metrics": {"enabled": True},
    "connect": {"enabled": True, "oauthClientSecrets": ["github-oauth"], "ingress": {"enabled": True}},
    "providers": {"aws": {"credentialsSecret": "aws-admin"}, "kubernetes": {"enabled": True}},
    "networkPolicy": {"enabled": True},
}
RELEASE_KINDS = ("serviceaccounts,deployments.apps,replicasets.apps,pods,services,roles.rbac.authorization.k8s.io,"
                 "rolebindings.rbac.authorization.k8s.io,networkpolicies.networking.k8s.io,ingresses.networking.k8s.io")
CLUSTER_KINDS = ("clusterroles.rbac.authorization.k8s.io,clusterrolebindings.rbac.authorization.k8s.io,"
                 "mutatingwebhookconfigurations.admissionregistration.k8s.io")


def test_uninstall_removes_everything_but_the_crds(cluster) -> None:
    namespace = _create_namespace(cluster, "wso-e2e-helm-un-", {"pod-security.kubernetes.io/enforce": "restricted"})
    name = "wso-un"
    selector = f"app.kubernetes.io/instance={name}"

    def leftovers() -> list[str]:
        in_namespace = cluster.kubectl("get", RELEASE_KINDS, "-n", namespace, "-l", selector, "-o", "name").stdout.split()
        cluster_scoped = cluster.kubectl("get", CLUSTER_KINDS, "-l", selector, "-o", "name").stdout.split()
        return in_namespace + cluster_scoped

    try:
        helm_install(cluster, name, namespace, INSTALLABLE_EVERYTHING)
        manifest = [d for d in yaml.safe_load_all(cluster.helm("get", "manifest", name, "-n", namespace).stdout) if d]
        kinds = {d["kind"] for d in manifest}
        assert {"MutatingWebhookConfiguration", "Ingress", "NetworkPolicy", "ClusterRole", "Role", "Service"} <= kinds
        before = wait_for(lambda: (found := leftovers()) and any(n.startswith("pod/") for n in found) and found,
                          timeout=30, what="the release's objects and pod")
        assert len(before) >= len(manifest)
        cluster.helm("uninstall", name, "--namespace", namespace)
        # Helm deletes its objects; the garbage collector then removes the ReplicaSet and its Pod.
        wait_for(lambda: leftovers() == [], timeout=60, what="no object of the release left")
        for crd in cluster.crd_names:
            cluster.kubectl("get", "crd", crd)  # kept, as Helm does with crds/
        assert cluster.helm("list", "-n", namespace, "-q").stdout.strip() == ""
    finally:
        cluster.helm("uninstall", name, "--namespace", namespace, check=False)
        _delete_namespaces(cluster, namespace)
