//! Metrics and health over real HTTP: `/metrics` parsed as the Prometheus text format (types,
//! labels, cumulative histogram buckets) and checked to move by the exact amounts of the traffic
//! real clients make; `/api/stats` totals and its key check; `/readyz` during shutdown.
//!
//! HTTP is `common::Http`, one kept-alive connection per test.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use shardcast::config::Durability;

// ---------------------------------------------------------------------------------------------
// The endpoints under test, over `common::Http`
// ---------------------------------------------------------------------------------------------

impl Http {
    /// `GET /metrics`, parsed and checked.
    async fn scrape(&mut self) -> Metrics {
        let reply = self.get("/metrics", &[]).await;
        assert_eq!(reply.status, 200, "/metrics: {}", reply.body);
        assert!(
            reply.content_type.starts_with("text/plain; version=0.0.4"),
            "/metrics content type {:?}",
            reply.content_type
        );
        Metrics::parse(&reply.body)
    }

    async fn stats(&mut self, headers: &[(&str, &str)]) -> Value {
        let reply = self.get("/api/stats", headers).await;
        assert_eq!(reply.status, 200, "/api/stats: {}", reply.body);
        assert!(reply.content_type.starts_with("application/json"));
        serde_json::from_str(&reply.body).expect("/api/stats is JSON")
    }
}

// ---------------------------------------------------------------------------------------------
// The text exposition format, version 0.0.4
// ---------------------------------------------------------------------------------------------

type Labels = BTreeMap<String, String>;

/// A parsed scrape: every sample by name and labels, and each family's type.
#[derive(Debug)]
struct Metrics {
    types: HashMap<String, String>,
    samples: BTreeMap<(String, Labels), f64>,
}

impl Metrics {
    /// Parses the exposition and checks its rules: each family has `# HELP` and `# TYPE`
    /// before its samples, a sample belongs to a declared family, no sample is repeated, and a
    /// histogram's buckets are cumulative, ascending in `le`, end with `+Inf` and agree with
    /// `_count`.
    fn parse(text: &str) -> Metrics {
        let mut types = HashMap::new();
        let mut helped = Vec::new();
        let mut samples = BTreeMap::new();
        let mut order = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("# HELP name text");
                assert!(!help.is_empty(), "empty help for {name}");
                helped.push(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "unknown type in {line:?}"
                );
                assert!(
                    helped.contains(&name.to_string()),
                    "TYPE before HELP: {name}"
                );
                let old = types.insert(name.to_string(), kind.to_string());
                assert!(old.is_none(), "{name} declared twice");
            } else if line.starts_with('#') || line.is_empty() {
                continue;
            } else {
                let (name, labels, value) = parse_sample(line);
                let family = family_of(&name, &types);
                let kind = types
                    .get(&family)
                    .unwrap_or_else(|| panic!("sample of undeclared family: {line:?}"));
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} without _total");
                }
                order.push((name.clone(), labels.clone()));
                let old = samples.insert((name, labels), value);
                assert!(old.is_none(), "repeated sample {line:?}");
            }
        }
        let metrics = Metrics { types, samples };
        for (family, kind) in &metrics.types {
            if kind == "histogram" {
                metrics.check_histogram(family, &order);
            }
        }
        metrics
    }

    fn check_histogram(&self, family: &str, order: &[(String, Labels)]) {
        let bucket = format!("{family}_bucket");
        let buckets: Vec<(String, f64)> = order
            .iter()
            .filter(|(name, _)| *name == bucket)
            .map(|key| (key.1["le"].clone(), self.samples[key]))
            .collect();
        assert!(buckets.len() >= 2, "{family}: too few buckets");
        assert_eq!(buckets.last().unwrap().0, "+Inf", "{family}: last bucket");
        let mut last = (f64::NEG_INFINITY, 0.0);
        for (le, count) in &buckets {
            let bound: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("numeric le")
            };
            assert!(bound > last.0, "{family}: le not ascending at {le}");
            assert!(*count >= last.1, "{family}: buckets not cumulative at {le}");
            last = (bound, *count);
        }
        assert_eq!(
            self.get(&format!("{family}_count"), &[]),
            last.1,
            "{family}"
        );
        assert!(
            self.get(&format!("{family}_sum"), &[]) >= 0.0,
            "{family}_sum"
        );
    }

    /// The sample `name{labels}`, which must exist.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let labels: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        *self
            .samples
            .get(&(name.to_string(), labels.clone()))
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in the scrape"))
    }

    /// The sum of every sample of `name`, whatever its labels.
    fn sum(&self, name: &str) -> f64 {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| *v)
            .collect();
        assert!(!values.is_empty(), "no sample {name} in the scrape");
        values.iter().sum()
    }

    fn kind(&self, family: &str) -> &str {
        self.types
            .get(family)
            .unwrap_or_else(|| panic!("no # TYPE for {family}"))
    }
}

