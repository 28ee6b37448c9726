"""The chart ships the tenant-isolation policies of deploy/policies, and the RBAC around them.

- Each ValidatingAdmissionPolicy the chart renders has exactly the spec of its deploy/policies file (the
  e2e tests exercise deploy/policies on the real API server; this keeps the chart's copy the same code).
- The identity rules (matchConditions and the identity variables) are the same in every policy, and the
  reserved Secret-name pattern is the operator's own (domain/naming.py).
- The parameters name the release's real operator ServiceAccount and the Kubernetes controllers that
  must act for every user; values add identities; namespaced mode binds the watched namespaces only.
- The workspace users' ClusterRole is deploy/policies/workspace-user-role.yaml's; OAuth applications are
  rendered as OAuthApplication objects whose client Secrets the operator may read by name only.
- The operator guard (deploy/policies/operator-guard.yaml) matches only the operator's ServiceAccount, binds in
  every namespace, covers every pod/workload write the operator's RBAC grants, names the operator's gate,
  labels and restart annotation; the chart's copy is the same spec for the release's ServiceAccount, on with
  the policies by default (tests/e2e/test_operator_guard.py shows what it allows and refuses on an API server).

Renders with the pinned helm (see test_chart_operator_interface.py); no cluster is involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from workspace_secrets.api import constants as c
from workspace_secrets.user_keys import naming
from chart_support import CHART, NAMESPACE, RELEASE, helm, render  # noqa: F401 (helm: fixture)

from devcluster.controlplane import REPO_ROOT, pinned_versions

POLICY_DIR = REPO_ROOT / "deploy" / "policies"
FULLNAME = f"{RELEASE}-workspace-secrets-operator"
POLICIES = {"user-isolation": "user-isolation.yaml", "user-secret-labels": "user-secret-labels.yaml",
            "reserved-secrets": "reserved-secrets.yaml"}
#: The operator guard: no parameters, no identity rules; it matches the operator's own ServiceAccount only.
GUARD = "operator-guard"
SHIPPED_OPERATOR = "system:serviceaccount:workspace-secrets-system:workspace-secrets-operator"
IDENTITY_VARIABLES = ("username", "prefix", "suffix", "actsAs", "who", "platform")
NOT_THE_RELEASE_NAMESPACE = {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
                             "values": [NAMESPACE, "kube-system", "kube-public", "kube-node-lease"]}
KUBERNETES_PLATFORM_USERS = ["system:serviceaccount:kube-system:generic-garbage-collector",
                             "system:serviceaccount:kube-system:namespace-controller", "system:kube-controller-manager"]


def render_error(helm: Path, values: dict[str, Any]) -> str:
    import subprocess

    result = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--kube-version", pinned_versions()["K8S_VERSION"], "-f", "-"],
        input=json.dumps(values), capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode != 0, "rendered, but should have been refused"
    return result.stderr


def of_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def shipped(kind: str, *, guard: bool = False) -> dict[str, dict]:
    """deploy/policies' objects of this kind; without the operator guard unless `guard`."""
    docs = [d for p in sorted(POLICY_DIR.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    return {d["metadata"]["name"]: d for d in docs
            if d["kind"] == kind and (guard or d["metadata"]["name"] != f"workspace-secrets-{GUARD}")}


def params(docs: list[dict]) -> dict[str, str]:
    return of_kind(docs, "ConfigMap")[f"{FULLNAME}-tenancy"]["data"]


def split(value: str) -> list[str]:
    return [s.strip() for s in value.split(",") if s.strip()]


# --- deploy/policies itself ---------------------------------------------------------------------------
def test_every_policy_file_has_one_policy_and_its_binding() -> None:
    every = shipped("ValidatingAdmissionPolicy", guard=True)
    assert sorted(every) == sorted(f"workspace-secrets-{short}" for short in [*POLICIES, GUARD])
    assert sorted(shipped("ValidatingAdmissionPolicyBinding", guard=True)) == sorted(every)
    policies, bindings = shipped("ValidatingAdmissionPolicy"), shipped("ValidatingAdmissionPolicyBinding")
    params_map = shipped("ConfigMap")["workspace-secrets-tenancy"]
    for name, binding in bindings.items():
        assert binding["spec"]["policyName"] == name
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert binding["spec"]["paramRef"] == {"name": "workspace-secrets-tenancy", "namespace": params_map["metadata"]["namespace"],
                                               "parameterNotFoundAction": "Deny"}, "fail closed without parameters"
    for policy in policies.values():
        assert policy["spec"]["failurePolicy"] == "Fail"
        assert policy["spec"]["paramKind"] == {"apiVersion": "v1", "kind": "ConfigMap"}
        assert all(v.get("reason") == "Forbidden" and v.get("messageExpression") for v in policy["spec"]["validations"])


def test_identity_rules_are_identical_in_every_policy() -> None:
    policies = list(shipped("ValidatingAdmissionPolicy").values())
    first = policies[0]["spec"]
    identity = {v["name"]: v for v in first["variables"] if v["name"] in IDENTITY_VARIABLES}
    assert sorted(identity) == sorted(IDENTITY_VARIABLES)
    for policy in policies[1:]:
        spec = policy["spec"]
        assert spec["matchConditions"] == first["matchConditions"], policy["metadata"]["name"]
        assert {v["name"]: v for v in spec["variables"] if v["name"] in IDENTITY_VARIABLES} == identity, policy["metadata"]["name"]
        # The identity variables come first, so what the request asks for may use them.
        assert [v["name"] for v in spec["variables"][:len(IDENTITY_VARIABLES)]] == list(IDENTITY_VARIABLES)
    assert [c["name"] for c in first["matchConditions"]] == ["not-a-platform-identity"]


def test_every_policy_covers_deletes() -> None:
    for policy in shipped("ValidatingAdmissionPolicy").values():
        for rule in policy["spec"]["matchConstraints"]["resourceRules"]:
            assert rule["operations"] == ["CREATE", "UPDATE", "DELETE"], policy["metadata"]["name"]


def test_reserved_name_pattern_is_the_operators() -> None:
    policy = shipped("ValidatingAdmissionPolicy")["workspace-secrets-reserved-secrets"]
    expression = next(v["expression"] for v in policy["spec"]["variables"] if v["name"] == "reservedName")
    assert expression == f"variables.name.matches('{naming.RESERVED_SECRET_NAME_PATTERN}')"
    from workspace_secrets.user_keys.naming import user_key_secret_name
    from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType

    for spec in (KeySpec(), KeySpec(KeyType.RSA, 4096)):
        assert naming.is_reserved_secret_name(user_key_secret_name("bob", spec))


def test_default_platform_users_include_the_kubernetes_controllers() -> None:
    data = shipped("ConfigMap")["workspace-secrets-tenancy"]["data"]
    users = split(data["platformUsers"])
    assert users == ["system:serviceaccount:workspace-secrets-system:workspace-secrets-operator", *KUBERNETES_PLATFORM_USERS]
    assert split(data["platformGroups"]) == ["system:masters"]
    assert data["userPrefix"] == data["userSuffix"] == ""


# --- the chart's copy -------------------------------------------------------------------------------------
def test_chart_policies_are_deploy_policies(helm: Path) -> None:
    docs = render(helm, {})
    policies, bindings = of_kind(docs, "ValidatingAdmissionPolicy"), of_kind(docs, "ValidatingAdmissionPolicyBinding")
    source = shipped("ValidatingAdmissionPolicy")
    assert sorted(policies) == sorted(bindings) == sorted(f"{FULLNAME}-{short}" for short in [*POLICIES, GUARD])
    for short in POLICIES:
        name = f"{FULLNAME}-{short}"
        assert policies[name]["spec"] == source[f"workspace-secrets-{short}"]["spec"], f"{name} differs from deploy/policies"
        assert policies[name]["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert bindings[name]["spec"] == {
            "policyName": name, "validationActions": ["Deny"],
            "paramRef": {"name": f"{FULLNAME}-tenancy", "namespace": NAMESPACE, "parameterNotFoundAction": "Deny"},
            "matchResources": {"namespaceSelector": {"matchExpressions": [NOT_THE_RELEASE_NAMESPACE]}}}


def test_chart_parameters_name_the_release_service_account(helm: Path) -> None:
    data = params(render(helm, {}))
    assert split(data["platformUsers"]) == [f"system:serviceaccount:{NAMESPACE}:{FULLNAME}", *KUBERNETES_PLATFORM_USERS]
    assert split(data["platformGroups"]) == ["system:masters"]
    data = params(render(helm, {
        "serviceAccount": {"create": False, "name": "platform-operator"},
        "policies": {"platformUsers": ["system:serviceaccount:coder:coder"], "platformGroups": ["platform-admins"],
                     "userPrefix": "oidc:", "userSuffix": "@example.com"}}))
    assert split(data["platformUsers"]) == [
        f"system:serviceaccount:{NAMESPACE}:platform-operator", *KUBERNETES_PLATFORM_USERS, "system:serviceaccount:coder:coder"]
    assert split(data["platformGroups"]) == ["system:masters", "platform-admins"]
    assert (data["userPrefix"], data["userSuffix"]) == ("oidc:", "@example.com")


def test_namespaced_mode_binds_the_watched_namespaces_only(helm: Path) -> None:
    """Never the release namespace: it is the platform's, and Helm's own release Secret must stay writable
    while `helm uninstall` deletes the parameters a moment before the policies."""
    docs = render(helm, {"watchNamespaces": ["team-b", "team-a"]})
    bindings = of_kind(docs, "ValidatingAdmissionPolicyBinding")
    # The operator guard binds everywhere (the operator has no business changing workloads anywhere).
    assert "matchResources" not in bindings.pop(f"{FULLNAME}-{GUARD}")["spec"]
    for binding in bindings.values():
        assert binding["spec"]["matchResources"] == {"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]},
            NOT_THE_RELEASE_NAMESPACE]}}


