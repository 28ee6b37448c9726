"""The operator the way a platform team runs it, on a cluster with a real node (issue 15, "Done means" 1-5).

This module starts its own cluster: the local control plane plus a node (kubelet, containerd, runc, CNI,
kube-proxy; devcluster), imports the pause, workspace and operator images built from Debian packages by
devcluster.images, and installs the Helm chart with that operator image. Test servers listen on the node IP
only (the address pods reach through the pod bridge): an sshd serving a git repository, moto for AWS IAM/STS.

1. `helm install --wait` starts the operator as a pod that becomes Ready (namespace enforcing Pod Security
   "restricted"); it authenticates with its in-cluster ServiceAccount (no kubeconfig anywhere in the pod) and
   the API server calls its webhook through the chart's Service.
2. The pod-injection example (examples/workspace-with-pod-injection.yaml, with the image replaced by the local
   workspace image and known_hosts pointing at the test's git server) starts; inside the container the key,
   known_hosts and GIT_SSH_COMMAND have the documented owners and modes, and `git clone` over ssh works with
   nothing but what was injected. Without fsGroup: root reads 0400 files and clones; non-root cannot read.
3. User secrets arrive as the env vars and files their annotations declare; a ServiceAccount token is used
   from inside the container against the API server, an AWS key (`delivery: Env`) from the env vars against moto.
   The workspace's pod waits at the scheduling gate until its WhileRunning credentials are minted.
4. Rotation: a new SSH key, a changed user secret and a rotated AWS key (the defaults: `delivery: Files`,
   `lifecycle: WhileRunning`) reach the running container's files without a restart (latency measured against
   the kubelet's sync period); env values stay as they were at container start (the AWS key is never one: the
   env only names the shared credentials file). boto3 in the container, configured by nothing but the injected
   env, uses the first key from the file, then the rotated one; the first key is revoked once its overlap ends.
   (`delivery: Env`'s restart on rotation and the lifecycle on a node: test_real_node_delivery.py.)
5. Deleting the workspace Deployment stops its pod, deletes its Secrets and revokes its credentials; deleting
   the operator pod mid-work: it is replaced, nothing leaks; pods created while no operator runs behave as
   docs/users/pod-injection.md says (failurePolicy Fail for labelled pods only; the ReplicaSet retries).

Secret values never appear in output: the container scripts print digests, modes and owners; every kubectl
exec transcript, every operator pod log and the control plane's and node's component logs are scanned at the
end for the values of every Secret of the module, including values replaced or deleted on the way (recorded just
before each rotation or deletion).
Measurements (rotation latencies, start times) are written to <basetemp>/real-node-measurements.json and
printed (pytest -s or -rP shows them).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import Api, wait_for, webhook_answers
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from real_node_support import (
    API_AUDIENCE,
    GIT_README,
    GitSshd,
    NodeCluster,
    NodeMoto,
    PodLogFollower,
    SecretText,
    create_namespace,
    leaks_report,
    pods,
    running_pod,
    sha256,
    snapshot,
    wait_running,
)

from secret_hygiene import SecretHygiene
from workspace_secrets.api import constants as c

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "workspace-secrets-operator"
CHART_NAME = "workspace-secrets-operator"
EXAMPLE = REPO_ROOT / "examples" / "workspace-with-pod-injection.yaml"
RELEASE = "wso"
RELEASE_NAMESPACE = "wso-system"
FULLNAME = f"{RELEASE}-{CHART_NAME}"
OPERATOR_SELECTOR = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name={CHART_NAME}"
MOUNT = "/home/coder/.workspace-secrets"  # the example's spec.mountPath
USER_FILES = c.DEFAULT_USER_FILES_PATH

pytestmark = [
    pytest.mark.sshd,
    pytest.mark.skipif(os.geteuid() != 0, reason="the node (kubelet, containerd, network namespaces) needs root, as in CI"),
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists() or shutil.which("git") is None, reason="needs openssh-server and git"),
]

MEASURED: dict[str, object] = {}


def measure(name: str, value: object) -> None:
    MEASURED[name] = value
    print(f"[real-node] {name}: {value}")


# --- the cluster, the images, the servers, the release -----------------------------------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    """Control plane + node, with the three images imported. One node per machine: N1's launcher takes a
    machine-wide lock, so another run's node start waits for this one to stop."""
    from devcluster import images
    from devcluster.controlplane import ControlPlane, resolve_bin_dir

    bin_dir = resolve_bin_dir()
    t0 = time.monotonic()
    tars = {name: images.build(name) for name in ("workspace", "operator")}  # the node builds its pause image
    measure("images build (cache hit or cold) s", round(time.monotonic() - t0, 1))
    t0 = time.monotonic()
    plane = ControlPlane(bin_dir=bin_dir, node=True).start()
    try:
        measure("control plane + node start s", round(time.monotonic() - t0, 1))
        measure("control plane + node start phases s", {k: round(v, 1) for k, v in plane.timings.items()})
        t0 = time.monotonic()
        for name, tar in tars.items():
            assert images.IMAGES[name] in plane.import_image(tar)
        measure("image import s", round(time.monotonic() - t0, 1))
        handle = NodeCluster(plane=plane, kubeconfig=plane.kubeconfig, bin_dir=bin_dir,
                             scratch=tmp_path_factory.mktemp("node-home"), node_ip=plane.node_ip, node_name=plane.node_name)
        yield handle
    finally:
        plane.stop()
        out = tmp_path_factory.getbasetemp() / "real-node-measurements.json"
        out.write_text(json.dumps(MEASURED, indent=2) + "\n")
        print(f"[real-node] measurements: {json.dumps(MEASURED)}")


def image_ref(name: str) -> str:
    from devcluster import images

    return images.IMAGES[name]


def split_ref(ref: str) -> tuple[str, str]:
    """registry/path/name:tag -> (repository, tag)."""
    repository, _, tag = ref.rpartition(":")
    assert repository and "/" not in tag, ref
    return repository, tag


