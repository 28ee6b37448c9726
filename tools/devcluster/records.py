"""Run records: what the launcher writes down so that a run can be found, checked and stopped later, possibly
by another process (``wso-controlplane down``) or by the next launcher after this one was killed.

Every run is recorded under ``${XDG_STATE_HOME:-~/.local/state}/workspace-secrets-operator/runs/``; later starts
reap runs whose launcher is gone (see ``controlplane.reap_stale_runs``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from .host import mountpoints_under
from .processes import _is_our_process, _pid_running, _proc_start_time

#: File written into every work directory we create; stale-run cleanup removes a directory only if
#: this marker names the run being cleaned, so a corrupted state file can never make us rmtree
#: something else.
WORKDIR_MARKER: Final = ".wso-controlplane"
STATE_FILE_NAME: Final = "controlplane.json"
RUNS_DIR_NAME: Final = "runs"

#: Set to 1 to keep the work directory (logs, etcd data) after stop or a failed start.
KEEP_ENV: Final = "WSO_CONTROLPLANE_KEEP"


def state_dir() -> Path:
    """Where runs are recorded: ``${XDG_STATE_HOME:-~/.local/state}/workspace-secrets-operator``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "workspace-secrets-operator"


@dataclass
class ProcessRecord:
    name: str
    pid: int
    binary: str


@dataclass
class RunRecord:
    """What is needed to find, health-check and stop a run later, possibly from another process."""

    run_id: str
    workdir: str
    owns_workdir: bool
    detached: bool
    owner_pid: int
    owner_start_time: int | None
    bin_dir: str
    kubeconfig: str = ""
    server: str = ""
    processes: list[ProcessRecord] = field(default_factory=list)
    #: Each component's arguments, so it can be restarted on the same ports, certs and data dir.
    commands: dict[str, list[str]] = field(default_factory=dict)
    #: The node's host state (see node.NodeState): None for a control plane without a node.
    node: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        data: dict[str, Any] = json.loads(text)
        data["processes"] = [ProcessRecord(**p) for p in data.get("processes", [])]
        return cls(**data)

    def owner_alive(self) -> bool:
        """The launcher that started this run still runs (pid *and* start time match)."""
        return _pid_running(self.owner_pid) and _proc_start_time(self.owner_pid) == self.owner_start_time

    def live_processes(self) -> list[ProcessRecord]:
        return [p for p in self.processes if _is_our_process(p.pid, p.binary, self.workdir)]


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _read_record(path: Path) -> RunRecord | None:
    try:
        return RunRecord.from_json(path.read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize launchers' reads and writes of the run registry."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove_workdir(record: RunRecord) -> None:
    """Remove a run's work directory, but only one we created and that carries our marker."""
    workdir = Path(record.workdir)
    if not record.owns_workdir or os.environ.get(KEEP_ENV) == "1":
        return
    try:
        marker = (workdir / WORKDIR_MARKER).read_text().strip()
    except OSError:
        return
    if marker != record.run_id:
        return
    # rmtree crosses mount points: deleting a directory with something still mounted under it (a pod's
    # volume, a container's root filesystem) would delete what is mounted. Leave it, and say so.
    mounted = mountpoints_under(workdir)
    if mounted:
        print(f"devcluster: not removing {workdir}: still mounted under it: {', '.join(mounted[:5])}", file=sys.stderr)
        return
    shutil.rmtree(workdir, ignore_errors=True)
