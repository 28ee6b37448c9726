"""User tokens in workspaces (WorkspaceSecret spec.userTokens, workspace_secret/tokens.py): the pure decisions --
whose token may be read, what the workspace Secret gets (access token only, git-credentials, git's env, tool
files), TokensReady and its Events -- and the reconcile against the in-memory API server, including the fan-out of
a refreshed token Secret to every WorkspaceSecret that names its UserToken."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from fakes.kube import FakeKube

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
        "GIT_CONFIG_VALUE_0": f"store --file={c.DEFAULT_MOUNT_PATH}/git-credentials",
        "GH_CONFIG_DIR": f"{c.DEFAULT_USER_FILES_PATH}/.workspace-tokens/gh"}
    assert out.files == [{"key": "tool.gh.config.yml", "path": ".workspace-tokens/gh/config.yml"},
                         {"key": "tool.gh.hosts.yml", "path": ".workspace-tokens/gh/hosts.yml"}]
    hosts = yaml.safe_load(decoded(out.data, "tool.gh.hosts.yml"))
    assert hosts == {"github.com": {"git_protocol": "https", "oauth_token": ACCESS.decode(), "user": "octo-alice",
                                    "users": {"octo-alice": {"oauth_token": ACCESS.decode()}}}}
    assert yaml.safe_load(decoded(out.data, "tool.gh.config.yml")) == {"version": "1"}
    # Real git, configured only by the env the workspace gets, finds the token for github.com.
    store = tmp_path / "git-credentials"
    store.write_bytes(decoded(out.data, "git-credentials"))
    env = {e["name"]: decoded(out.data, e["key"]).decode().replace(f"{c.DEFAULT_MOUNT_PATH}/git-credentials", str(store))
           for e in out.env if e["name"].startswith("GIT_")}
    filled = subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=github.com\n\n", capture_output=True,
                            text=True, timeout=10, env={**env, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "GIT_TERMINAL_PROMPT": "0"})
    assert filled.returncode == 0
    fields = dict(line.split("=", 1) for line in filled.stdout.splitlines())
    assert (fields["username"], fields["password"].encode()) == ("x-access-token", ACCESS)
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
        op.kube.put(WS_PATH, {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "metadata": {"name": name},
                              "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": f"{name}-pod"},
                                       **({"userTokens": [{"name": "gh"}]} if name != "other" else {})}})
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