def test_policies_can_be_turned_off(helm: Path) -> None:
    docs = render(helm, {"policies": {"enabled": False}})
    assert not of_kind(docs, "ValidatingAdmissionPolicy") and not of_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert f"{FULLNAME}-tenancy" not in of_kind(docs, "ConfigMap")


@pytest.mark.parametrize("values", [
    {"policies": {"platformUsers": ["a,b"]}},
    {"policies": {"platformGroups": ["has space"]}},
    {"policies": {"enabeld": True}},
    {"policies": {"operatorGuard": "yes"}},
])
def test_schema_refuses_parameters_that_would_split_differently(helm: Path, values: dict) -> None:
    assert "values don't meet the specifications of the schema" in render_error(helm, values)


# --- the workspace users' role -------------------------------------------------------------------------
def test_user_role_is_the_shipped_role(helm: Path) -> None:
    docs = render(helm, {})
    role = of_kind(docs, "ClusterRole")[f"{FULLNAME}-user"]
    assert role["rules"] == shipped("ClusterRole")["workspace-secrets-user"]["rules"]
    assert not any("secrets" in r["resources"] or "oauthapplications" in r["resources"] for r in role["rules"])
    reader = of_kind(docs, "ClusterRole")[f"{FULLNAME}-user-oauth-applications"]
    assert reader["rules"] == shipped("ClusterRole")["workspace-secrets-oauth-applications-reader"]["rules"]
    docs = render(helm, {"userRole": {"name": "workspace-secrets-user",
                                      "aggregationLabels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}}})
    role = of_kind(docs, "ClusterRole")["workspace-secrets-user"]
    assert role["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert f"{FULLNAME}-user" not in of_kind(render(helm, {"userRole": {"enabled": False}}), "ClusterRole")


# --- OAuth applications ------------------------------------------------------------------------------------
GITHUB = {"name": "github", "type": "github", "clientSecretRef": {"name": "github-oauth"},
          "scopes": ["repo", "read:user"], "allowedNamespaces": ["workspaces-*"]}
GITLAB = {"name": "gitlab-internal", "type": "gitlab-self-managed", "host": "https://gitlab.example.com",
          "clientSecretRef": {"name": "gitlab-oauth", "clientIDKey": "id", "clientSecretKey": "secret"},
          "allowedNamespaces": ["*"]}
VAULT = {"name": "vault", "type": "vault", "host": "https://vault.example.com", "vault": {"mount": "oidc", "role": "dev"},
         "allowedNamespaces": ["team-a"]}


def test_applications_are_oauth_application_objects(helm: Path) -> None:
    docs = render(helm, {"connect": {"applications": [GITHUB, GITLAB, VAULT]}})
    apps = of_kind(docs, "OAuthApplication")
    assert sorted(apps) == ["github", "gitlab-internal", "vault"]
    assert all(a["apiVersion"] == "workspace-secrets.io/v1alpha1" and "namespace" not in a["metadata"] for a in apps.values())
    assert apps["github"]["spec"] == {"type": "github", "clientSecretRef": {
        "name": "github-oauth", "clientIDKey": "client-id", "clientSecretKey": "client-secret"},
        "scopes": ["repo", "read:user"], "allowedNamespaces": ["workspaces-*"]}
    assert apps["gitlab-internal"]["spec"]["clientSecretRef"] == {"name": "gitlab-oauth", "clientIDKey": "id", "clientSecretKey": "secret"}
    assert apps["gitlab-internal"]["spec"]["host"] == "https://gitlab.example.com"
    assert apps["vault"]["spec"] == {"type": "vault", "host": "https://vault.example.com", "vault": {"mount": "oidc", "role": "dev"},
                                     "allowedNamespaces": ["team-a"]}
    # The operator reads exactly the client Secrets, by name, in the release namespace.
    role = of_kind(docs, "Role")[f"{FULLNAME}-credentials"]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["github-oauth", "gitlab-oauth"],
                              "verbs": ["get"]}]


@pytest.mark.parametrize("values,message", [
    ({"connect": {"applications": [GITHUB, {**GITLAB, "name": "github"}]}}, 'the name "github" is used twice'),
    ({"connect": {"applications": [{k: v for k, v in GITHUB.items() if k != "clientSecretRef"}]}}, "needs clientSecretRef"),
    ({"connect": {"applications": [{k: v for k, v in GITHUB.items() if k != "allowedNamespaces"}]}}, "allowedNamespaces"),
    ({"connect": {"oauthClientSecrets": ["github-oauth"]}}, "oauthClientSecrets"),
    ({"connect": {"enabled": True, "publicURL": "https://x.example.com", "auth": {"userHeader": "X-User"}}},
     "connect.auth.userHeader needs connect.auth.trustedProxies"),
])
def test_broken_connect_values_are_refused(helm: Path, values: dict, message: str) -> None:
    assert message in render_error(helm, values)


@pytest.mark.parametrize("mode", ["cluster-wide", "namespaced"])
def test_operator_reads_oauth_applications_in_both_modes(helm: Path, mode: str) -> None:
    values = {"watchNamespaces": ["team-a"], "rbac": {"clusterScanning": False}} if mode == "namespaced" else {}
    docs = render(helm, values)
    role = of_kind(docs, "ClusterRole")[FULLNAME if mode == "cluster-wide" else f"{FULLNAME}-cluster"]
    rules = [r for r in role["rules"] if "oauthapplications" in r["resources"]]
    assert rules == [{"apiGroups": ["workspace-secrets.io"], "resources": ["oauthapplications"], "verbs": ["get", "list", "watch"]}]
    for other in of_kind(docs, "Role").values():
        assert not any("oauthapplications" in r["resources"] for r in other["rules"])


def test_provider_allow_rules_pass_through(helm: Path) -> None:
    provider = {"name": "aws-dev", "type": "aws-iam", "credentialsSecret": "aws-admin",
                "allow": {"namespaces": ["workspaces-*"], "users": ["alice"]}, "config": {"region": "eu-west-1"}}
    docs = render(helm, {"providers": [provider]})
    config = yaml.safe_load(of_kind(docs, "ConfigMap")[f"{FULLNAME}-providers"]["data"]["providers.yaml"])
    assert config == {"providers": [provider]}
    assert "allow" in render_error(helm, {"providers": [{**provider, "allow": {"groups": ["x"]}}]})


# --- the operator guard -------------------------------------------------------------------------------------
def guard_spec(policy: dict, operator: str) -> dict:
    """The policy's spec with the operator's username put back to deploy/policies' default."""
    text = json.dumps(policy["spec"])
    assert text.count(operator) == 1, "the username appears once: in the matchCondition"
    return json.loads(text.replace(operator, SHIPPED_OPERATOR))


def covered(policy: dict, group: str, resource: str, operation: str) -> bool:
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    return any(group in r["apiGroups"] and resource in r["resources"] and operation in r["operations"] for r in rules)


def test_operator_guard_matches_only_the_operator() -> None:
    policy = shipped("ValidatingAdmissionPolicy", guard=True)[f"workspace-secrets-{GUARD}"]
    binding = shipped("ValidatingAdmissionPolicyBinding", guard=True)[f"workspace-secrets-{GUARD}"]
    spec = policy["spec"]
    assert spec["matchConditions"] == [{"name": "the-operator",
                                        "expression": f"request.userInfo.username == '{SHIPPED_OPERATOR}'"}]
    # The same ServiceAccount the tenancy parameters exempt as the operator.
    assert split(shipped("ConfigMap")["workspace-secrets-tenancy"]["data"]["platformUsers"])[0] == SHIPPED_OPERATOR
    # No parameters (nothing missing can make it refuse other identities' requests), fail closed, bound everywhere.
    assert "paramKind" not in spec and spec["failurePolicy"] == "Fail"
    assert binding["spec"] == {"policyName": f"workspace-secrets-{GUARD}", "validationActions": ["Deny"]}
    assert all(v.get("reason") == "Forbidden" and v.get("messageExpression") for v in spec["validations"])
    for group, resource in [("", "pods"), ("apps", "deployments"), ("apps", "statefulsets")]:
        for operation in ("CREATE", "UPDATE", "DELETE", "CONNECT"):
            assert covered(policy, group, resource, operation), (resource, operation)
            assert covered(policy, group, f"{resource}/*", operation), (resource, operation)


def test_operator_guard_names_the_operators_gate_labels_and_annotation() -> None:
    spec = shipped("ValidatingAdmissionPolicy", guard=True)[f"workspace-secrets-{GUARD}"]["spec"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert variables["gate"] == f"'{c.SCHEDULING_GATE}'"
    assert variables["restartedAt"] == f"'{c.ANNOTATION_RESTARTED_AT}'"
    assert f"[?'{c.LABEL_WORKSPACE_SECRET}']" in variables["workspacePod"] and f"[?'{c.LABEL_USER}']" in variables["workspacePod"]
    assert any(f"[?'{c.LABEL_USER}']" in v["expression"] and "isPod" in v["expression"] for v in spec["validations"])


@pytest.mark.parametrize("values,operator", [
    ({}, f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"),
    ({"serviceAccount": {"create": False, "name": "platform-operator"}}, f"system:serviceaccount:{NAMESPACE}:platform-operator"),
    ({"watchNamespaces": ["team-a"]}, f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"),
])
def test_chart_operator_guard_is_deploy_policies_for_the_release(helm: Path, values: dict, operator: str) -> None:
    docs = render(helm, values)
    name = f"{FULLNAME}-{GUARD}"
    policy = of_kind(docs, "ValidatingAdmissionPolicy")[name]
    source = shipped("ValidatingAdmissionPolicy", guard=True)[f"workspace-secrets-{GUARD}"]
    assert guard_spec(policy, operator) == source["spec"], f"{name} differs from deploy/policies"
    assert policy["spec"]["matchConditions"][0]["expression"] == f"request.userInfo.username == '{operator}'"
    assert policy["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    assert of_kind(docs, "ValidatingAdmissionPolicyBinding")[name]["spec"] == {"policyName": name, "validationActions": ["Deny"]}


def test_operator_guard_is_on_with_the_policies(helm: Path) -> None:
    name = f"{FULLNAME}-{GUARD}"
    assert name in of_kind(render(helm, {}), "ValidatingAdmissionPolicy")
    docs = render(helm, {"policies": {"operatorGuard": False}})
    assert name not in of_kind(docs, "ValidatingAdmissionPolicy") and name not in of_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert f"{FULLNAME}-user-isolation" in of_kind(docs, "ValidatingAdmissionPolicy")
    assert name not in of_kind(render(helm, {"policies": {"enabled": False}}), "ValidatingAdmissionPolicy")


@pytest.mark.parametrize("values", [{}, {"watchNamespaces": ["team-a"]},
                                    {"providers": [{"name": "k", "type": "kubernetes-token", "allow": {"namespaces": ["ci-*"]},
                                                    "config": {"allowedServiceAccounts": ["ci-*"], "audiences": ["a"]}}]}])
def test_operator_guard_covers_every_workload_write_the_operator_may_make(helm: Path, values: dict) -> None:
    """Every verb but reads the operator's RBAC grants on pods, Deployments, StatefulSets (and their
    subresources) is one the guard looks at."""
    docs = render(helm, values)
    guard = of_kind(docs, "ValidatingAdmissionPolicy")[f"{FULLNAME}-{GUARD}"]
    roles = [r for kind in ("ClusterRole", "Role") for n, r in of_kind(docs, kind).items()
             if n in (FULLNAME, f"{FULLNAME}-cluster")]
    operation = {"create": "CREATE", "update": "UPDATE", "patch": "UPDATE", "delete": "DELETE", "deletecollection": "DELETE"}
    seen = set()
    for role in roles:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    base = resource.split("/")[0]
                    if (group, base) not in {("", "pods"), ("apps", "deployments"), ("apps", "statefulsets")}:
                        continue
                    for verb in rule["verbs"]:
                        assert verb != "*" and (verb in ("get", "list", "watch") or verb in operation), (resource, verb)
                        if verb in operation:
                            seen.add((resource, verb))
                            pattern = resource if "/" not in resource else f"{base}/*"
                            assert covered(guard, group, pattern, operation[verb]), (resource, verb)
    assert ("pods", "patch") in seen and ("deployments", "patch") in seen
