//! Races a client can cause on its own, against servers with a fixed 2 and 4 shards: pipelined
//! joins and leaves of one room, direct messages sent while the recipient connects, members
//! rejoining with `since` while every shard publishes. And a panic inside a shard.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn server(shards: usize) -> TestServer {
    TestServer::start(|c| {
        fast(c);
        c.shards = shards;
    })
}

/// Reads frames until the reply with `id`; returns the frames before it, and the reply.
async fn until_reply(c: &mut Client, id: u64) -> (Vec<Value>, Value) {
    let mut before = Vec::new();
    loop {
        let f = c.recv_json().await;
        if f["id"] == json!(id) {
            return (before, f);
        }
        before.push(f);
    }
}

fn join(id: u64, since: Option<u64>) -> Value {
    match since {
        Some(since) => json!({"type": "join", "room": "r", "id": id, "since": since}),
        None => json!({"type": "join", "room": "r", "id": id}),
    }
}

/// A server with `shards` shards, and "p" in room "r" after publishing seqs 1..=5 there.
async fn room_of_five(shards: usize) -> (TestServer, Client) {
    let s = server(shards);
    let mut p = dev(s.addr(), "p").await;
    p.join("r").await;
    publish_numbered(&mut p, "r", 1..=5).await;
    (s, p)
}

