#!/usr/bin/env bash
# test-arm64.sh runs the agent's runtime and API tests built for linux/arm64
# under qemu user emulation, with the real arm64 TFLite and ONNX Runtime
# libraries and models, and checks that arm64 computes the same outputs as
# amd64:
#
#  1. cross/outputs runs natively and writes an amd64 reference;
#  2. the same program built for arm64 runs under qemu, checks its pool
#     against the bare C API there, and compares with the reference;
#  3. a focused set of runtime and API tests runs under qemu via go test -exec,
#     among them Silero VAD through ONNX Runtime compared bit for bit with a
#     C program on the ONNX Runtime C API, itself cross-compiled and run under
#     qemu.
#
# Emulation is 40 to 500 times slower than native: the set stays small, and
# nothing here reads speed from it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
qemu="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Tests that load real models on the target; the long ones (leak cycles,
# swap and queue timing under load) stay on native CI.
RUNTIME_TESTS=${RUNTIME_TESTS:-'^(TestGoTFLiteLayout|TestDescribe|TestBadModels|TestMatchesBareCAPI|TestDelegatePlugins|TestParseDelegate|TestInvokeChecksInputs|TestConcurrentInvoke|TestClose|TestErrorsAreSentinels|TestDetect)$'}
# The ONNX Runtime tests run through cross/qemu-ort.sh (see there why).
ONNX_TESTS=${ONNX_TESTS:-'^(TestONNXRuntimeVersion|TestONNXDescribe|TestSileroStateful|TestSileroMatchesCAPI|TestSileroConcurrent|TestTinyONNX|TestBadONNX|TestExecutionProviderChain|TestSlotSwapsRuntimes)$'}
API_TESTS=${API_TESTS:-'^(TestV2JSONInfer|TestV2BinaryInfer|TestTFServingPredict|TestMetadataAndHealth|TestBadRequests)$'}

step() { echo "== test-arm64: $*"; }

# gotest PKG RUN [EXEC] runs the tests of PKG matching RUN under qemu (or
# EXEC); it prints a line per test, and the whole log when something fails.
gotest() {
  local log=$tmp/$(basename "$1")-$RANDOM.log
  if go test -p 1 -count=1 -short -timeout 30m -exec "${3:-$qemu}" -run "$2" -v "$1" >"$log" 2>&1; then
    grep -E '^(--- |ok )' "$log"
  else
    cat "$log"; echo "test-arm64: $1 failed" >&2; return 1
  fi
}

step "amd64 reference outputs (native)"
( eval "$(cross/env.sh amd64 tree)"; go run -p 1 ./cross/outputs -models "$OUTPOST_MODELS" -write "$tmp/ref-amd64.json" )

eval "$(cross/env.sh arm64 tree)"
export OUTPOST_TEST_CC=$CC
# The ONNX reference program is an arm64 executable too: it runs through
# qemu, and is compiled against the C API header onnxruntime_go vendors.
export OUTPOST_TEST_EXEC=$qemu
export OUTPOST_ORT_HEADERS=$(go list -m -f '{{.Dir}}' github.com/yalue/onnxruntime_go)

step "arm64 outputs under qemu, compared with amd64"
go build -p 1 -o "$tmp/outputs-arm64" ./cross/outputs
file "$tmp/outputs-arm64" | grep -q 'ARM aarch64' || { echo "test-arm64: not an arm64 binary" >&2; exit 1; }
$qemu "$tmp/outputs-arm64" -models "$OUTPOST_MODELS" -compare "$tmp/ref-amd64.json"

step "agent/runtime tests under qemu"
gotest ./agent/runtime "$RUNTIME_TESTS"

step "agent/runtime ONNX Runtime tests under qemu (Silero VAD against the C API reference)"
if [[ $(id -u) -eq 0 ]] && unshare -m true 2>/dev/null; then
  ( eval "$(cross/env.sh amd64 tree)"; go run -p 1 ./cross/outputs -onnx -models "$OUTPOST_MODELS" -write "$tmp/ref-onnx-amd64.json" )
  "$root/cross/qemu-ort.sh" "$tmp/outputs-arm64" -onnx -models "$OUTPOST_MODELS" -compare "$tmp/ref-onnx-amd64.json"
  # The test binary runs in qemu-ort.sh's namespace; the C reference it
  # starts inherits it and goes through plain qemu.
  gotest ./agent/runtime "$ONNX_TESTS" "$root/cross/qemu-ort.sh"
else
  echo "test-arm64: SKIPPED the ONNX Runtime tests: they need root for a private mount namespace (cross/qemu-ort.sh)" >&2
fi

step "agent/api tests under qemu"
gotest ./agent/api "$API_TESTS"
step "passed"
