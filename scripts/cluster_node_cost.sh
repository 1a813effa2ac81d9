#!/usr/bin/env bash
# Node CPU per delivery of a cluster against one node in `memory` mode (issue 25, target 3):
# the bot's chat run, 9,000 users in rooms of 10 at 0.33 msg/s, run alternately with three
# nodes and Redis on core SERVER_CPU (0) and with one node in `memory` mode there, the bot on
# core CLIENT_CPU (1). Prints each run's CPU per delivery and p99 publish→deliver, the medians
# and their ratio. With perf (and perf_event_paranoid <= 2 for our own processes), it also
# counts, per delivery, the nodes' system calls and context switches during 6 s of each run's
# window: counts do not move with the machine's load the way CPU time does (the VM has no
# instruction counters), so they say where the gap is when the times are noisy.
#
#   bash scripts/cluster_node_cost.sh                     # 3 rounds (cluster, then memory)
#   RUNS=5 BIN=/tmp/before bash scripts/cluster_node_cost.sh  # other binaries (shardcast and
#                                                         # shardcast-loadtest in BIN)
#
# Release binaries are needed: `cargo build --release -p shardcast -p shardcast-loadtest`.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BIN=${BIN:-$PWD/target/release}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
export TMPDIR=${TMPDIR:-/dev/shm}
OUT=$(mktemp -d)
EVENTS=task-clock,context-switches,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvfrom
EVENTS=$EVENTS,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_writev,syscalls:sys_enter_sendto
counting=0
if command -v perf >/dev/null && perf stat -e syscalls:sys_enter_sendmsg -- true >/dev/null 2>&1; then
  counting=1
fi

run() { # mode tag
  local args
  if [ "$1" = cluster ]; then
    args=(--spawn-cluster 3 --redis-cpus "$SERVER_CPU")
  else
    args=(--spawn-server --durability memory)
  fi
  "$BIN/shardcast-loadtest" chat --users 9000 --room-size 10 --rate 0.33 "${args[@]}" \
    --server-cpus "$SERVER_CPU" --client-cpus "$CLIENT_CPU" --duration 15 --warmup 5 \
    --server-bin "$BIN/shardcast" >"$OUT/$2.txt" 2>&1 &
  local bot=$!
  if [ "$counting" = 1 ]; then
    # 11 s: connected (about 3 s) and 5 s of warm-up are behind, the window is on.
    sleep 11
    local pids
    pids=$(pgrep -f "^$BIN/shardcast serve" | paste -sd, || true)
    [ -n "$pids" ] && perf stat -x, -e "$EVENTS" -p "$pids" -- sleep 6 2>"$OUT/$2.stat" || true
  fi
  wait "$bot"
  local cpu p99 rate
  cpu=$(awk '/CPU\/delivery/ {print $2; exit}' "$OUT/$2.txt")
  p99=$(awk '/publish→deliver/ {print $4; exit}' "$OUT/$2.txt")
  rate=$(awk '/deliveries\/s/ {gsub(",", "", $2); print $2; exit}' "$OUT/$2.txt")
  if [ -z "$cpu" ] || [ -z "$p99" ]; then
    echo "$2: the run failed; its report: $OUT/$2.txt"
    return
  fi
  printf '%-10s %s us per delivery, p99 %s ms' "$2" "$cpu" "$p99"
  if [ -s "$OUT/$2.stat" ]; then
    awk -F, -v d="$rate" '$1 ~ /^[0-9.]+$/ {n = $3; sub("syscalls:sys_enter_", "", n);
      if (n != "task-clock") printf ", %s %.3f", n, $1 / (d * 6)}' "$OUT/$2.stat"
  fi
  # A backlogged server batches more frames per write and reads: cheaper per delivery, so
  # such a run is not comparable (a loaded machine starved it).
  if python3 -c "import sys; sys.exit(0 if float('$p99') > 50 else 1)"; then
    echo " (backlogged: p99 over 50 ms, left out of the median)"
    return
  fi
  echo
  echo "$cpu" >>"$OUT/$1.list"
}

median() { sort -n "$1" | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

for i in $(seq "$RUNS"); do
  run cluster "cluster-$i"
  run memory "memory-$i"
done
if [ ! -s "$OUT/cluster.list" ] || [ ! -s "$OUT/memory.list" ]; then
  echo "no comparable runs of one kind; the machine is too loaded (the bot's reports: $OUT)"
  exit 1
fi
c=$(median "$OUT/cluster.list")
m=$(median "$OUT/memory.list")
echo "medians: 3 nodes $c us, one node in memory mode $m us per delivery; ratio $(python3 -c "print(f'{$c/$m:.2f}')")x"
echo "(the bot's full reports: $OUT)"
