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
import urllib.error
import urllib.request
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (tests bind servers to loopback, or to the node IP for pods to reach)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class OperatorProcess:
    _instances: weakref.WeakSet[OperatorProcess] = weakref.WeakSet()

    def __init__(
        self, kubeconfig: str, log_dir: Path, *extra_args: str, env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        OperatorProcess._instances.add(self)
        self.kubeconfig = kubeconfig
        self.ready = ready  # beyond /healthz, e.g. "the API server reaches the admission webhook"
        self.log_dir = log_dir
        self.extra_args = extra_args
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.metrics_port = 0
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
        self.metrics_port = free_port()
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        # The kubeconfig's path (never its content) tells which identity this run used.
        log.write(f"\n===== operator start #{self.starts} (kubeconfig {self.kubeconfig}) =====\n".encode())
        log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workspace_secrets", "run", "--kubeconfig", self.kubeconfig, "--verbose",
             "--health-probe-bind-address", f"127.0.0.1:{self.port}", "--resync-interval", "20",
             "--metrics-bind-address", f"127.0.0.1:{self.metrics_port}", *self._connect_args(), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited with {self.process.returncode}; see {self.log_path}")
            if self.healthy() and (self.ready is None or self.ready()):
                return
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy after {timeout}s; see {self.log_path}")

    def healthy(self) -> bool:
        return self.liveness()[0] == 200

    def liveness(self) -> tuple[int, str]:
        """(HTTP status, body) of the liveness endpoint; (0, reason) if it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except OSError as exc:
            return 0, type(exc).__name__

    def metrics(self) -> str:
        """The Prometheus text exposition from the operator's /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return response.read().decode()

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

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_since_last_start(self) -> str:
        """The log of the current run, from the line after its start marker."""
        text = self.log_text()
        marker = f"===== operator start #{self.starts} "
        start = text.rfind(marker)
        return text[text.index("\n", start) + 1:] if start >= 0 else text


@contextmanager
def other_operators_stopped(*keep: OperatorProcess) -> Iterator[None]:
    """Stop every running operator process (e.g. the session's shared one) except `keep`, and start
    them again afterwards: for tests whose operators must be the only ones acting on the cluster."""
    stopped = [p for p in list(OperatorProcess._instances) if p.running and p not in keep]
    for process in stopped:
        process.stop()
    try:
        yield
    finally:
        for process in stopped:
            if not process.running:
                process.start()
