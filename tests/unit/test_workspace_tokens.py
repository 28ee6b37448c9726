"""User tokens in workspaces (WorkspaceSecret spec.userTokens, workspace_secret/tokens.py): the pure decisions --
whose token may be read, what the workspace Secret gets (access token only, git-credentials, git's env, tool
files), TokensReady and its Events -- and the reconcile against the in-memory API server, including the fan-out of
a refreshed token Secret to every WorkspaceSecret that names its UserToken."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import yaml
from fakes.kube import FakeKube, api_error

from workspace_secrets.api import constants as c
from workspace_secrets.api.oauth_application import app_path
from workspace_secrets.api.workspace_secret import SpecError, TokenRef, WorkspaceSecret
from workspace_secrets.oauth.registry import ProviderCache
from workspace_secrets.runtime.events import EventRecorder
from workspace_secrets.workspace_secret import token_reader
from workspace_secrets.workspace_secret import tokens as t
from workspace_secrets.workspace_secret import user_secrets
from workspace_secrets.workspace_secret.controller import WorkspaceSecretController

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
NS = "team"
ACCESS = b"gho_access-0123456789"
REFRESH = b"ghr_refresh-0123456789"
LINK = f"https://connect.example.com/accounts?focus={NS}/gh"
PROVIDERS = ProviderCache(token_reader._NoNetwork()).for_application


def ws(user_tokens=(), **spec) -> WorkspaceSecret:
    return WorkspaceSecret.from_body({"metadata": {"name": "alice-ws", "namespace": NS, "uid": "ws-uid"},
                                      "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"},
                                               "userTokens": list(user_tokens), **spec}})


def app(name="github-app", type_="github", host=None, allowed=(NS,)) -> dict:
    return {"metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"type": type_, **({"host": host} if host else {}), "clientSecretRef": {"name": "x"},
                     "allowedNamespaces": list(allowed)}}


def user_token(name="gh", user="alice", application="github-app", phase=c.PHASE_VALID, login="octo-alice", **status) -> dict:
    return {"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}"},
            "spec": {"user": user, "application": application},
            "status": {"phase": phase, "login": login, **status}}


def token_secret(ut: dict, *, access=ACCESS, owner_uid=None, managed=True, user="alice", expires: datetime | None = NOW + timedelta(hours=1)) -> dict:
    name = ut["metadata"]["name"]
    labels = {c.LABEL_USER: user, c.LABEL_COMPONENT: c.COMPONENT_USER_TOKEN, c.LABEL_INSTANCE: name}
    if managed:
        labels[c.LABEL_MANAGED_BY] = c.OPERATOR_NAME
    data = {c.KEY_TOKEN: access, c.KEY_REFRESH_TOKEN: REFRESH, c.KEY_TOKEN_TYPE: b"bearer"}
    if expires is not None:
        data[c.KEY_EXPIRES_AT] = expires.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": f"{name}-token", "namespace": NS, "labels": labels,
                         "ownerReferences": [{"apiVersion": c.API_VERSION, "kind": c.USER_TOKEN_KIND, "name": name,
                                              "uid": owner_uid or ut["metadata"]["uid"], "controller": True}]},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def view(ref=TokenRef("gh"), ut=None, application=None, secret=None, w=None):
    ut = user_token() if ut is None else ut
    return t.view(w or ws([{"name": ref.name, "optional": ref.optional}]), ref, ut or None,
                  app() if application is None else application, secret if secret is not None else token_secret(ut) if ut else None,
                  now=NOW, provider_for=PROVIDERS)


def decoded(data: dict[str, str], key: str) -> bytes:
    return base64.b64decode(data[key])


# --- the spec ----------------------------------------------------------------------------------------------------
def test_spec_user_tokens_parse_with_defaults_and_refuse_duplicates():
    w = ws([{"name": "gh"}, {"name": "vault", "optional": True}])
    assert w.user_tokens == (TokenRef("gh", False), TokenRef("vault", True))
    assert ws().user_tokens == ()
    with pytest.raises(SpecError, match=r"userTokens\[1\].name"):
        ws([{"name": "gh"}, {"name": "gh"}])
    with pytest.raises(SpecError, match="at most 8"):
        ws([{"name": f"t{i}"} for i in range(9)])
    with pytest.raises(SpecError):
        ws([{"name": "Not_A_Name"}])


# --- whose token -------------------------------------------------------------------------------------------------
def test_a_valid_own_token_is_delivered_with_git_access():
    v = view()
    assert v.delivered and v.problem is None and v.git is not None
    assert v.git.username == "x-access-token" and v.git.url == "https://github.com"
    assert v.access_token is not None and v.access_token.reveal() == ACCESS


def test_missing_and_another_users_token_give_one_answer():
    missing = t.view(ws([{"name": "gh"}]), TokenRef("gh"), None, None, None, now=NOW, provider_for=PROVIDERS)
    bobs = user_token(user="bob")
    foreign = t.view(ws([{"name": "gh"}]), TokenRef("gh"), bobs, app(), token_secret(bobs, user="bob"), now=NOW, provider_for=PROVIDERS)
    assert not missing.delivered and not foreign.delivered
    assert (missing.problem, missing.phase) == (foreign.problem, foreign.phase) == (foreign.problem, t.PHASE_UNAVAILABLE)
    # Nothing of bob's token shows: no login, no link, no application.
    assert t._status_entry(foreign) == t._status_entry(missing)
    assert "octo-alice" not in str(t._status_entry(foreign))


@pytest.mark.parametrize("forgery", ["other-owner", "unmanaged", "other-user", "no-owner"])
def test_a_token_secret_not_written_for_the_user_token_is_never_read(forgery):
    ut = user_token()
    secret = token_secret(ut, access=b"forged-token", owner_uid="someone-else" if forgery == "other-owner" else None,
                          managed=forgery != "unmanaged", user="bob" if forgery == "other-user" else "alice")
    if forgery == "no-owner":
        secret["metadata"]["ownerReferences"] = []
    v = view(ut=ut, secret=secret)
    assert not v.delivered and v.problem is not None and v.problem.reason == t.REASON_SECRET_NOT_OWNED
    out = t.compose(ws([{"name": "gh"}]), [v])
    assert all(b"forged-token" not in base64.b64decode(value) for value in out.data.values())


@pytest.mark.parametrize("application", [app(allowed=("other-*",)), app(allowed=()), {}], ids=["other-namespaces", "none", "missing"])
def test_a_user_token_of_an_application_not_allowed_here_is_not_delivered(application):
    v = view(application=application or None) if application else t.view(
        ws([{"name": "gh"}]), TokenRef("gh"), user_token(), None, token_secret(user_token()), now=NOW, provider_for=PROVIDERS)
    assert not v.delivered and v.problem.reason == t.REASON_APPLICATION  # type: ignore[union-attr]


@pytest.mark.parametrize("phase,reason", [(c.PHASE_AWAITING_AUTHORIZATION, t.REASON_NOT_CONNECTED), (c.PHASE_EXPIRED, t.REASON_EXPIRED),
                                          (c.PHASE_REVOKED, t.REASON_REVOKED), (c.PHASE_ERROR, t.REASON_ERROR)])
def test_a_token_that_needs_the_user_carries_the_connect_link(phase, reason):
    ut = user_token(phase=phase, authorizationURL=LINK)
    v = view(ut=ut)
    assert not v.delivered and v.problem.reason == reason  # type: ignore[union-attr]
    if phase != c.PHASE_ERROR:
        assert v.connect_url == LINK and LINK in v.problem.message  # type: ignore[union-attr]
    condition = t.condition(ws([{"name": "gh"}]), t.compose(ws([{"name": "gh"}]), [v]))
    assert not condition.status and condition.reason == reason


def test_an_expired_token_is_not_delivered_even_if_the_phase_says_valid():
    ut = user_token()
    v = view(ut=ut, secret=token_secret(ut, expires=NOW - timedelta(seconds=1)))
    assert not v.delivered and v.problem.reason == t.REASON_EXPIRED  # type: ignore[union-attr]


# --- what the workspace Secret gets --------------------------------------------------------------------------------
def test_compose_access_token_git_credentials_env_and_gh_files_never_the_refresh_token(tmp_path):
    w = ws([{"name": "gh"}])
    out = t.compose(w, [view()])
    assert decoded(out.data, "token.gh.token") == ACCESS
    assert decoded(out.data, "token.gh.git-username") == b"x-access-token"
    assert all(REFRESH not in base64.b64decode(v) for v in out.data.values())
    assert {e["name"]: decoded(out.data, e["key"]).decode() for e in out.env} == {
        "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "credential.helper",
        "GIT_CONFIG_VALUE_0": f'!f() {{ test "$1" = get && exec git credential-store --file={c.DEFAULT_MOUNT_PATH}/git-credentials get; }}; f',
        "GH_CONFIG_DIR": f"{c.DEFAULT_USER_FILES_PATH}/.workspace-tokens/gh"}
    assert out.files == [{"key": "tool.gh.config.yml", "path": ".workspace-tokens/gh/config.yml"},
                         {"key": "tool.gh.hosts.yml", "path": ".workspace-tokens/gh/hosts.yml"}]
    hosts = yaml.safe_load(decoded(out.data, "tool.gh.hosts.yml"))
    assert hosts == {"github.com": {"git_protocol": "https", "oauth_token": ACCESS.decode(), "user": "octo-alice",
                                    "users": {"octo-alice": {"oauth_token": ACCESS.decode()}}}}
    assert yaml.safe_load(decoded(out.data, "tool.gh.config.yml")) == {"version": "1"}
    # Real git, configured only by the env the workspace gets, finds the token for github.com -- in a read-only
    # directory, as the Secret volume is, and with nothing on stderr: after an authenticated request git also
    # calls the helper with `store` (or `erase`), which must not try to write there.
    mount = tmp_path / "mount with space"
    mount.mkdir()
    store = mount / "git-credentials"
    store.write_bytes(decoded(out.data, "git-credentials"))
    (mount / "git-credentials.lock").mkdir()  # no lock can be taken here, even by root (who ignores the mode below)
    mount.chmod(0o555)
    env = {e["name"]: decoded(out.data, e["key"]).decode().replace(f"{c.DEFAULT_MOUNT_PATH}/git-credentials", f"'{store}'")
           for e in out.env if e["name"].startswith("GIT_")}
    env.update(HOME=str(tmp_path), PATH="/usr/bin:/bin", GIT_TERMINAL_PROMPT="0")
    try:
        filled = subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=github.com\n\n", capture_output=True,
                                text=True, timeout=10, env=env)
        assert (filled.returncode, filled.stderr) == (0, "")
        fields = dict(line.split("=", 1) for line in filled.stdout.splitlines())
        assert (fields["username"], fields["password"].encode()) == ("x-access-token", ACCESS)
        for action in ("approve", "reject"):  # what git runs after a request succeeded / was refused
            done = subprocess.run(["git", "credential", action], input=filled.stdout + "\n", capture_output=True, text=True,
                                  timeout=10, env=env)
            assert (action, done.returncode, done.stderr) == (action, 0, "")
        assert store.read_bytes() == decoded(out.data, "git-credentials")
    finally:
        mount.chmod(0o755)
    assert [s["name"] for s in out.status] == ["gh"] and out.status[0]["delivered"] is True
    assert "token" not in str(out.status).replace("userTokens", "")  # ids only: no value in status


def test_gitlab_and_vault_tools():
    gl = user_token("gl", application="gitlab-app", login="alice-gl")
    vt = user_token("vault", application="vault-app", login="alice")
    w = ws([{"name": "gl"}, {"name": "vault", "optional": True}])
    views = [t.view(w, TokenRef("gl"), gl, app("gitlab-app", "gitlab-self-managed", "https://git.example.com"), token_secret(gl),
                    now=NOW, provider_for=PROVIDERS),
             t.view(w, TokenRef("vault", True), vt, app("vault-app", "vault", "https://vault.example.com"), token_secret(vt),
                    now=NOW, provider_for=PROVIDERS)]
    out = t.compose(w, views)
    env = {e["name"]: decoded(out.data, e["key"]).decode() for e in out.env}
    assert env["GLAB_CONFIG_DIR"] == f"{c.DEFAULT_USER_FILES_PATH}/.workspace-tokens/glab"
    assert env["VAULT_ADDR"] == "https://vault.example.com"
    config = yaml.safe_load(decoded(out.data, "tool.glab.config.yml"))
    assert config["host"] == "git.example.com"
    assert config["hosts"]["git.example.com"]["token"] == ACCESS.decode()
    assert config["hosts"]["git.example.com"]["is_oauth2"] == "true" and config["hosts"]["git.example.com"]["user"] == "alice-gl"
    assert decoded(out.data, "token.vault.token") == ACCESS and "token.vault.git-username" not in out.data
    assert decoded(out.data, "git-credentials") == b"https://oauth2:" + ACCESS + b"@git.example.com\n"


def test_tool_env_and_files_are_published_before_the_token_is_connected():
    """Env is fixed when a container starts: it must not wait for the token (the files' contents follow later)."""
    w = ws([{"name": "gh", "optional": True}])
    out = t.compose(w, [view(TokenRef("gh", True), ut=user_token(phase=c.PHASE_AWAITING_AUTHORIZATION, authorizationURL=LINK))])
    assert {"GIT_CONFIG_COUNT", "GH_CONFIG_DIR"} <= set(out.env_names)
    assert decoded(out.data, "git-credentials") == b"" and "token.gh.token" not in out.data
    assert yaml.safe_load(decoded(out.data, "tool.gh.hosts.yml")) == {}
    condition = t.condition(w, out)
    assert condition.status and condition.reason == "Delivered"  # optional: never blocks
    assert out.status[0]["connectURL"] == LINK


def test_condition_and_events():
    w = ws([{"name": "gh"}])
    waiting = t.condition(w, t.compose(w, [view(ut=user_token(phase=c.PHASE_AWAITING_AUTHORIZATION, authorizationURL=LINK))]))
    assert not waiting.status and LINK in waiting.message
    assert t.announcements({}, waiting) == [("Warning", t.REASON_NOT_CONNECTED, waiting.message)]
    before = {"conditions": [{"type": c.CONDITION_TOKENS_READY, "status": "False", "reason": t.REASON_NOT_CONNECTED}]}
    assert t.announcements(before, waiting) == []  # once per reason
    ready = t.condition(w, t.compose(w, [view()]))
    assert ready.status and t.announcements(before, ready)[0][:2] == ("Normal", "TokensReady")
    assert t.condition(ws(), None).reason == "NoTokens"


def test_a_user_secret_may_not_write_into_the_tools_directory():
    secret = {"metadata": {"name": "mine", "labels": {c.LABEL_USER: "alice"},
                           "annotations": {c.ANNOTATION_USER_FILES: ".workspace-tokens/gh/hosts.yml=k"}},
              "type": "Opaque", "data": {"k": "eA=="}}
    plan = user_secrets.plan([secret], user="alice", select=None, reserved_env=())
    assert plan.files == [] and ".workspace-tokens" in plan.problems[0]


# --- the reconcile -----------------------------------------------------------------------------------------------
WS_PATH = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.WORKSPACE_SECRET_PLURAL}"
UT_PATH = f"/apis/{c.API_VERSION}/namespaces/{NS}/{c.USER_TOKEN_PLURAL}"
SECRETS = f"/api/v1/namespaces/{NS}/secrets"


