#!/usr/bin/env bash
# Builds HashiCorp Vault (tools/vault: v1.14.0, MPL-2.0) from source through the Go module proxy, for the
# UserToken e2e tests (a real Vault dev server with its OIDC auth method). Cached outside the repo, keyed by
# the hash of tools/vault/go.mod and go.sum, so only the first run on a machine pays the build (about 5 min
# on 2 cores). Prints the binary's path on stdout.
set -euo pipefail
VAULT_VERSION=v1.14.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod="$here/tools/vault"
key=$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-12)
cache="${WSO_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workspace-secrets-operator}/vault-${VAULT_VERSION}-${key}"
bin="$cache/bin/vault"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$cache/bin"
start=$(date +%s)
echo "building vault $VAULT_VERSION ..." >&2
(cd "$mod" && GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0 go build -ldflags "-s -w" -o "$bin.tmp" github.com/hashicorp/vault) >&2
mv "$bin.tmp" "$bin"
echo "built vault in $(( $(date +%s) - start ))s into $bin" >&2
echo "$bin"
