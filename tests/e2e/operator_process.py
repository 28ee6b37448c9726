"""Run the real operator as a child process against the test cluster, the way a user runs it.

A subprocess (rather than kopf.testing.KopfRunner in-process) lets the tests stop it, SIGKILL it at a
chosen moment and restart it, and keeps its whole log for the secret-leak scan.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    def __init__(self, kubeconfig: str, log_dir: Path, *extra_args: str, env: dict[str, str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.extra_args = extra_args
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.starts = 0
        # The UserToken connect page: one port for the whole session, so links, OAuth redirect URIs and
        # browser sessions survive operator restarts (with the same signing key). 127.0.0.2 plays the
        # platform's auth proxy, the only address the X-Remote-User header is trusted from.
        self.connect_port = free_port()
        self.connect_user_header = "X-Remote-User"
        self.connect_trusted_proxy = "127.0.0.2"

    @property
    def connect_url(self) -> str:
        return f"http://127.0.0.1:{self.connect_port}"

    def _connect_args(self) -> list[str]:
        key = self.log_dir / "connect-signing-key"
        if not key.exists():
            key.write_bytes(os.urandom(32).hex().encode())
        return ["--connect-port", str(self.connect_port), "--connect-bind", "127.0.0.1", "--connect-base-url", self.connect_url,
                "--connect-user-header", self.connect_user_header, "--connect-trusted-proxies", f"{self.connect_trusted_proxy}/32",
                "--connect-signing-key-file", str(key)]

    @property
    def log_path(self) -> Path:
        return self.log_dir / "operator.log"

    def start(self, timeout: float = 60) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.port = free_port()
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workspace_secrets", "run", "--kubeconfig", self.kubeconfig, "--verbose",
             "--liveness", f"http://127.0.0.1:{self.port}/healthz", "--resync-interval", "20", *self._connect_args(), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited with {self.process.returncode}; see {self.log_path}")
            if self.healthy():
                return
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy after {timeout}s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, timeout: float = 30) -> int | None:
        """Graceful stop (SIGTERM -> kopf's cleanup handlers)."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL: no cleanup, the way a node failure or an OOM kill ends it."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        return self.process.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
