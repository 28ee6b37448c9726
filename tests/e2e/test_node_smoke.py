"""Smoke tests of the local cluster's node (tools/devcluster/node.py): pods really run, and stay on the machine.

If these fail, the real-node e2e failures (test_real_node.py) are about the environment, not the operator.

* The node registers and is Ready, at the node IP (on the launcher's bridge, not loopback).
* A pod of the workspace image (built from Debian packages, imported without a registry) runs a command; its
  output is read through the API server's `logs` and `exec` paths (API server -> kubelet, verified TLS).
* A pod reaches the API server through the `kubernetes` Service's ClusterIP (kube-proxy) with its mounted
  ServiceAccount token, verifying the serving certificate with the mounted CA.
* A pod reaches a server on the node IP, and cannot reach an address off the machine (a documentation address,
  TEST-NET-2, on none of this machine's networks): the guard chain's drop counter shows the packet was stopped
  on the machine. Nor does it reach a server listening on 0.0.0.0 through another of the host's addresses.
* Stopping the node puts the machine back (bridge, iptables chains, sysctls, mounts, cgroups, work directory), and
  a node whose launcher was killed is torn down by the next start.

Needs root and the Debian packages of tools/install-system-deps.sh (`make e2e` installs them).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import images, network, node
from devcluster.controlplane import (
    KUBERNETES_SERVICE_IP,
    ControlPlane,
    listening_addresses,
    pinned_versions,
    resolve_bin_dir,
)
from devcluster.host import mountpoints_under, read_sysctl
from helpers import wait_for

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the local node needs root"),
    pytest.mark.timeout(600),
]

WORKSPACE_IMAGE = images.WORKSPACE_IMAGE


class NodeCluster:
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.kubectl_argv = [str(plane.bin_dir / "kubectl"), "--kubeconfig", str(plane.kubeconfig)]

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run([*self.kubectl_argv, *args], input=input, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def json(self, *args: str) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json"))


def _pod(name: str, script: str, *, token: bool = False) -> str:
    return json.dumps({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "automountServiceAccountToken": token,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": WORKSPACE_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/bash", "-c", script],
            }],
        },
    })


def _run_pod(cluster: NodeCluster, namespace: str, name: str, script: str, *, token: bool = False,
             timeout: float = 90) -> tuple[str, str]:
    """Run a pod to completion; its phase and log (read through the API server from the kubelet)."""
    cluster.kubectl("-n", namespace, "apply", "-f", "-", input=_pod(name, script, token=token))
    phase = wait_for(
        lambda: cluster.json("-n", namespace, "get", "pod", name)["status"].get("phase") in ("Succeeded", "Failed")
        and cluster.json("-n", namespace, "get", "pod", name)["status"]["phase"],
        timeout=timeout, what=f"pod {name} to finish",
    )
    return phase, cluster.kubectl("-n", namespace, "logs", name)


@pytest.fixture(scope="module")
def node_cluster() -> Iterator[NodeCluster]:
    plane = ControlPlane(bin_dir=resolve_bin_dir(), node=True)
    plane.start()
    try:
        plane.load_image("workspace")
        print(f"node cluster started: {', '.join(f'{k} {v:.1f}s' for k, v in plane.timings.items())}")
        yield NodeCluster(plane)
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def node_namespace(node_cluster: NodeCluster) -> str:
    name = "node-smoke"
    node_cluster.kubectl("create", "namespace", name)
    wait_for(lambda: node_cluster.kubectl("-n", name, "get", "serviceaccount", "default", check=False),
          timeout=30, what="the default ServiceAccount")
    return name


def test_node_is_ready_at_the_node_ip(node_cluster: NodeCluster) -> None:
    found = node_cluster.json("get", "node", node.NODE_NAME)
    conditions = {c["type"]: c["status"] for c in found["status"]["conditions"]}
    assert conditions["Ready"] == "True", conditions
    addresses = {a["type"]: a["address"] for a in found["status"]["addresses"]}
    assert addresses["InternalIP"] == node.NODE_IP == node_cluster.plane.node_ip
    info = found["status"]["nodeInfo"]
    assert info["kubeletVersion"] == pinned_versions()["K8S_VERSION"]
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    # The API server listens on the node IP (on the launcher's bridge); every process on it or on loopback only.
    assert node_cluster.plane.server.startswith(f"https://{node.NODE_IP}:")
    for proc in node_cluster.plane.processes:
        addresses = listening_addresses(proc.pid)
        assert addresses, f"{proc.name} listens nowhere?"
        for host, port in addresses:
            assert ipaddress.ip_address(host).is_loopback or host == node.NODE_IP, f"{proc.name}: {host}:{port}"


def test_a_pod_runs_and_its_output_is_read_through_logs_and_exec(node_cluster: NodeCluster, node_namespace: str) -> None:
    ns = node_namespace
    node_cluster.kubectl("-n", ns, "apply", "-f", "-", input=_pod(
        "runner", "echo started-$(id -u)-$(cat /etc/debian_version | cut -d. -f1); exec sleep 3600"))
    wait_for(lambda: node_cluster.json("-n", ns, "get", "pod", "runner")["status"].get("phase") == "Running",
          timeout=90, what="pod runner to run")
    pod = node_cluster.json("-n", ns, "get", "pod", "runner")
    assert pod["spec"]["nodeName"] == node.NODE_NAME  # placed by the scheduler
    assert re.fullmatch(r"10\.202\.0\.\d+", pod["status"]["podIP"]), pod["status"]["podIP"]
    logs = wait_for(lambda: node_cluster.kubectl("-n", ns, "logs", "runner"), timeout=30, what="the pod's log")
    assert logs.strip() == "started-1000-12"  # the image's user (coder, 1000), Debian 12
    out = node_cluster.kubectl("-n", ns, "exec", "runner", "--", "sh", "-c", "echo exec-$((6 * 7)); hostname")
    assert out.split() == ["exec-42", "runner"]


def test_a_pod_reaches_the_api_server_through_the_cluster_ip_with_its_token(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    script = textwrap.dedent(f"""\
        set -eu
        sa=/var/run/secrets/kubernetes.io/serviceaccount
        echo "service=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
        curl -sS --fail --max-time 10 --cacert $sa/ca.crt -H "Authorization: Bearer $(cat $sa/token)" \\
          -H 'Content-Type: application/json' -X POST \\
          -d '{{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}}' \\
          https://{KUBERNETES_SERVICE_IP}/apis/authentication.k8s.io/v1/selfsubjectreviews
        """)
    phase, log = _run_pod(node_cluster, node_namespace, "api-client", script, token=True)
    assert phase == "Succeeded", log
    first, _, body = log.partition("\n")
    assert first == f"service={KUBERNETES_SERVICE_IP}:443"
    review = json.loads(body)
    assert review["status"]["userInfo"]["username"] == f"system:serviceaccount:{node_namespace}:default"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"hello-from-the-node-ip\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _drops(chain: str) -> int:
    """Packets the guard chain dropped that came from the pods' bridge to any other destination."""
    out = subprocess.run(["iptables", "-w", "5", "-t", "mangle", "-L", chain, "-v", "-x", "-n"],
                         capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        cols = line.split()
        if (len(cols) >= 9 and cols[2] == "DROP" and cols[5] == network.BRIDGE and cols[6] == "*"
                and cols[8] == "0.0.0.0/0"):
            return int(cols[0])
    raise AssertionError(f"no drop rule for packets from {network.BRIDGE} in:\n{out}")


#: TEST-NET-2 (RFC 5737): a documentation address, on none of this machine's networks (eth0 is in TEST-NET-1).
OFF_MACHINE: str = "198.51.100.1"


def _host_address() -> str:
    """One of the host's own IPv4 addresses other than loopback and the node's (eth0's)."""
    links = json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                                      check=True).stdout or "[]")
    for link in links:
        if link.get("ifname") in ("lo", network.BRIDGE):
            continue
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet":
                return addr["local"]
    pytest.skip("this machine has no IPv4 address besides loopback and the node's")