@pytest.fixture(scope="module")
def hygiene(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretHygiene]:
    """Torn down last: every Secret of the module's namespaces (and the admin Secret) against the operator pods'
    logs, the exec transcripts, Events and our objects' status and metadata."""
    scanner = SecretHygiene()
    yield scanner
    with node.api_client() as api:
        for namespace in node.namespaces:
            snapshot(scanner, api, namespace)
        snapshot(scanner, api, RELEASE_NAMESPACE, secret_names=["aws-admin"])
    logs_dir = tmp_path_factory.getbasetemp() / "real-node-operator-logs"
    extra = {f"operator log {p}": p.read_text(errors="replace") for p in sorted(logs_dir.glob("operator-*.log"))}
    assert any(_json_lines(text) for text in extra.values()), f"no operator log (with a JSON line) captured in {logs_dir}"
    # The control plane's and the node's components (kubelet, containerd, kube-proxy, ...).
    extra.update({f"component log {p.name}": p.read_text(errors="replace") for p in sorted(node.plane.log_dir.glob("*.log"))})
    extra.update({f"kubectl exec transcript {i}": text for i, text in enumerate(node.transcripts)})
    problem = leaks_report(scanner, extra)
    print(f"[real-node] secret hygiene: {scanner.needle_count} needles, {scanner.haystack_count + len(extra)} haystacks")
    if problem:
        pytest.fail("secret hygiene check failed:\n" + problem, pytrace=False)


def _json_lines(text: str) -> int:
    count = 0
    for line in text.splitlines():
        try:
            count += isinstance(json.loads(line), dict)
        except ValueError:
            pass
    return count


@pytest.fixture(scope="module")
def git_server(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitSshd]:
    server = GitSshd.start(node.node_ip, tmp_path_factory.mktemp("git-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto(node: NodeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeMoto]:
    server = NodeMoto.on_node(node.node_ip, tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


def release_values(moto: NodeMoto) -> dict:
    repository, tag = split_ref(image_ref("operator"))
    allow = {"namespaces": ["wso-e2e-node-*"]}
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "webhook": {"enabled": True},
        "operator": {"resyncInterval": 30},
        "providers": [
            {"name": "cluster-tokens", "type": "kubernetes-token", "allow": allow,
             "config": {"allowedServiceAccounts": ["ci-*"], "audiences": [API_AUDIENCE], "maxExpirationSeconds": 7200}},
            {"name": "aws-dev", "type": "aws-iam", "credentialsSecret": "aws-admin", "allow": allow,
             "config": {"endpointURL": moto.url, "region": "us-east-1", "allowPlainHTTP": True}},
        ],
    }


@pytest.fixture(scope="module")
def release(node: NodeCluster, hygiene: SecretHygiene, moto: NodeMoto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodLogFollower]:
    """`helm install --wait` into a namespace enforcing Pod Security "restricted"; the operator pods' logs are
    followed from the start. Uninstalled at the end (the webhook configuration must go with it)."""
    with node.api_client() as api:
        core = k8s.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": RELEASE_NAMESPACE, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        core.create_namespaced_secret(RELEASE_NAMESPACE, {"metadata": {"name": "aws-admin"}, "stringData": {
            "AWS_ACCESS_KEY_ID": moto.admin_key_id, "AWS_SECRET_ACCESS_KEY": moto.admin_secret}})
    follower = PodLogFollower(node, RELEASE_NAMESPACE, OPERATOR_SELECTOR, tmp_path_factory.getbasetemp() / "real-node-operator-logs").start()
    try:
        t0 = time.monotonic()
        node.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "5m",
                  "-f", "-", input=json.dumps(release_values(moto)), timeout=330)
        measure("helm install --wait s", round(time.monotonic() - t0, 1))
        with node.api_client() as api:
            wait_for(lambda: webhook_answers(api), timeout=60, what="the API server to reach the webhook through the Service")
        measure("helm install to webhook answering s", round(time.monotonic() - t0, 1))
        yield follower
    finally:
        node.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", check=False)
        follower.poll()
        follower.stop()


@pytest.fixture(scope="module")
def api(node: NodeCluster, release: PodLogFollower) -> Iterator[Api]:
    with node.api_client() as api_client:
        yield Api(api_client)


@pytest.fixture(scope="module")
def workspaces(node: NodeCluster, release: PodLogFollower) -> str:
    """The namespace of the module's workspaces."""
    name = create_namespace(node)
    node.namespaces.append(name)
    return name


def operator_pod(api: Api) -> k8s.V1Pod:
    [pod] = [p for p in api.core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=OPERATOR_SELECTOR).items
             if not p.metadata.deletion_timestamp]
    return pod


# --- in the container ----------------------------------------------------------------------------------------
def files_in(node: NodeCluster, namespace: str, pod: str, paths: list[str]) -> dict[str, tuple[str, str, str, str]]:
    """path -> (mode, uid, gid, sha256 of the content or '-' when unreadable), as the container sees them
    (stat -L: Secret volume files are symlinks into ..data)."""
    script = "for f in " + " ".join(f"'{p}'" for p in paths) + """; do
  if [ -e "$f" ]; then m=$(stat -L -c '%a %u %g' "$f"); s=$(sha256sum < "$f" 2>/dev/null | cut -d' ' -f1); echo "$f $m ${s:--}"
  else echo "$f missing - - -"; fi
done"""
    result = node.sh(namespace, pod, script)
    assert result.returncode == 0, result.stderr
    out = {}
    for line in result.stdout.splitlines():
        path, mode, uid, gid, digest = line.split()
        out[path] = (mode, uid, gid, digest)
    return out


def env_in(node: NodeCluster, namespace: str, pod: str, names: list[str]) -> dict[str, str | None]:
    """name -> sha256 of the value in the container's environment (None when unset)."""
    script = "for n in " + " ".join(names) + """; do
  if printenv "$n" >/dev/null; then echo "$n $(printenv "$n" | head -c -1 | sha256sum | cut -d' ' -f1)"; else echo "$n -"; fi
done"""
    result = node.sh(namespace, pod, script)
    assert result.returncode == 0, result.stderr
    return {name: (None if digest == "-" else digest) for name, digest in (line.split() for line in result.stdout.splitlines())}


def git_clone(node: NodeCluster, namespace: str, pod: str, url: str) -> tuple[int, str]:
    """`git clone` in the container with its own environment (GIT_SSH_COMMAND as injected): (exit code, README
    digest or git's stderr)."""
    script = f"""d=$(mktemp -d) && cd "$d" && git clone -q '{url}' repo 2>err; rc=$?
if [ $rc -eq 0 ]; then sha256sum < repo/README | cut -d' ' -f1; else cat err; fi; exit $rc"""
    result = node.sh(namespace, pod, script, timeout=90)
    return result.returncode, (result.stdout.strip() or result.stderr.strip())


