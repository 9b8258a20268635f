#!/usr/bin/env bash
# build.sh ARCH builds outpost-agent (cgo, against the ARCH TFLite library)
# and outpost-fleet (pure Go) for linux/ARCH into bin/linux_ARCH/, next to
# copies of libtensorflowlite_c.so and libonnxruntime.so.1. The agent's rpath is /usr/lib/outpost
# (where the .deb, .rpm and scripts/install.sh install the library), then
# $ORIGIN, so the directory also runs as it is when copied to a device.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
arch=${1:?usage: build.sh amd64|arm64}
cd "$root"
eval "$(cross/env.sh "$arch" release)"
out=bin/linux_$arch
mkdir -p "$out"
version=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
ldflags="-s -w -X github.com/outpost-edge/outpost/agent/version.Version=$version -X github.com/outpost-edge/outpost/internal/buildinfo.Version=$version -X github.com/outpost-edge/outpost/internal/buildinfo.Commit=$(git rev-parse HEAD 2>/dev/null)"

# grpcnotrace: gRPC without x/net/trace (html/template), 3 MB smaller.
go build -p "${GO_BUILD_P:-1}" -trimpath -tags grpcnotrace -ldflags "$ldflags" -o "$out/outpost-agent" ./cmd/outpost-agent
CGO_ENABLED=0 go build -p "${GO_BUILD_P:-1}" -trimpath -ldflags "$ldflags" -o "$out/outpost-fleet" ./cmd/outpost-fleet
install -m 0755 ".deps/tflite/linux_$arch/libtensorflowlite_c.so" "$out/"
install -m 0755 ".deps/onnxruntime/linux_$arch/libonnxruntime.so.1" "$out/"

echo "cross/build: $out"
file "$out/outpost-agent" "$out/outpost-fleet" 2>/dev/null | sed 's/, BuildID[^,]*//' || ls -l "$out"
