#!/usr/bin/env bash
# verify-unit.sh [AGENT] runs systemd-analyze verify on the unit, with
# ExecStart pointed at AGENT (default bin/outpost-agent) so it can be checked
# before the binary is installed. Skips, saying so, without systemd-analyze.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
agent=$(realpath "${1:-$here/../bin/outpost-agent}")
if ! command -v systemd-analyze >/dev/null; then
  echo "verify-unit: systemd-analyze not installed; skipped"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|^ExecStart=/usr/bin/outpost-agent|ExecStart=$agent|" "$here/outpost-agent.service" >"$tmp/outpost-agent.service"
# The unit names User=outpost; verify does not need the user to exist, but
# warnings are errors here: any output fails the check.
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$tmp/outpost-agent.service" 2>&1 || true)
if [[ -n $out ]]; then
  echo "$out" >&2
  echo "verify-unit: outpost-agent.service has problems" >&2
  exit 1
fi
echo "verify-unit: outpost-agent.service ok (systemd $(systemd-analyze --version | head -1 | awk '{print $2}'))"
