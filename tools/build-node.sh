#!/usr/bin/env bash
# Builds the local cluster's node components from source through the Go module proxy:
#   kubelet, kube-scheduler, kube-proxy   (tools/k8s-node, the Kubernetes release pinned in build-tools.sh)
# Cached outside the repo like build-tools.sh's binaries, under its own key (the hash of tools/k8s-node's
# go.mod/go.sum), so the control plane's cache stays valid. Only builds what is missing; the Go build
# cache shared with the control plane build makes a first build here take a couple of minutes.
# containerd, runc and the CNI plugins come from Debian (tools/install-system-deps.sh).
# Prints the bin directory on stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$here/tools"
K8S_VERSION=$(sed -n 's/^K8S_VERSION=//p' "$tools/build-tools.sh")
key=$(cat "$tools/k8s-node/go.mod" "$tools/k8s-node/go.sum" | sha256sum | cut -c1-12)
cache="${WSO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workspace-secrets-operator}/k8s-node-${K8S_VERSION}-${key}"
bin="$cache/bin"

wanted=(kubelet kube-scheduler kube-proxy)
missing=()
for b in "${wanted[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi

mkdir -p "$bin"
# shellcheck source=tools/go-build.sh
. "$tools/go-build.sh"
ldflags=$(k8s_ldflags)
start=$(date +%s)
for b in "${missing[@]}"; do
  go_build "$bin" k8s-node "$b" "k8s.io/kubernetes/cmd/$b" "$ldflags"
done
echo "built ${missing[*]} in $(( $(date +%s) - start ))s into $bin ($(du -sh "$cache" | cut -f1))" >&2
echo "$bin"
