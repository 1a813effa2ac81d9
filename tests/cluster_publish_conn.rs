//! The publish scripts' own connection to Redis (`cluster::calls`, named `sc-pub-N`, on one
//! server over plain TCP): killed while publishes are in flight, and Redis's script cache
//! flushed mid-run. Every publish is acked and delivered once, or answered `unavailable`;
//! publishing works again afterwards.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::cluster::{Cluster, read_room};
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};

/// Publishes in flight at once.
const BURST: u64 = 10;

/// Two nodes on a fresh Redis (no presence events, a long `redis_timeout_ms`: a call in flight
/// when its connection drops must fail at once, not when it times out, within the client's
/// `TIMEOUT`); a on node 0 and b on node 1 in room r.
async fn two_nodes() -> (RedisServer, Cluster, Client, Client) {
    let redis = RedisServer::start().await;
    let extra = ["--presence-events", "false", "--redis-timeout-ms", "30000"];
    let cluster = Cluster::start(2, &redis.url(), &extra).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    assert_eq!(a.join("r").await, 0);
    assert_eq!(b.join("r").await, 0);
    (redis, cluster, a, b)
}

/// The `CLIENT LIST` field `field` of the connection named `name`.
async fn client_field(redis: &RedisServer, name: &str, field: &str) -> Option<String> {
    let list = redis.cli(&["CLIENT", "LIST"]).await;
    list.lines()
        .find(|l| l.split_whitespace().any(|kv| kv == format!("name={name}")))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix(&format!("{field}=")).map(str::to_owned))
        })
}

/// Publishes `{"n": n}` for n in 1..=total on `a`, `BURST` at a time without waiting for the
/// replies; each reply must be an ack or `unavailable`. Returns each n's seq (`None`:
/// unavailable); `acked` counts the acks as they come.
async fn publish_bursts(a: &mut Client, total: u64, acked: &AtomicU64) -> Vec<(u64, Option<u64>)> {
    let mut out = Vec::new();
    for start in (1..=total).step_by(BURST as usize) {
        let ns: Vec<u64> = (start..(start + BURST).min(total + 1)).collect();
        for &n in &ns {
            let frame = json!({"type": "publish", "id": n, "room": "r", "body": numbered(n)});
            a.send_json(&frame).await;
        }
        let mut left = ns.len();
        while left > 0 {
            let f = a.recv_json().await;
            let Some(n) = f["id"].as_u64() else { continue };
            match f["type"].as_str() {
                Some("ack") => {
                    out.push((n, Some(f["seq"].as_u64().expect("an ack's seq"))));
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                _ => {
                    assert_error(&f, "unavailable", Some(&json!(n)));
                    out.push((n, None));
                }
            }
            left -= 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

/// b's view of everything up to `last`: no gap, no duplicate (`read_room`), each acked
/// publish at its seq with its body, and no publish stored twice.
async fn assert_delivered_once(b: &mut Client, outcomes: &[(u64, Option<u64>)], last: u64) {
    let (msgs, _) = read_room(b, "r", 0, last, TIMEOUT).await;
    let body_of = |seq: u64| msgs[seq as usize - 1]["body"].clone();
    for (n, seq) in outcomes {
        if let Some(seq) = seq {
            assert_eq!(
                body_of(*seq),
                numbered(*n),
                "publish {n} acked as seq {seq}"
            );
        }
    }
    let bodies: Vec<&Value> = msgs.iter().map(|m| &m["body"]).collect();
    let unique: HashSet<String> = bodies.iter().map(|b| b.to_string()).collect();
    assert_eq!(
        unique.len(),
        bodies.len(),
        "a publish stored twice: {bodies:?}"
    );
    b.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_publish_connection_fails_its_calls_in_flight_and_is_opened_again() {
    let (redis, _cluster, a, mut b) = two_nodes().await;
    let before = redis.client_port("sc-pub-0").await;
    assert!(
        before.is_some(),
        "node 0 has no publish connection (sc-pub-0)"
    );
    let acked = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (mut a, acked) = (a, acked.clone());
        tokio::spawn(async move {
            let outcomes = publish_bursts(&mut a, 400, &acked).await;
            (a, outcomes)
        })
    };
    eventually(TIMEOUT, "30 publishes acked", async || {
        (acked.load(Ordering::SeqCst) >= 30).then_some(())
    })
    .await;
    // Writes paused: the next burst's calls stay in flight, unanswered, until the kill.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "10000", "WRITE"]).await.trim(), "OK");
    eventually(TIMEOUT, "a publish call held by the pause", async || {
        let flags = client_field(&redis, "sc-pub-0", "flags").await?;
        flags.contains('b').then_some(())
    })
    .await;
    redis.kill_client("sc-pub-0").await;
    assert_eq!(redis.cli(&["CLIENT", "UNPAUSE"]).await.trim(), "OK");
    let (mut a, outcomes) = publisher.await.expect("publisher");
    assert_eq!(outcomes.len(), 400);
    let failed = outcomes.iter().filter(|(_, seq)| seq.is_none()).count();
    assert!(failed >= 1, "no publish was in flight when its connection was killed");
    // Opened again, and publishing works on it.
    let after = eventually(TIMEOUT, "sc-pub-0 open again", async || {
        redis.client_port("sc-pub-0").await
    })
    .await;
    assert_ne!(Some(after), before, "the killed connection is still there");
    let last = eventually(TIMEOUT, "a publish acked after the kill", async || {
        let (_, reply) = a
            .request(json!({"type": "publish", "room": "r", "body": "after"}))
            .await;
        reply["seq"].as_u64()
    })
    .await;
    assert_delivered_once(&mut b, &outcomes, last).await;
    assert_eq!(
        client_field(&redis, "sc-pub-0", "cmd").await.as_deref(),
        Some("evalsha"),
        "the publishes went over another connection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_go_on_after_redis_flushes_its_scripts() {
    let (redis, _cluster, mut a, mut b) = two_nodes().await;
    publish_numbered(&mut a, "r", 1..=3).await;
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).await.trim(), "OK");
    // The next publish meets NOSCRIPT: the script is loaded and run again.
    assert_eq!(a.publish("r", numbered(4)).await, 4);
    assert_eq!(
        client_field(&redis, "sc-pub-0", "cmd").await.as_deref(),
        Some("evalsha"),
        "the publish did not go over the publish connection"
    );
    let acked = AtomicU64::new(0);
    let outcomes = publish_bursts(&mut a, 40, &acked).await;
    assert!(
        outcomes.iter().all(|(_, seq)| seq.is_some()),
        "{outcomes:?}"
    );
    let (msgs, _) = read_room(&mut b, "r", 0, 4, TIMEOUT).await;
    assert_room_msgs(&msgs, "r", "a", 1..=4);
    let (msgs, _) = read_room(&mut b, "r", 4, 44, TIMEOUT).await;
    let bodies: Vec<&Value> = msgs.iter().map(|m| &m["body"]).collect();
    let want: Vec<Value> = (1..=40).map(numbered).collect();
    assert_eq!(bodies, want.iter().collect::<Vec<_>>());
}
