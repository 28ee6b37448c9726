"""UserToken against FAKES of the git providers' REST contracts (tests/fakes/git_providers.py): each
provider's token-endpoint quirks, user endpoint, SSH-key API and revocation, on the real control plane
with the real operator. A real `git credential fill` reads the git-credentials file the Secret carries."""

from __future__ import annotations

import subprocess

import pytest
import requests
from helpers import Api, wait_for
from test_user_token import applications, assert_no_token_leaks, connect, create_token, get_token, wait_phase  # noqa: F401 (fixture)
from user_token_support import BrowserSession

from fakes.git_providers import FakeGitProvider, fetch_state
from workspace_secrets.api import constants as c

# type -> (fake kind, expected git username: the provider's convention)
PROVIDERS = {
    "github": ("github", "x-access-token"),
    "gitlab-self-managed": ("gitlab", "oauth2"),
    "bitbucket-cloud": ("bitbucket-cloud", "x-token-auth"),
    "bitbucket-server": ("bitbucket-server", "octo-alice"),
}
CLIENT_SECRET = "fake-client-secret-0123456789"


@pytest.fixture
def api(cluster) -> Api:
    return Api(cluster.api_client())


@pytest.fixture
def fake(request):
    kind = PROVIDERS[request.param][0]
    server = FakeGitProvider(kind, clients={"wso-client": CLIENT_SECRET}).start()
    yield server
    server.stop()


def git_credential_fill(credentials: bytes, url: str, tmp_path) -> dict[str, str]:
    """Ask real git which username/password its credential store gives for `url`."""
    store = tmp_path / "git-credentials"
    store.write_bytes(credentials)
    parts = url.split("://", 1)
    out = subprocess.run(["git", "-c", f"credential.helper=store --file={store}", "credential", "fill"],
                         input=f"protocol={parts[0]}\nhost={parts[1]}\n\n", capture_output=True, text=True, timeout=10,
                         env={"GIT_TERMINAL_PROMPT": "0", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    store.unlink()
    assert out.returncode == 0, out.stderr[-300:]
    return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)


def user_public_key(api: Api, namespace: str, ws: str) -> str:
    return " ".join(api.get_ws(namespace, ws)["status"]["sshPublicKey"].split()[:2])


@pytest.mark.parametrize("fake", list(PROVIDERS), indirect=True)
def test_connect_git_credentials_ssh_key_and_cleanup(api, namespace, wso_operator, fake, tmp_path, applications):  # noqa: F811
    type_ = next(t for t, (kind, _) in PROVIDERS.items() if kind == fake.state.kind)
    username = PROVIDERS[type_][1]
    api.create_ws(namespace, "alice-ws", {"user": "alice", "workspaceRef": {"kind": "Pod", "name": "alice-pod"}})
    api.wait_condition(namespace, "alice-ws")
    app = applications("wso-client", {"type": type_, "host": fake.url}, secret=CLIENT_SECRET)
    create_token(api, namespace, "git", {"user": "alice", "application": app, "addSSHKey": True})
    ut = connect(api, wso_operator, namespace, "git")
    status = ut["status"]
    assert status["login"] == "octo-alice"

    # git-credentials: git itself finds the provider's username convention and the token for the host.
    data = api.secret_data(namespace, "git-token")
    assert data[c.KEY_GIT_USERNAME].decode() == username
    filled = git_credential_fill(data[c.KEY_GIT_CREDENTIALS], fake.url, tmp_path)
    assert filled["username"] == username and filled["password"].encode() == data[c.KEY_TOKEN]
    secrets_seen = [data[c.KEY_TOKEN], data[c.KEY_REFRESH_TOKEN], CLIENT_SECRET.encode()]

    # addSSHKey: the user's operator-managed key is at the provider, under a recognizable title.
    ut = wait_for(lambda: (u := get_token(api, namespace, "git")) and (u["status"].get("sshKey") or {}).get("id") and u,
                  timeout=20, what=f"SSH key uploaded ({get_token(api, namespace, 'git')['status']['conditions']})")
    uploaded = fetch_state(fake.url)["keys"]
    assert [(k["id"], k["title"], k["key"]) for k in uploaded] == [
        (ut["status"]["sshKey"]["id"], f"workspace-secrets-operator {namespace}/alice", user_public_key(api, namespace, "alice-ws"))]
    assert ut["status"]["sshKey"]["fingerprint"] == api.get_ws(namespace, "alice-ws")["status"]["sshKeyFingerprint"]
    condition = next(x for x in ut["status"]["conditions"] if x["type"] == c.CONDITION_SSH_KEY_UPLOADED)
    assert condition["status"] == "True"

    if type_ == "github":
        # Rotating the user's key re-uploads it and removes the old one at the provider.
        old_id = ut["status"]["sshKey"]["id"]
        api.patch_ws(namespace, "alice-ws", {"metadata": {"annotations": {c.ANNOTATION_ROTATE_SSH_KEY: "r1"}}})
        wait_for(lambda: api.get_ws(namespace, "alice-ws")["status"].get("sshKeyRotation") == "r1", timeout=40, what="key rotated")
        new_key = user_public_key(api, namespace, "alice-ws")
        wait_for(lambda: [k["key"] for k in fetch_state(fake.url)["keys"]] == [new_key], timeout=20, what="new key uploaded, old removed")
        assert fetch_state(fake.url)["keys"][0]["id"] != old_id

    # Delete: the key is removed at the provider, the token revoked where the provider can, the Secret gone.
    api.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "git")
    wait_for(lambda: get_token(api, namespace, "git") is None, timeout=30, what="UserToken deleted")
    state = fetch_state(fake.url)
    assert state["keys"] == []
    assert api.get_secret(namespace, "git-token") is None
    if type_ in ("github", "gitlab-self-managed"):
        assert state["counts"]["revoked"] == 1 and state["active_tokens"] == 0
    events = {e.reason for e in api.core.list_namespaced_event(namespace).items}
    assert {"Connected", "SSHKeyUploaded", "SSHKeyRemoved"} <= events
    assert_no_token_leaks(api, namespace, wso_operator, secrets_seen)


