"""`kubectl wso` (issue 19) on the real API server with the real operator, run through the real kubectl binary
(which finds the installed `kubectl-wso` on PATH) as a tenant: impersonated (`--as`) with exactly the shipped
workspace-secrets-user role and the shipped admission policies (attack_support.installed_policies).

- status shows a waiting workspace's missing token, its connect link and the pod held at the gate; connect prints
  the link; after connecting, refresh --wait gets a new token; rotate --wait gets a new key.
- attacks: alice's plugin on bob's objects in the same namespace is refused (rotate, refresh: the admission
  policy; connect: the plugin itself) and bob loses nothing; status of bob's objects shows alice nothing she could
  not `kubectl get` (no Secret value, not bob's device code, which only bob's connect page shows); a user without
  the role is refused outright -- the plugin acts as its caller, never as the operator.

No Secret value is printed: outputs are searched for Secret values inside asserts whose messages name the entry only.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from attack_support import PLATFORM_GROUP, Tenant, Victim, installed_policies, token_manifest, ws_manifest
from helpers import Api, wait_for
from secret_hygiene import needles_for_secret
from test_user_token import applications, connect, oidc, oidc_app, page_link, wait_phase  # noqa: F401 (fixtures)
from user_token_support import BrowserSession, device_code_on_page, get_token

from workspace_secrets.api import constants as c

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def api(cluster, wso_operator) -> Api:
    if not wso_operator.webhook:
        pytest.skip("the webhook is not reachable from an external cluster without WSO_E2E_WEBHOOK_HOST")
    return Api(cluster.api_client())


@pytest.fixture(scope="module")
def shipped_policies(cluster, module_namespace):
    """The shipped policies, installed once for the module: installing and removing them for every test races the
    deletion of their parameters' namespace. Each test's `tenant` then only adds the roles in its namespace."""
    with installed_policies(cluster, Tenant(cluster, module_namespace), ("alice", "bob")):
        yield


@pytest.fixture
def tenant(cluster, namespace, api, shipped_policies):
    t = Tenant(cluster, namespace)
    with installed_policies(cluster, t, ("alice", "bob")):
        yield t


class Wso:
    """`kubectl wso ...` through the real kubectl binary, in the test's namespace."""

    def __init__(self, cluster, namespace: str) -> None:
        plugin = VENV_BIN / "kubectl-wso"
        if not plugin.exists():
            pytest.fail(f"{plugin} is missing: install the package into the venv (pip install --no-deps -e .)")
        self.cluster, self.namespace = cluster, namespace
        self.env = cluster.env()
        self.env["PATH"] = os.pathsep.join([str(cluster.bin_dir), str(VENV_BIN), self.env["PATH"]])

    def __call__(self, *args: str, user: str | None) -> subprocess.CompletedProcess[str]:
        argv = [str(self.cluster.tools["kubectl"]), "wso", *args, "-n", self.namespace, *(["--as", user] if user else [])]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def wso(cluster, namespace) -> Wso:
    return Wso(cluster, namespace)


def ws_with_token(name: str, user: str, token: str) -> dict:
    return ws_manifest(name, user, userTokens=[{"name": token}])


def pod_body(name: str, ws: str, user: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {c.LABEL_WORKSPACE_SECRET: ws, c.LABEL_USER: user}},
            "spec": {"containers": [{"name": "workspace", "image": "registry.invalid/workspace:1"}]}}


def pod_events(api: Api, namespace: str, pod: str, reason: str) -> list:
    return [e for e in api.core.list_namespaced_event(namespace).items
            if e.involved_object.kind == "Pod" and e.involved_object.name == pod and e.reason == reason]


def assert_reveals_no_secret(output: str, api: Api, namespace: str) -> None:
    """No secret entry of any Secret in the namespace (in any of the forms the session's hygiene check searches:
    the value, base64, its long lines) in the plugin's output. Public entries (a public key, an expiry time) are
    skipped, as the hygiene check skips them. A failure names the entry, never the value."""
    needles = [n for s in api.core.list_namespaced_secret(namespace).items
               for n in needles_for_secret(namespace, s.metadata.name,
                                           {k: base64.b64decode(v) for k, v in (s.data or {}).items()})]
    assert needles, "no secret values to search for"
    leaked = [f"{n.origin} ({n.form})" for n in needles if n.text in output]
    assert not leaked, f"secret values in the plugin's output: {leaked}"