def test_a_pod_reaches_the_node_ip_but_nothing_off_the_machine(node_cluster: NodeCluster, node_namespace: str) -> None:
    server = http.server.ThreadingHTTPServer((node.NODE_IP, 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        assert not any(ipaddress.ip_address(OFF_MACHINE) in ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}",
                                                                                   strict=False)
                       for link in json.loads(subprocess.run(["ip", "-j", "addr", "show"], capture_output=True,
                                                             text=True, check=True).stdout)
                       for a in link.get("addr_info", []) if a.get("family") == "inet"), "TEST-NET-2 is local here"
        outside = [OFF_MACHINE]
        before = _drops(network.FORWARD_CHAIN)
        script = textwrap.dedent(f"""\
            curl -sS --max-time 10 http://{node.NODE_IP}:{port}/
            for addr in {' '.join(outside)}; do
              if curl -sS --connect-timeout 3 --max-time 4 -o /dev/null http://$addr/ 2>/dev/null; then
                echo "reached $addr"
              else
                echo "unreachable $addr"
              fi
            done
            """)
        phase, log = _run_pod(node_cluster, node_namespace, "egress", script)
    finally:
        server.shutdown()
        server.server_close()
    assert phase == "Succeeded", log
    assert log.splitlines() == ["hello-from-the-node-ip", *(f"unreachable {a}" for a in outside)]
    # Stopped by the guard on this machine (not merely unanswered somewhere else).
    assert _drops(network.FORWARD_CHAIN) > before


