"""The benchmark phases. Each returns a JSON-able dict that report.py turns into tables and a plot.

Order matters and is fixed by `Bench.run`: key generation and the baseline run with no operator; the
throughput run starts the operator on an otherwise idle cluster; later phases add load (10k unrelated
Secrets, a restart, a sustained arrival rate, deletions), and sharding runs last with its own instances.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import urllib3
import yaml

from workspace_secrets.api import constants as c
from workspace_secrets.api.workspace_secret import WorkspaceSecret
from workspace_secrets.api import conditions as cond
from workspace_secrets.user_keys import sshkeys
from workspace_secrets.workspace_secret import policy
from workspace_secrets.user_keys.sshkeys import KeySpec, KeyType
from workspace_secrets.runtime.kube import KubeError, core_path

from . import kube as k
from . import opmetrics
from .config import BenchConfig
from .operator import OperatorUnderTest
from .procstat import MIB, LoadWatch, control_plane_pids, cpu_seconds
from .recorder import Recorder
from .requests import CountingKube, RequestWindow, per_object, writes
from .stats import deltas, summary

log = logging.getLogger("bench")

NS_PREFIX = "bench-"
CRD_DIR = Path(__file__).resolve().parents[1] / "crds"
PROVIDER_NAME = "bench-tokens"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
SERVICE_ACCOUNT = "bench-ci"
COMPONENT = c.LABEL_COMPONENT


def _ns(name: str) -> str:
    return f"{NS_PREFIX}{name}"


def _mib(value: int) -> float:
    return round(value / MIB, 1)


class Bench:
    def __init__(self, config: BenchConfig, kubeconfig: str, out_dir: Path, *, progress: Callable[[str], None] = print) -> None:
        self.config = config
        self.kubeconfig = kubeconfig
        self.out_dir = out_dir
        self.say = progress
        self.kube = CountingKube.connect(kubeconfig, concurrency=max(config.create_concurrency, config.api_concurrency) + 8)
        self.load = LoadWatch().start()
        self.t0 = time.monotonic()
        self.results: dict[str, Any] = {}
        self.operators: list[OperatorUnderTest] = []  # every instance started, for the timeline plot
        self.phase_marks: list[tuple[str, float, float]] = []
        self.main: OperatorUnderTest | None = None
        self._gc_warm = threading.Event()
        self._gc_warm_seconds: float | None = None
        self.providers_file = out_dir / "providers.yaml"
        self.control_plane = control_plane_pids(kubeconfig)  # empty unless it is a local control plane

    # --- plumbing ---------------------------------------------------------------------------------
    def cpu_now(self) -> dict[str, float]:
        """CPU seconds so far of the control plane's processes, this harness and the operator(s)."""
        pids = {**self.control_plane, "harness": os.getpid(),
                **{f"operator {op.name}": op.process.pid for op in self.operators if op.process and op.process.poll() is None}}
        return cpu_seconds(pids)

    def cpu_since(self, before: dict[str, float]) -> dict[str, float]:
        now = self.cpu_now()
        return {name: round(now[name] - before.get(name, 0.0), 2) for name in now if now[name] - before.get(name, 0.0) > 0.005}

    def phase(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        self.say(f"== {name}")
        start = time.monotonic()
        try:
            result = fn()
        except Exception as exc:
            self.say(f"!! {name} failed: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            result = {"error": f"{type(exc).__name__}: {exc}"}
            raise
        finally:
            end = time.monotonic()
            self.phase_marks.append((name, start - self.t0, end - self.t0))
        result["phase_seconds"] = round(end - start, 1)
        result["loadavg_1m"] = self.load.between(start, end)
        self.results[name] = result
        self.say(f"   {name}: {_brief(result)}")

    def operator(self, name: str, *extra: str) -> OperatorUnderTest:
        args = ["--api-concurrency", str(self.config.api_concurrency),
                "--providers-config", str(self.providers_file), "--operator-namespace", _ns("system"),
                *self.config.operator_args, *extra]
        traced = None
        if self.config.traced:  # where the memory goes: tracemalloc, dumped on SIGUSR1 (bench/traced_operator.py)
            traced = {"command": [sys.executable, "-m", "bench.traced_operator"],
                      "env": {"WSO_TRACEMALLOC_OUT": str(self.out_dir / f"tracemalloc-{name}.txt")}}
        op = OperatorUnderTest(name, self.kubeconfig, self.out_dir, args, **(traced or {}))
        self.operators.append(op)
        return op

    def create_all(self, bodies: list[tuple[str, dict[str, Any]]], *, concurrency: int | None = None) -> float:
        """POST every (collection path, body) in parallel; returns the seconds it took."""
        start = time.monotonic()
        k.fan_out(lambda item: self.kube.call("POST", item[0], item[1]), bodies,
                  concurrency=concurrency or self.config.create_concurrency)
        return time.monotonic() - start

    def pods(self, namespace: str, names: list[str], run: str, users: list[str]) -> dict[str, str]:
        """Create workspace anchors, each labelled with its user (a WorkspaceSecret binds only to a workspace
        of its own user); returns their uids by name."""
        created = k.fan_out(lambda item: self.kube.call("POST", core_path(namespace, "pods"), k.pod(item[0], run, item[1])),
                            list(zip(names, users, strict=True)), concurrency=self.config.create_concurrency)
        return {p["metadata"]["name"]: p["metadata"]["uid"] for p in created}

    def ws_recorder(self, namespace: str | None = None) -> Recorder:
        path = k.ws_path(namespace) if namespace else k.WS_COLLECTION

        def classify(type_: str, obj: dict[str, Any]) -> str | None:
            if type_ == "DELETED":
                return "deleted"
            return "ready" if k.is_ready(obj) else None

        return Recorder(self.kube, path, label_selector=k.BENCH_LABEL, classify=classify,
                        key=lambda obj: f"{obj['metadata']['namespace']}/{obj['metadata']['name']}").start()

    def secret_recorder(self, namespace: str | None = None) -> Recorder:
        """Our Secrets by the WorkspaceSecret they belong to: workspace Secrets and token anchors."""
        path = core_path(namespace, "secrets") if namespace else "/api/v1/secrets"

        def classify(type_: str, obj: dict[str, Any]) -> str | None:
            component = (obj["metadata"].get("labels") or {}).get(COMPONENT)
            if component not in (c.COMPONENT_WORKSPACE_SECRET, c.COMPONENT_TOKEN_ANCHOR):
                return None
            if type_ == "ADDED":
                return f"added:{component}"
            if type_ == "DELETED":
                return f"deleted:{component}"
            return None

        def owner(obj: dict[str, Any]) -> str:
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or [{}]
            return f"{meta['namespace']}/{refs[0].get('name', meta['name'])}"

        return Recorder(self.kube, path, label_selector=c.MANAGED_SELECTOR, classify=classify, key=owner).start()

    def wait_all(self, recorder: Recorder, mark: str, names: set[str], timeout: float, what: str) -> None:
        last = [time.monotonic()]

        def progress(done: int) -> None:
            if time.monotonic() - last[0] > 15:
                last[0] = time.monotonic()
                self.say(f"   ... {what}: {done}/{len(names)}")

        if not recorder.wait_for(mark, names, timeout, progress):
            missing = sorted(names - set(recorder.times(mark)))
            raise TimeoutError(f"{what}: {len(missing)} of {len(names)} not seen after {timeout:.0f}s (e.g. {missing[:3]})")

    # --- setup --------------------------------------------------------------------------------------
    def setup(self) -> dict[str, Any]:
        """Apply the CRDs (server-side apply, no kubectl needed), the provider config, and start the
        garbage collector's warm-up in the background: kube-controller-manager discovers a new CRD only
        at its ~30 s resync, and until then deleting a workspace collects nothing."""
        for path in sorted(CRD_DIR.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    self.kube.call("PATCH", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{doc['metadata']['name']}",
                                   doc, content_type="application/apply-patch+yaml",
                                   query={"fieldManager": "wso-bench", "force": "true"})
        deadline = time.monotonic() + 60
        while True:
            crd = self.kube.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{c.WORKSPACE_SECRET_PLURAL}.{c.GROUP}")
            if any(x["type"] == "Established" and x["status"] == "True" for x in (crd.get("status") or {}).get("conditions") or ()):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("CRD not Established")
            time.sleep(0.2)
        self.providers_file.parent.mkdir(parents=True, exist_ok=True)
        self.providers_file.write_text(yaml.safe_dump({"providers": [{
            "name": PROVIDER_NAME, "type": "kubernetes-token",
            "allow": {"namespaces": [_ns("*")]},
            # The tokens are tried against the API server: its audience (kubeadm's, kind's and the test control
            # plane's default --api-audiences) must be one of the provider's.
            "config": {"allowedServiceAccounts": ["bench-*"], "audiences": [API_AUDIENCE], "maxExpirationSeconds": 7200}}]}))
        leftovers = [ns["metadata"]["name"] for ns in self.kube.call("GET", "/api/v1/namespaces", query={"labelSelector": k.BENCH_LABEL})["items"]]
        if leftovers:
            self.say(f"   deleting namespaces left by an earlier run: {', '.join(leftovers)}")
            self.kube.delete_namespaces(leftovers)
        threading.Thread(target=self._warm_gc, name="gc-warmup", daemon=True).start()
        return {"crds": "applied", "leftover_namespaces_deleted": leftovers}

    def _warm_gc(self) -> None:
        start = time.monotonic()
        try:
            ns = _ns("gc-warmup")
            self.kube.ensure_namespace(ns)
            uid = self.pods(ns, ["anchor"], "warmup", ["warmup"])["anchor"]
            owner = {"apiVersion": "v1", "kind": "Pod", "name": "anchor", "uid": uid}
            self.kube.call("POST", k.ws_path(ns), k.workspace_secret("probe", "warmup", "anchor", "warmup", owner=owner))
            self.kube.call("DELETE", core_path(ns, "pods", "anchor"))
            while self.kube.get_or_none(k.ws_path(ns, "probe")) is not None and time.monotonic() - start < 180:
                time.sleep(0.5)
            self._gc_warm_seconds = time.monotonic() - start
        finally:
            self._gc_warm.set()

    # --- what the operator's resident set is made of --------------------------------------------------
    def imports(self) -> dict[str, Any]:
        """RSS of fresh interpreters importing the operator's layers, and which heavy optional packages
        the running operator loads (none of boto3/psycopg/google-auth unless a provider needs them)."""
        probes = {
            "python": "pass",
            "kopf, without the kubernetes package": "import sys; sys.modules['kubernetes'] = None; import kopf",
            "kopf (imports kubernetes.client when installed)": "import kopf",
            "the operator (handlers, kube client, kubernetes-token provider)":
                "import workspace_secrets.cli, workspace_secrets.handlers; "
                "from workspace_secrets.credentials.providers import registry; registry.provider_class('kubernetes-token')",
        }
        heavy = ("kubernetes", "pydantic", "google.auth", "boto3", "botocore", "psycopg", "matplotlib")
        out: dict[str, Any] = {}
        for label, code in probes.items():
            script = (f"{code}\nimport gc, sys, json; gc.collect()\n"
                      "rss = int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024\n"
                      f"print(json.dumps({{'rss_mib': round(rss, 1), 'loaded': [m for m in {list(heavy)!r} if sys.modules.get(m)]}}))")
            result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
            out[label] = json.loads(result.stdout)
        return {"fresh_interpreters": out}

    # --- 6. key generation ------------------------------------------------------------------------
    def keygen(self) -> dict[str, Any]:
        """user_keys/sshkeys.generate per key type, in this process, and what RSA does to an event loop
        when generated inline versus the way the operator does it (controllers._generate: a thread)."""
        specs = {"ed25519": KeySpec(KeyType.ED25519), "ecdsa": KeySpec(KeyType.ECDSA),
                 "rsa-3072": KeySpec(KeyType.RSA, 3072), "rsa-4096": KeySpec(KeyType.RSA, 4096)}
        per_type: dict[str, Any] = {}
        for name, count in self.config.keygen.items():
            times = []
            for _ in range(count):
                start = time.perf_counter()
                sshkeys.generate(specs[name], comment="bench@wso")
                times.append(time.perf_counter() - start)
            times.sort()
            per_type[name] = {"keys": count, "mean_ms": round(sum(times) / count * 1000, 2),
                              "p50_ms": round(times[len(times) // 2] * 1000, 2), "max_ms": round(times[-1] * 1000, 2),
                              "keys_per_s": round(count / sum(times), 1)}
        rsa_keys = max(2, self.config.keygen.get("rsa-3072", 2))
        stall = {mode: asyncio.run(_loop_stall(KeySpec(KeyType.RSA, 3072), rsa_keys, threaded=mode == "thread"))
                 for mode in ("inline", "thread")}
        return {"per_type": per_type, "event_loop_during_rsa_3072": stall}

    # --- 1. baseline --------------------------------------------------------------------------------
    def baseline(self) -> dict[str, Any]:
        """The minimum API writes one WorkspaceSecret needs -- create its Secret, patch its status --
        by a plain client (the operator's JSON client) with the operator's concurrency, no operator.

        The CRs are created first (untimed) with the operator stopped; Secret bodies and status are the
        ones the operator itself would write (same domain functions, a real ed25519 key each), built
        before the clock starts, so only API round-trips are timed."""
        return self._baseline("baseline", full=False)

    def baseline_full(self) -> dict[str, Any]:
        """The same, with every write the operator makes for a new workspace of a new user: the user's
        key Secret, the ownerReference to the workspace, the Secret, the status, and two Events. The
        operator's ratio to this one is how close it gets to the API server's limit for its own
        design; the ratio to `baseline` also prices the design (per-user keys, binding, Events)."""
        return self._baseline("baseline-full", full=True)

    def _baseline(self, label: str, *, full: bool) -> dict[str, Any]:
        n, ns = self.config.objects, _ns(label)
        self.kube.ensure_namespace(ns)
        names = [f"ws-{i:05d}" for i in range(n)]
        self.say(f"   creating {n} WorkspaceSecrets{' and anchor Pods' if full else ''} (untimed)")
        pods = self.pods(ns, names, label, [f"u-{name}" for name in names]) if full else {}
        created = k.fan_out(lambda name: self.kube.call("POST", k.ws_path(ns), k.workspace_secret(name, f"u-{name}", name, label)),
                            names, concurrency=self.config.create_concurrency)
        now = cond.utcnow()
        work = []
        for body in created:
            ws = WorkspaceSecret.from_body(body)
            key = sshkeys.generate(KeySpec(), comment=f"{ws.user}@{c.OPERATOR_NAME}")
            secret = policy.desired_secret(ws, key)
            obs = policy.Observation(key=key, key_source="Generated", problem=None, secret_action=policy.SecretAction.CREATE,
                                     secret_data=secret["data"], workspace_uid=pods.get(ws.name))
            status = {**policy.desired_status(ws, obs),
                      "conditions": cond.merge(None, policy.conditions(ws, obs), generation=ws.generation, now=now)}
            item: dict[str, Any] = {"name": ws.name, "secret": secret, "status": {k_: v for k_, v in status.items() if v is not None}}
            if full:
                user_key = {**secret, "metadata": {"name": f"ssh-{ws.user}", "namespace": ns, "labels": secret["metadata"]["labels"]}}
                owner = {"apiVersion": "v1", "kind": "Pod", "name": ws.name, "uid": pods[ws.name]}
                item["user_key"] = user_key
                item["bind"] = {"metadata": {"ownerReferences": [owner], "resourceVersion": body["metadata"]["resourceVersion"]}}
                item["events"] = [_event(ns, ws, reason) for reason in ("SecretCreated", "WorkspaceBound")]
            work.append(item)

        def write(item: dict[str, Any]) -> None:
            if full:
                self.kube.call("POST", core_path(ns, "secrets"), item["user_key"])
                self.kube.call("PATCH", k.ws_path(ns, item["name"]), item["bind"], content_type="application/merge-patch+json")
            self.kube.call("POST", core_path(ns, "secrets"), item["secret"])
            self.kube.call("PATCH", k.ws_path(ns, item["name"], status=True), {"status": item["status"]},
                           content_type="application/merge-patch+json")
            for event in item.get("events", ()):
                self.kube.call("POST", core_path(ns, "events"), event)

        cpu = self.cpu_now()
        start = time.monotonic()
        k.fan_out(write, work, concurrency=self.config.api_concurrency)
        seconds = time.monotonic() - start
        result = {"objects": n, "concurrency": self.config.api_concurrency, "writes_per_object": 6 if full else 2,
                  "seconds": round(seconds, 2), "objects_per_s": round(n / seconds, 1), "cpu_s": self.cpu_since(cpu)}
        self.say(f"   deleting the {label} namespace" + (" (waiting, so it does not load the next phase)" if self.config.wait_for_cleanup else ""))
        result["cleanup_seconds"] = round(self.kube.delete_namespaces([ns], wait=self.config.wait_for_cleanup), 1)
        return result

    # --- 2. throughput and 5. cost -----------------------------------------------------------------
    def start_main_operator(self) -> dict[str, Any]:
        op = self.operator("main")
        startup = op.start()
        idle = op.settle()
        self.main = op
        return {"startup_seconds": round(startup, 2), "idle_rss_mib": round(idle.rss_mib, 1), "idle_cpu_s": round(idle.cpu, 2)}

    def _dump_allocations(self, op: OperatorUnderTest) -> None:
        """Ask a --traced operator for its top allocations (appended to tracemalloc-<name>.txt) and wait
        until they are written: a snapshot of a large heap takes a while."""
        dump = self.out_dir / f"tracemalloc-{op.name}.txt"
        size = dump.stat().st_size if dump.exists() else 0
        op.signal(signal.SIGUSR1)
        deadline = time.monotonic() + 300
        while (dump.stat().st_size if dump.exists() else 0) == size and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(1)  # the write may still be going on

    def _main(self) -> OperatorUnderTest:
        """The cluster-wide operator instance, started on first use."""
        if self.main is None or self.main.process is None or self.main.process.poll() is not None:
            started = self.start_main_operator()
            self.results.setdefault("operator_start", started)
        assert self.main is not None
        return self.main

    def throughput(self) -> dict[str, Any]:
        n, ns = self.config.objects, _ns("throughput")
        self.kube.ensure_namespace(ns)
        names = [f"ws-{i:05d}" for i in range(n)]
        self.say(f"   creating {n} anchor Pods (untimed)")
        per_user = self.config.workspaces_per_user
        self.pods(ns, names, "throughput", [f"u-{i // per_user:05d}" for i in range(len(names))])
        ready = self.ws_recorder(ns)
        secrets = self.secret_recorder(ns)
        op = self._main()
        before = op.settle()
        if self.config.traced:
            self._dump_allocations(op)  # the idle heap, so that the next dump shows what the burst added
        window = RequestWindow(self.kube)
        cpu = self.cpu_now()
        per_user = self.config.workspaces_per_user
        bodies = [(k.ws_path(ns), k.workspace_secret(name, f"u-{i // per_user:05d}", name, "throughput")) for i, name in enumerate(names)]
        self.say(f"   creating {n} WorkspaceSecrets at once ({self.config.create_concurrency} threads), waiting for Ready")
        start = time.monotonic()
        create_seconds = self.create_all(bodies)
        keys = {f"{ns}/{name}" for name in names}
        self.wait_all(ready, "ready", keys, timeout=120 + n / 2, what="Ready")
        end = max(ready.times("ready").values())
        seconds = end - start
        cpu_to_ready = self.cpu_since(cpu)
        busy = op.sample()
        after = op.settle(timeout=120)
        requests = window.close()
        ready.stop()
        secrets.stop()
        if self.config.traced:
            self._dump_allocations(op)
        latencies = [t - start for t in ready.times("ready").values()]
        baseline = self.results.get("baseline", {}).get("objects_per_s")
        baseline_full = self.results.get("baseline_full", {}).get("objects_per_s")
        return {
            "objects": n, "workspaces_per_user": per_user,
            "create_seconds": round(create_seconds, 2),
            "seconds_to_all_ready": round(seconds, 2),
            "objects_per_s": round(n / seconds, 1),
            "ratio_to_baseline": round(n / seconds / baseline, 3) if baseline else None,
            "ratio_to_baseline_full": round(n / seconds / baseline_full, 3) if baseline_full else None,
            "ready_since_start": summary(latencies),
            "secret_created_before_ready": sum(1 for key, t in secrets.times(f"added:{c.COMPONENT_WORKSPACE_SECRET}").items()
                                               if t <= ready.times("ready").get(key, float("inf"))),
            "api_requests": requests,
            "api_requests_per_object": per_object(requests, n),
            "api_writes_per_object": round(writes(requests) / n, 2),
            "cpu_s_until_all_ready": cpu_to_ready,
            "operator_cpu_s": round(busy.cpu - before.cpu, 2),
            "operator_cpu_ms_per_object": round((after.cpu - before.cpu) / n * 1000, 2),
            "peak_rss_mib": _mib(op.sampler.peak_between(start, after.at) if op.sampler else busy.peak_rss),
            "steady_rss_mib": round(after.rss_mib, 1),
            "rss_before_mib": round(before.rss_mib, 1),
            "rss_per_object_kib": round((after.rss - before.rss) / n / 1024, 2),
        }

    def unrelated(self) -> dict[str, Any]:
        """10k Secrets the operator does not own appear: its RSS and CPU must not notice."""
        n, ns = self.config.unrelated_secrets, _ns("unrelated")
        self.kube.ensure_namespace(ns, wait_service_account=False)
        op = self._main()
        before = op.settle()
        window = RequestWindow(self.kube)
        body = lambda i: (core_path(ns, "secrets"), {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",  # noqa: E731
                                                     "metadata": {"name": f"app-{i:05d}", "labels": {"app": "unrelated"}},
                                                     "data": {"token": base64.b64encode(b"x" * 64).decode()}})
        create_seconds = self.create_all([body(i) for i in range(n)])
        after = op.settle()
        requests = window.close()
        return {"unrelated_secrets": n, "create_seconds": round(create_seconds, 1),
                "rss_before_mib": round(before.rss_mib, 1), "rss_after_mib": round(after.rss_mib, 1),
                "rss_delta_mib": round(after.rss_mib - before.rss_mib, 1),
                "operator_cpu_s_during": round(after.cpu - before.cpu, 2),
                "operator_requests": {key: v for key, v in requests.items() if not key.startswith("POST secrets")},
                "peak_rss_mib_so_far": _mib(after.peak_rss)}

    def existing_workspace_secrets(self) -> tuple[set[str], int]:
        """The uids of the WorkspaceSecrets in the cluster not being deleted, and how many of those sit in a terminating
        namespace (gone soon: an operator may or may not still see them). Paged, never one 10k-object response."""
        terminating = {ns["metadata"]["name"] for ns in self.kube.call("GET", "/api/v1/namespaces")["items"]
                       if ns["metadata"].get("deletionTimestamp")}
        live: set[str] = set()
        in_terminating = 0
        token = None
        while True:
            page = self.kube.call("GET", k.WS_COLLECTION, query={"limit": "500", **({"continue": token} if token else {})})
            for item in page.get("items", ()):
                if not item["metadata"].get("deletionTimestamp"):
                    live.add(item["metadata"]["uid"])
                    in_terminating += item["metadata"]["namespace"] in terminating
            token = page["metadata"].get("continue")
            if not token:
                return live, in_terminating

    def wait_looked_at(self, op: OperatorUnderTest, uids: set[str], *, since: float, timeout: float,
                       uncertain: int = 0) -> dict[str, Any]:
        """Until the operator has looked at every WorkspaceSecret of `uids` -- reconciled (any result) or found
        unchanged without a request (wso_reconciles_skipped_total) -- and its work queue is empty, read from its
        /metrics: a signal that does not depend on the operator sending requests. The counters start at 0 with the
        process. `uncertain` of them (in terminating namespaces) need not be seen. When the count stalls short of
        the goal, the objects are listed again: one deleted meanwhile (e.g. by the garbage collector) cannot be
        looked at, and the goal becomes those still there; the time is then when the count first reached it.
        An object counted twice (queued again by an event) could end the wait while another is still in a worker;
        at most --workers of them, and only then."""
        goal = len(uids) - uncertain
        deadline = time.monotonic() + timeout
        timeline: list[tuple[float, int, int]] = []
        last_say = changed = time.monotonic()
        progress, done, relisted = None, False, None
        while time.monotonic() < deadline:
            try:
                current = op.progress()
            except OSError:  # not serving yet
                time.sleep(0.25)
                continue
            if progress is None or current.looked_at != progress.looked_at or current.depth:
                changed = current.at
            progress = current
            timeline.append((round(progress.at - since, 2), progress.looked_at, int(progress.depth)))
            done = progress.looked_at >= goal and progress.depth == 0
            if done:
                break
            stalled = progress.at - changed
            if relisted is None and progress.looked_at and stalled > 10:
                still, _ = self.existing_workspace_secrets()
                relisted = len(uids - still)
                goal = len(uids & still) - uncertain
                reached = next((entry for entry in timeline if entry[1] >= goal and entry[2] == 0), None)
                if reached is not None:
                    done = True
                    break
            # Idle short of the goal (30 s; 120 s before the first: the initial lists may take a while): it won't get there.
            if stalled > (30 if progress.looked_at else 120):
                break
            if time.monotonic() - last_say > 15:
                last_say = time.monotonic()
                self.say(f"   ... looked at: {progress.looked_at}/{goal}, queue depth {int(progress.depth)}")
            time.sleep(0.25)
        if progress is None:
            raise TimeoutError(f"operator {op.name}: no metrics after {timeout:.0f}s")
        reached = next((entry for entry in timeline if entry[1] >= goal and entry[2] == 0), None) if done else None
        return {"all_looked_at": done, "seconds": reached[0] if reached else None, "goal": goal,
                "deleted_meanwhile": relisted, "progress": progress.to_json(),
                # (seconds since start, objects looked at, queue depth), thinned to <= ~200 points
                "timeline": timeline[:: max(1, len(timeline) // 200)] + timeline[-1:]}

    def restart(self) -> dict[str, Any]:
        """Restart with every WorkspaceSecret already Ready (and the unrelated Secrets present). Nothing has changed,
        so nothing may be written, and few requests are needed (the initial lists tell what is there). Measured:
        the time from starting the process until it has looked at every WorkspaceSecret (its own reconcile and
        skip counters, so a design that sends no request for an unchanged object is timed truthfully), the API
        requests of the whole restart (until the operator is idle again) split into reads and writes, per object."""
        # The garbage collector's warm-up deletes its probe WorkspaceSecret once it knows the CRD (~30 s after setup):
        # not during this window, where its requests would count as the restart's.
        self._gc_warm.wait(240)
        uids, terminating = self.existing_workspace_secrets()
        objects = len(uids)
        last = self._main().stop()
        op = self.operator("main-restarted")
        window = RequestWindow(self.kube)
        startup = op.start()
        looked = self.wait_looked_at(op, uids, uncertain=terminating, since=op.started_at, timeout=300 + objects / 20)
        after = op.settle(quiet_cpu=0.05, window=3, timeout=300)
        requests = window.close()
        own = opmetrics.client_requests(op.metrics())
        self.main = op
        total, written = sum(requests.values()), writes(requests)
        return {"objects": objects, "objects_in_terminating_namespaces": terminating,
                "objects_deleted_meanwhile": looked["deleted_meanwhile"],
                "startup_seconds": round(startup, 2),
                # process start -> every object looked at (reconciled or skipped) and the queue empty; None: not reached
                "resume_seconds": looked["seconds"], "all_looked_at": looked["all_looked_at"],
                "looked_at": looked["progress"], "looked_at_timeline": looked["timeline"],
                # process start -> the operator idle (CPU < 5% over 3 s): includes those 3 s; the measure before 2026-11-30
                "settled_seconds": round(after.at - op.started_at, 1),
                "cpu_s": round(after.cpu, 2),
                "rss_after_resume_mib": round(after.rss_mib, 1), "peak_rss_mib": _mib(after.peak_rss),
                "rss_before_restart_mib": round(last.rss_mib, 1) if last else None,
                "api_requests": requests, "api_requests_per_object": per_object(requests, objects),
                "api_writes": written, "api_reads": total - written,
                "api_requests_total_per_object": round(total / objects, 2) if objects else None,
                "api_writes_per_object": round(written / objects, 2) if objects else None,
                "api_reads_per_object": round((total - written) / objects, 2) if objects else None,
                # the operator's own client by verb (its wso_kube_requests_total; kopf's lists and watches not included):
                # the API server's count above also has the controller-manager's
                "operator_client_requests": own,
                "operator_client_requests_per_object": round(sum(own.values()) / objects, 2) if objects else None}

    # --- 3. latency ----------------------------------------------------------------------------------
    def latency(self) -> dict[str, Any]:
        rate, duration = self.config.latency_rate, self.config.latency_seconds
        n, ns = int(rate * duration), _ns("latency")
        self.kube.ensure_namespace(ns)
        names = [f"ws-{i:05d}" for i in range(n)]
        self.say(f"   creating {n} anchor Pods (untimed), then {rate:g} WorkspaceSecrets/s for {duration:g}s")
        self.pods(ns, names, "latency", [f"lat-{i:05d}" for i in range(len(names))])
        ready, secrets = self.ws_recorder(ns), self.secret_recorder(ns)
        before = self._main().settle()
        sent: dict[str, float] = {}
        lag: list[float] = []

        def create(item: tuple[int, str], start: float) -> None:
            i, name = item
            due = start + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            lag.append(now - due)
            sent[f"{ns}/{name}"] = now
            self.kube.call("POST", k.ws_path(ns), k.workspace_secret(name, f"lat-{i:05d}", name, "latency"))

        start = time.monotonic() + 0.5
        with ThreadPoolExecutor(max_workers=self.config.api_concurrency, thread_name_prefix="arrivals") as pool:
            for future in [pool.submit(create, item, start) for item in enumerate(names)]:
                future.result()
        self.wait_all(ready, "ready", set(sent), timeout=120, what="Ready")
        after = self._main().settle()
        ready.stop()
        secrets.stop()
        self.latency_namespace, self.latency_names = ns, names
        return {
            "rate_per_s": rate, "seconds": duration, "objects": n,
            "create_to_secret": summary(deltas(sent, secrets.times(f"added:{c.COMPONENT_WORKSPACE_SECRET}"))),
            "create_to_ready": summary(deltas(sent, ready.times("ready"))),
            "arrival_lag_p99_ms": summary(lag).get("p99_ms"),
            "operator_cpu_s": round(after.cpu - before.cpu, 2),
            "operator_cpu_share": round((after.cpu - before.cpu) / (after.at - before.at), 3),
            "_samples": {"create_to_ready": deltas(sent, ready.times("ready")),
                         "create_to_secret": deltas(sent, secrets.times(f"added:{c.COMPONENT_WORKSPACE_SECRET}"))},
        }

    # --- 4. garbage collection -------------------------------------------------------------------------
    def _delete_at_rate(self, ns: str, names: list[str], rate: float) -> dict[str, float]:
        sent: dict[str, float] = {}

        def delete(item: tuple[int, str], start: float) -> None:
            i, name = item
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            sent[f"{ns}/{name}"] = time.monotonic()
            self.kube.call("DELETE", core_path(ns, "pods", name))

        start = time.monotonic() + 0.2
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="deletes") as pool:
            for future in [pool.submit(delete, item, start) for item in enumerate(names)]:
                future.result()
        return sent

    def gc(self) -> dict[str, Any]:
        """Delete workspace Pods at a steady rate; the controller-manager's garbage collector deletes the
        WorkspaceSecret (owned by the Pod) and then its Secret (owned by the WorkspaceSecret)."""
        self._gc_warm.wait(240)
        ns, names = self.latency_namespace, self.latency_names[: self.config.gc_count]
        ws_watch, secrets = self.ws_recorder(ns), self.secret_recorder(ns)
        sent = self._delete_at_rate(ns, names, self.config.gc_rate)
        self.wait_all(secrets, f"deleted:{c.COMPONENT_WORKSPACE_SECRET}", set(sent), timeout=180, what="Secrets collected")
        ws_watch.stop()
        secrets.stop()
        gone = secrets.times(f"deleted:{c.COMPONENT_WORKSPACE_SECRET}")
        return {
            "gc_discovery_warmup_seconds": round(self._gc_warm_seconds, 1) if self._gc_warm_seconds else None,
            "rate_per_s": self.config.gc_rate, "objects": len(names),
            "workspace_deleted_to_workspacesecret_gone": summary(deltas(sent, ws_watch.times("deleted"))),
            "workspace_deleted_to_secret_gone": summary(deltas(sent, gone)),
            "_samples": {"workspace_deleted_to_secret_gone": deltas(sent, gone)},
        }

    def credentials(self) -> dict[str, Any]:
        """WorkspaceSecrets with a dynamic credential (a ServiceAccount token bound to an anchor Secret):
        workspace deleted -> the operator's finalizer revokes (deletes the anchor, which the API server
        checks on every use of the token) -> Secret gone. Three tokens are tried before and after."""
        n, ns = self.config.credential_objects, _ns("credentials")
        self.kube.ensure_namespace(ns)
        self.kube.call("POST", core_path(ns, "serviceaccounts"), {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT}})
        names = [f"ws-{i:04d}" for i in range(n)]
        self.pods(ns, names, "credentials", [f"cred-{name}" for name in names])
        ready, secrets = self.ws_recorder(ns), self.secret_recorder(ns)
        creds = [{"name": "kube", "provider": PROVIDER_NAME, "lifecycle": "WhileExists", "parameters": {"serviceAccount": SERVICE_ACCOUNT, "expirationSeconds": "3600"}}]
        start = time.monotonic()
        self.create_all([(k.ws_path(ns), k.workspace_secret(name, f"cred-{name}", name, "credentials", credentials=creds)) for name in names])
        self.wait_all(ready, "ready", {f"{ns}/{x}" for x in names}, timeout=120 + n, what="Ready with a token")
        issue_seconds = time.monotonic() - start
        probe = names[:3]
        tokens = {f"{ns}/{name}": base64.b64decode(self.kube.call("GET", core_path(ns, "secrets", name))["data"]["kube.token"])
                  for name in probe}
        before = sorted({self._token_status(token) for token in tokens.values()})
        refused: dict[str, float] = {}
        stop = threading.Event()

        def poll_tokens() -> None:
            # The API server caches successful token reviews for a few seconds: "revoked" is when a
            # token is actually refused, which the anchor's deletion only starts.
            while not stop.is_set() and len(refused) < len(tokens):
                for key, token in tokens.items():
                    if key not in refused and self._token_status(token) == 401:
                        refused[key] = time.monotonic()
                stop.wait(0.25)

        poller = threading.Thread(target=poll_tokens, name="token-poller", daemon=True)
        poller.start()
        sent = self._delete_at_rate(ns, names, min(self.config.gc_rate, 10))
        self.wait_all(secrets, f"deleted:{c.COMPONENT_WORKSPACE_SECRET}", set(sent), timeout=240, what="Secrets collected")
        poller.join(60)
        stop.set()
        tokens.clear()
        ready.stop()
        secrets.stop()
        revoked = secrets.times(f"deleted:{c.COMPONENT_TOKEN_ANCHOR}")
        return {
            "objects": n, "seconds_to_issue_all": round(issue_seconds, 1),
            "workspace_deleted_to_token_anchor_deleted": summary(deltas(sent, revoked)),
            "workspace_deleted_to_token_refused": summary(deltas(sent, refused)),
            "workspace_deleted_to_secret_gone": summary(deltas(sent, secrets.times(f"deleted:{c.COMPONENT_WORKSPACE_SECRET}"))),
            "token_http_status_before": before, "token_http_status_after": [401] * len(refused) + [201] * (len(probe) - len(refused)),
            "_samples": {"workspace_deleted_to_token_anchor_deleted": deltas(sent, revoked)},
        }

    def _token_status(self, token: bytes) -> int:
        """SelfSubjectReview with the token: 201 while it is valid, 401 once revoked."""
        cfg = self.kube.configuration
        with urllib3.PoolManager(ca_certs=cfg.ssl_ca_cert, cert_reqs="CERT_REQUIRED") as http:
            response = http.request("POST", cfg.host + "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                    body=b'{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}',
                                    headers={"Authorization": "Bearer " + token.decode(), "Content-Type": "application/json"})
            return response.status

    # --- scaling out ------------------------------------------------------------------------------------
    def reporters(self, namespaces: list[str]) -> dict[str, set[str]]:
        """WorkspaceSecrets ("namespace/name") by the reportingInstance of the operator Events about them."""
        found: dict[str, set[str]] = {}
        for ns in namespaces:
            for event in self.kube.call("GET", core_path(ns, "events"), query={"labelSelector": f"{c.LABEL_MANAGED_BY}={c.OPERATOR_NAME}"})["items"]:
                obj = event.get("involvedObject") or {}
                if obj.get("kind") == c.WORKSPACE_SECRET_KIND:
                    found.setdefault(event.get("reportingInstance") or "?", set()).add(f"{ns}/{obj.get('name')}")
        return found

    def sharding(self) -> dict[str, Any]:
        """The same objects over `shard_namespaces` namespaces: first one instance watching all of them,
        then `shard_instances` instances each owning a disjoint subset (`--namespace` flags). Who handled
        what is read from the API server: every WorkspaceSecret's Events carry the reportingInstance of
        the replica that posted them, so each object must have Events from exactly one instance, and
        every instance only in its own namespaces. Writes are counted too: they must equal a single
        instance's."""
        if self.main is not None:
            self.main.stop()
        cfg = self.config
        runs = {}
        for label, instances in (("one_instance", 1), (f"{cfg.shard_instances}_instances", cfg.shard_instances)):
            namespaces = [_ns(f"shard-{label.split('_')[0]}-{j}") for j in range(cfg.shard_namespaces)]
            for ns in namespaces:
                self.kube.ensure_namespace(ns)
            items = [(namespaces[i % len(namespaces)], f"ws-{i:05d}") for i in range(cfg.shard_objects)]
            self.say(f"   {label}: {len(items)} WorkspaceSecrets over {len(namespaces)} namespaces")
            k.fan_out(lambda item: self.kube.call("POST", core_path(item[0], "pods"), k.pod(item[1], "shard", f"s-{item[0]}-{item[1]}")), items,
                      concurrency=cfg.create_concurrency)
            owned = [namespaces[j::instances] for j in range(instances)]
            ops = [self.operator(f"{label}-{j}", *[arg for ns in mine for arg in ("--namespace", ns)])
                   for j, mine in enumerate(owned)]
            for op in ops:
                op.start()
            before = [op.settle() for op in ops]
            ready = self.ws_recorder()
            window = RequestWindow(self.kube)
            start = time.monotonic()
            self.create_all([(k.ws_path(ns), k.workspace_secret(name, f"s-{ns}-{name}", name, "shard")) for ns, name in items])
            keys = {f"{ns}/{name}" for ns, name in items}
            self.wait_all(ready, "ready", keys, timeout=120 + len(items) / 2, what="Ready")
            seconds = max(t for key, t in ready.times("ready").items() if key in keys) - start
            after = [op.settle() for op in ops]
            requests = window.close()
            ready.stop()
            by_instance = self.reporters(namespaces)
            handled = sorted(by_instance.values(), key=lambda objects: sorted(objects))
            twice = {key for i, h in enumerate(handled) for other in handled[i + 1:] for key in h & other}
            # An instance whose objects are not all within one shard's namespaces crossed its boundary.
            outside = [sorted({k.split("/")[0] for k in h}) for h in handled
                       if not any({k.split("/")[0] for k in h} <= set(shard) for shard in owned)]
            runs[label] = {
                "instances": instances, "namespaces_per_instance": [len(o) for o in owned], "objects": len(items),
                "seconds_to_all_ready": round(seconds, 2), "objects_per_s": round(len(items) / seconds, 1),
                "reporting_instances": len(by_instance),
                "handled_per_instance": [len(h & keys) for h in handled],
                "handled_twice": len(twice & keys), "handled_outside_own_namespaces": outside,
                "all_handled": len(by_instance) == instances and set().union(*handled) >= keys,
                "api_writes_per_object": round(writes(requests) / len(items), 2),
                "cpu_s_per_instance": [round(a.cpu - b.cpu, 2) for a, b in zip(after, before)],
                "steady_rss_mib_per_instance": [round(a.rss_mib, 1) for a in after],
            }
            for op in ops:
                op.stop()
        one, many = runs["one_instance"]["objects_per_s"], runs[f"{cfg.shard_instances}_instances"]["objects_per_s"]
        return {**runs, "speedup": round(many / one, 2) if one else None}

    # --- scaling: the cost of a new object as the number of objects grows ---------------------------------
    def scaling(self) -> dict[str, Any]:
        """WorkspaceSecrets created in steps in one namespace of one control plane (config.sizes(): how many exist
        there after each step; each step's new ones created at once, their anchor Pods first, untimed). Per step:
        objects/s; CPU per new object of the operator (idle to idle) and of the control plane (until all Ready, as
        in the throughput phase; until the operator is idle too); API requests per new object by verb and resource
        (the API server's count minus the harness's, until the operator is idle); the operator's reconciles and
        skips per new object (a resync inside a step shows there); its RSS once idle. The question: does the cost
        of one more object grow with the number that exist?"""
        ns, sizes, per_user = _ns("scaling"), self.config.sizes(), self.config.workspaces_per_user
        self.kube.ensure_namespace(ns)
        op = self._main()
        existing_before = len(self.existing_workspace_secrets()[0])
        ready = self.ws_recorder(ns)
        idle = op.settle()
        steps: list[dict[str, Any]] = []
        done = 0
        for size in sizes:
            n = size - done
            names = [f"ws-{i:05d}" for i in range(done, size)]
            users = [f"sc-{i // per_user:05d}" for i in range(done, size)]
            self.say(f"   step to {size}: {n} anchor Pods (untimed), then {n} WorkspaceSecrets at once")
            self.pods(ns, names, "scaling", users)
            before = op.settle()
            progress_before, own_before = op.progress(), opmetrics.client_requests(op.metrics())
            window = RequestWindow(self.kube)
            cpu = self.cpu_now()
            start = time.monotonic()
            self.create_all([(k.ws_path(ns), k.workspace_secret(name, user, name, "scaling")) for name, user in zip(names, users)])
            keys = {f"{ns}/{name}" for name in names}
            self.wait_all(ready, "ready", keys, timeout=120 + n / 2, what=f"Ready (step to {size})")
            times = ready.times("ready")
            seconds = max(times[key] for key in keys) - start
            cpu_to_ready = self.cpu_since(cpu)
            after = op.settle(timeout=120)
            cpu_to_idle = self.cpu_since(cpu)
            requests = window.close()
            progress = op.progress().minus(progress_before)
            own = {verb: v - own_before.get(verb, 0) for verb, v in opmetrics.client_requests(op.metrics()).items()}
            done = size
            written = writes(requests)
            per_new = lambda cpu_s: {_role(name): round(v / n * 1000, 2) for name, v in sorted(cpu_s.items())}  # noqa: E731
            step = {
                "objects_in_namespace": size, "objects_existing": existing_before + size, "new_objects": n,
                "seconds_to_all_ready": round(seconds, 2), "objects_per_s": round(n / seconds, 1),
                "ready_since_step_start": summary(times[key] - start for key in keys),
                "operator_cpu_ms_per_object": round((after.cpu - before.cpu) / n * 1000, 2),
                "cpu_ms_per_object_until_ready": per_new(cpu_to_ready),
                "cpu_ms_per_object_until_idle": per_new(cpu_to_idle),
                "api_requests": requests, "api_requests_per_object": per_object(requests, n),
                "api_reads_per_object": round((sum(requests.values()) - written) / n, 2),
                "api_writes_per_object": round(written / n, 2),
                "operator_looked_at_per_object": round(progress.looked_at / n, 2), "operator_progress": progress.to_json(),
                "operator_client_requests_per_object": {verb: round(v / n, 2) for verb, v in own.items() if v},
                "rss_mib": round(after.rss_mib, 1), "peak_rss_mib": _mib(op.sampler.peak_between(start, after.at) if op.sampler else after.peak_rss),
                "rss_growth_per_object_kib": round((after.rss - idle.rss) / size / 1024, 2),
                "loadavg_1m": self.load.between(start, after.at),
            }
            steps.append(step)
            self.say(f"   {size}: {step['objects_per_s']} objects/s, operator {step['operator_cpu_ms_per_object']} ms, "
                     f"kube-apiserver {step['cpu_ms_per_object_until_ready'].get('kube-apiserver')} ms per object, "
                     f"{step['api_reads_per_object']} reads + {step['api_writes_per_object']} writes per object, RSS {step['rss_mib']} MiB")
        ready.stop()
        return {"namespace": ns, "sizes": list(sizes), "objects_existing_before": existing_before,
                "rss_idle_mib": round(idle.rss_mib, 1), "steps": steps}


def _event(namespace: str, ws: WorkspaceSecret, reason: str) -> dict[str, Any]:
    """An Event of the operator's shape and size (kube/events.py)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{ws.name}.{reason.lower()}", "namespace": namespace, "labels": {c.LABEL_MANAGED_BY: c.OPERATOR_NAME}},
        "involvedObject": {"apiVersion": c.API_VERSION, "kind": c.WORKSPACE_SECRET_KIND, "name": ws.name, "namespace": namespace, "uid": ws.uid},
        "type": "Normal", "reason": reason, "message": f"{reason} for Secret {ws.secret_name!r} (benchmark baseline).",
        "source": {"component": c.OPERATOR_NAME}, "reportingComponent": c.OPERATOR_NAME, "reportingInstance": "bench",
        "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
    }


async def _loop_stall(spec: KeySpec, keys: int, *, threaded: bool) -> dict[str, float]:
    """Longest gap of a 10 ms ticker while `keys` RSA keys are generated concurrently, inline or the
    operator's way (user_keys.service._generate -> asyncio.to_thread for RSA)."""
    from workspace_secrets.user_keys.service import _generate

    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last - 0.01)
            last = now

    async def one() -> None:
        if threaded:
            await _generate(spec, "bench@wso")
        else:
            sshkeys.generate(spec, comment="bench@wso")

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(keys)))
    elapsed = time.perf_counter() - start
    done.set()
    await tick
    return {"keys": keys, "wall_s": round(elapsed, 3), "max_loop_stall_ms": round(max(gaps, default=0) * 1000, 1),
            "ticks_delivered_pct": round(100 * len(gaps) * 0.01 / max(elapsed, 1e-9), 1)}


def _role(process: str) -> str:
    """cpu_now()'s names, with every operator instance as "operator"."""
    return "operator" if process.startswith("operator ") else process


def _brief(result: dict[str, Any]) -> str:
    keys = ("objects_per_s", "ratio_to_baseline", "seconds_to_all_ready", "steady_rss_mib", "rss_delta_mib", "api_writes",
            "speedup", "error")
    parts = [f"{key}={result[key]}" for key in keys if key in result]
    for key in ("create_to_ready", "workspace_deleted_to_secret_gone", "workspace_deleted_to_token_refused"):
        if key in result and "p99_ms" in result[key]:
            parts.append(f"{key} p50={result[key]['p50_ms']}ms p99={result[key]['p99_ms']}ms")
    return ", ".join(parts) or "done"


def delete_bench_namespaces(kube: k.BenchKube, wait: bool = True) -> None:
    try:
        names = [ns["metadata"]["name"] for ns in kube.call("GET", "/api/v1/namespaces", query={"labelSelector": k.BENCH_LABEL})["items"]]
        kube.delete_namespaces(names, wait=wait)
    except KubeError as exc:
        log.warning("cleanup failed: %s", exc)
