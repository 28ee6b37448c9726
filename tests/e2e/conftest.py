"""End-to-end wiring: one Kubernetes cluster per session, a fresh namespace per test.

By default a local control plane (etcd + kube-apiserver + kube-controller-manager, see
``devcluster.controlplane``) is started once per session. To run against an existing
cluster instead (kind or anything else), set ``WSO_E2E_KUBECONFIG=<path>``, or set
``WSO_E2E_USE_KUBECONFIG=1`` to use ``$KUBECONFIG``. ``KUBECONFIG`` alone is deliberately *not*
enough: a developer's everyday KUBECONFIG often points at a real cluster, and the tests create and
delete namespaces and CRDs.

The CRDs in ``crds/`` are applied once per session. On a test failure the control plane's log tails
are attached to the report. Every test under tests/e2e is marked ``e2e``.

Secret hygiene: the session fails if any secret value of the run (any Secret in a test namespace, any
Secret the operator manages) shows up in an operator log, an Event, or the status or annotations of a
WorkspaceSecret/UserToken (``_secret_hygiene`` below; the scanner is secret_hygiene).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from workspace_secrets.api.constants import WEBHOOK_CONFIGURATION_NAME
from devcluster.controlplane import REPO_ROOT, ControlPlane, resolve_bin_dir
from backends import ADMIN_NAMESPACE, Backends, FakeGcpIam, FakeTwilio, Moto, Postgres, admin_secrets, extra_providers_yaml, providers_yaml
from helpers import tool_env, webhook_answers
from hygiene import final_sweep, operator_logs, snapshot_namespace
from operator_process import OperatorProcess, free_port

from secret_hygiene import SecretHygiene, report

E2E_DIR = Path(__file__).resolve().parent
CRD_DIR = REPO_ROOT / "crds"
NAMESPACE_PREFIX = "wso-e2e-"
#: Kubeconfig for the operator process only (e.g. a ServiceAccount token); the tests themselves stay admin.
OPERATOR_KUBECONFIG_ENV = "WSO_E2E_OPERATOR_KUBECONFIG"
#: Extra flags for that operator process, a JSON list appended last (so they win over the defaults): e.g. the
#: Helm chart's own --providers-config/--operator-namespace (tests/e2e/test_helm.py).
OPERATOR_EXTRA_ARGS_ENV = "WSO_E2E_OPERATOR_EXTRA_ARGS"

#: How long a node fixture waits for the machine's node lock (devcluster.node.NODE_WAIT_ENV; its default, 1800 s,
#: is longer than a test's timeout): a node held elsewhere gives the lock's clear error, not a pytest timeout.
os.environ.setdefault("WSO_NODE_WAIT", "300")

_BIN_DIR_KEY = pytest.StashKey[Path]()
_CLUSTER_KEY = pytest.StashKey["Cluster"]()
_STARTUP_KEY = pytest.StashKey[dict[str, float]]()
_OPERATOR_KEY = pytest.StashKey["RunningOperator"]()
_HYGIENE_KEY = pytest.StashKey["_Hygiene"]()
_HYGIENE_SUMMARY_KEY = pytest.StashKey[str]()


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call whose message includes stderr (never stdout, which may hold
    Secret data) so the failure is diagnosable from the test report."""

    def __str__(self) -> str:
        stderr = (self.stderr or "").strip()
        return f"{super().__str__()}\nstderr:\n{stderr[-4000:]}"


@dataclass
class Cluster:
    """Handle on the cluster the e2e tests run against."""

    kubeconfig: Path
    #: kubectl and helm to use; pinned builds unless an external cluster found them on PATH.
    tools: dict[str, Path]
    #: Per-session HOME-like directory for helm and kubectl caches (keeps the user's HOME clean).
    scratch: Path
    #: The local control plane, or None for an external cluster.
    control_plane: ControlPlane | None = None
    #: Names of the CRDs applied from crds/ (all Established).
    crd_names: list[str] = field(default_factory=list)

    @property
    def external(self) -> bool:
        return self.control_plane is None

    @property
    def bin_dir(self) -> Path:
        """Directory of the kubectl in use (the pinned build dir for the local control plane)."""
        return self.tools["kubectl"].parent

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (kubectl, helm, the operator) that talk to this cluster."""
        return tool_env(self.kubeconfig, self.scratch, self.bin_dir)

    def run(
        self, tool: str, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl or helm against this cluster, capturing text output.

        Callers must not print stdout of commands that read Secrets.
        """
        argv = [str(self.tools[tool]), *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, env=self.env(), timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise CommandError(result.returncode, argv, output=result.stdout, stderr=result.stderr)
        return result

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, input=input, check=check, timeout=timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, input=input, check=check, timeout=timeout)

    def api_client(self) -> k8s.ApiClient:
        """A new ApiClient for this cluster; use it as a context manager so its pool is closed."""
        return k8s_config.new_client_from_config(config_file=str(self.kubeconfig))

    def logs_tail(self, lines: int = 30) -> str:
        if self.control_plane is None:
            return "(external cluster: no control plane logs)"
        return self.control_plane.logs_tail(lines)


