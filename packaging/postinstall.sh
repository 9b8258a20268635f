#!/bin/sh
# Runs after the .deb or .rpm is installed or upgraded: makes the system user,
# owns the data dir, and enables the unit. It does not start a fresh install
# (the default config serves no model yet); it restarts on upgrade.
set -e

if ! getent group outpost >/dev/null; then
  groupadd --system outpost
fi
if ! getent passwd outpost >/dev/null; then
  useradd --system --gid outpost --home-dir /var/lib/outpost --no-create-home \
    --shell /usr/sbin/nologin --comment "Outpost edge inference agent" outpost
fi
install -d -m 0750 -o outpost -g outpost /var/lib/outpost
chgrp outpost /etc/outpost/agent.yaml 2>/dev/null || true
chmod 0640 /etc/outpost/agent.yaml 2>/dev/null || true

if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  systemctl enable outpost-agent.service >/dev/null 2>&1 || true
  if systemctl is-active --quiet outpost-agent.service; then
    systemctl restart outpost-agent.service || true
  fi
fi
exit 0
