#!/usr/bin/env bash
# Redis CPU per publish of the publish script, as the engine sends it: a redis-server of its own
# pinned to core REDIS_CPU (0), the script loaded as `src/cluster/engine/scripts.rs` builds it
# (lua/stream.lua + lua/publish.lua), 3 subscribers on the room's channel, and redis-benchmark
# on core LOAD_CPU (1) running EVALSHA with a room's unkeyed argument layout (2 keys, 9
# arguments; history limit 1000 and an age retention of an hour). WARMUP publishes first (the
# log reaches its limit), then N measured: prints (used_cpu_sys + used_cpu_user) delta from
# `INFO cpu` divided by the publishes counted (the stream's seq delta), and Redis's share of
# its core during the run (100% is saturation; below it, the load generator was the limit) and
# the publishes/s.
#
#   bash scripts/redis_publish_bench.sh                   # one run
#   RUNS=3 bash scripts/redis_publish_bench.sh            # three runs and their median
#   SCRIPT=/tmp/publish.lua PRELUDE=/tmp/stream.lua bash scripts/redis_publish_bench.sh  # others
#   STATS=1 bash scripts/redis_publish_bench.sh           # and Redis's INFO commandstats
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-1}
N=${N:-100000}
WARMUP=${WARMUP:-20000}
REDIS_CPU=${REDIS_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SCRIPT=${SCRIPT:-src/cluster/lua/publish.lua}
PRELUDE=${PRELUDE:-src/cluster/lua/stream.lua}
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
taskset -c "$REDIS_CPU" redis-server --port "$PORT" --save '' --appendonly no >/dev/null &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
R() { redis-cli -p "$PORT" "$@"; }
for _ in 1 2 3; do
  taskset -c "$LOAD_CPU" redis-cli -p "$PORT" subscribe 'sc:{r}:ch' >/dev/null &
  pids+=($!)
done
SHA=$(cat "$PRELUDE" "$SCRIPT" | redis-cli -p "$PORT" -x script load)
NOW=$(($(date +%s) * 1000))
run() {
  taskset -c "$LOAD_CPU" redis-benchmark -p "$PORT" -q -c 8 -P 16 -n "$1" EVALSHA "$SHA" 2 \
    'sc:{r}:meta' 'sc:{r}:log' 'sc:{r}:ch' PUBLISH \
    '{"type":"message","room":"r","from":"bob","seq":' \
    ',"ts":1732200000123,"body":{"text":"hello there, this is a chat message"}}' \
    "$NOW" '' 1000 $((NOW - 3600000)) 12345 >/dev/null
}
cpu() { R info cpu | tr -d '\r' | awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'; }
seq_now() { R hget 'sc:{r}:meta' seq; }
run "$WARMUP"
results=()
for i in $(seq "$RUNS"); do
  c0=$(cpu); s0=$(seq_now); t0=$(date +%s.%N)
  run "$N"
  c1=$(cpu); s1=$(seq_now); t1=$(date +%s.%N)
  us=$(python3 -c "print(f'{($c1-$c0)*1e6/($s1-$s0):.2f}')")
  busy=$(python3 -c "print(f'{($c1-$c0)*100/($t1-$t0):.0f}')")
  rate=$(python3 -c "print(f'{($s1-$s0)/($t1-$t0):.0f}')")
  echo "run $i: $((s1 - s0)) publishes, ${us} us of Redis CPU per publish, Redis at ${busy}% of its core, ${rate} publishes/s"
  results+=("$us")
done
if [ "$RUNS" -gt 1 ]; then
  printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {print "median: " a[int((NR+1)/2)] " us per publish"}'
fi
[ -n "${STATS:-}" ] && R info commandstats | grep -E "calls=" | tr -d "\r"
# The script's errors would show as no publishes; check the stream once.
[ "$(R xlen 'sc:{r}:log')" -gt 0 ] || { echo "no message stored: the script failed" >&2; exit 1; }
