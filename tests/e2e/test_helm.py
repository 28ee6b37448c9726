"""The Helm chart (deploy/helm/workspace-secrets-operator) on the real control plane.

- `helm lint --strict` and `helm template` for the defaults and each documented variant; the values
  schema rejects typos.
- The rendered manifests pass the API server's own validation (`kubectl apply --dry-run=server`).
- `helm install` succeeds (into a namespace enforcing Pod Security "restricted": the ReplicaSet controller
  must be allowed to create the operator's Pod; no kubelet exists, so it stays Pending) and `helm uninstall`
  removes everything except the CRDs.
- RBAC is proven, not assumed: the operator runs out of cluster with a kubeconfig that holds only a
  TokenRequest token of the chart's ServiceAccount, and the whole WorkspaceSecret e2e suite
  (tests/e2e/test_workspace_secret.py, run as a nested pytest with WSO_E2E_OPERATOR_KUBECONFIG) passes with
  exactly those permissions; so does tests/e2e/test_credentials.py's kubernetes-token test with a provider
  configured through the chart's `providers` value (the operator reads the release's rendered ConfigMap as
  its --providers-config, via WSO_E2E_OPERATOR_EXTRA_ARGS). Namespaced mode gets a smoke test the same way,
  including provider credentials read by name and a minted token. `kubectl auth can-i` with the same token
  shows what the ServiceAccount can NOT do.
- The webhook: the operator, run with the chart's own flags and token, takes over the chart's
  MutatingWebhookConfiguration changing only caBundle, serves TLS for the Service's name at the configured
  path; `helm upgrade` keeps caBundle without the operator having to repair anything; uninstall removes it.
- The tenant-isolation policies are installed by default and enforced (an impersonated tenant is refused,
  the release's own operator ServiceAccount is a platform identity; the nested WorkspaceSecret suite runs
  with them in force), and uninstall removes them.
- Metrics and connect flags are rendered and dry-run here, but no operator runs with them
  (tests/unit/test_chart_operator_interface.py checks them against the parser).
- The CRDs (templates behind crds.enabled/crds.keep), on a second, empty control plane where the chart owns them:
  a fresh install, uninstall keeping or deleting them; and the upgrade from the packaged previous chart 0.3.0
  (tests/e2e/data/charts/), whose crds/ Helm never owned: refused until the README's one-time adoption step,
  run verbatim, after which `helm upgrade` applies the schema changes of crds/.
- Leader election (replicaCount 2): the Lease Role, proven with the operator run on the chart's token.
- Aggregation into view/edit/admin, attacked by an impersonated editor.
- webhook.certManager against a stand-in of cert-manager's issuer and CA injector (see that test's docstring).
- Everything installed on the session's cluster uses crds.enabled=false: its CRDs come from the fixtures.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import secrets
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import Api, wait_for
from kubernetes import client as k8s

from backends import API_AUDIENCE
from operator_process import OperatorProcess, free_port
from workspace_secrets.api import constants as c
from workspace_secrets.runtime.webhook.configuration import desired_webhook, service_client_config
from devcluster.controlplane import REPO_ROOT, ControlPlane, pinned_versions

CHART = REPO_ROOT / "deploy" / "helm" / "workspace-secrets-operator"
CHART_NAME = "workspace-secrets-operator"
KUBE_VERSION = pinned_versions()["K8S_VERSION"]  # for `helm template` (install asks the cluster)
#: Kinds whose CRDs a bare cluster does not have (Prometheus Operator, kopf peering, cert-manager): template-only.
KINDS_NEEDING_THIRD_PARTY_CRDS = {"ServiceMonitor", "KopfPeering", "ClusterKopfPeering", "Certificate", "Issuer"}
#: The previous chart release, packaged before 0.4.0 changed anything (CRDs in its crds/ directory).
PREVIOUS_CHART = Path(__file__).resolve().parent / "data" / "charts" / "workspace-secrets-operator-0.3.0.tgz"
CRD_KEEP = {"helm.sh/resource-policy": "keep"}
#: kopf's own peering CRDs: shared by every kopf operator of a cluster, so the chart never owns (renders) them.
KOPF_PEERING_CRDS = {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}
#: What the API server (`User "..." cannot list resource ...`) and kopf ("Not enough permissions ...") say
#: when RBAC refuses a request. A bare 403 is not enough: creating in a terminating namespace is a 403 too.
RBAC_DENIED = re.compile(r"cannot [a-z]+ resource|not enough permissions", re.IGNORECASE)
#: Cluster-scoped kinds the chart renders.
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "ClusterKopfPeering",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "OAuthApplication",
                  "CustomResourceDefinition"}
OAUTH_APPLICATIONS_CRD = "oauthapplications.workspace-secrets.io"
POLICY_SUFFIXES = ("user-isolation", "user-secret-labels", "reserved-secrets")
#: The operator guard (policies.operatorGuard, on with the policies): binds everywhere, no parameters.
GUARD_SUFFIX = "operator-guard"
#: Where the chart mounts the webhook's certificate directory and the providers file.
WEBHOOK_CERT_DIR = "/var/run/workspace-secrets-operator/webhook-certs"
PROVIDERS_DIR = "/etc/workspace-secrets-operator/providers"
#: A kubernetes-token provider configured through values; tests/e2e/test_credentials.py's kubernetes-token test
#: uses this name and a ServiceAccount `ci-bot`.
CLUSTER_TOKENS = {"name": "cluster-tokens", "type": "kubernetes-token", "allow": {"namespaces": ["wso-e2e-*"]},
                  "config": {"allowedServiceAccounts": ["ci-*"], "audiences": [API_AUDIENCE], "maxExpirationSeconds": 7200}}
GITHUB_APPLICATION = {"name": "github", "type": "github", "clientSecretRef": {"name": "github-oauth"},
                      "allowedNamespaces": ["workspaces-*"]}
PROVIDERS = [CLUSTER_TOKENS,
             {"name": "aws-dev", "type": "aws-iam", "credentialsSecret": "aws-admin", "allow": {"namespaces": ["wso-e2e-*"]},
              "config": {"region": "eu-west-1"}},
             {"name": "pg", "type": "postgresql", "credentialsSecret": "pg-admin"}]


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


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {[d['metadata']['name'] for d in of_kind(docs, kind)]}"
    return found[0]


def operator_role(docs: list[dict], release: str = "wso") -> dict:
    """The operator's ClusterRole: the cluster-wide one, or in namespaced mode its cluster-scoped part."""
    roles = {d["metadata"]["name"]: d for d in of_kind(docs, "ClusterRole")}
    return roles.get(f"{release}-{CHART_NAME}") or roles[f"{release}-{CHART_NAME}-cluster"]


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
    """What every variant must satisfy: restricted pod security, the health probes, JSON logs."""
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    main = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = main["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert "--log-format=json" in main["args"] and "--health-probe-bind-address=:8080" in main["args"]
    assert {"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in main["env"]
    assert not any(a.startswith(("--liveness", "--metrics-port")) for a in main["args"]), "deprecated flags"
    for probe in ("startupProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in main["ports"]
    assert main["image"] == f"{CHART_NAME}:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace"), f"{doc['kind']} {doc['metadata']['name']} has no namespace"


# --- variants: values and what must be true of their rendering -----------------------------------
def _default(docs: list[dict]) -> None:
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert deployment["spec"]["revisionHistoryLimit"] == 10
    assert not any(a.startswith(("--namespace", "--peering", "--leader-elect", "--ca-bundle-file")) for a in container(docs)["args"])
    assert "--metrics-bind-address=0" in container(docs)["args"]
    assert not {e["name"] for e in container(docs)["env"]} & {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"}
    # The CRDs: every one of crds/ but kopf's shared peering CRDs, kept on uninstall.
    crds = of_kind(docs, "CustomResourceDefinition")
    assert sorted(d["metadata"]["name"] for d in crds) == sorted(d["metadata"]["name"] for d in _chart_crds())
    assert all(d["metadata"]["annotations"] == CRD_KEEP for d in crds)
    # No aggregation into Kubernetes' default roles unless asked.
    assert not [r for r in of_kind(docs, "ClusterRole") if any(k.startswith("rbac.authorization.k8s.io/aggregate")
                                                               for k in r["metadata"]["labels"])]
    rules = rules_of(operator_role(docs))
    assert ("", "secrets", "list") in rules and ("workspace-secrets.io", "workspacesecrets/status", "patch") in rules
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "watch") in rules
    assert {r for r in rules if r[1] == "oauthapplications"} == {("workspace-secrets.io", "oauthapplications", v) for v in ("get", "list", "watch")}
    assert not {r for r in rules if r[1].startswith(("configmaps", "namespaces", "mutatingwebhook", "serviceaccounts"))}
    # Workspace anchors are read; pods also watched, patched (the scheduling gate) and deleted (a gated pod admitted before
    # its WorkspaceSecret published everything, for its controller to re-create), Deployments/StatefulSets patched
    # (restart on rotation); none of them ever created, and none but such a pod deleted.
    assert {r for r in rules if r[1] in {"pods", "deployments", "statefulsets", "persistentvolumeclaims"}} == {
        ("", "persistentvolumeclaims", "get"), *(("", "pods", v) for v in ("get", "list", "watch", "patch", "delete")),
        *(("apps", k, v) for k in ("deployments", "statefulsets") for v in ("get", "patch"))}
    assert not of_kind(docs, "Role") and not of_kind(docs, "Service") and not of_kind(docs, "PodDisruptionBudget")
    assert not of_kind(docs, "MutatingWebhookConfiguration") and not of_kind(docs, "NetworkPolicy")
    assert [c["metadata"]["name"] for c in of_kind(docs, "ConfigMap")] == ["wso-workspace-secrets-operator-tenancy"]
    assert not any(a.startswith(("--webhook", "--providers-config", "--operator-namespace")) for a in container(docs)["args"])
    # Tenant isolation and the users' role are on by default.
    assert sorted(p["metadata"]["name"] for p in of_kind(docs, "ValidatingAdmissionPolicy")) == sorted(
        f"wso-{CHART_NAME}-{s}" for s in (*POLICY_SUFFIXES, GUARD_SUFFIX))
    assert len(of_kind(docs, "ValidatingAdmissionPolicyBinding")) == 4
    user_role = named(docs, "ClusterRole", f"wso-{CHART_NAME}-user")
    assert not {r for r in rules_of(user_role) if r[1] in {"secrets", "oauthapplications"}}
    assert not of_kind(docs, "OAuthApplication")


def _namespaced(docs: list[dict]) -> None:
    roles = of_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in of_kind(docs, "RoleBinding")) == ["team-a", "team-b"]
    assert [a for a in container(docs)["args"] if a.startswith("--namespace")] == ["--namespace=team-a", "--namespace=team-b"]
    cluster_rules = rules_of(operator_role(docs))
    assert cluster_rules == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"), ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"), ("", "namespaces", "watch"),
        *(("workspace-secrets.io", "oauthapplications", v) for v in ("get", "list", "watch")),
    }, "in namespaced mode nothing namespaced may be granted cluster-wide"
    for binding in of_kind(docs, "ValidatingAdmissionPolicyBinding"):
        if binding["metadata"]["name"].endswith(GUARD_SUFFIX):
            assert "matchResources" not in binding["spec"], "the operator guard binds everywhere"
            continue
        assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["wso-system", "kube-system", "kube-public", "kube-node-lease"]}]
    assert ("", "secrets", "delete") in rules_of(roles[0])