def identity_with_token_file(node: NodeCluster, namespace: str, pod: str, token_file: str) -> str:
    """A SelfSubjectReview with the token in `token_file`, from inside the pod, at the `kubernetes` Service
    (verified with the pod's own ca.crt): the username, or the HTTP status."""
    script = f"""python3 - <<'EOF'
import json, os, ssl, urllib.error, urllib.request
token = open({token_file!r}).read().strip()
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
body = json.dumps({{"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}}).encode()
request = urllib.request.Request(url, data=body, method="POST", headers={{"Authorization": "Bearer " + token, "Content-Type": "application/json"}})
context = ssl.create_default_context(cafile="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt")
try:
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        print(json.load(response)["status"]["userInfo"]["username"])
except urllib.error.HTTPError as exc:
    print(exc.code)
EOF"""
    result = node.sh(namespace, pod, script)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def aws_identity_in(node: NodeCluster, namespace: str, pod: str, moto: NodeMoto, *, key_id: str, secret: str) -> str:
    """sts:GetCallerIdentity from inside the container with the key taken from `key_id`/`secret` (shell
    expressions: "$AWS_ACCESS_KEY_ID" for the env, "$(cat FILE)" for a file), signed by curl: the ARN or the error code."""
    script = f"""out=$(curl -sS --aws-sigv4 'aws:amz:us-east-1:sts' --user "{key_id}:{secret}" \\
  -d 'Action=GetCallerIdentity&Version=2011-06-15' '{moto.url}/') || exit 3
arn=$(printf '%s' "$out" | sed -n 's:.*<Arn>\\(.*\\)</Arn>.*:\\1:p')
if [ -n "$arn" ]; then echo "$arn"; else printf '%s' "$out" | sed -n 's:.*<Code>\\(.*\\)</Code>.*:\\1:p'; fi"""
    result = node.sh(namespace, pod, script)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def aws_sdk_in(node: NodeCluster, namespace: str, pod: str, moto: NodeMoto) -> dict[str, str]:
    """What boto3 in the container makes of its own environment (nothing set by the test but the endpoint: the
    credentials come from wherever the SDK's chain finds them -- AWS_SHARED_CREDENTIALS_FILE, or the env vars):
    {"method": the chain's source, "key": sha256 of the access key id it used, "arn": sts:GetCallerIdentity's
    ARN or moto's error code}. A new process each time: it reads the file as it is now."""
    script = f"""python3 - <<'EOF'
import hashlib, json
import boto3
from botocore.exceptions import ClientError
session = boto3.Session()
found = session.get_credentials()
key = found.get_frozen_credentials().access_key if found else ""
try:
    arn = session.client("sts", endpoint_url={moto.url!r}).get_caller_identity()["Arn"]
except ClientError as exc:
    arn = exc.response["Error"]["Code"]
print(json.dumps({{"method": found.method if found else None, "key": hashlib.sha256(key.encode()).hexdigest(), "arn": arn}}))
EOF"""
    result = node.sh(namespace, pod, script)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def shared_credentials_key_id(data: dict[str, bytes], entry: str = "aws") -> str:
    """The access key id in a workspace Secret's AWS shared credentials file (`<entry>.credentials`)."""
    import configparser

    parser = configparser.ConfigParser()
    parser.read_string(data[f"{entry}.credentials"].decode())
    return parser["default"]["aws_access_key_id"]


def secret_sha(api: Api, namespace: str, name: str) -> dict[str, str]:
    return {k: sha256(v) for k, v in (api.secret_data(namespace, name) or {}).items()}


