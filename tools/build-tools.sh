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
export GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
k8s_ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$now"
done

start=$(date +%s)
build() {  # module-dir output-name package ldflags
  if [ -x "$bin/$2" ]; then return; fi
  echo "building $2 ..." >&2
  (cd "$tools/$1" && go build -ldflags "$4" -o "$bin/$2.tmp" "$3") >&2
  mv "$bin/$2.tmp" "$bin/$2"
}
build k8s  kube-apiserver          k8s.io/kubernetes/cmd/kube-apiserver          "$k8s_ldflags"
build k8s  kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$k8s_ldflags"
build k8s  kubectl                 k8s.io/kubernetes/cmd/kubectl                 "$k8s_ldflags"
build etcd etcd                    go.etcd.io/etcd/server/v3                     "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}"
build helm helm                    helm.sh/helm/v3/cmd/helm                      "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
echo "built ${missing[*]} in $(( $(date +%s) - start ))s into $bin ($(du -sh "$cache" | cut -f1))" >&2
echo "$bin"
