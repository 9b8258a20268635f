#!/usr/bin/env bash
# stress.sh RUNS TEST BENCH LOGDIR: `make TEST` RUNS times in a row while
# `make BENCH` runs beside it in a loop, started in the background and
# stopped at the end. Stops at the first failing run and keeps its log in
# LOGDIR (passing runs' logs are deleted, their packages' times kept in
# LOGDIR/passed.txt); prints how many runs passed.
# Called by `make test-stress`.
set -u
runs=$1 test=$2 bench=$3 logdir=$4
make=${MAKE:-make}
mkdir -p "$logdir"
benchlog=$logdir/bench.log
: >"$benchlog"

# The bench loop gets its own process group (job control), so stopping it
# stops the make and go processes under it too.
set -m
(
  trap 'exit 0' TERM
  n=0
  while :; do
    n=$((n + 1))
    echo "== bench run $n" >>"$benchlog"
    "$make" --no-print-directory "$bench" >>"$benchlog" 2>&1 || echo "== bench run $n FAILED" >>"$benchlog"
  done
) &
bench_pid=$!
set +m
stop_bench() {
  kill -TERM -- "-$bench_pid" 2>/dev/null
  wait "$bench_pid" 2>/dev/null
}
trap stop_bench EXIT
trap 'exit 130' INT TERM

pass=0 failed=
for i in $(seq 1 "$runs"); do
  log=$logdir/test-run-$i.log
  start=$SECONDS
  if "$make" --no-print-directory "$test" >"$log" 2>&1; then
    pass=$((pass + 1))
    echo "stress: run $i/$runs passed ($((SECONDS - start)) s)"
    # Keep each package's time: the slowest ones bound make test.
    grep -E '^ok ' "$log" | sed "s/^/run $i: /" >>"$logdir/passed.txt"
    rm -f "$log"
  else
    echo "stress: run $i/$runs FAILED ($((SECONDS - start)) s); its log: $log"
    grep -E '^(--- FAIL|FAIL|panic:)' "$log" | head -20
    failed=$log
    break
  fi
done
stop_bench
trap - EXIT
benchfails=$(grep -c 'FAILED$' "$benchlog")
echo "stress: $pass of $runs runs of make $test passed, make $bench looping beside them ($(grep -c '^== bench run [0-9]*$' "$benchlog") started, $benchfails failed; log: $benchlog)"
[ -z "$failed" ]
