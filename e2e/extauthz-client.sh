#!/usr/bin/env bash
# e2e/extauthz-client.sh: builds the gRPC ext_authz test client
# (e2e/extauthz-client/, on Envoy's go-control-plane types and grpc-go, both
# pinned by its go.mod) once, cached under the project's cache by a hash of
# its go.mod, go.sum and source, and prints the binary's path. Fails loudly
# when Go or the Go module proxy cannot be reached: the tests that need the
# client never skip.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

src="$LK_E2E/extauthz-client"
command -v go >/dev/null || die "Go is needed to build the ext_authz client (go not found)"
hash=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go | sha256sum | cut -c1-16)
dir="$LATCHKEY_CACHE_DIR/extauthz-client-$hash"
bin="$dir/extauthz-client"
if [ ! -x "$bin" ]; then
  mkdir -p "$LATCHKEY_CACHE_DIR"
  # One builder at a time; the others wait and reuse its binary.
  exec 8>"$dir.lock"
  flock 8
  if [ ! -x "$bin" ]; then
    say "building the ext_authz client ($hash) from the Go module proxy"
    mkdir -p "$dir"
    if ! (cd "$src" && GOFLAGS="${GOFLAGS:--p=1} -mod=readonly -buildvcs=false" go build -trimpath -o "$bin.partial" .); then
      rm -f "$bin.partial"
      die "building e2e/extauthz-client failed (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))"
    fi
    mv "$bin.partial" "$bin"
  fi
fi
printf '%s\n' "$bin"
