//! Bad input and limits. Each bad frame gets the documented `error` (echoing the `id` where a
//! valid one was sent) and nothing else; afterwards the same connection still works and a
//! neighbour in a shared room still receives. Also: the 1007 close for text that is not UTF-8,
//! `too_large` and the 1009 close for frames over 16x `max_message_size`,
//! `max_rooms_per_connection`, and the publish rate limit.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// A server, a victim `v` and a neighbour `n`, both in room `shared`.
async fn fixture(
    tweak: impl FnOnce(&mut shardcast::config::Config),
) -> (TestServer, Client, Client) {
    let server = TestServer::start(|c| {
        c.presence_events = false;
        tweak(c);
    });
    let mut v = dev(server.addr(), "v").await;
    let mut n = dev(server.addr(), "n").await;
    v.join("shared").await;
    n.join("shared").await;
    (server, v, n)
}

/// The victim still works: its ping gets a pong, its publish reaches the neighbour, and the
/// neighbour's publish is the very next frame it sees (so no stray frame came after the error).
async fn still_works(v: &mut Client, n: &mut Client) {
    v.ping().await;
    let body = json!({"from": "v", "nonce": v.fresh_id()});
    let seq = v.publish("shared", body.clone()).await;
    let got = n.recv_json().await;
    assert_eq!(assert_room_msg(&got, "shared", "v", &body), seq);
    still_receives(v, n).await;
}

/// The victim's ping gets a pong and it receives the neighbour's publish next.
async fn still_receives(v: &mut Client, n: &mut Client) {
    v.ping().await;
    let body = json!({"from": "n", "nonce": n.fresh_id()});
    let seq = n.publish("shared", body.clone()).await;
    let got = v.recv_json().await;
    assert_eq!(assert_room_msg(&got, "shared", "n", &body), seq);
}

/// Sends `raw` and expects an error `code`; `id` as in [`assert_error`].
async fn expect_error_for(v: &mut Client, raw: &str, code: &str, id: Option<Value>) {
    v.send_text(raw).await;
    let reply = v.recv_json().await;
    assert_error(&reply, code, id.as_ref());
}

