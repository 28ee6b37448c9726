"""Workspace delivery on a cluster with a real node (issue 17, "Done means": what a running pod proves).

The module's own cluster, as in test_real_node.py: the local control plane plus a node (devcluster), the workspace
and operator images imported, the Helm chart installed with the operator image. On the node IP: moto (AWS IAM/STS)
and tests/fakes/git_providers.py's GitHub fake over https, which the operator pod reaches (pods reach the node IP
only). The chart renders the OAuthApplication (type github-enterprise, host = the fake) with its client Secret, and
serves the connect page, which the user's browser reaches through `kubectl port-forward` playing the platform's
auth proxy (the header is trusted from 127.0.0.1 inside the pod only).

The operator pod trusts the fake's certificate through SSL_CERT_FILE (chart value operator.extraEnv) naming the
ca.crt of the webhook's provided certificate Secret (webhook.certSecret, cert-manager's layout): one test CA signs
both. The chart has no value of its own for a private CA of an OAuth provider (e.g. GitHub Enterprise behind an
internal CA); this is the closest a platform can do with it today.

(a) A workspace Deployment whose WorkspaceSecret requires a UserToken: its pod is admitted with the scheduling gate
    workspace-secrets.io/ready and stays unscheduled, with an Event naming the connect link; the user connects and
    the pod runs within seconds.
(b) Inside that container, `git credential fill` (configured only by the injected env: GIT_CONFIG_* naming the
    mounted git-credentials file) returns the UserToken's current access token; after a refresh (the annotation
    usertoken.workspace-secrets.io/refresh) it returns the new one, without a restart, within the kubelet's sync.
(c) lifecycle WhileRunning (the default): scaling the Deployment to 0 revokes its AWS key at moto; scaling back to 1
    mints a new one, and the new pod is released from the gate only once the key is in its files.
(d) delivery Env + rotateAfter: a rotation restarts the Deployment; the new pod's env has the new key; the old key
    stays valid while the rollout is not finished (minReadySeconds longer than the overlap) and is revoked only
    after the rollout completed and the overlap passed.

Values never appear in output: containers print digests; the operator pod's logs, every exec transcript, Events
and our objects' status are scanned at the end for every Secret value of the module, replaced ones included.
Latencies are measured and printed (pytest -rP), and written to <basetemp>/real-node-measurements.json.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from attack_support import Browser
from helpers import Api, wait_for, webhook_answers
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from real_node_support import (
    NodeCA,
    NodeCluster,
    NodeMoto,
    PodLogFollower,
    PortForward,
    SecretText,
    create_namespace,
    leaks_report,
    node_github,
    pods,
    sha256,
    snapshot,
    wait_running,
)
from test_real_node import (  # noqa: F401 (the module-scoped node fixture: one cluster for this module too)
    CHART,
    FULLNAME,
    MOUNT,
    OPERATOR_SELECTOR,
    RELEASE,
    RELEASE_NAMESPACE,
    _json_lines,
    aws_identity_in,
    aws_sdk_in,
    env_in,
    image_ref,
    kubelet_sync_frequency,
    measure,
    node,
    shared_credentials_key_id,
    split_ref,
)

from secret_hygiene import SecretHygiene
from workspace_secrets.api import constants as c

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the node (kubelet, containerd, network namespaces) needs root, as in CI"),
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]

APPLICATION = "gh-node"
CLIENT_SECRET_NAME = "gh-node-oauth"
WEBHOOK_TLS = "wso-webhook-tls"
USER_HEADER = "X-Remote-User"
CLIENT_ID = "wso-node-client"
GATE = c.SCHEDULING_GATE
#: "within seconds" of connecting (the issue); the kubelet then starts the container.
RELEASE_WITHIN = 10.0


# --- the servers and the release ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hygiene(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretHygiene]:
    scanner = SecretHygiene()
    yield scanner
    with node.api_client() as api:
        for namespace in node.namespaces:
            snapshot(scanner, api, namespace)
        snapshot(scanner, api, RELEASE_NAMESPACE, secret_names=["aws-admin", CLIENT_SECRET_NAME])
    logs_dir = tmp_path_factory.getbasetemp() / "real-node-delivery-operator-logs"
    extra = {f"operator log {p}": p.read_text(errors="replace") for p in sorted(logs_dir.glob("operator-*.log"))}
    assert any(_json_lines(text) for text in extra.values()), f"no operator log (with a JSON line) captured in {logs_dir}"
    extra.update({f"component log {p.name}": p.read_text(errors="replace") for p in sorted(node.plane.log_dir.glob("*.log"))})
    extra.update({f"kubectl exec transcript {i}": text for i, text in enumerate(node.transcripts)})
    problem = leaks_report(scanner, extra)
    print(f"[real-node] secret hygiene: {scanner.needle_count} needles, {scanner.haystack_count + len(extra)} haystacks")
    if problem:
        pytest.fail("secret hygiene check failed:\n" + problem, pytrace=False)


@pytest.fixture(scope="module")
def ca() -> NodeCA:
    return NodeCA.new()


@pytest.fixture(scope="module")
def moto(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeMoto]:
    server = NodeMoto.on_node(node.node_ip, tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def github(node: NodeCluster, ca: NodeCA, tmp_path_factory: pytest.TempPathFactory):
    client_secret = SecretText(secrets.token_urlsafe(24))
    server = node_github(node.node_ip, ca, tmp_path_factory.mktemp("github"), clients={CLIENT_ID: client_secret})
    server.client_secret = client_secret
    yield server
    server.stop()


def release_values(moto: NodeMoto, github, connect_port: int) -> dict:
    repository, tag = split_ref(image_ref("operator"))
    allow = {"namespaces": ["wso-e2e-node-*"]}
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "webhook": {"enabled": True, "certSecret": WEBHOOK_TLS},
        "operator": {"resyncInterval": 30, "extraEnv": [
            {"name": "SSL_CERT_FILE", "value": "/var/run/workspace-secrets-operator/webhook-certs/ca.crt"}]},
        "providers": [{"name": "aws-dev", "type": "aws-iam", "credentialsSecret": "aws-admin", "allow": allow,
                       "config": {"endpointURL": moto.url, "region": "us-east-1", "allowPlainHTTP": True}}],
        "connect": {"enabled": True, "publicURL": f"http://127.0.0.1:{connect_port}",
                    "auth": {"userHeader": USER_HEADER, "trustedProxies": ["127.0.0.1/32"]},
                    "applications": [{"name": APPLICATION, "type": "github-enterprise", "host": github.url,
                                      "clientSecretRef": {"name": CLIENT_SECRET_NAME}, "allowedNamespaces": ["wso-e2e-node-*"]}]},
    }


@pytest.fixture(scope="module")
def release(node: NodeCluster, hygiene: SecretHygiene, moto: NodeMoto, github, ca: NodeCA,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """`helm install --wait` (Pod Security "restricted" namespace), the operator's logs followed, the connect page
    forwarded to 127.0.0.1. Yields what a Browser needs to reach the connect page as the auth proxy."""
    webhook_cert, webhook_key = ca.leaf([f"{FULLNAME}-webhook.{RELEASE_NAMESPACE}.svc", f"{FULLNAME}-webhook.{RELEASE_NAMESPACE}.svc.cluster.local"])
    with node.api_client() as api:
        core = k8s.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": RELEASE_NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        core.create_namespaced_secret(RELEASE_NAMESPACE, {"metadata": {"name": "aws-admin"}, "stringData": {
            "AWS_ACCESS_KEY_ID": moto.admin_key_id, "AWS_SECRET_ACCESS_KEY": moto.admin_secret}})
        core.create_namespaced_secret(RELEASE_NAMESPACE, {"metadata": {"name": CLIENT_SECRET_NAME}, "stringData": {
            "client-id": CLIENT_ID, "client-secret": str(github.client_secret)}})
        core.create_namespaced_secret(RELEASE_NAMESPACE, {"metadata": {"name": WEBHOOK_TLS}, "type": "kubernetes.io/tls", "data": {
            "tls.crt": base64.b64encode(webhook_cert).decode(), "tls.key": base64.b64encode(webhook_key).decode(),
            "ca.crt": base64.b64encode(ca.cert_pem).decode()}})
    logs = tmp_path_factory.getbasetemp() / "real-node-delivery-operator-logs"
    follower = PodLogFollower(node, RELEASE_NAMESPACE, OPERATOR_SELECTOR, logs).start()
    forward = PortForward(node, RELEASE_NAMESPACE, f"deployment/{FULLNAME}", 8000, tmp_path_factory.mktemp("port-forward") / "log")
    try:
        t0 = time.monotonic()
        values = release_values(moto, github, forward.port)
        # The chart's README: on a cluster without the CRDs, install first, then add the OAuth applications with an
        # upgrade (Helm cannot map objects of a kind whose CRD is in the same release).
        first = {**values, "connect": {k: v for k, v in values["connect"].items() if k != "applications"}}
        node.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "5m",
                  "-f", "-", input=json.dumps(first), timeout=330)
        node.helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "5m",
                  "-f", "-", input=json.dumps(values), timeout=330)
        measure("delivery: helm install + upgrade --wait s", round(time.monotonic() - t0, 1))
        with node.api_client() as api:
            wait_for(lambda: webhook_answers(api), timeout=60, what="the API server to reach the webhook (provided certificate)")
        forward.start()
        ca_file = tmp_path_factory.mktemp("ca") / "ca.crt"
        ca_file.write_bytes(ca.cert_pem)
        yield SimpleNamespace(connect_url=f"http://127.0.0.1:{forward.port}", connect_user_header=USER_HEADER,
                              connect_trusted_proxy="127.0.0.1", ca_file=str(ca_file), follower=follower)
    finally:
        forward.stop()
        node.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", check=False)
        follower.poll()
        follower.stop()


@pytest.fixture(scope="module")
def api(node: NodeCluster, release) -> Iterator[Api]:
    with node.api_client() as api_client:
        yield Api(api_client)


@pytest.fixture(scope="module")
def namespace(node: NodeCluster, release) -> str:
    name = create_namespace(node)
    node.namespaces.append(name)
    return name


# --- helpers ----------------------------------------------------------------------------------------------------
def deployment(api: Api, namespace: str, name: str, user: str, ws: str, *, min_ready_seconds: int = 0) -> None:
    api.apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": name, "labels": {c.LABEL_USER: user}},
        "spec": {"replicas": 1, "minReadySeconds": min_ready_seconds, "selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name, c.LABEL_WORKSPACE_SECRET: ws, c.LABEL_USER: user}},
            "spec": {"securityContext": {"runAsUser": 1000, "fsGroup": 1000}, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "workspace", "image": image_ref("workspace"), "imagePullPolicy": "Never"}]}}}})


def scale(api: Api, namespace: str, name: str, replicas: int) -> None:
    api.apps.patch_namespaced_deployment_scale(name, namespace, {"spec": {"replicas": replicas}})


def live_pods(api: Api, namespace: str, selector: str) -> list[k8s.V1Pod]:
    return [p for p in pods(api.core.api_client, namespace, selector) if not p.metadata.deletion_timestamp]


def gates_of(pod: k8s.V1Pod) -> list[str]:
    return [g.name for g in pod.spec.scheduling_gates or ()]


def pod_events(api: Api, namespace: str, pod: str, reason: str | None = None) -> list[k8s.CoreV1Event]:
    return [e for e in api.core.list_namespaced_event(namespace).items
            if e.involved_object.kind == "Pod" and e.involved_object.name == pod and (reason is None or e.reason == reason)]


def user_token(api: Api, namespace: str, name: str) -> dict | None:
    try:
        return api.custom.get_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def git_fill_digest(node: NodeCluster, namespace: str, pod: str, url: str) -> str:
    """`git credential fill` for `url` in the container, with nothing but its own environment (the injected
    GIT_CONFIG_* naming the mounted git-credentials file): "username sha256(password)", or git's complaint."""
    protocol, host = url.split("://", 1)
    script = f"""out=$(printf 'protocol={protocol}\\nhost={host}\\n\\n' | GIT_TERMINAL_PROMPT=0 git credential fill 2>/dev/null) || {{ echo "fill failed"; exit 0; }}
user=$(printf '%s\\n' "$out" | sed -n 's/^username=//p')
pass=$(printf '%s\\n' "$out" | sed -n 's/^password=//p' | head -c -1 | sha256sum | cut -d' ' -f1)
echo "$user $pass" """
    result = node.sh(namespace, pod, script)
    assert result.returncode == 0, result.stderr[-1000:]
    return result.stdout.strip()


