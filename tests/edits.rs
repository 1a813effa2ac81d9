//! Edits, deletes and reactions (issue 23, part 3) on both engines: only the author edits (or
//! the API); soft and hard deletes; one reaction per user, emoji and message; each is a
//! sequenced event delivered live, replayed by `join` with `since` and in `history`; `history`
//! with `fold` gives messages in their current state; a hard delete leaves no trace of the
//! body in the store's files (fjall, after a compaction) or in Redis; bad input gets clear
//! errors.

mod common;

use std::path::Path;

use common::cluster::Cluster;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};
use shardcast::config::Config;

fn quiet(c: &mut Config) {
    c.presence_events = false;
    c.shards = 2;
}

fn edit(room: &str, target: u64, body: Value) -> Value {
    json!({"type": "edit", "room": room, "target": target, "body": body})
}

fn delete(room: &str, target: u64) -> Value {
    json!({"type": "delete", "room": room, "target": target})
}

fn react(room: &str, target: u64, emoji: &str) -> Value {
    json!({"type": "react", "room": room, "target": target, "emoji": emoji})
}

fn unreact(room: &str, target: u64, emoji: &str) -> Value {
    json!({"type": "unreact", "room": room, "target": target, "emoji": emoji})
}

/// An ack's seq (an event that was sequenced).
fn acked(reply: &Value) -> u64 {
    assert_eq!(reply["type"], "ack", "{reply}");
    assert!(reply.get("noop").is_none(), "{reply}");
    reply["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("no seq in {reply}"))
}

fn assert_noop(reply: &Value) {
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_eq!(reply["noop"], true, "{reply}");
    assert!(reply.get("seq").is_none(), "a no-op has no seq: {reply}");
}

/// An event as delivered: a `message` with `kind` and `target`.
fn assert_event(frame: &Value, seq: u64, from: &str, kind: &str, target: u64) {
    assert_eq!(frame["type"], "message", "{frame}");
    assert_eq!(frame["seq"], seq, "{frame}");
    assert_eq!(frame["from"], from, "{frame}");
    assert_eq!(frame["kind"], kind, "{frame}");
    assert_eq!(frame["target"], target, "{frame}");
}

/// Users a and b in room `r`: a publishes "one" (1) and "two" (2); b edits a's message
/// (refused), a edits 1 (3), b reacts to 1 twice (4, then a no-op), a reacts (5) and b takes
/// its reaction back (6), a deletes 2 (7). Each event reaches the other user live. Returns
/// the seqs' expected kinds.
async fn scenario(a: &mut Client, b: &mut Client) {
    assert_eq!(a.publish("r", json!("one")).await, 1);
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("one"));
    assert_eq!(a.publish("r", json!("two")).await, 2);
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("two"));

    // Only the author edits or deletes.
    let refused = b.call(edit("r", 1, json!("b's words"))).await;
    assert_error(&refused, "forbidden", Some(&refused["id"]));
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("only a ") && message.contains("edit"),
        "{message}"
    );
    let refused = b.call(delete("r", 1)).await;
    assert_error(&refused, "forbidden", Some(&refused["id"]));

    assert_eq!(
        acked(&a.call(edit("r", 1, json!({"t": "one, fixed"}))).await),
        3
    );
    let got = b.recv_json().await;
    assert_event(&got, 3, "a", "edit", 1);
    assert_eq!(got["body"], json!({"t": "one, fixed"}));

    assert_eq!(acked(&b.call(react("r", 1, "👍")).await), 4);
    let got = a.recv_json().await;
    assert_event(&got, 4, "b", "react", 1);
    assert_eq!(got["emoji"], "👍");
    // One per user, emoji and message: a repeat is a no-op, and no one hears of it.
    assert_noop(&b.call(react("r", 1, "👍")).await);
    assert_eq!(acked(&a.call(react("r", 1, "👍")).await), 5);
    assert_event(&b.recv_json().await, 5, "a", "react", 1);
    assert_eq!(acked(&b.call(unreact("r", 1, "👍")).await), 6);
    assert_event(&a.recv_json().await, 6, "b", "unreact", 1);
    assert_noop(&b.call(unreact("r", 1, "👍")).await);

    assert_eq!(acked(&a.call(delete("r", 2)).await), 7);
    let got = b.recv_json().await;
    assert_event(&got, 7, "a", "delete", 2);
    assert_eq!(got["body"], Value::Null);
    assert!(got.get("hard").is_none(), "{got}");
    assert_noop(&a.call(delete("r", 2)).await);
    b.assert_silent(std::time::Duration::from_millis(100)).await;
}

