#!/usr/bin/env bash
# setup.sh installs what cross builds and emulated tests need, on top of
# scripts/setup.sh: Debian's aarch64 cross toolchain and qemu-user-static,
# then the pinned TFLite libraries (both architectures come in one package).
# Idempotent; `make test` does not run it, only the cross targets do.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

declare -A pkgs=(
  [aarch64-linux-gnu-gcc]=gcc-aarch64-linux-gnu
  [aarch64-linux-gnu-g++]=g++-aarch64-linux-gnu
  [qemu-aarch64-static]=qemu-user-static
)
missing=()
for cmd in "${!pkgs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${pkgs[$cmd]}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "cross/setup: installing ${missing[*]}"
  sudo=; [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" libc6-dev-arm64-cross >/dev/null
fi
"$here/../scripts/setup.sh"