/// The family a sample belongs to: a histogram's `_bucket`, `_sum` and `_count` belong to it.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types.get(base).is_some_and(|k| k == "histogram")
        {
            return base.to_string();
        }
    }
    name.to_string()
}

/// `name{k="v",...} value` (labels optional; values here need no escapes but `\"` is read).
fn parse_sample(line: &str) -> (String, Labels, f64) {
    let name_end = line.find(['{', ' ']).expect("sample name");
    let name = &line[..name_end];
    assert!(
        name.chars()
            .enumerate()
            .all(|(i, c)| c.is_ascii_alphabetic()
                || c == '_'
                || c == ':'
                || (i > 0 && c.is_ascii_digit())),
        "bad metric name {name:?}"
    );
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().expect("unterminated labels");
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "in {line:?}");
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("unterminated label value").1 {
                            '"' => break,
                            '\\' => value.push(chars.next().expect("escape").1),
                            c => value.push(c),
                        }
                    }
                    let old = labels.insert(std::mem::take(&mut key), value);
                    assert!(old.is_none(), "repeated label in {line:?}");
                }
                c => key.push(c),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .unwrap_or_else(|| panic!("no value in {line:?}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line:?}: {e}")),
    };
    (name.to_string(), labels, value)
}

/// Scrapes until `done` holds (a close reaches the server after the client's call returns).
async fn scrape_until(http: &mut Http, what: &str, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let m = http.scrape().await;
        if done(&m) {
            return m;
        }
        assert!(Instant::now() < deadline, "{what}: not within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn disconnects(m: &Metrics, reason: &str) -> f64 {
    m.get("shardcast_disconnects_total", &[("reason", reason)])
}

fn errors(m: &Metrics, code: &str) -> f64 {
    m.get("shardcast_errors_total", &[("code", code)])
}

fn publishes(m: &Metrics, kind: &str) -> f64 {
    (0..2)
        .map(|s| {
            let shard = s.to_string();
            m.get(
                "shardcast_publishes_total",
                &[("shard", &shard), ("kind", kind)],
            )
        })
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Every family is declared with its conventional type, and each per-shard series exists for
/// every shard.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_well_formed_and_typed() {
    let server = TestServer::start(|c| c.shards = 3);
    let mut http = Http::connect(server.addr()).await;
    let m = http.scrape().await;
    for (family, kind) in [
        ("shardcast_connections", "gauge"),
        ("shardcast_rooms_local", "gauge"),
        ("shardcast_rooms_homed", "gauge"),
        ("shardcast_frames_in_total", "counter"),
        ("shardcast_frames_out_total", "counter"),
        ("shardcast_deliveries_total", "counter"),
        ("shardcast_outbound_queue_bytes", "gauge"),
        ("shardcast_publishes_total", "counter"),
        ("shardcast_errors_total", "counter"),
        ("shardcast_disconnects_total", "counter"),
        ("shardcast_publish_latency_seconds", "histogram"),
        ("shardcast_store_commit_seconds", "histogram"),
        ("shardcast_store_write_failures_total", "counter"),
        ("shardcast_store_disk_free_bytes", "gauge"),
        ("shardcast_store_disk_low", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
    ] {
        assert_eq!(m.kind(family), kind, "type of {family}");
    }
    for shard in ["0", "1", "2"] {
        assert_eq!(m.get("shardcast_connections", &[("shard", shard)]), 0.0);
        assert_eq!(
            m.get("shardcast_outbound_queue_bytes", &[("shard", shard)]),
            0.0
        );
    }
    for code in [
        "bad_request",
        "unknown_type",
        "invalid_name",
        "not_member",
        "forbidden",
        "too_large",
        "rate_limited",
        "unavailable",
        "unauthorized",
    ] {
        assert_eq!(errors(&m, code), 0.0, "{code}");
    }
    assert_eq!(disconnects(&m, "slow_consumer"), 0.0);
    assert!(m.get("shardcast_store_disk_free_bytes", &[]) > 0.0);
    assert_eq!(m.get("shardcast_store_disk_low", &[]), 0.0);
    assert!(m.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(m.get("process_cpu_seconds_total", &[]) > 0.0);
}

/// Connections per shard, rooms, publishes, deliveries, frames, errors by code, disconnects by
/// reason and both histograms move by exactly what two shards' worth of real clients did.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_by_the_traffic() {
    let server = TestServer::start(|c| {
        fast(c);
        c.shards = 2;
    });
    let addr = server.addr();
    // Shard 0 deals accepted connections round-robin: this HTTP connection is the first
    // (shard 0), then a → 1, b → 0, c → 1.
    let mut http = Http::connect(addr).await;
    let before = http.scrape().await;
    let mut a = dev(addr, "a").await;
    let mut b = dev(addr, "b").await;
    let mut c = dev(addr, "c").await;
    for who in [&mut a, &mut b, &mut c] {
        who.join("r").await;
    }
    publish_numbered(&mut a, "r", 1..=4).await;
    assert_room_msgs(&b.recv_n(4).await, "r", "a", 1..=4);
    assert_room_msgs(&c.recv_n(4).await, "r", "a", 1..=4);
    a.dm("b", json!("hi")).await;
    assert_dm(&b.recv_json().await, "b", "a", &json!("hi"));
    let reply = a.call(json!({"type": "nope"})).await;
    assert_eq!(reply["code"], "unknown_type", "{reply}");
    let reply = c
        .call(json!({"type": "publish", "room": "elsewhere", "body": 1}))
        .await;
    assert_eq!(reply["code"], "not_member", "{reply}");

    let after = http.scrape().await;
    let delta = |name: &str| after.sum(name) - before.sum(name);
    assert_eq!(after.get("shardcast_connections", &[("shard", "0")]), 1.0);
    assert_eq!(after.get("shardcast_connections", &[("shard", "1")]), 2.0);
    assert_eq!(after.get("shardcast_rooms_local", &[("shard", "0")]), 1.0);
    assert_eq!(after.get("shardcast_rooms_local", &[("shard", "1")]), 1.0);
    assert_eq!(after.sum("shardcast_rooms_homed"), 1.0, "one room in use");
    assert_eq!(publishes(&after, "room") - publishes(&before, "room"), 4.0);
    assert_eq!(
        publishes(&after, "direct") - publishes(&before, "direct"),
        1.0
    );
    // 4 messages to b and c each, 1 direct message to b.
    assert_eq!(delta("shardcast_deliveries_total"), 9.0);
    // 3 joins, 4 publishes, 1 send, 2 bad requests.
    assert_eq!(delta("shardcast_frames_in_total"), 10.0);
    // 3 welcomes, 3 join acks, 4 + 1 acks, 9 deliveries, 2 error replies.
    assert_eq!(delta("shardcast_frames_out_total"), 22.0);
    assert_eq!(
        errors(&after, "unknown_type") - errors(&before, "unknown_type"),
        1.0
    );
    assert_eq!(
        errors(&after, "not_member") - errors(&before, "not_member"),
        1.0
    );
    assert_eq!(
        errors(&after, "bad_request"),
        errors(&before, "bad_request")
    );
    let count = |m: &Metrics, h: &str| m.get(&format!("{h}_count"), &[]);
    let latency = "shardcast_publish_latency_seconds";
    assert_eq!(count(&after, latency) - count(&before, latency), 5.0);
    let commit = "shardcast_store_commit_seconds";
    // Sync durability and one message at a time: at least one commit per message.
    assert!(count(&after, commit) - count(&before, commit) >= 5.0);
    assert_eq!(after.get("shardcast_store_write_failures_total", &[]), 0.0);

    // A client's close is `normal`; a dropped socket is `connection_lost`.
    c.close().await;
    let closed = scrape_until(&mut http, "c's close counted", |m| {
        disconnects(m, "normal") == disconnects(&before, "normal") + 1.0
    })
    .await;
    assert_eq!(closed.get("shardcast_connections", &[("shard", "1")]), 1.0);
    assert_eq!(disconnects(&closed, "connection_lost"), 0.0);
    drop(b);
    let lost = scrape_until(&mut http, "b's dropped socket counted", |m| {
        disconnects(m, "connection_lost") == 1.0
    })
    .await;
    assert_eq!(lost.get("shardcast_connections", &[("shard", "0")]), 0.0);
    assert_eq!(disconnects(&lost, "normal"), disconnects(&closed, "normal"));
    assert!(lost.get("process_cpu_seconds_total", &[]) > 0.0);
    drop(a);
}

/// A member that stops reading shows in the outbound queue gauge, then is disconnected as a
/// slow consumer and counted under that reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_shows_in_the_queue_and_in_disconnects() {
    const PAD: usize = 60 * 1024;
    const QUEUE: usize = 64 * 1024;
    let server = TestServer::start(|c| {
        fast(c);
        c.shards = 1;
        c.durability = Durability::Memory;
        c.max_queue_bytes = QUEUE;
        c.close_timeout_ms = 30_000;
    });
    let addr = server.addr();
    let mut http = Http::connect(addr).await;
    let mut slow = dev(addr, "slow").await;
    let mut publisher = dev(addr, "publisher").await;
    slow.join("room").await;
    publisher.join("room").await;

    // `slow` is not read from here on. Its socket buffers fill, then its queue.
    let pad = "x".repeat(PAD);
    let mut queued_seen = 0.0;
    let mut closed = false;
    for i in 1..=400 {
        publisher.publish("room", json!({"i": i, "pad": pad})).await;
        let m = http.scrape().await;
        let queued = m.get("shardcast_outbound_queue_bytes", &[("shard", "0")]);
        assert!(
            queued <= (QUEUE + PAD + 100) as f64,
            "a queue over max_queue_bytes by more than one frame: {queued}"
        );
        if queued > 0.0 && queued_seen == 0.0 {
            queued_seen = queued;
        }
        if disconnects(&m, "slow_consumer") == 1.0 {
            closed = true;
            assert_eq!(m.get("shardcast_connections", &[("shard", "0")]), 1.0);
            assert_eq!(queued, 0.0, "the closed consumer's queue is dropped");
            break;
        }
    }
    assert!(
        queued_seen > 0.0,
        "the unread queue never showed in the gauge"
    );
    assert!(
        closed,
        "the slow consumer was never counted as disconnected"
    );
    publisher.ping().await;
}

/// `/api/stats` has the same connections, rooms and messages as the traffic, per shard and in
/// total, and agrees with `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn api_stats_totals_match_the_traffic() {
    let server = TestServer::start(|c| {
        fast(c);
        c.shards = 2;
    });
    let addr = server.addr();
    let mut http = Http::connect(addr).await;
    let mut a = dev(addr, "a").await;
    let mut b = dev(addr, "b").await;
    a.join("r").await;
    b.join("r").await;
    publish_numbered(&mut a, "r", 1..=3).await;
    assert_room_msgs(&b.recv_n(3).await, "r", "a", 1..=3);

    let stats = http.stats(&[]).await;
    let total = &stats["total"];
    // 2 joins and 3 publishes in; 2 welcomes, 2 join acks, 3 acks and 3 messages out, of
    // which the 3 messages are deliveries.
    assert_eq!(
        *total,
        json!({"connections": 2, "rooms": 1, "messages_in": 5, "messages_out": 10, "deliveries": 3}),
        "{stats}"
    );
    let shards = stats["shards"].as_array().expect("shards array");
    assert_eq!(shards.len(), 2, "{stats}");
    let m = http.scrape().await;
    for key in [
        "connections",
        "rooms",
        "messages_in",
        "messages_out",
        "deliveries",
    ] {
        let sum: u64 = shards.iter().map(|s| s[key].as_u64().unwrap()).sum();
        assert_eq!(json!(sum), total[key], "{key} per shard sums to the total");
    }
    for s in shards {
        let shard = s["shard"].as_u64().unwrap().to_string();
        let label = [("shard", shard.as_str())];
        let connections = m.get("shardcast_connections", &label);
        assert_eq!(s["connections"].as_f64(), Some(connections), "{s}");
        let frames_in = m.get("shardcast_frames_in_total", &label);
        assert_eq!(s["messages_in"].as_f64(), Some(frames_in), "{s}");
    }
}

