//! Idempotent `publish` and `send` on the embedded engine (the Redis engine's are in
//! tests/cluster.rs, the API's in tests/api.rs, bad keys in tests/bad_input.rs): a repeat of a
//! stored `(sender, key)` is acked with the first seq and `dup: true` and reaches no one; a
//! repeat while the first is still being written waits for it; keys survive a restart, and a
//! `kill -9` after the message was stored but before its ack left.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};
use shardcast::config::Config;

fn keyed_publish(room: &str, key: &str, body: Value) -> Value {
    json!({"type": "publish", "room": room, "key": key, "body": body})
}

fn keyed_send(to: &str, key: &str, body: Value) -> Value {
    json!({"type": "send", "to": to, "key": key, "body": body})
}

/// `shards` shards and no presence events (a member's next frame is then its reply or a
/// message).
fn quiet(shards: usize) -> impl FnOnce(&mut Config) {
    move |c| {
        c.shards = shards;
        c.presence_events = false;
    }
}

/// A publish ack's seq, and whether it says `dup`.
fn ack_of(reply: &Value) -> (u64, bool) {
    assert_eq!(reply["type"], "ack", "{reply}");
    let dup = match &reply["dup"] {
        Value::Null => false,
        Value::Bool(true) => true,
        other => panic!("`dup` is true or absent, got {other} in {reply}"),
    };
    (reply["seq"].as_u64().expect("a seq"), dup)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_key_gets_the_first_seq_and_reaches_members_once() {
    let server = TestServer::start(quiet(2));
    let mut a = dev(server.addr(), "a").await;
    let mut b = dev(server.addr(), "b").await;
    a.join("r").await;
    b.join("r").await;
    let first = a.call(keyed_publish("r", "k-1", json!("one"))).await;
    assert_eq!(ack_of(&first), (1, false));
    // The same key again, even with another body: the first message's seq, and `dup`.
    let again = a.call(keyed_publish("r", "k-1", json!("other"))).await;
    assert_eq!(ack_of(&again), (1, true));
    assert_eq!(again["room"], "r", "{again}");
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("one"));
    // The key is per sender: b's k-1 is another message.
    let bs = b.call(keyed_publish("r", "k-1", json!("b's"))).await;
    assert_eq!(ack_of(&bs), (2, false));
    assert_room_msg(&a.recv_json().await, "r", "b", &json!("b's"));
    // The repeat reached no one: b's next message is a's next publish.
    a.publish("r", json!("unkeyed")).await;
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("unkeyed"));
    let history = a.history_all("r").await;
    assert_eq!(seqs(&history), [3, 2, 1], "stored once");
    assert_eq!(history[2]["body"], "one");
    // The key is not part of what members receive.
    assert!(
        history.iter().all(|m| m.get("key").is_none()),
        "{history:?}"
    );
}

