#!/usr/bin/env bash
# install.sh puts the Outpost agent on a device without a package manager:
# the binary, the TFLite library (and ONNX Runtime's, when found), a default config, the data dir, a system
# user and the systemd unit, in the places the .deb and .rpm use (the binary
# goes to /usr/local/bin instead of /usr/bin).
#
#   scripts/install.sh [--from DIR] [--root DIR] [--no-start]
#   scripts/install.sh --uninstall [--purge] [--root DIR]
#
# --from is a directory holding outpost-agent and libtensorflowlite_c.so
# (bin/linux_<arch> from `make cross-arm64` or `make cross-amd64`, or an
# unpacked release tarball, where the library sits in lib/); by default the
# script looks next to itself and then in bin/linux_<this arch>. Those builds
# look for the library in /usr/lib/outpost; `make build` output does not. --root installs under another root (for
# images and tests) and leaves users and systemd alone. --uninstall removes
# binary, library, config and unit; the models and state in /var/lib/outpost
# stay unless --purge is given too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

from= root= uninstall=0 purge=0 start=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --from) from=$2; shift 2 ;;
    --root) root=${2%/}; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --no-start) start=0; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

bin=$root/usr/local/bin/outpost-agent
libdir=$root/usr/lib/outpost
etc=$root/etc/outpost
unit=$root/etc/systemd/system/outpost-agent.service
data=$root/var/lib/outpost
# systemd and user management only on the live system.
live=0
[[ -z $root && -d /run/systemd/system ]] && live=1

say() { echo "install.sh: $*"; }

if [[ $uninstall -eq 1 ]]; then
  if [[ $live -eq 1 ]]; then
    systemctl disable --now outpost-agent.service 2>/dev/null || true
  fi
  rm -f "$bin" "$unit" "$etc/agent.yaml"
  rm -rf "$libdir"
  rmdir "$etc" 2>/dev/null || true
  if [[ $live -eq 1 ]]; then systemctl daemon-reload; fi
  if [[ $purge -eq 1 ]]; then
    rm -rf "$data"
    if [[ -z $root ]] && getent passwd outpost >/dev/null; then userdel outpost || true; fi
    if [[ -z $root ]] && getent group outpost >/dev/null; then groupdel outpost 2>/dev/null || true; fi
    say "removed; $data purged$([[ -z $root ]] && echo ' and the outpost user deleted')"
  else
    say "removed; models and state kept in $data (--purge deletes them)"
  fi
  exit 0
fi

case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) echo "install.sh: no TFLite build for $(uname -m) (see cross/README.md)" >&2; exit 1 ;;
esac
if [[ -z $from ]]; then
  for d in "$here/.." "$here/../bin/linux_$arch"; do
    if [[ -x $d/outpost-agent ]]; then from=$d; break; fi
  done
fi
[[ -n $from && -x $from/outpost-agent ]] || { echo "install.sh: outpost-agent not found; build it or give --from DIR" >&2; exit 1; }
lib=
for l in "$from/libtensorflowlite_c.so" "$from/lib/libtensorflowlite_c.so" "$here/../.deps/tflite/linux_$arch/libtensorflowlite_c.so"; do
  if [[ -f $l ]]; then lib=$l; break; fi
done
[[ -n $lib ]] || { echo "install.sh: libtensorflowlite_c.so not found next to the binary" >&2; exit 1; }
pkg=$here/../packaging
[[ -f $pkg/outpost-agent.service ]] || { echo "install.sh: packaging/ not found next to scripts/" >&2; exit 1; }

if [[ $live -eq 1 || -z $root ]]; then
  getent group outpost >/dev/null || groupadd --system outpost
  getent passwd outpost >/dev/null || useradd --system --gid outpost --home-dir /var/lib/outpost \
    --no-create-home --shell /usr/sbin/nologin --comment "Outpost edge inference agent" outpost
fi

install -D -m 0755 "$from/outpost-agent" "$bin"
install -D -m 0644 "$lib" "$libdir/libtensorflowlite_c.so"
# ONNX Runtime, for .onnx models: optional (a TFLite-only device does
# without it), taken from the same places as the TFLite library.
for l in "$from/libonnxruntime.so.1" "$from/lib/libonnxruntime.so.1" "$here/../.deps/onnxruntime/linux_$arch/libonnxruntime.so.1"; do
  if [[ -f $l ]]; then install -D -m 0644 "$l" "$libdir/libonnxruntime.so.1"; break; fi
done
install -d -m 0755 "$etc"
if [[ -f $etc/agent.yaml ]]; then
  say "keeping the existing $etc/agent.yaml"
else
  install -m 0640 "$pkg/agent.yaml" "$etc/agent.yaml"
fi
install -d -m 0750 "$data"
install -d "$(dirname "$unit")"
sed 's|^ExecStart=/usr/bin/outpost-agent|ExecStart=/usr/local/bin/outpost-agent|' \
  "$pkg/outpost-agent.service" >"$unit.tmp"
chmod 0644 "$unit.tmp"
mv -f "$unit.tmp" "$unit"
if [[ -z $root ]]; then
  chgrp outpost "$etc/agent.yaml"
  chown outpost:outpost "$data"
fi
if [[ -z $root ]] && ldd "$bin" 2>/dev/null | grep -q 'libtensorflowlite_c.so => not found'; then
  echo "install.sh: $bin does not find /usr/lib/outpost/libtensorflowlite_c.so; build it with cross/build.sh" >&2
  exit 1
fi
say "installed $("$bin" version 2>/dev/null || echo outpost-agent) from $from"

if [[ $live -eq 1 ]]; then
  systemctl daemon-reload
  systemctl enable outpost-agent.service
  if [[ $start -eq 1 ]]; then systemctl restart outpost-agent.service; fi
  say "unit enabled; edit $etc/agent.yaml to add models, then: systemctl restart outpost-agent"
fi