def moto_key_state(moto: NodeMoto, key: tuple[str, str]) -> str:
    """'live' or moto's error code for an access key."""
    answer = moto.identity(*key)
    return "live" if answer.startswith("arn:") else answer


# --- (a) + (b): a user token gates the workspace, then git uses it through refreshes ----------------------------
@pytest.mark.timeout(1800)  # the module's setup: images, control plane + node, helm install
def test_a_workspace_waits_for_its_user_token_and_git_follows_refreshes(node, api, namespace, release, github, hygiene):
    ns = namespace
    api.custom.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.USER_TOKEN_PLURAL, {
        "apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "metadata": {"name": "lee-gh"},
        "spec": {"user": "lee", "application": APPLICATION}})
    link = wait_for(lambda: ((user_token(api, ns, "lee-gh") or {}).get("status") or {}).get("authorizationURL"),
                    timeout=60, what="the UserToken's connect link")
    assert link.startswith(release.connect_url), link
    api.create_ws(ns, "lee", {"user": "lee", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lee-workspace"},
                              "mountPath": MOUNT, "userTokens": [{"name": "lee-gh"}]})
    deployment(api, ns, "lee-workspace", "lee", "lee")

    # (a) The pod is admitted with the gate and stays unscheduled: no node, PodScheduled False/SchedulingGated.
    pod = wait_for(lambda: (p := live_pods(api, ns, "app=lee-workspace")) and p[0], timeout=60, what="lee's pod created")
    assert gates_of(pod) == [GATE]

    def told_pod():
        # The pod that waits: the first one, or -- when it was admitted before the WorkspaceSecret's first reconcile
        # and so lacks the token's env -- its replacement (the operator deletes such a pod; the ReplicaSet re-creates it).
        for candidate in live_pods(api, ns, "app=lee-workspace"):
            if not candidate.metadata.deletion_timestamp and (told := pod_events(api, ns, candidate.metadata.name, c.EVENT_WAITING_FOR_TOKEN)):
                return candidate, told
        return None
    pod, [waiting] = wait_for(told_pod, timeout=30, what="a waiting pod's WaitingForToken Event")
    name = pod.metadata.name
    assert gates_of(pod) == [GATE]
    assert "'lee-gh'" in waiting.message and link in waiting.message, waiting.message
    time.sleep(3)  # the scheduler has had every chance: a gated pod is never placed
    pod = api.core.read_namespaced_pod(name, ns)
    assert gates_of(pod) == [GATE] and pod.spec.node_name is None and pod.status.phase == "Pending"
    scheduled = next(x for x in pod.status.conditions or () if x.type == "PodScheduled")
    assert (scheduled.status, scheduled.reason) == ("False", "SchedulingGated"), scheduled

    # The user connects (the connect page through the auth proxy, GitHub's authorize and the callback).
    browser = Browser(release, "lee")
    browser.http.trust_env = False  # REQUESTS_CA_BUNDLE from the environment would override verify
    browser.http.verify = release.ca_file
    result = browser.connect(ns, "lee-gh", login="lee")
    assert result.status_code == 200 and "data-ok='true'" in result.text, (result.status_code, result.text[-300:])
    connected = time.monotonic()
    # Released: the gated pod itself, or -- when it was admitted before the token's env existed and so lacks it --
    # its replacement (the operator deletes such a pod; the ReplicaSet re-creates it, admitted complete).
    wait_for(lambda: any(not gates_of(p) for p in live_pods(api, ns, "app=lee-workspace")), timeout=RELEASE_WITHIN, interval=0.1,
             what="a pod of the workspace released from the gate")
    released = round(time.monotonic() - connected, 1)
    running = wait_running(api.core.api_client, ns, "app=lee-workspace", timeout=60)
    started = round(time.monotonic() - connected, 1)
    measure("delivery: connect -> gate removed s", released)
    measure("delivery: connect -> workspace container running s", started)
    measure("delivery: the gated pod itself released (not replaced)", running.metadata.name == name)
    assert released < RELEASE_WITHIN
    name = running.metadata.name
    wait_for(lambda: pod_events(api, ns, name, c.EVENT_GATE_REMOVED), timeout=15, what="the release Event on the running pod")

    # (b) git in the container, with only the injected env, gets the current access token.
    token = api.secret_data(ns, "lee-gh-token")[c.KEY_TOKEN]
    assert git_fill_digest(node, ns, name, github.url) == f"x-access-token {sha256(token)}"
    git_env = ["GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0"]
    delivered = api.secret_data(ns, "lee")
    assert env_in(node, ns, name, git_env) == {k: sha256(delivered[k]) for k in git_env}
    assert delivered["GIT_CONFIG_KEY_0"] == b"credential.helper" and f"{MOUNT}/git-credentials".encode() in delivered["GIT_CONFIG_VALUE_0"]
    del delivered
    container = api.core.read_namespaced_pod(name, ns).status.container_statuses[0].container_id

    # A refresh: the token Secret changes, then (kubelet's Secret sync) the file git reads, in the running container.
    sync = kubelet_sync_frequency(node)
    snapshot(hygiene, api.core.api_client, ns)  # the token about to be replaced is a needle too
    api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.USER_TOKEN_PLURAL, "lee-gh",
                                              {"metadata": {"annotations": {c.ANNOTATION_REFRESH_TOKEN: str(time.time())}}})
    refreshed = wait_for(lambda: (t := (api.secret_data(ns, "lee-gh-token") or {}).get(c.KEY_TOKEN)) != token and t,
                         timeout=30, interval=0.2, what="the token refreshed")
    refreshed_at = time.monotonic()
    wait_for(lambda: sha256((api.secret_data(ns, "lee") or {}).get("token.lee-gh.token", b"")) == sha256(refreshed),
             timeout=10, interval=0.2, what="the refreshed token in the workspace Secret")
    in_secret = round(time.monotonic() - refreshed_at, 1)
    wait_for(lambda: git_fill_digest(node, ns, name, github.url) == f"x-access-token {sha256(refreshed)}",
             timeout=1.5 * sync + 30, interval=1, what="git in the running container using the refreshed token")
    in_container = round(time.monotonic() - refreshed_at, 1)
    measure("delivery: refresh -> workspace Secret s", in_secret)
    measure("delivery: refresh -> git credential fill in the container s", in_container)
    assert in_container <= 1.5 * sync + 15, f"{in_container}s is beyond the kubelet's sync period ({sync}s)"
    status = api.core.read_namespaced_pod(name, ns).status.container_statuses[0]
    assert status.container_id == container and status.restart_count == 0, "the container was not restarted"
    assert no_refresh_token_in(api, ns, "lee"), "the refresh token never reaches the workspace"