class Operator:
    def __init__(self) -> None:
        self.kube = FakeKube(clock=lambda: NOW)
        self.scheduled: list[tuple[str, str, float]] = []
        self.controller = WorkspaceSecretController(self.kube, EventRecorder(self.kube, instance="test"),  # type: ignore[arg-type]
                                                    schedule=lambda ns, name, delay: self.scheduled.append((ns, name, delay)),
                                                    clock=lambda: NOW)

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run(coro)


def test_reconcile_delivers_the_token_and_a_refresh_fans_out():
    op = Operator()
    op.kube.put(app_path("github-app"), app())
    ut = op.kube.put(UT_PATH, user_token())
    op.kube.put(SECRETS, token_secret(ut))
    for name in ("one", "two", "other"):
        op.controller.observe(None, op.kube.put(WS_PATH, {  # kopf's listing shows the controller every WorkspaceSecret
            "apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name},
            "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": f"{name}-pod"},
                     **({"userTokens": [{"name": "gh"}]} if name != "other" else {})}}))
    op.run(op.controller.reconcile_by_name(NS, "one"))
    obj = op.kube.get_object(f"{WS_PATH}/one")
    secret = op.kube.get_object(f"{SECRETS}/one")
    assert decoded(secret["data"], "token.gh.token") == ACCESS
    assert all(REFRESH not in base64.b64decode(v) for v in secret["data"].values())
    ready = {x["type"]: x for x in obj["status"]["conditions"]}
    assert ready[c.CONDITION_TOKENS_READY]["status"] == "True" and ready[c.CONDITION_READY]["status"] == "True"
    assert obj["status"]["tokens"][0] == {"name": "gh", "optional": False, "phase": c.PHASE_VALID, "delivered": True,
                                          "application": "github-app", "type": "github", "login": "octo-alice"}
    assert {"name": "GIT_CONFIG_COUNT", "key": "GIT_CONFIG_COUNT"} in obj["status"]["env"]
    # A refreshed token Secret queues exactly the WorkspaceSecrets that name the UserToken.
    op.scheduled.clear()
    refreshed = op.kube.get_object(f"{SECRETS}/gh-token")
    op.run(op.controller.secret_changed("MODIFIED", refreshed))
    assert sorted(n for _, n, _ in op.scheduled) == ["one", "two"]
    # A phase change of the UserToken (kopf's watch event) too, once per change.
    op.scheduled.clear()
    expired = user_token(phase=c.PHASE_EXPIRED, authorizationURL=LINK)
    op.run(op.controller.user_token_changed("MODIFIED", expired))
    op.run(op.controller.user_token_changed("MODIFIED", expired))
    assert sorted(n for _, n, _ in op.scheduled) == ["one", "two"]


