//! Redis failures that a replica answers: a Redis Cluster of three masters with a replica each
//! (AOF `always`, `cluster-node-timeout` 2000) whose master is SIGKILLed under load and its
//! replica promoted, with and without the replica lagging; a stream's seq forced back in Redis;
//! and `redis_wait_replicas`. A connection's publishes keep its order, rooms on healthy masters
//! see no error, `/readyz` does not flap, and a rollback is told (1011, `recovered: false`),
//! never skipped.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::redis::{REPLICATED, RedisCluster, RedisServer};
use common::*;
use serde_json::{Value, json};

/// A promoted replica, and the nodes noticing it, take about 3 to 5 s here.
const FAILOVER: Duration = Duration::from_secs(20);
/// What a node may take to notice a rollback and close the stream's receivers.
const RECOVERY: Duration = Duration::from_secs(10);

const ARGS: [&str; 4] = ["--presence-events", "false", "--redis-timeout-ms", "1000"];

/// Requests a publisher has out at once (the JS client's outbox sends without waiting).
const WINDOW: u64 = 4;

/// What one publisher saw: the numbers it got acked, and every error reply.
struct Published {
    acked: u64,
    errors: Vec<Value>,
}

/// Publishes keyed numbered messages (`{"n": N}`, key `kN`) to `room`, `WINDOW` at a time
/// without waiting in between, and sends again, in order and with the same keys, whatever was
/// refused, as the JS client's outbox does. New numbers stop when `stop` is set; it returns
/// once every number sent is acked.
async fn publisher(mut c: Client, room: String, stop: Arc<AtomicBool>) -> Published {
    let (mut next, mut unacked, mut errors) = (0u64, BTreeSet::new(), Vec::new());
    let mut round = 0u64;
    let deadline = Instant::now() + FAILOVER * 2;
    loop {
        assert!(Instant::now() < deadline, "{room}: {unacked:?} never acked");
        let mut batch: Vec<u64> = unacked.iter().copied().collect();
        if !stop.load(Ordering::SeqCst) {
            while (batch.len() as u64) < WINDOW {
                next += 1;
                unacked.insert(next);
                batch.push(next);
            }
        } else if batch.is_empty() {
            break;
        }
        round += 1;
        let id = |n: u64| round * 1_000_000 + n;
        let frames: Vec<Value> = (batch.iter())
            .map(|&n| {
                json!({"type": "publish", "id": id(n), "room": room, "key": format!("k{n}"),
                       "body": {"n": n}})
            })
            .collect();
        c.send_batch(&frames).await;
        let mut refused = false;
        let mut left: BTreeSet<u64> = batch.iter().map(|&n| id(n)).collect();
        while !left.is_empty() {
            let f = match c.next_within(FAILOVER).await {
                Some(Incoming::Text(t)) => serde_json::from_str::<Value>(&t).unwrap(),
                other => panic!("{room}: publisher got {other:?}"),
            };
            let Some(fid) = f["id"].as_u64() else {
                continue;
            };
            if !left.remove(&fid) {
                continue;
            }
            match f["type"].as_str() {
                Some("ack") => {
                    unacked.remove(&(fid % 1_000_000));
                }
                _ => {
                    assert_eq!(f["code"], "unavailable", "{room}: {f}");
                    errors.push(f);
                    refused = true;
                }
            }
        }
        let pause = if refused { 200 } else { 5 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Published {
        acked: next,
        errors,
    }
}

/// The numbers of `room`'s stored messages, in seq order (history pages go newest first).
async fn stored_numbers(c: &mut Client, room: &str) -> Vec<u64> {
    // The store thread's own connection may learn the new master from a failed read.
    eventually(FAILOVER, "history readable", async || {
        let reply = c
            .call(json!({"type": "history", "room": room, "limit": 1}))
            .await;
        (reply["type"] == "history").then_some(())
    })
    .await;
    let mut all = c.history_all(room).await;
    all.sort_by_key(|m| m["seq"].as_u64());
    (all.iter())
        .map(|m| m["body"]["n"].as_u64().expect("a numbered message"))
        .collect()
}

/// Room names (two per master) and each one's master.
async fn rooms_on_every_master(redis: &RedisCluster) -> Vec<(String, usize)> {
    let mut rooms = Vec::new();
    let mut per_master = std::collections::HashMap::new();
    for i in 0.. {
        let room = format!("f{i}");
        let master = redis.master_of(&format!("r:{room}")).await;
        let n = per_master.entry(master).or_insert(0);
        if *n < 2 {
            *n += 1;
            rooms.push((room, master));
        }
        if rooms.len() == 6 {
            return rooms;
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_master_fails_only_its_rooms_and_keeps_each_connections_order() {
    let mut redis = RedisCluster::start_with_replicas(3).await;
    let cluster = Cluster::start(2, &redis.url(), &ARGS).await;
    let rooms = rooms_on_every_master(&redis).await;
    let victim = rooms[0].1;
    let replica = redis.replica_of(victim).await;

    // One publisher per room, on both nodes.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, (room, _)) in rooms.iter().enumerate() {
        let mut c = dev(cluster.addr(i % 2), &format!("p{i}")).await;
        assert_eq!(c.join(room).await, 0);
        tasks.push(tokio::spawn(publisher(c, room.clone(), stop.clone())));
    }
    // Readiness, every 50 ms on both nodes, from before the kill until the end.
    let watching = Arc::new(AtomicBool::new(true));
    let watch = {
        let (watching, addrs) = (watching.clone(), [cluster.addr(0), cluster.addr(1)]);
        tokio::spawn(async move {
            let mut unready = Vec::new();
            let mut http = [Http::connect(addrs[0]).await, Http::connect(addrs[1]).await];
            while watching.load(Ordering::SeqCst) {
                for (i, h) in http.iter_mut().enumerate() {
                    let r = h.get("/readyz", &[]).await;
                    if r.status != 200 {
                        unready.push((i, r.status, r.body));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            unready
        })
    };

    tokio::time::sleep(Duration::from_millis(700)).await;
    redis.nodes[victim].kill_9().await;
    redis.wait_master(replica, FAILOVER).await;
    // Load goes on a while on the new master.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let mut published = Vec::new();
    for t in tasks {
        published.push(t.await.unwrap());
    }
    watching.store(false, Ordering::SeqCst);
    let unready = watch.await.unwrap();

    let mut reader = dev(cluster.addr(0), "reader").await;
    let mut wrong = Vec::new();
    for (p, (room, master)) in published.iter().zip(&rooms) {
        reader.join(room).await;
        let stored = stored_numbers(&mut reader, room).await;
        // One connection's messages in the order it sent them, each once.
        let inversions = stored.windows(2).filter(|w| w[0] >= w[1]).count();
        if inversions > 0 {
            wrong.push(format!(
                "{room}: {inversions} stored out of order: {stored:?}"
            ));
        }
        if *master != victim {
            if let Some(first) = p.errors.first() {
                let n = p.errors.len();
                wrong.push(format!(
                    "{room} (a healthy master): {n} errors, first {first}"
                ));
            }
            if stored != (1..=p.acked).collect::<Vec<_>>() {
                wrong.push(format!("{room}: stored {stored:?}, sent 1..={}", p.acked));
            }
        }
    }
    if !unready.is_empty() {
        wrong.push(format!("/readyz flapped during the failover: {unready:?}"));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `c`'s epoch in its join ack of `room`.
fn epoch_of(ack: &Value) -> u64 {
    ack["epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("no epoch: {ack}"))
}

/// After a rollback: a `join` with `since` `seen` and the old `epoch` answers
/// `recovered: false` with another epoch and replays the room's messages now, the last one
/// `last_body`.
async fn rejoin_after_rollback(c: &mut Client, room: &str, seen: u64, old: u64, last_body: &Value) {
    let join = json!({"type": "join", "room": room, "since": seen, "epoch": old});
    let ack = c.call(join).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(epoch_of(&ack), old, "a new epoch: {ack}");
    let seq = ack["seq"].as_u64().unwrap();
    let replay = c.recv_n(seq as usize).await;
    assert_eq!(seqs(&replay), (1..=seq).collect::<Vec<_>>(), "{replay:?}");
    assert_eq!(&replay.last().unwrap()["body"], last_body, "{replay:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_replica_without_the_last_writes_starts_a_new_epoch() {
    let mut redis = RedisCluster::start_with_replicas(3).await;
    let cluster = Cluster::start(2, &redis.url(), &ARGS).await;
    let room = "lag";
    let victim = redis.master_of(&format!("r:{room}")).await;
    let replica = redis.replica_of(victim).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let ack = a.call(json!({"type": "join", "room": room})).await;
    let old = epoch_of(&ack);
    let mut b = dev(cluster.addr(1), "b").await;
    assert_eq!(b.join(room).await, 0);
    publish_numbered(&mut a, room, 1..=3).await;
    assert_room_msgs(&b.recv_n(3).await, room, "a", 1..=3);
    redis.wait_synced(victim, replica).await;

    // The replica stops and its link is cut just before 4..=6 are acked; the master dies
    // with them.
    redis.nodes[replica].signal(libc::SIGSTOP);
    redis.nodes[victim]
        .cli(&["CLIENT", "KILL", "TYPE", "replica"])
        .await;
    publish_numbered(&mut a, room, 4..=6).await;
    assert_room_msgs(&b.recv_n(3).await, room, "a", 4..=6);
    redis.nodes[victim].kill_9().await;
    redis.nodes[replica].signal(libc::SIGCONT);
    redis.wait_master(replica, FAILOVER).await;

    // The new master hands seq 4 out again: every live receiver must be told.
    let body = json!("after the failover");
    eventually(FAILOVER, "a publish on the new master", async || {
        let req = json!({"room": room, "body": body});
        let (status, reply) = cluster.api(1, "POST", "/api/publish", Some(req)).await;
        (status == 200).then_some(reply)
    })
    .await;
    a.expect_close_within(1011, RECOVERY).await;
    b.expect_close_within(1011, RECOVERY).await;
    let mut c = retry_dev(cluster.addr(0), "c", RECOVERY).await.unwrap();
    rejoin_after_rollback(&mut c, room, 6, old, &body).await;
}

/// One node on one Redis, a and b in room r with messages 1..=5, then r's seq forced back to
/// 2 in Redis (the log keeps 1..=2), as a replica without the last writes would have it.
async fn rolled_back_room() -> (RedisServer, Cluster, Client, Client, u64) {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(1, &redis.url(), &ARGS).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let old = epoch_of(&a.call(json!({"type": "join", "room": "r"})).await);
    let mut b = dev(cluster.addr(0), "b").await;
    assert_eq!(b.join("r").await, 0);
    publish_numbered(&mut a, "r", 1..=5).await;
    assert_room_msgs(&b.recv_n(5).await, "r", "a", 1..=5);
    // A stream's top id cannot go back: the log is written again with its first two entries.
    let script = "local keep = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[1]) \
                  redis.call('DEL', KEYS[1]) \
                  for _, e in ipairs(keep) do redis.call('XADD', KEYS[1], e[1], unpack(e[2])) end \
                  return redis.call('HSET', KEYS[2], 'seq', ARGV[1])";
    let keys = ["sc:{r:r}:log", "sc:{r:r}:meta"];
    redis
        .cli(&["EVAL", script, "2", keys[0], keys[1], "2"])
        .await;
    (redis, cluster, a, b, old)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seq_heard_again_live_starts_a_new_epoch() {
    let (_redis, cluster, mut a, mut b, old) = rolled_back_room().await;
    // Seq 3 again: b already has a seq 3, and must not take this one for a repeat. The
    // publisher's ack and its own 1011 race (the live message may be heard first); either
    // way the message is stored as the new epoch's seq 3, which the rejoin below checks.
    a.send_json(&json!({"type": "publish", "room": "r", "body": "new 3", "id": 1}))
        .await;
    b.expect_close_within(1011, RECOVERY).await;
    match a.next_within(RECOVERY).await {
        Some(Incoming::Text(t)) => {
            let ack: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                (&ack["type"], &ack["seq"]),
                (&json!("ack"), &json!(3)),
                "{ack}"
            );
            a.expect_close_within(1011, RECOVERY).await;
        }
        Some(Incoming::Close(Some((code, _)))) => assert_eq!(code, 1011),
        other => panic!(
            "a: expected the ack or 1011, got {}",
            other.map_or("nothing".into(), |o| o.to_string())
        ),
    }
    let mut c = dev(cluster.addr(0), "c").await;
    rejoin_after_rollback(&mut c, "r", 5, old, &json!("new 3")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seq_below_the_delivered_one_after_a_resubscription_starts_a_new_epoch() {
    let (redis, cluster, _a, mut b, old) = rolled_back_room().await;
    // The node reads the room's tail when it resubscribes: seq 2, below the 5 it delivered.
    redis.kill_client("sc-sub-0").await;
    b.expect_close_within(1011, RECOVERY).await;
    let mut c = dev(cluster.addr(0), "c").await;
    let join = json!({"type": "join", "room": "r", "since": 5, "epoch": old});
    let ack = c.call(join).await;
    assert_eq!(ack["recovered"], false, "{ack}");
    assert_ne!(epoch_of(&ack), old, "{ack}");
    assert_room_msgs(&c.recv_n(2).await, "r", "a", 1..=2);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_wait_replicas_acks_only_what_a_replica_has() {
    let master = RedisServer::start_with(&REPLICATED).await;
    let port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]).await;
    // A write seen on the replica: after a full sync the master streams to it only once the
    // replica's first ack arrives (up to a second after its link is up), and `WAIT` before
    // that times out.
    master.cli(&["SET", "synced", "1"]).await;
    eventually(TIMEOUT, "the replica in sync", async || {
        let got = replica.cli(&["GET", "synced"]).await;
        (got.trim() == "1").then_some(())
    })
    .await;
    let mut args = ARGS.to_vec();
    args.extend(["--redis-wait-replicas", "1"]);
    let cluster = Cluster::start(1, &master.url(), &args).await;
    let mut a = dev(cluster.addr(0), "a").await;
    assert_eq!(a.join("r").await, 0);
    let publish = |key: &str| json!({"type": "publish", "room": "r", "key": key, "body": key});
    let (_, ack) = a.request(publish("k1")).await;
    assert_eq!(
        (&ack["type"], &ack["seq"]),
        (&json!("ack"), &json!(1)),
        "{ack}"
    );

    // The replica cannot confirm: stored, but not acked.
    replica.signal(libc::SIGSTOP);
    let (_, refused) = a.request(publish("k2")).await;
    assert_error(&refused, "unavailable", Some(&refused["id"]));
    let why = refused["message"].as_str().unwrap();
    assert!(why.contains("replicas") && why.contains("key"), "{why}");
    replica.signal(libc::SIGCONT);
    // Sent again with its key: it was stored, once.
    let (_, ack) = a.request(publish("k2")).await;
    assert_eq!(
        (&ack["seq"], &ack["dup"]),
        (&json!(2), &json!(true)),
        "{ack}"
    );
    let bodies: Vec<Value> = (a.history_all("r").await.iter().rev())
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(bodies, [json!("k1"), json!("k2")]);
}