def no_refresh_token_in(api: Api, ns: str, ws: str) -> bool:
    """No key of the workspace Secret holds the UserToken's refresh token."""
    refresh = (api.secret_data(ns, "lee-gh-token") or {}).get(c.KEY_REFRESH_TOKEN)
    assert refresh
    return not any(refresh in value for value in (api.secret_data(ns, ws) or {}).values())


# --- (c) lifecycle WhileRunning on a node -------------------------------------------------------------------------
@pytest.mark.timeout(600)
def test_scaling_to_zero_revokes_the_key_and_scaling_up_mints_one_before_the_pod_starts(node, api, namespace, moto, hygiene):
    ns = namespace
    api.create_ws(ns, "lena", {"user": "lena", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lena-workspace"},
                               "mountPath": MOUNT, "credentials": [{"name": "aws", "provider": "aws-dev"}]})  # WhileRunning, Files
    deployment(api, ns, "lena-workspace", "lena", "lena")
    pod = wait_running(api.core.api_client, ns, "app=lena-workspace").metadata.name
    wait_for(lambda: pod_events(api, ns, pod, c.EVENT_GATE_REMOVED), timeout=15, what="the pod released from the gate")
    data = api.secret_data(ns, "lena")
    key1 = (shared_credentials_key_id(data), SecretText(data["aws.AWS_SECRET_ACCESS_KEY"].decode()))
    del data
    assert moto_key_state(moto, key1) == "live"
    sdk = aws_sdk_in(node, ns, pod, moto)
    assert sdk["method"] == "shared-credentials-file" and sdk["key"] == sha256(key1[0]) and sdk["arn"].startswith("arn:"), sdk

    # Stop: scale to zero. The pod goes; the key is revoked at moto and leaves the Secret.
    snapshot(hygiene, api.core.api_client, ns)
    stopped = time.monotonic()
    scale(api, ns, "lena-workspace", 0)
    wait_for(lambda: not pods(api.core.api_client, ns, "app=lena-workspace"), timeout=60, what="lena's pod gone")
    gone = time.monotonic()
    wait_for(lambda: moto_key_state(moto, key1) == "InvalidClientTokenId", timeout=30, interval=0.5, what="the key revoked at moto")
    revoked = time.monotonic()
    measure("delivery: scale to 0 -> key revoked s", round(revoked - stopped, 1))
    measure("delivery: last pod gone -> key revoked s", round(revoked - gone, 1))
    wait_for(lambda: "aws.credentials" not in (api.secret_data(ns, "lena") or {}), timeout=15, what="the key gone from the Secret")
    def aws_entry() -> dict:
        return next(e for e in api.get_ws(ns, "lena")["status"]["credentials"] if e["name"] == "aws")
    wait_for(lambda: aws_entry()["phase"] == "Stopped", timeout=15, what=f"status says Stopped (now {aws_entry()})")

    # Start again: a new key is minted, and the pod is released from the gate only once it is there.
    scale(api, ns, "lena-workspace", 1)
    pod = wait_running(api.core.api_client, ns, "app=lena-workspace").metadata.name
    [released] = wait_for(lambda: pod_events(api, ns, pod, c.EVENT_GATE_REMOVED), timeout=30, what="the release Event")
    data = api.secret_data(ns, "lena")
    key2 = (shared_credentials_key_id(data), SecretText(data["aws.AWS_SECRET_ACCESS_KEY"].decode()))
    del data
    assert key2[0] != key1[0]
    entry = next(e for e in api.get_ws(ns, "lena")["status"]["credentials"] if e["name"] == "aws")
    assert entry["phase"] == "Active" and entry["id"] == key2[0], entry
    scheduled = next(x for x in api.core.read_namespaced_pod(pod, ns).status.conditions if x.type == "PodScheduled")
    # The pod was scheduled (the gate lifted) no earlier than the key was issued (both clocks are this machine's).
    assert scheduled.last_transition_time.timestamp() >= _ts(entry["issuedAt"]) - 1, (scheduled.last_transition_time, entry["issuedAt"])
    # The first process of the container already finds the key in its file: it never saw a pod without it.
    sdk = aws_sdk_in(node, ns, pod, moto)
    assert sdk["method"] == "shared-credentials-file" and sdk["key"] == sha256(key2[0]) and sdk["arn"].startswith("arn:"), sdk
    assert moto_key_state(moto, key1) == "InvalidClientTokenId"


