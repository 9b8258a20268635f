#!/usr/bin/env bash
# verify-unit.sh [AGENT [FLEET]] runs systemd-analyze verify on the agent's
# and the controller's units, with ExecStart pointed at AGENT (default
# bin/outpost-agent) and FLEET (default: outpost-fleet next to AGENT) so they
# can be checked before the binaries are installed. Skips, saying so,
# without systemd-analyze.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
agent=$(realpath "${1:-$here/../bin/outpost-agent}")
fleet=$(realpath "${2:-$(dirname "$agent")/outpost-fleet}")
if ! command -v systemd-analyze >/dev/null; then
  echo "verify-unit: systemd-analyze not installed; skipped"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for unit in outpost-agent:"$agent" outpost-fleet:"$fleet"; do
  name=${unit%%:*} bin=${unit#*:}
  sed "s|^ExecStart=/usr/bin/$name|ExecStart=$bin|" "$here/$name.service" >"$tmp/$name.service"
  # The units name their users; verify does not need them to exist, but
  # warnings are errors here: any output fails the check.
  out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$tmp/$name.service" 2>&1 || true)
  if [[ -n $out ]]; then
    echo "$out" >&2
    echo "verify-unit: $name.service has problems" >&2
    status=1
    continue
  fi
  echo "verify-unit: $name.service ok (systemd $(systemd-analyze --version | head -1 | awk '{print $2}'))"
done
exit $status
