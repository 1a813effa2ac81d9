//! Delivery: the seeds' three users (rooms and direct messages), multi-device fan-out, the body
//! passed through byte for byte (any JSON value), presence events and the presence query,
//! rejoining, a join racing a stream of messages, one total order per room with publishers on
//! different shards, and one room of 2,000 clients.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use shardcast::config::{PresenceMode, RoomRule};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

const QUIET: Duration = Duration::from_millis(300);

/// Users a, b, c; rooms 1 = {a, b, c}, 2 = {a, b}, 3 = {a}.
#[tokio::test(flavor = "multi_thread")]
async fn seeds_three_users() {
    let server = TestServer::start(|c| c.presence_events = false);
    let addr = server.addr();
    let mut a = dev(addr, "a").await;
    let mut b = dev(addr, "b").await;
    let mut c = dev(addr, "c").await;
    assert_eq!(a.welcome["user"], "a");
    assert_eq!(a.welcome["rooms"], json!([]), "dev mode joins no rooms");
    assert_eq!(a.welcome["heartbeat_ms"], 25_000, "the default heartbeat");
    for room in ["1", "2", "3"] {
        assert_eq!(a.join(room).await, 0, "a fresh room's last seq is 0");
    }
    for room in ["1", "2"] {
        assert_eq!(b.join(room).await, 0);
    }
    assert_eq!(c.join("1").await, 0);

    // a in room 2 reaches b only.
    let body = json!({"text": "a to room 2"});
    assert_eq!(
        a.publish("2", body.clone()).await,
        1,
        "first message is seq 1"
    );
    let got = b.recv_json().await;
    assert_eq!(assert_room_msg(&got, "2", "a", &body), 1);

    // b in room 1 reaches a and c (and not b itself).
    let body = json!({"text": "b to room 1"});
    assert_eq!(b.publish("1", body.clone()).await, 1);
    for who in [&mut a, &mut c] {
        let got = who.recv_json().await;
        assert_eq!(assert_room_msg(&got, "1", "b", &body), 1);
    }

    // a in room 3 reaches nobody.
    assert_eq!(a.publish("3", json!("alone")).await, 1);

    // A direct message a -> c reaches c only.
    let body = json!("psst, c");
    let seq = a.dm("c", body.clone()).await;
    assert_eq!(seq, 1, "c's first inbox message is seq 1");
    let got = c.recv_json().await;
    assert_eq!(assert_dm(&got, "c", "a", &body), seq);

    // A direct message to an offline user is acknowledged, with its own inbox sequence.
    let first = a.dm("nobody", json!(1)).await;
    let second = a.dm("nobody", json!(2)).await;
    assert_eq!(second, first + 1, "an inbox's seq increases by 1");

    // Nothing else arrived anywhere (c got no room 2 message, a none of its own...).
    for who in [&mut a, &mut b, &mut c] {
        who.assert_silent(QUIET).await;
        who.ping().await;
    }
}

/// `body` is spliced into the outgoing frame exactly as the publisher wrote it.
#[tokio::test(flavor = "multi_thread")]
async fn body_passes_through_byte_for_byte() {
    let server = TestServer::start(|c| c.presence_events = false);
    let mut a = dev(server.addr(), "a").await;
    let mut b = dev(server.addr(), "b").await;
    a.join("r").await;
    b.join("r").await;

    let body = r#"{"z": [1, 2.50, "\u00e9", 1e3],  "a" : null, "n":{ }}"#;
    a.send_text(format!(
        r#"{{"type":"publish","room":"r","id":"p","body":{body}}}"#
    ))
    .await;
    let ack = a.recv_json().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let raw = b.recv_text().await;
    assert!(
        raw.contains(body),
        "the body must pass through byte for byte:\n sent {body}\n got  {raw}"
    );
    let parsed: Value = serde_json::from_str(&raw).unwrap();
    let expected: Value = serde_json::from_str(body).unwrap();
    assert_room_msg(&parsed, "r", "a", &expected);

    let dm_body = r#"[ "x" ,2.0 ]"#;
    a.send_text(format!(
        r#"{{"type":"send","to":"b","id":2,"body":{dm_body}}}"#
    ))
    .await;
    assert_eq!(a.recv_json().await["type"], "ack");
    let raw = b.recv_text().await;
    assert!(
        raw.contains(dm_body),
        "the body must pass through byte for byte:\n sent {dm_body}\n got  {raw}"
    );
}

