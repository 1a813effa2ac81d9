//! Retention by count in cluster mode, as clients see it. The publish script trims a stream's
//! log exactly only at every 64th seq (an exact trim on every append is most of Redis's cost
//! of a publish), so between trims the log holds up to 63 entries past the limit; no read may
//! show them: `history`, `join` with `since` and `sync` return at most the limit, the newest,
//! at every seq. And the trim itself stays exact: right after it the log holds the limit.
//!
//! Nodes here run one shard each, so the engine runs on the shard's thread.

mod common;

use common::cluster::Cluster;
use common::redis::RedisServer;
use common::*;
use serde_json::json;

const KEPT: u64 = 5;

async fn log_len(redis: &RedisServer, key: &str) -> u64 {
    let out = redis.cli(&["XLEN", key]).await;
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("XLEN {key}: {out}"))
}

/// The log's key for room `room` (`Keys::log`, the default prefix).
async fn room_log(redis: &RedisServer, room: &str) -> String {
    let keys = redis.cli(&["KEYS", &format!("*{room}*")]).await;
    let found: Vec<&str> = keys.lines().filter(|k| k.ends_with(":log")).collect();
    assert_eq!(found.len(), 1, "one log key for {room}: {keys}");
    found[0].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn history_and_replays_never_show_more_than_the_limit_between_trims() {
    let redis = RedisServer::start().await;
    let kept = KEPT.to_string();
    let args = [
        "--shards",
        "1",
        "--presence-events",
        "false",
        "--room-retention-messages",
        &kept,
    ];
    let cluster = Cluster::start(2, &redis.url(), &args).await;
    let mut b = dev(cluster.addr(0), "b").await;
    b.join("r").await;
    // Up to the first trim (seq 64) and past it, checked at every seq on the other node.
    let mut a = dev(cluster.addr(1), "a").await;
    a.join("r").await;
    for n in 1..=70u64 {
        publish_numbered(&mut b, "r", n..=n).await;
        assert_room_msgs(&a.recv_n(1).await, "r", "b", n..=n);
        let newest = n.saturating_sub(KEPT) + 1..=n;
        let all = a.history_all("r").await;
        assert_room_msgs(&all, "r", "b", newest.clone().rev());
        // `since` at the oldest seq: only what is within the limit is replayed.
        let mut c = dev(cluster.addr(1), "c").await;
        let recovered = n <= KEPT;
        let replayed = n.min(KEPT);
        assert_recovery(&c.join_since("r", 0).await, n, recovered, replayed, false);
        assert_room_msgs(&c.recv_n(replayed as usize).await, "r", "b", newest);
    }
    // The log itself: trimmed exactly at seq 64, then growing again.
    assert_eq!(
        log_len(&redis, &room_log(&redis, "r").await).await,
        KEPT + 6
    );
}

/// One node of one shard on `redis`, keeping `KEPT` messages per stream of `flag`'s kind.
async fn one_node(redis: &RedisServer, flag: &str) -> Cluster {
    let kept = KEPT.to_string();
    Cluster::start(1, &redis.url(), &["--shards", "1", flag, &kept]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_trim_at_every_64th_seq_is_exact() {
    let redis = RedisServer::start().await;
    let cluster = one_node(&redis, "--room-retention-messages").await;
    let mut b = dev(cluster.addr(0), "b").await;
    b.join("t").await;
    publish_numbered(&mut b, "t", 1..=63).await;
    let log = room_log(&redis, "t").await;
    assert_eq!(log_len(&redis, &log).await, 63, "no trim before seq 64");
    publish_numbered(&mut b, "t", 64..=64).await;
    assert_eq!(
        log_len(&redis, &log).await,
        KEPT,
        "exactly the limit at seq 64"
    );
    assert_room_msgs(&b.history_all("t").await, "t", "b", (60..=64).rev());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_inbox_replay_and_sync_never_show_more_than_its_limit() {
    let redis = RedisServer::start().await;
    let cluster = one_node(&redis, "--inbox-retention-messages").await;
    let mut alice = dev(cluster.addr(0), "alice").await;
    for n in 1..=20u64 {
        assert_eq!(alice.dm("bob", json!(n)).await, n);
    }
    let mut bob = dev(cluster.addr(0), "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 20, "{}", bob.welcome);
    // What reached no connection is replayed behind `welcome`: within the limit too.
    let replayed = bob.recv_n(KEPT as usize).await;
    assert_eq!(
        seqs(&replayed),
        (16..=20).collect::<Vec<_>>(),
        "the newest 5"
    );
    bob.assert_silent(std::time::Duration::from_millis(300))
        .await;
    let (page, more) = bob.sync(0).await;
    assert!(!more, "one page");
    assert_eq!(seqs(&page), (16..=20).collect::<Vec<_>>(), "the newest 5");
}