/// The room's next message arrives once, and nothing else.
async fn next_is_live(p: &mut Client, a: &mut Client, seq: u64) {
    assert_eq!(p.publish("r", numbered(seq)).await, seq);
    assert_room_msgs(&a.recv_n(1).await, "r", "p", seq..=seq);
    a.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_join_is_answered_after_the_pending_one_without_a_second_catch_up() {
    for shards in [2, 4] {
        let (s, mut p) = room_of_five(shards).await;

        // A join with since, then three more while it is pending: with and without since.
        let mut a = dev(s.addr(), "a").await;
        let batch = [
            join(1, Some(0)),
            join(2, None),
            join(3, Some(3)),
            join(4, Some(0)),
        ];
        a.send_batch(&batch).await;
        let ack = a.recv_json().await;
        assert_eq!(
            ack["id"], 1,
            "{shards} shards: the first join's ack comes first: {ack}"
        );
        assert_recovery(&ack, 5, true, 5, false);
        assert_room_msgs(&a.recv_n(5).await, "r", "p", 1..=5);
        for id in 2..=4 {
            let ack = a.recv_json().await;
            assert_eq!(
                (&ack["type"], &ack["id"]),
                (&json!("ack"), &json!(id)),
                "{ack}"
            );
            assert_eq!(
                ack["seq"], 5,
                "acked at the seq the first join caught up to: {ack}"
            );
            assert!(ack.get("replayed").is_none(), "no second catch-up: {ack}");
        }
        next_is_live(&mut p, &mut a, 6).await;

        // A plain join pending, then one with since: one ack each, in order, no replay.
        let mut b = dev(s.addr(), "b").await;
        b.send_batch(&[join(1, None), join(2, Some(0))]).await;
        for id in 1..=2 {
            let ack = b.recv_json().await;
            assert_eq!((&ack["id"], &ack["seq"]), (&json!(id), &json!(6)), "{ack}");
        }
        next_is_live(&mut p, &mut b, 7).await;
        // And a join of a room the connection is in: acked at once, at its seq.
        let (before, ack) = b.request(join(3, Some(0))).await;
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(ack["seq"], 7, "{ack}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn join_leave_join_pipelined_answers_each_and_delivers_each_seq_once() {
    for shards in [2, 4] {
        let (s, mut p) = room_of_five(shards).await;

        let mut a = dev(s.addr(), "a").await;
        let leave = json!({"type": "leave", "room": "r", "id": 2});
        a.send_batch(&[join(1, Some(0)), leave, join(3, Some(2))])
            .await;
        let cancelled = a.recv_json().await;
        assert_error(&cancelled, "cancelled", Some(&json!(1)));
        let left = a.recv_json().await;
        assert_eq!(
            (&left["type"], &left["id"]),
            (&json!("ack"), &json!(2)),
            "{left}"
        );
        let ack = a.recv_json().await;
        assert_eq!(ack["id"], 3, "{shards} shards: {ack}");
        assert_recovery(&ack, 5, true, 3, false);
        assert_room_msgs(&a.recv_n(3).await, "r", "p", 3..=5);
        next_is_live(&mut p, &mut a, 6).await;

        // The same with plain joins: the first is cancelled, the second is live from its seq.
        let mut b = dev(s.addr(), "b").await;
        let leave = json!({"type": "leave", "room": "r", "id": 2});
        b.send_batch(&[join(1, None), leave, join(3, None)]).await;
        let mut frames = b.recv_n(3).await;
        frames.sort_by_key(|f| f["id"].as_u64());
        assert_error(&frames[0], "cancelled", Some(&json!(1)));
        assert_eq!(frames[2]["seq"], 6, "{:?}", frames[2]);
        next_is_live(&mut p, &mut b, 7).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn direct_messages_sent_while_the_recipient_connects_arrive_once_in_order() {
    for shards in [2, 4] {
        let s = server(shards);
        for round in 0..4u64 {
            let to = format!("c{round}");
            let mut sender = dev(s.addr(), "s").await;
            let addr = s.addr();
            let n = 60;
            let to2 = to.clone();
            let sending = tokio::spawn(async move {
                for i in 1..=n {
                    assert_eq!(sender.dm(&to2, numbered(i)).await, i);
                }
            });
            // Connect somewhere in the middle of the stream of messages.
            tokio::time::sleep(Duration::from_millis(5 * round)).await;
            let mut c = dev(addr, &to).await;
            sending.await.unwrap();
            let got = c.recv_n(n as usize).await;
            assert_dms(&got, &to, "s", 1..=n);
            c.assert_silent(Duration::from_millis(200)).await;
        }
    }
}

/// Every member sees every seq of each of its join windows once, in order, while publishers
/// on every shard keep going and the members leave and rejoin with `since` in a loop.
#[tokio::test(flavor = "multi_thread")]
async fn members_rejoining_with_since_see_every_seq_of_each_window_once() {
    for shards in [2, 4] {
        let s = server(shards);
        let per_publisher = 150;
        let mut publishers = Vec::new();
        for i in 0..shards {
            // The acceptor deals connections round-robin: one publisher per shard.
            let mut p = dev(s.addr(), &format!("p{i}")).await;
            p.join("r").await;
            publishers.push(p);
        }
        let mut members = Vec::new();
        for i in 0..3 {
            let mut m = dev(s.addr(), &format!("m{i}")).await;
            m.join("r").await;
            members.push(m);
        }
        let publishing: Vec<_> = publishers
            .into_iter()
            .map(|mut p| {
                tokio::spawn(async move {
                    for n in 0..per_publisher {
                        // Publishers are members too: skip the others' messages.
                        let publish = json!({"type": "publish", "room": "r", "body": {"n": n}});
                        let (_, ack) = p.request(publish).await;
                        assert_eq!(ack["type"], "ack", "{ack}");
                        if n % 10 == 0 {
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                    p
                })
            })
            .collect();
        let total = (shards * per_publisher) as u64;
        let rejoining: Vec<_> = members
            .into_iter()
            .map(|mut m| {
                tokio::spawn(async move {
                    let mut last = 0u64;
                    let mut id = 100;
                    for round in 0.. {
                        // Read this window's live messages for a moment, then leave.
                        last = read_window(&mut m, last, Duration::from_millis(15)).await;
                        id += 1;
                        let leave = json!({"type": "leave", "room": "r", "id": id});
                        let (before, _) = until_reply_after(&mut m, leave, id).await;
                        last = check_window(&m.name, &before, last);
                        if last >= total && round > 3 {
                            return;
                        }
                        id += 1;
                        let (before, ack) = m.request(join(id, Some(last))).await;
                        assert!(
                            before.is_empty(),
                            "{}: frames before the ack {before:?}",
                            m.name
                        );
                        assert_eq!(ack["recovered"], true, "{}: {ack}", m.name);
                        assert_eq!(ack["truncated"], false, "{}: {ack}", m.name);
                    }
                })
            })
            .collect();
        for p in publishing {
            p.await.unwrap();
        }
        for m in rejoining {
            m.await.unwrap();
        }
    }
}

async fn until_reply_after(c: &mut Client, frame: Value, id: u64) -> (Vec<Value>, Value) {
    c.send_json(&frame).await;
    until_reply(c, id).await
}

/// Reads room messages for `wait`; checks they continue from `last`, and returns the new last.
async fn read_window(c: &mut Client, mut last: u64, wait: Duration) -> u64 {
    while let Some(Incoming::Text(t)) = c.next_within(wait).await {
        let f: Value = serde_json::from_str(&t).unwrap();
        last = check_window(&c.name, std::slice::from_ref(&f), last);
    }
    last
}

fn check_window(who: &str, frames: &[Value], mut last: u64) -> u64 {
    for f in frames {
        assert_eq!(f["type"], "message", "{who}: {f}");
        let seq = f["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "{who}: after seq {last} came {f}");
        last = seq;
    }
    last
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_a_shard_is_contained_counted_and_makes_the_server_unready() {
    let s = server(2);
    let mut a = dev(s.addr(), "a").await;
    let mut b = dev(s.addr(), "b").await;
    a.join("r").await;
    b.join("r").await;
    let mut http = Http::connect(s.addr()).await;
    assert_eq!(http.get("/readyz", &[]).await.status, 200);

    s.inject_panic(0);
    s.inject_panic(1);
    let ready = eventually(Duration::from_secs(5), "/readyz turns 503", async || {
        let r = Http::connect(s.addr()).await.get("/readyz", &[]).await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert!(ready.body.contains("panic"), "{}", ready.body);
    let metrics = http.get("/metrics", &[]).await.body;
    let panics: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("shardcast_panics_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(panics, 2, "{metrics}");

    // Both shards still serve: connections, joins, publishes.
    let seq = a.publish("r", numbered(1)).await;
    assert_room_msgs(&b.recv_n(1).await, "r", "a", seq..=seq);
    let mut c = dev(s.addr(), "c").await;
    c.join("r").await;
    let seq = b.publish("r", numbered(2)).await;
    assert_room_msgs(&c.recv_n(1).await, "r", "b", seq..=seq);
}

/// The inbox's delivered cursor moves only once the replay reached the connection: when the
/// read fails, the connection is closed with 1011, and the next one gets the messages.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_inbox_read_loses_nothing() {
    for shards in [2, 4] {
        let s = server(shards);
        let mut sender = dev(s.addr(), "s").await;
        dm_numbered(&mut sender, "carol", 1..=3).await;

        s.inject_read_failure();
        let url = format!("ws://{}/ws?user=carol", s.addr());
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        match tokio::time::timeout(TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                assert_eq!(u16::from(frame.code), 1011, "{frame:?}");
                assert!(frame.reason.contains("reconnect"), "{frame:?}");
            }
            other => panic!("expected a 1011 close first, got {other:?}"),
        }

        let mut carol = retry_dev(s.addr(), "carol", TIMEOUT)
            .await
            .unwrap_or_else(|r| panic!("carol reconnects: {r:?}"));
        assert_dms(&carol.recv_n(3).await, "carol", "s", 1..=3);
        dm_numbered(&mut sender, "carol", 4..=4).await;
        assert_dms(&carol.recv_n(1).await, "carol", "s", 4..=4);
        carol.assert_silent(Duration::from_millis(200)).await;
    }
}
