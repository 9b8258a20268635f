#!/usr/bin/env bash
# release.sh [goreleaser args] runs the pinned goreleaser from .deps/bin
# (installed through the Go module proxy on first use) with the environment
# .goreleaser.yaml expects. `make release-check` calls it twice: `check`,
# then `release --snapshot --clean` (packages in dist/, nothing published).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
version=v2.15.1
bin=$root/.deps/bin/goreleaser
if [[ ! -x $bin ]] || ! "$bin" --version 2>/dev/null | grep -q "${version#v}"; then
  echo "cross/release: installing goreleaser $version into .deps/bin"
  GOBIN=$root/.deps/bin GOFLAGS=-p=1 go install "github.com/goreleaser/goreleaser/v2@$version"
fi
export OUTPOST_ROOT=$root
# The native compiler under its target-prefixed name, as the config names it.
command -v x86_64-linux-gnu-gcc >/dev/null || { echo "cross/release: x86_64-linux-gnu-gcc missing" >&2; exit 1; }
# goreleaser builds targets in parallel; keep the 2-core machines usable.
exec "$bin" "$@"