def _namespaced_without_scanning(docs: list[dict]) -> None:
    # Only what cannot be namespaced: reading the (cluster-scoped) OAuthApplications.
    assert rules_of(operator_role(docs)) == {("workspace-secrets.io", "oauthapplications", v) for v in ("get", "list", "watch")}
    assert len(of_kind(docs, "ClusterRoleBinding")) == 1
    assert len(of_kind(docs, "Role")) == 1


def _webhook(docs: list[dict]) -> None:
    config = one(docs, "MutatingWebhookConfiguration")
    name = config["metadata"]["name"]
    service = one(docs, "Service")
    args = container(docs)["args"]
    assert [a for a in args if a.startswith("--webhook")] == [
        "--webhook", "--webhook-port=9443", "--webhook-listen-address=0.0.0.0",
        f"--webhook-service=wso-system/{service['metadata']['name']}", "--webhook-service-port=443",
        f"--webhook-cert-dir={WEBHOOK_CERT_DIR}", f"--webhook-configuration={name}"]
    # Field for field the operator's own entry (tests/unit/test_chart_operator_interface.py compares all of
    # it); caBundle is the operator's alone.
    hook = config["webhooks"][0]
    assert "caBundle" not in hook["clientConfig"], "the operator owns caBundle; the chart must not reset it"
    ca_bundle = "Q0E="
    assert {**hook, "clientConfig": {**hook["clientConfig"], "caBundle": ca_bundle}} == desired_webhook(
        service_client_config("wso-system", service["metadata"]["name"], 443, ca_bundle))
    assert service["spec"]["ports"] == [{"name": "https", "port": 443, "targetPort": "webhook", "protocol": "TCP"}]
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container(docs)["ports"]
    assert {"name": "webhook-certs", "mountPath": WEBHOOK_CERT_DIR} in container(docs)["volumeMounts"]
    rules = rules_of(operator_role(docs))
    mwc = "mutatingwebhookconfigurations"
    assert {r for r in rules if r[1].startswith(mwc)} == {
        ("admissionregistration.k8s.io", f"{mwc}#{name}", "get"), ("admissionregistration.k8s.io", f"{mwc}#{name}", "update"),
        ("admissionregistration.k8s.io", mwc, "create")}, "get/update by name; only create (which cannot be) is unnamed"


