"""User tokens in workspaces (WorkspaceSecret spec.userTokens) on the real API server with the real operator, a fake of
GitHub's REST/OAuth contract (tests/fakes/git_providers.py) and the shipped roles and admission policies: the users
are impersonated tenants (`kubectl --as`), the platform (the test's admin) creates the OAuthApplications.

- a connected token reaches the workspace Secret (access token only, never the refresh token), real git finds it
  through the env the workspace gets, and a refresh reaches the workspace Secret within seconds;
- attacks as alice: naming bob's UserToken (one answer with "no such UserToken", nothing of bob's delivered); a forged
  token Secret (refused at admission with the operator's label or owner; squatting the name delivers nothing; and
  even a forgery the policies did not stop -- planted by a platform identity -- is never read); a UserToken whose
  OAuthApplication does not (or no longer) allow the namespace. Each asserts that the victim lost nothing.

Values are compared by digest; nothing here prints a token."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
from attack_support import (Applications, Browser, Tenant, Victim, installed_policies, refused_by_policy, secret_manifest,
                            token_manifest, wait_token, ws_manifest)
from backends import ADMIN_NAMESPACE
from helpers import Api, digest, wait_for

from fakes.git_providers import FakeGitProvider
from workspace_secrets.api import constants as c

USERS = ("alice", "bob")
CLIENT = "wso-ws-tokens"
CLIENT_SECRET = "ws-tokens-client-secret-0123456789"


@pytest.fixture(scope="module")
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture(scope="module")
def github():
    server = FakeGitProvider("github", clients={CLIENT: CLIENT_SECRET}).start()
    yield server
    server.stop()


class Stage:
    def __init__(self, api: Api, ns: str, operator, tenant: Tenant, apps: Applications, app: str) -> None:
        self.api, self.ns, self.op, self.t, self.apps, self.app = api, ns, operator, tenant, apps, app

    def token(self, name: str, user: str, application: str | None = None) -> dict:
        assert self.t.create(token_manifest(name, user, application or self.app), user=user).check()
        return wait_token(self.api, self.ns, name, phase=None, timeout=30)

    def connect(self, name: str, user: str) -> dict:
        wait_token(self.api, self.ns, name, phase=c.PHASE_AWAITING_AUTHORIZATION)
        result = Browser(self.op, user).connect(self.ns, name, login=user)
        assert result.status_code == 200 and "data-ok='true'" in result.text, result.status_code
        return wait_token(self.api, self.ns, name, phase=c.PHASE_VALID)

    def workspace(self, name: str, user: str, tokens: list[dict]) -> None:
        assert self.t.create(ws_manifest(name, user, userTokens=tokens), user=user).check()

    def tokens_ready(self, name: str, status: str = "True", reasons: tuple[str, ...] | None = None, timeout: float = 30) -> dict:
        def probe():
            cond = self.api.condition(self.ns, name, c.CONDITION_TOKENS_READY)
            if cond and cond["status"] == status and (reasons is None or cond["reason"] in reasons):
                return cond
            return None
        return wait_for(probe, timeout=timeout, what=f"{name} TokensReady={status} {reasons} (now {self.api.condition(self.ns, name, c.CONDITION_TOKENS_READY)})")

    def data(self, secret: str) -> dict[str, bytes]:
        return self.api.secret_data(self.ns, secret) or {}


@pytest.fixture(scope="module")
def stage(cluster, api, module_namespace, wso_operator, github):
    tenant = Tenant(cluster, module_namespace)
    apps = Applications(api, ADMIN_NAMESPACE)
    app = f"{module_namespace}-github"
    apps.create(app, "github", github.url, client_id=CLIENT, client_secret=CLIENT_SECRET, allowed_namespaces=[module_namespace])
    try:
        with installed_policies(cluster, tenant, USERS):
            yield Stage(api, module_namespace, wso_operator.process, tenant, apps, app)
    finally:
        for plural in (c.USER_TOKEN_PLURAL, c.WORKSPACE_SECRET_PLURAL):
            for item in api.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, module_namespace, plural)["items"]:
                name = item["metadata"]["name"]
                if plural == c.USER_TOKEN_PLURAL:
                    api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, module_namespace, plural, name,
                                                              {"metadata": {"annotations": {c.ANNOTATION_SKIP_REVOCATION: "true"}}})
                api.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, module_namespace, plural, name)
        apps.cleanup()


def git_fill(data: dict[str, bytes], env_entries: list[dict], mount_path: str, url: str, tmp_path) -> dict[str, str]:
    """What real git answers for `url`, configured only by the workspace's env (status.env) and its
    git-credentials file (the workspace Secret's key, at its mount path)."""
    store = tmp_path / "git-credentials"
    store.write_bytes(data[c.KEY_WORKSPACE_GIT_CREDENTIALS])
    env = {e["name"]: data[e["key"]].decode().replace(f"{mount_path}/git-credentials", str(store))
           for e in env_entries if e["name"].startswith("GIT_CONFIG")}
    protocol, host = url.split("://", 1)
    out = subprocess.run(["git", "credential", "fill"], input=f"protocol={protocol}\nhost={host}\n\n", capture_output=True, text=True,
                         timeout=10, env={**env, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0"})
    store.unlink()
    assert out.returncode == 0, out.stderr[-300:]
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def no_value_of(data: dict[str, bytes], *secrets_: bytes) -> None:
    """None of `secrets_` in any value of `data` (the failure names the key, never a value)."""
    for key, value in data.items():
        found = any(s in value for s in secrets_)
        assert not found, f"a value that must not be there is in key {key!r}"


def contains(haystack: bytes, needle: bytes) -> bool:
    return needle in haystack


def test_token_reaches_the_workspace_and_follows_a_refresh_within_seconds(stage: Stage, github, tmp_path):
    s = stage
    s.token("alice-gh", "alice")
    s.workspace("alice-ws", "alice", [{"name": "alice-gh"}])
    # Not connected yet: the workspace waits, and says where to connect (the connect page link, no credential).
    waiting = s.tokens_ready("alice-ws", "False", ("TokenNotConnected",))
    link = (wait_token(s.api, s.ns, "alice-gh", phase=c.PHASE_AWAITING_AUTHORIZATION)["status"])["authorizationURL"]
    assert link in waiting["message"]
    status = s.api.get_ws(s.ns, "alice-ws")["status"]
    assert status["tokens"][0]["connectURL"] == link and status["tokens"][0]["delivered"] is False
    assert s.api.condition(s.ns, "alice-ws")["status"] == "False"
    s.api.wait_event(s.ns, "alice-ws", "TokenNotConnected")

    started = time.monotonic()
    s.connect("alice-gh", "alice")
    s.tokens_ready("alice-ws", timeout=15)
    assert time.monotonic() - started < 15
    token = s.data("alice-gh-token")
    data = s.data("alice-ws")
    assert digest(data["token.alice-gh.token"]) == digest(token[c.KEY_TOKEN])
    no_value_of(data, token[c.KEY_REFRESH_TOKEN])  # the refresh token never reaches a workspace
    status = s.api.get_ws(s.ns, "alice-ws")["status"]
    in_status = contains(json.dumps(status).encode(), token[c.KEY_TOKEN])
    assert not in_status and s.api.condition(s.ns, "alice-ws")["status"] == "True"
    assert {"name": "GH_CONFIG_DIR", "key": "GH_CONFIG_DIR"} in status["env"]
    assert {"key": "tool.gh.hosts.yml", "path": ".workspace-tokens/gh/hosts.yml"} in status["files"]
    in_gh = contains(data["tool.gh.hosts.yml"], token[c.KEY_TOKEN])
    assert in_gh
    filled = git_fill(data, status["env"], c.DEFAULT_MOUNT_PATH, github.url, tmp_path)
    assert filled["username"] == "x-access-token" and digest(filled["password"].encode()) == digest(token[c.KEY_TOKEN])

    # A refresh (asked for with the annotation) reaches the workspace Secret within seconds of the token Secret.
    s.api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, s.ns, c.USER_TOKEN_PLURAL, "alice-gh",
                                                {"metadata": {"annotations": {c.ANNOTATION_REFRESH_TOKEN: "now"}}})
    refreshed = wait_for(lambda: (d := s.data("alice-gh-token")).get(c.KEY_TOKEN) != token[c.KEY_TOKEN] and d, timeout=30,
                         what="the token refreshed")
    seen = time.monotonic()
    wait_for(lambda: digest(s.data("alice-ws").get("token.alice-gh.token", b"")) == digest(refreshed[c.KEY_TOKEN]),
             timeout=10, interval=0.2, what="the refreshed token in the workspace Secret")
    lag = time.monotonic() - seen
    assert lag < 5, lag
    data = s.data("alice-ws")
    no_value_of(data, refreshed[c.KEY_REFRESH_TOKEN], token[c.KEY_REFRESH_TOKEN], token[c.KEY_TOKEN])
    in_git = contains(data[c.KEY_WORKSPACE_GIT_CREDENTIALS], refreshed[c.KEY_TOKEN])
    assert in_git


def test_pod_injection_wires_git_and_the_tool_files(stage: Stage, wso_operator):
    """The webhook gives a workspace pod the tokens' env (by secretKeyRef: no value in the pod spec) and the tools'
    files at their places (a projected item of the workspace Secret, which kubelet keeps current)."""
    if not wso_operator.webhook:
        pytest.skip("needs the pod-injection webhook (local control plane)")
    s = stage
    s.token("alice-gh5", "alice")
    s.connect("alice-gh5", "alice")
    s.workspace("alice-ws5", "alice", [{"name": "alice-gh5"}])
    s.tokens_ready("alice-ws5")
    pod = s.api.create_pod(s.ns, "alice-ws5-pod", {c.LABEL_WORKSPACE_SECRET: "alice-ws5"}, user="alice")
    container = pod.spec.containers[0]
    env = {e.name: e for e in container.env or ()}
    for name in ("GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0", "GH_CONFIG_DIR"):
        assert env[name].value is None and env[name].value_from.secret_key_ref.name == "alice-ws5", name
        assert env[name].value_from.secret_key_ref.key == name
    files = next(v for v in pod.spec.volumes if v.name == c.POD_USER_FILES_VOLUME_NAME)
    items = {i.key: i.path for i in files.secret.items}
    assert items["tool.gh.hosts.yml"] == ".workspace-tokens/gh/hosts.yml"
    assert items["tool.gh.config.yml"] == ".workspace-tokens/gh/config.yml"
    mounts = {m.mount_path: m.name for m in container.volume_mounts}
    assert mounts[c.DEFAULT_MOUNT_PATH] == c.POD_VOLUME_NAME and mounts[c.DEFAULT_USER_FILES_PATH] == c.POD_USER_FILES_VOLUME_NAME
    s.api.core.delete_namespaced_pod("alice-ws5-pod", s.ns, grace_period_seconds=0)


def test_attack_naming_another_users_user_token_gives_nothing(stage: Stage):
    s = stage
    s.token("bob-gh", "bob")
    s.connect("bob-gh", "bob")
    s.workspace("bob-own", "bob", [{"name": "bob-gh"}])
    s.tokens_ready("bob-own")
    bob = Victim(s.api, s.ns, "bob")
    before = bob.snapshot()
    bobs_token = s.data("bob-gh-token")[c.KEY_TOKEN]

    # alice cannot make a WorkspaceSecret of bob's (the shipped policy), so she names his token in her own.
    assert refused_by_policy(s.t.create(ws_manifest("steal-as-bob", "bob", userTokens=[{"name": "bob-gh"}]), user="alice"))
    s.workspace("alice-steal", "alice", [{"name": "bob-gh"}])
    s.workspace("alice-missing", "alice", [{"name": "bob-gx"}])  # a name that does not exist: the same answer
    stolen = s.tokens_ready("alice-steal", "False", ("TokenNotFound",))
    missing = s.tokens_ready("alice-missing", "False", ("TokenNotFound",))
    assert stolen["message"].replace("bob-gh", "X") == missing["message"].replace("bob-gx", "X")
    entry = s.api.get_ws(s.ns, "alice-steal")["status"]["tokens"][0]
    assert entry == {**s.api.get_ws(s.ns, "alice-missing")["status"]["tokens"][0], "name": "bob-gh"}
    assert "login" not in entry and "connectURL" not in entry and "application" not in entry
    data = wait_for(lambda: s.data("alice-steal") or None, timeout=15, what="alice's workspace Secret")
    no_value_of(data, bobs_token)
    assert not data[c.KEY_WORKSPACE_GIT_CREDENTIALS]
    bob.assert_untouched(before)
    bob.still_served(s.t)


def test_attack_forged_token_secret_is_never_delivered(stage: Stage):
    s = stage
    forged = b"ghu_forged-by-alice-0123456789"
    s.token("alice-gh2", "alice")
    ut = s.connect("alice-gh2", "alice")
    # With the operator's label, or owned by the UserToken, the shipped policies refuse the forgery outright.
    labelled = secret_manifest("alice-gh2-copy", user="alice", data={c.KEY_TOKEN: forged},
                               labels={c.LABEL_MANAGED_BY: c.OPERATOR_NAME, c.LABEL_COMPONENT: c.COMPONENT_USER_TOKEN})
    assert refused_by_policy(s.t.create(labelled, user="alice"), "managed-by")
    owned = secret_manifest("alice-gh2-copy", user="alice", data={c.KEY_TOKEN: forged}, owner={
        "apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "name": "alice-gh2", "uid": ut["metadata"]["uid"], "controller": True})
    assert refused_by_policy(s.t.create(owned, user="alice"), "ownerReferences")

    # Squatting the name of bob's token Secret before he connects: bob's workspace never gets alice's value.
    s.token("bob-gh2", "bob")
    assert s.t.create(secret_manifest("bob-gh2-token", user="alice", data={c.KEY_TOKEN: forged}), user="alice").check()
    s.workspace("bob-ws2", "bob", [{"name": "bob-gh2"}])
    Browser(s.op, "bob").connect(s.ns, "bob-gh2", login="bob")
    s.tokens_ready("bob-ws2", "False")
    bob = Victim(s.api, s.ns, "bob")
    before = bob.snapshot()
    time.sleep(3)  # whatever the UserToken makes of the squatted name, the workspace takes nothing from it
    no_value_of(s.data("bob-ws2"), forged)
    assert s.api.condition(s.ns, "bob-ws2", c.CONDITION_TOKENS_READY)["status"] == "False"
    bob.assert_untouched(before)
    bob.still_served(s.t)

    # Defence in depth: a forgery the policies did not stop (a platform identity replaced alice's token Secret
    # with one not owned by her UserToken) is never read, and the workspace says why.
    s.workspace("alice-ws2", "alice", [{"name": "alice-gh2"}])
    s.tokens_ready("alice-ws2")
    secret = s.api.core.read_namespaced_secret("alice-gh2-token", s.ns)
    secret.metadata.owner_references = None
    secret.data = {**secret.data, c.KEY_TOKEN: base64.b64encode(forged).decode()}
    s.api.core.replace_namespaced_secret("alice-gh2-token", s.ns, secret)
    s.tokens_ready("alice-ws2", "False", ("TokenSecretNotOwned",), timeout=15)
    data = s.data("alice-ws2")
    no_value_of(data, forged)
    assert "token.alice-gh2.token" not in data


def test_attack_user_token_of_an_application_not_allowed_here(stage: Stage, github):
    s = stage
    bob = Victim(s.api, s.ns, "bob")
    before = bob.snapshot()
    other = f"{s.ns}-elsewhere"
    s.apps.create(other, "github", github.url, client_id=CLIENT, client_secret=CLIENT_SECRET, allowed_namespaces=[f"not-{s.ns}"])
    s.token("alice-elsewhere", "alice", other)
    s.workspace("alice-ws3", "alice", [{"name": "alice-elsewhere"}])
    s.tokens_ready("alice-ws3", "False", ("TokenApplicationNotAllowed",))

    # An application that allowed the namespace when the token was connected, and no longer does: the token
    # stops reaching the workspace at its next reconcile.
    moving = f"{s.ns}-moving"
    s.apps.create(moving, "github", github.url, client_id=CLIENT, client_secret=CLIENT_SECRET, allowed_namespaces=[s.ns])
    s.token("alice-moving", "alice", moving)
    s.connect("alice-moving", "alice")
    s.workspace("alice-ws4", "alice", [{"name": "alice-moving"}])
    s.tokens_ready("alice-ws4")
    token = s.data("alice-moving-token")[c.KEY_TOKEN]
    assert digest(s.data("alice-ws4")["token.alice-moving.token"]) == digest(token)
    s.api.custom.patch_cluster_custom_object(c.GROUP, c.VERSION, "oauthapplications", moving, {"spec": {"allowedNamespaces": [f"not-{s.ns}"]}})
    s.api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, s.ns, c.WORKSPACE_SECRET_PLURAL, "alice-ws4",
                                                {"metadata": {"annotations": {"example.com/look-again": "1"}}})
    s.tokens_ready("alice-ws4", "False", ("TokenApplicationNotAllowed",), timeout=15)
    no_value_of(s.data("alice-ws4"), token)
    bob.assert_untouched(before)
    bob.still_served(s.t)
