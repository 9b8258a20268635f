#!/bin/sh
# Runs after the outpost-fleet .deb or .rpm is installed or upgraded: makes
# the system user, owns the state dir and enables the unit. A fresh install
# is not started (it has no keys yet: see outpost-fleet.service); an upgrade
# restarts a running controller.
set -e

if ! getent group outpost-fleet >/dev/null; then
  groupadd --system outpost-fleet
fi
if ! getent passwd outpost-fleet >/dev/null; then
  useradd --system --gid outpost-fleet --home-dir /var/lib/outpost-fleet --no-create-home \
    --shell /usr/sbin/nologin --comment "Outpost fleet controller" outpost-fleet
fi
install -d -m 0750 -o outpost-fleet -g outpost-fleet /var/lib/outpost-fleet
chgrp outpost-fleet /etc/outpost/fleet.yaml 2>/dev/null || true
chmod 0640 /etc/outpost/fleet.yaml 2>/dev/null || true

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  systemctl enable outpost-fleet.service >/dev/null 2>&1 || true
  if systemctl is-active --quiet outpost-fleet.service; then
    systemctl restart outpost-fleet.service || true
  fi
fi
exit 0
