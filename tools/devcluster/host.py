"""Host state the node changes outside its work directory, read and restored by path: mounts and sysctls.

Only the standard library; every function is safe to call again (idempotent) and works on explicit paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
from pathlib import Path
from typing import Final

MNT_DETACH: Final = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mountpoints() -> list[str]:
    """Every mount point of our mount namespace (the host's: the launcher never leaves it)."""
    points: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            parts = line.split()
            if len(parts) > 4:
                points.append(_unescape(parts[4]))
    return points


def mountpoints_under(directory: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``directory``, deepest first (the order to unmount them in)."""
    root = os.path.realpath(directory).rstrip("/")
    found = [p for p in mountpoints() if p == root or p.startswith(root + "/")]
    return sorted(set(found), key=lambda p: (p.count("/"), p), reverse=True)


def unmount(path: str) -> bool:
    """Detach one mount (``umount -l``); True if it is gone (or was never mounted)."""
    if _libc.umount2(os.fsencode(path), MNT_DETACH) == 0:
        return True
    return ctypes.get_errno() in (errno.EINVAL, errno.ENOENT)  # not a mount point (any more)


def unmount_under(directory: str | os.PathLike[str], rounds: int = 5) -> list[str]:
    """Unmount everything at or below ``directory``; returns what is still mounted afterwards.

    Several rounds, because a mount may be stacked more than once on the same point (the kubelet makes its
    root directory a shared bind mount of itself).
    """
    for _ in range(rounds):
        remaining = mountpoints_under(directory)
        if not remaining:
            return []
        for point in remaining:
            unmount(point)
    return mountpoints_under(directory)


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / (name if "/" in name else name.replace(".", "/"))


def read_sysctl(name: str) -> str | None:
    """A sysctl's value (``kernel/panic`` or ``kernel.panic``), or None if it does not exist."""
    try:
        return _sysctl_path(name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> bool:
    try:
        _sysctl_path(name).write_text(f"{value}\n")
        return True
    except OSError:
        return False
