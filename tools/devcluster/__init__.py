"""Development tooling: a throwaway local Kubernetes cluster for the tests, the benchmarks and `make run`.

Not part of the operator (it lives outside the operator's package and wheel; `.importlinter` forbids the
operator to import it). It imports nothing of the operator either, so starting a cluster never imports the
code under test.

Modules, by job:

* ``controlplane``: the public face (``ControlPlane``, with ``node=True`` for a real node; re-exports the rest)
* ``binaries``: where the pinned binaries come from (tools/build-tools.sh, tools/build-node.sh, Debian)
* ``pki``: the cluster's CA and certificates, kubeconfigs
* ``processes``, ``records``: pid-verified processes, run records and stale-run reaping
* ``node``: containerd + kubelet + kube-proxy + kube-scheduler, the machine-wide node lock, the node's teardown
* ``network``: the node's bridge, node IP and guard chains (nothing leaves the machine)
* ``host``: mounts and sysctls the node changes and puts back
* ``images`` (helper N2): container images from Debian packages as OCI archives
* ``cli`` (``wso-controlplane``), ``dev`` (``make run``: ``wso-dev``)
"""