def test_a_failing_refresh_at_github_expires_the_token(api, namespace, wso_operator, applications):  # noqa: F811
    """GitHub reports a dead refresh token with HTTP 200 and error=bad_refresh_token: still a rejection."""
    server = FakeGitProvider("github", clients={"wso-client": CLIENT_SECRET}).start()
    try:
        app = applications("wso-client", {"type": "github", "host": server.url}, secret=CLIENT_SECRET)
        create_token(api, namespace, "gh", {"user": "alice", "application": app})
        connect(api, wso_operator, namespace, "gh")
        server.state.refresh_tokens.clear()  # GitHub no longer knows the refresh token (e.g. its 6 months passed)
        api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "gh",
                                                  {"metadata": {"annotations": {c.ANNOTATION_REFRESH_TOKEN: "1"}}})
        status = wait_phase(api, namespace, "gh", c.PHASE_EXPIRED)["status"]
        assert "bad_refresh_token" in next(x for x in status["conditions"] if x["type"] == "Ready")["message"]
        assert status["authorizationURL"]
        browser = BrowserSession.of(wso_operator.process)
        assert "data-ok='true'" in browser.connect(status["authorizationURL"], namespace, "gh").text
        wait_phase(api, namespace, "gh", c.PHASE_VALID)
    finally:
        server.stop()


def test_outages_are_retried_and_never_drop_the_token(api, namespace, wso_operator, applications):  # noqa: F811
    """A 503 from the token endpoint is not a verdict: the token stays Valid and the refresh is retried with
    backoff. A 503 from the revocation endpoint keeps the finalizer: the UserToken is deleted only after
    the token was revoked."""
    server = FakeGitProvider("github", clients={"wso-client": CLIENT_SECRET}).start()
    try:
        app = applications("wso-client", {"type": "github", "host": server.url}, secret=CLIENT_SECRET)
        create_token(api, namespace, "gh", {"user": "alice", "application": app})
        connect(api, wso_operator, namespace, "gh")
        before = api.secret_digests(namespace, "gh-token")[c.KEY_TOKEN]
        server.state.outages["token"] = 2
        api.custom.patch_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "gh",
                                                  {"metadata": {"annotations": {c.ANNOTATION_REFRESH_TOKEN: "during-outage"}}})
        wait_for(lambda: server.state.outages["token"] == 0, timeout=20, what="both failing attempts")
        assert get_token(api, namespace, "gh")["status"]["phase"] in (c.PHASE_VALID, c.PHASE_REFRESHING)
        wait_for(lambda: api.secret_digests(namespace, "gh-token")[c.KEY_TOKEN] != before, timeout=30, what="refreshed after the outage")
        wait_phase(api, namespace, "gh", c.PHASE_VALID)
        assert server.state.counts["refresh"] == 1 and server.state.counts["refresh_rejected"] == 0

        token = api.secret_data(namespace, "gh-token")[c.KEY_TOKEN]
        server.state.outages["revoke"] = 2
        api.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.USER_TOKEN_PLURAL, "gh")
        wait_for(lambda: any(e.reason == "RevocationFailed" for e in api.core.list_namespaced_event(namespace).items),
                 timeout=20, what="RevocationFailed event")
        assert get_token(api, namespace, "gh") is not None  # held by the finalizer while the provider is down
        wait_for(lambda: get_token(api, namespace, "gh") is None, timeout=60, what="deleted once revoked")
        assert server.state.counts["revoked"] == 1
        me = requests.get(f"{server.url}/api/v3/user", headers={"Authorization": b"Bearer " + token}, timeout=10)
        assert me.status_code == 401  # the token in the Secret was revoked at the provider
    finally:
        server.stop()