# --- 1. the operator as a pod -------------------------------------------------------------------------------
@pytest.mark.timeout(1800)  # the module's setup: images (cold: Debian packages), control plane + node, helm install
def test_helm_install_runs_the_operator_as_a_ready_pod_with_its_service_account(node, api, release):
    status = json.loads(node.helm("status", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    pod = operator_pod(api)
    assert pod.status.phase == "Running" and all(s.ready for s in pod.status.container_statuses)
    assert pod.spec.node_name == node.node_name
    assert pod.spec.service_account_name == FULLNAME
    [container] = pod.spec.containers
    assert container.image == image_ref("operator") or f"docker.io/library/{container.image}" == image_ref("operator")
    assert not any(a.startswith("--kubeconfig") for a in container.args or ())
    assert {e.name for e in container.env or ()}.isdisjoint({"KUBECONFIG"})
    # Inside: the process runs as 65532 on a read-only root filesystem, and the credentials the operator's
    # client loads (the same in-cluster loader, nothing configured) are the chart's ServiceAccount.
    probe = """
import errno, json, os
from kubernetes import client, config
configuration = client.Configuration()
config.load_incluster_config(client_configuration=configuration)
with client.ApiClient(configuration) as api:
    review = client.AuthenticationV1Api(api).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
try:
    open("/probe", "w")
    read_only = False
except OSError as exc:
    read_only = exc.errno == errno.EROFS
cmdline = open("/proc/1/cmdline", "rb").read().split(b"\\0")
environ = [e.split(b"=", 1)[0] for e in open("/proc/1/environ", "rb").read().split(b"\\0") if e]
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "user": review.status.user_info.username, "host": configuration.host,
                  "readOnlyRoot": read_only, "tmpWritable": os.access("/tmp", os.W_OK),
                  "pid1": [a.decode() for a in cmdline[:3]], "pid1Kubeconfig": any(a.startswith(b"--kubeconfig") for a in cmdline),
                  "pid1KubeconfigEnv": b"KUBECONFIG" in environ}))
"""
    result = node.sh(RELEASE_NAMESPACE, pod.metadata.name, f"exec python3 -c '{probe}'", container="operator")
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["user"] == f"system:serviceaccount:{RELEASE_NAMESPACE}:{FULLNAME}", seen
    assert (seen["uid"], seen["gid"]) == (65532, 65532) and seen["readOnlyRoot"] and seen["tmpWritable"], seen
    assert not seen["pid1Kubeconfig"] and not seen["pid1KubeconfigEnv"], seen
    assert "workspace-secrets-operator" in " ".join(seen["pid1"]), seen
    kubernetes_service = api.core.read_namespaced_service("kubernetes", "default").spec.cluster_ip
    assert seen["host"] == f"https://{kubernetes_service}:443", seen  # through the `kubernetes` Service
    # kopf's liveness endpoint answers (the probes use it) and the operator logged its start in JSON.
    logs = node.kubectl("logs", "-n", RELEASE_NAMESPACE, pod.metadata.name, "-c", "operator").stdout
    first = json.loads(next(line for line in logs.splitlines() if line.startswith("{")))
    assert {"message", "severity", "timestamp"} <= set(first)
    for provider in ("'cluster-tokens' (kubernetes-token)", "'aws-dev' (aws-iam)"):
        assert f"dynamic-credential provider {provider} configured" in logs, provider
    assert not re.search(r"cannot [a-z]+ resource|not enough permissions", logs, re.IGNORECASE), "refused by RBAC"


def test_the_api_server_calls_the_webhook_through_the_charts_service(node, api, release):
    admission = k8s.AdmissionregistrationV1Api(api.core.api_client)
    [hook] = admission.read_mutating_webhook_configuration(f"{FULLNAME}-webhook").webhooks
    service = hook.client_config.service
    assert hook.client_config.url is None
    assert (service.namespace, service.name, service.port) == (RELEASE_NAMESPACE, f"{FULLNAME}-webhook", 443)
    assert hook.client_config.ca_bundle, "the operator publishes its CA"
    assert hook.failure_policy == "Fail"
    assert [e.to_dict() for e in hook.object_selector.match_expressions] == [
        {"key": c.LABEL_WORKSPACE_SECRET, "operator": "Exists", "values": None}]
    # The Service's endpoints are the operator pod's webhook port, and nothing else answers for it.
    discovery = k8s.DiscoveryV1Api(api.core.api_client)
    slices = discovery.list_namespaced_endpoint_slice(RELEASE_NAMESPACE, label_selector=f"kubernetes.io/service-name={FULLNAME}-webhook").items
    endpoints = [(a, p.port) for s in slices for e in s.endpoints or () if e.conditions.ready for a in e.addresses for p in s.ports]
    assert endpoints == [(operator_pod(api).status.pod_ip, 9443)], endpoints
    assert webhook_answers(api.core.api_client)


# --- 2. the example's workspace pod, with and without fsGroup ------------------------------------------------
def example_docs(git_server: GitSshd) -> tuple[list[dict], dict]:
    """The example as shipped, with two substitutions: the image (no registry here: the local workspace image,
    never pulled) and known_hosts (the test's git server instead of github.com). Everything else is as written."""
    original = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    docs = json.loads(json.dumps(original))
    ws, deployment = (next(d for d in docs if d["kind"] == kind) for kind in ("WorkspaceSecret", "Deployment"))
    ws["spec"]["ssh"]["knownHosts"] = [git_server.host_line]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["image"], container["imagePullPolicy"] = image_ref("workspace"), "Never"
    return docs, ws


AUTHORIZED: list[str] = []


def authorize(git_server: GitSshd, public_key: str) -> None:
    AUTHORIZED.append(public_key)
    git_server.authorize(*AUTHORIZED)


def test_the_example_workspace_starts_and_clones_over_ssh_with_only_what_was_injected(node, api, workspaces, git_server):
    namespace = workspaces
    docs, ws = example_docs(git_server)
    name = ws["metadata"]["name"]
    t0 = time.monotonic()
    node.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))
    api.wait_condition(namespace, name, timeout=60)
    pod = wait_running(api.core.api_client, namespace, "app=dana-workspace")
    measure("example pod running after apply s", round(time.monotonic() - t0, 1))
    api.wait_condition(namespace, name, type_="WorkspaceBound", timeout=30)

    secret = secret_sha(api, namespace, name)
    paths = [f"{MOUNT}/{key}" for key in ("ssh-privatekey", "ssh-publickey", "known_hosts", "GIT_SSH_COMMAND")]
    seen = files_in(node, namespace, pod.metadata.name, paths)
    for path in paths:
        # Root-owned, group fsGroup (1000), 0440 (docs/users/pod-injection.md); the content is the Secret's.
        assert seen[path] == ("440", "0", "1000", secret[path.rsplit("/", 1)[1]]), (path, seen[path][:3])
    ids = node.sh(namespace, pod.metadata.name, "id -u; id -G").stdout.split()
    assert ids[0] == "1000" and "1000" in ids[1:], ids
    assert env_in(node, namespace, pod.metadata.name, ["GIT_SSH_COMMAND"]) == {"GIT_SSH_COMMAND": secret["GIT_SSH_COMMAND"]}
    # No other key in the container: ~/.ssh holds nothing of ours.
    assert node.sh(namespace, pod.metadata.name, "ls -A ~/.ssh 2>/dev/null | wc -l").stdout.strip() == "0"

    # The git server does not know the key yet: refused. Registered (status.sshPublicKey, what the user gives
    # their git provider): the clone works, verifying the server against the injected known_hosts.
    code, output = git_clone(node, namespace, pod.metadata.name, git_server.url)
    assert code != 0 and "Permission denied (publickey)" in output, output
    authorize(git_server, api.get_ws(namespace, name)["status"]["sshPublicKey"])
    code, output = git_clone(node, namespace, pod.metadata.name, git_server.url)
    assert code == 0 and output == sha256(GIT_README), output


def test_without_fs_group_root_reads_0400_files_and_non_root_cannot(node, api, workspaces, git_server):
    namespace = workspaces
    image = image_ref("workspace")
    api.create_ws(namespace, "ray", {"user": "ray", "workspaceRef": {"kind": "Pod", "name": "ray-root"}, "mountPath": MOUNT,
                                     "ssh": {"knownHosts": [git_server.host_line]}})
    api.wait_condition(namespace, "ray")
    authorize(git_server, api.get_ws(namespace, "ray")["status"]["sshPublicKey"])

    def pod(name: str, run_as: int) -> dict:
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "labels": {"app": name, c.LABEL_WORKSPACE_SECRET: "ray", c.LABEL_USER: "ray"}},
                "spec": {"securityContext": {"runAsUser": run_as}, "terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "workspace", "image": image, "imagePullPolicy": "Never", "command": ["sleep", "infinity"]}]}}

    node.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod("ray-root", 0)))
    created = node.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod("ray-nonroot", 1000)))
    assert "Warning:" in created.stderr and "fsGroup" in created.stderr, created.stderr  # the webhook's warning
    wait_running(api.core.api_client, namespace, "app=ray-root")
    wait_running(api.core.api_client, namespace, "app=ray-nonroot")
    secret = secret_sha(api, namespace, "ray")
    key = f"{MOUNT}/ssh-privatekey"
    assert files_in(node, namespace, "ray-root", [key])[key] == ("400", "0", "0", secret["ssh-privatekey"])
    code, output = git_clone(node, namespace, "ray-root", git_server.url)
    assert code == 0 and output == sha256(GIT_README), output
    # Non-root without fsGroup: admitted with the warning above, and indeed it cannot read the key.
    known_hosts = f"{MOUNT}/known_hosts"
    seen = files_in(node, namespace, "ray-nonroot", [key, known_hosts])
    assert seen == {key: ("400", "0", "0", "-"), known_hosts: ("400", "0", "0", "-")}, seen
    code, output = git_clone(node, namespace, "ray-nonroot", git_server.url)
    # ssh cannot read known_hosts (so knows no host key) before it would try the unreadable key.
    assert code != 0 and "Host key verification failed" in output, output
    # The WorkspaceSecret is bound to the root pod: deleting it later deletes the WorkspaceSecret.
    api.wait_condition(namespace, "ray", type_="WorkspaceBound", timeout=30)


