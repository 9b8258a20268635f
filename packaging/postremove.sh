#!/bin/sh
# Runs after the .deb or .rpm is removed. Models and state in /var/lib/outpost
# and the system user stay, unless the deb is purged (`apt purge` or
# `dpkg --purge`), which deletes both.
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = "purge" ]; then
  rm -rf /var/lib/outpost
  if getent passwd outpost >/dev/null; then userdel outpost >/dev/null 2>&1 || true; fi
  if getent group outpost >/dev/null; then groupdel outpost >/dev/null 2>&1 || true; fi
fi
exit 0
