"""Merge rules and conflict detection for user secrets."""

import base64

from workspace_secrets.api import constants as c
from workspace_secrets.domain import user_secrets


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
