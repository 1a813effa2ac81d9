//! The Rust client crate (`clients/rust`) against a real server: both wire forms, a room shared
//! by a JSON client and a proto client, reconnect after a server restart on the same port and
//! data (the outbox resends with its keys, `since` recovers what was missed: nothing lost,
//! nothing twice), and one sender's order kept through `rate_limited` refusals.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::json;
use shardcast_client::{Auth, Backoff, Body, Client, Event, Events, Format, Message, Options};

/// How long any one awaited event may take.
const WAIT: Duration = Duration::from_secs(20);

fn options(server: &TestServer, user: &str, format: Format) -> Options {
    Options::new(format!("ws://{}/ws", server.addr()), Auth::Dev(user.into()))
        .format(format)
        .backoff(quick(Duration::from_millis(20)))
}

/// A backoff starting at `initial`, capped at 1 s.
fn quick(initial: Duration) -> Backoff {
    Backoff {
        initial,
        max: Duration::from_secs(1),
        ..Backoff::default()
    }
}

/// The next event that `want` picks, skipping the others.
async fn next<T>(events: &mut Events, mut want: impl FnMut(Event) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the awaited event did not come in time")
            .expect("the client stopped");
        if let Some(t) = want(ev) {
            return t;
        }
    }
}

async fn message(events: &mut Events) -> Message {
    next(events, |e| match e {
        Event::Message(m) => Some(m),
        _ => None,
    })
    .await
}

async fn connected(events: &mut Events) -> Option<shardcast_client::Recovery> {
    next(events, |e| match e {
        Event::Connected { recovery, .. } => Some(recovery),
        _ => None,
    })
    .await
}

/// A JSON client and a proto client in one room get each other's messages with the same seqs,
/// and equal bodies whichever form they were sent in; history and edits come back in both.
#[tokio::test(flavor = "multi_thread")]
async fn json_and_proto_clients_share_a_room() {
    let server = TestServer::start(fast);
    let (alice, mut a_ev) = Client::connect(options(&server, "alice", Format::Json));
    let (bob, mut b_ev) = Client::connect(options(&server, "bob", Format::Proto));
    assert_eq!(connected(&mut a_ev).await, None);
    assert_eq!(connected(&mut b_ev).await, None);
    alice.join("r").await.unwrap();
    let ack = bob.join("r").await.unwrap();
    assert_eq!((ack.room.as_str(), ack.seq), ("r", 0));
    assert!(ack.rights.unwrap().contains(&"publish".to_string()));

    let bodies = [
        Body::text("hi"),
        Body::json(&json!({"n": 1, "s": "é"})).unwrap(),
        Body::bytes(vec![0xff, 0, 1]),
    ];
    for (i, body) in bodies.iter().enumerate() {
        // Alice's go to bob, bob's to alice, each in its own form.
        let (from, to_events) = if i % 2 == 0 {
            (&alice, &mut b_ev)
        } else {
            (&bob, &mut a_ev)
        };
        let ack = from.publish("r", body.clone()).await.unwrap();
        let m = message(to_events).await;
        assert_eq!(m.room.as_deref(), Some("r"));
        assert_eq!(Some(m.seq), ack.seq, "{body:?}");
        assert_eq!(&m.body, body, "the body crossed unchanged in meaning");
    }
    bob.publish("r", Body::bytes(b"raw".to_vec()))
        .await
        .unwrap();
    let m = message(&mut a_ev).await;
    assert_eq!(
        m.body,
        Body::bytes(b"raw".to_vec()),
        "opaque bytes reach JSON as $b64"
    );

    // Direct messages, both ways.
    let ack = alice.send("bob", Body::text("dm")).await.unwrap();
    let m = message(&mut b_ev).await;
    assert_eq!(
        (m.to.as_deref(), m.body.as_json(), Some(m.seq)),
        (Some("bob"), Some("\"dm\""), ack.seq)
    );

    // An edit of alice's first message reaches bob as an event of kind `edit`.
    let ack = alice.edit("r", 1, Body::text("hi!")).await.unwrap();
    let m = message(&mut b_ev).await;
    assert_eq!(
        (m.kind.as_deref(), m.target, Some(m.seq)),
        (Some("edit"), Some(1), ack.seq)
    );

    // History reads the same in both forms.
    let a = alice.history("r", None, None).await.unwrap();
    let b = bob.history("r", None, None).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.messages.len(), 5);
    assert_eq!(a.messages[4].body, Body::text("hi"));
    let p = bob.presence("r", None, None).await.unwrap();
    assert_eq!(p.users, ["alice", "bob"]);

    // A refusal is a typed error with the server's code.
    let err = alice.publish("elsewhere", Body::text("x"));
    let err = tokio::time::timeout(WAIT, err).await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some("not_member"), "{err}");
}

/// A publish sent again with its key is answered `dup` with the first seq, and that is an ack.
#[tokio::test(flavor = "multi_thread")]
async fn a_dup_ack_is_an_ack() {
    let server = TestServer::start(fast);
    for format in [Format::Json, Format::Proto] {
        let (c, mut ev) = Client::connect(options(&server, "k", format));
        connected(&mut ev).await;
        c.join("d").await.unwrap();
        let first = c.publish_with_key("d", Body::text("once"), &format!("key-{format:?}"));
        let first = first.await.unwrap();
        let again = c.publish_with_key("d", Body::text("once"), &format!("key-{format:?}"));
        let again = again.await.unwrap();
        assert!(!first.dup && again.dup, "{format:?}");
        assert_eq!(first.seq, again.seq);
        c.close();
    }
}

