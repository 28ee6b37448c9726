"""The operator under tracemalloc, for finding out where its memory goes (`python -m bench.traced_operator
run ...`, same arguments as the real entry point). SIGUSR1 writes the top allocation sites, and the
growth since the previous dump, to $WSO_TRACEMALLOC_OUT (default /tmp/wso-tracemalloc.txt).

Used by `python -m bench --phases memory`; never by the operator itself.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc
from types import FrameType

_previous: tracemalloc.Snapshot | None = None


def _dump(signum: int, frame: FrameType | None) -> None:
    global _previous
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces((
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
    ))
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"=== traced: current {current / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB"]
    lines.append("--- top 30 by file:line")
    lines += [str(stat) for stat in snapshot.statistics("lineno")[:30]]
    lines.append("--- top 15 by package")
    by_package: dict[str, int] = {}
    for stat in snapshot.statistics("filename"):
        name = stat.traceback[0].filename
        key = name.split("site-packages/")[-1].split("/")[0] if "site-packages/" in name else name.rsplit("/", 2)[-2] if "/" in name else name
        by_package[key] = by_package.get(key, 0) + stat.size
    lines += [f"{size / 2**20:8.2f} MiB  {key}" for key, size in sorted(by_package.items(), key=lambda kv: -kv[1])[:15]]
    if _previous is not None:
        lines.append("--- growth since the previous dump, by traceback (top 15)")
        for stat in snapshot.compare_to(_previous, "traceback")[:15]:
            lines.append(f"{stat.size_diff / 2**20:+.2f} MiB in {stat.count_diff:+d} blocks")
            lines += ["    " + line for line in stat.traceback.format()[-8:]]
    _previous = snapshot
    with open(os.environ.get("WSO_TRACEMALLOC_OUT", "/tmp/wso-tracemalloc.txt"), "a") as out:
        out.write("\n".join(lines) + "\n\n")


def main() -> int:
    tracemalloc.start(int(os.environ.get("WSO_TRACEMALLOC_FRAMES", "12")))
    signal.signal(signal.SIGUSR1, _dump)
    from workspace_secrets.cli import main as operator_main

    return operator_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
