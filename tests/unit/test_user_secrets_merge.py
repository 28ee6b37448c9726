"""Merge rules and conflict detection for user secrets."""

import base64

import pytest

from workspace_secrets.api import constants as c
from workspace_secrets.workspace_secret import user_secrets


def secret(name, user="alice", env=None, files=None, **data):
    annotations = {}
    if env is not None:
        annotations[c.ANNOTATION_USER_ENV] = env
    if files is not None:
        annotations[c.ANNOTATION_USER_FILES] = files
    return {"metadata": {"name": name, "labels": {c.LABEL_USER: user}, "annotations": annotations},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_env_and_files_are_delivered_under_namespaced_keys():
    plan = user_secrets.plan(
        [secret("npm", env="NPM_TOKEN=token", files=".npmrc=npmrc:0600", token="t", npmrc="rc", unused="x")],
        user="alice", select=None, reserved_env={"GIT_SSH_COMMAND"},
    )
    assert plan.ok and plan.delivered == ["npm"]
    assert plan.env == [{"name": "NPM_TOKEN", "key": "user.npm.token"}]
    assert plan.files == [{"key": "user.npm.npmrc", "path": ".npmrc", "mode": 0o600}]
    assert set(plan.data) == {"user.npm.token", "user.npm.npmrc"}  # undeclared keys are not delivered


def test_another_users_secret_is_never_delivered():
    plan = user_secrets.plan([secret("bobs", user="bob", env="X=k", k="v")], user="alice", select=None, reserved_env=())
    assert plan.data == {} and plan.env == [] and plan.ok


def test_conflicting_env_and_paths_are_reported_and_delivered_to_nobody():
    plan = user_secrets.plan(
        [secret("a", env="TOKEN=k", files="cfg=k", k="1"), secret("b", env="TOKEN=k", files="cfg=k", k="2"),
         secret("c", env="GIT_SSH_COMMAND=k, OK=k", k="3")],
        user="alice", select=None, reserved_env={"GIT_SSH_COMMAND"},
    )
    assert [e["name"] for e in plan.env] == ["OK"] and plan.files == []
    text = " ".join(plan.problems)
    assert "env TOKEN is claimed by several Secrets (a, b)" in text
    assert "file cfg is claimed by several Secrets (a, b)" in text
    assert "env GIT_SSH_COMMAND is set by the platform" in text


def test_selection_and_bad_declarations():
    plan = user_secrets.plan(
        [secret("a", env="A=k", k="1"), secret("b", env="B=k", k="2"),
         secret("bad", env="1NVALID=k, C=missing", files="../escape=k, abs=k:999", k="3")],
        user="alice", select=["a", "bad", "ghost"], reserved_env=(),
    )
    assert [e["name"] for e in plan.env] == ["A"]
    text = " ".join(plan.problems)
    assert "'1NVALID=k' is not ENV_NAME=key" in text and "key 'missing'" in text
    assert "'../escape=k'" in text and "'abs=k:999'" in text and "no Secret 'ghost'" in text


def test_problem_messages_never_contain_values():
    plan = user_secrets.plan([secret("a", env="A=k, B=nope", k="super-secret-value")], user="alice", select=None, reserved_env=())
    assert "super-secret-value" not in " ".join(plan.problems)
    assert base64.b64encode(b"super-secret-value").decode() not in " ".join(plan.problems)


def typed(name, type_, **kw):
    s = secret(name, **kw)
    s["type"] = type_
    return s


def test_only_user_secret_types_are_delivered():
    """A service-account-token Secret is filled in by Kubernetes: never "the user's secret" (issue 14, instance 6)."""
    ok = ["Opaque", "kubernetes.io/basic-auth", "kubernetes.io/ssh-auth", "kubernetes.io/dockerconfigjson", "kubernetes.io/tls"]
    refused = ["kubernetes.io/service-account-token", "bootstrap.kubernetes.io/token", "helm.sh/release.v1", "kubernetes.io/dockercfg"]
    secrets = [typed(f"s{i}", t, env=f"V{i}=k", k="x") for i, t in enumerate(ok + refused)]
    plan = user_secrets.plan(secrets, user="alice", select=None, reserved_env=())
    assert plan.delivered == [f"s{i}" for i in range(len(ok))]
    assert [e["name"] for e in plan.env] == [f"V{i}" for i in range(len(ok))]
    text = " ".join(plan.problems)
    for i, t in enumerate(refused, start=len(ok)):
        assert f"Secret 's{i}' has type {t}" in text
    assert "not delivered" in text
    untyped = secret("plain", env="A=k", k="x")  # no type: Opaque
    assert user_secrets.plan([untyped], user="alice", select=None, reserved_env=()).delivered == ["plain"]


@pytest.mark.parametrize("name", [
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "DYLD_INSERT_LIBRARIES", "BASH_ENV", "ENV", "PROMPT_COMMAND", "SHELLOPTS",
    "BASHOPTS", "PS4", "IFS", "PATH", "path", "HOME", "SHELL", "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_SSH_COMMAND",
    "GIT_ASKPASS", "SSH_AUTH_SOCK", "SSH_ASKPASS", "PYTHONPATH", "PYTHONSTARTUP", "PERL5OPT", "PERL5LIB", "PERLLIB",
    "RUBYOPT", "NODE_OPTIONS", "NODE_PATH", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    "GCONV_PATH", "LOCPATH", "MALLOC_CHECK_", "LESSOPEN", "LESSCLOSE", "PAGER", "EDITOR", "VISUAL", "BROWSER",
    "HTTP_PROXY", "https_proxy", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "GNUPGHOME", "KUBECONFIG", "XDG_CONFIG_HOME", "TMPDIR", "GLIBC_TUNABLES",
    "NPM_CONFIG_SCRIPT_SHELL", "OPENSSL_CONF", "SSLKEYLOGFILE",
])
def test_env_names_that_change_how_programs_run_are_refused(name):
    assert user_secrets.denied_env(name)
    plan = user_secrets.plan([secret("evil", env=f"{name}=k, FINE=k", k="x")], user="alice", select=None, reserved_env=())
    assert [e["name"] for e in plan.env] == ["FINE"]
    assert f"env {name} (Secret 'evil') changes how programs in the workspace run" in " ".join(plan.problems)


@pytest.mark.parametrize("name", ["NPM_TOKEN", "OPENAI_API_KEY", "GITHUB_TOKEN", "DATABASE_URL", "AWS_PROFILE", "MY_PATH_X"])
def test_ordinary_env_names_are_delivered(name):
    assert not user_secrets.denied_env(name)
