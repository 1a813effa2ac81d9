//! The event feed with the redis engine (docs/hooks.md, "The feed in cluster mode"): the
//! scripts write each event in the call that makes it happen, one node (the lease's holder)
//! delivers it, and a SIGKILLed delivering node's successor goes on from the acknowledged
//! mark. Nodes are `shardcast` processes on one real redis-server; the webhook backend is the
//! Python receiver of tests/feed.rs (its own signature check). The same tests run on a Redis
//! Cluster, where the feed is partitioned by slot and moved into one stream by the lease's
//! holder (`cluster::parts`).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use common::cluster::{Cluster, metric_sum};
use common::feed::*;
use common::redis::{RedisCluster, RedisServer};
use common::*;
use serde_json::{Value, json};

/// The flags every node here gets: the webhook on `port`, short backoff, and `ttl` for
/// `presence_ttl_secs` (the lease: a dead node's is free again within it). Only the kill test
/// shortens it: on a loaded machine a short one can make a live node look dead.
fn feed_args(port: u16, batch: u32, ttl: u64) -> Vec<String> {
    [
        "--webhook-url",
        &format!("http://127.0.0.1:{port}/feed"),
        "--webhook-secret",
        FEED_SECRET,
        "--webhook-backoff-max-ms",
        "200",
        "--webhook-batch",
        &batch.to_string(),
        "--presence-ttl-secs",
        &ttl.to_string(),
        "--occupancy-interval-ms",
        "100",
        "--presence-events",
        "false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn nodes(n: usize, redis: &RedisServer, args: &[String]) -> Cluster {
    nodes_at(n, &redis.url(), args).await
}

async fn nodes_at(n: usize, url: &str, args: &[String]) -> Cluster {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Cluster::start(n, url, &args).await
}

async fn publish(cluster: &Cluster, node: usize, room: &str, n: u64) -> u64 {
    let body = json!({"room": room, "body": {"n": n}});
    let (status, r) = cluster.api(node, "POST", "/api/publish", Some(body)).await;
    assert_eq!(status, 200, "{r}");
    r["seq"].as_u64().unwrap()
}

async fn send(cluster: &Cluster, node: usize, to: &str, n: u64) -> u64 {
    let body = json!({"to": to, "body": {"n": n}});
    let (status, r) = cluster.api(node, "POST", "/api/send", Some(body)).await;
    assert_eq!(status, 200, "{r}");
    r["seq"].as_u64().unwrap()
}

/// Which running node has delivered events (`shardcast_feed_delivered_total`).
async fn deliverers(cluster: &Cluster, running: &[usize]) -> Vec<usize> {
    let mut out = Vec::new();
    for &i in running {
        if metric_sum(&cluster.metrics(i).await, "shardcast_feed_delivered_total") > 0.0 {
            out.push(i);
        }
    }
    out
}

/// Every event kind, on one node of the redis engine, in the order it happened, with the
/// embedded feed's fields.
#[tokio::test(flavor = "multi_thread")]
async fn every_event_kind_arrives_in_order() {
    let redis = RedisServer::start().await;
    every_event_kind(&redis.url(), true).await;
}

/// Each kind with its fields; in the order it happened over the whole feed with `global`
/// (one Redis server), else in each room's and user's order (a Redis Cluster).
async fn every_event_kind(url: &str, global: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, port) = Backend::start(0, &dir.path().join("b.jsonl"), 0).await;
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rooms]]\nprefix = \"big:\"\npresence = \"count\"\n",
    )
    .unwrap();
    let mut args = feed_args(port, 100, 10);
    args.extend(["--config".into(), rules.to_string_lossy().into_owned()]);
    let cluster = nodes_at(1, url, &args).await;
    let addr = cluster.addr(0);

    send(&cluster, 0, "bob", 1).await;
    let mut alice = Client::connect_dev(addr, "alice").await;
    alice.join("r").await;
    let mut bob = Client::connect_dev(addr, "bob").await;
    bob.recv_type("message").await; // the offline DM: bob is attached now
    bob.join("r").await;
    alice.publish("r", json!({"text": "hi"})).await;
    send(&cluster, 0, "bob", 2).await;
    // bob is in `r` too: alice's message comes to him, and the DM.
    while bob.recv_type("message").await["to"] != "bob" {}
    alice.leave("r").await;
    bob.leave("r").await;
    bob.close().await;
    let have = async |kind: &str, room: &str| {
        let what = format!("{kind} {room}");
        eventually(WAIT, &what, async || {
            let events = unique_events(&backend.batches());
            (events.iter())
                .any(|e| e["event"] == kind && e["room"].as_str().unwrap_or("") == room)
                .then_some(())
        })
        .await
    };
    // A count room's occupancy is written at the node's next occupancy tick.
    have("disconnected", "").await;
    alice.join("big:x").await;
    have("occupied", "big:x").await;
    // A count room's occupancy may come before the answer (a Redis Cluster's timing).
    let leave = json!({"type": "leave", "room": "big:x"});
    alice.call_past(leave, |f| f["type"] == "occupancy").await;
    have("vacated", "big:x").await;
    alice.close().await;

    let wanted = [
        ("direct", "bob", ""),
        ("connected", "alice", ""),
        ("occupied", "", "r"),
        ("joined", "alice", "r"),
        ("connected", "bob", ""),
        ("joined", "bob", "r"),
        ("message", "", "r"),
        ("direct", "bob", ""),
        ("left", "alice", "r"),
        ("left", "bob", "r"),
        ("vacated", "", "r"),
        ("disconnected", "bob", ""),
        ("occupied", "", "big:x"),
        ("vacated", "", "big:x"),
        ("disconnected", "alice", ""),
    ];
    let events = eventually(WAIT, "alice's disconnect is an event", async || {
        let events = unique_events(&backend.batches());
        (events.len() >= wanted.len()).then_some(events)
    })
    .await;
    match global {
        true => assert_eq!(summary(&events), owned(&wanted)),
        false => {
            // Each room's and user's events in their order (one partition each).
            let of = |who: &str| -> Vec<(String, String, String)> {
                (summary(&events).into_iter())
                    .filter(|(_, u, r)| r == who || r.is_empty() && u == who)
                    .collect()
            };
            let want = |who: &str| -> Vec<(String, String, String)> {
                (owned(&wanted).into_iter())
                    .filter(|(_, u, r)| r == who || r.is_empty() && u == who)
                    .collect()
            };
            for who in ["r", "big:x", "alice", "bob"] {
                assert_eq!(of(who), want(who), "{who}'s events in order");
            }
            assert_eq!(events.len(), wanted.len());
        }
    }
    // Cursors are dense from 1, ids are the cursors, and each kind has the embedded fields.
    for (i, e) in events.iter().enumerate() {
        let c = (i + 1).to_string();
        assert_eq!(
            (e["id"].as_str(), e["cursor"].as_str()),
            (Some(&*c), Some(&*c))
        );
        assert!(e["time"].as_u64().unwrap() > 1_700_000_000_000, "{e}");
        let mut keys: Vec<&str> = e.as_object().unwrap().keys().map(|k| &**k).collect();
        keys.sort();
        let extra: &[&str] = match e["event"].as_str().unwrap() {
            "message" => &["data", "room", "seq"],
            "direct" => &["data", "offline", "seq", "to"],
            "joined" | "left" => &["room", "user"],
            "occupied" | "vacated" => &["room"],
            _ => &["conn", "user"],
        };
        let mut want = vec!["cursor", "event", "id", "time"];
        want.extend(extra);
        want.sort();
        assert_eq!(keys, want, "{e}");
    }
    let directs = of_kind(&events, "direct");
    assert_eq!(event_seqs(&directs), [1, 2]);
    assert_eq!(
        (directs[0]["offline"].clone(), directs[1]["offline"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(directs[1]["data"]["body"]["n"], 2);
    let message = of_kind(&events, "message")[0];
    assert_eq!(
        (message["seq"].as_u64(), message["data"]["from"].as_str()),
        (Some(1), Some("alice"))
    );
    assert_eq!(message["time"], message["data"]["ts"]);
    let conns: Vec<_> = (events.iter().filter(|e| e["user"] == "bob"))
        .filter_map(|e| e["conn"].as_u64())
        .collect();
    assert_eq!(conns.len(), 2);
    assert_eq!(
        conns[0], conns[1],
        "connected and disconnected name one connection"
    );
    backend.stop().await;
}

/// The backend is down while messages and DMs are stored through Redis, then up (answering
/// 500 twice first): every event arrives once, in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_down_then_up_gets_every_event_once() {
    let redis = RedisServer::start().await;
    backend_down_then_up(&redis.url()).await;
}

async fn backend_down_then_up(url: &str) {
    let port = free_port();
    let cluster = nodes_at(1, url, &feed_args(port, 7, 10)).await;
    for n in 1..=30 {
        assert_eq!(publish(&cluster, 0, "lobby", n).await, n);
    }
    for n in 1..=10 {
        assert_eq!(send(&cluster, 0, "bob", n).await, n);
    }
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = Backend::start(port, &dir.path().join("b.jsonl"), 2).await;
    let events = eventually(WAIT, "all 40 events reach the backend", async || {
        let events = unique_events(&backend.batches());
        (events.len() >= 40).then_some(events)
    })
    .await;
    let batches = backend.batches();
    let sent: usize = (batches.iter())
        .map(|b| b["events"].as_array().unwrap().len())
        .sum();
    assert!(
        sent <= 40 && events.len() == 40,
        "each event once: {sent} sent"
    );
    assert!(batches.iter().all(|b| b["dropped"] == 0));
    assert_eq!(
        event_seqs(&of_kind(&events, "message")),
        (1..=30).collect::<Vec<_>>()
    );
    let directs = of_kind(&events, "direct");
    assert_eq!(event_seqs(&directs), (1..=10).collect::<Vec<_>>());
    assert!(directs.iter().all(|e| e["offline"] == true));
    let m = cluster.metrics(0).await;
    assert_eq!(
        metric_sum(&m, "shardcast_feed_delivered_total"),
        40.0,
        "{m}"
    );
    assert!(metric_sum(&m, "shardcast_feed_failed_total") >= 2.0, "{m}");
    backend.stop().await;
}

/// Three nodes share a Redis; the delivering node is SIGKILLed mid-feed while publishes go on
/// through the others: another node takes the lease and delivers from the stored mark. No
/// event is lost; the only repeats are of one batch, with the same ids.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_delivering_node_loses_no_event() {
    let redis = RedisServer::start().await;
    killed_deliverer(&redis.url(), &["k"]).await;
}

