"""`python -m bench [--mode smoke|default|long|scaling] [--kubeconfig PATH]`: run the benchmarks, write
bench/results/<stem>.{json,md} and (with matplotlib, the `bench` extra) a PNG plot."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from .config import MODES, for_mode
from .procstat import other_cpu_hogs
from .report import machine, write
from .scenarios import Bench, delete_bench_namespaces

RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--mode", choices=sorted(MODES), default="default",
                   help="smoke: tiny, proves the harness works; default: 1,000 objects; long: 10,000; "
                        "scaling: only the scaling phase, 1,000 -> 10,000")
    p.add_argument("--kubeconfig", help="benchmark this cluster (admin rights; creates and deletes bench-* namespaces "
                                        "and applies crds/); default: start a local control plane")
    p.add_argument("--objects", type=int, help="override the mode's object count")
    p.add_argument("--phases", help=f"comma-separated subset, in order (default: all of {','.join(MODES['default'].phases)}; "
                                    "opt-in: scaling)")
    p.add_argument("--sizes", help="the scaling phase's steps: WorkspaceSecrets existing after each, comma-separated "
                                   "(e.g. 1000,2500,5000,10000; default: objects/10,/4,/2,objects)")
    p.add_argument("--latency-seconds", type=float)
    p.add_argument("--workspaces-per-user", type=int)
    p.add_argument("--api-concurrency", type=int, help="operator --api-concurrency and the baseline's threads")
    p.add_argument("--operator-arg", action="append", default=[], help="extra operator flag (repeatable), for tuning runs")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for results and operator logs")
    p.add_argument("--plot", type=Path, help="PNG path (default: <out>/<stem>.png)")
    p.add_argument("--controller-manager-arg", action="append", default=[],
                   help="extra kube-controller-manager flag for the local control plane (repeatable), e.g. "
                        "--kube-api-qps=100: its garbage collector's API rate bounds the GC latency")
    p.add_argument("--traced", action="store_true",
                   help="run the operator under tracemalloc and dump its top allocations after the throughput phase "
                        "(<out>/<stem>/tracemalloc-main.txt); timings are then not representative")
    p.add_argument("--keep", action="store_true", help="keep the bench namespaces (and the local control plane's workdir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = for_mode(
        args.mode, objects=args.objects, latency_seconds=args.latency_seconds,
        workspaces_per_user=args.workspaces_per_user, api_concurrency=args.api_concurrency,
        operator_args=tuple(args.operator_arg) or None, traced=args.traced or None,
        phases=tuple(p.strip() for p in args.phases.split(",")) if args.phases else None,
        scaling_sizes=tuple(int(x) for x in args.sizes.split(",") if x.strip()) if args.sizes else None,
    )
    stem = time.strftime("%Y%m%d-%H%M%S") + f"-{config.mode}"
    out_dir = args.out / stem
    plane = None
    kubeconfig = args.kubeconfig
    started = time.monotonic()
    if kubeconfig is None:
        from devcluster.controlplane import ControlPlane

        print("starting a local control plane (etcd, kube-apiserver, kube-controller-manager)...", flush=True)
        plane = ControlPlane(controller_manager_args=tuple(args.controller_manager_arg)).start()
        kubeconfig = str(plane.kubeconfig)
    bench = Bench(config, kubeconfig, out_dir, progress=lambda msg: print(msg, flush=True))
    exclude = {os.getpid()} | ({p.pid for p in plane.processes} if plane else set())
    bench.results["meta"] = {
        "stem": stem, "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(bench.kube), "other_processes_at_start": other_cpu_hogs(exclude),
        "control_plane": ("local (started by the benchmark)" + (f", kube-controller-manager {' '.join(args.controller_manager_arg)}"
                          if args.controller_manager_arg else "")) if plane else f"kubeconfig {kubeconfig}",
    }
    bench.results["config"] = config.to_json()
    failed = None
    try:
        bench.phase("setup", bench.setup)
        for name in config.phases:
            bench.phase(name, getattr(bench, name))
    except Exception as exc:  # noqa: BLE001 - the partial results are still written
        failed = exc
    finally:
        for op in bench.operators:
            op.stop()
        bench.load.stop()
        bench.results["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
        bench.results["meta"]["loadavg_at_end"] = list(os.getloadavg())
        bench.results["phases"] = [(n, round(s, 1), round(e, 1)) for n, s, e in bench.phase_marks]
        bench.results["timeline"] = [
            {"label": op.name, "t": [round(s.at - bench.t0, 1) for s in op.sampler.samples],
             "rss_mib": [round(s.rss_mib, 1) for s in op.sampler.samples],
             "cpu_s": [round(s.cpu, 2) for s in op.sampler.samples]}
            for op in bench.operators if op.sampler
        ]
        paths = write(bench.results, out_dir, stem, args.plot or out_dir / f"{stem}.png")
        if not args.keep and plane is None:
            delete_bench_namespaces(bench.kube, wait=False)
        bench.kube.close()
        if plane is not None:
            plane.stop(keep=args.keep)
    print(paths["markdown"].read_text())
    print("\n".join(f"{kind}: {path}" for kind, path in paths.items()))
    if failed is not None:
        print(f"benchmark failed: {type(failed).__name__}: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
