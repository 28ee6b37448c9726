"""The node's network: one bridge the launcher creates, holding the node IP and the pods' gateway.

Nothing leaves the machine:

* The node IP is a /32 on the launcher's bridge ``wso-br0`` (not loopback: the kubelet and the API server's
  exec/logs path need a real address; not eth0: nothing is exposed to the network). This kernel has no
  ``dummy`` driver, so the bridge, which exists anyway for the pods, carries it. The API server, the kubelet and
  the test backends listen there; pods reach it through their default route (the bridge's gateway address).
* Pods get addresses of :data:`POD_CIDR` on the bridge from the Debian CNI plugins (``bridge`` with
  ``isGateway: false``, so the plugin never turns on ``net.ipv4.ip_forward``; ``host-local`` IPAM with its
  state in the work directory). No masquerading anywhere.
* Forwarding is enabled on the bridge only (``net/ipv4/conf/wso-br0/forwarding``; the machine-wide switch stays
  as it is), so a pod can reach another pod through a Service; two mangle-table chains, ahead of everything
  kube-proxy installs, drop every forwarded packet that enters or leaves through another interface, and every
  packet for the node's addresses (or from the pod range) that arrives from anywhere but loopback or the
  bridge (the kernel would otherwise accept them on eth0: "weak host" model). From the bridge, the host accepts
  only packets for the node IP and the pods' gateway: pods do not reach what the host serves on its other
  addresses (eth0's, through a 0.0.0.0 listener).
* The Service range (pki.SERVICE_CLUSTER_IP_RANGE) is checked unused and routed to the bridge while the node
  runs: a ClusterIP kube-proxy has not (yet) redirected stays on the machine instead of following the default
  route.
* IPv6 is disabled on the bridge.

Everything here is created by :func:`setup` and removed by :func:`teardown`, which is idempotent and is also run
before a setup (a killed launcher's leftovers). Both run only while the machine's node lock is held (node.py).
"""

from __future__ import annotations

import ipaddress
import json
import shlex
import subprocess
from typing import Final

from .binaries import SYSTEM_BINARIES
from .errors import ControlPlaneError
from .host import write_sysctl
from .pki import SERVICE_CLUSTER_IP_RANGE