/// What `scenario` left, as `history` with `fold` shows it to `reader`.
fn assert_folded(page: &Value, reader_reacted: bool) {
    assert_eq!(page["type"], "history", "{page}");
    assert_eq!(page["fold"], true, "{page}");
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(
        seqs(messages),
        [2, 1],
        "events are folded in, not listed: {page}"
    );
    let two = &messages[0];
    assert_eq!(
        (&two["body"], &two["deleted"]),
        (&Value::Null, &json!(true)),
        "{two}"
    );
    let one = &messages[1];
    assert_eq!(one["body"], json!({"t": "one, fixed"}), "{one}");
    assert_eq!(one["edited"], 3, "{one}");
    assert_eq!(one["from"], "a", "{one}");
    assert_eq!(
        one["reactions"],
        json!({"👍": {"count": 1, "me": reader_reacted}}),
        "{one}"
    );
    assert_eq!(page["more"], false, "{page}");
    assert_eq!(page["before"], 1, "{page}");
}

/// `since` replays every event in order, and plain `history` lists them.
async fn assert_replayed(c: &mut Client) {
    let ack = c.join_since("r", 2).await;
    assert_recovery(&ack, 7, true, 5, false);
    let replay = c.recv_n(5).await;
    let kinds: Vec<&str> = replay.iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["edit", "react", "react", "unreact", "delete"]);
    assert_eq!(seqs(&replay), [3, 4, 5, 6, 7]);
    let history = c.history_all("r").await;
    assert_eq!(seqs(&history), [7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(history[4]["body"], json!({"t": "one, fixed"}));
}

async fn assert_bad_input(a: &mut Client, b: &mut Client) {
    let cases = [
        (edit("r", 99, json!("x")), "no_such_message"),
        (edit("r", 3, json!("x")), "no_such_message"), // an edit is not a message
        (edit("r", 2, json!("x")), "no_such_message"), // deleted
        (react("r", 2, "👍"), "no_such_message"),
        (edit("r", 0, json!("x")), "bad_request"),
        (
            json!({"type": "edit", "room": "r", "target": "1", "body": 1}),
            "bad_request",
        ),
        (
            json!({"type": "edit", "room": "r", "target": 1}),
            "bad_request",
        ),
        (
            json!({"type": "react", "room": "r", "target": 1}),
            "bad_request",
        ),
        (react("r", 1, ""), "bad_request"),
        (react("r", 1, &"x".repeat(65)), "bad_request"),
        (react("r", 1, "a\nb"), "bad_request"),
        (edit("elsewhere", 1, json!("x")), "not_member"),
        (
            json!({"type": "history", "room": "r", "fold": 1}),
            "bad_request",
        ),
    ];
    for (frame, code) in cases {
        let reply = a.call(frame.clone()).await;
        assert_error(&reply, code, Some(&reply["id"]));
        assert!(!reply["message"].as_str().unwrap().is_empty(), "{frame}");
    }
    // None of them reached b, and the room's seq did not move.
    b.assert_silent(std::time::Duration::from_millis(100)).await;
    assert_eq!(a.publish("r", json!("after")).await, 8);
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("after"));
}

