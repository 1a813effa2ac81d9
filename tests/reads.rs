//! Read positions, receipts and unread counts (issue 23), in both engines: a `read` moves the
//! user's position forward only and never past the stream's last seq; the user's other
//! connections are told; a new device learns the positions from `welcome` and the join ack;
//! `GET /api/users/{user}/unread` gives exact counts; positions survive a restart and a
//! kill -9 (once written: at most `read_interval_ms` after the read); receipts are coalesced;
//! and store writes are coalesced per user and stream.

mod common;

use std::path::Path;
use std::time::Duration;

use common::chat::Engine;
use common::*;
use serde_json::{Value, json};

/// The next frame of `c` of type `ty`, skipping messages (a member's copies of what others
/// published).
async fn next_of(c: &mut Client, ty: &str) -> Value {
    loop {
        let got = c.recv_json().await;
        if got["type"] == ty {
            return got;
        }
        assert_eq!(got["type"], "message", "expected a {ty}, got {got}");
    }
}

async fn read(c: &mut Client, target: Value, seq: u64) -> Value {
    let mut frame = json!({"type": "read", "seq": seq});
    for (k, v) in target.as_object().unwrap() {
        frame[k] = v.clone();
    }
    let (_, ack) = c.request(frame).await;
    ack
}

// ---------------------------------------------------------------------------------------------
// rooms: forward only, clamped, other devices, a new device, unread counts
// ---------------------------------------------------------------------------------------------

async fn room_positions(e: Engine) {
    let mut bob = dev(e.addr(0), "bob").await;
    let mut a = dev(e.addr(0), "alice").await;
    let mut b = dev(e.addr(1), "alice").await;
    for c in [&mut bob, &mut a, &mut b] {
        let ack = c.call(json!({"type": "join", "room": "chat"})).await;
        assert_eq!(ack["read"], 0, "nothing read yet: {ack}");
    }
    for i in 1..=5 {
        bob.publish("chat", json!(i)).await;
    }
    let chat = json!({"room": "chat"});

    let ack = read(&mut a, chat.clone(), 3).await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(
        (&ack["room"], &ack["read"]),
        (&json!("chat"), &json!(3)),
        "{ack}"
    );
    let moved = next_of(&mut b, "read").await;
    assert_eq!(
        moved,
        json!({"type": "read", "room": "chat", "seq": 3}),
        "{}",
        e.name()
    );

    // Backwards: the position stays, and the other device hears nothing.
    let ack = read(&mut a, chat.clone(), 2).await;
    assert_eq!(ack["read"], 3, "{ack}");
    // Past the last seq: clamped to it.
    let ack = read(&mut a, chat.clone(), 100).await;
    assert_eq!(ack["read"], 5, "{ack}");
    let moved = next_of(&mut b, "read").await;
    assert_eq!(moved["seq"], 5, "the backward read told nobody: {moved}");

    // A new device: the join ack has the last seq and the read position.
    let mut c = dev(e.addr(1), "alice").await;
    let ack = c.call(json!({"type": "join", "room": "chat"})).await;
    assert_eq!((&ack["seq"], &ack["read"]), (&json!(5), &json!(5)), "{ack}");
    // Bob's position is his own.
    let ack = bob.call(json!({"type": "join", "room": "chat"})).await;
    assert_eq!(ack["read"], 0, "{ack}");

    bob.publish("chat", json!(6)).await;
    bob.publish("chat", json!(7)).await;
    let want = json!({"seq": 7, "read": 5, "unread": 2});
    eventually(TIMEOUT, "unread counts in the API", async || {
        let (status, body) = e.get(1, "/api/users/alice/unread").await;
        assert_eq!(status, 200, "{body}");
        (body["rooms"]["chat"] == want).then_some(())
    })
    .await;
}

on_both_engines!(
    room_read_positions_embedded,
    room_read_positions_redis,
    room_positions,
    &[]
);