def _external_kubeconfig() -> Path | None:
    if os.environ.get("WSO_E2E_KUBECONFIG"):
        return Path(os.environ["WSO_E2E_KUBECONFIG"])
    if os.environ.get("WSO_E2E_USE_KUBECONFIG") == "1" and os.environ.get("KUBECONFIG"):
        return Path(os.environ["KUBECONFIG"])
    return None


def _external_tools(config: pytest.Config) -> dict[str, Path]:
    """kubectl/helm from PATH when present, else the pinned builds."""
    tools: dict[str, Path] = {}
    for name in ("kubectl", "helm"):
        found = shutil.which(name)
        tools[name] = Path(found) if found else _bin_dir(config) / name
    return tools


def _bin_dir(config: pytest.Config) -> Path:
    if _BIN_DIR_KEY not in config.stash:
        config.stash[_BIN_DIR_KEY] = resolve_bin_dir()
    return config.stash[_BIN_DIR_KEY]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build (or locate) the binaries before any test runs.

    A cold ``tools/build-tools.sh`` takes many minutes; done inside the session fixture it would count
    against the first test's pytest-timeout and fail it with a misleading timeout.
    """
    config = session.config
    if config.option.collectonly or _external_kubeconfig() is not None:
        return
    if any(item.get_closest_marker("e2e") for item in session.items):
        _bin_dir(config)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Attach the control plane's log tails to the report of a failed e2e test."""
    report: pytest.TestReport = yield
    cluster = item.config.stash.get(_CLUSTER_KEY, None)
    if report.failed and cluster is not None and "cluster" in getattr(item, "fixturenames", ()):
        report.sections.append(("control plane logs (tail)", cluster.logs_tail()))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # The cluster is gone by now (session teardown precedes the summary), hence the separate key.
    summary = terminalreporter.config.stash.get(_HYGIENE_SUMMARY_KEY, None)
    if summary:
        terminalreporter.write_line(summary)
    timings = terminalreporter.config.stash.get(_STARTUP_KEY, None)
    if timings:
        phases = ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in timings.items())
        terminalreporter.write_line(f"local control plane startup: {phases}")


def _apply_crds(cluster: Cluster) -> list[str]:
    """Server-side apply crds/*.yaml and wait until every CRD is Established; return their names."""
    files = sorted([*CRD_DIR.glob("*.yaml"), *CRD_DIR.glob("*.yml")])
    if not files:
        return []
    args = ["apply", "--server-side", "--force-conflicts", "--field-manager=wso-e2e", "-o", "name"]
    for path in files:
        args += ["-f", str(path)]
    applied = cluster.kubectl(*args).stdout.split()
    crds = [name for name in applied if name.startswith("customresourcedefinition")]
    if crds:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", *crds)
    return [name.split("/", 1)[1] for name in crds]


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's cluster: the external one if configured, else a local control plane."""
    config = request.config
    scratch = tmp_path_factory.mktemp("cluster-home")
    external = _external_kubeconfig()
    plane: ControlPlane | None = None
    if external is not None:
        handle = Cluster(kubeconfig=external, tools=_external_tools(config), scratch=scratch)
    else:
        bin_dir = _bin_dir(config)
        plane = ControlPlane(bin_dir=bin_dir).start()
        config.stash[_STARTUP_KEY] = dict(plane.timings)
        handle = Cluster(
            kubeconfig=plane.kubeconfig,
            tools={name: bin_dir / name for name in ("kubectl", "helm")},
            scratch=scratch,
            control_plane=plane,
        )
    config.stash[_CLUSTER_KEY] = handle
    try:
        handle.crd_names = _apply_crds(handle)
        yield handle
    finally:
        del config.stash[_CLUSTER_KEY]
        if plane is not None:
            plane.stop()