#[tokio::test(flavor = "multi_thread")]
async fn edits_deletes_and_reactions_are_sequenced_events_and_fold_gives_the_current_state() {
    let server = TestServer::start(quiet);
    let mut a = dev(server.addr(), "a").await;
    let mut b = dev(server.addr(), "b").await;
    a.join("r").await;
    b.join("r").await;
    scenario(&mut a, &mut b).await;

    let mut c = dev(server.addr(), "c").await;
    assert_replayed(&mut c).await;
    let fold = json!({"type": "history", "room": "r", "fold": true});
    assert_folded(&a.call(fold.clone()).await, true);
    assert_folded(&b.call(fold.clone()).await, false);
    // Paging with fold: `before` in the reply is where the next page starts.
    let page = a
        .call(json!({"type": "history", "room": "r", "fold": true, "limit": 3}))
        .await;
    assert_eq!(
        seqs(page["messages"].as_array().unwrap()),
        Vec::<u64>::new()
    );
    assert_eq!((&page["before"], &page["more"]), (&json!(5), &json!(true)));
    let page = a
        .call(json!({"type": "history", "room": "r", "fold": true, "before": 5}))
        .await;
    assert_eq!(seqs(page["messages"].as_array().unwrap()), [2, 1]);

    assert_bad_input(&mut a, &mut b).await;

    // The state is stored: it survives a restart.
    drop((a, b, c));
    let server = server.restart(quiet);
    let mut a = dev(server.addr(), "a").await;
    a.join("r").await;
    let page = a
        .call(json!({"type": "history", "room": "r", "fold": true, "before": 8}))
        .await;
    assert_folded(&page, true);
    // The author's rights are read from the store, not from memory.
    let mut b = dev(server.addr(), "b").await;
    b.join("r").await;
    let refused = b.call(edit("r", 1, json!("b's words"))).await;
    assert_error(&refused, "forbidden", Some(&refused["id"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_edits_deletes_and_reacts_with_every_right() {
    let server = TestServer::start(quiet);
    let mut a = dev(server.addr(), "a").await;
    a.join("r").await;
    a.publish("r", json!("one")).await;
    let call = |path: &'static str, body: Value| {
        let addr = server.addr();
        async move { api(addr, "POST", path, None, &body.to_string()).await }
    };
    let r = call(
        "/api/edit",
        json!({"room": "r", "target": 1, "body": "moderated"}),
    )
    .await;
    assert_eq!((r.status, &r.body), (200, &json!({"seq": 2})));
    let got = a.recv_json().await;
    assert_event(&got, 2, "system", "edit", 1);
    let r = call(
        "/api/react",
        json!({"room": "r", "target": 1, "emoji": "🎉", "from": "bot"}),
    )
    .await;
    assert_eq!((r.status, &r.body), (200, &json!({"seq": 3})));
    assert_event(&a.recv_json().await, 3, "bot", "react", 1);
    let r = call(
        "/api/react",
        json!({"room": "r", "target": 1, "emoji": "🎉", "from": "bot"}),
    )
    .await;
    assert_eq!((r.status, &r.body), (200, &json!({"noop": true})));
    let r = call("/api/edit", json!({"room": "r", "target": 9, "body": "x"})).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(r.body["code"], "no_such_message", "{:?}", r.body);
    let r = call("/api/react", json!({"room": "r", "target": 1})).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let r = call(
        "/api/delete",
        json!({"room": "r", "target": 1, "hard": true}),
    )
    .await;
    assert_eq!((r.status, &r.body), (200, &json!({"seq": 4})));
    let got = a.recv_json().await;
    assert_event(&got, 4, "system", "delete", 1);
    assert_eq!(got["hard"], true, "{got}");
    let reply = api(
        server.addr(),
        "GET",
        "/api/rooms/r/history?fold=true",
        None,
        "",
    )
    .await;
    let messages = reply.body["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 1, "{:?}", reply.body);
    assert_eq!(messages[0]["body"], Value::Null);
    assert_eq!(
        (&messages[0]["deleted"], &messages[0]["erased"]),
        (&json!(true), &json!(true))
    );
    assert!(messages[0].get("reactions").is_none(), "{:?}", messages[0]);
}

/// Every file under `dir`, read whole; whether any holds `needle`.
fn files_hold(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn compact(dir: &Path) {
    let store = shardcast::store::FjallStore::open_with(dir, Default::default()).unwrap();
    store.compact().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_delete_leaves_no_trace_of_the_body_in_the_store_files() {
    let dir = tempfile::tempdir().unwrap();
    // Random, so nothing else in the files matches and compression cannot hide it.
    let secret = format!("secret-{:032x}", rand_u128());
    let edited = format!("edited-{:032x}", rand_u128());
    let mut server = TestServer::start_in(dir.path(), quiet);
    let mut a = dev(server.addr(), "a").await;
    a.join("r").await;
    a.publish("r", json!({"t": secret})).await;
    a.publish("r", json!("kept")).await;
    acked(&a.call(edit("r", 1, json!({"t": edited}))).await);
    drop(a);
    server.shutdown();
    drop(server);
    compact(dir.path());
    // The check can fail: both bodies are in the files before the hard delete.
    assert!(!files_hold(dir.path(), secret.as_bytes()).is_empty());
    assert!(!files_hold(dir.path(), edited.as_bytes()).is_empty());

    let mut server = TestServer::start_in(dir.path(), quiet);
    let r = api(
        server.addr(),
        "POST",
        "/api/delete",
        None,
        &json!({"room": "r", "target": 1, "hard": true}).to_string(),
    )
    .await;
    assert_eq!((r.status, &r.body), (200, &json!({"seq": 4})));
    let mut b = dev(server.addr(), "b").await;
    b.join("r").await;
    let history = b.history_all("r").await;
    assert_eq!(seqs(&history), [4, 3, 2, 1]);
    for m in [&history[1], &history[3]] {
        assert_eq!(
            (&m["body"], &m["erased"]),
            (&Value::Null, &json!(true)),
            "{m}"
        );
    }
    assert_eq!(history[2]["body"], "kept");
    let refused = b.call(react("r", 1, "👍")).await;
    assert_error(&refused, "no_such_message", Some(&refused["id"]));
    drop(b);
    server.shutdown();
    drop(server);
    compact(dir.path());
    assert_eq!(
        files_hold(dir.path(), secret.as_bytes()),
        Vec::<String>::new()
    );
    assert_eq!(
        files_hold(dir.path(), edited.as_bytes()),
        Vec::<String>::new()
    );
    assert!(
        !files_hold(dir.path(), b"kept").is_empty(),
        "other messages stay"
    );
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let s = RandomState::new();
    (s.hash_one(1u8) as u128) << 64 | s.hash_one(2u8) as u128
}

// ----- the Redis engine -------------------------------------------------------------------------

async fn cluster() -> (RedisServer, Cluster) {
    let redis = RedisServer::start().await;
    let args = ["--presence-events", "false", "--max-reaction-emojis", "2"];
    let cluster = Cluster::start(2, &redis.url(), &args).await;
    (redis, cluster)
}

/// `max_reaction_emojis` (2 here): a third different emoji on a message is `too_large`; the
/// ones it has may still be added to.
async fn assert_reaction_emoji_limit(a: &mut Client, b: &mut Client) {
    let seq = a.publish("r", json!("popular")).await;
    b.recv_json().await;
    for emoji in ["a", "b"] {
        acked(&a.call(react("r", seq, emoji)).await);
        assert_event(
            &b.recv_json().await,
            seq + 1 + u64::from(emoji == "b"),
            "a",
            "react",
            seq,
        );
    }
    let refused = a.call(react("r", seq, "c")).await;
    assert_error(&refused, "too_large", Some(&refused["id"]));
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("max_reaction_emojis"), "{refused}");
    acked(&b.call(react("r", seq, "a")).await);
    a.recv_json().await;
    // Taking one back makes room.
    acked(&a.call(unreact("r", seq, "b")).await);
    b.recv_json().await;
    acked(&b.call(react("r", seq, "c")).await);
    a.recv_json().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_holds_at_most_max_reaction_emojis_different_emoji() {
    let server = TestServer::start(|c| {
        quiet(c);
        c.max_reaction_emojis = 2;
    });
    let mut a = dev(server.addr(), "a").await;
    let mut b = dev(server.addr(), "b").await;
    a.join("r").await;
    b.join("r").await;
    assert_reaction_emoji_limit(&mut a, &mut b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_edits_deletes_and_reactions_work_across_nodes() {
    let (_redis, cluster) = cluster().await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    a.join("r").await;
    b.join("r").await;
    scenario(&mut a, &mut b).await;
    let mut c = dev(cluster.addr(1), "c").await;
    assert_replayed(&mut c).await;
    let fold = json!({"type": "history", "room": "r", "fold": true});
    assert_folded(&a.call(fold.clone()).await, true);
    assert_folded(&b.call(fold).await, false);
    assert_bad_input(&mut a, &mut b).await;
    assert_reaction_emoji_limit(&mut a, &mut b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_a_hard_delete_leaves_no_trace_of_the_body_in_redis() {
    let (redis, cluster) = cluster().await;
    let secret = format!("secret-{:032x}", rand_u128());
    let edited = format!("edited-{:032x}", rand_u128());
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    a.join("r").await;
    b.join("r").await;
    a.publish("r", json!({"t": secret})).await;
    a.publish("r", json!("kept")).await;
    acked(&a.call(edit("r", 1, json!({"t": edited}))).await);
    assert_eq!(seqs(&b.recv_n(3).await), [1, 2, 3]);
    acked(&b.call(react("r", 1, "👍")).await);
    let everything = async || {
        let mut all = String::new();
        for key in redis.cli(&["--scan"]).await.lines() {
            let ty = redis.cli(&["TYPE", key]).await;
            let dump = match ty.trim() {
                "stream" => redis.cli(&["XRANGE", key, "-", "+"]).await,
                "hash" => redis.cli(&["HGETALL", key]).await,
                _ => String::new(),
            };
            all.push_str(&dump);
        }
        all
    };
    let before = everything().await;
    assert!(
        before.contains(&secret) && before.contains(&edited),
        "{before}"
    );

    let (status, body) = cluster
        .api(
            1,
            "POST",
            "/api/delete",
            Some(json!({"room": "r", "target": 1, "hard": true})),
        )
        .await;
    assert_eq!((status, &body), (200, &json!({"seq": 5})));
    let after = everything().await;
    assert!(
        !after.contains(&secret) && !after.contains(&edited),
        "{after}"
    );
    assert!(after.contains("kept"), "{after}");
    let got = b.recv_json().await;
    assert_event(&got, 5, "system", "delete", 1);
    assert_eq!(got["hard"], true, "{got}");
    // Clients see the erased message as a tombstone, on any node.
    let page = b
        .call(json!({"type": "history", "room": "r", "fold": true}))
        .await;
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(seqs(messages), [2, 1], "{page}");
    assert_eq!(
        (&messages[1]["erased"], &messages[1]["body"]),
        (&json!(true), &Value::Null)
    );
    let refused = b.call(edit("r", 1, json!("x"))).await;
    assert_error(&refused, "no_such_message", Some(&refused["id"]));
}
