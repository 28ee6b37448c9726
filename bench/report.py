"""Results -> JSON, a Markdown report (the tables pasted into docs/developers/benchmarks.md) and a PNG plot."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .kube import BenchKube
from .procstat import loadavg

TARGETS = {
    "throughput_ratio": 0.60,
    "create_to_ready_p99_ms": 1000,
    "gc_p99_ms": 5000,
    "rss_10k_mib": 120,
    "restart_s": 30,
    "restart_requests_per_object": 1.0,
}


def machine(kube: BenchKube) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")))
    try:
        server = kube.call("GET", "/version").get("gitVersion")
    except Exception:  # noqa: BLE001 - informational
        server = "unknown"
    versions = {name: _version(name) for name in ("kopf", "kubernetes", "cryptography", "urllib3", "aiohttp")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=Path(__file__).resolve().parents[1]).stdout.strip()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(), "python": sys.version.split()[0], "kube_apiserver": server,
        "libraries": versions, "commit": commit + ("-dirty" if dirty else ""), "loadavg_at_start": loadavg(),
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def write(results: dict[str, Any], out_dir: Path, stem: str, plot_path: Path | None) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str))
    paths["markdown"].write_text(markdown(results))
    if plot_path is not None:
        try:
            plot(results, plot_path)
            paths["plot"] = plot_path
            if _get(results, "scaling", "steps"):
                scaling_path = plot_path.with_name(plot_path.stem + "-scaling" + plot_path.suffix)
                plot_scaling(results, scaling_path)
                paths["scaling plot"] = scaling_path
        except ImportError:
            print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
    return paths


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        value = f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return f"{value}{unit}"


def _verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("met" if ok else "missed")


def markdown(r: dict[str, Any]) -> str:
    meta, cfg = r.get("meta", {}), r.get("config", {})
    m = meta.get("machine", {})
    lines = [
        f"### Run `{meta.get('stem', '')}` — mode `{cfg.get('mode')}`",
        "",
        f"- Command: `{meta.get('command')}`",
        f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, Linux {m.get('kernel')}; "
        f"Python {m.get('python')}; kube-apiserver {m.get('kube_apiserver')}; "
        + ", ".join(f"{k} {v}" for k, v in (m.get("libraries") or {}).items()) + f"; commit {m.get('commit')}",
        f"- Load average (1 min) at start: {_fmt((m.get('loadavg_at_start') or [None])[0])}; "
        f"busiest other processes at start: {', '.join(meta.get('other_processes_at_start') or []) or 'none'}",
        f"- Control plane: {meta.get('control_plane')}",
        f"- Duration: {_fmt(meta.get('total_seconds'))} s",
        "",
    ]
    rows = [("Phase", "Result", "Target", "Load avg (1 min) during")]
    base, tp = r.get("baseline", {}), r.get("throughput", {})
    if base:
        rows.append(("1. Baseline: plain client, Secret POST + status PATCH",
                     f"{_fmt(base.get('objects_per_s'))} objects/s ({base.get('objects')} objects, {base.get('concurrency')} concurrent)",
                     "–", _load(base)))
    full = r.get("baseline_full", {})
    if full:
        rows.append(("1b. Baseline with the operator's own 6 writes (user key, bind, Secret, status, 2 Events)",
                     f"{_fmt(full.get('objects_per_s'))} objects/s", "–", _load(full)))
    for label, phase in (("baseline", base), ("baseline with 6 writes", full), ("operator", tp)):
        cpu = phase.get("cpu_s") or phase.get("cpu_s_until_all_ready") or {}
        if cpu.get("kube-apiserver") and phase.get("objects"):
            per = {k: cpu[k] / phase["objects"] * 1000 for k in ("kube-apiserver", "etcd") if k in cpu}
            rows.append((f"   CPU per object, {label}", ", ".join(f"{k} {v:.1f} ms" for k, v in per.items()), "–", ""))
    if tp:
        ratio = tp.get("ratio_to_baseline")
        rows.append(("2. Operator throughput, all created at once",
                     f"{_fmt(tp.get('objects_per_s'))} objects/s = **{_fmt(ratio)}× baseline**"
                     + (f", {_fmt(tp.get('ratio_to_baseline_full'))}× the 6-write baseline" if tp.get("ratio_to_baseline_full") else "")
                     + f" ({tp.get('objects')} in {_fmt(tp.get('seconds_to_all_ready'))} s)",
                     f"≥ 0.60× ({_verdict(None if ratio is None else ratio >= TARGETS['throughput_ratio'])})", _load(tp)))
    lat = r.get("latency", {})
    if lat:
        p99 = _get(lat, "create_to_ready", "p99_ms")
        rows.append((f"3. Latency at {_fmt(lat.get('rate_per_s'))}/s for {_fmt(lat.get('seconds'))} s: create → Ready",
                     _pcts(lat.get("create_to_ready")), f"p99 < 1 s ({_verdict(None if p99 is None else p99 < TARGETS['create_to_ready_p99_ms'])})", _load(lat)))
        rows.append(("   create → Secret exists", _pcts(lat.get("create_to_secret")), "–", ""))
    gc = r.get("gc", {})
    if gc:
        p99 = _get(gc, "workspace_deleted_to_secret_gone", "p99_ms")
        rows.append((f"4. GC at {_fmt(gc.get('rate_per_s'))}/s: workspace deleted → Secret gone",
                     _pcts(gc.get("workspace_deleted_to_secret_gone")), f"p99 < 5 s ({_verdict(None if p99 is None else p99 < TARGETS['gc_p99_ms'])})", _load(gc)))
    cr = r.get("credentials", {})
    if cr:
        rows.append(("   with a Kubernetes token: workspace deleted → token's anchor deleted (revocation)",
                     _pcts(cr.get("workspace_deleted_to_token_anchor_deleted")), "–", _load(cr)))
        rows.append(("   ... → token refused by the API server (sampled tokens)",
                     _pcts(cr.get("workspace_deleted_to_token_refused")) +
                     f" (HTTP {cr.get('token_http_status_before')} before, {cr.get('token_http_status_after')} after)", "–", ""))
        rows.append(("   with a Kubernetes token: workspace deleted → Secret gone", _pcts(cr.get("workspace_deleted_to_secret_gone")), "–", ""))
    start, un, rs = r.get("operator_start", {}), r.get("unrelated", {}), r.get("restart", {})
    if tp:
        rows.append((f"5. Operator RSS idle → peak → steady at {tp.get('objects')} WorkspaceSecrets",
                     f"{_fmt(start.get('idle_rss_mib'))} → {_fmt(tp.get('peak_rss_mib'))} → {_fmt(tp.get('steady_rss_mib'))} MiB "
                     f"({_fmt(tp.get('rss_per_object_kib'))} KiB/object)",
                     f"≤ 120 MiB at 10k ({_verdict(_rss_verdict(r))})", ""))
        rows.append(("   Operator CPU for the throughput run",
                     f"{_fmt(tp.get('operator_cpu_s'))} s ({_fmt(tp.get('operator_cpu_ms_per_object'))} ms/object)", "–", ""))
        rows.append(("   API requests per WorkspaceSecret (operator)",
                     f"{_fmt(tp.get('api_writes_per_object'))} writes; " + ", ".join(f"{k} {v}" for k, v in (tp.get('api_requests_per_object') or {}).items()), "–", ""))
    if un:
        rows.append((f"   + {un.get('unrelated_secrets')} unrelated Secrets",
                     f"RSS {_fmt(un.get('rss_before_mib'))} → {_fmt(un.get('rss_after_mib'))} MiB (Δ {_fmt(un.get('rss_delta_mib'))}), "
                     f"CPU {_fmt(un.get('operator_cpu_s_during'))} s", "RSS independent", _load(un)))
    if rs:
        looked = rs.get("looked_at") or {}
        resumed = (f"every object looked at {_fmt(rs.get('resume_seconds'))} s after the process started"
                   f" ({looked.get('looked_at')}: reconciled {_counts(looked.get('reconciles'))}; found unchanged, no request: {_counts(looked.get('skipped'))})"
                   if rs.get("all_looked_at") else
                   f"**not every object looked at**: {looked.get('looked_at')} of {rs.get('objects')}" if looked else
                   f"{_fmt(rs.get('resume_seconds'))} s")
        if rs.get("objects_deleted_meanwhile"):
            resumed += f" ({rs['objects_deleted_meanwhile']} deleted during the restart, not counted)"
        total = rs.get("api_requests_total_per_object")
        rows.append((f"   restart with {rs.get('objects')} Ready (resume)",
                     f"{resumed}; idle after {_fmt(rs.get('settled_seconds'))} s; requests per object: "
                     f"{_fmt(total)} ({_fmt(rs.get('api_reads_per_object'))} reads, {_fmt(rs.get('api_writes_per_object'))} writes; "
                     f"{rs.get('api_writes')} writes in all); RSS {_fmt(rs.get('rss_after_resume_mib'))} MiB",
                     f"≤ 30 s, ≤ 1 request/object, 0 writes ({_verdict(_restart_verdict(rs))})", _load(rs)))
        if rs.get("api_requests_per_object"):
            rows.append(("   restart: requests per object (API server's count, all clients but the harness)",
                         ", ".join(f"{k} {v}" for k, v in rs["api_requests_per_object"].items()), "–", ""))
        if "operator_client_requests" in rs:
            rows.append(("   restart: the operator's own client (wso_kube_requests_total; not kopf's)",
                         f"{_fmt(rs.get('operator_client_requests_per_object'))} per object: {_counts(rs['operator_client_requests'])}", "–", ""))
    imp = _get(r, "imports", "fresh_interpreters") or {}
    if imp:
        rows.append(("   RSS of a fresh interpreter importing ...",
                     "; ".join(f"{label}: {v['rss_mib']} MiB" for label, v in imp.items()), "–", ""))
        loaded = imp.get("the operator (handlers, kube client, kubernetes-token provider)", {}).get("loaded")
        rows.append(("   heavy packages the operator loads", ", ".join(loaded or []) or "none", "no boto3/botocore/psycopg (google.auth: kubernetes.config imports it)", ""))
    kg = r.get("keygen", {})
    if kg:
        per = kg.get("per_type", {})
        rows.append(("6. Key generation (ms/key)", ", ".join(f"{t} {_fmt(v.get('mean_ms'))}" for t, v in per.items()), "–", _load(kg)))
        stall = kg.get("event_loop_during_rsa_3072", {})
        if stall:
            rows.append(("   event-loop stall while generating RSA-3072",
                         f"inline {_fmt(_get(stall, 'inline', 'max_loop_stall_ms'))} ms, in a thread (operator) {_fmt(_get(stall, 'thread', 'max_loop_stall_ms'))} ms", "–", ""))
    sh = r.get("sharding", {})
    if sh:
        for key, run in sh.items():
            if isinstance(run, dict) and "instances" in run:
                rows.append((f"Scaling out: {run.get('instances')} instance(s), {run.get('objects')} objects",
                             f"{_fmt(run.get('objects_per_s'))} objects/s; objects seen per instance {run.get('handled_per_instance')}, "
                             f"by two: {run.get('handled_twice')}, all covered: {run.get('all_handled')}, writes/object {run.get('api_writes_per_object')}; "
                             f"CPU s {run.get('cpu_s_per_instance')}, RSS MiB {run.get('steady_rss_mib_per_instance')}",
                             "no object twice", ""))
        rows.append(("   speed-up", f"{_fmt(sh.get('speedup'))}×", "–", _load(sh)))
    lines += _table(rows)
    lines += _scaling_table(r.get("scaling") or {})
    errors = [f"- {name}: {v['error']}" for name, v in r.items() if isinstance(v, dict) and v.get("error")]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines) + "\n"


def _counts(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in (counts or {}).items()) or "0"


def _restart_verdict(rs: dict[str, Any]) -> bool | None:
    total, seconds = rs.get("api_requests_total_per_object"), rs.get("resume_seconds")
    if total is None:
        return None
    return (bool(rs.get("all_looked_at")) and seconds is not None and seconds <= TARGETS["restart_s"]
            and total <= TARGETS["restart_requests_per_object"] and rs.get("api_writes") == 0)


def _scaling_table(sc: dict[str, Any]) -> list[str]:
    """One row per step of the scaling phase: the cost of the step's new objects against how many exist."""
    steps = sc.get("steps") or []
    if not steps:
        return []
    rows = [("WorkspaceSecrets existing", "new", "objects/s", "operator CPU ms/object", "kube-apiserver CPU ms/object",
             "etcd CPU ms/object", "requests/object: reads + writes", "of which the operator's own client",
             "reconciles + skips/object", "operator RSS MiB", "Load avg (1 min)")]
    for st in steps:
        cpu = st.get("cpu_ms_per_object_until_ready") or {}
        rows.append((f"{st['objects_existing']:,}", f"{st['new_objects']:,}", _fmt(st.get("objects_per_s")),
                     _fmt(st.get("operator_cpu_ms_per_object")), _fmt(cpu.get("kube-apiserver")), _fmt(cpu.get("etcd")),
                     f"{_fmt(st.get('api_reads_per_object'))} + {_fmt(st.get('api_writes_per_object'))}",
                     _counts(st.get("operator_client_requests_per_object")),
                     _fmt(st.get("operator_looked_at_per_object")), _fmt(st.get("rss_mib")), _load(st)))
    first, last = steps[0], steps[-1]
    api = [(st.get("cpu_ms_per_object_until_ready") or {}).get("kube-apiserver") for st in (first, last)]
    growth = (f"; kube-apiserver CPU per new object at {last['objects_existing']:,} vs {first['objects_existing']:,}: "
              f"{api[1] / api[0]:.2f}× (target: within 20%)") if all(api) else ""
    out = ["", f"Scaling (namespace {sc.get('namespace')}, {_fmt(sc.get('objects_existing_before'))} WorkspaceSecrets existed before; "
               f"operator RSS idle {_fmt(sc.get('rss_idle_mib'))} MiB{growth}). CPU of the control plane until the step's "
               "objects are all Ready, the operator's from idle to idle; requests are the API server's count minus the "
               "harness's own, until the operator is idle (the controller-manager's included: its garbage collector looks "
               "up owners), and the operator's own client's (wso_kube_requests_total by verb; a LIST is a GET there; "
               "kopf's watches not included).", ""]
    out += _table(rows)
    out += ["", "Requests per new object, by step:", ""]
    out += [f"- {st['objects_existing']:,}: " + ", ".join(f"{k} {v}" for k, v in (st.get("api_requests_per_object") or {}).items())
            for st in steps]
    return out