def _wait_for_default_service_account(api: k8s.ApiClient, namespace: str, timeout: float = 90) -> None:
    """Pods are rejected until the namespace's `default` ServiceAccount exists; wait for it so tests
    that create workloads do not depend on controller back-off timing (after a test restarts the API server
    and etcd, the controller manager can take well over 30 s to come back on a busy machine)."""
    core = k8s.CoreV1Api(api)
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            return
        except ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def create_test_namespace(cluster: Cluster) -> str:
    """A fresh namespace ``wso-e2e-<random>`` with its default ServiceAccount."""
    name = f"{NAMESPACE_PREFIX}{secrets.token_hex(3)}"
    with cluster.api_client() as api:
        k8s.CoreV1Api(api).create_namespace(
            {"metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "wso-e2e"}}}
        )
        _wait_for_default_service_account(api, name)
    return name


def delete_test_namespace(cluster: Cluster, name: str, config: pytest.Config) -> None:
    """Record the namespace for the secret-hygiene check, then delete it without waiting."""
    with cluster.api_client() as api:
        hygiene = config.stash.get(_HYGIENE_KEY, None)
        if hygiene is not None:
            try:
                snapshot_namespace(hygiene.scanner, api, name)
            except Exception as exc:  # noqa: BLE001 - reported by the session check, never swallowed
                hygiene.errors.append(f"snapshot of {name}: {type(exc).__name__}: {exc}")
        try:
            k8s.CoreV1Api(api).delete_namespace(name, propagation_policy="Background")
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace ``wso-e2e-<random>``; deleted afterwards without waiting for termination."""
    name = create_test_namespace(cluster)
    try:
        yield name
    finally:
        delete_test_namespace(cluster, name, request.config)


@pytest.fixture(scope="module")
def module_namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """Like `namespace`, shared by the tests of one module (e.g. a table of cases)."""
    name = create_test_namespace(cluster)
    try:
        yield name
    finally:
        delete_test_namespace(cluster, name, request.config)


@dataclass
class _Hygiene:
    scanner: SecretHygiene = field(default_factory=SecretHygiene)
    errors: list[str] = field(default_factory=list)


@pytest.fixture(scope="session", autouse=True)
def _secret_hygiene(
    request: pytest.FixtureRequest, cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Fail the session if any secret value of the run appears outside Secret data.

    Needles: the values of every Secret in every test namespace (recorded before the namespace is
    deleted) and of every Secret the operator manages. Haystacks: every operator log file under the
    session's temp dir, the Events of test namespaces, and the status, labels and annotations (kopf's
    bookkeeping included) of every WorkspaceSecret/UserToken. See secret_hygiene.
    Set up before, and torn down after, the operator fixture, so its log is complete when scanned.
    """
    hygiene = _Hygiene()
    request.config.stash[_HYGIENE_KEY] = hygiene
    yield
    del request.config.stash[_HYGIENE_KEY]
    with cluster.api_client() as api:
        final_sweep(hygiene.scanner, api, NAMESPACE_PREFIX)
    logs = operator_logs(tmp_path_factory.getbasetemp())
    leaks = hygiene.scanner.find_leaks(logs)
    request.config.stash[_HYGIENE_SUMMARY_KEY] = (
        f"secret hygiene: {hygiene.scanner.needle_count} secret value forms searched in "
        f"{hygiene.scanner.haystack_count} objects and {len(logs)} operator log file(s): {len(leaks)} leak(s)"
    )
    problems = [*hygiene.errors]
    if leaks:
        problems.append(report(leaks))
    if problems:
        pytest.fail("secret hygiene check failed:\n" + "\n".join(problems), pytrace=False)


@dataclass
class RunningOperator:
    """The operator process the e2e tests share, and a kubectl argv bound to the test cluster."""

    process: OperatorProcess
    kubectl: list[str]
    #: Whether it serves the pod-injection webhook (always on the local control plane; on an external
    #: cluster only with WSO_E2E_WEBHOOK_HOST, an address of this machine the cluster's API server reaches).
    webhook: bool = False


@pytest.fixture(scope="session")
def credential_backends(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """Provider servers for dynamic credentials, the admin credential Secrets in the operator's namespace,
    and the operator's provider configuration file."""
    workdir = tmp_path_factory.mktemp("backends")
    moto = Moto.start(workdir)
    postgres = gcp = twilio = None
    try:
        postgres = Postgres.start(workdir)
        gcp = FakeGcpIam().start()
        gcp_admin_key = gcp.bootstrap_admin()
        twilio = FakeTwilio().start()
        secrets_ = {"aws-admin": {"AWS_ACCESS_KEY_ID": moto.admin_key_id, "AWS_SECRET_ACCESS_KEY": moto.admin_secret},
                    **admin_secrets(postgres, gcp_admin_key, twilio)}
        with cluster.api_client() as api:
            core = k8s.CoreV1Api(api)
            try:
                core.create_namespace({"metadata": {"name": ADMIN_NAMESPACE}})
            except ApiException as exc:
                if exc.status != 409:
                    raise
            for name, string_data in secrets_.items():
                secret = {"metadata": {"name": name}, "stringData": string_data}
                try:
                    core.create_namespaced_secret(ADMIN_NAMESPACE, secret)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    core.replace_namespaced_secret(name, ADMIN_NAMESPACE, secret)
        config_path = workdir / "providers.yaml"
        config_path.write_text(providers_yaml(moto) + extra_providers_yaml(postgres, gcp, twilio))
        yield Backends(config_path, moto, postgres=postgres, gcp=gcp, twilio=twilio)
    finally:
        for backend in (twilio, gcp, postgres, moto):
            if backend is not None:
                backend.stop()


@pytest.fixture(scope="session")
def wso_operator(
    request: pytest.FixtureRequest, cluster: Cluster, credential_backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningOperator]:
    """The real operator, run as a child process (see operator_process.py). Tests that stop it must
    restart it before they return; the fixture restarts it anyway if it is found dead. A (re)start
    returns once the API server reaches its admission webhook.

    ``WSO_E2E_OPERATOR_KUBECONFIG`` gives the operator its own kubeconfig (the tests keep the admin one):
    tests/e2e/test_helm.py points it at a token of the Helm chart's ServiceAccount, so the suite proves
    the chart's RBAC is enough."""
    operator_kubeconfig = os.environ.get(OPERATOR_KUBECONFIG_ENV) or str(cluster.kubeconfig)
    log_dir = tmp_path_factory.mktemp("operator")
    webhook_host = "127.0.0.1" if not cluster.external else os.environ.get("WSO_E2E_WEBHOOK_HOST")
    args: list[str] = []
    ready = None
    api_client = cluster.api_client()
    if webhook_host:
        # A fixed port and certificate directory across restarts, as a Deployment with a Service has.
        args = ["--webhook", "--webhook-host", webhook_host, "--webhook-port", str(free_port()),
                "--webhook-cert-dir", str(log_dir / "webhook-certs")]
        if cluster.external:
            args += ["--webhook-listen-address", "0.0.0.0"]
        ready = lambda: webhook_answers(api_client)  # noqa: E731
    args += ["--providers-config", str(credential_backends.config_path), "--operator-namespace", ADMIN_NAMESPACE]
    args += json.loads(os.environ.get(OPERATOR_EXTRA_ARGS_ENV) or "[]")
    process = OperatorProcess(operator_kubeconfig, log_dir, *args, ready=ready)
    process.start()
    running = RunningOperator(process, [str(cluster.tools["kubectl"]), "--kubeconfig", str(cluster.kubeconfig)],
                              webhook=bool(webhook_host))
    request.config.stash[_OPERATOR_KEY] = running
    try:
        yield running
    finally:
        del request.config.stash[_OPERATOR_KEY]
        process.stop()
        if webhook_host:
            # The webhook is persistent (fail-closed for labelled pods): do not leave it behind.
            cluster.kubectl("delete", "mutatingwebhookconfiguration", WEBHOOK_CONFIGURATION_NAME, "--ignore-not-found", check=False)
        api_client.close()


@pytest.fixture
def shared_operator_paused(request: pytest.FixtureRequest) -> Iterator[None]:
    """For tests that run an operator of their own (e.g. with other credentials): stop the session's
    shared operator, if one is running, so it cannot do the work in their place; restart it afterwards."""
    running = request.config.stash.get(_OPERATOR_KEY, None)
    active = running is not None and running.process.process is not None and running.process.process.poll() is None
    if active:
        running.process.stop()
    try:
        yield
    finally:
        if active:
            running.process.start()


@pytest.fixture(autouse=True)
def _operator_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "wso_operator" in request.fixturenames:
        running = request.getfixturevalue("wso_operator")
        if running.process.process is None or running.process.process.poll() is not None:
            running.process.start()