/// Sync durability: a repeat that comes while the first is assigned a seq but not yet on disk
/// is answered once the first is, with its seq.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeat_while_the_first_is_being_stored_is_answered_after_it() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(data.path(), quiet(1));
    let mut a = dev(server.addr(), "a").await;
    let mut b = dev(server.addr(), "b").await;
    b.join("r").await;
    a.join("r").await;
    // Pipelined: the home sees the three in one pass, before the first write's fsync.
    let mut frames = Vec::new();
    for (id, body) in [(1, "first"), (2, "resent"), (3, "resent again")] {
        let mut f = keyed_publish("r", "same", json!(body));
        f["id"] = json!(id);
        frames.push(f);
    }
    a.send_batch(&frames).await;
    let acks = a.recv_n(3).await;
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack["id"], i + 1, "acks in request order: {acks:?}");
        assert_eq!(ack_of(ack), (1, i > 0), "{ack}");
    }
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("first"));
    assert_eq!(a.publish("r", json!("next")).await, 2);
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("next"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_direct_message_is_a_dup() {
    let server = TestServer::start(quiet(2));
    let mut a = dev(server.addr(), "a").await;
    let mut bob = dev(server.addr(), "bob").await;
    let first = a.call(keyed_send("bob", "dm-1", json!("hi"))).await;
    assert_eq!((ack_of(&first), &first["to"]), ((1, false), &json!("bob")));
    let again = a.call(keyed_send("bob", "dm-1", json!("hi"))).await;
    assert_eq!((ack_of(&again), &again["to"]), ((1, true), &json!("bob")));
    // The key is per inbox: the same key to carol is another message.
    let carol = a.call(keyed_send("carol", "dm-1", json!("hi"))).await;
    assert_eq!(ack_of(&carol), (1, false));
    a.dm("bob", json!("unkeyed")).await;
    let got = bob.recv_n(2).await;
    assert_dm(&got[0], "bob", "a", &json!("hi"));
    assert_dm(&got[1], "bob", "a", &json!("unkeyed"));
    assert_eq!(seqs(&got), [1, 2]);
    let (inbox, _) = bob.sync(0).await;
    assert_eq!(seqs(&inbox), [1, 2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    // Sends a keyed publish and a keyed direct message as `a`, on a server with `shards`
    // shards (so the streams' homes move); returns the acks.
    let send_both = async |shards| {
        let server = TestServer::start_in(data.path(), quiet(shards));
        let mut a = dev(server.addr(), "a").await;
        a.join("r").await;
        let room = ack_of(&a.call(keyed_publish("r", "k", json!(1))).await);
        let dm = ack_of(&a.call(keyed_send("bob", "k", json!(1))).await);
        (server, a, [room, dm])
    };
    let (server, a, acks) = send_both(2).await;
    assert_eq!(acks, [(1, false), (1, false)]);
    drop(a);
    drop(server);

    let (_server, mut a, acks) = send_both(3).await;
    assert_eq!(
        acks,
        [(1, true), (1, true)],
        "the keys came back from the store"
    );
    assert_eq!(seqs(&a.history_all("r").await), [1]);
    // A new key after the restart is a new message.
    let fresh = a.call(keyed_publish("r", "k2", json!(2))).await;
    assert_eq!(ack_of(&fresh), (2, false));
}

/// kill -9 (an abort from the fault hook) right after the commit that stored a keyed message,
/// before its ack left: the client never got the ack, sends again after the restart, and gets
/// `dup` with the stored seq; history holds the message once.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_between_the_store_and_the_ack_leaves_one_message() {
    let data = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
    let args = ["--bind", "127.0.0.1:0", "--presence-events", "false"];
    let env = [("SHARDCAST_FAULT_ABORT_AFTER_KEYED_WRITE", "1")];
    let mut server = BinaryServer::spawn_in_with_env(bin, data.path(), &args, &env);
    let addr = server.listening_addr().await;
    let mut a = dev(addr, "a").await;
    a.join("r").await;
    assert_eq!(
        a.publish("r", json!("before")).await,
        1,
        "unkeyed: no abort"
    );
    a.send_json(&keyed_publish("r", "lost-ack", json!("once")))
        .await;
    match a.next_within(TIMEOUT).await {
        Some(Incoming::Ended(_) | Incoming::Close(_)) => {}
        other => panic!("the server died before the ack, got {other:?}"),
    }
    let status = server.wait_exit(TIMEOUT).await;
    assert!(!status.success(), "aborted: {status}");

    let mut server = BinaryServer::spawn_in(bin, data.path(), &args);
    let addr = server.listening_addr().await;
    let mut a = dev(addr, "a").await;
    a.join("r").await;
    let resent = a.call(keyed_publish("r", "lost-ack", json!("once"))).await;
    assert_eq!(ack_of(&resent), (2, true));
    let history = a.history_all("r").await;
    assert_eq!(seqs(&history), [2, 1]);
    assert_eq!(history[0]["body"], "once");
    drop(server);
}

/// Past `idempotency_max_keys` in a stream, the oldest key is forgotten: its repeat is stored
/// again, while the newer ones are still recognised.
#[tokio::test(flavor = "multi_thread")]
async fn past_the_maximum_the_oldest_key_is_forgotten() {
    let server = TestServer::start(|c| {
        quiet(2)(c);
        c.idempotency_max_keys = 2;
    });
    let mut a = dev(server.addr(), "a").await;
    a.join("r").await;
    for (i, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
        let ack = a.call(keyed_publish("r", key, json!(i))).await;
        assert_eq!(ack_of(&ack), (i as u64 + 1, false));
    }
    let k3 = a.call(keyed_publish("r", "k3", json!(0))).await;
    let k2 = a.call(keyed_publish("r", "k2", json!(0))).await;
    let k1 = a.call(keyed_publish("r", "k1", json!(0))).await;
    assert_eq!(
        [ack_of(&k3), ack_of(&k2), ack_of(&k1)],
        [(3, true), (2, true), (4, false)]
    );
}

/// A keyed message reaches the sender's own other connections with its `key` (a room message
/// in the room, the copy of a direct message), and everyone else without it.
#[tokio::test(flavor = "multi_thread")]
async fn the_key_goes_only_to_the_senders_other_connections() {
    let server = TestServer::start(quiet(2));
    let mut a1 = dev(server.addr(), "a").await;
    let mut a2 = dev(server.addr(), "a").await;
    let mut b = dev(server.addr(), "b").await;
    for c in [&mut a1, &mut a2, &mut b] {
        c.join("r").await;
    }
    let key = r#"k"\1"#;
    let ack = a1.call(keyed_publish("r", key, json!("hi"))).await;
    assert_eq!(ack_of(&ack), (1, false));
    let mine = a2.recv_json().await;
    assert_room_msg(&mine, "r", "a", &json!("hi"));
    assert_eq!(mine["key"], key, "{mine}");
    let theirs = b.recv_json().await;
    assert_room_msg(&theirs, "r", "a", &json!("hi"));
    assert!(theirs.get("key").is_none(), "{theirs}");
    // Unkeyed: no key for anyone.
    a1.publish("r", json!("plain")).await;
    let plain = a2.recv_json().await;
    assert!(plain.get("key").is_none(), "{plain}");
    b.recv_json().await;

    a1.send_json(&keyed_send("b", "dm", json!("psst"))).await;
    let copy = a2.recv_json().await;
    assert_dm(&copy, "b", "a", &json!("psst"));
    assert_eq!(copy["key"], "dm", "{copy}");
    let got = b.recv_json().await;
    assert_dm(&got, "b", "a", &json!("psst"));
    assert!(got.get("key").is_none(), "{got}");
    assert_eq!(ack_of(&a1.recv_json().await), (1, false));
    // History holds it without the key.
    let history = b.history_all("r").await;
    assert!(
        history.iter().all(|m| m.get("key").is_none()),
        "{history:?}"
    );
}