/// The kill test on `url`, the publishes spread over `rooms` (each event of a room in seq
/// order; the first 20 go to the first room).
async fn killed_deliverer(url: &str, rooms: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, port) = Backend::start(0, &dir.path().join("b.jsonl"), 0).await;
    let mut cluster = nodes_at(3, url, &feed_args(port, 10, 3)).await;
    for n in 1..=20 {
        publish(&cluster, n as usize % 3, "k", n).await;
    }
    eventually(WAIT, "the first 20 events", async || {
        (unique_events(&backend.batches()).len() >= 20).then_some(())
    })
    .await;
    let first = deliverers(&cluster, &[0, 1, 2]).await;
    assert_eq!(first.len(), 1, "one node delivers: {first:?}");
    let dead = first[0];
    let alive: Vec<usize> = (0..3).filter(|&i| i != dead).collect();

    // Publishes go on until stopped: through the kill, and 100 more after it.
    let published = Arc::new(AtomicU64::new(20));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let addrs = alive.iter().map(|&i| cluster.addr(i)).collect::<Vec<_>>();
        let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
        let (published, stop) = (published.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seqs: BTreeMap<String, u64> = BTreeMap::from([(rooms[0].clone(), 20)]);
            for n in 21.. {
                if stop.load(Relaxed) {
                    break;
                }
                let room = &rooms[n as usize % rooms.len()];
                let body = json!({"room": room, "body": {"n": n}}).to_string();
                let addr = addrs[n as usize % addrs.len()];
                let r = api(addr, "POST", "/api/publish", None, &body).await;
                assert_eq!(r.status, 200, "{r:?}");
                let seq = seqs.entry(room.clone()).or_default();
                *seq += 1;
                assert_eq!(r.body["seq"], *seq);
                published.store(n, Relaxed);
            }
            seqs
        })
    };
    eventually(WAIT, "100 events delivered before the kill", async || {
        (unique_events(&backend.batches()).len() >= 100).then_some(())
    })
    .await;
    let at_kill = published.load(Relaxed);
    cluster.kill(dead).await;
    eventually(WAIT, "100 publishes after the kill", async || {
        (published.load(Relaxed) >= at_kill + 100).then_some(())
    })
    .await;
    stop.store(true, Relaxed);
    let seqs = publisher.await.unwrap();
    let total = published.load(Relaxed) as usize;
    let events = eventually(WAIT, "every message after the kill", async || {
        let events = unique_events(&backend.batches());
        (events.len() >= total).then_some(events)
    })
    .await;
    assert_eq!(events.len(), total);
    for (room, last) in seqs {
        let of_room: Vec<&Value> = (of_kind(&events, "message").into_iter())
            .filter(|e| e["room"] == room.as_str())
            .collect();
        assert_eq!(
            event_seqs(&of_room),
            (1..=last).collect::<Vec<_>>(),
            "no event of {room} lost, in order"
        );
    }
    let now = deliverers(&cluster, &alive).await;
    assert_eq!(now.len(), 1, "one survivor took over: {now:?}");

    // Repeats: only of one batch (the one in flight, or acknowledged but not marked).
    let batches = backend.batches();
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for e in batches.iter().flat_map(|b| b["events"].as_array().unwrap()) {
        *times
            .entry(e["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let repeated: HashSet<&String> = times
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(times.values().all(|&n| n <= 2), "{times:?}");
    let ids_of = |b: &Value| -> HashSet<String> {
        (b["events"].as_array().unwrap().iter())
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(
        repeated.is_empty()
            || batches
                .iter()
                .any(|b| repeated.iter().all(|id| ids_of(b).contains(*id))),
        "the repeated ids {repeated:?} are all of one batch"
    );
}

/// `GET /api/events` reads the shared feed on a node that does not deliver it, page by page,
/// as the backend got it.
#[tokio::test(flavor = "multi_thread")]
async fn the_pull_api_works_on_a_node_that_does_not_deliver() {
    let redis = RedisServer::start().await;
    pull_on_another_node(&redis.url()).await;
}

async fn pull_on_another_node(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (backend, port) = Backend::start(0, &dir.path().join("b.jsonl"), 0).await;
    let cluster = nodes_at(2, url, &feed_args(port, 100, 10)).await;
    for n in 1..=5 {
        publish(&cluster, 0, "p", n).await;
        send(&cluster, 1, "dora", n).await;
    }
    let pushed = eventually(WAIT, "the 10 events pushed", async || {
        let events = unique_events(&backend.batches());
        (events.len() >= 10).then_some(events)
    })
    .await;
    let d = deliverers(&cluster, &[0, 1]).await;
    assert_eq!(d.len(), 1, "{d:?}");
    let other = 1 - d[0];
    let mut after = "0".to_owned();
    let mut pulled = Vec::new();
    loop {
        let path = format!("/api/events?after={after}&limit=3");
        let (status, page) = cluster.api(other, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["dropped"], 0);
        let events = page["events"].as_array().unwrap().clone();
        assert!(events.len() <= 3);
        if events.is_empty() {
            assert_eq!(page["next"], after.as_str());
            break;
        }
        after = page["next"].as_str().unwrap().to_owned();
        pulled.extend(events);
    }
    assert_eq!(pulled, pushed, "the same events, the same JSON");
    backend.stop().await;
}

/// Retention (`webhook_retention_events`) trims the Redis feed; the next batch says how many
/// were dropped undelivered.
#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_the_oldest_and_says_how_many() {
    let redis = RedisServer::start().await;
    let port = free_port();
    let mut args = feed_args(port, 100, 10);
    args.extend(["--webhook-retention-events".into(), "10".into()]);
    let cluster = nodes(1, &redis, &args).await;
    for n in 1..=30 {
        publish(&cluster, 0, "r", n).await;
    }
    eventually(WAIT, "retention applies", async || {
        let (_, page) = cluster
            .api(0, "GET", "/api/events?after=0&limit=100", None)
            .await;
        (page["dropped"] == 20).then_some(())
    })
    .await;
    assert_eq!(redis.cli(&["XLEN", "sc:{feed}:log"]).await.trim(), "10");
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = Backend::start(port, &dir.path().join("b.jsonl"), 0).await;
    let batches = eventually(WAIT, "the kept 10 arrive", async || {
        let b = backend.batches();
        (unique_events(&b).len() >= 10).then_some(b)
    })
    .await;
    assert_eq!(batches[0]["dropped"], 20);
    let events = unique_events(&batches);
    assert_eq!(
        event_seqs(&of_kind(&events, "message")),
        (21..=30).collect::<Vec<_>>()
    );
    backend.stop().await;
}

// On a Redis Cluster (docs/hooks.md, "The feed on a Redis Cluster"): each script writes its
// event to its slot's partition, and the lease's holder moves them into the feed. Until then
// the server refused the feed at start, so each of these failed there.

#[tokio::test(flavor = "multi_thread")]
async fn on_a_redis_cluster_every_event_kind_arrives() {
    let redis = RedisCluster::start(3).await;
    every_event_kind(&redis.url(), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_redis_cluster_a_backend_down_then_up_gets_every_event_once() {
    let redis = RedisCluster::start(3).await;
    backend_down_then_up(&redis.url()).await;
    // The partitions were written (lobby's and bob's slots), then emptied as they were moved.
    eventually(WAIT, "the partitions are emptied", async || {
        let mut parts = 0;
        for node in &redis.nodes {
            let keys = node.cli(&["KEYS", "sc:{fp*}:log"]).await;
            for key in keys.lines().filter(|k| !k.is_empty()) {
                parts += 1;
                if node.cli(&["XLEN", key]).await.trim() != "0" {
                    return None;
                }
            }
        }
        (parts == 2).then_some(())
    })
    .await;
}

/// Publishes to rooms in different slots (and masters) while the node that moves and
/// delivers the feed is SIGKILLed.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_redis_cluster_a_killed_delivering_node_loses_no_event() {
    let redis = RedisCluster::start(3).await;
    killed_deliverer(&redis.url(), &["k", "ka", "kb", "kc", "kd"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_redis_cluster_the_pull_api_works_on_a_node_that_does_not_deliver() {
    let redis = RedisCluster::start(3).await;
    pull_on_another_node(&redis.url()).await;
}

/// `lua/feed_collect.lua` moves a partition's events into the feed once: a second mover (or a
/// retry after a crash) with events already moved adds nothing, a mover without the lease
/// adds nothing, and a partition that went back restarts from where it is.
#[tokio::test(flavor = "multi_thread")]
async fn the_move_script_moves_each_event_once() {
    let redis = RedisServer::start().await;
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/cluster/lua/feed_collect.lua"
    ))
    .unwrap();
    let (lease, meta, log) = ("sc:{feed}:lease", "sc:{feed}:meta", "sc:{feed}:log");
    redis.cli(&["SET", lease, "me"]).await;
    let run = async |holder: &str, restart: &str, events: &[u64]| -> String {
        let cursors: Vec<String> = events.iter().map(|c| c.to_string()).collect();
        let n = events.len().to_string();
        let mut args = vec!["EVAL", &script, "3", lease, meta, log, holder];
        args.extend(["p7", restart, n.as_str()]);
        for c in &cursors {
            args.extend([c.as_str(), "4", "e", "v", "n", c.as_str()]);
        }
        redis.cli(&args).await.trim().to_owned()
    };
    assert_eq!(run("me", "", &[1, 2]).await, "2");
    assert_eq!(run("me", "", &[2, 3]).await, "3", "2 was moved already");
    assert_eq!(run("other", "", &[4]).await, "-1", "not the lease's holder");
    assert_eq!(
        run("me", "1", &[2]).await,
        "2",
        "the partition went back to 1"
    );
    let names = redis.cli(&["XRANGE", log, "-", "+"]).await;
    let moved: Vec<&str> = names.lines().filter(|l| l.parse::<u64>().is_ok()).collect();
    assert_eq!(moved, ["1", "2", "3", "2"], "{names}");
    assert_eq!(redis.cli(&["HGET", meta, "last"]).await.trim(), "4");
}
