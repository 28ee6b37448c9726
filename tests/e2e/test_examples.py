"""Every file in examples/ applies cleanly, and every WorkspaceSecret in it gets a condition; the Coder-style
template (examples/coder-workspace-template.yaml) shows what docs/users/workspace-template.md says its user sees
before connecting GitHub."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from backends import ADMIN_NAMESPACE
from helpers import Api, wait_for
from kubernetes.client.rest import ApiException

from workspace_secrets.api import constants as c

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TEMPLATE = EXAMPLES / "coder-workspace-template.yaml"
APPLICATION = EXAMPLES / "oauthapplication-github.yaml"


@pytest.fixture
def github_client_secret(cluster, wso_operator) -> Iterator[None]:
    """Step 2 of examples/oauthapplication-github.yaml: the OAuth app's client Secret in the operator's namespace
    (a made-up client: nothing here talks to GitHub -- connecting is test_workspace_gate.py's part)."""
    api = Api(cluster.api_client())
    name = "github-oauth-app"
    body = {"metadata": {"name": name}, "stringData": {"client-id": "example-client-id", "client-secret": "example-client-secret"}}
    try:
        api.core.create_namespaced_secret(ADMIN_NAMESPACE, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
    yield
    api.core.delete_namespaced_secret(name, ADMIN_NAMESPACE)


def test_every_example_applies(cluster, namespace, wso_operator, github_client_secret):
    api = Api(cluster.api_client())
    # The platform's configuration (OAuth applications) first, as a platform sets it up before its users come: a
    # UserToken naming an application that does not exist yet waits for its next retry to find it.
    files = sorted(EXAMPLES.glob("*.yaml"), key=lambda p: (not p.name.startswith("oauthapplication"), p.name))
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
                elif doc["spec"].get("userTokens"):
                    # Its user has not connected the token: Ready says so (the template test below shows the rest).
                    api.wait_condition(namespace, name, status="False", reason="TokenNotConnected")
                else:
                    api.wait_condition(namespace, name)


def pods_of(api: Api, namespace: str, app: str) -> list:
    return api.core.list_namespaced_pod(namespace, label_selector=f"app={app}").items


def events(api: Api, namespace: str, kind: str, name: str, reason: str) -> list:
    return [e for e in api.core.list_namespaced_event(namespace).items
            if e.involved_object.kind == kind and e.involved_object.name == name and e.reason == reason]


def test_the_coder_template_before_its_user_connects(cluster, namespace, wso_operator, github_client_secret):
    """What docs/users/workspace-template.md says erin sees while her GitHub token is not connected."""
    if not wso_operator.webhook:
        pytest.skip("the webhook is not reachable from an external cluster without WSO_E2E_WEBHOOK_HOST")
    api = Api(cluster.api_client())
    for path in (APPLICATION, TEMPLATE):
        out = cluster.kubectl("apply", "-n", namespace, "-f", str(path))
        assert out.returncode == 0, out.stderr
    link = f"{wso_operator.process.connect_url}/accounts?focus={namespace}/erin-github"

    # The UserToken waits for erin; its link is the connect page focused on it.
    def token_link():
        ut = api.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "erin-github")
        status = ut.get("status") or {}
        return status.get("authorizationURL") if status.get("phase") == c.PHASE_AWAITING_AUTHORIZATION else None
    assert wait_for(token_link, what="erin-github AwaitingAuthorization") == link

    # The WorkspaceSecret: TokensReady (and Ready) False, TokenNotConnected, with the link; status.tokens says the same.
    tokens_ready = api.wait_condition(namespace, "erin-workspace-secrets", status="False", type_=c.CONDITION_TOKENS_READY,
                                      reason="TokenNotConnected")
    assert link in tokens_ready["message"], tokens_ready["message"]
    ready = api.wait_condition(namespace, "erin-workspace-secrets", status="False", reason="TokenNotConnected")
    assert link in ready["message"]
    status = api.get_ws(namespace, "erin-workspace-secrets")["status"]
    [entry] = status["tokens"]
    assert entry == {"name": "erin-github", "optional": False, "phase": c.PHASE_AWAITING_AUTHORIZATION, "delivered": False,
                     "application": "github", "type": "github", "connectURL": link, "reason": "TokenNotConnected"}

    # The workspace's pod: gated at admission, Pending, SchedulingGated -- not crashing. (A first pod admitted before
    # the operator's first reconcile lacks env vars; the operator re-creates it: the pod that waits is complete.)
    pod = wait_for(lambda: waiting_pod(api, namespace), what="erin's waiting workspace pod")
    assert [g.name for g in pod.spec.scheduling_gates or ()] == [c.SCHEDULING_GATE]
    def gated_condition():
        p = api.core.read_namespaced_pod(pod.metadata.name, namespace)
        return next((cond for cond in p.status.conditions or () if cond.type == "PodScheduled" and cond.reason == "SchedulingGated"), None)
    assert wait_for(gated_condition, what="PodScheduled SchedulingGated").status == "False"
    assert api.core.read_namespaced_pod(pod.metadata.name, namespace).status.phase == "Pending"
    listed = cluster.kubectl("get", "pod", "-n", namespace, pod.metadata.name, "--no-headers").stdout
    assert "SchedulingGated" in listed, listed

    # Events: on the pod (kubectl describe pod shows them) and on the WorkspaceSecret, each with the link.
    [told] = wait_for(lambda: events(api, namespace, "Pod", pod.metadata.name, c.EVENT_WAITING_FOR_TOKEN), what="the pod's Event")
    assert told.type == "Warning" and "'erin-github'" in told.message and link in told.message
    [ws_told] = wait_for(lambda: events(api, namespace, c.WORKSPACE_SECRET_KIND, "erin-workspace-secrets", "TokenNotConnected"),
                         what="the WorkspaceSecret's Event")
    assert ws_told.type == "Warning" and "'erin-github'" in ws_told.message and link in ws_told.message
    described = cluster.kubectl("describe", "pod", "-n", namespace, pod.metadata.name).stdout
    assert re.search(r"PodScheduled\s+False", described) and "WaitingForToken" in described and link in described, described[-2000:]

    # The workspace runs (a gated pod counts: it is starting), so its WhileRunning credential is already minted;
    # the Secret holds the SSH key, git's configuration and the kubeconfig, and no GitHub token yet.
    def kube_active():
        ws = api.get_ws(namespace, "erin-workspace-secrets") or {}
        entries = {e["name"]: e for e in (ws.get("status") or {}).get("credentials") or ()}
        return entries.get("kube") if (entries.get("kube") or {}).get("phase") == "Active" else None
    wait_for(kube_active, what="credential kube Active")
    api.wait_condition(namespace, "erin-workspace-secrets", type_=c.CONDITION_CREDENTIALS_READY)
    secret = api.get_secret(namespace, "erin-workspace-secrets")
    keys = set(secret.data or {})
    assert {"ssh-privatekey", "known_hosts", "GIT_SSH_COMMAND", "git-credentials", "GIT_CONFIG_COUNT",
            "kube.token", "kube.kubeconfig", "tool.gh.hosts.yml"} <= keys, sorted(keys)
    assert not [k for k in keys if k.startswith("token.erin-github.")], sorted(keys)
    assert base64.b64decode(secret.data["git-credentials"]) == b""
    env = {e["name"] for e in api.get_ws(namespace, "erin-workspace-secrets")["status"]["env"]}
    assert {"GIT_SSH_COMMAND", "KUBECONFIG", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0", "GH_CONFIG_DIR"} <= env, env
    # Still waiting: only the token holds it.
    assert [g.name for g in api.core.read_namespaced_pod(pod.metadata.name, namespace).spec.scheduling_gates or ()] == [c.SCHEDULING_GATE]

    # The workspace stops (Coder scales it to 0): the WhileRunning token is revoked and leaves the Secret.
    cluster.kubectl("scale", "-n", namespace, "deployment/erin-workspace", "--replicas=0")
    def kube_stopped():
        ws = api.get_ws(namespace, "erin-workspace-secrets") or {}
        entries = {e["name"]: e for e in (ws.get("status") or {}).get("credentials") or ()}
        return (entries.get("kube") or {}).get("phase") == "Stopped" and "kube.token" not in (api.get_secret(namespace, "erin-workspace-secrets").data or {})
    wait_for(kube_stopped, timeout=30, what="credential kube Stopped and gone from the Secret")
    api.wait_event(namespace, "erin-workspace-secrets", "CredentialRevoked")


def pod_env_names(pod) -> set[str]:
    return {e.name for container in pod.spec.containers for e in container.env or ()}


TEMPLATE_ENV = {"GIT_SSH_COMMAND", "KUBECONFIG", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0", "GH_CONFIG_DIR"}


def complete_status(api: Api, namespace: str) -> set[str] | None:
    ws = api.get_ws(namespace, "erin-workspace-secrets") or {}
    env = {e["name"] for e in (ws.get("status") or {}).get("env") or ()}
    return env if TEMPLATE_ENV <= env else None


def waiting_pod(api: Api, namespace: str):
    """erin's workspace pod that waits at the gate with everything injected (None until there is one)."""
    for pod in pods_of(api, namespace, "erin-workspace"):
        gates = [g.name for g in pod.spec.scheduling_gates or ()]
        if gates == [c.SCHEDULING_GATE] and not pod.metadata.deletion_timestamp and TEMPLATE_ENV <= pod_env_names(pod):
            return pod
    return None


def test_the_template_s_waiting_pod_gets_every_env_var_and_the_tool_files(cluster, namespace, wso_operator, github_client_secret):
    """The whole template in one `kubectl apply`: the Deployment's first pod may be admitted before the operator's first
    reconcile of the new WorkspaceSecret (status.env still empty, so only GIT_SSH_COMMAND is injected). The operator never
    releases such a pod: it deletes it (WorkspacePodRecreated) and its ReplicaSet creates it again, admitted with
    everything. Whichever happened, the one pod left waiting has every env var and the tool files."""
    if not wso_operator.webhook:
        pytest.skip("the webhook is not reachable from an external cluster without WSO_E2E_WEBHOOK_HOST")
    api = Api(cluster.api_client())
    for path in (APPLICATION, TEMPLATE):
        assert cluster.kubectl("apply", "-n", namespace, "-f", str(path)).returncode == 0
    wait_for(lambda: complete_status(api, namespace), what="status.env complete")
    pod = wait_for(lambda: waiting_pod(api, namespace), what="the waiting pod with every env var")
    # No incomplete pod is left waiting beside it.
    def incomplete_left():
        return [p.metadata.name for p in pods_of(api, namespace, "erin-workspace")
                if not p.metadata.deletion_timestamp and not TEMPLATE_ENV <= pod_env_names(p)]
    wait_for(lambda: not incomplete_left(), timeout=30, what="no incomplete pod left")
    # Every value by secretKeyRef from the workspace Secret: no value in the pod spec.
    for container in pod.spec.containers:
        for e in container.env or ():
            assert e.value is None and e.value_from.secret_key_ref.name == "erin-workspace-secrets", e.name
    volumes = {v.name: v for v in pod.spec.volumes or ()}
    assert volumes["workspace-secrets"].secret.secret_name == "erin-workspace-secrets"
    items = {i.key: i.path for i in volumes["workspace-secrets-user-files"].secret.items}
    assert items.get("tool.gh.hosts.yml") == ".workspace-tokens/gh/hosts.yml", items
    mounts = {m.mount_path for m in pod.spec.containers[0].volume_mounts or ()}
    assert {"/home/coder/.workspace-secrets", "/var/run/workspace-secrets-user"} <= mounts, mounts
