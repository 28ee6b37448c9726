#!/usr/bin/env bash
# Builds the test control plane and tools from source through the Go module proxy:
#   kube-apiserver, kube-controller-manager, kubectl  (tools/k8s,  pinned Kubernetes release)
#   etcd                                              (tools/etcd, the version kubeadm pairs with it)
#   helm                                              (tools/helm)
# Binaries are cached outside the repo, keyed by release and by the hash of the tools' go.mod/go.sum,
# so only the first run on a machine pays the build. Prints the bin directory on stdout.
set -euo pipefail

K8S_VERSION=v1.37.2
ETCD_VERSION=v3.7.0
HELM_VERSION=v3.22.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$here/tools"
# tools/vault is built by tools/build-vault.sh with its own cache key.
key=$(cat "$tools"/{etcd,helm,k8s}/go.mod "$tools"/{etcd,helm,k8s}/go.sum | sha256sum | cut -c1-12)
cache="${WSO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workspace-secrets-operator}/k8s-${K8S_VERSION}-${key}"
bin="$cache/bin"

wanted=(kube-apiserver kube-controller-manager kubectl etcd helm)
missing=()
for b in "${wanted[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then echo "$bin"; exit 0; fi

mkdir -p "$bin"
# shellcheck source=tools/go-build.sh
. "$tools/go-build.sh"
k8s=$(k8s_ldflags)
start=$(date +%s)
go_build "$bin" k8s  kube-apiserver          k8s.io/kubernetes/cmd/kube-apiserver          "$k8s"
go_build "$bin" k8s  kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s"
go_build "$bin" k8s  kubectl                 k8s.io/kubernetes/cmd/kubectl                 "$k8s"
go_build "$bin" etcd etcd                    go.etcd.io/etcd/server/v3                     "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
go_build "$bin" helm helm                    helm.sh/helm/v3/cmd/helm                      "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
echo "built ${missing[*]} in $(( $(date +%s) - start ))s into $bin ($(du -sh "$cache" | cut -f1))" >&2
echo "$bin"
