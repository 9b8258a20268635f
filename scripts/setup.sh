#!/usr/bin/env bash
# setup.sh makes a fresh machine ready to build and test Outpost: the Debian
# packages the tests use, then the pinned TFLite runtime and test models.
# Idempotent: when everything is in place it only says so.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

# command -> Debian package that provides it.
declare -A pkgs=(
  [gcc]=gcc
  [npm]=npm
  [mosquitto]=mosquitto
  [mosquitto_sub]=mosquitto-clients
  [nats-server]=nats-server
  [curl]=curl
  # The store's contract tests start their own PostgreSQL (internal/testpg).
  [pg_ctl]=postgresql
  [protoc]=protobuf-compiler
  # The controller's /metrics is tested against a real Prometheus.
  [prometheus]=prometheus
  # The web console's browser tests drive a headless Chromium (chromedp).
  [chromium]=chromium
)
missing=()
for cmd in "${!pkgs[@]}"; do
  # Debian keeps the server's tools (initdb, pg_ctl) in /usr/lib/postgresql/<version>/bin.
  if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x /usr/sbin/$cmd ]] && ! compgen -G "/usr/lib/postgresql/*/bin/$cmd" >/dev/null; then
    missing+=("${pkgs[$cmd]}")
  fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "setup: installing ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    sudo=sudo
  else
    sudo=
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The Debian packages start a system broker on :1883, nats-server on :4222,
  # a PostgreSQL on :5432 and Prometheus on :9090; tests start their own on
  # free ports, so leave the system ones as the admin configured them.
fi

"$here/fetch-deps.sh"