/// With an `api_key`, `/api/stats` needs `Authorization: apikey KEY`; with `api = false` it
/// does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn api_stats_checks_the_key() {
    let server = TestServer::start(|c| c.api_key = Some("k3y".into()));
    let mut http = Http::connect(server.addr()).await;
    for headers in [
        &[][..],
        &[("Authorization", "apikey wrong")][..],
        &[("Authorization", "apikey k3")][..],
        &[("Authorization", "Bearer k3y")][..],
    ] {
        let reply = http.get("/api/stats", headers).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).expect("JSON error");
        assert_eq!(body["code"], "unauthorized", "{body}");
    }
    let stats = http.stats(&[("Authorization", "apikey k3y")]).await;
    assert_eq!(stats["total"]["connections"], 0, "{stats}");

    let server = TestServer::start(|c| c.api = false);
    let mut http = Http::connect(server.addr()).await;
    assert_eq!(http.get("/api/stats", &[]).await.status, 404);
}

/// With a `metrics_key`, `/metrics` needs `Authorization: Bearer KEY` (issue 18, finding 10).
#[tokio::test(flavor = "multi_thread")]
async fn metrics_key_is_required_when_set() {
    let server = TestServer::start(|c| c.metrics_key = Some("scrape-k3y".into()));
    let mut http = Http::connect(server.addr()).await;
    for headers in [
        &[][..],
        &[("Authorization", "Bearer wrong")][..],
        &[("Authorization", "Bearer scrape-k3")][..],
        &[("Authorization", "Bearer scrape-k3y2")][..],
        &[("Authorization", "scrape-k3y")][..],
        &[("Authorization", "apikey scrape-k3y")][..],
    ] {
        let reply = http.get("/metrics", headers).await;
        assert_eq!(reply.status, 401, "{headers:?}: {}", reply.body);
        let body: Value = serde_json::from_str(&reply.body).expect("JSON error");
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert!(
            !reply.body.contains("shardcast_"),
            "no metric leaks: {}",
            reply.body
        );
    }
    let reply = http
        .get("/metrics", &[("Authorization", "Bearer scrape-k3y")])
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    Metrics::parse(&reply.body);
    // Health probes need no key.
    assert_eq!(http.get("/healthz", &[]).await.status, 200);
    assert_eq!(http.get("/readyz", &[]).await.status, 200);
}