def test_a_pod_does_not_reach_the_hosts_other_addresses(node_cluster: NodeCluster, node_namespace: str) -> None:
    """A server on 0.0.0.0 (as many development servers are) is not the pods' to reach through eth0's address."""
    host = _host_address()
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        before = _drops(network.INPUT_CHAIN)
        script = textwrap.dedent(f"""\
            curl -sS --max-time 10 http://{node.NODE_IP}:{port}/
            if curl -sS --connect-timeout 3 --max-time 4 -o /dev/null http://{host}:{port}/ 2>/dev/null; then
              echo "reached {host}"
            else
              echo "unreachable {host}"
            fi
            """)
        phase, log = _run_pod(node_cluster, node_namespace, "host-probe", script)
    finally:
        server.shutdown()
        server.server_close()
    assert phase == "Succeeded", log
    # The same listener answers on the node IP: only the other address is refused.
    assert log.splitlines() == ["hello-from-the-node-ip", f"unreachable {host}"]
    assert _drops(network.INPUT_CHAIN) > before


def test_a_service_reaches_its_pod_from_a_pod_and_from_the_api_server(
    node_cluster: NodeCluster, node_namespace: str
) -> None:
    """ClusterIP -> pod IP (kube-proxy's DNAT, forwarding on the bridge only) and API server -> pod IP (how it
    calls a webhook behind a Service with --enable-aggregator-routing)."""
    ns = node_namespace
    server = json.loads(_pod("web", "mkdir -p /tmp/www && echo served-by-web > /tmp/www/index.html && "
                                    "exec python3 -m http.server 8080 --directory /tmp/www"))
    server["metadata"]["labels"] = {"app": "web"}
    server["spec"]["restartPolicy"] = "Always"
    node_cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps(server))
    node_cluster.kubectl("-n", ns, "apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    wait_for(lambda: node_cluster.json("-n", ns, "get", "pod", "web")["status"].get("podIP")
          and node_cluster.kubectl("-n", ns, "get", "endpointslices", "-l", "kubernetes.io/service-name=web",
                                   "-o", "jsonpath={.items[*].endpoints[*].conditions.ready}") == "true",
          timeout=90, what="the web Service's endpoint to be ready")
    cluster_ip = node_cluster.json("-n", ns, "get", "service", "web")["spec"]["clusterIP"]
    # kube-proxy programs the Service's rules a moment after the endpoint is ready: curl retries, and its
    # messages about the refused attempts go to a file, so the log holds only what the Service answered.
    phase, log = _run_pod(node_cluster, ns, "web-client",
                          f"curl -sS --retry 5 --retry-all-errors --max-time 5 http://{cluster_ip}/ 2>/tmp/curl.err"
                          " || { cat /tmp/curl.err; exit 1; }")
    assert (phase, log.strip()) == ("Succeeded", "served-by-web"), log
    via_api = node_cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/services/web:http/proxy/")
    assert via_api.strip() == "served-by-web"


def test_stop_puts_the_machine_back(node_cluster: NodeCluster, node_namespace: str) -> None:
    """Runs last in this module: stops the node while a pod runs (test_a_pod_runs... left it running)."""
    plane = node_cluster.plane
    assert node_cluster.json("-n", node_namespace, "get", "pod", "runner")["status"]["phase"] == "Running"
    workdir = plane.workdir
    saved = node.NodeState.from_record(plane._require()).sysctls
    run_id = plane._require().run_id
    plane.stop()
    assert not workdir.exists()
    assert not mountpoints_under(workdir)
    assert not network.bridge_exists()
    assert network.kube_chains() == []
    assert {name: read_sysctl(name) for name in saved} == saved
    assert not list(Path("/run/netns").glob("cni-*"))  # (an absent directory globs to nothing)
    assert not list(Path("/sys/fs/cgroup").glob(f"*/{node.CGROUP_PARENT}/*/cgroup.procs"))
    # Our run no longer holds the machine (another launcher waiting for the lock may have claimed it since).
    left = node._read_record(node.machine_dir() / "node.json")
    assert left is None or left.run_id != run_id


_LAUNCHER = """
import sys
from devcluster.controlplane import ControlPlane
plane = ControlPlane(bin_dir=sys.argv[1], node=True).start()
print(plane.workdir, " ".join(str(p.pid) for p in plane.processes), flush=True)
sys.stdin.read()  # until killed
"""


def test_a_killed_launchers_node_is_torn_down_by_the_next_start() -> None:
    bin_dir = resolve_bin_dir()
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(bin_dir)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        line = launcher.stdout.readline()
        assert line, "the launcher did not start its node"
        old_workdir, *pids = line.split()
    finally:
        launcher.send_signal(signal.SIGKILL)  # its servers, the kubelet and containerd keep running
        launcher.wait()
    plane = ControlPlane(bin_dir=bin_dir, node=True)
    try:
        plane.start()  # does not wait for the dead launcher's node: tears it down first
        assert not Path(old_workdir).exists()
        for pid in map(int, pids):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if Path(f"/proc/{pid}").exists() else b""
            assert old_workdir.encode() not in cmdline, f"pid {pid} of the killed run still runs"
        assert plane.healthy()
    finally:
        plane.stop()
    assert not network.bridge_exists()