def _rss_verdict(r: dict[str, Any]) -> bool | None:
    tp = r.get("throughput", {})
    if tp.get("objects", 0) < 10_000:
        return None
    return tp.get("steady_rss_mib", 1e9) <= TARGETS["rss_10k_mib"]


def _pcts(s: dict[str, Any] | None) -> str:
    if not s or not s.get("count"):
        return "–"
    return f"p50 {_ms(s['p50_ms'])}, p95 {_ms(s['p95_ms'])}, p99 {_ms(s['p99_ms'])}, max {_ms(s['max_ms'])} (n={s['count']})"


def _ms(value: float) -> str:
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def _load(phase: dict[str, Any]) -> str:
    la = phase.get("loadavg_1m")
    return f"{la['min']:.1f}–{la['max']:.1f}" if la else ""


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "| " + " | ".join("---" for _ in rows[0]) + " |"]
    out += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows[1:]]
    return out


def plot(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    bars = [("baseline\n(2 writes)", _get(r, "baseline", "objects_per_s")),
            ("baseline\n(operator's 6 writes)", _get(r, "baseline_full", "objects_per_s")),
            ("operator", _get(r, "throughput", "objects_per_s"))]
    sh = r.get("sharding", {})
    for key, run in sh.items():
        if isinstance(run, dict) and "instances" in run:
            bars.append((f"{run['instances']} instance(s)\n{run['objects']} objs", run.get("objects_per_s")))
    bars = [(name, value) for name, value in bars if value]
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=["#888" if b[0].startswith("baseline") else "#3572a5" for b in bars])
    for i, (_, value) in enumerate(bars):
        ax.text(i, value, f"{value:.0f}", ha="center", va="bottom")
    ax.set_ylabel("WorkspaceSecrets / s")
    ax.set_title(f"Throughput (N={_get(r, 'throughput', 'objects')}, ratio {_get(r, 'throughput', 'ratio_to_baseline')})")
    ax.tick_params(axis="x", labelsize=8)

    ax = axes[1]
    for label, samples in (("create → Secret", _get(r, "latency", "_samples", "create_to_secret")),
                           ("create → Ready", _get(r, "latency", "_samples", "create_to_ready")),
                           ("workspace deleted → Secret gone", _get(r, "gc", "_samples", "workspace_deleted_to_secret_gone")),
                           ("workspace deleted → token anchor deleted", _get(r, "credentials", "_samples", "workspace_deleted_to_token_anchor_deleted"))):
        if samples:
            data = sorted(samples)
            ax.plot([v for v in data], [(i + 1) / len(data) for i in range(len(data))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("seconds (log)")
    ax.set_ylabel("fraction of objects")
    ax.axhline(0.99, color="#ccc", lw=0.8, ls="--")
    ax.set_title(f"Latency CDF ({_get(r, 'latency', 'rate_per_s')}/s arrivals)")
    ax.legend(fontsize=8, loc="lower right")

    ax = axes[2]
    for series in r.get("timeline", []):
        if series["t"]:
            ax.plot(series["t"], series["rss_mib"], label=series["label"], lw=1)
    for name, start, end in r.get("phases", []):
        ax.axvspan(start, end, alpha=0.06, color="k")
        ax.text(start, ax.get_ylim()[1] if ax.get_ylim()[1] > 1 else 1, name, rotation=90, fontsize=6, va="top")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("operator RSS (MiB)")
    ax.set_title("Operator memory over the run")
    ax.legend(fontsize=7, loc="upper left")
    la = _get(r, "meta", "machine", "loadavg_at_start")
    fig.suptitle(f"workspace-secrets-operator benchmark, mode {_get(r, 'config', 'mode')} — "
                 f"{_get(r, 'meta', 'machine', 'cores')} cores, load avg at start {la[0] if la else '?'} "
                 "(shared machine: compare ratios, not absolute numbers)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(r: dict[str, Any], path: Path) -> None:
    """The scaling phase: cost of a new object (CPU, requests) and the operator's RSS against the number of
    WorkspaceSecrets existing."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = _get(r, "scaling", "steps") or []
    x = [st["objects_existing"] for st in steps]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for label, values in (("operator (idle to idle)", [st.get("operator_cpu_ms_per_object") for st in steps]),
                          ("kube-apiserver", [(st.get("cpu_ms_per_object_until_ready") or {}).get("kube-apiserver") for st in steps]),
                          ("etcd", [(st.get("cpu_ms_per_object_until_ready") or {}).get("etcd") for st in steps])):
        if any(v is not None for v in values):
            ax.plot(x, [v if v is not None else float("nan") for v in values], marker="o", label=label)
    ax.set_xlabel("WorkspaceSecrets existing")
    ax.set_ylabel("CPU ms per new WorkspaceSecret")
    ax.set_ylim(bottom=0)
    ax.set_title("CPU per new object vs objects existing")
    ax.legend(fontsize=8)

    ax = axes[1]
    ax.plot(x, [st.get("api_reads_per_object") for st in steps], marker="o", label="reads (GET, LIST, WATCH), all clients")
    ax.plot(x, [st.get("api_writes_per_object") for st in steps], marker="o", label="writes, all clients")
    ax.plot(x, [sum((st.get("operator_client_requests_per_object") or {}).values()) for st in steps], marker="d", ls=":",
            label="of all: the operator's own client")
    ax.plot(x, [st.get("operator_looked_at_per_object") for st in steps], marker="x", ls="--", label="reconciles + skips")
    ax.set_xlabel("WorkspaceSecrets existing")
    ax.set_ylabel("per new WorkspaceSecret")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(x, [st.get("objects_per_s") for st in steps], color="#888", marker="s", lw=0.8, label="objects/s")
    ax2.set_ylabel("objects/s (grey)")
    ax2.set_ylim(bottom=0)
    ax.set_title("API requests per new object, throughput")
    ax.legend(fontsize=8, loc="lower left")

    ax = axes[2]
    x0 = _get(r, "scaling", "objects_existing_before") or 0
    ax.plot([x0, *x], [_get(r, "scaling", "rss_idle_mib"), *[st.get("rss_mib") for st in steps]], marker="o",
            label="idle (before the first step, after each)")
    ax.plot(x, [st.get("peak_rss_mib") for st in steps], marker="^", lw=0.8, label="peak during the step")
    ax.set_xlabel("WorkspaceSecrets existing")
    ax.set_ylabel("operator RSS (MiB)")
    ax.set_ylim(0, max([v for line in ax.lines for v in line.get_ydata() if v is not None] or [1]) * 1.1)
    ax.set_title("Operator memory vs objects")
    ax.legend(fontsize=8, loc="lower right")
    la = _get(r, "meta", "machine", "loadavg_at_start")
    fig.suptitle(f"workspace-secrets-operator scaling, mode {_get(r, 'config', 'mode')} — {_get(r, 'meta', 'machine', 'cores')} cores, "
                 f"load avg at start {la[0] if la else '?'} (shared machine: compare shapes and ratios)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
