"""`kubectl wso` without a cluster: the pure rendering (object dicts -> lines) and the commands against a recording
stand-in for the API (what is read, what is patched, exit codes). On the real API server through the real kubectl:
tests/e2e/test_kubectl_plugin.py."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from workspace_secrets.api import constants as c
from workspace_secrets.kubectl_plugin import render as r
from workspace_secrets.kubectl_plugin.cli import Failure, Plugin, parser, run

NOW = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
LINK = "https://connect.example.com/accounts?focus=ns/alice-gh"


def ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def waiting_ws(**status_extra) -> dict:
    return {
        "apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND,
        "metadata": {"name": "alice-ws", "namespace": "ns", "uid": "u-ws"},
        "spec": {"user": "alice", "workspaceRef": {"kind": "Deployment", "name": "alice-workspace"},
                 "userTokens": [{"name": "alice-gh"}, {"name": "alice-vault", "optional": True}],
                 "credentials": [{"name": "kube", "provider": "cluster-tokens"}]},
        "status": {
            "secretName": "alice-ws", "sshKeyFingerprint": "SHA256:abc", "sshKeyType": "ed25519", "sshKeySource": "Generated",
            "sshPublicKey": "ssh-ed25519 AAAAPUBLIC alice",
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "TokensNotReady", "message": "UserToken 'alice-gh' is not connected"},
                {"type": "WorkspaceBound", "status": "True", "reason": "Bound", "message": "bound"},
                {"type": "TokensReady", "status": "False", "reason": "TokenNotConnected", "message": f"Connect it at {LINK}"},
            ],
            "env": [{"name": "GIT_SSH_COMMAND", "key": "GIT_SSH_COMMAND"}, {"name": "GIT_CONFIG_COUNT", "key": "GIT_CONFIG_COUNT"},
                    {"name": "AWS_SHARED_CREDENTIALS_FILE", "key": "kube.credentials-path"}],
            "files": [{"key": "user.db.password", "path": "db/password", "mode": 384}],
            "tokens": [{"name": "alice-gh", "type": "github", "phase": "AwaitingAuthorization", "delivered": False,
                        "connectURL": LINK, "reason": "TokenNotConnected"},
                       {"name": "alice-vault", "optional": True, "type": "vault", "phase": "Valid", "delivered": True, "login": "alice"}],
            "credentials": [{"name": "kube", "provider": "cluster-tokens", "phase": "Stopped"}],
            "userSecrets": ["db"],
            **status_extra,
        },
    }


def event(reason: str, message: str, *, kind: str = c.WORKSPACE_SECRET_KIND, name: str = "alice-ws", seconds_ago: float = 10,
          type_: str = "Warning", count: int = 1) -> dict:
    return {"involvedObject": {"kind": kind, "name": name}, "reason": reason, "message": message, "type": type_,
            "lastTimestamp": ts(seconds_ago), "count": count}


def gated_pod(name: str) -> dict:
    return {"metadata": {"name": name}, "spec": {"schedulingGates": [{"name": c.SCHEDULING_GATE}]}}


# --- arguments ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind, name", [
    ("alice-ws", c.WORKSPACE_SECRET_KIND, "alice-ws"),
    ("ws/alice-ws", c.WORKSPACE_SECRET_KIND, "alice-ws"),
    ("wss/alice-ws", c.WORKSPACE_SECRET_KIND, "alice-ws"),
    ("WorkspaceSecret/alice-ws", c.WORKSPACE_SECRET_KIND, "alice-ws"),
    ("workspacesecrets.workspace-secrets.io/alice-ws", c.WORKSPACE_SECRET_KIND, "alice-ws"),
    ("ut/alice-gh", c.USER_TOKEN_KIND, "alice-gh"),
    ("usertoken/alice-gh", c.USER_TOKEN_KIND, "alice-gh"),
])
def test_targets(text, kind, name):
    assert r.parse_target(text) == r.Target(kind, name)


@pytest.mark.parametrize("text", ["secret/alice", "ws/", "ws/Alice", "ws/a b", "pods/x", "ws/" + "a" * 254, "ws/a\x1b[31m"])
def test_bad_targets_are_usage_errors(text):
    with pytest.raises(r.UsageError):
        r.parse_target(text)


def test_annotation_values_are_new_each_time_and_the_patch_sets_only_that_annotation():
    first, second = r.request_value(NOW, "a1b2c3"), r.request_value(NOW, "d4e5f6")
    assert first != second and first.startswith("20261130T120000Z-")
    assert r.annotation_patch(c.ANNOTATION_ROTATE_SSH_KEY, first) == {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: first}}}


# --- status: WorkspaceSecret ----------------------------------------------------------------------------------------
def test_a_waiting_workspace_shows_conditions_events_what_it_gets_and_what_it_waits_for():
    lines = r.workspace_secret_status(
        waiting_ws(), [event("TokensNotReady", "waits for alice-gh", seconds_ago=120, count=3),
                       event("SecretCreated", "created", type_="Normal", seconds_ago=300)],
        r.PodView((gated_pod("alice-workspace-1"), {"metadata": {"name": "other"}, "spec": {}})), NOW)
    text = "\n".join(lines)
    assert lines[0] == "WorkspaceSecret alice-ws  (namespace ns, user alice)"
    assert "Workspace: Deployment/alice-workspace (bound)" in text and "Ready: False (TokensNotReady)" in text
    # Conditions with reasons and messages, Ready first.
    conditions = text.split("Conditions:\n")[1].split("\n\n")[0].splitlines()
    assert conditions[0].split()[:3] == ["Ready", "False", "TokensNotReady"]
    assert any("TokenNotConnected" in x and LINK in x for x in conditions)
    # What it gets: names only.
    gets = text.split("The workspace gets:\n")[1].split("\n\n")[0]
    assert "Secret alice-ws, mounted at /var/run/workspace-secrets" in gets
    assert "GIT_SSH_COMMAND, GIT_CONFIG_COUNT, AWS_SHARED_CREDENTIALS_FILE (<- kube.credentials-path)" in gets
    assert "db/password" in gets and "user secrets: db" in gets and "SHA256:abc" in gets
    assert "token alice-gh (github): not delivered, AwaitingAuthorization" in gets
    assert "token alice-vault (vault as alice): delivered, Valid, optional" in gets
    # What it waits for: the required token with its link, the credential, the gated pod; not the optional token.
    waits = text.split("Waiting for:\n")[1].split("\n\n")[0].splitlines()
    assert waits == [
        f"  UserToken alice-gh (AwaitingAuthorization, TokenNotConnected): connect at {LINK}",
        "  credential kube: Stopped (minted while a pod of the workspace runs); see CredentialsReady",
        f"  pod alice-workspace-1 is held at the scheduling gate {c.SCHEDULING_GATE}",
    ]
    events = text.split("Events:\n")[1].splitlines()
    assert events[0].split()[:4] == ["5m", "ago", "Normal", "SecretCreated"]  # oldest first
    assert events[1].endswith("waits for alice-gh (x3)") and "2m ago" in events[1]


def test_a_ready_workspace_waits_for_nothing():
    ws = waiting_ws(tokens=[{"name": "alice-gh", "phase": "Valid", "delivered": True}],
                    credentials=[{"name": "kube", "provider": "cluster-tokens", "phase": "Active", "id": "sa-token-1"}])
    lines = r.workspace_secret_status(ws, [], r.PodView(()), NOW)
    assert "\n".join(lines).split("Waiting for:\n")[1].split("\n")[0] == "  nothing"
    assert "  credential kube (cluster-tokens): Active, id sa-token-1" in lines
    assert "Events:" in lines and lines[-1] == "  (none)"


def test_a_workspace_without_status_says_the_operator_has_not_reported():
    ws = {"metadata": {"name": "w", "namespace": "ns"}, "spec": {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "p"}}}
    text = "\n".join(r.workspace_secret_status(ws, [], r.PodView(()), NOW))
    assert "not reported" in text and "no Secret yet" in text and "Ready: Unknown" in text


def test_without_pod_access_the_gates_events_on_pods_tell_which_pods_wait():
    marker = "for WorkspaceSecret 'alice-ws':"
    pod_events = [
        event(c.EVENT_WAITING_FOR_TOKEN, f"Waiting (scheduling gate {c.SCHEDULING_GATE}) {marker} UserToken 'alice-gh'",
              kind="Pod", name="p1", seconds_ago=60),
        event(c.EVENT_WAITING_FOR_TOKEN, f"Waiting {marker} x", kind="Pod", name="p2", seconds_ago=60),
        event(c.EVENT_GATE_REMOVED, "released", kind="Pod", name="p2", seconds_ago=5, type_="Normal"),
        event(c.EVENT_WAITING_FOR_TOKEN, "Waiting for WorkspaceSecret 'alice-ws-2': y", kind="Pod", name="p3"),  # another WS
        event(c.EVENT_WAITING_FOR_TOKEN, f"Waiting {marker} z", kind="Deployment", name="p4"),
    ]
    assert list(r.waiting_pods_from_events("alice-ws", reversed(pod_events))) == ["p1"]
    text = "\n".join(r.workspace_secret_status(waiting_ws(), [], r.PodView(None, tuple(pod_events)), NOW))
    assert "pod p1 (from its Events): Waiting" in text and "p2" not in text.split("Waiting for:")[1].split("Events:")[0]
    assert "pods are not readable with your permissions" in text


def test_only_a_workspace_whose_pods_wait_at_the_gate_gets_its_pods_looked_up():
    assert r.requires_gate(waiting_ws())
    no_gate = waiting_ws()
    no_gate["spec"] = {**no_gate["spec"], "userTokens": [{"name": "x", "optional": True}],
                       "credentials": [{"name": "k", "provider": "p", "lifecycle": "WhileExists"}]}
    assert not r.requires_gate(no_gate)
    invalid = {**no_gate, "spec": {**no_gate["spec"], "user": ""}}  # SpecError: the gate holds such pods
    assert r.requires_gate(invalid)
    cluster = FakeCluster({(c.WORKSPACE_SECRET_PLURAL, "alice-ws"): no_gate})
    p, out = plugin(cluster)
    assert p.status(r.Target(c.WORKSPACE_SECRET_KIND, "alice-ws")) == 0
    assert not any(call[1] == "pods" or "involvedObject.kind=Pod" in str(call) for call in cluster.calls)
    assert "not readable" not in out.getvalue()


def test_cluster_strings_cannot_drive_the_terminal():
    ws = waiting_ws()
    ws["status"]["conditions"][0]["message"] = "evil \x1b[2J\x1b]0;title\x07 line\nnext \u202eRTL"
    text = "\n".join(r.workspace_secret_status(ws, [event("X", "\x1b[31mred\r\n")], r.PodView(()), NOW))
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text and "\r" not in text
    assert "\\x1b[2J" in text and "line next" in text


# --- status: UserToken ----------------------------------------------------------------------------------------------
def user_token(phase: str = "AwaitingAuthorization", user: str = "alice", name: str = "alice-gh", **status) -> dict:
    base = {"phase": phase, "type": "github", "host": "github.com",
            "conditions": [{"type": "Ready", "status": "False", "reason": phase, "message": "open status.authorizationURL to connect."}]}
    if phase in r.NOT_CONNECTED_PHASES:
        base["authorizationURL"] = LINK
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"u-{name}"},
            "spec": {"user": user, "application": "github"}, "status": {**base, **status}}


def test_a_user_token_shows_its_link_times_keys_conditions_and_the_workspaces_waiting_for_it():
    ut = user_token(userCode="WDJB-MJHT", lastRefreshTime=ts(3600), expiresAt=(NOW + timedelta(hours=7)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    sshKeys=[{"fingerprint": "SHA256:k", "type": "ed25519", "addedBy": "Operator", "title": "wso ns/alice"}])
    lines = r.user_token_status(ut, [event("AwaitingAuthorization", "connect", kind="UserToken", name="alice-gh")],
                                [waiting_ws(), {"metadata": {"name": "unrelated"}, "spec": {"userTokens": [{"name": "x"}]}}], NOW)
    text = "\n".join(lines)
    assert lines[0] == "UserToken alice-gh  (namespace ns, user alice)"
    assert "Application: github (github at github.com), flow AuthorizationCode" in text
    assert f"Connect at: {LINK}" in text and "last refresh: " in text and "(1h ago)" in text and "(in 7h)" in text
    assert "SHA256:k" in text and "Operator" in text
    assert "Workspaces using it:\n  alice-ws: waits for it" in text and "unrelated" not in text
    # The device flow's code is the owner's only (shown on the connect page): never printed, even if an old
    # operator version left it in status.
    assert "WDJB-MJHT" not in text


def test_a_user_token_without_the_right_to_list_workspaces_still_renders():
    text = "\n".join(r.user_token_status(user_token(phase="Valid", login="alice"), [], None, NOW))
    assert "Phase: Valid, connected as alice" in text and "Workspaces using it" not in text and "Connect at" not in text


# --- connect / rotate / refresh decisions ----------------------------------------------------------------------------
def test_connect_prints_the_link_alone_or_says_why_there_is_none():
    assert r.connect_lines(user_token()) == (0, [LINK])
    code, [line] = r.connect_lines(user_token(phase="Valid", login="alice"))
    assert code == 0 and "connected as alice" in line
    assert r.connect_lines({"metadata": {"name": "x"}, "status": {}})[0] == r.EXIT_ERROR


def test_connect_without_a_name_lists_only_the_callers_tokens_that_need_connecting():
    tokens = [user_token(name="b-gh", user="bob"), user_token(name="a-valid", phase="Valid"), user_token(name="a-exp", phase="Expired"),
              user_token(name="a-gh")]
    found = r.needing_connection(tokens, "alice")
    assert [t["metadata"]["name"] for t in found] == ["a-exp", "a-gh"]
    lines = r.connect_list_lines(found, "alice", "ns")
    assert "a-exp" in lines[1] and LINK in lines[1] and len(lines) == 3
    assert "No UserToken of user 'alice'" in r.connect_list_lines([], "alice", "ns")[0]


def test_rotation_and_refresh_refuse_what_the_operator_cannot_do():
    ws = waiting_ws()
    assert r.rotate_refusal(ws) is None
    ws["spec"]["ssh"] = {"existingSecretRef": {"name": "my-key"}}
    assert "your own key" in (r.rotate_refusal(ws) or "")
    assert LINK in (r.refresh_refusal(user_token()) or "")
    assert r.refresh_refusal(user_token(phase="Valid")) is None
    device = user_token()
    device["spec"]["flow"] = "Device"
    assert r.refresh_refusal(device) is None  # the refresh annotation asks for a new code


@pytest.mark.parametrize("status, code, words", [
    (403, r.EXIT_FORBIDDEN, "you may not change"),
    (404, r.EXIT_NOT_FOUND, "not found"),
    (401, r.EXIT_ERROR, "not signed in"),
    (500, r.EXIT_ERROR, "HTTP 500"),
])
def test_api_errors_are_one_clear_line(status, code, words):
    got, line = r.api_error(status, "denied: spec.user", verb="patch", what="UserToken 'x'", namespace="ns")
    assert got == code and words in line and "\n" not in line


# --- the commands, against a recording stand-in for the API -----------------------------------------------------------
class FakeCluster:
    """Records every call; answers from `objects`; raises Failure(403) for `forbidden` resources."""

    default_namespace = "ctx-ns"

    def __init__(self, objects: dict, *, forbidden: tuple[str, ...] = (), user: str | None = "alice") -> None:
        self.objects, self.forbidden, self.user = objects, forbidden, user
        self.calls: list[tuple] = []
        self.patches: list[dict] = []
        self.after_patch = None

    def _check(self, resource: str, verb: str) -> None:
        if (resource, verb) in self.forbidden or resource in self.forbidden:
            raise Failure(*r.api_error(403, f"cannot {verb} {resource}", verb=verb, what=resource, namespace="ns"))

    def get(self, namespace, target):
        self.calls.append(("get", target.plural, target.name))
        self._check(target.plural, "get")
        if (target.plural, target.name) not in self.objects:
            raise Failure(*r.api_error(404, "", verb="get", what=str(target), namespace=namespace))
        return self.objects[(target.plural, target.name)]

    def list(self, namespace, plural):
        self.calls.append(("list", plural))
        self._check(plural, "list")
        return [o for (p, _), o in self.objects.items() if p == plural]

    def patch(self, namespace, target, body):
        self.calls.append(("patch", target.plural, target.name))
        self._check(target.plural, "patch")
        self.patches.append(body)
        if self.after_patch:
            self.after_patch(body)
        return self.objects[(target.plural, target.name)]

    def events(self, namespace, selector):
        self.calls.append(("list", "events", selector))
        self._check("events", "list")
        return []

    def pods(self, namespace, selector):
        self.calls.append(("list", "pods", selector))
        self._check("pods", "list")
        return []

    def whoami(self):
        self.calls.append(("whoami",))
        return self.user


def plugin(cluster, **kw) -> tuple[Plugin, io.StringIO]:
    out = io.StringIO()
    return Plugin(cluster, "ns", out, now=lambda: NOW, nonce=lambda: "n0nce1", sleep=lambda s: None, **kw), out


def test_status_reads_only_what_kubectl_get_shows_and_never_a_secret():
    cluster = FakeCluster({(c.WORKSPACE_SECRET_PLURAL, "alice-ws"): waiting_ws(), (c.USER_TOKEN_PLURAL, "alice-gh"): user_token()},
                          forbidden=("pods",))
    p, out = plugin(cluster)
    assert p.status(r.Target(c.WORKSPACE_SECRET_KIND, "alice-ws")) == 0
    assert p.status(r.Target(c.USER_TOKEN_KIND, "alice-gh")) == 0
    resources = {call[1] for call in cluster.calls if call[0] != "whoami"}
    assert resources == {c.WORKSPACE_SECRET_PLURAL, c.USER_TOKEN_PLURAL, "events", "pods"}
    assert ("list", "events", "involvedObject.uid=u-ws") in cluster.calls
    assert ("list", "events", "involvedObject.kind=Pod") in cluster.calls  # pods forbidden: the gate's Events instead
    assert all(call[0] in ("get", "list") for call in cluster.calls)  # status never writes


def test_rotate_patches_the_annotation_once_and_waits_for_the_new_key():
    ws = waiting_ws()
    cluster = FakeCluster({(c.WORKSPACE_SECRET_PLURAL, "alice-ws"): ws})

    def operator(body):
        ws["status"] = {**ws["status"], "sshKeyRotation": body["metadata"]["annotations"][c.ANNOTATION_ROTATE_SSH_KEY],
                        "sshKeyFingerprint": "SHA256:new"}
    cluster.after_patch = operator
    p, out = plugin(cluster)
    assert p.rotate("alice-ws", wait=True, timeout=5) == 0
    assert cluster.patches == [{"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "20261130T120000Z-n0nce1"}}}]
    assert "Rotated: SHA256:abc -> SHA256:new" in out.getvalue()


def test_a_wait_that_never_ends_times_out_with_exit_code_5():
    cluster = FakeCluster({(c.USER_TOKEN_PLURAL, "alice-gh"): user_token(phase="Valid")})
    p, _ = plugin(cluster)
    with pytest.raises(Failure) as info:
        p.refresh("alice-gh", wait=True, timeout=0)
    assert info.value.code == r.EXIT_TIMEOUT and cluster.patches[0]["metadata"]["annotations"][c.ANNOTATION_REFRESH_TOKEN]


def test_refresh_of_an_unconnected_token_patches_nothing_and_says_to_connect():
    cluster = FakeCluster({(c.USER_TOKEN_PLURAL, "alice-gh"): user_token()})
    p, _ = plugin(cluster)
    with pytest.raises(Failure) as info:
        p.refresh("alice-gh", wait=False, timeout=1)
    assert info.value.code == r.EXIT_ERROR and LINK in str(info.value) and cluster.patches == []


def test_connect_refuses_another_users_token_and_lists_only_the_callers():
    cluster = FakeCluster({(c.USER_TOKEN_PLURAL, "bob-gh"): user_token(name="bob-gh", user="bob"),
                           (c.USER_TOKEN_PLURAL, "alice-gh"): user_token()})
    p, out = plugin(cluster)
    with pytest.raises(Failure) as info:
        p.connect("bob-gh")
    assert info.value.code == r.EXIT_FORBIDDEN and "'bob'" in str(info.value) and LINK not in str(info.value)
    assert p.connect("alice-gh") == 0 and out.getvalue() == LINK + "\n"
    out.truncate(0), out.seek(0)
    assert p.connect(None) == 0 and "alice-gh" in out.getvalue() and "bob-gh" not in out.getvalue()
    p2, out2 = plugin(cluster, for_user="bob")
    assert p2.connect("bob-gh") == 0 and out2.getvalue() == LINK + "\n"


def test_the_command_line_exit_codes_and_flags_like_kubectl():
    seen = {}

    def factory(kubeconfig, context, as_user, groups):
        seen.update(kubeconfig=kubeconfig, context=context, as_user=as_user, groups=tuple(groups))
        return FakeCluster({(c.WORKSPACE_SECRET_PLURAL, "alice-ws"): waiting_ws()})

    out, err = io.StringIO(), io.StringIO()
    code = run(["status", "ws/alice-ws", "--kubeconfig", "/k", "--context", "ctx", "-n", "ns", "--as", "alice"],
               out=out, err=err, cluster_factory=factory, now=lambda: NOW)
    assert code == 0 and seen == {"kubeconfig": "/k", "context": "ctx", "as_user": "alice", "groups": ()}
    assert out.getvalue().startswith("WorkspaceSecret alice-ws")
    # Flags before the command work too; the context's namespace is the default.
    assert run(["--as", "bob", "status", "missing"], out=io.StringIO(), err=(err := io.StringIO()), cluster_factory=factory) == r.EXIT_NOT_FOUND
    assert seen["as_user"] == "bob" and "not found in namespace 'ctx-ns'" in err.getvalue()
    assert run(["status", "secret/x"], out=io.StringIO(), err=(err := io.StringIO()), cluster_factory=factory) == r.EXIT_USAGE
    assert "unknown kind" in err.getvalue()
    assert run([], out=io.StringIO(), err=io.StringIO(), cluster_factory=factory) == r.EXIT_USAGE
    assert run(["rotate", "ut/alice-gh"], out=io.StringIO(), err=(err := io.StringIO()), cluster_factory=factory) == r.EXIT_USAGE
    assert "acts on a WorkspaceSecret" in err.getvalue()
    assert run(["rotate", "ws/missing"], out=io.StringIO(), err=io.StringIO(), cluster_factory=factory) == r.EXIT_NOT_FOUND


def test_help_has_examples_for_every_command(capsys):
    text = parser().format_help()
    for command in ("status", "rotate", "refresh", "connect"):
        assert f"kubectl wso {command}" in text
    assert "exit codes" in text and "--as" in text and "--kubeconfig" in text and "--context" in text
    assert run(["rotate", "--help"], out=io.StringIO(), err=io.StringIO()) == 0
    assert "--wait" in capsys.readouterr().out


def test_the_namespace_defaults_to_the_kubeconfig_contexts_and_as_becomes_impersonation(tmp_path):
    from workspace_secrets.kubectl_plugin.cli import Cluster

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text("""
apiVersion: v1
kind: Config
current-context: dev
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: not-a-real-token}}]
contexts:
  - {name: dev, context: {cluster: c, user: u, namespace: workspaces}}
  - {name: other, context: {cluster: c, user: u}}
""")
    dev = Cluster(str(kubeconfig), None, "alice", ["developers"])
    assert dev.default_namespace == "workspaces"
    assert dev.api.default_headers["Impersonate-User"] == "alice" and dev.api.default_headers["Impersonate-Group"] == "developers"
    dev.close()
    other = Cluster(str(kubeconfig), "other", None, [])
    assert other.default_namespace == "default" and "Impersonate-User" not in other.api.default_headers
    other.close()
    with pytest.raises(Failure) as info:
        Cluster(str(kubeconfig), "missing", None, [])
    assert info.value.code == r.EXIT_ERROR and "kubeconfig" in str(info.value)
    with pytest.raises(Failure) as info:
        Cluster(str(kubeconfig), None, None, ["developers"])
    assert info.value.code == r.EXIT_USAGE
