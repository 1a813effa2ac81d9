//! A cluster of shardcast nodes for the cluster tests: N `shardcast serve --engine redis`
//! child processes (the test build's binary, as [`BinaryServer`]) sharing one Redis URL, each
//! with its own temp data dir, on `127.0.0.1:0`. A test can SIGKILL a node and start it again.
//!
//! Also the checks several cluster tests share: [`publish_everywhere`] (one total order per
//! room across nodes) and [`read_room`] (a member's messages up to a seq, with no gap).
//!
//! It starts no Redis (`super::redis` does) and keeps no client state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::{BinaryServer, Client, Http, Incoming};

/// One node: its process (None once killed), address and data dir.
struct Node {
    server: Option<BinaryServer>,
    addr: SocketAddr,
    data: TempDir,
}

/// N nodes `--engine redis --redis-url URL --node-id i --shards 2`, with no publish rate limit
/// that a test would reach, plus a test's own arguments.
pub struct Cluster {
    nodes: Vec<Node>,
    args: Vec<String>,
    /// Node i's `--redis-url`.
    urls: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes on `redis_url` with `extra` arguments; returns once each is listening.
    pub async fn start(n: usize, redis_url: &str, extra: &[&str]) -> Cluster {
        Cluster::start_with_urls(&vec![redis_url; n], extra).await
    }

    /// One node per URL in `urls` (the same Redis, reached in different ways). Nodes have
    /// `--shards 2` (the engine on a thread of its own) unless `extra` says `--shards`;
    /// `SHARDCAST_TEST_CLUSTER_SHARDS=1` runs a whole test file with one shard per node (the
    /// engine on the shard's thread).
    pub async fn start_with_urls(urls: &[&str], extra: &[&str]) -> Cluster {
        let shards = std::env::var("SHARDCAST_TEST_CLUSTER_SHARDS").unwrap_or_else(|_| "2".into());
        let mut args: Vec<String> = ["--engine", "redis", "--bind", "127.0.0.1:0"]
            .iter()
            .chain(&super::NO_RATE_LIMIT)
            .map(|s| s.to_string())
            .collect();
        if !extra.contains(&"--shards") {
            args.extend(["--shards".to_owned(), shards]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cluster = Cluster {
            nodes: Vec::with_capacity(urls.len()),
            args,
            urls: urls.iter().map(|u| u.to_string()).collect(),
        };
        // All start at once; then each is waited for.
        for i in 0..urls.len() {
            let data = tempfile::tempdir().expect("temp dir for a node");
            let server = cluster.spawn(i, data.path());
            cluster.nodes.push(Node {
                server: Some(server),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                data,
            });
        }
        for node in &mut cluster.nodes {
            node.addr = node.server.as_mut().unwrap().listening_addr().await;
        }
        cluster
    }

    fn spawn(&self, i: usize, data: &Path) -> BinaryServer {
        let id = i.to_string();
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend(["--node-id", &id, "--redis-url", &self.urls[i]]);
        let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
        BinaryServer::spawn_in(bin, data, &args)
    }

    /// Node `i`'s address (its new one after [`Cluster::restart`]).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// SIGKILLs node `i` and waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        let mut server = self.nodes[i].server.take().expect("node already killed");
        server.signal("KILL");
        server.wait_exit(Duration::from_secs(5)).await;
    }

    /// Sends node `i` signal `sig` (`STOP`, `CONT`...).
    pub fn signal(&self, i: usize, sig: &str) {
        self.nodes[i]
            .server
            .as_ref()
            .expect("node killed")
            .signal(sig);
    }

    /// Starts node `i` again (same id and data dir, a new port) after [`Cluster::kill`].
    pub async fn restart(&mut self, i: usize) -> SocketAddr {
        assert!(self.nodes[i].server.is_none(), "node {i} is still running");
        let mut server = self.spawn(i, self.nodes[i].data.path());
        let addr = server.listening_addr().await;
        self.nodes[i].server = Some(server);
        self.nodes[i].addr = addr;
        addr
    }

    /// A kept-alive HTTP connection to node `i`.
    pub async fn http(&self, i: usize) -> Http {
        Http::connect(self.addr(i)).await
    }

    /// One server API request to node `i` (the API is open in dev mode): status and JSON body.
    pub async fn api(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let headers = [("Content-Type", "application/json")];
        let reply = self
            .http(i)
            .await
            .request(method, path, &headers, &body)
            .await;
        let json = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("node {i}: {method} {path}: not JSON ({e}): {reply:?}"));
        (reply.status, json)
    }

    /// `GET /readyz` status of node `i`.
    pub async fn readyz(&self, i: usize) -> u16 {
        self.http(i).await.get("/readyz", &[]).await.status
    }

    /// Waits up to `within` until every running node's `/readyz` answers `status`.
    pub async fn wait_ready(&self, status: u16, within: Duration) {
        for i in (0..self.len()).filter(|&i| self.nodes[i].server.is_some()) {
            let what = format!("node {i}: /readyz {status}");
            super::eventually(within, &what, async || {
                (self.readyz(i).await == status).then_some(())
            })
            .await;
        }
    }

    /// `GET /metrics` of node `i`.
    pub async fn metrics(&self, i: usize) -> String {
        let reply = self.http(i).await.get("/metrics", &[]).await;
        assert_eq!(reply.status, 200, "node {i}: /metrics: {}", reply.body);
        reply.body
    }
}