# --- 3. user secrets and dynamic credentials from inside the container -----------------------------------------
def user_secret(api: Api, namespace: str, name: str, user: str, data: dict[str, bytes], *, env: str = "", files: str = "") -> None:
    annotations = {k: v for k, v in ((c.ANNOTATION_USER_ENV, env), (c.ANNOTATION_USER_FILES, files)) if v}
    api.core.create_namespaced_secret(namespace, k8s.V1Secret(
        metadata=k8s.V1ObjectMeta(name=name, labels={c.LABEL_USER: user}, annotations=annotations),
        data={k: base64.b64encode(v).decode() for k, v in data.items()}))


def workspace_deployment(api: Api, namespace: str, name: str, user: str, ws: str) -> None:
    api.apps.create_namespaced_deployment(namespace, {
        "metadata": {"name": name, "labels": {c.LABEL_USER: user}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": {
            "metadata": {"labels": {"app": name, c.LABEL_WORKSPACE_SECRET: ws, c.LABEL_USER: user}},
            "spec": {"securityContext": {"runAsUser": 1000, "fsGroup": 1000}, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "workspace", "image": image_ref("workspace"), "imagePullPolicy": "Never",
                                     "command": ["sleep", "infinity"]}]}}}})


@pytest.fixture(scope="module")
def erin(api: Api, workspaces: str, git_server: GitSshd) -> dict:
    """Erin's workspace: a Deployment, user secrets (an env var and a file), a ServiceAccount token and an AWS key.
    Returns digests only (pytest prints fixture values in failure reports)."""
    namespace = workspaces
    api.core.create_namespaced_service_account(namespace, {"metadata": {"name": "ci-bot"}})
    npm = {"token": secrets.token_urlsafe(24).encode(), "npmrc": f"//registry.npmjs.org/:_authToken={secrets.token_urlsafe(24)}\n".encode()}
    user_secret(api, namespace, "npm", "erin", npm, env="NPM_TOKEN=token", files=".npmrc=npmrc:0600")
    api.create_ws(namespace, "erin", {"user": "erin", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "erin-workspace"},
                                      "mountPath": MOUNT, "ssh": {"knownHosts": [git_server.host_line]},
                                      "credentials": [{"name": "kube", "provider": "cluster-tokens",
                                                       "parameters": {"serviceAccount": "ci-bot", "expirationSeconds": "3600"}},
                                                      {"name": "aws", "provider": "aws-dev", "delivery": "Env"}]})
    api.wait_condition(namespace, "erin", timeout=60)
    api.wait_condition(namespace, "erin", type_=c.CONDITION_CREDENTIALS_READY, timeout=60)
    wait_for(lambda: "user.npm.token" in (api.secret_data(namespace, "erin") or {}), timeout=30, what="erin's user secrets delivered")
    workspace_deployment(api, namespace, "erin-workspace", "erin", "erin")
    pod = wait_running(api.core.api_client, namespace, "app=erin-workspace")
    api.wait_condition(namespace, "erin", type_="WorkspaceBound", timeout=30)
    return {"namespace": namespace, "pod": pod.metadata.name, "npm": {k: sha256(v) for k, v in npm.items()}}


def test_user_secrets_arrive_as_the_declared_env_vars_and_files(node, api, erin):
    namespace, pod = erin["namespace"], erin["pod"]
    status = api.get_ws(namespace, "erin")["status"]
    assert {"name": "NPM_TOKEN", "key": "user.npm.token"} in status["env"]
    assert status["files"] == [{"key": "user.npm.npmrc", "path": ".npmrc", "mode": 0o600}]
    assert env_in(node, namespace, pod, ["NPM_TOKEN"]) == {"NPM_TOKEN": erin["npm"]["token"]}
    path = f"{USER_FILES}/.npmrc"
    mode, uid, gid, digest = files_in(node, namespace, pod, [path])[path]
    assert digest == erin["npm"]["npmrc"] and (uid, gid) == ("0", "1000")
    # Declared 0600; the kubelet adds group read for fsGroup on read-only volumes (mode | 0440), so the
    # non-root user reads it through the group.
    assert mode == "640", mode
    # Only what was declared: the Secret's npmrc key is not an env var, its token key not a file.
    assert files_in(node, namespace, pod, [f"{USER_FILES}/token"])[f"{USER_FILES}/token"][0] == "missing"


