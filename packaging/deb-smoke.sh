#!/usr/bin/env bash
# deb-smoke.sh [DEB] installs the agent's .deb from dist/ on this machine,
# checks that the files, the user, the unit and a start under the unit's
# user and config work, then purges it, leaving the machine as it was.
# Run by hand as root after `make release-check`; it refuses to touch a
# machine where outpost-agent is already installed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
arch=$(dpkg --print-architecture)
deb=${1:-$(ls "$root"/dist/outpost-agent_*_"$arch".deb 2>/dev/null | head -1)}
[[ -f $deb ]] || { echo "deb-smoke: no .deb for $arch in dist/ (run make release-check)" >&2; exit 1; }
if dpkg -s outpost-agent >/dev/null 2>&1 || getent passwd outpost >/dev/null; then
  echo "deb-smoke: outpost-agent or the outpost user is already here; not touching it" >&2
  exit 1
fi
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null || true
  dpkg --purge outpost-agent >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() { echo "deb-smoke: FAIL: $*" >&2; exit 1; }

echo "deb-smoke: dpkg -i $(basename "$deb")"
dpkg -i "$deb" >/dev/null
for f in /usr/bin/outpost-agent /usr/lib/outpost/libtensorflowlite_c.so \
         /etc/outpost/agent.yaml /usr/lib/systemd/system/outpost-agent.service; do
  [[ -f $f ]] || fail "$f missing"
done
[[ -d /var/lib/outpost && $(stat -c %U /var/lib/outpost) == outpost ]] || fail "/var/lib/outpost not owned by outpost"
getent passwd outpost | grep -q nologin || fail "no outpost system user"
ldd /usr/bin/outpost-agent | grep -q '/usr/lib/outpost/libtensorflowlite_c.so' || fail "library not found through the rpath"
if command -v systemd-analyze >/dev/null; then
  out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify /usr/lib/systemd/system/outpost-agent.service 2>&1 || true)
  [[ -z $out ]] || fail "systemd-analyze verify: $out"
fi

# Start it as the unit would (user, config), on a spare port, then SIGTERM.
port=18497
log=$(mktemp)
setpriv --reuid=outpost --regid=outpost --init-groups \
  /usr/bin/outpost-agent serve --config /etc/outpost/agent.yaml --listen 127.0.0.1:$port >"$log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fs "127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fs "127.0.0.1:$port/v2/health/ready" >/dev/null || { cat "$log"; fail "agent not ready"; }
kill -TERM "$pid"
wait "$pid" || { cat "$log"; fail "agent exited non-zero on SIGTERM"; }
pid=
rm -f "$log"

dpkg -r outpost-agent >/dev/null
[[ ! -e /usr/bin/outpost-agent && -d /var/lib/outpost ]] || fail "remove should drop the binary and keep the data"
dpkg --purge outpost-agent >/dev/null
[[ ! -e /var/lib/outpost && ! -e /etc/outpost ]] || fail "purge left files behind"
getent passwd outpost >/dev/null && fail "purge left the outpost user"
echo "deb-smoke: ok (installed, verified, served, stopped on SIGTERM, removed, purged)"
