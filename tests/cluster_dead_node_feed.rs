//! A dead node's users in the event feed (docs/hooks.md, "The feed in cluster mode"): when a
//! node is SIGKILLed, the live nodes write `disconnected` for each of its connections within
//! `presence_ttl_secs` and a sweep (`cluster/engine/sweep.rs`), once each, without waiting for
//! the users to connect again; connections on live nodes are left alone. Nodes are
//! `shardcast` processes on a real redis-server (and a Redis Cluster); the feed is read with
//! `GET /api/events` from a live node.

mod common;

use std::collections::BTreeMap;

use common::cluster::Cluster;
use common::feed::WAIT;
use common::redis::{RedisCluster, RedisServer};
use common::*;
use serde_json::Value;

/// Pull only (`event_feed`), a short presence TTL (the lease that says a node is dead).
const ARGS: [&str; 6] = [
    "--event-feed",
    "true",
    "--presence-ttl-secs",
    "3",
    "--presence-events",
    "false",
];

/// Every event in the feed, through `GET /api/events` on node `i`.
async fn feed(cluster: &Cluster, i: usize) -> Vec<Value> {
    let (mut after, mut all) = ("0".to_owned(), Vec::new());
    loop {
        let path = format!("/api/events?after={after}&limit=1000");
        let (status, page) = cluster.api(i, "GET", &path, None).await;
        assert_eq!(status, 200, "{page}");
        let events = page["events"].as_array().unwrap().clone();
        if events.is_empty() {
            return all;
        }
        after = page["next"].as_str().unwrap().to_owned();
        all.extend(events);
    }
}

/// The connections of `kind` events (`connected`, `disconnected`), by user.
fn conns(events: &[Value], kind: &str) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["event"] == kind) {
        let user = e["user"].as_str().unwrap().to_owned();
        out.entry(user)
            .or_default()
            .push(e["conn"].as_u64().unwrap());
    }
    for c in out.values_mut() {
        c.sort_unstable();
    }
    out
}

/// The node a connection id was made on (`ConnId`: the node in the top 14 bits).
fn node_of(conn: u64) -> u64 {
    conn >> 50
}

