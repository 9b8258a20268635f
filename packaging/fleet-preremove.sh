#!/bin/sh
# Runs before the outpost-fleet .deb or .rpm is removed: stops and disables
# the unit. On an upgrade (deb "upgrade", rpm $1 = 1) the controller keeps
# running and postinstall restarts it.
set -e
case "$1" in
  upgrade|1) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
  systemctl stop outpost-fleet.service >/dev/null 2>&1 || true
  systemctl disable outpost-fleet.service >/dev/null 2>&1 || true
fi
exit 0
