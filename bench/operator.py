"""The real operator as a child process (`python -m workspace_secrets run`), the way a user runs it,
with its cost sampled from /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import opmetrics
from .procstat import ProcSample, Sampler, sample


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorUnderTest:
    def __init__(self, name: str, kubeconfig: str, log_dir: Path, args: list[str], *,
                 command: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.kubeconfig = kubeconfig
        self.log_path = log_dir / f"operator-{name}.log"
        self.args = args
        # The launcher: the console entry point by default; a wrapper (tracemalloc) when asked.
        self.command = command or [sys.executable, "-m", "workspace_secrets"]
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.metrics_port = 0
        self.sampler: Sampler | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 90) -> float:
        """Start and wait until its liveness endpoint answers; returns the seconds that took. Its metrics are
        served on another free loopback port (`metrics()`)."""
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')} {' '.join(self.args)} =====\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [*self.command, "run", "--kubeconfig", self.kubeconfig,
                 "--health-probe-bind-address", f"127.0.0.1:{self.port}",
                 "--metrics-bind-address", f"127.0.0.1:{self.metrics_port}", *self.args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        self.started_at = time.monotonic()
        self.sampler = Sampler(self.process.pid, self.name).start()
        while time.monotonic() - self.started_at < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator {self.name} exited with {self.process.returncode}; see {self.log_path}")
            if self.healthy():
                return time.monotonic() - self.started_at
            time.sleep(0.1)
        raise TimeoutError(f"operator {self.name} not healthy after {timeout}s; see {self.log_path}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def metrics(self) -> dict[opmetrics.Sample, float]:
        """One scrape of the operator's /metrics (its own Prometheus endpoint)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return opmetrics.parse(response.read().decode())

    def progress(self) -> opmetrics.Progress:
        """What the operator has done with WorkspaceSecrets so far (reconciles, skips, queue depth)."""
        at = time.monotonic()
        return opmetrics.Progress.of(self.metrics(), at)

    def sample(self) -> ProcSample:
        s = sample(self.pid)
        if s is None:
            raise RuntimeError(f"operator {self.name} is gone; see {self.log_path}")
        return s

    def settle(self, *, quiet_cpu: float = 0.05, window: float = 2.0, timeout: float = 60) -> ProcSample:
        """Wait until the operator is idle (less than `quiet_cpu` CPU-seconds per second over `window`),
        so that "steady" RSS is not taken mid-burst. Returns the sample at that point."""
        deadline = time.monotonic() + timeout
        previous = self.sample()
        while time.monotonic() < deadline:
            time.sleep(window)
            current = self.sample()
            if (current.cpu - previous.cpu) / (current.at - previous.at) < quiet_cpu:
                return current
            previous = current
        return self.sample()

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def stop(self, timeout: float = 30) -> ProcSample | None:
        """SIGTERM (kopf's graceful shutdown); returns the last sample taken before it went."""
        if self.process is None or self.process.poll() is not None:
            return None
        last = sample(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if self.sampler:
            self.sampler.stop()
        return last

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
