#!/usr/bin/env bash
# package-contents.sh DIST checks that every agent package in DIST (.deb and
# release tarball, amd64 and arm64) ships both runtime libraries the binary
# opens: libtensorflowlite_c.so (linked) and libonnxruntime.so.1 (opened for
# .onnx models). `make release-check` runs it after the snapshot build.
set -euo pipefail
dist=${1:?usage: package-contents.sh DIST}
n=0 bad=0
need() { # need PACKAGE LISTING
  for lib in libtensorflowlite_c.so libonnxruntime.so.1; do
    if ! grep -q "/$lib\$" <<<"$2"; then
      echo "cross/package-contents: $1 lacks $lib" >&2
      bad=1
    fi
  done
  n=$((n + 1))
}
for f in "$dist"/outpost-agent_*.deb; do
  [[ -e $f ]] || continue
  need "$f" "$(dpkg-deb -c "$f" | awk '{print $NF}')"
done
for f in "$dist"/outpost-agent_*.tar.gz; do
  [[ -e $f ]] || continue
  need "$f" "$(tar tzf "$f" | sed 's|^|/|')"
done
if [[ $n -eq 0 ]]; then
  echo "cross/package-contents: no agent packages in $dist" >&2
  exit 2
fi
[[ $bad -eq 0 ]] && echo "cross/package-contents: $n agent packages ship both runtime libraries"
exit $bad