def _webhook_namespaced(docs: list[dict]) -> None:
    hook = one(docs, "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["namespaceSelector"] == {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}]}
    assert "--namespace=team-a" in container(docs)["args"]
    cluster_resources = {r[1].split("#")[0] for r in rules_of(operator_role(docs))}
    assert cluster_resources == {"customresourcedefinitions", "namespaces", "mutatingwebhookconfigurations", "oauthapplications"}, \
        "in namespaced mode only cluster-scoped objects are granted cluster-wide"


def _webhook_ha(docs: list[dict]) -> None:
    """Several replicas share one certificate from a Secret (each would otherwise publish its own CA)."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-certs")
    assert volume == {"name": "webhook-certs", "secret": {"secretName": "webhook-tls", "defaultMode": 0o440}}
    assert {"name": "webhook-certs", "mountPath": WEBHOOK_CERT_DIR, "readOnly": True} in container(docs)["volumeMounts"]
    assert pod["securityContext"]["fsGroup"] == 65532


def _metrics(docs: list[dict]) -> None:
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    assert "--metrics-bind-address=:9090" in container(docs)["args"]


def _connect(docs: list[dict]) -> None:
    service = one(docs, "Service")
    ingress = one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["tls"] == [{"hosts": ["workspace-secrets.example.com"], "secretName": "connect-tls"}]
    rules = rules_of(operator_role(docs))
    assert {("workspace-secrets.io", r, "patch") for r in ("usertokens", "usertokens/status")} <= rules
    assert rules_of(one(docs, "Role")) == {("", "secrets#github-oauth", "get")}, "the client Secret, by name, nothing else"
    application = one(docs, "OAuthApplication")
    assert application["metadata"]["name"] == "github" and application["spec"]["clientSecretRef"]["name"] == "github-oauth"
    assert application["spec"]["allowedNamespaces"] == ["workspaces-*"]
    assert {"--connect-port=8000", "--connect-base-url=https://workspace-secrets.example.com",
            "--connect-user-header=X-Auth-Request-User", "--connect-trusted-proxies=10.0.0.0/8",
            "--connect-signing-key-file=/var/run/workspace-secrets-operator/connect-signing-key/signing-key"} <= set(container(docs)["args"])
    volume = next(v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "connect-signing-key")
    assert volume["secret"]["secretName"] == "wso-connect-signing-key"


def _providers(docs: list[dict]) -> None:
    credentials = one(docs, "Role")
    assert credentials["metadata"]["namespace"] == "wso-system"
    assert rules_of(credentials) == {("", "secrets#aws-admin", "get"), ("", "secrets#pg-admin", "get")}
    assert ("", "serviceaccounts/token", "create") in rules_of(operator_role(docs))
    config_map = named(docs, "ConfigMap", f"wso-{CHART_NAME}-providers")
    assert yaml.safe_load(config_map["data"]["providers.yaml"]) == {"providers": PROVIDERS}
    args = container(docs)["args"]
    assert f"--providers-config={PROVIDERS_DIR}/providers.yaml" in args and "--operator-namespace=wso-system" in args
    assert {"name": "providers", "mountPath": PROVIDERS_DIR, "readOnly": True} in container(docs)["volumeMounts"]
    assert not of_kind(docs, "Secret"), "the chart must never carry credentials"


def _token_provider_only(docs: list[dict]) -> None:
    assert ("", "serviceaccounts/token", "create") in rules_of(operator_role(docs))
    assert not of_kind(docs, "Role"), "no credentialsSecret: no Secret to read in the release namespace"


def _aws_provider_only(docs: list[dict]) -> None:
    assert ("", "serviceaccounts/token", "create") not in rules_of(operator_role(docs))
    assert rules_of(one(docs, "Role")) == {("", "secrets#aws-admin", "get")}


def _peering(docs: list[dict]) -> None:
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "RollingUpdate"}
    assert "--peering=wso-workspace-secrets-operator" in container(docs)["args"]
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    assert one(docs, "ClusterKopfPeering")["metadata"]["name"] == "wso-workspace-secrets-operator"
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in rules_of(operator_role(docs))
    # kopf's peering CRDs are every kopf operator's: never the chart's, even with peering (apply them yourself).
    assert not {d["metadata"]["name"] for d in of_kind(docs, "CustomResourceDefinition")} & KOPF_PEERING_CRDS


def _network_policy(docs: list[dict]) -> None:
    policy = one(docs, "NetworkPolicy")
    ports = [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]]
    assert ports == ["health", "metrics"] and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["ingress"][1]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def _crds_off(docs: list[dict]) -> None:
    assert not of_kind(docs, "CustomResourceDefinition")


def _crds_not_kept(docs: list[dict]) -> None:
    crds = of_kind(docs, "CustomResourceDefinition")
    assert crds and all("annotations" not in d["metadata"] for d in crds), "crds.keep=false: uninstall deletes them"


def _leader_election(docs: list[dict]) -> None:
    deployment = one(docs, "Deployment")
    # Only the leader is Ready (/readyz): a RollingUpdate could never replace it, and a PDB would block draining it.
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not of_kind(docs, "PodDisruptionBudget")
    args = container(docs)["args"]
    assert [a for a in args if a.startswith("--leader-elect")] == [
        "--leader-elect", f"--leader-election-id=wso-{CHART_NAME}", "--leader-election-namespace=wso-system",
        "--leader-election-lease-duration=15s", "--leader-election-renew-deadline=10s", "--leader-election-retry-period=2s"]
    assert not any(a.startswith("--peering") for a in args)
    role = named(docs, "Role", f"wso-{CHART_NAME}-leader-election")
    assert role["metadata"]["namespace"] == "wso-system"
    assert rules_of(role) == {("coordination.k8s.io", f"leases#wso-{CHART_NAME}", "get"),
                              ("coordination.k8s.io", f"leases#wso-{CHART_NAME}", "update"),
                              ("coordination.k8s.io", "leases", "create")}, "its own Lease by name; only create unnamed"
    binding = named(docs, "RoleBinding", f"wso-{CHART_NAME}-leader-election")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"wso-{CHART_NAME}", "namespace": "wso-system"}]
    assert not {r for r in rules_of(operator_role(docs)) if r[1].startswith("leases")}, "no cluster-wide Lease rights"


def _single_replica_no_election(docs: list[dict]) -> None:
    assert not any(a.startswith("--leader-elect") for a in container(docs)["args"])
    assert not of_kind(docs, "Role")


def _security_overrides(docs: list[dict]) -> None:
    """Overrides merge into the restricted defaults key by key; null removes a key (OpenShift's SCC assigns ids)."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}, "fsGroupChangePolicy": "OnRootMismatch"}
    assert container(docs)["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "Localhost", "localhostProfile": "operator.json"}}


def _pod_extras(docs: list[dict]) -> None:
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["revisionHistoryLimit"] == 3
    assert pod["topologySpreadConstraints"] == [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app.kubernetes.io/name": CHART_NAME, "app.kubernetes.io/instance": "wso"}}},
        {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
         "labelSelector": {"matchLabels": {"team": "platform"}}}]
    assert {"name": "corp-ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    main = container(docs)
    assert {"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True} in main["volumeMounts"]
    assert main["env"][-2:] == [{"name": "OLD_STYLE", "value": "1"}, {"name": "EXTRA", "value": "yes"}], "operator.extraEnv, then extraEnv"
    template = deployment["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "platform" and template["annotations"] == {"example.com/owner": "platform"}


def _enterprise_network(docs: list[dict]) -> None:
    main = container(docs)
    assert "--ca-bundle-file=/etc/workspace-secrets-operator/ca-bundle/corporate.pem" in main["args"]
    assert {"name": "ca-bundle", "mountPath": "/etc/workspace-secrets-operator/ca-bundle", "readOnly": True} in main["volumeMounts"]
    volume = next(v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "ca-bundle")
    assert volume == {"name": "ca-bundle", "configMap": {"name": "corporate-ca", "items": [{"key": "corporate.pem", "path": "corporate.pem"}]}}
    env = {e["name"]: e.get("value") for e in main["env"]}
    assert env["HTTPS_PROXY"] == "http://proxy.example.com:3128" and env["HTTP_PROXY"] == "http://proxy.example.com:3128"
    assert env["NO_PROXY"] == ".example.com,10.0.0.0/8,$(KUBERNETES_SERVICE_HOST),kubernetes.default.svc", "the API server never through the proxy"


def _aggregate_roles(docs: list[dict]) -> None:
    view = named(docs, "ClusterRole", f"wso-{CHART_NAME}-view")
    edit = named(docs, "ClusterRole", f"wso-{CHART_NAME}-edit")
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k in view["metadata"]["labels"] if k.startswith(aggregate)} == {aggregate + r for r in ("view", "edit", "admin")}
    assert {k for k in edit["metadata"]["labels"] if k.startswith(aggregate)} == {aggregate + r for r in ("edit", "admin")}
    assert all(verb in {"get", "list", "watch"} for _, _, verb in rules_of(view))
    # edit + view is at most the shipped users' role: nothing on status or finalizers but get, no deletecollection,
    # no write to OAuthApplications.
    user_role = rules_of(named(docs, "ClusterRole", f"wso-{CHART_NAME}-user"))
    oauth_reader = rules_of(named(docs, "ClusterRole", f"wso-{CHART_NAME}-user-oauth-applications"))
    assert rules_of(edit) | rules_of(view) <= user_role | oauth_reader, (rules_of(edit) | rules_of(view)) - user_role - oauth_reader


def _cert_manager(docs: list[dict]) -> None:
    """No issuerRef: a self-signed Issuer signs a CA Certificate, whose CA Issuer signs the serving certificate;
    its Secret is the certificate directory; the operator is told the Certificate; caBundle is injected."""
    full = f"wso-{CHART_NAME}"
    serving = named(docs, "Certificate", f"{full}-webhook")
    assert serving["spec"]["dnsNames"] == [f"{full}-webhook.wso-system.svc", f"{full}-webhook.wso-system.svc.cluster.local"]
    assert serving["spec"]["issuerRef"] == {"name": f"{full}-webhook-ca", "kind": "Issuer", "group": "cert-manager.io"}
    assert (serving["spec"]["duration"], serving["spec"]["renewBefore"]) == ("2160h", "360h")
    ca = named(docs, "Certificate", f"{full}-webhook-ca")
    assert ca["spec"]["isCA"] is True and ca["spec"]["issuerRef"]["name"] == f"{full}-selfsigned"
    assert named(docs, "Issuer", f"{full}-selfsigned")["spec"] == {"selfSigned": {}}
    assert named(docs, "Issuer", f"{full}-webhook-ca")["spec"] == {"ca": {"secretName": ca["spec"]["secretName"]}}
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-certs")
    assert volume == {"name": "webhook-certs", "secret": {"secretName": serving["spec"]["secretName"], "defaultMode": 0o440}}
    assert pod["securityContext"]["fsGroup"] == 65532
    assert f"--webhook-cert-manager-certificate=wso-system/{full}-webhook" in container(docs)["args"]
    config = one(docs, "MutatingWebhookConfiguration")
    assert config["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": f"wso-system/{full}-webhook"}
    assert "caBundle" not in config["webhooks"][0]["clientConfig"]


def _cert_manager_issuer(docs: list[dict]) -> None:
    assert [c["metadata"]["name"] for c in of_kind(docs, "Certificate")] == [f"wso-{CHART_NAME}-webhook"]
    assert not of_kind(docs, "Issuer"), "the platform's issuer: no self-signed chain"
    assert one(docs, "Certificate")["spec"]["issuerRef"] == {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert one(docs, "Deployment")["spec"]["replicas"] == 2, "one certificate for every replica"


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
    "webhook-ha": Variant({"replicaCount": 2, "peering": {"enabled": True}, "webhook": {"enabled": True, "certSecret": "webhook-tls"}},
                          _webhook_ha),
    "metrics": Variant({"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}}, _metrics),
    "connect": Variant({"connect": {"enabled": True, "publicURL": "https://workspace-secrets.example.com",
                                    "auth": {"userHeader": "X-Auth-Request-User", "trustedProxies": ["10.0.0.0/8"]},
                                    "signingKey": {"secretName": "wso-connect-signing-key"},
                                    "applications": [GITHUB_APPLICATION],
                                    "ingress": {"enabled": True, "tlsSecretName": "connect-tls"}}}, _connect),
    "providers": Variant({"providers": PROVIDERS}, _providers),
    "providers-token-only": Variant({"providers": [CLUSTER_TOKENS]}, _token_provider_only),
    "providers-aws-only": Variant({"providers": [PROVIDERS[1]]}, _aws_provider_only),
    "peering-ha": Variant({"replicaCount": 2, "peering": {"enabled": True}}, _peering),
    "crds-off": Variant({"crds": {"enabled": False}}, _crds_off),
    "crds-not-kept": Variant({"crds": {"keep": False}}, _crds_not_kept),
    "leader-election-ha": Variant({"replicaCount": 2}, _leader_election),
    "leader-election-off": Variant({"leaderElection": {"enabled": False}}, _single_replica_no_election),
    "security-overrides": Variant({"podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroupChangePolicy": "OnRootMismatch"},
                                   "securityContext": {"seccompProfile": {"type": "Localhost", "localhostProfile": "operator.json"}}},
                                  _security_overrides),
    "pod-extras": Variant({"revisionHistoryLimit": 3, "podLabels": {"team": "platform"}, "podAnnotations": {"example.com/owner": "platform"},
                           "topologySpreadConstraints": [
                               {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
                               {"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
                                "labelSelector": {"matchLabels": {"team": "platform"}}}],
                           "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
                           "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
                           "operator": {"extraEnv": [{"name": "OLD_STYLE", "value": "1"}]},
                           "extraEnv": [{"name": "EXTRA", "value": "yes"}]}, _pod_extras),
    "enterprise-network": Variant({"trustedCABundle": {"configMap": {"name": "corporate-ca", "key": "corporate.pem"}},
                                   "proxy": {"httpsProxy": "http://proxy.example.com:3128", "httpProxy": "http://proxy.example.com:3128",
                                             "noProxy": ".example.com,10.0.0.0/8"}}, _enterprise_network),
    "aggregate-roles": Variant({"rbac": {"aggregateToDefaultRoles": True}}, _aggregate_roles),
    "cert-manager": Variant({"webhook": {"enabled": True, "certManager": {"enabled": True}}}, _cert_manager),
    "cert-manager-issuer-ha": Variant({"replicaCount": 2, "webhook": {"enabled": True, "certManager": {
        "enabled": True, "issuerRef": {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}}}}, _cert_manager_issuer),
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
        ({"providers": [{"name": "aws", "type": "aws-iam", "accessKeyId": "AKIA"}]}, "at '/providers/0': additional properties 'accessKeyId' not allowed"),
        ({"replicaCount": "two"}, "at '/replicaCount'"),
        ({"operator": {"logFormat": "xml"}}, "at '/operator/logFormat'"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
        ({"providers": [{"name": "vault", "type": "vault-kv"}]}, "at '/providers/0/type'"),
        ({"providers": [{"name": "Cluster_Tokens", "type": "kubernetes-token"}]}, "at '/providers/0/name'"),
        ({"providers": [{"name": "aws", "type": "aws-iam", "credentialsSecret": "AWS admin"}]}, "at '/providers/0/credentialsSecret'"),
        ({"providers": [{"type": "aws-iam"}]}, "at '/providers/0': missing property 'name'"),
        ({"providers": {"aws": {"credentialsSecret": "aws-admin"}}}, "at '/providers'"),
        ({"webhook": {"enabled": True, "failurePolicy": "Ignore"}}, "at '/webhook': additional properties 'failurePolicy' not allowed"),
        ({"connect": {"oauthClientSecrets": ["github-oauth"]}}, "at '/connect': additional properties 'oauthClientSecrets' not allowed"),
        ({"connect": {"applications": [{"name": "github", "type": "github", "clientSecretRef": {"name": "github-oauth"}}]}},
         "at '/connect/applications/0': missing property 'allowedNamespaces'"),
        ({"policies": {"platformUsers": "system:serviceaccount:coder:coder"}}, "at '/policies/platformUsers'"),
        ({"crds": {"enable": False}}, "at '/crds': additional properties 'enable' not allowed"),
        ({"webhook": {"certManager": {"issuer": {"name": "ca"}}}}, "at '/webhook/certManager': additional properties 'issuer' not allowed"),
        ({"proxy": {"httpsProxy": "proxy.example.com:3128"}}, "at '/proxy/httpsProxy'"),
        ({"proxy": {"httpsProxy": "https://proxy.example.com:3128"}}, "at '/proxy/httpsProxy'"),
        ({"proxy": {"httpProxy": "http://proxy.example.com:3128/path"}}, "at '/proxy/httpProxy'"),
        ({"leaderElection": {"enabled": "yes"}}, "at '/leaderElection/enabled'"),
        ({"leaderElection": {"leaseDuration": 2}}, "at '/leaderElection/leaseDuration'"),
    ],
    ids=["top-level-typo", "nested-typo", "inline-credentials", "wrong-type", "bad-enum", "bad-namespace-name",
         "unknown-provider-type", "bad-provider-name", "bad-credentials-secret-name", "provider-without-name",
         "old-providers-map", "operator-owned-webhook-field", "removed-oauth-client-secrets",
         "application-without-allowed-namespaces", "platform-users-not-a-list", "crds-typo", "cert-manager-typo",
         "proxy-without-scheme", "https-proxy", "proxy-with-a-path", "leader-election-not-a-boolean", "lease-too-short"],
)
def test_values_schema_rejects_mistakes(cluster, values: dict, message: str) -> None:
    result = cluster.helm("template", "wso", str(CHART), "--kube-version", KUBE_VERSION, "-f", "-",
                          input=json.dumps(values), check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr and message in result.stderr, result.stderr


@pytest.mark.parametrize(
    "values,message",
    [
        ({"replicaCount": 2, "leaderElection": {"enabled": False}}, "replicaCount > 1 needs leader election"),
        ({"replicaCount": 2, "webhook": {"enabled": True}},
         "replicaCount > 1 with webhook.enabled needs webhook.certManager.enabled or webhook.certSecret"),
        ({"leaderElection": {"enabled": True}, "peering": {"enabled": True}}, "leaderElection.enabled and peering.enabled exclude each other"),
        ({"webhook": {"enabled": True, "certSecret": "tls", "certManager": {"enabled": True}}},
         "webhook.certManager.enabled and webhook.certSecret exclude each other"),
        ({"webhook": {"certManager": {"enabled": True}}}, "webhook.certManager.enabled needs webhook.enabled"),
        ({"rbac": {"aggregateToDefaultRoles": True}, "policies": {"enabled": False}}, "rbac.aggregateToDefaultRoles needs policies.enabled"),
        ({"connect": {"enabled": True}}, "connect.publicURL is required with connect.enabled"),
        ({"providers": [CLUSTER_TOKENS, {"name": "cluster-tokens", "type": "aws-iam"}]},
         'providers: the name "cluster-tokens" is used twice'),
        ({"connect": {"enabled": True, "publicURL": "https://x.example.com", "auth": {"userHeader": "X-User"}}},
         "connect.auth.userHeader needs connect.auth.trustedProxies"),
        ({"connect": {"applications": [{"name": "gh", "type": "github", "allowedNamespaces": ["*"]}]}},
         'connect.applications: "gh" (type github) needs clientSecretRef'),
        ({"replicaCount": 2, "leaderElection": {"leaseDuration": 12, "renewDeadline": 10, "retryPeriod": 2}},
         "leaderElection: needs leaseDuration > renewDeadline + retryPeriod"),
    ],
    ids=["several-replicas-need-leader-election", "ha-webhook-needs-a-shared-certificate", "election-or-peering",
         "one-certificate-source", "cert-manager-needs-the-webhook", "aggregation-needs-the-policies", "connect-needs-a-public-url",
         "duplicate-provider-name", "user-header-needs-trusted-proxies", "application-needs-client-secret", "lease-durations"],
)
def test_inconsistent_values_are_refused(cluster, values: dict, message: str) -> None:
    result = cluster.helm("template", "wso", str(CHART), "--kube-version", KUBE_VERSION, "-f", "-",
                          input=json.dumps(values), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


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
    # The session's CRDs are already installed (from crds/, not by Helm): the fresh-cluster tests below install
    # the chart's own.
    values.setdefault("crds", {})["enabled"] = False
    docs = render(cluster, values, namespace=scratch_namespaces["release"], release=f"dry-{name}")
    if of_kind(docs, "OAuthApplication"):
        assert OAUTH_APPLICATIONS_CRD in cluster.crd_names, "crds/ has no OAuthApplication CRD"
    servable = [d for d in docs if d["kind"] not in KINDS_NEEDING_THIRD_PARTY_CRDS]
    skipped = sorted(d["kind"] for d in docs if d["kind"] in KINDS_NEEDING_THIRD_PARTY_CRDS)
    assert skipped == {"metrics": ["ServiceMonitor"], "peering-ha": ["ClusterKopfPeering"], "webhook-ha": ["ClusterKopfPeering"],
                       "cert-manager": ["Certificate", "Certificate", "Issuer", "Issuer"],
                       "cert-manager-issuer-ha": ["Certificate"]}.get(name, [])
    result = cluster.kubectl("apply", "--dry-run=server", "-o", "name", "-f", "-", input=yaml.safe_dump_all(servable))
    assert len(result.stdout.split()) == len(servable), result.stdout
    assert "Warning" not in result.stderr, result.stderr  # e.g. a Pod Security warning on the Deployment


@dataclass
class Release:
    name: str
    namespace: str
    service_account: str
    kubeconfig: Path  # holds only a TokenRequest token of the ServiceAccount


def helm_install(cluster, release: str, namespace: str, values: dict[str, Any], chart: Path = CHART) -> None:
    """No --wait: there is no kubelet, so the operator's pod stays Pending forever. crds.enabled defaults to false
    here: the session's CRDs were applied from crds/ by the fixtures, not by a release (see test_crds_* below)."""
    values = {**values, "crds": {"enabled": False, **values.get("crds", {})}}
    cluster.helm("install", release, str(chart), "--namespace", namespace, "-f", "-", input=json.dumps(values))


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


def chart_operator_args(cluster, release: Release, workdir: Path) -> list[str]:
    """The operator flags of the installed chart's Deployment, for an operator run out of cluster. Only what
    points into the pod is adapted: --health-probe-bind-address (dropped: OperatorProcess picks its own), the providers
    file (the release's own ConfigMap content, written to a local file), the webhook's certificate
    directory (a local directory instead of the emptyDir), port (a free one) and listen address (loopback)."""
    deployment = json.loads(cluster.kubectl("get", "deployment", f"{release.name}-{CHART_NAME}",
                                            "-n", release.namespace, "-o", "json").stdout)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    local: list[str] = []
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag == "--health-probe-bind-address":
            continue  # OperatorProcess serves (and polls) its own health port
        if flag == "--providers-config":
            config_map = json.loads(cluster.kubectl("get", "configmap", f"{release.name}-{CHART_NAME}-providers",
                                                    "-n", release.namespace, "-o", "json").stdout)
            path = workdir / "providers.yaml"
            path.write_text(config_map["data"][Path(value).name])
            arg = f"{flag}={path}"
        elif flag == "--webhook-cert-dir":
            arg = f"{flag}={workdir / 'webhook-certs'}"
        elif flag == "--webhook-port":
            arg = f"{flag}={free_port()}"
        elif flag == "--webhook-listen-address":
            arg = f"{flag}=127.0.0.1"
        local.append(arg)
    return local


def flag_value(args: list[str], flag: str) -> str:
    return next(a.partition("=")[2] for a in args if a.startswith(f"{flag}="))


def refused_requests(log: str) -> list[str]:
    return [line for line in log.splitlines() if RBAC_DENIED.search(line)]


@pytest.fixture(scope="module")
def cluster_wide_release(cluster, scratch_namespaces, tmp_path_factory) -> Iterator[Release]:
    """The chart's defaults (tenant-isolation policies on, cluster-wide), plus one platform group: the other
    releases of this module run their operators from the same namespace, and this release's cluster-wide
    policies must not refuse them (as in production, two operators in one cluster must know each other)."""
    namespace = scratch_namespaces["release"]
    name = "wso"
    helm_install(cluster, name, namespace, {"policies": {"platformGroups": [f"system:serviceaccounts:{namespace}"]}})
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
            "watch pods --all-namespaces", f"patch pods -n {ns}", f"delete pods -n {ns}", f"patch deployments.apps -n {ns}",
            "watch customresourcedefinitions.apiextensions.k8s.io",
            "watch oauthapplications.workspace-secrets.io", "get oauthapplications.workspace-secrets.io/github",
        ],
        denied=[
            "create oauthapplications.workspace-secrets.io", "patch oauthapplications.workspace-secrets.io/github",
            "update validatingadmissionpolicies.admissionregistration.k8s.io",
            "delete validatingadmissionpolicybindings.admissionregistration.k8s.io",
            f"update configmaps/wso-{CHART_NAME}-tenancy -n {cluster_wide_release.namespace}",
            f"get configmaps -n {ns}", f"create pods -n {ns}", f"delete deployments.apps -n {ns}",
            f"update pods -n {ns}",
            "delete namespaces", "list namespaces", "list nodes", f"create serviceaccounts --subresource=token -n {ns}",
            f"create workspacesecrets.workspace-secrets.io -n {ns}", f"delete workspacesecrets.workspace-secrets.io -n {ns}",
            "create mutatingwebhookconfigurations.admissionregistration.k8s.io", "create clusterrolebindings.rbac.authorization.k8s.io",
            f"create rolebindings.rbac.authorization.k8s.io -n {ns}", "impersonate serviceaccounts",
            "delete customresourcedefinitions.apiextensions.k8s.io", f"create usertokens.workspace-secrets.io -n {ns}",
        ],
    )
    # A real refusal, with the token: also shows that RBAC_DENIED (the operator-log check) matches the API
    # server's wording.
    refused = cluster.kubectl("--kubeconfig", str(cluster_wide_release.kubeconfig), "get", "configmaps", "-n", ns, check=False)
    assert refused.returncode != 0 and RBAC_DENIED.search(refused.stderr), refused.stderr


def test_default_install_enforces_the_tenant_isolation_policies(cluster, cluster_wide_release, scratch_namespaces) -> None:
    """The policies are installed by default, name the release's real operator ServiceAccount as a platform
    identity, and the API server enforces them: an impersonated tenant with the chart's user role is refused
    another user's WorkspaceSecret, allowed their own; the operator may write its reserved Secrets."""
    release, ns = cluster_wide_release, scratch_namespaces["team-a"]
    selector = f"app.kubernetes.io/instance={release.name}"
    policies = cluster.kubectl("get", "validatingadmissionpolicies.admissionregistration.k8s.io", "-l", selector, "-o", "name").stdout.split()
    bindings = cluster.kubectl("get", "validatingadmissionpolicybindings.admissionregistration.k8s.io", "-l", selector, "-o", "name").stdout.split()
    assert sorted(p.split("/")[1] for p in policies) == sorted(
        f"{release.name}-{CHART_NAME}-{s}" for s in (*POLICY_SUFFIXES, GUARD_SUFFIX))
    assert len(bindings) == 4
    params = json.loads(cluster.kubectl("get", "configmap", f"{release.name}-{CHART_NAME}-tenancy", "-n", release.namespace,
                                        "-o", "json").stdout)["data"]
    operator_identity = whoami(cluster, release.kubeconfig)
    assert operator_identity in [u.strip() for u in params["platformUsers"].split(",")]
    assert "system:serviceaccount:kube-system:namespace-controller" in params["platformUsers"]

    user_role = f"{release.name}-{CHART_NAME}-user"
    cluster.kubectl("create", "rolebinding", "helm-e2e-users", "-n", ns, f"--clusterrole={user_role}", "--user=alice", "--user=bob")
    cluster.kubectl("create", "role", "helm-e2e-secrets", "-n", ns, "--verb=create,delete", "--resource=secrets")
    cluster.kubectl("create", "rolebinding", "helm-e2e-secrets", "-n", ns, "--role=helm-e2e-secrets", "--user=alice")

    def dry_run(manifest: dict, user: str) -> subprocess.CompletedProcess[str]:
        return cluster.kubectl(f"--as={user}", "-n", ns, "create", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)

    def ws(user: str) -> dict:
        return {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": f"for-{user}"},
                "spec": {"user": user, "workspaceRef": {"kind": "Pod", "name": "none"}}}

    reserved = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ssh-bob-ed25519-0123abcd"}, "stringData": {"v": "x"}}
    isolation = f"ValidatingAdmissionPolicy '{release.name}-{CHART_NAME}-user-isolation'"
    refusal = wait_for(lambda: (r := dry_run(ws("bob"), "alice")).returncode != 0 and isolation in r.stderr and r,
                       timeout=30, what="the chart's user-isolation policy to be enforced")
    assert "'alice' (workspace user 'alice') may not create a WorkspaceSecret for user 'bob'" in refusal.stderr
    assert f"ConfigMap {release.namespace}/{release.name}-{CHART_NAME}-tenancy" in refusal.stderr, "says where platform identities are set"
    assert dry_run(ws("alice"), "alice").returncode == 0
    reserved_refusal = dry_run(reserved, "alice")
    assert reserved_refusal.returncode != 0 and f"{release.name}-{CHART_NAME}-reserved-secrets" in reserved_refusal.stderr, reserved_refusal.stderr
    # The operator itself (the chart's ServiceAccount) is a platform identity.
    assert dry_run(reserved, operator_identity).returncode == 0
    assert cluster.kubectl("get", "secret", "ssh-bob-ed25519-0123abcd", "-n", ns, check=False).returncode != 0


@dataclass
class NestedRun:
    counts: dict[str, int]
    operator_log: str


def run_nested_e2e(cluster, operator_kubeconfig: Path, workdir: Path, *pytest_args: str,
                   operator_args: list[str] | None = None, timeout: float = 400) -> NestedRun:
    """tests/e2e/<file> in a nested pytest on this same cluster, whose operator process authenticates with
    `operator_kubeconfig` only (WSO_E2E_OPERATOR_KUBECONFIG) and gets `operator_args` last
    (WSO_E2E_OPERATOR_EXTRA_ARGS); the tests keep the admin kubeconfig to create workspaces and inspect
    results."""
    # cluster.env() puts the pinned kubectl/helm first on PATH, which the nested session then uses.
    env = {k: v for k, v in cluster.env().items() if k not in {"PYTEST_ADDOPTS", "WSO_E2E_USE_KUBECONFIG"}}
    env.update({"WSO_E2E_KUBECONFIG": str(cluster.kubeconfig), "WSO_E2E_OPERATOR_KUBECONFIG": str(operator_kubeconfig),
                "WSO_E2E_OPERATOR_EXTRA_ARGS": json.dumps(operator_args or [])})
    basetemp, junit = workdir / "nested", workdir / "nested.xml"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *pytest_args, "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", f"--junitxml={junit}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    assert result.returncode == 0, f"nested e2e run failed:\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    log = (basetemp / "operator0" / "operator.log").read_text(errors="replace")
    # The operator of the nested run used the given kubeconfig, every time it started.
    starts = re.findall(r"===== operator start #\d+ \(kubeconfig (\S+)\) =====", log)
    assert starts and set(starts) == {str(operator_kubeconfig)}, starts
    return NestedRun(counts, log)


@pytest.mark.timeout(420)
def test_workspacesecret_suite_passes_with_only_the_chart_rbac(cluster, cluster_wide_release, shared_operator_paused, tmp_path) -> None:
    """tests/e2e/test_workspace_secret.py, run by an operator holding only the chart ServiceAccount's token."""
    run = run_nested_e2e(cluster, cluster_wide_release.kubeconfig, tmp_path, "tests/e2e/test_workspace_secret.py")
    assert run.counts["tests"] >= 10 and run.counts["failures"] == run.counts["errors"] == run.counts["skipped"] == 0, run.counts
    assert refused_requests(run.operator_log) == [], "the operator was refused requests with the chart's RBAC"


@pytest.mark.timeout(240)
def test_kubernetes_token_provider_configured_through_values(cluster, scratch_namespaces, shared_operator_paused, tmp_path) -> None:
    """A kubernetes-token provider from the chart's `providers` value: tests/e2e/test_credentials.py's
    kubernetes-token test, run by an operator holding only the chart ServiceAccount's token and reading the
    release's rendered providers ConfigMap as its --providers-config (with the chart's --operator-namespace)."""
    namespace, name = scratch_namespaces["release"], "wso-tok"
    try:
        helm_install(cluster, name, namespace, {"providers": [CLUSTER_TOKENS]})
        release = Release(name, namespace, f"{name}-{CHART_NAME}",
                          token_kubeconfig(cluster, namespace, f"{name}-{CHART_NAME}", tmp_path / "kubeconfig"))
        team = scratch_namespaces["team-a"]
        assert_permissions(cluster, release.kubeconfig,
                           allowed=[f"create serviceaccounts --subresource=token -n {team}"],
                           denied=[f"create serviceaccounts -n {team}", f"get serviceaccounts -n {team}",
                                   f"create rolebindings.rbac.authorization.k8s.io -n {team}"])
        args = chart_operator_args(cluster, release, tmp_path)
        provider_args = [a for a in args if a.startswith(("--providers-config=", "--operator-namespace="))]
        assert len(provider_args) == 2 and flag_value(args, "--operator-namespace") == namespace
        assert yaml.safe_load(Path(flag_value(args, "--providers-config")).read_text()) == {"providers": [CLUSTER_TOKENS]}
        run = run_nested_e2e(cluster, release.kubeconfig, tmp_path, "tests/e2e/test_credentials.py", "-k", "kubernetes_token",
                             operator_args=provider_args, timeout=200)
        assert run.counts == {"tests": 1, "failures": 0, "errors": 0, "skipped": 0}, run.counts
        # The chart's file was the one in use: its only provider was configured, the test suite's own
        # configuration (which also has aws-dev) was overridden.
        assert "dynamic-credential provider 'cluster-tokens' (kubernetes-token) configured" in run.operator_log
        assert "'aws-dev'" not in run.operator_log
        assert refused_requests(run.operator_log) == [], "the operator was refused requests with the chart's RBAC"
    finally:
        cluster.helm("uninstall", name, "--namespace", namespace, check=False)


# --- the webhook ----------------------------------------------------------------------------------------
class _ServiceConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1, verifying the certificate for the Service's DNS name, as the API server does."""

    def connect(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def admission_review(url_host: str, port: int, path: str, ca_pem: str, namespace: str, workspace_secret: str) -> dict:
    """POST a pod-creation AdmissionReview (dry run) to the webhook at `path`, trusting only `ca_pem`."""
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "probe", "namespace": namespace, "labels": {c.LABEL_WORKSPACE_SECRET: workspace_secret}},
           "spec": {"containers": [{"name": "probe", "image": "registry.invalid/probe:1"}]}}
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "6f1c1c8e-1b1e-4c43-9d1a-000000000001", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"}, "namespace": namespace, "operation": "CREATE",
        "userInfo": {"username": "e2e"}, "object": pod, "dryRun": True}}
    connection = _ServiceConnection(url_host, port, context=ssl.create_default_context(cadata=ca_pem), timeout=10)
    try:
        connection.request("POST", path, body=json.dumps(review), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200, response.status
        return json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.timeout(180)
def test_webhook_runs_with_the_chart_flags_and_rbac(cluster, shared_operator_paused, tmp_path) -> None:
    """The chart's webhook flags and RBAC, with the operator run out of cluster on the chart ServiceAccount's
    token: it takes over the chart's MutatingWebhookConfiguration changing nothing but caBundle, serves TLS
    for the Service's name with that CA at the configured path; `helm upgrade` keeps caBundle and the
    operator then has nothing to repair (no fight); `helm uninstall` deletes the configuration."""
    namespace = _create_namespace(cluster, "wso-e2e-helm-wh-", {"pod-security.kubernetes.io/enforce": "restricted"})
    name = "wso-hook"
    config_name = f"{name}-{CHART_NAME}-webhook"
    mwc = "mutatingwebhookconfigurations.admissionregistration.k8s.io"

    def live() -> dict:
        return json.loads(cluster.kubectl("get", mwc, config_name, "-o", "json").stdout)

    operator = None
    try:
        helm_install(cluster, name, namespace, {"webhook": {"enabled": True}})
        release = Release(name, namespace, f"{name}-{CHART_NAME}",
                          token_kubeconfig(cluster, namespace, f"{name}-{CHART_NAME}", tmp_path / "kubeconfig"))
        assert_permissions(
            cluster, release.kubeconfig,
            allowed=[f"get {mwc}/{config_name}", f"update {mwc}/{config_name}", f"create {mwc}"],
            denied=[f"get {mwc}/workspace-secrets.io", f"update {mwc}/workspace-secrets.io", f"patch {mwc}/{config_name}",
                    f"delete {mwc}/{config_name}", f"list {mwc}", f"get validatingwebhookconfigurations.admissionregistration.k8s.io/{config_name}"],
        )
        assert "caBundle" not in live()["webhooks"][0]["clientConfig"]
        args = chart_operator_args(cluster, release, tmp_path) + ["--resync-interval=2"]
        assert flag_value(args, "--webhook-configuration") == config_name
        operator = OperatorProcess(str(release.kubeconfig), tmp_path / "operator", *args)
        operator.start()
        ca_bundle = wait_for(lambda: live()["webhooks"][0]["clientConfig"].get("caBundle"), timeout=30,
                             what="the operator's caBundle in the chart's configuration")
        # The chart's rendering differed from the operator's desired entry in caBundle only.
        updates = re.findall(r"MutatingWebhookConfiguration '([^']+)' updated: webhook '[^']+' differs in ([a-zA-Z, ]+)", operator.log_text())
        assert updates == [(config_name, "clientConfig")], updates
        assert live()["metadata"]["annotations"]["meta.helm.sh/release-name"] == name, "still Helm's object"

        # TLS for the Service's DNS name with exactly the published CA, and the path the configuration names.
        hook = live()["webhooks"][0]
        service = hook["clientConfig"]["service"]
        review = admission_review(f"{service['name']}.{service['namespace']}.svc", int(flag_value(args, "--webhook-port")),
                                  service["path"], base64.b64decode(ca_bundle).decode(), namespace, "no-such-workspace")
        assert review["response"]["uid"] == "6f1c1c8e-1b1e-4c43-9d1a-000000000001"
        assert review["response"]["allowed"] is False
        assert "WorkspaceSecret 'no-such-workspace' does not exist" in review["response"]["status"]["message"]

        # helm upgrade: caBundle survives (the chart never sets it) and the operator finds nothing to repair.
        cluster.helm("upgrade", name, str(CHART), "--namespace", namespace, "--reuse-values", "--set", "podAnnotations.upgraded=yes")
        after_upgrade = live()
        assert after_upgrade["webhooks"][0]["clientConfig"].get("caBundle") == ca_bundle
        time.sleep(5)  # two and a half --resync-interval periods
        settled = live()
        assert settled["metadata"]["resourceVersion"] == after_upgrade["metadata"]["resourceVersion"], "someone rewrote it"
        assert len(re.findall(r"MutatingWebhookConfiguration '[^']+' updated", operator.log_text())) == 1
        operator.stop()
        assert refused_requests(operator.log_text()) == [], "the operator was refused requests with the chart's RBAC"

        cluster.helm("uninstall", name, "--namespace", namespace)
        gone = cluster.kubectl("get", mwc, config_name, check=False)
        assert gone.returncode != 0 and "NotFound" in gone.stderr, "a fail-closed configuration was left behind"
    finally:
        if operator is not None:
            operator.stop()
        cluster.helm("uninstall", name, "--namespace", namespace, check=False)
        _delete_namespaces(cluster, namespace)


# --- namespaced mode --------------------------------------------------------------------------------
def test_namespaced_mode_smoke(cluster, cluster_wide_release, shared_operator_paused, tmp_path) -> None:
    """Namespaced RBAC with providers: the admin credentials Secret readable by name in the release
    namespace only, TokenRequest only in the watched namespace; a token credential is minted with it.
    Installed next to the module's cluster-wide release (whose policies treat this namespace's
    ServiceAccounts as platform identities); its own policies bind the watched namespace only."""
    release_ns = cluster_wide_release.namespace
    watched = _create_namespace(cluster, "wso-e2e-watched-")
    unwatched = _create_namespace(cluster, "wso-e2e-unwatched-")
    name = "wso-ns"
    # The aws-iam provider is only built at start-up (a boto3 client; no request is made): enough to prove the
    # operator reads its credentials Secret with the chart's Role. Placeholder values, not credentials.
    aws = {"name": "aws-dev", "type": "aws-iam", "credentialsSecret": "aws-admin", "allow": {"namespaces": [watched]},
           "config": {"region": "us-east-1", "endpointURL": "http://127.0.0.1:9"}}
    try:
        with cluster.api_client() as api_client:
            k8s.CoreV1Api(api_client).create_namespaced_secret(release_ns, {"metadata": {"name": "aws-admin"}, "stringData": {
                "AWS_ACCESS_KEY_ID": "AKIAPLACEHOLDER", "AWS_SECRET_ACCESS_KEY": "placeholder-not-a-credential"}})
        helm_install(cluster, name, release_ns, {"watchNamespaces": [watched], "providers": [CLUSTER_TOKENS, aws]})
        release = Release(name, release_ns, f"{name}-{CHART_NAME}",
                          token_kubeconfig(cluster, release_ns, f"{name}-{CHART_NAME}", tmp_path / "kubeconfig"))
        assert_permissions(
            cluster, release.kubeconfig,
            allowed=[f"list secrets -n {watched}", f"create secrets -n {watched}",
                     f"patch workspacesecrets.workspace-secrets.io --subresource=status -n {watched}",
                     "watch namespaces", "watch customresourcedefinitions.apiextensions.k8s.io",
                     f"get secrets/aws-admin -n {release_ns}", f"create serviceaccounts --subresource=token -n {watched}"],
            denied=[f"list secrets -n {unwatched}", f"get secrets -n {unwatched}", f"get secrets -n {release_ns}",
                    f"get secrets/other -n {release_ns}", f"list secrets -n {release_ns}",
                    "list secrets --all-namespaces", f"list workspacesecrets.workspace-secrets.io -n {unwatched}",
                    "list workspacesecrets.workspace-secrets.io --all-namespaces", f"get deployments.apps -n {unwatched}",
                    f"create events -n {unwatched}", f"get configmaps -n {watched}", f"create pods -n {watched}",
                    f"delete pods -n {unwatched}",
                    f"create serviceaccounts --subresource=token -n {unwatched}", "delete namespaces"],
        )
        args = chart_operator_args(cluster, release, tmp_path)
        assert f"--namespace={watched}" in args and flag_value(args, "--operator-namespace") == release_ns
        operator = OperatorProcess(str(release.kubeconfig), tmp_path / "operator", *args)
        operator.start()
        try:
            with cluster.api_client() as api_client:
                api = Api(api_client)
                api.create_ws(unwatched, "ignored", {"user": "zoe", "workspaceRef": {"kind": "Pod", "name": "none"}})
                api.create_deployment(watched, "ws-amy", user="amy")
                api.create_ws(watched, "amy", {"user": "amy", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ws-amy"}})
                api.wait_condition(watched, "amy")
                api.wait_condition(watched, "amy", type_="WorkspaceBound")
                # The namespaced Secret watch works with the Role: a deleted workspace Secret comes back.
                original = api.secret_digests(watched, "amy")
                api.core.delete_namespaced_secret("amy", watched)
                wait_for(lambda: api.secret_digests(watched, "amy") == original, timeout=20, what="deleted Secret restored")
                assert not (api.get_ws(unwatched, "ignored") or {}).get("status"), "an unwatched namespace was reconciled"
                assert api.get_secret(unwatched, "ignored") is None
                # A token from the chart-configured provider, minted with the watched namespace's Role.
                api.core.create_namespaced_service_account(watched, {"metadata": {"name": "ci-bot"}})
                api.create_ws(watched, "tok", {"user": "amy", "workspaceRef": {"kind": "Pod", "name": "not-yet"}, "credentials": [
                    {"name": "kube", "provider": "cluster-tokens", "lifecycle": "WhileExists", "parameters": {"serviceAccount": "ci-bot"}}]})
                api.wait_condition(watched, "tok")
                assert "kube.token" in (api.secret_digests(watched, "tok") or {})
        finally:
            operator.stop()
        log = operator.log_text()
        for provider in ("'cluster-tokens' (kubernetes-token)", "'aws-dev' (aws-iam)"):
            assert f"dynamic-credential provider {provider} configured" in log, provider
        assert refused_requests(log) == [], "the operator was refused requests with the chart's namespaced RBAC"
        cluster.helm("uninstall", name, "--namespace", release_ns)
        assert cluster.kubectl("get", "role,rolebinding", "-n", watched, "-o", "name").stdout.strip() == ""
    finally:
        cluster.helm("uninstall", name, "--namespace", release_ns, check=False)
        cluster.kubectl("delete", "secret", "aws-admin", "-n", release_ns, "--ignore-not-found", check=False)
        _delete_namespaces(cluster, watched, unwatched)


# --- uninstall ----------------------------------------------------------------------------------------
INSTALLABLE_EVERYTHING = {
    "webhook": {"enabled": True},
    "metrics": {"enabled": True},
    "connect": {"enabled": True, "publicURL": "https://workspace-secrets.example.com",
                "auth": {"userHeader": "X-Forwarded-User", "trustedProxies": ["10.0.0.0/8"]},
                "signingKey": {"secretName": "connect-signing-key"},
                "applications": [{**GITHUB_APPLICATION, "name": "helm-e2e-github"}],
                "ingress": {"enabled": True}},
    "providers": PROVIDERS,
    "networkPolicy": {"enabled": True},
}
RELEASE_KINDS = ("serviceaccounts,configmaps,deployments.apps,replicasets.apps,pods,services,roles.rbac.authorization.k8s.io,"
                 "rolebindings.rbac.authorization.k8s.io,networkpolicies.networking.k8s.io,ingresses.networking.k8s.io")
CLUSTER_KINDS = ("clusterroles.rbac.authorization.k8s.io,clusterrolebindings.rbac.authorization.k8s.io,"
                 "mutatingwebhookconfigurations.admissionregistration.k8s.io,"
                 "validatingadmissionpolicies.admissionregistration.k8s.io,"
                 "validatingadmissionpolicybindings.admissionregistration.k8s.io,oauthapplications.workspace-secrets.io")


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
        assert {"MutatingWebhookConfiguration", "Ingress", "NetworkPolicy", "ClusterRole", "Role", "Service", "ConfigMap",
                "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "OAuthApplication"} <= kinds
        before = wait_for(lambda: (found := leftovers()) and any(n.startswith("pod/") for n in found) and found,
                          timeout=30, what="the release's objects and pod")
        assert len(before) >= len(manifest)
        cluster.helm("uninstall", name, "--namespace", namespace)
        # Helm deletes its objects; the garbage collector then removes the ReplicaSet and its Pod. The policies'
        # parameters are kept (a binding that outlives them refuses everything it matches): the one leftover,
        # deleted by hand as NOTES says, once the policies are gone -- and nothing is refused meanwhile.
        params = f"configmap/{name}-workspace-secrets-operator-tenancy"
        wait_for(lambda: leftovers() == [params], timeout=60, what="only the policies' parameters left")
        probe = {"apiVersion": "workspace-secrets.io/v1alpha1", "kind": "WorkspaceSecret", "metadata": {"name": "after-uninstall"},
                 "spec": {"user": "amy", "workspaceRef": {"kind": "Pod", "name": "p"}}}
        assert cluster.kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(probe)).returncode == 0
        cluster.kubectl("delete", "-n", namespace, params)
        wait_for(lambda: leftovers() == [], timeout=60, what="no object of the release left")
        for crd in cluster.crd_names:
            cluster.kubectl("get", "crd", crd)  # kept, as Helm does with crds/
        assert cluster.helm("list", "-n", namespace, "-q").stdout.strip() == ""
    finally:
        cluster.helm("uninstall", name, "--namespace", namespace, check=False)
        _delete_namespaces(cluster, namespace)


# --- the CRDs: install, upgrade from the previous chart, uninstall ------------------------------------------
@pytest.fixture
def bare_cluster(cluster, tmp_path) -> Iterator[Any]:
    """A second local control plane with no CRD at all (the session's has crds/ applied by the fixtures, not
    by a release): here the chart owns the CRDs, as in a real cluster. About 10 s to start."""
    if cluster.external:
        pytest.skip("needs the local control plane binaries (a second, empty cluster)")
    plane = ControlPlane(bin_dir=cluster.control_plane.bin_dir).start()
    scratch = tmp_path / "bare-home"
    scratch.mkdir()
    try:
        yield replace(cluster, kubeconfig=plane.kubeconfig, scratch=scratch, control_plane=plane, crd_names=[])
    finally:
        plane.stop()


def _schema_paths(docs: list[dict]) -> set[str]:
    """Every property of every CRD's schema, as '<crd>/<version>:<dotted path>'."""
    paths: set[str] = set()

    def walk(prefix: str, node: dict) -> None:
        for key, child in (node.get("properties") or {}).items():
            paths.add(f"{prefix}.{key}" if not prefix.endswith(":") else f"{prefix}{key}")
            walk(f"{prefix}.{key}" if not prefix.endswith(":") else f"{prefix}{key}", child)
        if isinstance(node.get("items"), dict):
            walk(f"{prefix}[]" if not prefix.endswith(":") else prefix, node["items"])

    for doc in docs:
        for version in doc["spec"]["versions"]:
            walk(f"{doc['metadata']['name']}/{version['name']}:", version["schema"]["openAPIV3Schema"])
    return paths


def _previous_chart_crds() -> list[dict]:
    with tarfile.open(PREVIOUS_CHART) as archive:
        members = [m for m in archive.getmembers() if "/crds/" in m.name and m.name.endswith(".yaml")]
        assert members, "the 0.3.0 package has no crds/"
        return [d for m in members for d in yaml.safe_load_all(archive.extractfile(m).read()) if d]


def _repository_crds() -> list[dict]:
    return [d for path in sorted((REPO_ROOT / "crds").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def _chart_crds() -> list[dict]:
    """The CRDs the chart owns: crds/ but kopf's peering CRDs, which every kopf operator shares (never rendered)."""
    return [d for d in _repository_crds() if d["metadata"]["name"] not in KOPF_PEERING_CRDS]


def _live_crds(cluster) -> dict[str, dict]:
    items = json.loads(cluster.kubectl("get", "crd", "-o", "json").stdout)["items"]
    return {i["metadata"]["name"]: i for i in items}


def _readme_script(marker: str) -> str:
    """A shell block of the chart README, exactly as documented (between <!-- marker --> and <!-- /marker -->)."""
    readme = (CHART / "README.md").read_text()
    block = re.search(rf"<!-- {marker} -->\s*```sh\n(.*?)```\s*<!-- /{marker} -->", readme, re.DOTALL)
    assert block, f"the chart README has a shell block between <!-- {marker} --> markers"
    return block[1]


def _run_readme_script(cluster, marker: str, **env: str) -> None:
    """Run it with bash from the repository root (the README's chart path), the pinned kubectl and helm first on PATH."""
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", _readme_script(marker)], capture_output=True, text=True, timeout=120,
                            cwd=REPO_ROOT, env={**cluster.env(), **env}, check=False)
    assert result.returncode == 0, f"README block {marker} failed:\n{result.stderr[-3000:]}"


@pytest.mark.timeout(300)
def test_upgrade_from_0_3_0_adopts_and_upgrades_the_crds(bare_cluster) -> None:
    """0.3.0 installed its CRDs from crds/ (Helm never owned or upgraded them). After the README's one-time
    adoption step (Helm's ownership label and annotations), `helm upgrade` to this chart owns its three CRDs and
    applies their changes; `helm uninstall` then keeps them (crds.keep). kopf's peering CRDs, which 0.3.0 also
    installed, are shared with every kopf operator: neither adopted nor changed nor deleted, before or after."""
    cluster, name, namespace = bare_cluster, "wso", "wso-system"
    cluster.kubectl("create", "namespace", namespace)
    old_crds, new_crds = _previous_chart_crds(), _chart_crds()
    added = _schema_paths(new_crds) - _schema_paths(old_crds)
    assert added, "crds/ has no schema change since chart 0.3.0: nothing for the upgrade to prove"
    assert {d["metadata"]["name"] for d in new_crds} | KOPF_PEERING_CRDS >= {d["metadata"]["name"] for d in old_crds}
    assert KOPF_PEERING_CRDS <= {d["metadata"]["name"] for d in old_crds}, "0.3.0 installed kopf's peering CRDs"

    cluster.helm("install", name, str(PREVIOUS_CHART), "--namespace", namespace)
    live = _live_crds(cluster)
    assert set(live) == {d["metadata"]["name"] for d in old_crds}
    kopf_before = {n: (live[n]["metadata"].get("labels"), live[n]["metadata"].get("annotations"), live[n]["spec"])
                   for n in KOPF_PEERING_CRDS}
    assert not _schema_paths(live.values()) & added, "0.3.0's schemas already have the new properties"
    assert all("meta.helm.sh/release-name" not in (c["metadata"].get("annotations") or {}) for c in live.values()), \
        "Helm's crds/ directory does not make the release own the CRDs"

    # Without the adoption step Helm refuses to take over objects it did not create (and changes nothing).
    refused = cluster.helm("upgrade", name, str(CHART), "--namespace", namespace, check=False)
    assert refused.returncode != 0 and "invalid ownership metadata" in refused.stderr, refused.stderr
    assert not _schema_paths(_live_crds(cluster).values()) & added

    # The README's procedure, run as written: the adoption, then its upgrade command.
    _run_readme_script(cluster, "crd-adoption", RELEASE=name, NAMESPACE=namespace)
    _run_readme_script(cluster, "crd-adoption-upgrade", RELEASE=name, NAMESPACE=namespace)
    chart_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    [listed] = json.loads(cluster.helm("list", "-n", namespace, "-o", "json").stdout)
    assert (listed["status"], listed["revision"], listed["chart"]) == ("deployed", "2", f"{CHART_NAME}-{chart_version}"), listed
    # The values added since 0.3.0 took the new chart's defaults (e.g. the probes on /readyz, the CRDs kept).
    deployment = json.loads(cluster.kubectl("get", "deployment", f"{name}-{CHART_NAME}", "-n", namespace, "-o", "json").stdout)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"

    live = _live_crds(cluster)
    assert set(live) == {d["metadata"]["name"] for d in new_crds} | KOPF_PEERING_CRDS
    assert {n: (live[n]["metadata"].get("labels"), live[n]["metadata"].get("annotations"), live[n]["spec"])
            for n in KOPF_PEERING_CRDS} == kopf_before, "kopf's peering CRDs are left exactly as 0.3.0 installed them"
    assert added <= _schema_paths(live.values()), sorted(added - _schema_paths(live.values()))
    for doc in new_crds:
        crd = live[doc["metadata"]["name"]]
        assert [v["schema"] for v in crd["spec"]["versions"]] == [v["schema"] for v in doc["spec"]["versions"]], doc["metadata"]["name"]
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == name
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert crd["metadata"]["labels"]["helm.sh/chart"] == f"{CHART_NAME}-{chart_version}"
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in live))

    cluster.helm("uninstall", name, "--namespace", namespace)
    assert set(_live_crds(cluster)) == set(live), "crds.keep: uninstall leaves the CRDs"


@pytest.mark.timeout(360)
def test_fresh_install_owns_the_crds_and_keep_decides_uninstall(bare_cluster) -> None:
    """On a cluster without them the chart installs the CRDs; uninstall keeps them by default; with
    crds.keep=false it deletes them. Helm maps every object of a release before creating any, so the very first
    install cannot also create OAuthApplications (connect.applications): it fails with Helm's own "ensure CRDs
    are installed first", changing nothing, and the README says to add them with the next upgrade -- shown here."""
    cluster, name, namespace = bare_cluster, "wso", "wso-system"
    cluster.kubectl("create", "namespace", namespace)
    expected = {d["metadata"]["name"] for d in _chart_crds()}
    assert not expected & KOPF_PEERING_CRDS
    values = {"connect": {"applications": [GITHUB_APPLICATION]}}
    first = cluster.helm("install", name, str(CHART), "--namespace", namespace, "-f", "-", input=json.dumps(values), check=False)
    assert first.returncode != 0 and "ensure CRDs are installed first" in first.stderr, first.stderr
    assert not set(_live_crds(cluster)) and cluster.helm("list", "-n", namespace, "-q").stdout.strip() == ""
    cluster.helm("install", name, str(CHART), "--namespace", namespace)
    assert set(_live_crds(cluster)) == expected
    cluster.helm("upgrade", name, str(CHART), "--namespace", namespace, "-f", "-", input=json.dumps(values))
    cluster.kubectl("get", "oauthapplications.workspace-secrets.io", "github")
    cluster.helm("uninstall", name, "--namespace", namespace)
    assert set(_live_crds(cluster)) == expected, "crds.keep (the default): uninstall leaves the CRDs"

    # Installed again (the kept CRDs carry this release's name: Helm takes them back), then upgraded to not keep them.
    cluster.helm("install", name, str(CHART), "--namespace", namespace)
    cluster.helm("upgrade", name, str(CHART), "--namespace", namespace, "--set", "crds.keep=false")
    assert all("helm.sh/resource-policy" not in (c["metadata"].get("annotations") or {}) for c in _live_crds(cluster).values())
    # --wait: until every object of the release is gone. 60 s was once not enough on the loaded 2-core CI machine
    # (stop 24: "context deadline exceeded", not reproduced alone in 37 s): a longer bound, and what was left if even
    # that is not enough.
    uninstall = cluster.helm("uninstall", name, "--namespace", namespace, "--wait", "--timeout", "180s", check=False, timeout=240)
    if uninstall.returncode != 0:
        left = {n: [(x["type"], x["status"], x.get("reason")) for x in (crd.get("status") or {}).get("conditions") or ()]
                for n, crd in _live_crds(cluster).items() if n in expected}
        workloads = cluster.kubectl("get", "all,pdb,networkpolicy,serviceaccount,role,rolebinding", "-n", namespace, "-o", "name", check=False).stdout
        pytest.fail(f"helm uninstall --wait: {uninstall.stderr.strip()}; CRDs left: {left}; in {namespace}: {workloads.split()}")
    wait_for(lambda: not (set(_live_crds(cluster)) & expected), timeout=60, what="the CRDs deleted with crds.keep=false")


# --- aggregation into Kubernetes' default roles: what a namespace editor gains, and what not ------------------
@pytest.mark.timeout(180)
def test_aggregated_edit_gives_editors_the_users_role_and_no_more(cluster, scratch_namespaces) -> None:
    """rbac.aggregateToDefaultRoles, attacked: alice and bob hold Kubernetes' own `edit` in a shared namespace,
    carol `view`. The aggregated rules reach them (no role of ours is bound), and alice, as an attacker, gets no
    more than the shipped users' role: another user's WorkspaceSecret or UserToken is refused by the policies
    (create, edit, delete), status and finalizers are RBAC-forbidden (the policies do not see subresources),
    deletecollection too, OAuthApplications read-only. carol reads, and writes nothing."""
    release_ns = scratch_namespaces["release"]
    ns = _create_namespace(cluster, "wso-e2e-agg-")
    name = "wso-agg"
    try:
        helm_install(cluster, name, release_ns, {"rbac": {"aggregateToDefaultRoles": True},
                                                 "policies": {"platformGroups": [f"system:serviceaccounts:{release_ns}"]}})
        cluster.kubectl("create", "rolebinding", "editors", "-n", ns, "--clusterrole=edit", "--user=alice", "--user=bob")
        cluster.kubectl("create", "rolebinding", "viewers", "-n", ns, "--clusterrole=view", "--user=carol")

        def can(user: str, *query: str) -> bool:
            result = cluster.kubectl("auth", "can-i", f"--as={user}", "-n", ns, *query, check=False)
            assert result.stdout.strip() in {"yes", "no"}, result.stderr
            return result.stdout.strip() == "yes"

        ws_kind, ut_kind = "workspacesecrets.workspace-secrets.io", "usertokens.workspace-secrets.io"
        wait_for(lambda: can("alice", "create", ws_kind) and can("carol", "list", ut_kind), timeout=30,
                 what="the aggregation controller to extend edit and view")
        for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
            assert can("alice", verb, ws_kind) and can("alice", verb, ut_kind), verb
        for query in (f"patch {ws_kind} --subresource=status", f"update {ut_kind} --subresource=status",
                      f"update {ws_kind} --subresource=finalizers", f"deletecollection {ws_kind}", f"deletecollection {ut_kind}",
                      "create oauthapplications.workspace-secrets.io", "patch oauthapplications.workspace-secrets.io"):
            assert not can("alice", *query.split()), f"edit must not allow: {query}"
        for verb in ("create", "update", "patch", "delete"):
            assert not can("carol", verb, ws_kind) and not can("carol", verb, ut_kind), verb
        assert can("carol", "get", ws_kind) and can("carol", "get", f"{ws_kind}", "--subresource=status")

        def as_user(user: str, *args: str, manifest: dict | None = None) -> subprocess.CompletedProcess[str]:
            return cluster.kubectl(f"--as={user}", "-n", ns, *args, input=json.dumps(manifest) if manifest else None, check=False)

        def ws(owner: str) -> dict:
            return {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": f"of-{owner}"},
                    "spec": {"user": owner, "workspaceRef": {"kind": "Pod", "name": "none"}}}

        # The module's cluster-wide release (when its fixture ran) has the same policies: either may answer first.
        isolation = re.compile(rf"ValidatingAdmissionPolicy '(?:{name}|wso)-{CHART_NAME}-user-isolation'")
        refusal = wait_for(lambda: (r := as_user("alice", "create", "--dry-run=server", "-f", "-", manifest=ws("bob"))).returncode != 0
                           and isolation.search(r.stderr) and r, timeout=30, what="the policies to refuse alice a WorkspaceSecret for bob")
        assert "may not create a WorkspaceSecret for user 'bob'" in refusal.stderr
        assert as_user("alice", "create", "--dry-run=server", "-f", "-", manifest=ws("alice")).returncode == 0
        # bob's own object, then alice's attempts on it: take it over, delete it, forge its status.
        assert as_user("bob", "create", "-f", "-", manifest=ws("bob")).returncode == 0
        before = json.loads(cluster.kubectl("get", ws_kind, "of-bob", "-n", ns, "-o", "json").stdout)
        # spec.user and spec.workspaceRef are immutable (the CRD); any other edit of bob's object is the policies' to refuse.
        takeover = as_user("alice", "patch", ws_kind, "of-bob", "--type=merge",
                           "-p", '{"metadata":{"annotations":{"workspace-secrets.io/abandon-cleanup":"true"}}}')
        assert takeover.returncode != 0 and isolation.search(takeover.stderr), takeover.stderr
        deleted = as_user("alice", "delete", ws_kind, "of-bob")
        assert deleted.returncode != 0 and isolation.search(deleted.stderr), deleted.stderr
        forged = as_user("alice", "patch", ws_kind, "of-bob", "--subresource=status", "--type=merge",
                         "-p", '{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Forged","message":"x","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}')
        assert forged.returncode != 0 and RBAC_DENIED.search(forged.stderr), forged.stderr
        wiped = as_user("alice", "delete", ws_kind, "--all")
        assert wiped.returncode != 0, "deletecollection / delete of bob's object"
        after = json.loads(cluster.kubectl("get", ws_kind, "of-bob", "-n", ns, "-o", "json").stdout)
        assert after["metadata"]["uid"] == before["metadata"]["uid"] and after["spec"] == before["spec"], "bob lost nothing"
        assert (after.get("status") or {}) == (before.get("status") or {}) or "Forged" not in json.dumps(after.get("status"))

        cluster.helm("uninstall", name, "--namespace", release_ns)
        wait_for(lambda: not can("alice", "create", ws_kind), timeout=30, what="edit to lose our kinds after uninstall")
    finally:
        cluster.helm("uninstall", name, "--namespace", release_ns, check=False)
        cluster.kubectl("delete", "configmap", f"{name}-{CHART_NAME}-tenancy", "-n", release_ns, "--ignore-not-found", check=False)
        _delete_namespaces(cluster, ns)


# --- leader election: the chart's flags and Lease RBAC, with the operator run on the chart's token -------------
@pytest.mark.timeout(180)
def test_leader_election_runs_with_the_chart_flags_and_lease_rbac(cluster, scratch_namespaces, shared_operator_paused, tmp_path) -> None:
    """replicaCount 2: the chart turns leader election on, with a Role on exactly its Lease in the release
    namespace; the operator, run out of cluster with the chart's flags and only the chart ServiceAccount's token,
    takes the Lease, reconciles, and releases it on a graceful stop; nothing it asks is refused."""
    namespace, name = scratch_namespaces["release"], "wso-le"
    lease = f"{name}-{CHART_NAME}"
    other = scratch_namespaces["team-a"]
    try:
        helm_install(cluster, name, namespace, {"replicaCount": 2, "policies": {"enabled": False}})
        release = Release(name, namespace, f"{name}-{CHART_NAME}",
                          token_kubeconfig(cluster, namespace, f"{name}-{CHART_NAME}", tmp_path / "kubeconfig"))
        leases = "leases.coordination.k8s.io"
        assert_permissions(
            cluster, release.kubeconfig,
            allowed=[f"get {leases}/{lease} -n {namespace}", f"update {leases}/{lease} -n {namespace}", f"create {leases} -n {namespace}"],
            denied=[f"get {leases}/other -n {namespace}", f"update {leases}/other -n {namespace}", f"delete {leases}/{lease} -n {namespace}",
                    f"patch {leases}/{lease} -n {namespace}", f"list {leases} -n {namespace}", f"create {leases} -n {other}",
                    f"get {leases}/{lease} -n {other}", f"get {leases}/kube-controller-manager -n kube-system"],
        )
        args = chart_operator_args(cluster, release, tmp_path)
        assert "--leader-elect" in args and flag_value(args, "--leader-election-id") == lease
        operator = OperatorProcess(str(release.kubeconfig), tmp_path / "operator", *args)
        operator.start()
        try:
            held = wait_for(lambda: (spec := json.loads(cluster.kubectl("get", leases, lease, "-n", namespace, "-o", "json",
                                                                          check=False).stdout or "{}").get("spec", {})).get("holderIdentity") and spec,
                            timeout=30, what="the operator to hold the chart's Lease")
            assert held["leaseDurationSeconds"] == 15
            with cluster.api_client() as api_client:
                api = Api(api_client)
                ns = other
                api.create_deployment(ns, "ws-le", user="lee")
                api.create_ws(ns, "le", {"user": "lee", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ws-le"}})
                api.wait_condition(ns, "le")
        finally:
            operator.stop()
        released = json.loads(cluster.kubectl("get", leases, lease, "-n", namespace, "-o", "json").stdout)["spec"]
        assert not released.get("holderIdentity"), "a graceful stop releases the Lease"
        assert refused_requests(operator.log_text()) == [], "the operator was refused requests with the chart's RBAC"
    finally:
        cluster.helm("uninstall", name, "--namespace", namespace, check=False)


# --- the webhook's certificate from cert-manager --------------------------------------------------------------
#: Just enough of cert-manager's API for the API server to store the chart's Issuers and Certificates.
CERT_MANAGER_STAND_IN_CRDS = [
    {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
     "metadata": {"name": f"{plural}.cert-manager.io"},
     "spec": {"group": "cert-manager.io", "scope": "Namespaced",
              "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
              "versions": [{"name": "v1", "served": True, "storage": True,
                            "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    for kind, plural in (("Certificate", "certificates"), ("Issuer", "issuers"))]


def _pem_ca_and_serving(dns_names: list[str]) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, serving certificate, serving key) PEM: what cert-manager's CA Issuer would write."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in cert-manager CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    serving = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=2))
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return (ca.public_bytes(pem), serving.public_bytes(pem),
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


@pytest.mark.timeout(300)
def test_webhook_certificate_from_cert_manager(bare_cluster, tmp_path) -> None:
    """webhook.certManager with the chart's self-signed chain, on a stand-in of cert-manager: building the real
    cert-manager (controller, cainjector, webhook and their dependencies) from the Go module proxy is not cheap
    enough here, so the test plays cert-manager's part of the contract itself, as documented by cert-manager:
      - its CA Issuer writes the Certificate's Secret (spec.secretName) with tls.crt for spec.dnsNames, tls.key and
        ca.crt, which the chart mounts as the operator's certificate directory (here: the same files, locally);
      - its cainjector copies ca.crt of the Certificate named by the annotation cert-manager.io/inject-ca-from into
        the caBundle of every webhook of the annotated MutatingWebhookConfiguration.
    Everything else is real: the chart's objects on the API server, the operator run with the chart's flags and
    only the chart ServiceAccount's token. The operator keeps the annotation, never writes caBundle (not even a
    stale one), and serves TLS that verifies with the injected CA for the Service's name."""
    cluster, name, namespace = bare_cluster, "wso-cm", "wso-system"
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(CERT_MANAGER_STAND_IN_CRDS))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/certificates.cert-manager.io", "crd/issuers.cert-manager.io")
    full = f"{name}-{CHART_NAME}"
    config_name, mwc = f"{full}-webhook", "mutatingwebhookconfigurations.admissionregistration.k8s.io"
    cluster.helm("install", name, str(CHART), "--namespace", namespace, "-f", "-",
                 input=json.dumps({"webhook": {"enabled": True, "certManager": {"enabled": True}}, "policies": {"enabled": False}}))

    def live() -> dict:
        return json.loads(cluster.kubectl("get", mwc, config_name, "-o", "json").stdout)

    # cert-manager's part: issue the serving certificate into its Secret, inject the CA.
    certificate = json.loads(cluster.kubectl("get", "certificates.cert-manager.io", config_name, "-n", namespace, "-o", "json").stdout)
    ca_pem, cert_pem, key_pem = _pem_ca_and_serving(certificate["spec"]["dnsNames"])
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
              "metadata": {"name": certificate["spec"]["secretName"], "namespace": namespace},
              "data": {k: base64.b64encode(v).decode() for k, v in (("tls.crt", cert_pem), ("tls.key", key_pem), ("ca.crt", ca_pem))}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(secret))
    annotation = live()["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert annotation == f"{namespace}/{certificate['metadata']['name']}", "the chart names its Certificate"
    injected = base64.b64encode(ca_pem).decode()
    cluster.kubectl("patch", mwc, config_name, "--type=json",
                    "-p", json.dumps([{"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": injected}]))

    release = Release(name, namespace, full, token_kubeconfig(cluster, namespace, full, tmp_path / "kubeconfig"))
    args = chart_operator_args(cluster, release, tmp_path) + ["--resync-interval=2"]
    assert flag_value(args, "--webhook-cert-manager-certificate") == annotation
    cert_dir = Path(flag_value(args, "--webhook-cert-dir"))
    cert_dir.mkdir(parents=True, exist_ok=True)
    for file_name, content in (("tls.crt", cert_pem), ("tls.key", key_pem), ("ca.crt", ca_pem)):
        (cert_dir / file_name).write_bytes(content)
        (cert_dir / file_name).chmod(0o600)
    operator = OperatorProcess(str(release.kubeconfig), tmp_path / "operator", *args)
    operator.start()
    try:
        before = live()
        time.sleep(5)  # two and a half resyncs
        settled = live()
        assert settled["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "the operator rewrote cert-manager's configuration"
        assert settled["webhooks"][0]["clientConfig"]["caBundle"] == injected
        assert settled["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == annotation

        hook = settled["webhooks"][0]
        service = hook["clientConfig"]["service"]
        review = admission_review(f"{service['name']}.{service['namespace']}.svc", int(flag_value(args, "--webhook-port")),
                                  service["path"], ca_pem.decode(), namespace, "no-such-workspace")
        assert review["response"]["allowed"] is False
        assert "WorkspaceSecret 'no-such-workspace' does not exist" in review["response"]["status"]["message"]

        # A caBundle that is not the operator's to fix: removed (cert-manager's cainjector will put it back) --
        # the operator leaves it alone, and puts back only what it owns, e.g. the annotation.
        cluster.kubectl("patch", mwc, config_name, "--type=json", "-p", json.dumps([
            {"op": "remove", "path": "/webhooks/0/clientConfig/caBundle"},
            {"op": "remove", "path": "/metadata/annotations/cert-manager.io~1inject-ca-from"}]))
        repaired = wait_for(lambda: (c := live())["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from") and c,
                            timeout=20, what="the operator to restore the inject-ca-from annotation")
        assert repaired["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == annotation
        time.sleep(5)
        assert "caBundle" not in live()["webhooks"][0]["clientConfig"], "the operator wrote a caBundle although cert-manager injects it"
    finally:
        operator.stop()
    log = operator.log_text()
    assert refused_requests(log) == [], "the operator was refused requests with the chart's RBAC"
    assert "caBundle injected by cert-manager" in log
    cluster.helm("uninstall", name, "--namespace", namespace)
