#!/usr/bin/env bash
# fetch-deps.sh places the pinned TFLite C library, its headers, the ONNX
# Runtime library and the test models under DEST (default .deps), as listed in
# scripts/deps.lock.
#
# Each package is fetched with `npm pack` into a temporary directory (never
# `npm install`, which would try to build a Node addon), the listed files are
# extracted with tar and checked against their pinned sha256. Files already in
# place with the right checksum are left alone, so a second run does nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-"$here/../.deps"}
lock="$here/deps.lock"
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Collect the entries that are missing or wrong, grouped by package.
declare -A want=()
while read -r kind pkg src dst sum; do
  [[ -z "$kind" || "$kind" == \#* ]] && continue
  if [[ -f "$dest/$dst" && "$(sha "$dest/$dst")" == "$sum" ]]; then
    continue
  fi
  want[$pkg]+="$src $dst $sum"$'\n'
done <"$lock"

if [[ ${#want[@]} -eq 0 ]]; then
  echo "fetch-deps: all pinned files present in $dest"
  exit 0
fi

command -v npm >/dev/null || { echo "fetch-deps: npm is needed to fetch packages" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for pkg in "${!want[@]}"; do
  echo "fetch-deps: npm pack $pkg"
  dir="$tmp/$(echo "$pkg" | tr '/@' '__')"
  mkdir -p "$dir"
  (cd "$dir" && npm pack --silent "$pkg" >/dev/null)
  tgz=$(ls "$dir"/*.tgz)
  while read -r src dst sum; do
    [[ -z "$src" ]] && continue
    tar -xzf "$tgz" -C "$dir" "$src"
    got=$(sha "$dir/$src")
    if [[ "$got" != "$sum" ]]; then
      echo "fetch-deps: checksum mismatch for $pkg $src: got $got, want $sum" >&2
      exit 1
    fi
    mkdir -p "$(dirname "$dest/$dst")"
    install -m 0644 "$dir/$src" "$dest/$dst.tmp"
    mv -f "$dest/$dst.tmp" "$dest/$dst"
    echo "fetch-deps:   $dst ok"
  done <<<"${want[$pkg]}"
done
chmod 0755 "$dest"/tflite/linux_*/*.so "$dest"/onnxruntime/linux_*/*.so.* 2>/dev/null || true
