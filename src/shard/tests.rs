//! Shard handlers driven directly, with in-memory connections: what each connection is sent,
//! and in how many writes.

use std::rc::Rc;
use std::sync::Arc;

use super::Shard;
use crate::auth::Identity;
use crate::config::{Config, Durability};
use crate::conn::{Conn, Event, MemorySink};
use crate::persist::Persist;
use crate::protocol::Name;
use crate::router::Router;

fn shard() -> Shard {
    let (router, _inboxes) = Router::new(1);
    let config = Config {
        presence_events: false,
        durability: Durability::Memory,
        ..Config::default()
    };
    Shard::new(
        0,
        router,
        Arc::new(config),
        Persist::discarding(),
        Vec::new(),
    )
}

/// Admits and attaches a connection the way the handshake does.
fn connect(shard: &mut Shard, user: &str) -> Rc<Conn> {
    let identity = Identity {
        user: Name::new(user).unwrap(),
        rooms: None,
        exp: None,
    };
    let sink = MemorySink {
        kept: Some(Default::default()),
        ..MemorySink::default()
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let id = shard.register(identity.user.clone(), tx);
    assert_eq!(rx.try_recv(), Ok(Ok(0)), "admitted, with an empty inbox");
    let conn = Rc::new(Conn::in_memory(id, sink, &identity, 1000));
    shard.attach(&conn, &identity, 0);
    shard.flush_dirty();
    conn
}

fn send(shard: &mut Shard, conn: &Rc<Conn>, json: &str) {
    shard.on_event(conn, Event::Text(json));
}

/// The JSON payloads of the server frames a connection was sent (all are short text frames).
fn frames(conn: &Conn) -> Vec<serde_json::Value> {
    let kept = conn.memory().unwrap().kept.as_ref().unwrap().borrow();
    let mut out = Vec::new();
    let mut rest = &kept[..];
    while !rest.is_empty() {
        assert_eq!(rest[0], 0x81, "a final text frame");
        let (len, header) = match rest[1] {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            n => (n as usize, 2),
        };
        out.push(serde_json::from_slice(&rest[header..header + len]).unwrap());
        rest = &rest[header + len..];
    }
    out
}

fn writes(conn: &Conn) -> usize {
    conn.memory().unwrap().writes.get()
}

#[test]
fn a_batch_of_frames_leaves_in_one_write_per_socket() {
    let mut s = shard();
    let publisher = connect(&mut s, "p");
    let members: Vec<_> = (2..5).map(|i| connect(&mut s, &format!("m{i}"))).collect();
    for c in members.iter().chain([&publisher]) {
        send(&mut s, c, r#"{"type":"join","room":"r"}"#);
    }
    s.flush_dirty();
    let before: Vec<_> = members.iter().map(|c| writes(c)).collect();

    for i in 0..5 {
        send(
            &mut s,
            &publisher,
            &format!(r#"{{"type":"publish","room":"r","id":{i},"body":{{"i":{i}}}}}"#),
        );
    }
    s.flush_dirty();

    for (c, before) in members.iter().zip(before) {
        assert_eq!(writes(c), before + 1, "five frames, one write");
        let got: Vec<_> = frames(c)
            .into_iter()
            .filter(|f| f["type"] == "message")
            .collect();
        let seqs: Vec<_> = got.iter().map(|f| f["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert_eq!(got[4]["body"], serde_json::json!({"i": 4}));
    }
    let mine = frames(&publisher);
    assert!(
        mine.iter().all(|f| f["type"] != "message"),
        "no echo to the publisher"
    );
    assert_eq!(mine.iter().filter(|f| f["type"] == "ack").count(), 6);
}

#[test]
fn a_direct_message_reaches_the_recipient_and_the_senders_other_devices() {
    let mut s = shard();
    let phone = connect(&mut s, "a");
    let laptop = connect(&mut s, "a");
    let bob = connect(&mut s, "b");
    let carol = connect(&mut s, "c");
    send(
        &mut s,
        &phone,
        r#"{"type":"send","to":"b","body":"hi","id":"x"}"#,
    );
    s.flush_dirty();
    let dm = |c: &Conn| {
        frames(c)
            .into_iter()
            .filter(|f| f["type"] == "message")
            .count()
    };
    assert_eq!(
        (dm(&phone), dm(&laptop), dm(&bob), dm(&carol)),
        (0, 1, 1, 0)
    );
    let ack = frames(&phone).pop().unwrap();
    assert_eq!(
        ack,
        serde_json::json!({"type":"ack","id":"x","to":"b","seq":1})
    );
}