def test_a_tenant_sees_what_her_workspace_waits_for_connects_and_refreshes(api, namespace, wso_operator, oidc, applications,
                                                                         tenant, wso):
    app = oidc_app(applications, oidc, "wso")
    assert tenant.create(token_manifest("alice-gh", "alice", app), user="alice").ok
    assert tenant.create(ws_with_token("alice-ws", "alice", "alice-gh"), user="alice").ok
    api.wait_condition(namespace, "alice-ws", status="False", type_=c.CONDITION_TOKENS_READY)
    link = page_link(wso_operator, namespace, "alice-gh")
    # The platform starts her workspace pod: held at the gate (alice may not read pods: the plugin shows it from
    # the gate's Events on the pod, which she may read).
    assert tenant.platform("create", "-f", "-", input=json.dumps(pod_body("alice-ws-pod", "alice-ws", "alice"))).ok
    wait_for(lambda: pod_events(api, namespace, "alice-ws-pod", c.EVENT_WAITING_FOR_TOKEN), what="the pod told it waits")

    shown = wso("status", "alice-ws", user="alice")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert out.startswith(f"WorkspaceSecret alice-ws  (namespace {namespace}, user alice)")
    conditions = out.split("Conditions:\n")[1].split("\n\n")[0]
    assert "TokensReady" in conditions and "False" in conditions
    waits = out.split("Waiting for:\n")[1].split("\n\n")[0]
    assert "UserToken alice-gh (AwaitingAuthorization" in waits and f"connect at {link}" in waits
    assert "pod alice-ws-pod (from its Events)" in waits
    gets = out.split("The workspace gets:\n")[1].split("\n\n")[0]
    assert "Secret alice-ws, mounted at /var/run/workspace-secrets" in gets and "GIT_SSH_COMMAND" in gets
    assert out.split("Events:\n")[1].strip() != "(none)"

    # Someone who may list pods (the platform's provisioner: --as with --as-group, like kubectl) sees the gate itself.
    provisioner = wso("status", "alice-ws", "--as-group", PLATFORM_GROUP, user="platform-provisioner")
    assert provisioner.returncode == 0, provisioner.stderr
    assert f"pod alice-ws-pod is held at the scheduling gate {c.SCHEDULING_GATE}" in provisioner.stdout
    assert "not readable" not in provisioner.stdout

    token_status = wso("status", "ut/alice-gh", user="alice")
    assert token_status.returncode == 0, token_status.stderr
    assert f"Connect at: {link}" in token_status.stdout and "alice-ws: waits for it" in token_status.stdout

    # connect: the link alone (so `xdg-open "$(kubectl wso connect alice-gh)"` works); without a name, her list.
    linked = wso("connect", "alice-gh", user="alice")
    assert (linked.returncode, linked.stdout) == (0, link + "\n"), linked.stderr
    listed = wso("connect", user="alice")
    assert listed.returncode == 0 and "alice-gh" in listed.stdout and link in listed.stdout
    # Nothing to refresh before she connects: the plugin says where to connect and sets nothing.
    early = wso("refresh", "alice-gh", user="alice")
    assert early.returncode == 1 and link in early.stderr
    assert c.ANNOTATION_REFRESH_TOKEN not in (get_token(api, namespace, "alice-gh")["metadata"].get("annotations") or {})

    ut = connect(api, wso_operator, namespace, "alice-gh")
    first = api.secret_digests(namespace, "alice-gh-token")
    api.wait_condition(namespace, "alice-ws", type_=c.CONDITION_TOKENS_READY, timeout=30)
    after = wso("status", "alice-ws", user="alice")
    assert after.returncode == 0 and after.stdout.split("Waiting for:\n")[1].startswith("  nothing"), after.stdout
    assert "token alice-gh (oidc as alice): delivered" in after.stdout

    refreshed = wso("refresh", "alice-gh", "--wait", "--timeout", "60", user="alice")
    assert refreshed.returncode == 0, refreshed.stderr
    assert "Refreshed: phase Valid" in refreshed.stdout
    now = get_token(api, namespace, "alice-gh")
    assert now["status"]["lastRefreshTime"] != ut["status"].get("lastRefreshTime")
    assert now["status"]["refreshRequest"] == now["metadata"]["annotations"][c.ANNOTATION_REFRESH_TOKEN]
    assert api.secret_digests(namespace, "alice-gh-token")[c.KEY_TOKEN] != first[c.KEY_TOKEN]  # a new access token
    done = wso("connect", "alice-gh", user="alice")
    assert done.returncode == 0 and "is connected as alice" in done.stdout
    assert_reveals_no_secret(shown.stdout + token_status.stdout + after.stdout + refreshed.stdout, api, namespace)