/// Like [`assert_error`], but with no opinion on the id when the frame was not valid JSON text
/// (it may echo an id it found, or none).
fn assert_error_any_id(frame: &Value, code: &str, sent_id: &Value) {
    assert_error(
        frame,
        code,
        frame.get("id").filter(|i| !i.is_null()).map(|_| sent_id),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    for raw in [
        r#"{"type":"ping""#,
        "not json",
        "{'type':'ping'}",
        "",
        "{\"type\":\"ping\"} x",
    ] {
        expect_error_for(&mut v, raw, "bad_request", None).await;
    }
    still_works(&mut v, &mut n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn not_an_object() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    for raw in [
        "[1,2,3]",
        r#""ping""#,
        "42",
        "null",
        "true",
        r#"[{"type":"ping","id":1}]"#,
    ] {
        expect_error_for(&mut v, raw, "bad_request", None).await;
    }
    still_works(&mut v, &mut n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_type() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    expect_error_for(&mut v, r#"{"id":7}"#, "bad_request", Some(json!(7))).await;
    expect_error_for(
        &mut v,
        r#"{"id":"x","room":"shared","body":1}"#,
        "bad_request",
        Some(json!("x")),
    )
    .await;
    expect_error_for(&mut v, "{}", "bad_request", None).await;
    still_works(&mut v, &mut n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_mistyped_fields() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    let cases = [
        (r#"{"type":"join","room":5,"id":"j1"}"#, "j1"),
        (r#"{"type":"join","id":"j2"}"#, "j2"),
        (
            r#"{"type":"publish","room":["shared"],"body":1,"id":"j3"}"#,
            "j3",
        ),
        (r#"{"type":"publish","room":"shared","id":"j4"}"#, "j4"),
        (r#"{"type":"send","to":null,"body":1,"id":"j5"}"#, "j5"),
        (r#"{"type":"send","body":1,"id":"j6"}"#, "j6"),
        (
            r#"{"type":"leave","room":{"name":"shared"},"id":"j7"}"#,
            "j7",
        ),
        (r#"{"type":"presence","room":true,"id":"j8"}"#, "j8"),
        (r#"{"type":7,"id":"j9"}"#, "j9"),
    ];
    for (raw, id) in cases {
        expect_error_for(&mut v, raw, "bad_request", Some(json!(id))).await;
    }
    // The rejected publishes were not delivered: the neighbour's next frame is still_works'.
    still_works(&mut v, &mut n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_ids() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    // The JSON text of an id is at most 64 bytes: a 62-char string is 64 bytes with its quotes.
    let ok = "i".repeat(62);
    let reply = v.call(json!({"type": "ping", "id": ok})).await;
    assert_eq!(reply["type"], "pong", "{reply}");
    let ok_num = "1".repeat(64);
    v.send_text(format!(r#"{{"type":"ping","id":{ok_num}}}"#))
        .await;
    let raw = v.recv_text().await;
    assert!(
        raw.contains(&ok_num) && raw.contains("pong"),
        "a 64-digit number id is valid and echoed: {raw}"
    );

    let long = "i".repeat(63);
    let long_num = "1".repeat(65);
    for raw in [
        r#"{"type":"ping","id":{"a":1}}"#.to_string(),
        r#"{"type":"ping","id":[1]}"#.to_string(),
        r#"{"type":"ping","id":true}"#.to_string(),
        format!(r#"{{"type":"ping","id":"{long}"}}"#),
        format!(r#"{{"type":"ping","id":{long_num}}}"#),
        format!(r#"{{"type":"publish","room":"shared","body":1,"id":"{long}"}}"#),
    ] {
        expect_error_for(&mut v, &raw, "bad_request", None).await;
    }
    still_works(&mut v, &mut n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_frame() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    v.send_msg(Message::binary(br#"{"type":"ping","id":1}"#.to_vec()))
        .await;
    let reply = v.recv_json().await;
    assert_error_any_id(&reply, "bad_request", &json!(1));
    v.send_msg(Message::binary(vec![0u8, 159, 146, 150])).await;
    let reply = v.recv_json().await;
    assert_error(&reply, "bad_request", None);
    still_works(&mut v, &mut n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_type() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    for (raw, id) in [
        (r#"{"type":"dance","id":9}"#, json!(9)),
        (r#"{"type":"","id":10}"#, json!(10)),
        (r#"{"type":"welcome","id":"w"}"#, json!("w")),
        (r#"{"type":"PING","id":12}"#, json!(12)),
    ] {
        expect_error_for(&mut v, raw, "unknown_type", Some(id)).await;
    }
    still_works(&mut v, &mut n).await;
}

/// A text frame that is not UTF-8 closes that connection with 1007 (RFC 6455); the neighbour is
/// unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn invalid_utf8_text_frame_closes_1007() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    let mut bytes = br#"{"type":"ping","id":1,"x":""#.to_vec();
    bytes.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    bytes.extend_from_slice(br#""}"#);
    let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
    v.send_msg(Message::Frame(frame)).await;
    v.expect_close(1007).await;
    n.ping().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_names() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    let too_long = "r".repeat(129);
    for (i, room) in [
        "",
        "has space",
        "slash/y",
        "é",
        "semi;colon",
        too_long.as_str(),
    ]
    .into_iter()
    .enumerate()
    {
        let reply = v.call(json!({"type": "join", "room": room, "id": i})).await;
        assert_error(&reply, "invalid_name", Some(&json!(i)));
    }
    for (i, to) in ["", "bad user", too_long.as_str()].into_iter().enumerate() {
        let id = json!(format!("s{i}"));
        let reply = v
            .call(json!({"type": "send", "to": to, "body": 1, "id": id}))
            .await;
        assert_error(&reply, "invalid_name", Some(&id));
    }
    // The edges of the allowed set are fine.
    let longest = "r".repeat(128);
    v.join(&longest).await;
    v.join("A-Za_z0.9:x@y").await;
    still_works(&mut v, &mut n).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn not_member() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    for (ty, extra) in [
        ("publish", json!({"body": 1})),
        ("presence", json!({})),
        ("leave", json!({})),
    ] {
        let mut frame = extra;
        frame["type"] = json!(ty);
        frame["room"] = json!("elsewhere");
        frame["id"] = json!(format!("{ty}-1"));
        let reply = v.call(frame).await;
        assert_error(&reply, "not_member", Some(&json!(format!("{ty}-1"))));
    }
    // After leaving, the room is off limits again.
    v.join("other").await;
    v.leave("other").await;
    let reply = v
        .call(json!({"type": "leave", "room": "other", "id": "again"}))
        .await;
    assert_error(&reply, "not_member", Some(&json!("again")));
    let reply = v
        .call(json!({"type": "publish", "room": "other", "body": 1, "id": "p"}))
        .await;
    assert_error(&reply, "not_member", Some(&json!("p")));
    still_works(&mut v, &mut n).await;
}

/// Over `max_message_size`: `too_large` and the connection stays. Over 16x: closed with 1009.
#[tokio::test(flavor = "multi_thread")]
async fn oversize_messages() {
    let (server, mut v, mut n) = fixture(|c| c.max_message_size = 1024).await;

    // Under the limit: fine.
    let body = json!("x".repeat(900));
    let seq = v.publish("shared", body.clone()).await;
    let got = n.recv_json().await;
    assert_eq!(assert_room_msg(&got, "shared", "v", &body), seq);

    // Over it (but under 16x): too_large, discarded, and the connection stays.
    let big = "x".repeat(2000);
    let frame = json!({"type": "publish", "room": "shared", "id": "big", "body": big});
    v.send_json(&frame).await;
    let reply = v.recv_json().await;
    assert_error_any_id(&reply, "too_large", &json!("big"));
    let frame = json!({"type": "send", "to": "n", "id": "bigdm", "body": big});
    v.send_json(&frame).await;
    let reply = v.recv_json().await;
    assert_error_any_id(&reply, "too_large", &json!("bigdm"));
    let near = "x".repeat(15_000);
    v.send_json(&json!({"type": "publish", "room": "shared", "id": "near", "body": near}))
        .await;
    let reply = v.recv_json().await;
    assert_error_any_id(&reply, "too_large", &json!("near"));
    // Nothing reached the neighbour: its next frame is still_works' publish.
    still_works(&mut v, &mut n).await;

    // Over 16x the limit: closed with 1009; the neighbour and others are fine.
    let huge = "x".repeat(20_000);
    v.send_json(&json!({"type": "publish", "room": "shared", "id": "huge", "body": huge}))
        .await;
    v.expect_close(1009).await;
    n.ping().await;
    let mut w = dev(server.addr(), "w").await;
    w.join("shared").await;
    let seq = w.publish("shared", json!("after")).await;
    let got = n.recv_json().await;
    assert_eq!(assert_room_msg(&got, "shared", "w", &json!("after")), seq);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_rooms_per_connection() {
    let (_server, mut v, mut n) = fixture(|c| c.max_rooms_per_connection = 3).await;
    v.join("r1").await;
    v.join("r2").await; // shared, r1, r2: at the limit
    let reply = v
        .call(json!({"type": "join", "room": "r3", "id": "over"}))
        .await;
    assert_error(&reply, "forbidden", Some(&json!("over")));
    // Not in r3.
    let reply = v
        .call(json!({"type": "publish", "room": "r3", "body": 1, "id": "p"}))
        .await;
    assert_error(&reply, "not_member", Some(&json!("p")));
    // Joining a room it is already in is acknowledged, not an error.
    v.join("r1").await;
    // Leaving makes room.
    v.leave("r1").await;
    v.join("r3").await;
    still_works(&mut v, &mut n).await;
}

/// A fast burst of publishes over `publish_rate`/`publish_burst`: some are `rate_limited` and
/// dropped, the rest acknowledged and delivered, and the connection stays open.
#[tokio::test(flavor = "multi_thread")]
async fn publish_rate_limit() {
    const RATE: u32 = 5;
    const BURST: u32 = 10;
    const SENT: usize = 40;
    let (server, mut v, mut n) = fixture(|c| {
        c.publish_rate = RATE;
        c.publish_burst = BURST;
    })
    .await;

    let start = Instant::now();
    for i in 0..SENT {
        let frame = json!({"type": "publish", "room": "shared", "id": format!("r{i}"), "body": i});
        v.send_json(&frame).await;
    }
    let mut acked = Vec::new(); // (seq, i)
    let mut limited = BTreeSet::new();
    for _ in 0..SENT {
        let reply = v.recv_json().await;
        let id = reply["id"]
            .as_str()
            .unwrap_or_else(|| panic!("reply without our id: {reply}"));
        let i: usize = id[1..].parse().unwrap();
        match reply["type"].as_str() {
            Some("ack") => acked.push((reply["seq"].as_u64().expect("seq"), i)),
            Some("error") => {
                assert_error(&reply, "rate_limited", Some(&json!(id)));
                assert!(limited.insert(i), "two replies for {id}");
            }
            _ => panic!("unexpected reply {reply}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let acked_ids: BTreeSet<usize> = acked.iter().map(|a| a.1).collect();
    assert_eq!(acked_ids.len(), acked.len(), "two acks for one id");
    assert!(
        acked_ids.is_disjoint(&limited),
        "an id both acked and limited"
    );
    assert_eq!(
        acked_ids.len() + limited.len(),
        SENT,
        "every publish gets exactly one reply"
    );
    assert!(!limited.is_empty(), "a burst of {SENT} must hit the limit");
    let allowed = BURST as f64 + RATE as f64 * elapsed + 1.0;
    assert!(
        (acked.len() as f64) <= allowed,
        "{} acked in {elapsed:.2}s with burst {BURST} and rate {RATE}/s",
        acked.len()
    );
    assert!(
        acked.len() >= BURST as usize,
        "a burst of {BURST} must be allowed, {} were acked",
        acked.len()
    );

    // The neighbour gets exactly the acknowledged messages, in seq order; a marker from a third
    // member comes right after them.
    acked.sort();
    for &(seq, i) in &acked {
        let got = n.recv_json().await;
        assert_eq!(assert_room_msg(&got, "shared", "v", &json!(i)), seq);
    }
    let mut w = dev(server.addr(), "w").await;
    w.join("shared").await;
    let seq = w.publish("shared", json!("marker")).await;
    for who in [&mut n, &mut v] {
        let got = who.recv_json().await;
        assert_eq!(assert_room_msg(&got, "shared", "w", &json!("marker")), seq);
    }

    // The connection is still open and receiving; once the bucket refills it may publish again.
    still_receives(&mut v, &mut n).await;
    tokio::time::sleep(Duration::from_millis(1000)).await; // refill: this is a rate, not a sync
    still_works(&mut v, &mut n).await;
}

/// `send` counts against the same per-connection rate.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limit_covers_direct_messages() {
    let (_server, mut v, mut n) = fixture(|c| {
        c.publish_rate = 5;
        c.publish_burst = 10;
    })
    .await;
    let start = Instant::now();
    for i in 0..30 {
        v.send_json(&json!({"type": "send", "to": "n", "id": i, "body": i}))
            .await;
    }
    let mut replied = BTreeSet::new();
    let mut acked = 0;
    let mut limited = 0;
    for _ in 0..30 {
        let reply = v.recv_json().await;
        let id = reply["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("reply without our id: {reply}"));
        assert!(
            id < 30 && replied.insert(id),
            "unexpected or repeated reply {reply}"
        );
        match reply["type"].as_str() {
            Some("ack") => acked += 1,
            _ => {
                assert_error(&reply, "rate_limited", Some(&json!(id)));
                limited += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert!(limited > 0, "30 direct messages at once must hit the limit");
    assert!(
        acked as f64 <= 10.0 + 5.0 * elapsed + 1.0,
        "{acked} acked in {elapsed:.2}s"
    );
    for _ in 0..acked {
        assert_eq!(n.recv_json().await["type"], "message");
    }
    still_receives(&mut v, &mut n).await;
}

/// Malformed WebSocket framing (an unmasked client frame, reserved bits, a reserved opcode)
/// closes that connection with 1002; the neighbour is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_framing_closes_1002() {
    let (server, _v, mut n) = fixture(|_| {}).await;
    let masked = |first: u8, payload: &[u8]| {
        let mut f = vec![first, 0x80 | payload.len() as u8, 1, 2, 3, 4];
        f.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
        );
        f
    };
    let ping = br#"{"type":"ping"}"#;
    let cases = [
        (
            "unmasked text frame",
            [&[0x81, ping.len() as u8][..], ping].concat(),
        ),
        ("RSV1 set without an extension", masked(0xC1, ping)),
        ("reserved opcode 0x3", masked(0x83, b"")),
        ("reserved control opcode 0xB", masked(0x8B, b"")),
    ];
    for (what, bytes) in cases {
        let mut bad = dev(server.addr(), "bad").await;
        bad.write_raw(&bytes).await;
        match bad.next_within(TIMEOUT).await {
            Some(Incoming::Close(Some((code, _)))) => assert_eq!(code, 1002, "{what}"),
            other => panic!("{what}: expected close 1002, got {other:?}"),
        }
    }
    n.ping().await;
}

/// A body nested deeper than `max_body_depth` (default 64) is refused with `bad_request`
/// naming the limit, and relayed to no one: parsers that bound depth (Python's `json`) crash
/// on one 32,000 levels deep. Strings are not nesting, however many brackets they hold.
#[tokio::test(flavor = "multi_thread")]
async fn bodies_nested_past_max_body_depth_are_refused() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    let nested = |open: &str, close: &str, depth: usize| {
        format!("{}1{}", open.repeat(depth), close.repeat(depth))
    };
    let at_limit = nested("[", "]", 64);
    let body: Value = serde_json::from_str(&at_limit).unwrap();
    let seq = v.publish("shared", body.clone()).await;
    assert_eq!(
        assert_room_msg(&n.recv_json().await, "shared", "v", &body),
        seq
    );
    let brackets = json!({"s": "[[[{{{\"[\\\\\"]", "t": "]]]}}}"});
    v.publish("shared", brackets.clone()).await;
    assert_room_msg(&n.recv_json().await, "shared", "v", &brackets);

    for (what, body) in [
        ("arrays one over", nested("[", "]", 65)),
        ("objects one over", nested("{\"a\":", "}", 65)),
        ("32,000 levels", nested("[", "]", 32_000)),
    ] {
        for frame in [
            format!(r#"{{"type":"publish","room":"shared","id":1,"body":{body}}}"#),
            format!(r#"{{"type":"send","to":"n","id":1,"body":{body}}}"#),
        ] {
            v.send_text(frame).await;
            let reply = v.recv_json().await;
            assert_error(&reply, "bad_request", Some(&json!(1)));
            let message = reply["message"].as_str().unwrap();
            assert!(
                message.contains("max_body_depth") && message.contains("64"),
                "{what}: {reply}"
            );
        }
    }
    still_works(&mut v, &mut n).await;
}

/// A `key` that is not 1–64 printable ASCII characters (too long, empty, non-ASCII, a space,
/// a control character, not a string) is refused with `bad_request` saying what a key must
/// be, on `publish` and `send`; nothing is stored or relayed.
#[tokio::test(flavor = "multi_thread")]
async fn bad_idempotency_keys_are_refused() {
    let (_server, mut v, mut n) = fixture(|_| {}).await;
    let long = json!("k".repeat(65));
    for key in [
        long,
        json!(""),
        json!("clé"),
        json!("a b"),
        json!("a\u{1}b"),
        json!(7),
        Value::Null,
    ] {
        for mut frame in [
            json!({"type": "publish", "room": "shared", "body": 1}),
            json!({"type": "send", "to": "n", "body": 1}),
        ] {
            frame["key"] = key.clone();
            frame["id"] = json!(9);
            let reply = v.call(frame.clone()).await;
            assert_error(&reply, "bad_request", Some(&json!(9)));
            let message = reply["message"].as_str().unwrap();
            assert!(message.contains("`key`"), "{frame}: {reply}");
        }
    }
    // 64 characters is the limit, not past it.
    let at_limit = "k".repeat(64);
    let reply = v
        .call(json!({"type": "publish", "room": "shared", "body": 2, "key": at_limit}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    assert_room_msg(&n.recv_json().await, "shared", "v", &json!(2));
    let (inbox, _) = n.sync(0).await;
    assert!(inbox.is_empty(), "no refused send was stored: {inbox:?}");
    still_works(&mut v, &mut n).await;
}