// ---------------------------------------------------------------------------------------------
// the inbox
// ---------------------------------------------------------------------------------------------

async fn inbox_positions(e: Engine) {
    let mut bob = dev(e.addr(0), "bob").await;
    let mut a = dev(e.addr(0), "alice").await;
    let mut b = dev(e.addr(1), "alice").await;
    for i in 1..=3 {
        bob.dm("alice", json!(i)).await;
    }
    let inbox = json!({"inbox": true});
    let ack = read(&mut a, inbox.clone(), 2).await;
    assert_eq!(
        (&ack["inbox"], &ack["read"]),
        (&json!(true), &json!(2)),
        "{ack}"
    );
    let moved = next_of(&mut b, "read").await;
    assert_eq!(
        moved,
        json!({"type": "read", "inbox": true, "seq": 2}),
        "{}",
        e.name()
    );
    let ack = read(&mut a, inbox.clone(), 50).await;
    assert_eq!(ack["read"], 3, "clamped to the inbox's last seq: {ack}");
    // The clamped read left no higher position behind on the connection's node.
    bob.dm("alice", json!(4)).await;
    let ack = read(&mut a, inbox.clone(), 4).await;
    assert_eq!(ack["read"], 4, "{}: {ack}", e.name());

    // A new device learns it from `welcome`.
    let c = dev(e.addr(1), "alice").await;
    assert_eq!(c.welcome["inbox_seq"], 4, "{}", c.welcome);
    assert_eq!(c.welcome["inbox_read"], 4, "{}", c.welcome);

    bob.dm("alice", json!(5)).await;
    let want = json!({"seq": 5, "read": 4, "unread": 1});
    eventually(TIMEOUT, "the inbox's unread count in the API", async || {
        let (_, body) = e.get(0, "/api/users/alice/unread").await;
        (body["inbox"] == want).then_some(())
    })
    .await;
}

on_both_engines!(
    inbox_read_positions_embedded,
    inbox_read_positions_redis,
    inbox_positions,
    &[]
);