def test_dynamic_credentials_work_from_inside_the_container(node, api, erin, moto):
    namespace, pod = erin["namespace"], erin["pod"]
    # The pod was admitted with the scheduling gate and released once its WhileRunning credentials were minted.
    assert [e for e in api.core.list_namespaced_event(namespace).items if e.involved_object.kind == "Pod"
            and e.involved_object.name == pod and e.reason == c.EVENT_GATE_REMOVED], "erin's pod waited at the gate"
    data = secret_sha(api, namespace, "erin")
    token_file = f"{MOUNT}/kube.token"
    assert files_in(node, namespace, pod, [token_file])[token_file] == ("440", "0", "1000", data["kube.token"])
    # The token, read from the mounted file, authenticates to the API server as the requested ServiceAccount
    # (not as the pod's own `default` ServiceAccount).
    assert identity_with_token_file(node, namespace, pod, token_file) == f"system:serviceaccount:{namespace}:ci-bot"
    # The AWS key, from the env vars the webhook injected, authenticates to moto (STS), as the IAM user made for it.
    env = env_in(node, namespace, pod, ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"])
    assert env == {k: data[f"aws.{k}"] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    key_id = next(e for e in api.get_ws(namespace, "erin")["status"]["credentials"] if e["name"] == "aws")["id"]
    iam_user = moto.owner_of(key_id)
    assert iam_user, "the key in status is live at the provider"
    arn = aws_identity_in(node, namespace, pod, moto, key_id="$AWS_ACCESS_KEY_ID", secret="$AWS_SECRET_ACCESS_KEY")
    assert arn.startswith("arn:aws:iam::") and arn.endswith(f"/{iam_user}"), arn
    # delivery Env: the SDK's chain takes the env vars (which come first), and the shared credentials file the
    # Files path always delivers holds the same key.
    assert aws_sdk_in(node, namespace, pod, moto) == {"method": "env", "key": data["aws.AWS_ACCESS_KEY_ID"], "arn": arn}
    assert sha256(shared_credentials_key_id(api.secret_data(namespace, "erin"))) == data["aws.AWS_ACCESS_KEY_ID"]
    # A made-up key is refused by the same server (moto checks keys).
    assert aws_identity_in(node, namespace, pod, moto, key_id="AKIAIOSFODNN7EXAMPLE", secret="x" * 40) == "InvalidClientTokenId"


# --- 4. rotation reaches the files of a running container; env values stay -----------------------------------
def kubelet_sync_frequency(node: NodeCluster) -> float:
    """The kubelet's syncFrequency, from its own configuration (configz, through the API server)."""
    config = json.loads(node.kubectl("get", "--raw", f"/api/v1/nodes/{node.node_name}/proxy/configz").stdout)
    text = config["kubeletconfig"].get("syncFrequency", "1m0s")
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text)
    assert match, text
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


@pytest.mark.timeout(900)
def test_rotation_reaches_running_containers_files_but_not_their_env(node, api, workspaces, moto, git_server, hygiene):
    namespace = workspaces
    sync = kubelet_sync_frequency(node)
    measure("kubelet syncFrequency s", sync)
    token_v1 = secrets.token_urlsafe(24).encode()
    token_v1_sha = sha256(token_v1)
    user_secret(api, namespace, "rita-token", "rita", {"token": token_v1}, env="RITA_TOKEN=token", files="token.txt=token")
    # The AWS key with the defaults: delivery Files (the shared credentials file; env vars only name it) and
    # lifecycle WhileRunning (minted once the workspace's pod exists; the pod waits at the gate until then).
    api.create_ws(namespace, "rita", {"user": "rita", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rita-workspace"},
                                      "mountPath": MOUNT, "ssh": {"knownHosts": [git_server.host_line]},
                                      "credentials": [{"name": "aws", "provider": "aws-dev", "rotateAfter": "60s", "overlap": "120s"}]})
    api.wait_condition(namespace, "rita", timeout=60)
    wait_for(lambda: "user.rita-token.token" in (api.secret_data(namespace, "rita") or {}), timeout=30, what="rita's user secret")
    assert "aws.credentials" not in api.secret_data(namespace, "rita"), "WhileRunning: nothing minted before a pod exists"
    workspace_deployment(api, namespace, "rita-workspace", "rita", "rita")
    pod = wait_running(api.core.api_client, namespace, "app=rita-workspace").metadata.name
    started = time.monotonic()
    start_uid = api.core.read_namespaced_pod(pod, namespace).status.container_statuses[0].container_id

    first = api.secret_data(namespace, "rita")
    key1 = (first["aws.AWS_ACCESS_KEY_ID"].decode(), SecretText(first["aws.AWS_SECRET_ACCESS_KEY"].decode()))
    assert shared_credentials_key_id(first) == key1[0]
    expected = {"ssh": sha256(first["ssh-privatekey"]), "user": token_v1_sha, "aws": sha256(first["aws.credentials"])}
    del first
    files = {"ssh": f"{MOUNT}/ssh-privatekey", "user": f"{USER_FILES}/token.txt", "aws": f"{MOUNT}/aws.credentials"}
    env_names = ["RITA_TOKEN", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GIT_SSH_COMMAND"]
    env_at_start = env_in(node, namespace, pod, env_names)
    assert env_at_start["RITA_TOKEN"] == expected["user"]
    # delivery Files: the env names the file, never carries the key.
    assert env_at_start["AWS_SHARED_CREDENTIALS_FILE"] == sha256(files["aws"])
    assert env_at_start["AWS_ACCESS_KEY_ID"] is None and env_at_start["AWS_SECRET_ACCESS_KEY"] is None
    seen = files_in(node, namespace, pod, list(files.values()))
    before = {what: seen[path][3] for what, path in files.items()}
    assert before == expected
    assert seen[files["aws"]][:3] == ("440", "0", "1000"), seen[files["aws"]]
    # boto3 in the container, configured by nothing but the injected env, finds the key in the file.
    sdk = aws_sdk_in(node, namespace, pod, moto)
    iam_user = moto.owner_of(key1[0])
    assert sdk["method"] == "shared-credentials-file" and sdk["key"] == sha256(key1[0]), sdk
    assert sdk["arn"].startswith("arn:aws:iam::") and sdk["arn"].endswith(f"/{iam_user}"), sdk

    # Rotate the SSH key and change the user secret now; the AWS key rotates by itself (rotateAfter 60 s), once
    # (then the rotation is switched off: the retiring key keeps its overlap).
    token_v2 = secrets.token_urlsafe(24).encode()
    snapshot(hygiene, api.core.api_client, namespace)  # the values about to be replaced are needles too
    api.patch_ws(namespace, "rita", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: str(time.time())}}})
    api.core.patch_namespaced_secret("rita-token", namespace, {"data": {"token": base64.b64encode(token_v2).decode()}})
    targets = {"ssh": ("ssh-privatekey", files["ssh"]), "user": ("user.rita-token.token", files["user"]),
               "aws": ("aws.credentials", files["aws"])}

    def stop_rotating(what: str) -> None:
        if what == "aws":
            api.patch_ws(namespace, "rita", {"spec": {"credentials": [{"name": "aws", "provider": "aws-dev", "overlap": "120s"}]}})

    latencies, aws_rotated_at = propagation(node, api, namespace, "rita", pod, targets, before, timeout=60 + 1.5 * sync + 90,
                                            on_secret_change=stop_rotating)
    measure("Secret update -> file in a just-started container s", latencies)
    for what, latency in latencies.items():
        assert latency <= 1.5 * sync + 15, f"{what}: {latency}s is beyond the kubelet's sync period ({sync}s, jitter up to 1.5x)"

    # The container was not restarted, and its env is what it was at start.
    status = api.core.read_namespaced_pod(pod, namespace).status.container_statuses[0]
    assert status.container_id == start_uid and status.restart_count == 0
    assert env_in(node, namespace, pod, env_names) == env_at_start, "env values never change in a running container"
    # GIT_SSH_COMMAND names the key file, so the rotated SSH key is what git uses now: clone with the new key.
    authorize(git_server, api.get_ws(namespace, "rita")["status"]["sshPublicKey"])
    code, output = git_clone(node, namespace, pod, git_server.url)
    assert code == 0 and output == sha256(GIT_README), output

    # AWS: the next SDK process in the running container uses the second key, from the rewritten file. During the
    # overlap the first key still works; once the overlap ends it is revoked, and the container is unaffected.
    key2_id = api.secret_data(namespace, "rita")["aws.AWS_ACCESS_KEY_ID"].decode()
    assert key2_id != key1[0]
    sdk = aws_sdk_in(node, namespace, pod, moto)
    assert sdk["method"] == "shared-credentials-file" and sdk["key"] == sha256(key2_id) and sdk["arn"].startswith("arn:"), sdk
    assert moto.identity(*key1).startswith("arn:"), "the first key is still in its overlap"
    wait_for(lambda: moto.identity(*key1) == "InvalidClientTokenId", timeout=240, interval=2, what="the first AWS key revoked after its overlap")
    measure("AWS key revoked after rotation (overlap 120 s) s", round(time.monotonic() - aws_rotated_at["aws"], 1))
    sdk = aws_sdk_in(node, namespace, pod, moto)
    assert sdk["key"] == sha256(key2_id) and sdk["arn"].startswith("arn:"), sdk

    # Once more, minutes after the container started (the kubelet syncs a pod often right after it starts; this
    # is the latency of a long-running workspace): a new SSH key and a new user-secret value.
    seen = files_in(node, namespace, pod, [files["ssh"], files["user"]])
    before = {"ssh": seen[files["ssh"]][3], "user": seen[files["user"]][3]}
    running_for = round(time.monotonic() - started, 1)
    snapshot(hygiene, api.core.api_client, namespace)
    api.patch_ws(namespace, "rita", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: str(time.time())}}})
    api.core.patch_namespaced_secret("rita-token", namespace, {"data": {"token": base64.b64encode(secrets.token_urlsafe(24).encode()).decode()}})
    latencies, _ = propagation(node, api, namespace, "rita", pod, {w: targets[w] for w in ("ssh", "user")}, before, timeout=1.5 * sync + 60)
    measure("Secret update -> file in a long-running container s", {**latencies, "container running for s": running_for})
    for what, latency in latencies.items():
        assert latency <= 1.5 * sync + 15, f"{what}: {latency}s is beyond the kubelet's sync period ({sync}s, jitter up to 1.5x)"
    assert env_in(node, namespace, pod, env_names) == env_at_start


