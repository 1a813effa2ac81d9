#!/usr/bin/env bash
# Redis CPU per publish with the event feed on a Redis Cluster, on or off (docs/hooks.md, "The
# feed on a Redis Cluster"). Three cluster masters (no replicas, no persistence) pinned to core
# REDIS_CPUS (0), one node (core 0, 1 shard), the bot (core 1) publishing USERS x PER_USER
# messages/s for DURATION s to users alone in their rooms (rooms spread over every slot), the
# node delivering the feed to a counting Python backend. Prints the masters' summed
# used_cpu_sys + used_cpu_user over the run (until the feed drained, FEED=1) divided by the
# publishes (the bot's count: from its connecting to the feed drained, so the connects are in
# it too), and the node's CPU per publish the same way. The
# sweep of every partition once a second is counted in (it costs per second, not per publish).
#
#   FEED=1 bash scripts/feed_cluster_bench.sh
#   FEED=0 bash scripts/feed_cluster_bench.sh     # the same load without the feed
#   USERS=500 PER_USER=10 DURATION=20 bash scripts/feed_cluster_bench.sh
#   IDLE=1 FEED=1 bash scripts/feed_cluster_bench.sh   # no load: the masters' CPU per second
#
# Needs target/release/shardcast and shardcast-loadtest (or BOT=path/to/the/bot)
# (cargo build --release -p shardcast --bin shardcast -p shardcast-loadtest).
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-500}
PER_USER=${PER_USER:-10}
DURATION=${DURATION:-20}
FEED=${FEED:-1}
REDIS_CPUS=${REDIS_CPUS:-0}
SECRET=bench-secret-0123456789
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DATA=$(mktemp -d /dev/shm/feedclusterbench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$DATA"
}
trap cleanup EXIT

# A cluster node's bus port is its port + 10000: below 55536.
low_port() { python3 -c 'import socket,random
while True:
    p = random.randrange(20000, 50000); s = socket.socket()
    try: s.bind(("127.0.0.1", p)); s.close(); b = socket.socket(); b.bind(("127.0.0.1", p + 10000)); print(p); break
    except OSError: pass'; }
ports=()
for i in 1 2 3; do
  p=$(low_port)
  mkdir -p "$DATA/r$p"
  taskset -c "$REDIS_CPUS" redis-server --port "$p" --bind 127.0.0.1 --dir "$DATA/r$p" \
    --save "" --appendonly no --cluster-enabled yes --cluster-config-file nodes.conf \
    >"$DATA/r$p.log" 2>&1 &
  pids+=($!)
  ports+=("$p")
done
for p in "${ports[@]}"; do
  for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-yes >/dev/null ||
  { tail -n 5 "$DATA"/r*.log; exit 1; }
for p in "${ports[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
done

PORT=$(free_port)
HOOK=$(free_port)
feed_args=()
if [ "$FEED" = 1 ]; then
  python3 tests/fixtures/feed_backend.py --port "$HOOK" --secret "$SECRET" --count-only >/dev/null &
  pids+=($!)
  feed_args=(--webhook-url "http://127.0.0.1:$HOOK/feed" --webhook-secret "$SECRET")
fi
taskset -c 0 target/release/shardcast serve --bind "127.0.0.1:$PORT" --shards 1 \
  --engine redis --redis-url "redis://127.0.0.1:${ports[0]}" \
  --publish-rate 1000000 --publish-burst 1000000 \
  --user-store-rate-bytes 0 --presence-events false "${feed_args[@]}" 2>"$DATA/server.log" &
SERVER=$!
pids+=("$SERVER")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done

# A family's samples summed (over shards and kinds).
metric() {
  curl -sf "http://127.0.0.1:$PORT/metrics" |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2; n++} END {if (n) printf "%d", s}'
}
redis_cpu() {
  for p in "${ports[@]}"; do redis-cli -p "$p" info cpu; done | tr -d '\r' |
    awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.6f", s}'
}
node_cpu() { awk '{print ($14 + $15) / 100}' "/proc/$SERVER/stat"; }

sleep 3 # past the node's start (its first sweep, the scripts loaded on each master)
c0=$(redis_cpu); n0=$(node_cpu); t0=$(date +%s.%N)
if [ -n "${IDLE:-}" ]; then
  sleep "$DURATION"
  c1=$(redis_cpu); n1=$(node_cpu); t1=$(date +%s.%N)
  python3 -c "import sys; c0,c1,n0,n1,t0,t1=map(float,sys.argv[1:]); print(f'feed=$FEED idle: Redis (3 masters) {(c1-c0)*1e3/(t1-t0):.2f} ms of CPU per second; node {(n1-n0)*1e3/(t1-t0):.2f} ms per second')" \
    "$c0" "$c1" "$n0" "$n1" "$t0" "$t1"
  exit 0
fi
taskset -c 1 "${BOT:-target/release/shardcast-loadtest}" chat --url "ws://127.0.0.1:$PORT/ws" \
  --server-pid "$SERVER" --users "$USERS" --room-size 1 \
  --rate "$PER_USER" --duration "$DURATION" >"$DATA/bot.log" 2>&1 || true
# The bot's count (the redis engine's publishes are sequenced by Redis, not counted by a shard).
pubs=$(awk '$1 == "published" {gsub(",", "", $2); print $2}' "$DATA/bot.log")
if [ "$FEED" = 1 ]; then
  # Until every publish is delivered (each is one `message` event; the bot's connects add more).
  for _ in $(seq 600); do
    d=$(metric shardcast_feed_delivered_total)
    [ "${d:-0}" -ge "$pubs" ] && [ "$(metric shardcast_feed_backlog)" = 0 ] && break
    sleep 0.1
  done
  echo "delivered $(metric shardcast_feed_delivered_total) events for $pubs publishes"
fi
c1=$(redis_cpu); n1=$(node_cpu); t1=$(date +%s.%N)
python3 - "$c0" "$c1" "$n0" "$n1" "$pubs" "$t0" "$t1" "$FEED" <<'EOF'
import sys
c0, c1, n0, n1 = map(float, sys.argv[1:5])
n = int(sys.argv[5])
t0, t1 = float(sys.argv[6]), float(sys.argv[7])
print(f"feed={sys.argv[8]}: {n} publishes in {t1 - t0:.1f} s; Redis (3 masters) "
      f"{(c1 - c0) * 1e6 / n:.2f} us per publish; node {(n1 - n0) * 1e6 / n:.2f} us per publish")
EOF