def test_reconcile_of_another_users_token_writes_nothing_of_it():
    op = Operator()
    op.kube.put(app_path("github-app"), app())
    bobs = op.kube.put(UT_PATH, user_token(user="bob"))
    op.kube.put(SECRETS, token_secret(bobs, user="bob"))
    op.kube.put(WS_PATH, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "one"},
                          "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}, "userTokens": [{"name": "gh"}]}})
    op.run(op.controller.reconcile_by_name(NS, "one"))
    secret = op.kube.get_object(f"{SECRETS}/one")
    assert all(ACCESS not in base64.b64decode(v) for v in secret["data"].values())
    conditions = {x["type"]: x for x in op.kube.get_object(f"{WS_PATH}/one")["status"]["conditions"]}
    assert conditions[c.CONDITION_TOKENS_READY]["reason"] == t.REASON_UNAVAILABLE
    assert conditions[c.CONDITION_READY]["status"] == "False"
    # Only bob's UserToken was read: not his application, not his Secret.
    assert not any("gh-token" in path or "oauthapplications" in path for _, path in op.kube.calls)


def test_tool_files_keep_whatever_a_provider_says_as_data():
    """A login or token with YAML syntax in it stays a string: never structure in the tool's file."""
    from workspace_secrets.oauth.tools import GH, GLAB, ToolAccount
    from workspace_secrets.runtime.sensitive import Sensitive

    login = 'eve"\n  "evil.example.com":\n    oauth_token: x # {'
    token = Sensitive('tok": [1]\n')
    for tool, name in ((GH, "hosts.yml"), (GLAB, "config.yml")):
        text = tool.render([ToolAccount("https://github.com", login, token, NOW)], "/d").files[name]
        parsed = yaml.safe_load(text)
        hosts = parsed if tool is GH else parsed["hosts"]
        assert list(hosts) == ["github.com"]
        entry = hosts["github.com"]
        assert entry["user"] == login and entry["oauth_token" if tool is GH else "token"] == 'tok": [1]\n'