def propagation(node: NodeCluster, api: Api, namespace: str, secret: str, pod: str, targets: dict[str, tuple[str, str]],
                before: dict[str, str], *, timeout: float, on_secret_change=None) -> tuple[dict[str, float], dict[str, float]]:
    """Poll the workspace Secret `secret` and the container's files (about once a second) until each target (name ->
    (Secret key, file path)) has a new value in the Secret and then the same value in the file. Returns the
    seconds from the Secret change to the file change per target, and when each Secret change was seen."""
    secret_changed: dict[str, float] = {}
    file_changed: dict[str, float] = {}
    new: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(file_changed) < len(targets) and time.monotonic() < deadline:
        data = api.secret_data(namespace, secret)
        now = time.monotonic()
        for what, (key, _) in targets.items():
            if what not in secret_changed and sha256(data[key]) != before[what]:
                secret_changed[what], new[what] = now, sha256(data[key])
                if on_secret_change:
                    on_secret_change(what)
        if pending := [w for w in secret_changed if w not in file_changed]:
            seen = files_in(node, namespace, pod, [targets[w][1] for w in pending])
            now = time.monotonic()
            for what in pending:
                digest = seen[targets[what][1]][3]
                if digest != before[what]:
                    assert digest == new[what], f"{what}: the file is neither the old nor the new value"
                    file_changed[what] = now
        time.sleep(1)
    assert set(file_changed) == set(targets), f"files not updated within {timeout:.0f}s: Secret changed {sorted(secret_changed)}, files {sorted(file_changed)}"
    return {w: round(file_changed[w] - secret_changed[w], 1) for w in targets}, secret_changed


# --- 5. deleting the workspace; the operator pod going away -------------------------------------------------
def test_deleting_the_workspace_deployment_stops_its_pod_deletes_its_secrets_revokes_its_credentials(node, api, erin, moto):
    namespace = erin["namespace"]
    data = api.secret_data(namespace, "erin")
    token = SecretText(data["kube.token"].decode())
    key = (data["aws.AWS_ACCESS_KEY_ID"].decode(), SecretText(data["aws.AWS_SECRET_ACCESS_KEY"].decode()))
    del data
    ws_uid = api.get_ws(namespace, "erin")["metadata"]["uid"]
    iam_user = moto.owner_of(key[0])
    assert iam_user, "erin's key is live at the provider"
    owned = [s.metadata.name for s in api.core.list_namespaced_secret(namespace).items
             if any(o.uid == ws_uid for o in s.metadata.owner_references or ())]
    assert "erin" in owned and len(owned) >= 2, owned  # the workspace Secret and the token's anchor
    user_keys = [s.metadata.name for s in api.core.list_namespaced_secret(namespace, label_selector=f"{c.LABEL_USER}=erin").items
                 if s.metadata.name.startswith("ssh-erin-")]
    assert assert_token_works(node, token) == f"system:serviceaccount:{namespace}:ci-bot"
    assert moto.identity(*key).startswith("arn:")

    t0 = time.monotonic()
    api.apps.delete_namespaced_deployment("erin-workspace", namespace)
    wait_for(lambda: not pods(api.core.api_client, namespace, "app=erin-workspace"), timeout=90, what="erin's pod gone")
    measure("workspace pod gone after Deployment delete s", round(time.monotonic() - t0, 1))
    wait_for(lambda: api.get_ws(namespace, "erin") is None, timeout=90, what="the WorkspaceSecret garbage-collected")
    wait_for(lambda: all(api.get_secret(namespace, n) is None for n in owned), timeout=60, what="its Secrets deleted")
    measure("WorkspaceSecret and Secrets gone after Deployment delete s", round(time.monotonic() - t0, 1))
    wait_for(lambda: assert_token_works(node, token) == 401, timeout=30, what="the token refused")
    assert moto.identity(*key) == "InvalidClientTokenId"
    assert iam_user not in moto.live_keys(), "the IAM user made for the workspace is deleted"
    # The user's key pair stays for her next workspace (docs/users/workspacesecret.md, per-user keys).
    assert all(api.get_secret(namespace, n) is not None for n in user_keys) and user_keys