/// Three nodes; ann (one connection), ben (two) and cat (one) on node 2, cat also on node 0,
/// dan on node 0, eve on node 1. Node 2 is SIGKILLed and its users never come back: the feed
/// gets one `disconnected` for each of node 2's four connections and none for the others.
/// Before the kill a sweeper that died mid-sweep is left holding the sweep's lease (`ghost`,
/// set on `sweep_redis`, the server of the `{sweep}` slot): the sweep waits for it to lapse
/// and is done by a live node then. Last, each of node 2's users connects again: the purge
/// at connect finds nothing left to tell (their events are in order, so their new
/// `connected` comes after anything that purge would write).
async fn dead_node_users_are_disconnected(url: &str, sweep_redis: &RedisServer) {
    let mut cluster = Cluster::start(3, url, &ARGS).await;
    let on = |node: usize, user: &'static str| (node, user);
    let placed = [
        on(2, "ann"),
        on(2, "ben"),
        on(2, "ben"),
        on(2, "cat"),
        on(0, "cat"),
        on(0, "dan"),
        on(1, "eve"),
    ];
    let mut clients = Vec::new();
    for (node, user) in placed {
        clients.push(Client::connect_dev(cluster.addr(node), user).await);
    }
    let connected = eventually(WAIT, "every connection's `connected`", async || {
        let c = conns(&feed(&cluster, 0).await, "connected");
        (c.values().map(Vec::len).sum::<usize>() == placed.len()).then_some(c)
    })
    .await;
    let on_node = |node: u64| -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (user, cs) in &connected {
            for &c in cs.iter().filter(|&&c| node_of(c) == node) {
                out.entry(user.clone()).or_default().push(c);
            }
        }
        out
    };
    let dead = on_node(2);
    assert_eq!(
        dead.values().map(Vec::len).sum::<usize>(),
        4,
        "{connected:?}"
    );

    // Longer than the TTL: the live nodes find the dead node before the ghost's lease lapses.
    let ghost = ["SET", "sc:{sweep}:lease", "ghost", "PX", "8000"];
    assert_eq!(sweep_redis.cli(&ghost).await.trim(), "OK");
    cluster.kill(2).await;
    eventually(
        WAIT,
        "node 2's four connections are disconnected",
        async || {
            let x = conns(&feed(&cluster, 0).await, "disconnected");
            (x.values().map(Vec::len).sum::<usize>() >= 4).then_some(())
        },
    )
    .await;

    // Node 2's users come back on node 1.
    for user in ["ann", "ben", "cat"] {
        clients.push(Client::connect_dev(cluster.addr(1), user).await);
    }
    let events = eventually(WAIT, "the returning users' `connected`", async || {
        let events = feed(&cluster, 1).await;
        let back = (conns(&events, "connected").values())
            .flatten()
            .filter(|&&c| node_of(c) == 1)
            .count();
        (back == 4).then_some(events)
    })
    .await;
    assert_eq!(
        conns(&events, "disconnected"),
        dead,
        "one `disconnected` for each of node 2's connections, none for the live nodes'"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_nodes_users_are_disconnected_once() {
    let redis = RedisServer::start().await;
    dead_node_users_are_disconnected(&redis.url(), &redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_redis_cluster_a_dead_nodes_users_are_disconnected_once() {
    let redis = RedisCluster::start(3).await;
    let master = redis.master_of("sweep").await;
    dead_node_users_are_disconnected(&redis.url(), &redis.nodes[master]).await;
}

/// A node stopped (SIGSTOP) for longer than the TTL is taken for dead: its user is
/// `disconnected` by the sweep. Resumed, the node takes a new lease and writes its sessions
/// again: its user, still connected, is `connected` again, and when she leaves, `disconnected`
/// once more. The feed's pairs stay true to who is online.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_taken_for_dead_tells_its_users_connected_again() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(2, &redis.url(), &ARGS).await;
    let mut fay = Client::connect_dev(cluster.addr(1), "fay").await;
    let kinds = async || -> Vec<(String, u64)> {
        (feed(&cluster, 0).await.iter())
            .filter(|e| e["user"] == "fay")
            .map(|e| {
                (
                    e["event"].as_str().unwrap().to_owned(),
                    e["conn"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let conn = eventually(WAIT, "fay's `connected`", async || {
        kinds().await.first().map(|(_, c)| *c)
    })
    .await;
    let c = |kind: &str| (kind.to_owned(), conn);
    cluster.signal(1, "STOP");
    eventually(WAIT, "fay is disconnected by the sweep", async || {
        (kinds().await.len() == 2).then_some(())
    })
    .await;
    cluster.signal(1, "CONT");
    eventually(WAIT, "fay is connected again", async || {
        (kinds().await.len() == 3).then_some(())
    })
    .await;
    fay.ping().await;
    fay.close().await;
    let told = eventually(WAIT, "fay's close is told", async || {
        let k = kinds().await;
        (k.len() == 4).then_some(k)
    })
    .await;
    let want = [
        c("connected"),
        c("disconnected"),
        c("connected"),
        c("disconnected"),
    ];
    assert_eq!(told, want);
}

/// `lua/reap.lua` (the sweep's purge of one user, with the shared functions in front as the
/// engine loads it): a dead lease's sessions are told once and removed with its attached
/// connections; a second pass (a sweep done again after its sweeper died) tells nothing; a
/// live lease's session stays.
#[tokio::test(flavor = "multi_thread")]
async fn the_reap_script_tells_each_dead_session_once() {
    let redis = RedisServer::start().await;
    let lua = |f: &str| {
        std::fs::read_to_string(format!(
            "{}/src/cluster/lua/{f}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let script = lua("stream.lua") + &lua("common.lua") + &lua("reap.lua");
    let (conns, online) = ("sc:{u:ann}:conns", "sc:{u:ann}:online");
    let (log, meta) = ("sc:{feed}:log", "sc:{feed}:meta");
    redis
        .cli(&["ZADD", conns, "1", "11", "1", "12", "2", "21"])
        .await;
    redis.cli(&["ZADD", online, "1", "11", "2", "21"]).await;
    // Lease 1 is dead (the bounds of `Live::dead`), lease 2 lives.
    let dead = "-inf (2 1000000000000 +inf";
    let reap = async || {
        let args = ["EVAL", &script, "4", conns, online, log, meta, dead, "ann"];
        redis.cli(&args).await.trim().to_owned()
    };
    assert_eq!(reap().await, "2");
    assert_eq!(reap().await, "0", "the second pass tells nothing");
    assert_eq!(redis.cli(&["ZRANGE", conns, "0", "-1"]).await.trim(), "21");
    assert_eq!(redis.cli(&["ZRANGE", online, "0", "-1"]).await.trim(), "21");
    let entries = redis.cli(&["XRANGE", log, "-", "+"]).await;
    let told: Vec<&str> = (entries.lines())
        .filter(|l| *l == "11" || *l == "12")
        .collect();
    assert_eq!(told, ["11", "12"], "{entries}");
    assert_eq!(redis.cli(&["HGET", meta, "last"]).await.trim(), "2");
}
