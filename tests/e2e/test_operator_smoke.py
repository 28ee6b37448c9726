"""The operator's entry point runs in-process under kopf.testing.KopfRunner against the cluster and stops
cleanly -- the way kopf's own e2e tests exercise an operator."""

from __future__ import annotations

import os
import time

from helpers import Api, wait_for
from kopf.testing import KopfRunner


def test_operator_runs_under_kopfrunner_and_stops_cleanly(cluster, namespace, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    api = Api(cluster.api_client())
    args = ["run", "--standalone", "--namespace", namespace, "--liveness", "", "-m", "workspace_secrets.handlers"]
    # kopf's own CLI (`kopf run -m ...`) loads our handler modules; our login and settings come with them.
    with KopfRunner(args, timeout=60) as runner:
        api.create_ws(namespace, "smoke", {"user": "sam", "workspaceRef": {"kind": "Pod", "name": "nope"}})
        wait_for(lambda: (api.condition(namespace, "smoke") or {}).get("status") == "True", timeout=30, what="Ready")
        time.sleep(0.5)
    assert runner.exit_code == 0, runner.output[-2000:]
    assert runner.exception is None
    assert "Activity 'shutdown' succeeded" in runner.output or "shutdown" in runner.output
    assert os.environ["KUBECONFIG"] == str(cluster.kubeconfig)
