#!/bin/sh
# Runs after the outpost-fleet .deb or .rpm is removed. The keys, registry
# and artifacts in /var/lib/outpost-fleet and the system user stay: the
# signing keys are not ours to delete, even on purge.
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