def _ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- (d) delivery Env: a rotation restarts the Deployment -----------------------------------------------------------
@pytest.mark.timeout(600)
def test_env_delivery_rotation_restarts_the_deployment_and_revokes_after_the_rollout(node, api, namespace, moto, hygiene):
    ns = namespace
    overlap = 20
    min_ready = 45  # the new pod becomes available this long after it is ready: the rollout outlasts the overlap
    spec = {"name": "aws", "provider": "aws-dev", "delivery": "Env", "overlap": f"{overlap}s"}
    api.create_ws(ns, "eve", {"user": "eve", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "eve-workspace"},
                              "mountPath": MOUNT, "credentials": [{**spec, "rotateAfter": "40s"}]})
    deployment(api, ns, "eve-workspace", "eve", "eve", min_ready_seconds=min_ready)
    first = wait_running(api.core.api_client, ns, "app=eve-workspace").metadata.name
    data = api.secret_data(ns, "eve")
    key1 = (data["aws.AWS_ACCESS_KEY_ID"].decode(), SecretText(data["aws.AWS_SECRET_ACCESS_KEY"].decode()))
    del data
    assert env_in(node, ns, first, ["AWS_ACCESS_KEY_ID"]) == {"AWS_ACCESS_KEY_ID": sha256(key1[0])}
    snapshot(hygiene, api.core.api_client, ns)

    # The rotation (rotateAfter): a new key in the Secret, then rotation off (the retiring key keeps its overlap).
    def rotated():
        value = (api.secret_data(ns, "eve") or {}).get("aws.AWS_ACCESS_KEY_ID", b"").decode()
        return value if value and value != key1[0] else None
    key2_id = wait_for(rotated, timeout=120, interval=0.5, what="the AWS key rotated")
    rotated_at = time.monotonic()
    api.patch_ws(ns, "eve", {"spec": {"credentials": [spec]}})

    # The operator restarts the Deployment (the pod template's restartedAt); the old pod, with the old key in its env,
    # keeps running until the new pod is available (minReadySeconds); the old key works all that time.
    template = wait_for(lambda: (api.apps.read_namespaced_deployment("eve-workspace", ns).spec.template.metadata.annotations or {})
                        .get(c.ANNOTATION_RESTARTED_AT), timeout=30, what="the restart stamp on the pod template")
    assert template
    observations: list[tuple[float, bool, str, bool]] = []  # (time since rotation, rollout done, key1 state, old pod live)
    from_old_pod = None  # what the old pod's env key gets from moto once the overlap has passed, mid-rollout
    deadline = time.monotonic() + min_ready + overlap + 120
    while time.monotonic() < deadline:
        dep = api.apps.read_namespaced_deployment("eve-workspace", ns)
        done = _rollout_complete(dep)
        state = moto_key_state(moto, key1)
        old_live = any(p.metadata.name == first for p in live_pods(api, ns, "app=eve-workspace"))
        now = round(time.monotonic() - rotated_at, 1)
        observations.append((now, done, state, old_live))
        if state != "live":
            break
        if from_old_pod is None and now > overlap + 5 and not done and old_live:
            from_old_pod = aws_identity_in(node, ns, first, moto, key_id="$AWS_ACCESS_KEY_ID", secret="$AWS_SECRET_ACCESS_KEY")
        time.sleep(1)
    revoked_at = observations[-1][0]
    assert observations[-1][2] == "InvalidClientTokenId", f"the old key was never revoked: {observations[-5:]}"
    rollout_done_at = next((t for t, done, _, _ in observations if done), None)
    assert rollout_done_at is not None, "the rollout was never seen complete before the revocation"
    # Revoked only after the overlap AND the rollout: every observation before both held the key live.
    assert revoked_at >= overlap, observations
    assert all(state == "live" for t, done, state, _ in observations if not done), observations
    assert any(t > overlap + 5 and not done and state == "live" and old for t, done, state, old in observations), \
        f"the overlap passed while the rollout ran (the old pod still serving), and the key stayed live: {observations}"
    assert from_old_pod is not None and from_old_pod.startswith("arn:aws:iam::"), \
        f"past the overlap, mid-rollout, the old pod's env key still works: {from_old_pod}"
    measure("delivery: Env rotation -> rollout complete s", rollout_done_at)
    measure("delivery: Env rotation -> old key revoked s (overlap 20, minReadySeconds 45)", revoked_at)

    # The new pod's env has the new key; the old pod is gone; the new key works from inside it.
    second = wait_running(api.core.api_client, ns, "app=eve-workspace").metadata.name
    assert second != first
    assert env_in(node, ns, second, ["AWS_ACCESS_KEY_ID"]) == {"AWS_ACCESS_KEY_ID": sha256(key2_id)}
    arn = aws_identity_in(node, ns, second, moto, key_id="$AWS_ACCESS_KEY_ID", secret="$AWS_SECRET_ACCESS_KEY")
    assert arn.startswith("arn:aws:iam::"), arn
    restarted = [e for e in api.core.list_namespaced_event(ns).items if e.reason == "WorkspaceRestarted"]
    assert restarted, "the WorkspaceRestarted Event"


def _rollout_complete(dep: k8s.V1Deployment) -> bool:
    status = dep.status
    want = dep.spec.replicas or 0
    return ((status.observed_generation or 0) >= (dep.metadata.generation or 0) and (status.updated_replicas or 0) == want
            and (status.available_replicas or 0) == want and (status.replicas or 0) == want)
