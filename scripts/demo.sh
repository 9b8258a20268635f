#!/usr/bin/env bash
# demo.sh shows Outpost end to end on this machine, in a temporary directory:
# a fleet controller with its embedded MQTT broker, admin API tokens (an
# admin and an operator) and the audit log, one agent provisioned
# with the fleet's root, a signed model pushed and rolled out, a prediction
# answered by the rolled-out version, then everything shut down.
#
# Usage: scripts/demo.sh [BIN_DIR] [MODEL]   (make demo passes both)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/bin}
model=${2:-$root/.deps/models/face_detection_short_range.tflite}
work=$(mktemp -d)
pids=()
client=
cleanup() {
  [[ -n $client ]] && kill "$client" 2>/dev/null
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n== %s\n' "$*"; }

# wait_line FILE PATTERN: prints the first line of FILE matching PATTERN,
# waiting up to 30 s for it.
wait_line() {
  for _ in $(seq 300); do
    if line=$(grep -m1 -E "$2" "$1" 2>/dev/null); then echo "$line"; return; fi
    sleep 0.1
  done
  echo "demo: no '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

step "fleet keys (root.json is what devices are provisioned with)"
"$bin/outpost-fleet" keys init --dir "$work/keys"

step "fleet controller with its embedded MQTT broker"
"$bin/outpost-fleet" serve --fleet demo --keys "$work/keys" --data-dir "$work/fleet" \
  --listen-mqtt 127.0.0.1:0 --admin 127.0.0.1:0 >"$work/fleet.log" 2>&1 &
pids+=($!)
line=$(wait_line "$work/fleet.log" '^outpost-fleet: fleet')
echo "$line"
mqtt=$(sed -E 's/.*mqtt (tcp:[^,]+),.*/\1/' <<<"$line")
admin=$(sed -E 's/.*admin (http:[^ ]+).*/\1/' <<<"$line")

step "admin tokens (a fresh controller takes calls without a token from loopback only until the first token exists)"
OUTPOST_TOKEN=$("$bin/outpost-fleet" tokens create --admin "$admin" --role admin --name demo-admin)
export OUTPOST_TOKEN
# The operator's token goes with --token, which wins over OUTPOST_TOKEN.
operator=$("$bin/outpost-fleet" tokens create --admin "$admin" --role operator --name demo-ci)
"$bin/outpost-fleet" tokens list --admin "$admin"
if "$bin/outpost-fleet" devices list --admin "$admin" --token "opt_0000000000000000_wrong" 2>/dev/null; then
  echo "demo: a wrong token was accepted" >&2; exit 1
fi
echo "a wrong token is refused (401)"

step "enrol device gw-demo: a bootstrap bundle (fleet section, root.json, broker password); from now on the broker confines every device to its own topics"
"$bin/outpost-fleet" devices enroll --admin "$admin" --bundle "$work/gw-demo.bundle" --labels site=demo --broker "$mqtt" gw-demo

step "one agent (device gw-demo), no model yet, enrolled from the bundle"
cat >"$work/agent.yaml" <<YAML
listen: 127.0.0.1:0
workers: 1
fleet: {probation: 2s, status_interval: 1s}
YAML
"$bin/outpost-agent" enroll "$work/gw-demo.bundle" --data-dir "$work/agent" --config "$work/agent.yaml"
rm "$work/gw-demo.bundle"
"$bin/outpost-agent" serve --config "$work/agent.yaml" --log-level warn >"$work/agent.log" 2>&1 &
pids+=($!)
agent=http://$(wait_line "$work/agent.log" '^outpost-agent: listening on' | sed 's/.*listening on //')
echo "agent API on $agent"
for _ in $(seq 300); do
  "$bin/outpost-fleet" devices list --admin "$admin" 2>/dev/null | grep -q gw-demo && break
  sleep 0.1
done
"$bin/outpost-fleet" devices list --admin "$admin"

step "sign and push face v1 ($(basename "$model"))"
"$bin/outpost-fleet" models push --admin "$admin" --token "$operator" --keys "$work/keys" --name face --version 1 "$model"

step "roll it out while a client sends requests (probation commits a version once it served enough traffic)"
body=$work/request.json
{
  printf '{"inputs":[{"name":"input","datatype":"FP32","shape":[1,128,128,3],"data":['
  for _ in $(seq 49151); do printf '0.5,'; done
  printf '0.5]}]}'
} >"$body"
(
  while :; do
    curl -s -o /dev/null -X POST -H 'Content-Type: application/json' --data-binary @"$body" "$agent/v2/models/face/infer" || true
    sleep 0.05
  done
) &
client=$!
out=$("$bin/outpost-fleet" rollout create --admin "$admin" --token "$operator" --model face --version 1 --waves 100)
echo "$out"
id=$(grep -oE 'r-[0-9a-f]+' <<<"$out" | head -1)
"$bin/outpost-fleet" rollout status --admin "$admin" --watch --interval 500ms "$id"
kill "$client" 2>/dev/null || true
wait "$client" 2>/dev/null || true
client=

step "a prediction from the agent (v2 JSON, an image of 0.5s)"
answer=$(curl -sS -X POST -H 'Content-Type: application/json' --data-binary @"$body" "$agent/v2/models/face/infer")
grep -oE '"model_name":"[^"]*"|"model_version":"[^"]*"|"model_digest":"[^"]*"' <<<"$answer" | tr '\n' ' '
echo
grep -oE '"name":"[^"]*","datatype":"[^"]*","shape":\[[0-9,]*\]' <<<"$answer" | sed 's/^/  output /'
grep -q '"model_version":"1"' <<<"$answer" || { echo "demo: unexpected answer: ${answer:0:300}" >&2; exit 1; }

step "the fleet audit log: who changed what, and how it ended (hash-chained)"
"$bin/outpost-fleet" audit --admin "$admin"

step "shutting down"
kill -TERM "${pids[@]}"
wait "${pids[@]}" 2>/dev/null || true
pids=()
echo "demo: done"