def assert_token_works(node: NodeCluster, token: str) -> int | str:
    """SelfSubjectReview with a bearer token, from this machine: the username or the HTTP status."""
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    k8s_config.load_kube_config(config_file=str(node.kubeconfig), client_configuration=configuration, persist_config=False)
    configuration.api_key = {"BearerToken": f"Bearer {token}", "authorization": f"Bearer {token}"}
    configuration.cert_file = configuration.key_file = None
    with k8s.ApiClient(configuration) as api_client:
        try:
            review = k8s.AuthenticationV1Api(api_client).create_self_subject_review({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
            return review.status.user_info.username
        except ApiException as exc:
            return exc.status


@pytest.mark.timeout(420)
def test_deleting_the_operator_pod_mid_work_leaks_nothing(node, api, release, moto, hygiene):
    namespace = create_namespace(node)
    node.namespaces.append(namespace)
    names = [f"w{i}" for i in range(6)]
    old = operator_pod(api)
    for name in names:
        api.create_ws(namespace, name, {"user": f"u-{name}", "workspaceRef": {"kind": "Pod", "name": f"p-{name}"},
                                        "credentials": [{"name": "aws", "provider": "aws-dev", "lifecycle": "WhileExists"}]})
    # Mid-work: some are being reconciled (keys being minted) right now.
    t0 = time.monotonic()
    api.core.delete_namespaced_pod(old.metadata.name, RELEASE_NAMESPACE)
    # Two are deleted while the operator is going away: their keys must still be revoked (finalizer).
    snapshot(hygiene, api.core.api_client, namespace)  # their Secrets' values, before they go
    for name in names[:2]:
        api.delete_ws(namespace, name)

    new = wait_for(lambda: (p := running_pod(api.core.api_client, RELEASE_NAMESPACE, OPERATOR_SELECTOR)) and p.metadata.uid != old.metadata.uid and p,
                   timeout=180, what="a new operator pod Ready")
    measure("operator pod deleted -> replacement Ready s", round(time.monotonic() - t0, 1))
    wait_for(lambda: webhook_answers(api.core.api_client), timeout=60, what="the webhook answering again")
    for name in names[:2]:
        wait_for(lambda: api.get_ws(namespace, name) is None, timeout=120, what=f"{name} deleted (finalizer done)")
    for name in names[2:]:
        api.wait_condition(namespace, name, timeout=120)
        api.wait_condition(namespace, name, type_=c.CONDITION_CREDENTIALS_READY, timeout=60)
    measure("all WorkspaceSecrets settled after the operator pod delete s", round(time.monotonic() - t0, 1))

    # Nothing leaked: exactly one live key per remaining WorkspaceSecret -- the one in its Secret and status --
    # and no IAM user of this namespace's deleted ones (the admin user aside).
    recorded = {}
    for name in names[2:]:
        ws = api.get_ws(namespace, name)
        entry = ws["status"]["credentials"][0]
        key_id = api.secret_data(namespace, name)["aws.AWS_ACCESS_KEY_ID"].decode()
        assert entry["id"] == key_id
        recorded[moto.owner_of(key_id)] = [key_id]
    wait_for(lambda: moto.keys_in_namespace(namespace) == recorded, timeout=90,
             what="exactly the recorded keys live, no IAM user of a deleted WorkspaceSecret left")
    # Exactly one Secret per WorkspaceSecret, at most one key Secret per user (exactly one for the live ones).
    managed = api.core.list_namespaced_secret(namespace, label_selector=c.MANAGED_SELECTOR).items
    assert sorted(s.metadata.name for s in managed if not s.metadata.name.startswith("ssh-")) == names[2:]
    key_secrets = [s.metadata.labels.get(c.LABEL_USER) for s in managed if s.metadata.name.startswith("ssh-")]
    assert sorted(set(key_secrets)) == sorted(key_secrets), key_secrets
    assert {f"u-{n}" for n in names[2:]} <= set(key_secrets), key_secrets
    assert new.status.container_statuses[0].restart_count == 0


@pytest.mark.timeout(420)
def test_pods_created_while_no_operator_runs_behave_as_documented(node, api, release, workspaces, git_server):
    """docs/users/pod-injection.md: failurePolicy Fail applies to labelled pods only: while the operator is down a labelled pod is not
    created (its ReplicaSet retries with back-off) rather than started without its secrets; unlabelled pods are
    never affected."""
    namespace = workspaces
    api.create_ws(namespace, "dora", {"user": "dora", "workspaceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "dora-workspace"},
                                      "mountPath": MOUNT, "ssh": {"knownHosts": [git_server.host_line]}})
    api.wait_condition(namespace, "dora")
    deployment = f"deployment/{FULLNAME}"
    node.kubectl("scale", "-n", RELEASE_NAMESPACE, deployment, "--replicas=0")
    try:
        wait_for(lambda: not pods(api.core.api_client, RELEASE_NAMESPACE, OPERATOR_SELECTOR), timeout=90, what="no operator pod")
        # An unlabelled pod is created and runs.
        api.core.create_namespaced_pod(namespace, {"metadata": {"name": "plain", "labels": {"app": "plain"}}, "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": image_ref("workspace"), "imagePullPolicy": "Never", "command": ["sleep", "infinity"]}]}})
        wait_running(api.core.api_client, namespace, "app=plain")
        # A labelled pod is refused (fail closed), and a workspace Deployment gets no pod: its ReplicaSet reports
        # the webhook failure and retries.
        with pytest.raises(ApiException) as refused:
            api.core.create_namespaced_pod(namespace, {"metadata": {"name": "dora-direct", "labels": {
                c.LABEL_WORKSPACE_SECRET: "dora", c.LABEL_USER: "dora"}}, "spec": {"containers": [{"name": "c", "image": image_ref("workspace")}]}})
        assert "failed calling webhook" in refused.value.body
        workspace_deployment(api, namespace, "dora-workspace", "dora", "dora")
        failures = wait_for(lambda: [e for e in api.core.list_namespaced_event(namespace).items
                                     if e.reason == "FailedCreate" and "failed calling webhook" in (e.message or "")],
                            timeout=60, what="the ReplicaSet's FailedCreate events")
        assert failures[0].involved_object.kind == "ReplicaSet"
        time.sleep(10)
        assert not pods(api.core.api_client, namespace, "app=dora-workspace"), "a labelled pod started without the webhook"
    finally:
        node.kubectl("scale", "-n", RELEASE_NAMESPACE, deployment, "--replicas=1")
    up = wait_for(lambda: running_pod(api.core.api_client, RELEASE_NAMESPACE, OPERATOR_SELECTOR), timeout=180, what="the operator back")
    t_up = time.monotonic()
    del up
    pod = wait_running(api.core.api_client, namespace, "app=dora-workspace", timeout=240)
    measure("operator Ready -> workspace pod of the retrying ReplicaSet running s", round(time.monotonic() - t_up, 1))
    volumes = [v for v in pod.spec.volumes if v.secret is not None and v.secret.secret_name == "dora"]
    assert volumes and volumes[0].secret.default_mode == 0o440
    secret = secret_sha(api, namespace, "dora")
    key = f"{MOUNT}/ssh-privatekey"
    assert files_in(node, namespace, pod.metadata.name, [key])[key] == ("440", "0", "1000", secret["ssh-privatekey"])
