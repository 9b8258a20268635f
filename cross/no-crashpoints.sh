#!/usr/bin/env bash
# no-crashpoints.sh PATH... fails if an outpost-* executable under PATH (files,
# or directories searched) carries a test hook: a binary built with -tags
# outposttest contains the name of the variable that makes it SIGKILL itself
# (internal/crashpoint) and the agent's --test-now flag (testclock_on.go); one
# built with -tags phasetrace, the name of the variable that has it write its
# request phase record (internal/phasetrace). `make release-check` runs it on
# dist/; cmd/outpost-agent's TestReleaseCheck runs it on a plain and a tagged
# build of each.
set -euo pipefail
if [[ $# -eq 0 ]]; then
  echo "usage: no-crashpoints.sh PATH..." >&2
  exit 2
fi
found=0 bad=0
while IFS= read -r -d '' f; do
  found=$((found + 1))
  if grep -q -a -F -e OUTPOST_CRASHPOINT -e 'check expiry as of this RFC 3339 time' -e OUTPOST_PHASETRACE "$f"; then
    echo "cross/no-crashpoints: $f carries test hooks (built with -tags outposttest or phasetrace)" >&2
    bad=1
  fi
done < <(find "$@" -type f -name 'outpost-*' -perm -u+x -print0)
if [[ $found -eq 0 ]]; then
  echo "cross/no-crashpoints: no outpost-* executables under $*" >&2
  exit 2
fi
if [[ $bad -eq 0 ]]; then
  echo "cross/no-crashpoints: $found binaries without crash points"
fi
exit $bad