#: The node's address, on the bridge. Private, unlikely to be in use; checked at setup.
NODE_IP: Final = "10.201.0.1"
#: The pods' addresses, and their gateway (the bridge's address in that range).
POD_CIDR: Final = "10.202.0.0/24"
POD_GATEWAY: Final = "10.202.0.1"
BRIDGE: Final = "wso-br0"
#: The CNI network's name (libcni caches results as /var/lib/cni/results/<network>-<container>-<ifname>).
CNI_NETWORK: Final = "wso-pods"
INPUT_CHAIN: Final = "WSO-NODE-INPUT"
FORWARD_CHAIN: Final = "WSO-NODE-FORWARD"
_TABLE: Final = "mangle"
_COMMENT: Final = "workspace-secrets-operator local node"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([SYSTEM_BINARIES["ip"], *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ControlPlaneError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _iptables(*args: str, check: bool = True, tool: str = "iptables") -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock (kube-proxy holds it while it syncs).
    result = subprocess.run([SYSTEM_BINARIES[tool], "-w", "5", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise ControlPlaneError(f"{tool} {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def bridge_exists() -> bool:
    return _ip("link", "show", "dev", BRIDGE, check=False).returncode == 0


def check_addresses_free() -> None:
    """Refuse to start when the node's addresses, the pod range or the Service range are already used here."""
    ours = [ipaddress.ip_network(f"{NODE_IP}/32"), ipaddress.ip_network(POD_CIDR),
            ipaddress.ip_network(SERVICE_CLUSTER_IP_RANGE)]
    clashes: list[str] = []
    for link in json.loads(_ip("-j", "addr", "show").stdout or "[]"):
        if link.get("ifname") == BRIDGE:
            continue
        for addr in link.get("addr_info", []):
            if addr.get("family") != "inet":
                continue
            net = ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            if any(net.overlaps(o) for o in ours):
                clashes.append(f"{addr['local']}/{addr['prefixlen']} on {link['ifname']}")
    for route in json.loads(_ip("-j", "route", "show").stdout or "[]"):
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("dev") == BRIDGE:
            continue
        net = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        if any(net.overlaps(o) for o in ours):
            clashes.append(f"route {dst} via {route.get('dev')}")
    if clashes:
        raise ControlPlaneError(
            f"the node's addresses ({NODE_IP}, {POD_CIDR}, {SERVICE_CLUSTER_IP_RANGE}) clash with this machine's: {'; '.join(clashes)}"
        )


def _input_rules() -> list[list[str]]:
    return [
        ["-i", "lo", "-j", "RETURN"],
        # From the pods: the node IP (API server, kubelet, test backends) and the gateway only.
        ["-i", BRIDGE, "-d", NODE_IP, "-j", "RETURN"],
        ["-i", BRIDGE, "-d", POD_GATEWAY, "-j", "RETURN"],
        ["-i", BRIDGE, "-j", "DROP"],
        ["-d", NODE_IP, "-j", "DROP"],
        ["-d", POD_GATEWAY, "-j", "DROP"],
        ["-s", POD_CIDR, "-j", "DROP"],
    ]


def _forward_rules() -> list[list[str]]:
    return [
        ["-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN"],  # pod -> Service -> pod: stays on the bridge
        ["-i", BRIDGE, "-j", "DROP"],  # pods -> anywhere else (eth0: off the machine)
        ["-o", BRIDGE, "-j", "DROP"],  # anywhere else -> pods
    ]


def setup() -> None:
    """Create the bridge with the node IP and the pods' gateway, and the guard chains. Call :func:`teardown`
    first (it clears a previous run's leftovers)."""
    check_addresses_free()
    _ip("link", "add", BRIDGE, "type", "bridge")
    write_sysctl(f"net/ipv6/conf/{BRIDGE}/disable_ipv6", "1")
    _ip("addr", "add", f"{POD_GATEWAY}/{ipaddress.ip_network(POD_CIDR).prefixlen}", "dev", BRIDGE)
    _ip("addr", "add", f"{NODE_IP}/32", "dev", BRIDGE)
    if not write_sysctl(f"net/ipv4/conf/{BRIDGE}/forwarding", "1"):
        raise ControlPlaneError(f"could not enable forwarding on {BRIDGE}")
    _ip("link", "set", BRIDGE, "up")
    # Goes with the bridge at teardown.
    _ip("route", "add", SERVICE_CLUSTER_IP_RANGE, "dev", BRIDGE, "src", POD_GATEWAY)
    for chain, hook, rules in ((INPUT_CHAIN, "INPUT", _input_rules()), (FORWARD_CHAIN, "FORWARD", _forward_rules())):
        _iptables("-t", _TABLE, "-N", chain)
        for rule in rules:
            _iptables("-t", _TABLE, "-A", chain, *rule)
        _iptables("-t", _TABLE, "-I", hook, "1", "-m", "comment", "--comment", _COMMENT, "-j", chain)


def _delete_jumps(hook: str, chain: str) -> None:
    for _ in range(20):  # a killed run may have left more than one jump
        if _iptables("-t", _TABLE, "-D", hook, "-m", "comment", "--comment", _COMMENT, "-j", chain, check=False).returncode:
            break
    for _ in range(20):
        if _iptables("-t", _TABLE, "-D", hook, "-j", chain, check=False).returncode:
            break


def teardown() -> list[str]:
    """Remove the guard chains and the bridge (its addresses and per-interface settings go with it).

    Idempotent. Returns what could not be removed.
    """
    problems: list[str] = []
    for chain, hook in ((INPUT_CHAIN, "INPUT"), (FORWARD_CHAIN, "FORWARD")):
        _delete_jumps(hook, chain)
        if _iptables("-t", _TABLE, "-n", "-L", chain, check=False).returncode == 0:
            _iptables("-t", _TABLE, "-F", chain, check=False)
            if _iptables("-t", _TABLE, "-X", chain, check=False).returncode:
                problems.append(f"iptables chain {_TABLE}/{chain}")
    if bridge_exists():
        result = _ip("link", "del", BRIDGE, check=False)
        if result.returncode:
            problems.append(f"bridge {BRIDGE}: {result.stderr.strip()}")
    return problems


def cleanup_kube_proxy_remains(kube_proxy: str | None) -> list[str]:
    """Remove what kube-proxy and the kubelet leave in the host's tables.

    ``kube-proxy --cleanup`` removes its service chains; ``KUBE-FIREWALL`` and the kubelet's
    ``KUBE-KUBELET-CANARY``/``KUBE-IPTABLES-HINT`` survive it. Called only for a node that was ours (our bridge
    exists or our record says its network was up); a node never starts while ``KUBE-*`` chains of another
    kube-proxy exist (:func:`foreign_kube_chains`), so the chains are the node's.
    """
    problems: list[str] = []
    if kube_proxy:
        result = subprocess.run([kube_proxy, "--cleanup", "--v=0"], capture_output=True, text=True, check=False)
        if result.returncode:
            problems.append(f"kube-proxy --cleanup: exit {result.returncode}")
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            problems += _remove_kube_chains(tool, table)
    return problems


def _remove_kube_chains(tool: str, table: str) -> list[str]:
    listing = _iptables("-t", table, "-S", check=False, tool=tool)
    if listing.returncode:
        return []
    chains = [line.split()[1] for line in listing.stdout.splitlines() if line.startswith("-N KUBE-")]
    # Jumps into them from the built-in chains first, then the chains themselves.
    for line in listing.stdout.splitlines():
        words = shlex.split(line)
        if words[:1] == ["-A"] and not words[1].startswith("KUBE-") and "-j" in words:
            if words[words.index("-j") + 1].startswith("KUBE-"):
                _iptables("-t", table, "-D", *words[1:], check=False, tool=tool)
    for chain in chains:
        _iptables("-t", table, "-F", chain, check=False, tool=tool)
    return [f"{tool} chain {table}/{chain}" for chain in chains
            if _iptables("-t", table, "-X", chain, check=False, tool=tool).returncode]


def foreign_kube_chains() -> list[str]:
    """Before a start, with no node of ours recorded and no bridge: ``KUBE-*`` chains belong to another
    kube-proxy/kubelet (k3s, kubeadm) that the node would break. Empty when there are none."""
    if bridge_exists():
        return []
    return [c for c in kube_chains() if c.startswith("KUBE-")]


def kube_chains() -> list[str]:
    """The KUBE-*/WSO-NODE-* chains in the host's iptables (for tests: nothing left after a stop)."""
    found: set[str] = set()
    for tool in ("iptables-save", "ip6tables-save"):
        out = subprocess.run([SYSTEM_BINARIES[tool]], capture_output=True, text=True, check=False).stdout
        found |= {line[1:].split()[0] for line in out.splitlines()
                  if line.startswith(":") and line[1:].startswith(("KUBE-", "WSO-NODE-"))}
    return sorted(found)

