# Sourced by tools/build-tools.sh and tools/build-node.sh: how a pinned Kubernetes binary is built from Go
# modules (the version stamps `kubectl version` and the API server report), and the build-into-cache step.
# Needs $tools (the tools/ directory) and $K8S_VERSION.

export GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0

# The -ldflags a Kubernetes release build stamps its version with.
k8s_ldflags() {
  local minor=${K8S_VERSION#v1.} now
  minor=${minor%%.*}
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local flags="-s -w" pkg
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    flags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$now"
  done
  echo "$flags"
}

# go_build BIN_DIR MODULE_DIR OUTPUT PACKAGE LDFLAGS: build one binary unless it is there (atomically: a
# half-written binary never has the final name).
go_build() {
  if [ -x "$1/$3" ]; then return; fi
  echo "building $3 ..." >&2
  # The temporary name is this shell's own: two builds at once (two checkouts sharing the cache) do not collide.
  (cd "$tools/$2" && go build -ldflags "$5" -o "$1/$3.tmp.$$" "$4") >&2
  mv -f "$1/$3.tmp.$$" "$1/$3"
}