// ---------------------------------------------------------------------------------------------
// bad input
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn bad_reads_get_clear_errors() {
    let e = Engine::embedded(&[("--signal-rate", "1"), ("--signal-burst", "2")]).await;
    let mut a = dev(e.addr(0), "alice").await;
    for (frame, code) in [
        (
            json!({"type": "read", "room": "chat", "seq": 1}),
            "not_member",
        ),
        (json!({"type": "read", "room": "chat"}), "bad_request"),
        (
            json!({"type": "read", "room": "chat", "seq": -1}),
            "bad_request",
        ),
        (
            json!({"type": "read", "room": "chat", "seq": "1"}),
            "bad_request",
        ),
        (json!({"type": "read", "seq": 1}), "bad_request"),
        (
            json!({"type": "read", "inbox": "yes", "seq": 1}),
            "bad_request",
        ),
        (
            json!({"type": "read", "inbox": true, "room": "chat", "seq": 1}),
            "bad_request",
        ),
    ] {
        let reply = a.call(frame.clone()).await;
        assert_error(&reply, code, Some(&reply["id"]));
    }
    a.join("chat").await;
    for _ in 0..2 {
        let ack = a
            .call(json!({"type": "read", "room": "chat", "seq": 0}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let reply = a
        .call(json!({"type": "read", "room": "chat", "seq": 0}))
        .await;
    assert_error(&reply, "rate_limited", Some(&reply["id"]));
}

// ---------------------------------------------------------------------------------------------
// durable: a restart, a kill -9, a cluster node's kill
// ---------------------------------------------------------------------------------------------

/// Four messages in chat and a direct message to alice; alice reads chat up to 3 and her inbox
/// up to 1.
async fn read_some(addr: std::net::SocketAddr) {
    let mut bob = dev(addr, "bob").await;
    let mut a = dev(addr, "alice").await;
    a.join("chat").await;
    bob.join("chat").await;
    for i in 1..=4 {
        bob.publish("chat", json!(i)).await;
    }
    bob.dm("alice", json!("hi")).await;
    assert_eq!(read(&mut a, json!({"room": "chat"}), 3).await["read"], 3);
    assert_eq!(read(&mut a, json!({"inbox": true}), 1).await["read"], 1);
}

/// A new connection of alice knows what `read_some` read.
async fn check_read_some(addr: std::net::SocketAddr) -> Client {
    let mut a = dev(addr, "alice").await;
    assert_eq!(a.welcome["inbox_read"], 1, "{}", a.welcome);
    let ack = a.call(json!({"type": "join", "room": "chat"})).await;
    assert_eq!((&ack["seq"], &ack["read"]), (&json!(4), &json!(3)), "{ack}");
    a
}

#[tokio::test(flavor = "multi_thread")]
async fn positions_survive_a_restart() {
    let server = TestServer::start(fast);
    read_some(server.addr()).await;
    // At once: a graceful shutdown writes what is not written yet.
    let server = server.restart(fast);
    let mut a = check_read_some(server.addr()).await;
    // Still forward only.
    assert_eq!(read(&mut a, json!({"room": "chat"}), 2).await["read"], 3);
}

async fn spawn(data: &Path) -> (BinaryServer, std::net::SocketAddr) {
    let mut args = vec![
        "--bind",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--presence-events",
        "false",
    ];
    args.extend_from_slice(&NO_RATE_LIMIT);
    let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
    let mut server = BinaryServer::spawn_in(bin, data, &args);
    let addr = server.listening_addr().await;
    (server, addr)
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let reply = Http::connect(addr).await.get("/metrics", &[]).await;
    common::cluster::metric_sum(&reply.body, name)
}

/// kill -9 once the position was written (the metric says so: no sleep): it is there after.
#[tokio::test(flavor = "multi_thread")]
async fn positions_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr) = spawn(dir.path()).await;
    read_some(addr).await;
    eventually(
        Duration::from_secs(5),
        "both positions written",
        async || {
            let n = metric(addr, "shardcast_read_position_writes_total").await;
            (n >= 2.0).then_some(())
        },
    )
    .await;
    server.child.start_kill().unwrap();
    server.wait_exit(TIMEOUT).await;
    let (_server, addr) = spawn(dir.path()).await;
    check_read_some(addr).await;
}

/// Redis keeps them: a node killed and started again, and another node, both know them.
#[tokio::test(flavor = "multi_thread")]
async fn positions_survive_a_node_kill_redis() {
    let redis = common::redis::RedisServer::start().await;
    let mut cluster = common::cluster::Cluster::start(2, &redis.url(), &[]).await;
    let mut a = dev(cluster.addr(0), "alice").await;
    let mut bob = dev(cluster.addr(1), "bob").await;
    a.join("chat").await;
    bob.join("chat").await;
    for i in 1..=4 {
        bob.publish("chat", json!(i)).await;
    }
    assert_eq!(read(&mut a, json!({"room": "chat"}), 3).await["read"], 3);
    cluster.kill(0).await;
    let addr = cluster.restart(0).await;
    for addr in [addr, cluster.addr(1)] {
        let mut a = dev(addr, "alice").await;
        let ack = a.call(json!({"type": "join", "room": "chat"})).await;
        assert_eq!((&ack["seq"], &ack["read"]), (&json!(4), &json!(3)), "{ack}");
    }
}

// ---------------------------------------------------------------------------------------------
// coalescing: receipts, store writes
// ---------------------------------------------------------------------------------------------

async fn receipts_coalesced(e: Engine) {
    let mut bob = dev(e.addr(0), "bob").await;
    let mut a = dev(e.addr(1), "alice").await;
    a.join("team:x").await;
    bob.join("team:x").await;
    a.join("plain").await;
    bob.join("plain").await;
    for i in 1..=5 {
        a.publish("team:x", json!(i)).await;
        a.publish("plain", json!(i)).await;
    }
    // Five reads in a row; no receipts in a room whose rule does not ask for them.
    for seq in 1..=5 {
        read(&mut bob, json!({"room": "team:x"}), seq).await;
        read(&mut bob, json!({"room": "plain"}), seq).await;
    }
    let mut receipts = Vec::new();
    loop {
        let got = next_of(&mut a, "receipt").await;
        assert_eq!(
            (&got["room"], &got["user"]),
            (&json!("team:x"), &json!("bob")),
            "{got}"
        );
        receipts.push(got["seq"].as_u64().unwrap());
        if got["seq"] == 5 {
            break;
        }
    }
    assert!(
        receipts.len() <= 2,
        "{}: five reads within an interval give at most two receipts: {receipts:?}",
        e.name()
    );
}

fn receipts_rule() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, "[[rooms]]\nprefix = \"team:\"\nreceipts = true\n").unwrap();
    let path = file.to_str().unwrap().to_owned();
    (dir, path)
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_are_coalesced_embedded() {
    let (_dir, file) = receipts_rule();
    receipts_coalesced(Engine::embedded(&[("--config", &file)]).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_are_coalesced_redis() {
    let (_dir, file) = receipts_rule();
    receipts_coalesced(Engine::redis(&[("--config", &file)]).await).await;
}

/// Twenty reads of one room in a row cost one store write (two if an interval ends between).
#[tokio::test(flavor = "multi_thread")]
async fn store_writes_are_coalesced() {
    let e = Engine::embedded(&[("--signal-burst", "100")]).await;
    let mut bob = dev(e.addr(0), "bob").await;
    let mut a = dev(e.addr(0), "alice").await;
    a.join("chat").await;
    bob.join("chat").await;
    for i in 1..=20 {
        bob.publish("chat", json!(i)).await;
    }
    for seq in 1..=20 {
        assert_eq!(
            read(&mut a, json!({"room": "chat"}), seq).await["read"],
            seq
        );
    }
    let writes = eventually(Duration::from_secs(5), "the position written", async || {
        let n = e.metric(0, "shardcast_read_position_writes_total").await;
        (n >= 1.0).then_some(n)
    })
    .await;
    assert!(writes <= 2.0, "20 reads cost {writes} store writes");
}

// ---------------------------------------------------------------------------------------------
// welcome: the rooms joined at connect
// ---------------------------------------------------------------------------------------------

async fn welcome_carries_token_rooms(e: Engine) {
    let token = |user: &str| {
        mint(
            SECRET,
            &json!({"sub": user, "exp": now_secs() + 3600, "rooms": ["chat", "other"]}),
        )
    };
    let mut bob = Client::connect_token(e.addr(0), &token("bob")).await;
    let mut a = Client::connect_token(e.addr(1), &token("alice")).await;
    assert_eq!(
        a.welcome["reads"],
        json!({"chat": {"seq": 0, "read": 0}, "other": {"seq": 0, "read": 0}}),
        "{}",
        a.welcome
    );
    for i in 1..=3 {
        bob.publish("chat", json!(i)).await;
    }
    bob.publish("other", json!(1)).await;
    assert_eq!(read(&mut a, json!({"room": "chat"}), 2).await["read"], 2);
    let c = Client::connect_token(e.addr(0), &token("alice")).await;
    assert_eq!(
        c.welcome["reads"],
        json!({"chat": {"seq": 3, "read": 2}, "other": {"seq": 1, "read": 0}}),
        "{}: {}",
        e.name(),
        c.welcome
    );
}

const TOKENS: &[(&str, &str)] = &[("--jwt-secret", SECRET), ("--api", "false")];
on_both_engines!(
    welcome_carries_the_token_rooms_seqs_and_reads_embedded,
    welcome_carries_the_token_rooms_seqs_and_reads_redis,
    welcome_carries_token_rooms,
    TOKENS
);
