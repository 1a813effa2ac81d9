//! The connect hook's `info` (docs/hooks.md, docs/protocol.md "Presence"): a JSON object the
//! backend gives a connection, within `max_presence_info_bytes`, shown to the room's other
//! members in `joined` and in the `presence` reply while the user is in the room, and gone
//! once the user left. An info too large or not an object fails the connect hook. Through a
//! real server and the Python backend (tests/fixtures/hook_backend.py), in both engines.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::hook_backend::Backend;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};
use shardcast::config::{Config, Engine};

fn with_info(url: &str, c: &mut Config) {
    c.hook_url = Some(url.to_owned());
    c.hook_connect = true;
    c.presence_events = true;
}

/// [`with_info`] on the Redis engine.
fn with_info_on_redis(url: &str, redis: &RedisServer, c: &mut Config) {
    with_info(url, c);
    c.engine = Engine::Redis;
    c.redis_url = Some(redis.url());
}

/// The `presence` reply of `c` for `room`.
async fn presence(c: &mut Client, room: &str) -> Value {
    let id = c.fresh_id();
    c.send_json(&json!({"type": "presence", "room": room, "id": id}))
        .await;
    c.recv_type("presence").await
}

async fn info_in_presence(addr: SocketAddr) {
    let vip = json!({"name": "VIP vipbob", "tags": ["a", "b"]});
    let mut alice = Client::connect_dev(addr, "alice").await;
    alice.join("lobby").await;

    let mut bob = Client::connect_dev(addr, "vipbob").await;
    bob.join("lobby").await;
    let joined = alice.recv_type("joined").await;
    assert_eq!(joined["user"], "vipbob", "{joined}");
    assert_eq!(joined["info"], vip, "{joined}");

    // Only users with info are in the reply's `info`; the users list is as before.
    let p = presence(&mut alice, "lobby").await;
    assert_eq!(p["users"], json!(["alice", "vipbob"]), "{p}");
    assert_eq!(p["info"], json!({ "vipbob": vip }), "{p}");
    let p = presence(&mut bob, "lobby").await;
    assert_eq!(p["info"], json!({ "vipbob": vip }), "{p}");

    // A user without info: its `joined` has none.
    let mut carol = Client::connect_dev(addr, "carol").await;
    carol.join("lobby").await;
    let joined = alice.recv_type("joined").await;
    assert_eq!(joined["user"], "carol");
    assert!(joined.get("info").is_none(), "{joined}");

    // Gone with the user.
    bob.close().await;
    let left = alice.recv_type("left").await;
    assert_eq!(left["user"], "vipbob");
    let p = presence(&mut alice, "lobby").await;
    assert_eq!(p["users"], json!(["alice", "carol"]), "{p}");
    assert!(p.get("info").is_none(), "{p}");

    // Over max_presence_info_bytes, or not an object: the hook failed (deny: 503).
    for user in ["biginfo", "badinfo"] {
        let refusal = connect(addr, &format!("/ws?user={user}"), &[])
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} refused"));
        refusal.assert(503, "unavailable");
        assert!(
            refusal.raw_body.contains("info"),
            "the message names the info: {}",
            refusal.raw_body
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn info_is_shown_in_presence_and_joined() {
    let backend = Backend::start().await;
    let server = TestServer::start(|c| with_info(&backend.url, c));
    info_in_presence(server.addr()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn info_is_shown_in_presence_and_joined_in_the_redis_engine() {
    let backend = Backend::start().await;
    let redis = RedisServer::start().await;
    let server = TestServer::start(|c| with_info_on_redis(&backend.url, &redis, c));
    info_in_presence(server.addr()).await;
}

/// Redis lost a node's presence entries (purged when the node was thought dead, or lost with
/// Redis's data): the node writes them back under a new lease, and its users' info with them.
#[tokio::test(flavor = "multi_thread")]
async fn info_is_written_back_with_a_nodes_entries() {
    let backend = Backend::start().await;
    let redis = RedisServer::start().await;
    let server = TestServer::start(|c| {
        with_info_on_redis(&backend.url, &redis, c);
        c.presence_ttl_secs = 3;
    });
    let mut alice = Client::connect_dev(server.addr(), "alice").await;
    alice.join("lobby").await;
    let mut bob = Client::connect_dev(server.addr(), "vipbob").await;
    bob.join("lobby").await;
    let vip = json!({"name": "VIP vipbob", "tags": ["a", "b"]});
    let joined = alice.recv_type("joined").await;
    assert_eq!(joined["info"], vip, "{joined}");

    // As a purge leaves them: the room's entries gone, then the node's figures, which the
    // node's next beat notices (a new lease, and every entry of its written again).
    redis
        .cli(&[
            "DEL",
            "sc:{r:lobby}:pz",
            "sc:{r:lobby}:pu",
            "sc:{r:lobby}:pu:i",
        ])
        .await;
    let fields = redis.cli(&["HKEYS", "sc:nodes"]).await;
    for node in fields.lines().filter(|f| !f.is_empty() && *f != "lease") {
        redis.cli(&["HDEL", "sc:nodes", node]).await;
    }
    let p = eventually(
        Duration::from_secs(10),
        "the node's entries written back",
        async || {
            // The write-back announces the users again (`joined`).
            let ask = json!({"type": "presence", "room": "lobby"});
            let p = alice.call_past(ask, |f| f["type"] == "joined").await;
            (p["users"] == json!(["alice", "vipbob"])).then_some(p)
        },
    )
    .await;
    assert_eq!(p["info"], json!({ "vipbob": vip }), "{p}");
}
