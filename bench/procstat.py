"""Process cost from /proc (RSS, peak RSS, CPU seconds) and the machine's state (load average)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ProcSample:
    at: float  # time.monotonic()
    rss: int  # bytes (VmRSS)
    peak_rss: int  # bytes (VmHWM: the kernel's high-water mark since the process started)
    cpu: float  # seconds of user + system time since the process started

    @property
    def rss_mib(self) -> float:
        return self.rss / MIB


def sample(pid: int) -> ProcSample | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    # Fields after the command name (which may contain spaces): utime and stime are fields 14 and 15.
    rest = stat[stat.rindex(")") + 2:].split()
    cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
    return ProcSample(time.monotonic(), fields.get("VmRSS", 0), fields.get("VmHWM", 0), cpu)


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


@dataclass
class Sampler:
    """Samples one process every `interval` seconds in a thread, for the timeline plot and peaks."""

    pid: int
    label: str
    interval: float = 0.5
    samples: list[ProcSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._run, name=f"sampler-{self.label}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            s = sample(self.pid)
            if s is None:
                return
            self.samples.append(s)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def latest(self) -> ProcSample | None:
        return sample(self.pid) or (self.samples[-1] if self.samples else None)

    def peak_between(self, start: float, end: float) -> int:
        inside = [s.rss for s in self.samples if start <= s.at <= end]
        return max(inside, default=0)


class LoadWatch:
    """The 1-minute load average sampled through a phase: the honest context of every number."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loadavg", daemon=True)

    def start(self) -> LoadWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), loadavg()[0]))
            self._stop.wait(2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> dict[str, float]:
        inside = [v for t, v in self.samples if start <= t <= end] or [loadavg()[0]]
        return {"min": min(inside), "mean": round(sum(inside) / len(inside), 2), "max": max(inside)}


def other_cpu_hogs(exclude: set[int], top: int = 5) -> list[str]:
    """The busiest other processes right now (name and CPU share over 1 s), to say what else ran."""
    def ticks() -> dict[int, tuple[str, int]]:
        out = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in exclude:
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1: stat.rindex(")")]
            rest = stat[stat.rindex(")") + 2:].split()
            out[int(entry.name)] = (name, int(rest[11]) + int(rest[12]))
        return out

    before = ticks()
    time.sleep(1)
    after = ticks()
    usage = []
    for pid, (name, t) in after.items():
        if pid in before:
            usage.append(((t - before[pid][1]) / CLK_TCK, name))
    usage.sort(reverse=True)
    return [f"{name} {share * 100:.0f}%" for share, name in usage[:top] if share > 0.05]


def control_plane_pids(kubeconfig: str) -> dict[str, int]:
    """etcd, kube-apiserver and kube-controller-manager of a local control plane (this repository's
    launcher keeps its kubeconfig in the processes' work directory), to account their CPU per phase.
    Empty for any other cluster."""
    workdir = str(Path(kubeconfig).resolve().parent) + "/"
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = Path(argv[0].decode(errors="replace")).name
        if name in ("etcd", "kube-apiserver", "kube-controller-manager") and any(workdir.encode() in a for a in argv[1:]):
            found[name] = int(entry.name)
    return found


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        s = sample(pid)
        if s is not None:
            out[name] = s.cpu
    return out
