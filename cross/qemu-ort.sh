#!/usr/bin/env bash
# qemu-ort.sh PROGRAM [ARGS...] runs an arm64 program under qemu user
# emulation for the ONNX Runtime tests (go test -exec cross/qemu-ort.sh).
#
# ONNX Runtime probes the CPU when its library loads, and on arm64 it reads
# the cache topology under /sys/devices/system/cpu/cpu*/cache. Under
# qemu-user that is the x86-64 host's, which the arm64 probe does not expect:
# it dereferences NULL (SIGSEGV inside dlopen, in our test binary and in a
# plain C program alike). Hiding those directories behind empty tmpfs mounts,
# in a private mount namespace that only this program sees, makes the probe
# fall back to defaults ("Unknown CPU vendor") and the library works. Mounts
# need root; test-arm64.sh skips the ONNX step without it.
set -euo pipefail
exec unshare -m bash -c '
  for c in /sys/devices/system/cpu/cpu[0-9]*/cache; do
    if [[ -d $c ]]; then mount -t tmpfs none "$c"; fi
  done
  exec qemu-aarch64-static -L /usr/aarch64-linux-gnu "$@"' qemu-ort "$@"