/// The server restarts (same port, same data) while a publisher keeps publishing: every
/// publish is acked once, and a receiver that comes back later than the publisher gets every
/// message exactly once, in order, through `since`.
#[tokio::test(flavor = "multi_thread")]
async fn reconnect_after_a_restart_loses_nothing_and_duplicates_nothing() {
    let mut server = TestServer::start(fast);
    let (publisher, mut p_ev) = Client::connect(options(&server, "pub", Format::Json));
    // The receiver comes back well after the publisher, so it misses what the publisher sends
    // meanwhile and must recover it by seq.
    let r_opts = options(&server, "sub", Format::Proto).backoff(quick(Duration::from_millis(800)));
    let (receiver, mut r_ev) = Client::connect(r_opts);
    connected(&mut p_ev).await;
    connected(&mut r_ev).await;
    publisher.join("room").await.unwrap();
    receiver.join("room").await.unwrap();

    const N: usize = 60;
    let mut replies = Vec::new();
    for i in 0..N {
        replies.push(publisher.publish("room", Body::json(&i).unwrap()));
        if i == 20 {
            // Let a few be acked and delivered before the restart, then restart while the
            // rest are being sent.
            let m = message(&mut r_ev).await;
            assert_eq!(m.body, Body::json(&0).unwrap());
            server = server.restart(fast);
        }
        if i == 40 {
            // The publisher is back and sending before the receiver is.
            let rec = connected(&mut p_ev)
                .await
                .expect("a reconnect reports its recovery");
            assert!(rec.complete, "{rec:?}");
        }
    }
    let mut seqs = BTreeMap::new();
    for (i, r) in replies.into_iter().enumerate() {
        let ack = tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
        let seq = ack.seq.unwrap();
        assert!(seqs.insert(seq, i).is_none(), "seq {seq} acked twice");
    }
    // One seq per message, in the order published.
    let order: Vec<usize> = seqs.values().copied().collect();
    assert_eq!(order, (0..N).collect::<Vec<_>>(), "acked out of order");

    let rec = next(&mut r_ev, |e| match e {
        Event::Connected { recovery, .. } => Some(recovery),
        _ => None,
    });
    // The receiver's messages before its reconnect were read above up to the first; take the
    // rest in order, the recovery report among them.
    let mut got = vec![0usize];
    let mut recovery = None;
    let deadline = tokio::time::Instant::now() + WAIT;
    drop(rec);
    while got.len() < N {
        let ev = tokio::time::timeout_at(deadline, r_ev.recv())
            .await
            .unwrap_or_else(|_| panic!("the receiver has {} of {N}: {got:?}", got.len()))
            .unwrap();
        match ev {
            Event::Message(m) => got.push(m.body.decode::<usize>().unwrap().unwrap()),
            Event::Connected { recovery: r, .. } => recovery = r,
            _ => {}
        }
    }
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "lost, duplicated or reordered"
    );
    let recovery = recovery.expect("the receiver reconnected and says what it recovered");
    assert!(recovery.complete, "{recovery:?}");
    let room = &recovery.rooms[0];
    assert!(
        room.recovered && room.replayed > 0,
        "nothing replayed: {room:?}"
    );
    // Nothing more comes: no duplicate after the last.
    let extra = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Some(Event::Message(m)) = r_ev.recv().await {
                return m;
            }
        }
    })
    .await;
    assert!(extra.is_err(), "a message came twice: {extra:?}");
    drop(server);
}

/// With a low publish rate, a burst of publishes is partly refused `rate_limited`; the outbox
/// retries them one at a time per room, so the room stores them in the order published.
#[tokio::test(flavor = "multi_thread")]
async fn one_senders_order_holds_through_rate_limiting() {
    let server = TestServer::start(|c| {
        fast(c);
        c.publish_rate = 20;
        c.publish_burst = 3;
    });
    for format in [Format::Json, Format::Proto] {
        let user = format!("s{format:?}");
        let (c, mut ev) = Client::connect(options(&server, &user, format));
        connected(&mut ev).await;
        let room = format!("rl{format:?}");
        c.join(&room).await.unwrap();
        const N: u64 = 15;
        let replies: Vec<_> = (0..N)
            .map(|i| c.publish(&room, Body::json(&i).unwrap()))
            .collect();
        for (i, r) in replies.into_iter().enumerate() {
            let ack = tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
            assert_eq!(ack.seq, Some(i as u64 + 1), "{format:?}: publish {i}");
        }
        // The history request counts against the same rate: asked until the budget allows.
        let page = loop {
            match c.history(&room, None, None).await {
                Err(e) if e.code() == Some("rate_limited") => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                r => break r.unwrap(),
            }
        };
        let bodies: Vec<u64> = page
            .messages
            .iter()
            .rev()
            .map(|m| m.body.decode().unwrap().unwrap())
            .collect();
        assert_eq!(bodies, (0..N).collect::<Vec<_>>(), "{format:?}");
        c.close();
    }
}
