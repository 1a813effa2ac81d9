//! Direct messages kept in the recipient's inbox: the offline ones arrive right after `welcome`
//! (whose `inbox_seq` is the inbox's last seq), exactly once; ones that reached a connection are
//! not replayed; `replay_limit` caps the offline replay; `sync` pages through the inbox after a
//! cursor; inbox retention by count and by age.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const QUIET: Duration = Duration::from_millis(300);

/// How long background retention may take to show in `sync`.
const TRIMMED: Duration = Duration::from_secs(10);

/// Closes `user`'s only connection `c` and waits until the server has seen it go: `watcher`,
/// in room `room` with `c`, no longer lists the user.
async fn go_offline(c: Client, watcher: &mut Client, room: &str) {
    let user = c.name.clone();
    c.close().await;
    eventually(TIMEOUT, &format!("{user} leaves {room}"), async || {
        (!watcher.presence(room).await.contains(&user)).then_some(())
    })
    .await;
}

/// What bob gets while offline arrives once, right after his next welcome; what reaches him
/// live is not sent again.
#[tokio::test(flavor = "multi_thread")]
async fn offline_direct_messages_arrive_after_welcome_exactly_once() {
    let server = TestServer::start(fast);
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    assert_eq!(alice.welcome["inbox_seq"], 0, "an empty inbox");
    alice.join("watch").await;
    dm_numbered(&mut alice, "bob", 1..=3).await;

    let mut bob = dev(addr, "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 3, "welcome: {}", bob.welcome);
    assert_dms(&bob.recv_n(3).await, "bob", "alice", 1..=3);
    bob.assert_silent(QUIET).await;
    bob.join("watch").await;
    go_offline(bob, &mut alice, "watch").await;

    // Delivered once: nothing again at the next connect.
    let mut bob = dev(addr, "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 3, "welcome: {}", bob.welcome);
    bob.assert_silent(QUIET).await;

    // Live messages are not replayed at the next connect either.
    dm_numbered(&mut alice, "bob", 4..=5).await;
    assert_dms(&bob.recv_n(2).await, "bob", "alice", 4..=5);
    bob.join("watch").await;
    go_offline(bob, &mut alice, "watch").await;
    let mut bob = dev(addr, "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 5, "welcome: {}", bob.welcome);
    bob.assert_silent(QUIET).await;

    // Offline again after having been online: only the new ones.
    bob.join("watch").await;
    go_offline(bob, &mut alice, "watch").await;
    dm_numbered(&mut alice, "bob", 6..=7).await;
    let mut bob = dev(addr, "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 7, "welcome: {}", bob.welcome);
    assert_dms(&bob.recv_n(2).await, "bob", "alice", 6..=7);
    bob.assert_silent(QUIET).await;
    alice.assert_silent(QUIET).await;
}

/// The offline messages come right after `welcome`: before the reply to anything the client
/// sends once connected.
#[tokio::test(flavor = "multi_thread")]
async fn offline_direct_messages_come_before_any_reply() {
    let server = TestServer::start(fast);
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    dm_numbered(&mut alice, "bob", 1..=20).await;
    let mut bob = dev(addr, "bob").await;
    let (before, pong) = bob.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert!(
        !before.is_empty(),
        "the pong came before the offline messages: it must follow them"
    );
    assert_dms(&before, "bob", "alice", 1..=20);
    bob.assert_silent(QUIET).await;
}

/// Messages that reached one of bob's connections are not replayed to his new connection.
#[tokio::test(flavor = "multi_thread")]
async fn direct_messages_to_an_online_user_are_not_replayed_to_his_new_connection() {
    let server = TestServer::start(fast);
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    let mut phone = dev(addr, "bob").await;
    dm_numbered(&mut alice, "bob", 1..=3).await;
    assert_dms(&phone.recv_n(3).await, "bob", "alice", 1..=3);

    let mut laptop = dev(addr, "bob").await;
    assert_eq!(laptop.welcome["inbox_seq"], 3, "{}", laptop.welcome);
    laptop.assert_silent(QUIET).await;

    // Both get the next one, live, once.
    dm_numbered(&mut alice, "bob", 4..=4).await;
    for c in [&mut phone, &mut laptop] {
        assert_dms(&c.recv_n(1).await, "bob", "alice", 4..=4);
        c.assert_silent(QUIET).await;
    }
}

/// More offline messages than `replay_limit`: the newest ones come at connect, `sync` pages
/// through all of them oldest first.
#[tokio::test(flavor = "multi_thread")]
async fn offline_replay_is_capped_and_sync_gets_the_rest() {
    let server = TestServer::start(|c| {
        fast(c);
        c.replay_limit = 5;
    });
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    dm_numbered(&mut alice, "bob", 1..=12).await;

    let mut bob = dev(addr, "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 12, "{}", bob.welcome);
    assert_dms(&bob.recv_n(5).await, "bob", "alice", 8..=12);
    bob.assert_silent(QUIET).await;

    let (page, more) = bob.sync(0).await;
    assert_dms(&page, "bob", "alice", 1..=5);
    assert!(more, "7 more after seq 5");
    let (page, more) = bob.sync(5).await;
    assert_dms(&page, "bob", "alice", 6..=10);
    assert!(more, "2 more after seq 10");
    let (page, more) = bob.sync(10).await;
    assert_dms(&page, "bob", "alice", 11..=12);
    assert!(!more, "nothing after seq 12");
}

/// Large messages: the offline replay does not overflow the connection's queue (it holds the
/// newest ones), and each `sync` page stays under half of `max_queue_bytes`, saying `more`.
#[tokio::test(flavor = "multi_thread")]
async fn large_offline_messages_fit_the_queue_and_sync_pages_them() {
    let server = TestServer::start(small_queue);
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    for n in 1..=100 {
        assert_eq!(alice.dm("bob", padded(n)).await, n);
    }

    let mut bob = dev(addr, "bob").await;
    let mut replayed = Vec::new();
    while let Some(frame) = bob.next_within(QUIET).await {
        match frame {
            Incoming::Text(text) => replayed.push(serde_json::from_str::<Value>(&text).unwrap()),
            other => panic!("bob: the offline replay must not cost the connection: {other}"),
        }
    }
    bob.ping().await;
    let first = 101 - replayed.len() as u64;
    assert!(first <= 100, "no offline message arrived");
    for (m, n) in replayed.iter().zip(first..) {
        assert_eq!(
            assert_dm(m, "bob", "alice", &padded(n)),
            n,
            "the newest, oldest first"
        );
    }

    let mut since = 0;
    while since < 100 {
        let reply = bob.call(json!({"type": "sync", "since": since})).await;
        let size = reply.to_string().len();
        assert!(size < SMALL_QUEUE / 2, "a sync reply of {size} bytes");
        let page = reply["messages"].as_array().expect("messages");
        assert!(!page.is_empty(), "an empty page after {since}: {reply}");
        for (m, n) in page.iter().zip(since + 1..) {
            assert_eq!(assert_dm(m, "bob", "alice", &padded(n)), n);
        }
        since += page.len() as u64;
        assert_eq!(reply["more"], since < 100, "more after {since}");
    }
}

/// A connection that died before its client processed everything: a new connection's `sync`
/// from the client's cursor gets the rest, oldest first. What was written to the dead
/// connection is not replayed at connect, and what is replayed there is replayed once.
#[tokio::test(flavor = "multi_thread")]
async fn sync_closes_the_window_of_a_dead_connection() {
    let server = TestServer::start(fast);
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    let mut bob = dev(addr, "bob").await;
    let (empty, more) = bob.sync(0).await;
    assert!(empty.is_empty() && !more, "an empty inbox");

    dm_numbered(&mut alice, "bob", 1..=5).await;
    assert_dms(&bob.recv_n(2).await, "bob", "alice", 1..=2);
    drop(bob); // gone without a close, with 3..5 perhaps written, perhaps not

    let mut bob = retry_dev(addr, "bob", TIMEOUT).await.unwrap();
    assert_eq!(bob.welcome["inbox_seq"], 5, "{}", bob.welcome);
    // The offline replay: what was never written to b1, if anything.
    let mut replayed = Vec::new();
    while let Some(Incoming::Text(text)) = bob.next_within(QUIET).await {
        replayed.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    let replayed_seqs = seqs(&replayed);
    assert!(
        replayed_seqs.is_sorted() && replayed_seqs.iter().all(|s| (3..=5).contains(s)),
        "only messages never written to a connection are replayed, oldest first: {replayed:?}"
    );
    let (page, more) = bob.sync(2).await;
    assert_dms(&page, "bob", "alice", 3..=5);
    assert!(!more);

    let (page, more) = bob.sync(0).await;
    assert_dms(&page, "bob", "alice", 1..=5);
    assert!(!more);
    for since in [5, 99] {
        let (page, more) = bob.sync(since).await;
        assert!(page.is_empty() && !more, "nothing after {since}: {page:?}");
    }

    // Whatever the replay held, it is not sent again.
    bob.close().await;
    let mut bob = retry_dev(addr, "bob", TIMEOUT).await.unwrap();
    bob.assert_silent(QUIET).await;
}

/// `sync` pages hold at most `replay_limit` messages; `more` says when to ask again.
#[tokio::test(flavor = "multi_thread")]
async fn sync_pages_by_replay_limit() {
    let server = TestServer::start(|c| {
        fast(c);
        c.replay_limit = 4;
    });
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    let mut bob = dev(addr, "bob").await;
    dm_numbered(&mut alice, "bob", 1..=10).await;
    assert_dms(&bob.recv_n(10).await, "bob", "alice", 1..=10);

    let mut since = 0;
    let mut all = Vec::new();
    loop {
        let (page, more) = bob.sync(since).await;
        assert!(page.len() <= 4, "a page over replay_limit: {page:?}");
        since = page.last().map_or(since, |m| m["seq"].as_u64().unwrap());
        all.extend(page);
        if !more {
            break;
        }
        assert!(all.len() <= 10, "more:true forever");
    }
    assert_dms(&all, "bob", "alice", 1..=10);
}

/// `since` is a required non-negative integer.
#[tokio::test(flavor = "multi_thread")]
async fn sync_errors() {
    let server = TestServer::start(fast);
    let mut bob = dev(server.addr(), "bob").await;
    let wrong = [
        json!("1"),
        json!(-1),
        json!(1.5),
        json!(false),
        json!([1]),
        Value::Null,
    ];
    for (i, value) in wrong.into_iter().enumerate() {
        let id = json!(i);
        let reply = bob
            .call(json!({"type": "sync", "since": value, "id": id}))
            .await;
        assert_error(&reply, "bad_request", Some(&id));
    }
    let reply = bob.call(json!({"type": "sync", "id": "s"})).await;
    assert_error(&reply, "bad_request", Some(&json!("s")));
    bob.ping().await;
}

/// `inbox_retention_messages`: the inbox keeps the newest ones; seqs go on.
#[tokio::test(flavor = "multi_thread")]
async fn inbox_retention_by_count() {
    let server = TestServer::start(|c| {
        fast(c);
        c.inbox_retention_messages = 3;
        c.retention_interval_ms = 50;
    });
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    let mut bob = dev(addr, "bob").await;
    dm_numbered(&mut alice, "bob", 1..=10).await;
    assert_dms(&bob.recv_n(10).await, "bob", "alice", 1..=10);
    let kept = eventually(TRIMMED, "bob's inbox trimmed to 3", async || {
        let (page, more) = bob.sync(0).await;
        assert!(!more, "{page:?}");
        (seqs(&page) == [8, 9, 10]).then_some(page)
    })
    .await;
    assert_dms(&kept, "bob", "alice", 8..=10);
    dm_numbered(&mut alice, "bob", 11..=11).await;
    assert_dms(&bob.recv_n(1).await, "bob", "alice", 11..=11);
}

/// `inbox_retention_secs`: old inbox messages go in the background; seqs go on.
#[tokio::test(flavor = "multi_thread")]
async fn inbox_retention_by_age() {
    let server = TestServer::start(|c| {
        fast(c);
        c.inbox_retention_secs = 1;
        c.retention_interval_ms = 50;
    });
    let addr = server.addr();
    let mut alice = dev(addr, "alice").await;
    let mut bob = dev(addr, "bob").await;
    dm_numbered(&mut alice, "bob", 1..=3).await;
    assert_dms(&bob.recv_n(3).await, "bob", "alice", 1..=3);
    let (page, _) = bob.sync(0).await;
    assert_eq!(seqs(&page), [1, 2, 3], "fresh messages are kept");
    eventually(TRIMMED, "bob's inbox empty after 1 s", async || {
        bob.sync(0).await.0.is_empty().then_some(())
    })
    .await;
    dm_numbered(&mut alice, "bob", 4..=4).await;
    assert_dms(&bob.recv_n(1).await, "bob", "alice", 4..=4);
    let mut again = dev(addr, "bob").await;
    assert_eq!(again.welcome["inbox_seq"], 4, "{}", again.welcome);
    again.assert_silent(QUIET).await;
}