def test_next_check_is_the_earliest_expiry():
    w = ws([{"name": "gh"}])
    out = t.compose(w, [view()])
    assert t.next_check(out, NOW) == pytest.approx(3601.0)
    assert t.next_check(None, NOW) is None


# --- what a refresh costs (review R2) ------------------------------------------------------------------------------
# No LIST per refresh (an in-memory index of which WorkspaceSecrets name which UserToken, kept from the bodies kopf
# hands to observe()), no reconcile for the phase's Valid -> Refreshing -> Valid or for a token Secret change nobody
# reads, token reads from the API server's watch cache no older than the last event seen (never a revoked token
# beyond one event), and one managed-Secret watch per served path whose events reach both controllers -- against
# the in-memory API server, counting its requests.


class CountingKube(FakeKube):
    """The fake API server, also recording each GET's resourceVersion (None: a quorum read from etcd)."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: NOW)
        self.gets: list[tuple[str, str | None]] = []

    async def get(self, path: str, *, resource_version: str | None = None) -> Any:
        self.gets.append((path, resource_version))
        return await super().get(path, resource_version=resource_version)


class CostOperator:
    def __init__(self) -> None:
        self.kube = CountingKube()
        self.scheduled: list[tuple[str, str]] = []
        self.controller = WorkspaceSecretController(self.kube, EventRecorder(self.kube, instance="test"),  # type: ignore[arg-type]
                                                    schedule=lambda ns, name, delay: self.scheduled.append((ns, name)),
                                                    clock=lambda: NOW)

    def workspace(self, name: str, tokens: tuple[str, ...] = ("gh",), namespace: str = NS) -> dict:
        return self.kube.put(f"/apis/{c.API_VERSION}/namespaces/{namespace}/{c.WORKSPACE_SECRET_PLURAL}", {
            "apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name},
            "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": f"{name}-pod"},
                     **({"userTokens": [{"name": t} for t in tokens]} if tokens else {})}})

    def queued(self) -> list[str]:
        names = sorted(n for _, n in self.scheduled)
        self.scheduled.clear()
        return names


def arun(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_refresh_queues_the_token_s_workspaces_from_memory_with_no_api_call():
    op = CostOperator()
    ut = op.kube.put(UT_PATH, user_token())
    secret = op.kube.put(SECRETS, token_secret(ut))
    bodies = [op.workspace(f"ws-{i}") for i in range(50)]
    bodies += [op.workspace("other-token", ("gl",)), op.workspace("no-tokens", ()), op.workspace("ws-0", ("gh",), "elsewhere")]
    for body in bodies:
        op.controller.observe(None, body)  # kopf's initial listing
    op.queued()
    op.kube.calls.clear()

    # A refresh: the UserToken goes Refreshing, its token Secret is rewritten, it goes Valid again.
    arun(op.controller.user_token_changed(None, ut))
    arun(op.controller.user_token_changed("MODIFIED", user_token(phase=c.PHASE_REFRESHING)))
    assert op.queued() == []  # Valid -> Refreshing shows nothing new to a workspace
    refreshed = op.kube.edit(f"{SECRETS}/gh-token", {"data": {c.KEY_TOKEN: base64.b64encode(b"gho_new").decode()}})
    arun(op.controller.secret_changed("MODIFIED", refreshed))
    arun(op.controller.user_token_changed("MODIFIED", user_token(phase=c.PHASE_VALID)))
    assert op.queued() == sorted(f"ws-{i}" for i in range(50))  # once each, this namespace, this token only
    assert op.kube.calls == []  # no LIST, no GET: the index is memory

    # An annotation-only rewrite of the token Secret changes nothing a workspace reads.
    annotated = op.kube.edit(f"{SECRETS}/gh-token", {"metadata": {"annotations": {"example.com/x": "1"}}})
    arun(op.controller.secret_changed("MODIFIED", annotated))
    assert op.queued() == []
    # Going unusable (and its connect link) does matter, once.
    expired = user_token(phase=c.PHASE_EXPIRED, authorizationURL="https://connect.example.com/a")
    arun(op.controller.user_token_changed("MODIFIED", expired))
    arun(op.controller.user_token_changed("MODIFIED", expired))
    assert len(op.queued()) == 50
    arun(op.controller.secret_changed("DELETED", secret))
    assert len(op.queued()) == 50
    assert op.kube.calls == []


def test_the_index_follows_spec_changes_deletions_and_reconciles():
    op = CostOperator()
    ut = op.kube.put(UT_PATH, user_token())
    one, two = op.workspace("one"), op.workspace("two")
    op.controller.observe(None, one)
    op.controller.observe("ADDED", two)
    # "one" stops naming the token; "two" is deleted.
    one = op.kube.edit(f"{WS_PATH}/one", {"spec": {"userTokens": [{"name": "gl"}]}})
    op.controller.observe("MODIFIED", one)
    op.controller.observe("DELETED", two)
    op.queued()
    arun(op.controller.user_token_changed("MODIFIED", user_token(phase=c.PHASE_REVOKED)))
    assert op.queued() == []
    # A WorkspaceSecret kopf has not shown yet is indexed by its reconcile (it reads the newest body anyway).
    op.workspace("three")
    op.kube.put(app_path("github-app"), app())
    arun(op.controller.reconcile_by_name(NS, "three"))
    op.queued()
    arun(op.controller.user_token_changed("MODIFIED", user_token(phase=c.PHASE_EXPIRED)))
    assert op.queued() == ["three"]
    assert ut  # the UserToken itself is untouched by all of this


def test_token_reads_come_from_the_watch_cache_no_older_than_the_last_event():
    op = CostOperator()
    op.kube.put(app_path("github-app"), app())
    ut = op.kube.put(UT_PATH, user_token())
    op.kube.put(SECRETS, token_secret(ut))
    op.controller.observe(None, op.workspace("one"))
    arun(op.controller.user_token_changed(None, ut))  # kopf's listing: the UserToken's version is known

    def reads() -> dict[str, str | None]:
        kinds = {f"{SECRETS}/gh-token": "secrets", f"{UT_PATH}/gh": "usertokens", app_path("github-app"): "oauthapplications"}
        out = {kinds[path]: rv for path, rv in op.kube.gets if path in kinds}
        op.kube.gets.clear()
        return out

    arun(op.controller.reconcile_by_name(NS, "one"))
    first = reads()
    assert first["usertokens"] == ut["metadata"]["resourceVersion"]  # cache, no older than kopf's event
    assert first["oauthapplications"] is None  # etcd: a stale "not allowed" would stand until the resync
    assert first["secrets"] is None  # no event of it seen yet: etcd, and its version is the floor from now on
    arun(op.controller.reconcile_by_name(NS, "one"))
    assert reads()["secrets"] == op.kube.get_object(f"{SECRETS}/gh-token")["metadata"]["resourceVersion"]

    # A refresh: the read after the Secret's event asks for that event's version (or newer).
    refreshed = op.kube.edit(f"{SECRETS}/gh-token", {"data": {c.KEY_TOKEN: base64.b64encode(b"gho_new").decode()}})
    arun(op.controller.secret_changed("MODIFIED", refreshed))
    arun(op.controller.reconcile_by_name(NS, "one"))
    assert reads()["secrets"] == refreshed["metadata"]["resourceVersion"]
    assert decoded(op.kube.get_object(f"{SECRETS}/one")["data"], "token.gh.token") == b"gho_new"

    # A Disconnect deletes the token Secret: the next read is from etcd, and nothing of the token stays.
    op.kube.remove(f"{SECRETS}/gh-token")
    arun(op.controller.secret_changed("DELETED", refreshed))
    arun(op.controller.reconcile_by_name(NS, "one"))
    assert reads()["secrets"] is None
    data = op.kube.get_object(f"{SECRETS}/one")["data"]
    assert "token.gh.token" not in data and all(b"gho_new" not in base64.b64decode(v) for v in data.values())
    assert ACCESS  # (the original token went with the refresh)


def test_a_cache_that_cannot_catch_up_is_answered_by_etcd_and_a_racing_event_wins():
    op = CostOperator()
    op.kube.put(app_path("github-app"), app())
    ut = op.kube.put(UT_PATH, user_token())
    secret = op.kube.put(SECRETS, token_secret(ut))
    op.controller.observe(None, op.workspace("one"))
    arun(op.controller.user_token_changed(None, ut))
    arun(op.controller.secret_changed("ADDED", secret))
    versions = op.controller._tokens.versions
    real_get = op.kube.get

    async def too_large(path: str, *, resource_version: str | None = None) -> Any:
        if resource_version not in (None, "0"):
            raise api_error(504, "Too large resource version", reason="Timeout")
        return await real_get(path, resource_version=resource_version)

    op.kube.get = too_large  # type: ignore[method-assign]
    arun(op.controller.reconcile_by_name(NS, "one"))
    assert decoded(op.kube.get_object(f"{SECRETS}/one")["data"], "token.gh.token") == ACCESS
    op.kube.get = real_get  # type: ignore[method-assign]

    # A quorum read overlapping an event does not become the floor (the event's version decides).
    path = f"{SECRETS}/gh-token"
    versions.saw(path, "DELETED", secret)
    mark = versions.mark()
    versions.saw(path, "MODIFIED", {"metadata": {"resourceVersion": "999"}})
    versions.read(path, {"metadata": {"resourceVersion": "5"}}, mark)
    assert versions.floor(path) == "999"
    versions.saw(path, "DELETED", secret)
    mark = versions.mark()
    versions.saw(f"{SECRETS}/other", "MODIFIED", {"metadata": {"resourceVersion": "1000"}})
    versions.read(path, {"metadata": {"resourceVersion": "5"}}, mark)
    assert versions.floor(path) is None


def test_one_managed_secret_watch_per_path_feeds_both_controllers(monkeypatch):
    from workspace_secrets import app as app_module
    from workspace_secrets.settings import OperatorConfig
    from workspace_secrets.user_keys.service import UserKeys

    watches: list[tuple[str, str]] = []

    class Watch:
        def __init__(self, kube: Any, path: str, selector: str, handler: Any, index: Any = None, on_missed_events: Any = None,
                     deliver_listed: bool = False) -> None:
            watches.append((path, selector))
            self.healthy = True
            self.indexed = False

        async def run(self) -> None:
            await asyncio.Event().wait()

    monkeypatch.setattr(app_module, "LabelSelectedWatch", Watch)
    kube = FakeKube(clock=lambda: NOW)
    namespaces = (NS, "other")

    async def scenario() -> tuple[int, int, int]:
        app = app_module.App(OperatorConfig(namespaces=namespaces))
        app.kube, app.user_keys, app.active = kube, UserKeys(kube), asyncio.Event()  # type: ignore[assignment]
        await app._start_workspace_secrets()
        await app._start_user_tokens()
        try:
            app.queue._active = asyncio.Event()  # hold what is queued, to count it
            app.user_token_queue._active = asyncio.Event()
            ut = kube.put(UT_PATH, user_token())
            app.workspace_secrets.observe(None, kube.put(WS_PATH, {
                "apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": "one"},
                "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}, "userTokens": [{"name": "gh"}]}}))
            scheduled: list[str] = []
            app.workspace_secrets._schedule = lambda ns, name, delay: scheduled.append(name)  # type: ignore[method-assign]
            secret = token_secret(ut)
            await app._managed_secret_changed("DELETED", secret)  # a standby: neither side acts
            standby = (len(scheduled), len(app.user_token_queue))
            app.active.set()
            await app._managed_secret_changed("DELETED", secret)
            await asyncio.sleep(0.01)
            assert standby == (0, 0)
            return len(app.watches), len(scheduled), len(app.user_token_queue)
        finally:
            for task in app.tasks:
                task.cancel()
            await asyncio.gather(*app.tasks, return_exceptions=True)
            await app.queue.stop()
            await app.user_token_queue.stop()
            if app._transport is not None:
                await app._transport.close()

    probed, ws_queued, ut_queued = asyncio.run(scenario())
    assert probed == len(watches)  # the liveness probe checks every watch, the shared one included
    secret_watches = [(p, s) for p, s in watches if p.endswith("/secrets")]
    managed = [(p, s) for p, s in secret_watches if s == c.MANAGED_SELECTOR]
    assert sorted(p for p, _ in managed) == sorted(f"/api/v1/namespaces/{ns}/secrets" for ns in namespaces)
    # The only other Secret watch is the users' own Secrets (not managed by the operator: disjoint).
    assert {s for _, s in secret_watches} == {c.MANAGED_SELECTOR, c.USER_SECRETS_SELECTOR}
    assert len(secret_watches) == 2 * len(namespaces)
    # The WorkspaceSecrets: one watch of our own per namespace (not kopf's), unselected.
    assert sorted(p for p, s in watches if p.endswith(f"/{c.WORKSPACE_SECRET_PLURAL}") and s == "") == sorted(
        f"/apis/{c.API_VERSION}/namespaces/{ns}/{c.WORKSPACE_SECRET_PLURAL}" for ns in namespaces)
    assert (ws_queued, ut_queued) == (1, 1)  # the WorkspaceSecret naming the token, and the UserToken itself