/// Any JSON value is a body, and arrives as written.
#[tokio::test(flavor = "multi_thread")]
async fn any_json_value_is_a_body() {
    let server = TestServer::start(|c| c.presence_events = false);
    let mut a = dev(server.addr(), "a").await;
    let mut b = dev(server.addr(), "b").await;
    a.join("r").await;
    b.join("r").await;
    let bodies = [
        "0",
        "-1.5e-3",
        r#""""#,
        r#""\ud83d\ude00 \"q\"""#,
        "[]",
        "{}",
        "true",
        "false",
        r#"{"deep":[[[{"x":[]}]]]}"#,
        // null is a JSON value too: a body, not a missing field.
        "null",
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        a.send_text(format!(
            r#"{{"type":"publish","room":"r","id":{i},"body":{body},"extra":"ignored"}}"#
        ))
        .await;
        let ack = a.recv_json().await;
        assert_eq!(ack["type"], "ack", "body {body}: {ack}");
        let raw = b.recv_text().await;
        assert!(raw.contains(body), "body {body} not passed through: {raw}");
        let got: Value = serde_json::from_str(&raw).unwrap();
        let expected: Value = serde_json::from_str(body).unwrap();
        assert_room_msg(&got, "r", "a", &expected);
    }
}

/// Joining a room again is acknowledged with the room's current seq, without presence events.
#[tokio::test(flavor = "multi_thread")]
async fn rejoin_is_acked_with_the_current_seq() {
    let server = TestServer::default_config();
    let addr = server.addr();
    let mut a = dev(addr, "a").await;
    join_settled(&mut a, "r").await;
    let mut b = dev(addr, "b").await;
    join_settled(&mut b, "r").await;
    assert_eq!(a.recv_json().await["type"], "joined");
    for n in 1..=3 {
        assert_eq!(a.publish("r", json!(n)).await, n);
        let got = b.recv_json().await;
        assert_eq!(assert_room_msg(&got, "r", "a", &json!(n)), n);
    }
    assert_eq!(
        b.join("r").await,
        3,
        "a rejoin is acked with the current seq"
    );
    // No second `joined` for b: c joining is the next event a sees.
    let mut c = dev(addr, "c").await;
    join_settled(&mut c, "r").await;
    assert_eq!(
        a.recv_json().await,
        json!({"type": "joined", "room": "r", "user": "c"})
    );
    assert_eq!(
        b.recv_json().await,
        json!({"type": "joined", "room": "r", "user": "c"})
    );
    // b is in the room once: one copy of the next message.
    let seq = a.publish("r", json!("once")).await;
    let got = b.recv_json().await;
    assert_eq!(assert_room_msg(&got, "r", "a", &json!("once")), seq);
    b.assert_silent(QUIET).await;
}

