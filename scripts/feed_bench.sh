#!/usr/bin/env bash
# Does the event feed keep up? The bot publishes USERS x PER_USER messages/s (each user alone in
# its room: every message is stored and acked, none fanned out), the server (pinned to core 0,
# the bot to core 1) POSTs the feed in batches of BATCH to a counting Python backend
# (tests/fixtures/feed_backend.py --count-only), and /metrics is read every second.
#
#   bash scripts/feed_bench.sh                 # 1000 users x 12 msg/s = 12,000 events/s, 20 s
#   FEED=0 bash scripts/feed_bench.sh          # the same load without the feed (for the cost)
#   USERS=1000 PER_USER=20 BATCH=100 DURATION=20 DURABILITY=sync bash scripts/feed_bench.sh
#   ENGINE=redis bash scripts/feed_bench.sh    # one node on a redis-server (core REDIS_CPUS, 0)
#                                              # the bot then reports Redis's CPU per publish
#
# Prints, per second, the feed's recorded / delivered counters and its backlog, then the
# delivered rate over the run, the largest backlog, and how long the backlog took to drain
# after the bot stopped. Needs target/release/shardcast and shardcast-loadtest
# (cargo build --release -p shardcast --bin shardcast -p shardcast-loadtest).
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-1000}
PER_USER=${PER_USER:-12}
DURATION=${DURATION:-20}
BATCH=${BATCH:-100}
FEED=${FEED:-1}
DURABILITY=${DURABILITY:-sync}
ENGINE=${ENGINE:-embedded}
REDIS_CPUS=${REDIS_CPUS:-0}
SECRET=bench-secret-0123456789
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
HOOK=$(free_port)
DATA=$(mktemp -d /dev/shm/feedbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$DATA" "$DATA.bot.log" "$DATA.log"
}
trap cleanup EXIT

feed_args=()
engine_args=(--data "$DATA" --durability "$DURABILITY")
bot_args=(--durability "$DURABILITY")
if [ "$ENGINE" = redis ]; then
  RPORT=$(free_port)
  taskset -c "$REDIS_CPUS" redis-server --port "$RPORT" --save "" --appendonly no >/dev/null &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  engine_args=(--engine redis --redis-url "redis://127.0.0.1:$RPORT")
  bot_args=(--redis-url "redis://127.0.0.1:$RPORT")
fi
if [ "$FEED" = 1 ]; then
  python3 tests/fixtures/feed_backend.py --port "$HOOK" --secret "$SECRET" --count-only >/dev/null &
  pids+=($!)
  feed_args=(--webhook-url "http://127.0.0.1:$HOOK/feed" --webhook-secret "$SECRET" --webhook-batch "$BATCH")
fi
taskset -c 0 target/release/shardcast serve --bind "127.0.0.1:$PORT" --shards 1 "${engine_args[@]}" \
  --publish-rate 1000000 --publish-burst 1000000 \
  --user-store-rate-bytes 0 --presence-events false "${feed_args[@]}" 2>"$DATA.log" &
SERVER=$!
pids+=("$SERVER")
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

metric() { grep -E "^$1 " <<<"$2" | awk '{print $2}'; }
sample() {
  local m
  m=$(curl -sf "http://127.0.0.1:$PORT/metrics" || true)
  local rec
  rec=$(metric shardcast_feed_recorded_total "$m")
  # The redis engine's scripts write the feed: its last cursor is what was recorded.
  [ "$ENGINE" = redis ] && rec=$(redis-cli -p "$RPORT" hget "sc:{feed}:meta" last)
  echo "${rec:-0} $(metric shardcast_feed_delivered_total "$m") $(metric shardcast_feed_backlog "$m")"
}

taskset -c 1 target/release/shardcast-loadtest chat --url "ws://127.0.0.1:$PORT/ws" \
  --server-pid "$SERVER" "${bot_args[@]}" --users "$USERS" --room-size 1 \
  --rate "$PER_USER" --duration "$DURATION" > "$DATA.bot.log" 2>&1 &
BOT=$!
pids+=("$BOT")
start=$(date +%s.%N)
first=""; last=""; max_backlog=0; stopped=""
echo "t recorded delivered backlog"
while true; do
  sleep 1
  read -r rec del back <<<"$(sample)"
  now=$(date +%s.%N)
  t=$(printf '%.0f' "$(echo "$now - $start" | bc)")
  echo "$t ${rec:--} ${del:--} ${back:--}"
  [ "$FEED" = 1 ] || { kill -0 "$BOT" 2>/dev/null && continue || break; }
  if [ -z "$first" ] && [ "${del:-0}" -gt 0 ]; then first="$now $del"; fi
  [ "${back:-0}" -gt "$max_backlog" ] && max_backlog=$back
  if ! kill -0 "$BOT" 2>/dev/null; then
    [ -z "$stopped" ] && stopped=$now
    if [ "${back:-1}" = 0 ] && [ "$del" = "$rec" ]; then break; fi
    if [ "$(echo "$now - $stopped > 60" | bc)" = 1 ]; then echo "backlog not drained in 60 s"; break; fi
  else
    last="$now $del"
  fi
done
wait "$BOT" || true
cat "$DATA.bot.log"
if [ "$FEED" = 1 ]; then
  read -r t0 d0 <<<"$first"; read -r t1 d1 <<<"$last"
  echo "delivered while the bot ran: $(echo "($d1 - $d0) / ($t1 - $t0)" | bc) events/s"
  echo "largest backlog: $max_backlog events"
  echo "drained $(printf '%.1f' "$(echo "$(date +%s.%N) - $stopped" | bc)") s after the bot stopped; delivered $del of $rec"
fi
