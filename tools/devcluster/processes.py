"""Processes the launcher starts, found again and stopped safely.

Never signal a pid without checking what it is: a process is only signalled after checking that its
``/proc/<pid>/cmdline`` still names the recorded binary *and* the run's work directory, so pid reuse can never
make us kill an unrelated process; nothing is ever killed by name.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import ProcessRecord


def _proc_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _pid_running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (an exited child waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_our_process(pid: int, binary: str, workdir: str) -> bool:
    """The pid runs ``binary`` (as argv[0]) with an argument inside ``workdir``.

    Both checks together make pid reuse harmless: an unrelated process would have to run the same
    binary *and* reference our randomly named work directory.
    """
    if pid <= 1 or pid == os.getpid() or not _pid_running(pid):
        return False
    argv = _cmdline(pid)
    prefix = workdir.rstrip("/") + "/"
    return bool(argv) and argv[0] == binary and any(prefix in arg for arg in argv[1:])


def _signal(pid: int, sig: int) -> None:
    """Signal the process group if ``pid`` leads one (ours always do), else just the process."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """The TCP (v4 and v6) addresses ``pid`` listens on, from /proc; used to check loopback binding."""
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    found: list[tuple[str, int]] = []
    for table, family in (("tcp", 4), ("tcp6", 6)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] != "0A" or cols[9] not in inodes:  # 0A = LISTEN
                    continue
                hex_addr, hex_port = cols[1].split(":")
                raw = bytes.fromhex(hex_addr)
                if family == 4:
                    addr = str(ipaddress.IPv4Address(raw[::-1]))
                else:  # four little-endian 32-bit words
                    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                    addr = str(ipaddress.IPv6Address(words))
                found.append((addr, int(hex_port, 16)))
    return found


def _free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel hands out for 127.0.0.1, all held open at once so they are distinct."""
    return _free_ports("127.0.0.1", count)


def _free_ports(host: str, count: int) -> list[int]:
    """Ports the kernel hands out for ``host``, all held open at once so they are distinct.

    There is an unavoidable window between closing them and the servers binding; with ephemeral
    ports it is small enough in practice.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def processes_of(binary: str, workdir: str) -> list[int]:
    """Pids running ``binary`` (as argv[0]) with an argument inside ``workdir``, found by scanning /proc.

    For processes the launcher does not start itself but that belong to a run, e.g. containerd's shims
    (``containerd-shim-runc-v2 ... -address <workdir>/.../containerd.sock``). Same proof as
    :func:`_is_our_process`: the binary and the run's randomly named work directory.
    """
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_our_process(int(entry.name), binary, workdir):
            found.append(int(entry.name))
    return found


def _terminate(processes: Sequence[ProcessRecord], workdir: str, timeout: float) -> None:
    """SIGTERM each verified process group, wait, SIGKILL what remains, wait again.

    Processes are stopped one by one in the given order (controller-manager, apiserver, etcd) so
    clients go before the servers they would otherwise retry against.
    """
    for proc in processes:
        if not _is_our_process(proc.pid, proc.binary, workdir):
            continue
        _signal(proc.pid, signal.SIGTERM)
        if _wait_gone(proc.pid, timeout):
            continue
        if _is_our_process(proc.pid, proc.binary, workdir):  # re-verify before escalating
            _signal(proc.pid, signal.SIGKILL)
            _wait_gone(proc.pid, timeout)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Reap it if it is our child (no-op otherwise); a zombie counts as gone.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not _pid_running(pid):
            return True
        time.sleep(0.05)
    return not _pid_running(pid)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - 256 * 1024))
            data = log.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])