/// A connection joining while a room's messages flow gets its ack first, then every message
/// sequenced after it, with no gap.
#[tokio::test(flavor = "multi_thread")]
async fn join_while_messages_flow_sees_everything_after_its_ack() {
    let server = TestServer::start(|c| {
        c.shards = 4;
        c.presence_events = false;
        c.publish_rate = 1_000_000;
        c.publish_burst = 1_000_000;
    });
    let addr = server.addr();
    let mut observer = dev(addr, "observer").await;
    observer.join("flow").await;
    let mut publisher = dev(addr, "publisher").await;
    publisher.join("flow").await;

    // The publisher keeps up to 20 publishes in flight until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_flag = stop.clone();
    let pub_task = tokio::spawn(async move {
        let (mut sent, mut acked) = (0u64, BTreeSet::new());
        while !(stop_flag.load(std::sync::atomic::Ordering::SeqCst) && acked.len() as u64 == sent) {
            if sent - (acked.len() as u64) < 20
                && !stop_flag.load(std::sync::atomic::Ordering::SeqCst)
            {
                sent += 1;
                let frame = json!({"type": "publish", "room": "flow", "id": sent, "body": sent});
                publisher.send_json(&frame).await;
            } else {
                let ack = publisher.recv_type("ack").await;
                assert!(acked.insert(ack["seq"].as_u64().unwrap()), "{ack}");
            }
        }
        let expected: BTreeSet<u64> = (1..=sent).collect();
        assert_eq!(acked, expected, "acks are seqs 1..=sent");
        sent
    });

    let mut next = 1;
    let mut read_observer_until = async |observer: &mut Client, seq: u64| {
        while next <= seq {
            let m = observer.recv_type("message").await;
            assert_eq!(m["seq"], next, "observer: no gap");
            next += 1;
        }
    };
    read_observer_until(&mut observer, 50).await;
    let mut joiner = dev(addr, "joiner").await;
    let join_seq = joiner.join("flow").await;
    assert!(join_seq >= 50, "seq 50 was sequenced before the join");
    read_observer_until(&mut observer, join_seq + 100).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let total = pub_task.await.expect("publisher task");
    read_observer_until(&mut observer, total).await;

    for seq in join_seq + 1..=total {
        let m = joiner.recv_type("message").await;
        assert_eq!(
            m["seq"], seq,
            "joiner: every message after its ack, in order"
        );
        assert_eq!(m["body"], seq);
    }
    joiner.assert_silent(QUIET).await;
    observer.assert_silent(QUIET).await;
}

/// A user with several connections: room messages reach the publisher's other devices, direct
/// messages reach every recipient device and the sender's other devices.
#[tokio::test(flavor = "multi_thread")]
async fn multi_device_delivery() {
    let server = TestServer::start(|c| c.presence_events = false);
    let addr = server.addr();
    let mut a1 = dev(addr, "a").await;
    let mut a2 = dev(addr, "a").await;
    let mut b1 = dev(addr, "b").await;
    let mut b2 = dev(addr, "b").await;
    for who in [&mut a1, &mut a2, &mut b1, &mut b2] {
        who.join("r").await;
    }

    // A room message from a1 reaches a2, b1, b2; not a1.
    let body = json!({"n": 1});
    let seq = a1.publish("r", body.clone()).await;
    for who in [&mut a2, &mut b1, &mut b2] {
        let got = who.recv_json().await;
        assert_eq!(assert_room_msg(&got, "r", "a", &body), seq);
    }

    // A direct message a1 -> b reaches b1, b2 and a2 (the sender's other device); not a1.
    let body = json!("dm to b");
    let seq = a1.dm("b", body.clone()).await;
    for who in [&mut b1, &mut b2, &mut a2] {
        let got = who.recv_json().await;
        assert_eq!(assert_dm(&got, "b", "a", &body), seq, "{}", who.name);
    }

    // A direct message to oneself from a2: a1 gets it, a2 does not.
    let body = json!("note to self");
    let seq = a2.dm("a", body.clone()).await;
    let got = a1.recv_json().await;
    assert_eq!(assert_dm(&got, "a", "a", &body), seq);

    for who in [&mut a1, &mut a2, &mut b1, &mut b2] {
        who.assert_silent(QUIET).await;
    }
}

