"""The unit tests' in-memory API server (tests/fakes/kube.py) answers as the real one: every scenario of
tests/fakes/kube_contract.py runs against the fake and against the control plane through the operator's own
Kube client, and the observations must be equal. A difference means the fake is wrong, and with it whatever
unit test relies on that behaviour."""

from __future__ import annotations

import asyncio

import pytest
from fakes.kube import FakeKube
from fakes.kube_contract import SCENARIOS

from workspace_secrets.runtime.kube import Kube


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_the_fake_answers_as_the_api_server(name, cluster, namespace, shared_operator_paused):
    scenario = SCENARIOS[name]
    fake = FakeKube()
    try:
        faked = asyncio.run(scenario(fake, namespace))
    finally:
        fake.close()
    kube = Kube.from_environment(kubeconfig=str(cluster.kubeconfig))
    try:
        real = asyncio.run(scenario(kube, namespace))
    finally:
        kube.close()
    assert faked == real