/// With `metrics_bind`, `/metrics` is served on that address only, with `/healthz` and
/// `/readyz`; the public listener answers 404 for it.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_bind_moves_metrics_to_their_own_address() {
    let server = TestServer::start(|c| c.metrics_bind = Some("127.0.0.1:0".parse().unwrap()));
    let public = server.addr();
    let private = server.metrics_addr().expect("a metrics address");
    assert_ne!(public, private);
    let mut http = Http::connect(public).await;
    let reply = http.get("/metrics", &[]).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert!(!reply.body.contains("shardcast_"), "{}", reply.body);
    assert_eq!(http.get("/healthz", &[]).await.status, 200);

    let mut c = dev(public, "alice").await;
    c.ping().await;
    let mut scraper = Http::connect(private).await;
    let m = scraper.scrape().await;
    assert_eq!(m.sum("shardcast_connections"), 1.0);
    assert_eq!(scraper.get("/healthz", &[]).await.status, 200);
    assert_eq!(scraper.get("/readyz", &[]).await.status, 200);
    for path in ["/", "/ws?user=bob", "/api/stats", "/shardcast.js"] {
        let reply = scraper.get(path, &[]).await;
        assert_eq!(
            reply.status, 404,
            "{path} on the metrics listener: {}",
            reply.body
        );
    }
    let reply = scraper.request("POST", "/metrics", &[], "x").await;
    assert_eq!(reply.status, 404, "{}", reply.body);
}

/// `/readyz` is 200 while serving and 503 `unavailable` once shutdown has begun. The request
/// goes over a connection opened before the shutdown, on a shard kept running by a client that
/// has not yet answered its 1001.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_503_during_shutdown() {
    let mut server = TestServer::start(|c| {
        c.shards = 1;
        c.close_timeout_ms = 30_000;
        c.shutdown_timeout_ms = 30_000;
    });
    let addr = server.addr();
    let mut http = Http::connect(addr).await;
    let ready = http.get("/readyz", &[]).await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ok\n"));
    assert_eq!(http.get("/healthz", &[]).await.status, 200);
    let mut a = dev(addr, "a").await;

    server.shutdown();
    let reply = http.get("/readyz", &[]).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.content_type.starts_with("application/json"));
    let body: Value = serde_json::from_str(&reply.body).expect("JSON body");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("shutting down"))
    );
    // Liveness is unaffected while the shard runs.
    assert_eq!(http.get("/healthz", &[]).await.status, 200);

    a.expect_close(1001).await;
    server.join();
}