def test_a_tenant_rotates_her_key(api, namespace, wso_operator, tenant, wso):
    assert tenant.create(ws_manifest("alice-ws", "alice"), user="alice").ok
    api.wait_condition(namespace, "alice-ws")
    before = api.get_ws(namespace, "alice-ws")["status"]["sshKeyFingerprint"]
    secret_before = api.secret_digests(namespace, "alice-ws")

    rotated = wso("rotate", "alice-ws", "--wait", user="alice")
    assert rotated.returncode == 0, rotated.stderr
    after = api.get_ws(namespace, "alice-ws")["status"]["sshKeyFingerprint"]
    assert after != before and f"Rotated: {before} -> {after}" in rotated.stdout
    wait_for(lambda: api.secret_digests(namespace, "alice-ws")[c.KEY_SSH_PRIVATE] != secret_before[c.KEY_SSH_PRIVATE],
             timeout=30, what="the new key in the workspace Secret")
    shown = wso("status", "alice-ws", user="alice")
    assert shown.returncode == 0 and after in shown.stdout and "SSHKeyRotated" in shown.stdout
    assert_reveals_no_secret(rotated.stdout + shown.stdout, api, namespace)


def test_attack_alices_plugin_cannot_act_on_bobs_objects_nor_show_her_more_than_kubectl_get(
        api, namespace, wso_operator, oidc, applications, tenant, wso):
    app = oidc_app(applications, oidc, "wso")
    device_app = oidc_app(applications, oidc, "device-wso")
    assert tenant.create(token_manifest("bob-gh", "bob", app), user="bob").ok
    assert tenant.create(token_manifest("bob-dev", "bob", device_app, flow="Device"), user="bob").ok
    assert tenant.create(ws_with_token("bob-ws", "bob", "bob-gh"), user="bob").ok
    connect(api, wso_operator, namespace, "bob-gh", login="bob", user="bob")
    api.wait_condition(namespace, "bob-ws", timeout=30)
    # bob's device code: shown on bob's connect page only.
    bob_page = BrowserSession.of(wso_operator.process, "bob")
    code, _ = wait_for(lambda: device_code_on_page(bob_page.open(page_link(wso_operator, namespace, "bob-dev")).text,
                                                   namespace, "bob-dev"), timeout=20, what="bob's device code on his page")
    bob = Victim(api, namespace, "bob")
    before = bob.snapshot()
    annotations_before = {n: (get_token(api, namespace, n)["metadata"].get("annotations") or {}) for n in ("bob-gh", "bob-dev")}

    # Acting on bob's objects: refused by the shipped admission policy (alice may read them, not edit them).
    for attempt in (wso("rotate", "bob-ws", user="alice"), wso("refresh", "bob-gh", user="alice"),
                    wso("refresh", "bob-dev", user="alice")):
        assert attempt.returncode == 3, (attempt.returncode, attempt.stderr)
        assert "you may not change" in attempt.stderr and "of user 'bob'" in attempt.stderr, attempt.stderr
    # Her sign-in link for bob's token: the plugin says it is bob's (the page would show her only her own).
    theirs = wso("connect", "bob-gh", user="alice")
    assert theirs.returncode == 3 and "user 'bob''s, not yours" in theirs.stderr.replace('"', "'"), theirs.stderr
    listed = wso("connect", user="alice")
    assert listed.returncode == 0 and "bob-" not in listed.stdout

    # Reading: status shows what `kubectl get` shows her, nothing the operator keeps from other users.
    outputs = []
    for target in ("bob-ws", "ut/bob-gh", "ut/bob-dev"):
        shown = wso("status", target, user="alice")
        assert shown.returncode == 0, shown.stderr
        outputs.append(shown.stdout)
    assert "WorkspaceSecret bob-ws" in outputs[0] and "UserToken bob-gh" in outputs[1]
    assert code not in "".join(outputs), "bob's device code in alice's plugin output"
    assert_reveals_no_secret("".join(outputs), api, namespace)
    # The plugin acts as its caller: someone without the role gets nothing.
    stranger = wso("status", "bob-ws", user="mallory")
    assert stranger.returncode == 3 and "you may not read" in stranger.stderr and stranger.stdout == ""

    # bob lost nothing: his Secrets, key, token and its annotations are as they were.
    bob.assert_untouched(before)
    for name, before_annotations in annotations_before.items():
        assert (get_token(api, namespace, name)["metadata"].get("annotations") or {}) == before_annotations
    wait_phase(api, namespace, "bob-gh", c.PHASE_VALID)