impl Drop for Cluster {
    /// A failed test shows what each node printed (the nodes are separate processes).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(server) = &node.server {
                let out = server.output();
                let tail: Vec<&str> = out.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                eprintln!(
                    "--- node {i} ({}), last lines:\n{}",
                    node.addr,
                    tail.join("\n")
                );
            }
        }
    }
}

/// The sum of the samples of metric `name` (every label set) in a `/metrics` text.
pub fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The body of message `n` published by `by`.
fn body_of(by: &str, n: u64) -> Value {
    json!({"by": by, "n": n})
}

/// Each client publishes `n` messages to each of `rooms` (fresh rooms it has joined, on
/// whichever node; presence events off), all clients at once and pipelined, then reads until
/// it has its acks and every other client's messages. Per room, each client must see seq
/// 1..=total exactly once (its own through acks, never as messages), messages in increasing
/// seq, and every client must agree on who published what at each seq: one total order.
pub async fn publish_everywhere(clients: &mut [Client], rooms: &[&str], n: u64) {
    let others = clients.len() as u64 - 1;
    let views = futures_util::future::join_all(clients.iter_mut().map(|c| async move {
        for room in rooms {
            for k in 1..=n {
                let body = body_of(&c.name, k);
                let id = format!("{room}/{k}");
                c.send_json(&json!({"type":"publish","room":room,"body":body,"id":id}))
                    .await;
            }
        }
        // Per room: seq -> (publisher, n), and the order messages arrived in.
        let mut seen: BTreeMap<String, BTreeMap<u64, (String, u64)>> = BTreeMap::new();
        let mut arrived: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let total = rooms.len() as u64 * n * (1 + others);
        let mut got = 0;
        while got < total {
            let f = c.recv_json().await;
            let room = f["room"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: {f}", c.name));
            let seq = f["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: {f}", c.name));
            let entry = match f["type"].as_str() {
                Some("ack") => {
                    let id = f["id"].as_str().expect("ack id");
                    let k = id.rsplit('/').next().unwrap().parse().unwrap();
                    assert_eq!(id, format!("{room}/{k}"), "{}: ack {f}", c.name);
                    (c.name.clone(), k)
                }
                Some("message") => {
                    let by = f["from"].as_str().unwrap().to_string();
                    assert_ne!(by, c.name, "{}: got its own publish back: {f}", c.name);
                    assert_eq!(f["body"], body_of(&by, f["body"]["n"].as_u64().unwrap()));
                    arrived.entry(room.into()).or_default().push(seq);
                    (by, f["body"]["n"].as_u64().unwrap())
                }
                _ => panic!("{}: expected acks and messages only, got {f}", c.name),
            };
            let prior = seen.entry(room.into()).or_default().insert(seq, entry);
            assert!(
                prior.is_none(),
                "{}: seq {seq} in {room} twice ({f})",
                c.name
            );
            got += 1;
        }
        for (room, seqs) in &arrived {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "{}: {room} messages out of seq order: {seqs:?}",
                c.name
            );
        }
        (c.name.clone(), seen)
    }))
    .await;
    let (first, reference) = &views[0];
    for room in rooms {
        let seqs: Vec<u64> = reference[*room].keys().copied().collect();
        let expected: Vec<u64> = (1..=n * (1 + others)).collect();
        assert_eq!(
            seqs, expected,
            "{first}: {room} seqs must be 1..=N without a gap"
        );
    }
    for (name, view) in &views[1..] {
        assert_eq!(
            view, reference,
            "{name} and {first} disagree on the rooms' order"
        );
    }
}

/// Reads `c`'s frames until its message in `room` with seq `last`, waiting up to `wait` for
/// each frame. Returns the room's messages (which must be in seq order with no gap and no
/// duplicate, starting right after `after`) and the other frames (presence events...).
pub async fn read_room(
    c: &mut Client,
    room: &str,
    after: u64,
    last: u64,
    wait: Duration,
) -> (Vec<Value>, Vec<Value>) {
    let (mut msgs, mut other) = (Vec::new(), Vec::new());
    let mut next = after + 1;
    while next <= last {
        let f = match c.next_within(wait).await {
            Some(Incoming::Text(t)) => serde_json::from_str::<Value>(&t).unwrap(),
            Some(end) => panic!("{}: waiting for {room} seq {next}, got {end}", c.name),
            None => panic!(
                "{}: {room} seq {next} (of {after}..={last}) not within {wait:?}; had {other:?}",
                c.name
            ),
        };
        if f["type"] == "message" && f["room"] == room {
            assert_eq!(
                f["seq"], next,
                "{}: gap or duplicate in {room}: {f}",
                c.name
            );
            next += 1;
            msgs.push(f);
        } else {
            other.push(f);
        }
    }
    (msgs, other)
}

/// Reads `c`'s frames until one for which `found` holds, within `deadline`; returns the
/// frames before it and it.
pub async fn read_until(
    c: &mut Client,
    what: &str,
    deadline: Instant,
    found: impl Fn(&Value) -> bool,
) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        let f = match c.next_within(wait).await {
            Some(Incoming::Text(t)) => serde_json::from_str::<Value>(&t).unwrap(),
            Some(end) => panic!("{}: waiting for {what}, got {end}", c.name),
            None => panic!("{}: {what}: not in time; had {before:?}", c.name),
        };
        if found(&f) {
            return (before, f);
        }
        before.push(f);
    }
}
