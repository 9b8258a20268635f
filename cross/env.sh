#!/usr/bin/env bash
# env.sh ARCH [RPATH] prints the Go and cgo settings for building Outpost for
# linux/ARCH (amd64 or arm64) on an x86-64 Debian host, for eval:
#
#   eval "$(cross/env.sh arm64)"
#
# RPATH is where the binary looks for libtensorflowlite_c.so (linked) and
# libonnxruntime.so.1 (opened with dlopen on the first ONNX model) at run
# time: "release" (default) means /usr/lib/outpost, where the packages and
# scripts/install.sh put them, then the binary's own directory; "tree" means
# the libraries in .deps, for test binaries run in place.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
arch=${1:?usage: env.sh amd64|arm64 [release|tree]}
mode=${2:-release}

case $arch in
  amd64) cc=x86_64-linux-gnu-gcc; cxx=x86_64-linux-gnu-g++ ;;
  arm64) cc=aarch64-linux-gnu-gcc; cxx=aarch64-linux-gnu-g++ ;;
  *) echo "env.sh: no TFLite library for $arch here (see cross/README.md)" >&2; exit 2 ;;
esac
# On an amd64 host the native compiler also answers to plain gcc.
if [[ $arch == "$(go env GOHOSTARCH)" ]] && ! command -v "$cc" >/dev/null; then cc=gcc; cxx=g++; fi

lib=$root/.deps/tflite/linux_$arch
ortlib=$root/.deps/onnxruntime/linux_$arch
case $mode in
  release) rpath='/usr/lib/outpost:$ORIGIN' ;;
  tree) rpath=$lib:$ortlib ;;
  *) echo "env.sh: rpath mode must be release or tree" >&2; exit 2 ;;
esac

cat <<ENV
export GOOS=linux GOARCH=$arch CGO_ENABLED=1
export CC=$cc CXX=$cxx
export CGO_CFLAGS='-O2 -I$root/agent/runtime/include -I$root/.deps/tflite/include'
export CGO_LDFLAGS='-L$lib -Wl,-rpath,$rpath'
export OUTPOST_MODELS='$root/.deps/models'
ENV