/// Joins, then a ping round trip; a `joined` about the joiner itself may show up around its ack.
async fn join_settled(client: &mut Client, room: &str) {
    let ack = client
        .call_past_own_presence(json!({"type": "join", "room": room}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["room"], room, "{ack}");
    let pong = client.call_past_own_presence(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

/// Leaves; a `left` about the leaver itself may show up around its ack.
async fn leave_settled(client: &mut Client, room: &str) {
    let ack = client
        .call_past_own_presence(json!({"type": "leave", "room": room}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["room"], room, "{ack}");
    let pong = client.call_past_own_presence(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");
}

/// `joined`/`left` on a user's first join and last leave only; the query lists users once.
#[tokio::test(flavor = "multi_thread")]
async fn presence_events_and_query() {
    let server = TestServer::default_config();
    let addr = server.addr();
    let joined = |user: &str| json!({"type": "joined", "room": "r", "user": user});
    let left = |user: &str| json!({"type": "left", "room": "r", "user": user});

    let mut a = dev(addr, "a").await;
    join_settled(&mut a, "r").await;
    assert_eq!(a.presence("r").await, ["a"]);

    // b's first connection joining: a sees `joined`.
    let mut b1 = dev(addr, "b").await;
    join_settled(&mut b1, "r").await;
    assert_eq!(a.recv_json().await, joined("b"));

    // b's second connection joining: no event for anyone. c joining next is the marker: it must
    // be the next frame a and b1 see.
    let mut b2 = dev(addr, "b").await;
    assert_eq!(b2.join("r").await, 0);
    let mut c = dev(addr, "c").await;
    join_settled(&mut c, "r").await;
    assert_eq!(
        a.recv_json().await,
        joined("c"),
        "a second connection of b must not send `joined`"
    );
    assert_eq!(b1.recv_json().await, joined("c"));
    assert_eq!(b2.recv_json().await, joined("c"));

    // The query lists each user once, whatever their number of connections.
    assert_eq!(a.presence("r").await, ["a", "b", "c"]);
    assert_eq!(b2.presence("r").await, ["a", "b", "c"]);

    // b2 leaving (b1 still in): no event. c leaving is the marker.
    b2.leave("r").await;
    leave_settled(&mut c, "r").await;
    assert_eq!(
        a.recv_json().await,
        left("c"),
        "leaving with another connection still in must not send `left`"
    );
    assert_eq!(b1.recv_json().await, left("c"));
    assert_eq!(a.presence("r").await, ["a", "b"]);

    // b's last connection leaving: `left`.
    leave_settled(&mut b1, "r").await;
    assert_eq!(a.recv_json().await, left("b"));
    assert_eq!(a.presence("r").await, ["a"]);

    // A disconnect leaves every room.
    let mut d = dev(addr, "d").await;
    join_settled(&mut d, "r").await;
    assert_eq!(a.recv_json().await, joined("d"));
    d.close().await;
    assert_eq!(a.recv_json().await, left("d"), "a disconnect is a leave");
    assert_eq!(a.presence("r").await, ["a"]);
    a.assert_silent(QUIET).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presence_events_can_be_turned_off() {
    let server = TestServer::start(|c| c.presence_events = false);
    let addr = server.addr();
    let mut a = dev(addr, "a").await;
    a.join("r").await;
    let mut b = dev(addr, "b").await;
    b.join("r").await;
    let mut c = dev(addr, "c").await;
    c.join("r").await;
    b.leave("r").await;
    drop(b);

    // The next frame a sees is c's message: no joined/left came before it.
    let seq = c.publish("r", json!("marker")).await;
    let got = a.recv_json().await;
    assert_eq!(assert_room_msg(&got, "r", "c", &json!("marker")), seq);
    // The query still works.
    assert_eq!(a.presence("r").await, ["a", "c"]);
    a.assert_silent(QUIET).await;
}

/// Publishers on different connections (spread over 4 shards) publish at once to one room:
/// every member sees one order, seq strictly increasing by 1 with no gaps, and the acks' seqs
/// are exactly the delivered ones.
#[tokio::test(flavor = "multi_thread")]
async fn one_total_order_per_room() {
    const PUBLISHERS: usize = 6;
    const SUBSCRIBERS: usize = 3;
    const EACH: usize = 150;
    const TOTAL: usize = PUBLISHERS * EACH;
    let server = TestServer::start(|c| {
        c.shards = 4;
        c.presence_events = false;
        c.publish_rate = 1_000_000;
        c.publish_burst = 1_000_000;
    });
    let addr = server.addr();

    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut s = dev(addr, &format!("s{i}")).await;
        assert_eq!(s.join("order").await, 0);
        subscribers.push(s);
    }
    let mut publishers = Vec::new();
    for k in 0..PUBLISHERS {
        let mut p = dev(addr, &format!("p{k}")).await;
        assert_eq!(p.join("order").await, 0);
        publishers.push(p);
    }

    // Subscribers: read TOTAL messages each, as (seq, from, body).
    let mut sub_tasks = JoinSet::new();
    for mut s in subscribers {
        sub_tasks.spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..TOTAL {
                let m = s.recv_type("message").await;
                assert_eq!(m["room"], "order", "{m}");
                seen.push((
                    m["seq"].as_u64().unwrap(),
                    m["from"].clone(),
                    m["body"].clone(),
                ));
            }
            s.assert_silent(QUIET).await;
            seen
        });
    }

    // Publishers: all start together, send EACH publishes without waiting, then read acks and
    // the other publishers' messages.
    let barrier = Arc::new(tokio::sync::Barrier::new(PUBLISHERS));
    let mut pub_tasks = JoinSet::new();
    for (k, mut p) in publishers.into_iter().enumerate() {
        let barrier = barrier.clone();
        pub_tasks.spawn(async move {
            barrier.wait().await;
            for i in 0..EACH {
                let frame = json!({"type": "publish", "room": "order", "id": format!("p{k}-{i}"),
                                   "body": {"p": k, "i": i}});
                p.send_json(&frame).await;
            }
            let mut acks = BTreeMap::new(); // id -> seq
            let mut seen = Vec::new();
            while acks.len() < EACH || seen.len() < TOTAL - EACH {
                let f = p.recv_json().await;
                match f["type"].as_str() {
                    Some("ack") => {
                        assert_eq!(f["room"], "order", "{f}");
                        let id = f["id"].as_str().expect("string id echoed").to_string();
                        let seq = f["seq"].as_u64().expect("ack seq");
                        assert!(acks.insert(id, seq).is_none(), "two acks for one id: {f}");
                    }
                    Some("message") => {
                        assert_ne!(
                            f["from"],
                            format!("p{k}"),
                            "own message delivered back: {f}"
                        );
                        seen.push((
                            f["seq"].as_u64().unwrap(),
                            f["from"].clone(),
                            f["body"].clone(),
                        ));
                    }
                    _ => panic!("p{k}: unexpected frame {f}"),
                }
            }
            p.assert_silent(QUIET).await;
            (k, acks, seen)
        });
    }

    let mut orders = Vec::new();
    while let Some(r) = sub_tasks.join_next().await {
        orders.push(r.expect("subscriber task"));
    }
    let reference = orders[0].clone();
    let seqs: Vec<u64> = reference.iter().map(|m| m.0).collect();
    let expected: Vec<u64> = (1..=TOTAL as u64).collect();
    assert_eq!(seqs, expected, "seq must go 1, 2, 3... with no gap");
    for (i, order) in orders.iter().enumerate() {
        assert!(
            order == &reference,
            "subscriber {i} saw a different order than subscriber 0"
        );
    }
    let by_seq: BTreeMap<u64, (Value, Value)> = reference
        .iter()
        .map(|(s, f, b)| (*s, (f.clone(), b.clone())))
        .collect();

    let mut acked = BTreeSet::new();
    while let Some(r) = pub_tasks.join_next().await {
        let (k, acks, seen) = r.expect("publisher task");
        assert_eq!(acks.len(), EACH);
        let mut own = BTreeSet::new();
        for i in 0..EACH {
            let seq = acks[&format!("p{k}-{i}")];
            assert!(acked.insert(seq), "seq {seq} acked twice");
            own.insert(seq);
            let (from, body) = &by_seq[&seq];
            assert_eq!(from, &json!(format!("p{k}")), "message at seq {seq}");
            assert_eq!(body, &json!({"p": k, "i": i}), "message at seq {seq}");
        }
        // A publisher is a member too: it sees the same order, minus its own messages.
        let others: Vec<_> = reference
            .iter()
            .filter(|m| !own.contains(&m.0))
            .cloned()
            .collect();
        assert!(seen == others, "publisher p{k} saw a different order");
    }
    let delivered: BTreeSet<u64> = seqs.into_iter().collect();
    assert_eq!(
        acked, delivered,
        "the acks' seqs are exactly the delivered seqs"
    );
}

/// 2,000 clients over 2 shards in one room: each message reaches every client exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_clients_in_one_room() {
    const CLIENTS: usize = 2_000;
    const BATCH: usize = 100;
    const MESSAGES: u64 = 4;
    // No presence of any kind: past `presence_list_max` the room would send `occupancy`.
    let server = TestServer::start(|c| {
        c.shards = 2;
        c.rooms = vec![RoomRule {
            prefix: String::new(),
            presence: Some(PresenceMode::Off),
            ..RoomRule::default()
        }];
    });
    let addr = server.addr();
    let small = || Some(WebSocketConfig::default().read_buffer_size(4096));

    let mut clients = Vec::with_capacity(CLIENTS);
    for batch in 0..CLIENTS / BATCH {
        let mut set = JoinSet::new();
        for i in batch * BATCH..(batch + 1) * BATCH {
            set.spawn(async move {
                let mut c = connect_with(addr, &format!("/ws?user=u{i}"), &[], small())
                    .await
                    .unwrap_or_else(|r| panic!("client u{i} refused: {r:?}"));
                assert_eq!(c.join("big").await, 0);
                c
            });
        }
        while let Some(c) = set.join_next().await {
            clients.push(c.expect("connect task"));
        }
    }
    assert_eq!(clients.len(), CLIENTS);

    let mut publisher = dev(addr, "publisher").await;
    publisher.join("big").await;
    for n in 1..=MESSAGES {
        assert_eq!(publisher.publish("big", json!({"n": n})).await, n);
    }

    // Each client reads exactly seq 1..=MESSAGES in order (a duplicate or a loss shows up as a
    // wrong frame), then nothing more.
    let mut set = JoinSet::new();
    for mut c in clients {
        set.spawn(async move {
            for n in 1..=MESSAGES {
                let got = c.recv_json().await;
                assert_eq!(
                    assert_room_msg(&got, "big", "publisher", &json!({"n": n})),
                    n,
                    "{}",
                    c.name
                );
            }
            c.assert_silent(QUIET).await;
        });
    }
    let mut done = 0;
    while let Some(r) = set.join_next().await {
        r.expect("a client did not get every message exactly once");
        done += 1;
    }
    assert_eq!(done, CLIENTS);
}

/// `presence` is paged: `limit` (default 100, at most 1000) users after `after`, sorted, with
/// `more`; paging a 251-member room returns each member exactly once. Each page takes a
/// request token (`publish_rate`), so a presence loop is `rate_limited`.
#[tokio::test(flavor = "multi_thread")]
async fn presence_is_paged_and_rate_limited() {
    let server = TestServer::start(|c| {
        c.presence_events = false;
        c.publish_rate = 1;
        c.publish_burst = 12;
    });
    let addr = server.addr();
    let mut members = Vec::new();
    for i in 0..250 {
        let mut m = dev(addr, &format!("member-{i:03}")).await;
        m.join("big").await;
        members.push(m);
    }
    let mut o = dev(addr, "observer").await;
    o.join("big").await;
    let mut everyone: Vec<String> = (0..250).map(|i| format!("member-{i:03}")).collect();
    everyone.push("observer".into());

    let (all, pages) = o.presence_all("big", 100).await;
    assert_eq!((all, pages), (everyone.clone(), 3));
    let (page, more) = o.presence_page("big", None, None).await;
    assert_eq!((page.len(), more), (100, true), "the default limit is 100");
    let (page, more) = o.presence_page("big", None, Some(1000)).await;
    assert_eq!((page, more), (everyone, false));
    let (page, more) = o.presence_page("big", Some("observer"), None).await;
    assert_eq!((page.len(), more), (0, false), "nothing after the last");
    let reply = o
        .call(json!({"type": "presence", "room": "big", "limit": 1001, "id": "big"}))
        .await;
    assert_error(&reply, "bad_request", Some(&json!("big")));

    // 6 pages so far; the burst of 12 allows 6 more.
    let mut answered = 6;
    loop {
        let reply = o.call(json!({"type": "presence", "room": "big"})).await;
        if reply["type"] == "error" {
            assert_error(&reply, "rate_limited", reply.get("id"));
            break;
        }
        answered += 1;
        assert!(
            answered <= 13,
            "{answered} presence replies with a burst of 12"
        );
    }
    assert!(
        answered >= 12,
        "rate_limited after {answered} of a burst of 12"
    );
}
