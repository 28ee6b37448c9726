#!/usr/bin/env bash
# Debian packages the tests use: OpenSSH (ssh-keygen, ssh, sshd) and git for the real git-over-ssh test;
# PostgreSQL 15's server binaries (initdb, pg_ctl) for the throwaway cluster of the PostgreSQL provider's tests.
# Chromium and its WebDriver for the connect page driven in a real (headless) browser. The local cluster's
# node (tools/devcluster/node.py): containerd 1.6, runc (crun refuses these hosts' hybrid cgroups), the CNI
# plugins, iproute2 (the bridge), iptables (kube-proxy, the node's guard chains) and conntrack (kube-proxy clears stale UDP entries);
# debootstrap for the node's images (tools/devcluster/images.py). tinyproxy: the real forward proxy (CONNECT) of the
# enterprise-network test (tests/e2e/test_enterprise_network.py). Then the npm packages of the test OAuth server
# (tests/e2e/oauth_server: panva's oidc-provider), from its lock file.
# Installs only what is missing; needs root (CI runs as root) or passwordless sudo.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# `install-system-deps.sh node`: only what the local node needs (`make run`).
only_node=false
[ "${1:-}" = node ] && only_node=true
if $only_node && [ "$(id -u)" -ne 0 ]; then
  # The node runs only as root; `make run` without root starts a cluster without a node.
  echo "install-system-deps.sh node: not root, skipping the local node's packages (the cluster runs without a node)" >&2
  exit 0
fi
need=()
if ! $only_node; then
  command -v ssh-keygen >/dev/null || need+=(openssh-client)
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  command -v git >/dev/null || need+=(git)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
  [ -x /usr/bin/chromium ] || need+=(chromium)
  [ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
  command -v node >/dev/null || need+=(nodejs npm)
  [ -x /usr/bin/tinyproxy ] || need+=(tinyproxy)
fi
[ -x /usr/bin/containerd ] || need+=(containerd)
[ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
[ -x /usr/sbin/ip ] || need+=(iproute2)
[ -x /usr/sbin/iptables ] || need+=(iptables)
[ -x /usr/sbin/conntrack ] || need+=(conntrack)
[ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing ${need[*]} from Debian" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

$only_node && exit 0

# The test OAuth server's node_modules, reinstalled when its lock file changes.
server="$here/tests/e2e/oauth_server"
stamp="$server/node_modules/.lock-sha256"
want=$(sha256sum "$server/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing the test OAuth server's npm packages" >&2
  (cd "$server" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" > "$stamp"
fi
