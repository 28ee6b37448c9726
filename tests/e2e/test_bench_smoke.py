"""The benchmark harness still works: `python -m bench --mode smoke` runs every phase on tiny numbers.

A benchmark is not a test, so nothing here looks at a timing. What is checked is that each phase
completed and measured what it claims to (every object it created was seen Ready, every Secret it
expected to be collected was, the restarted operator's metrics show it looked at every object, the scaling
phase ran its steps), so that a change to the operator or the harness that breaks a phase is
noticed before someone needs the numbers.

The harness starts its own local control plane (unless the e2e run targets an external cluster): the
session's shared operator watches every namespace, and a second operator on the same objects would make
the benchmark's numbers -- and its check that sharded instances never share an object -- meaningless.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_mode_completes_every_phase(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench", "--mode", "smoke", "--out", str(tmp_path)]
    # Same rule as conftest.py: an external cluster only when explicitly asked for.
    external = os.environ.get("WSO_E2E_KUBECONFIG") or (
        os.environ.get("KUBECONFIG") if os.environ.get("WSO_E2E_USE_KUBECONFIG") == "1" else None)
    if external:
        argv += ["--kubeconfig", str(external)]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    result = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"bench failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    [report] = tmp_path.glob("*/*-smoke.json")
    r = json.loads(report.read_text())
    phases = r["config"]["phases"]
    assert phases and all(name in r and "error" not in r[name] for name in phases), {n: r.get(n, {}).get("error") for n in phases}
    assert r["baseline"]["objects_per_s"] > 0 and r["baseline_full"]["objects_per_s"] > 0
    assert r["throughput"]["objects"] == 20 and r["throughput"]["ready_since_start"]["count"] == 20
    assert r["latency"]["create_to_ready"]["count"] == r["latency"]["objects"] == 10
    assert r["gc"]["workspace_deleted_to_secret_gone"]["count"] == r["gc"]["objects"]
    assert r["credentials"]["workspace_deleted_to_token_anchor_deleted"]["count"] == r["credentials"]["objects"]
    assert r["unrelated"]["unrelated_secrets"] == 50
    for run in ("one_instance", "2_instances"):
        assert r["sharding"][run]["all_handled"] and r["sharding"][run]["handled_twice"] == 0
    assert set(r["keygen"]["per_type"]) == {"ed25519", "ecdsa", "rsa-3072", "rsa-4096"}
    # The restart is timed by the operator's own metrics (reconciled or found unchanged), not by its requests.
    assert r["restart"]["all_looked_at"] and r["restart"]["resume_seconds"] is not None, r["restart"].get("looked_at")
    assert r["restart"]["api_requests_total_per_object"] is not None and "operator_client_requests" in r["restart"]
    steps = r["scaling"]["steps"]
    assert [s["objects_in_namespace"] for s in steps] == [10, 20] and [s["new_objects"] for s in steps] == [10, 10]
    assert all(s["objects_per_s"] > 0 and s["operator_looked_at_per_object"] >= 1 for s in steps), steps
    assert all("kube-apiserver" in s["cpu_ms_per_object_until_ready"] for s in steps) or external
    assert (report.parent / report.name.replace(".json", ".md")).read_text().startswith("### Run")
