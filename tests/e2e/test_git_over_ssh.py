"""The materialized key and GIT_SSH_COMMAND work with real OpenSSH: `git clone` over ssh from a test sshd."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import Api
from operator_process import free_port

from workspace_secrets.api import constants as c

pytestmark = [
    pytest.mark.sshd,
    pytest.mark.skipif(not Path("/usr/sbin/sshd").exists() or shutil.which("git") is None, reason="needs openssh-server and git"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test sshd logs in as the current user; run as root (as CI does)"),
]


@pytest.fixture
def sshd(tmp_path):
    """A test-owned sshd on a loopback port. Returns (port, host key line, authorized_keys path, repo path)."""
    home = tmp_path / "sshd"
    home.mkdir()
    host_key = home / "host_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    authorized = home / "authorized_keys"
    authorized.write_text("")
    port = free_port()
    config = home / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n"
        f"PidFile {home / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    repo = tmp_path / "repo.git"
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    work = tmp_path / "seed"
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    (work / "README").write_text("hello from the test git server\n")
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "README"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "seed"], check=True)
    subprocess.run([*git, "push", "-q", str(repo), "HEAD:refs/heads/main"], check=True)
    subprocess.run(["git", "--git-dir", str(repo), "symbolic-ref", "HEAD", "refs/heads/main"], check=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = subprocess.run(["ssh-keyscan", "-p", str(port), "-t", "ed25519", "127.0.0.1"], capture_output=True, text=True)
        if probe.stdout.strip():
            break
        time.sleep(0.2)
    host_line = f"[127.0.0.1]:{port} " + " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
    yield port, host_line, authorized, repo
    proc.terminate()
    proc.wait(10)


def materialize(api: Api, namespace: str, secret_name: str, mount: Path) -> dict[str, str]:
    """What the kubelet does with a Secret volume: one file per key under the mount path."""
    mount.mkdir(parents=True)
    data = api.secret_data(namespace, secret_name)
    for key, value in data.items():
        (mount / key).write_bytes(value)
        (mount / key).chmod(0o400)
    return {k: v.decode() for k, v in data.items()}


def clone(git_ssh_command: str, port: int, repo: Path, dest: Path, home: Path) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_SSH_COMMAND": git_ssh_command, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(["git", "clone", "-q", f"ssh://root@127.0.0.1:{port}{repo}", str(dest)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_git_clone_over_ssh_with_the_materialized_key(sshd, cluster, namespace, wso_operator, tmp_path):
    port, host_line, authorized, repo = sshd
    api = Api(cluster.api_client())
    alice_mount, bob_mount = tmp_path / "alice-mount", tmp_path / "bob-mount"
    for user, mount in (("alice", alice_mount), ("bob", bob_mount)):
        api.create_ws(namespace, user, {"user": user, "workspaceRef": {"kind": "Pod", "name": f"ws-{user}"},
                                        "mountPath": str(mount), "ssh": {"knownHosts": [host_line]}})
    api.wait_condition(namespace, "alice")
    api.wait_condition(namespace, "bob")
    # The user's public key, as shown in status, is what they register with their git server.
    authorized.write_text(api.get_ws(namespace, "alice")["status"]["sshPublicKey"] + "\n")

    alice = materialize(api, namespace, "alice", alice_mount)
    bob = materialize(api, namespace, "bob", bob_mount)
    home = tmp_path / "home"
    home.mkdir()

    ok = clone(alice[c.KEY_GIT_SSH_COMMAND], port, repo, tmp_path / "clone-alice", home)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "clone-alice" / "README").read_text() == "hello from the test git server\n"

    refused = clone(bob[c.KEY_GIT_SSH_COMMAND], port, repo, tmp_path / "clone-bob", home)
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
