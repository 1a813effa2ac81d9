#!/usr/bin/env python3
"""How fast the event feed drains: fills the feed of a running server through the API with its
webhook backend down (N messages over 100 rooms, 8 threads), then starts the counting backend
(tests/fixtures/feed_backend.py --count-only) on the webhook's port and times, from
/metrics, how long delivering all N takes.

    taskset -c 0 target/release/shardcast serve --bind 127.0.0.1:PORT --data /dev/shm/d \
        --shards 1 --webhook-url http://127.0.0.1:HOOK/feed \
        --webhook-secret bench-secret-0123456789 --webhook-backoff-max-ms 200 &
    python3 scripts/feed_drain.py PORT HOOK 60000
"""
import http.client, json, subprocess, sys, threading, time, os, socket
PORT = int(sys.argv[1]); HOOK = int(sys.argv[2]); N = int(sys.argv[3]); THREADS = 8
def pub(k):
    c = http.client.HTTPConnection("127.0.0.1", PORT)
    for i in range(k, N, THREADS):
        c.request("POST", "/api/publish", json.dumps({"room": "r%d" % (i % 100), "body": {"n": i, "text": "x" * 60}}), {"Content-Type": "application/json"})
        r = c.getresponse(); r.read(); assert r.status == 200
t0 = time.time()
ts = [threading.Thread(target=pub, args=(k,)) for k in range(THREADS)]
[t.start() for t in ts]; [t.join() for t in ts]
print("stored %d events in %.1f s" % (N, time.time() - t0), flush=True)
def metric(name):
    c = http.client.HTTPConnection("127.0.0.1", PORT); c.request("GET", "/metrics"); body = c.getresponse().read().decode()
    for l in body.splitlines():
        if l.startswith(name + " "): return int(l.split()[1])
backend = subprocess.Popen([sys.executable, "tests/fixtures/feed_backend.py", "--port", str(HOOK), "--secret", "bench-secret-0123456789", "--count-only"], stdout=subprocess.PIPE)
backend.stdout.readline()
t0 = time.time()
while True:
    time.sleep(0.5)
    d = metric("shardcast_feed_delivered_total"); b = metric("shardcast_feed_backlog")
    print("%.1f delivered %d backlog %d" % (time.time() - t0, d, b), flush=True)
    if d >= N: break
el = time.time() - t0
print("drained %d events in %.2f s: %.0f events/s" % (N, el, N / el))
backend.kill()
