//! Shard handlers driven directly, with in-memory connections: what each connection is sent,
//! and in how many writes.

use std::rc::Rc;
use std::sync::Arc;

use super::Shard;
use crate::auth::Identity;
use crate::config::{Config, Durability};
use crate::conn::{Conn, Event, FrameLimits, MemorySink};
use crate::core::Name;
use crate::core::Stream;
use crate::msg::{NodeMsg, ReplayTo, ShardMsg};
use crate::persist::Persist;
use crate::router::Router;
use bytes::Bytes;

fn shard() -> Shard {
    shard_with(Config::default())
}

/// A shard on `config`, with presence events off and nothing stored.
fn shard_with(config: Config) -> Shard {
    let (router, _inboxes) = Router::new(1);
    let config = Config {
        presence_events: false,
        durability: Durability::Memory,
        ..config
    };
    {
        let config = Arc::new(config);
        let engine = crate::embedded::Embedded::new(
            0,
            router.clone(),
            config.clone(),
            Persist::discarding(),
            Vec::new(),
            Vec::new(),
        );
        Shard::new(
            0,
            router,
            config,
            Box::new(engine),
            crate::auth::Authenticator::new(&Config::default()).expect("dev mode has no keys"),
        )
    }
}

/// Admits and attaches a connection the way the handshake does.
fn connect(shard: &mut Shard, user: &str) -> Rc<Conn> {
    connect_with(shard, user, Bytes::new())
}

/// `connect`, with the handshake's unsent 101 (`head`).
fn connect_with(shard: &mut Shard, user: &str, head: Bytes) -> Rc<Conn> {
    let identity = Identity {
        user: Name::new(user).unwrap(),
        rooms: None,
        exp: None,
        info: None,
    };
    let sink = MemorySink {
        kept: Some(Default::default()),
        ..MemorySink::default()
    };
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let id = shard.register(identity.user.clone(), tx);
    assert_eq!(rx.try_recv(), Ok(Ok(0)), "admitted, with an empty inbox");
    let limits = FrameLimits::of(&shard.config);
    let rates = shard.config.rates();
    let conn = Rc::new(Conn::in_memory(id, sink, &identity, &rates, limits));
    shard.attach(&conn, &identity, 0, head);
    shard.flush_dirty();
    conn
}

fn send(shard: &mut Shard, conn: &Rc<Conn>, json: &str) {
    shard.on_event(conn, Event::Text(json));
}

/// The JSON payloads of the server frames a connection was sent (all are short text frames).
fn frames(conn: &Conn) -> Vec<serde_json::Value> {
    frames_after(conn, 0)
}

/// `frames`, after the first `skip` bytes.
fn frames_after(conn: &Conn, skip: usize) -> Vec<serde_json::Value> {
    let kept = conn.memory().unwrap().kept.as_ref().unwrap().borrow();
    let mut out = Vec::new();
    let mut rest = &kept[skip..];
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

fn seqs_of(conn: &Conn) -> Vec<u64> {
    frames(conn)
        .into_iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect()
}

fn room_frame(seq: u64) -> Bytes {
    crate::protocol::encode::message(
        crate::protocol::encode::Target::Room(&Name::new("r").unwrap()),
        &Name::new("p").unwrap(),
        seq,
        0,
        b"{}",
    )
}

fn deliver(s: &mut Shard, seq: u64) {
    let msg = NodeMsg::Deliver {
        stream: Stream::Room(Name::new("r").unwrap()),
        seq: Some(seq),
        frame: room_frame(seq),
        exclude: None,
        own: None,
    };
    s.handle(ShardMsg::Node(msg));
}

/// What a transport other than the in-process queues may do (drop, repeat, reorder): the hub
/// reads a gap before handing on anything newer, and drops what it handed on already.
#[test]
fn the_hub_merges_live_frames_by_seq() {
    let mut s = shard();
    let m = connect(&mut s, "m");
    send(&mut s, &m, r#"{"type":"join","room":"r"}"#);
    deliver(&mut s, 1);
    deliver(&mut s, 4); // 2 and 3 were lost: a read of (1, 3] is asked for
    deliver(&mut s, 5);
    deliver(&mut s, 1); // a repeat
    s.flush_dirty();
    assert_eq!(seqs_of(&m), [1], "nothing past the gap before it is filled");
    let filled = NodeMsg::Replay(crate::msg::Replay {
        stream: Stream::Room(Name::new("r").unwrap()),
        to: ReplayTo::Hub { node: 0, shard: 0 },
        after: 1,
        upto: 3,
        ack: None,
        frames: crate::ws::text_frames(
            [room_frame(2), room_frame(3)]
                .iter()
                .map(crate::ws::payload_of)
                .collect::<Vec<_>>()
                .iter()
                .map(|p| &p[..]),
        ),
        ok: true,
    });
    s.handle(ShardMsg::Node(filled));
    deliver(&mut s, 5); // a repeat of a frame that waited
    deliver(&mut s, 6);
    s.flush_dirty();
    assert_eq!(seqs_of(&m), [1, 2, 3, 4, 5, 6]);
    assert_eq!((s.stats.gaps, s.stats.duplicates_dropped), (1, 2));
}

#[test]
fn a_panic_inside_a_flush_leaves_the_other_connections_to_the_next_flush() {
    let mut s = shard();
    let conns: Vec<_> = (0..3).map(|i| connect(&mut s, &format!("u{i}"))).collect();
    for c in &conns {
        send(&mut s, c, r#"{"type":"ping"}"#);
    }
    // The list is written from its end: make the second one written panic.
    conns[1].memory().unwrap().panic_next.set(true);
    let panicked =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.flush_dirty())).is_err();
    assert!(panicked);
    s.flush_dirty();
    for c in &conns {
        let pongs = frames(c).iter().filter(|f| f["type"] == "pong").count();
        assert_eq!(pongs, 1, "every connection is written in the end");
    }
}

#[test]
fn the_handshake_101_leaves_with_welcome_in_one_write() {
    let mut shard = shard();
    let head = Bytes::from_static(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
    let conn = connect_with(&mut shard, "ann", head.clone());
    assert_eq!(writes(&conn), 1, "one write for the 101 and welcome");
    let kept = conn.memory().unwrap().written();
    assert!(kept.starts_with(&head), "the 101 comes first");
    let sent = frames_after(&conn, head.len());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "welcome");
}

/// The flusher's pacing, on tokio's paused clock: a flush after a quiet spell is written at
/// once; one due right after a pass waits for the rest of `write_delay_us`, and frames queued
/// meanwhile leave in the same write.
#[tokio::test(start_paused = true)]
async fn the_flusher_writes_at_once_when_idle_and_coalesces_when_busy() {
    use super::runtime::{Ctx, flusher};
    use std::time::Duration;
    use tokio::time::{Instant, advance};
    let config = Config {
        write_delay_us: 10_000,
        max_batch_delay_ms: 0,
        ..Config::default()
    };
    let mut s = shard_with(config);
    let conn = connect(&mut s, "u");
    let (router, _inboxes) = Router::new(1);
    let config = s.config.clone();
    let auth = crate::auth::Authenticator::new(&config).unwrap();
    let ctx = Rc::new(Ctx::new(
        0,
        s,
        auth,
        config,
        router,
        Persist::discarding(),
        Arc::default(),
    ));
    let ping = |ctx: &Ctx| {
        ctx.with(|s| send(s, &conn, r#"{"type":"ping"}"#));
        ctx.schedule_flush();
    };
    // Lets the flusher run as far as it can without the clock moving.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    tokio::task::LocalSet::new()
        .run_until(async {
            tokio::task::spawn_local(flusher(ctx.clone()));
            let t0 = Instant::now();
            let before = writes(&conn);
            ping(&ctx);
            settle().await;
            assert_eq!(writes(&conn), before + 1, "idle: written at once");
            assert_eq!(Instant::now(), t0, "without waiting");

            ping(&ctx);
            settle().await;
            advance(Duration::from_millis(4)).await;
            ping(&ctx);
            settle().await;
            assert_eq!(writes(&conn), before + 1, "busy: held for the delay");
            advance(Duration::from_millis(6)).await;
            settle().await;
            assert_eq!(writes(&conn), before + 2, "then both pongs in one write");
            let pongs = frames(&conn).iter().filter(|f| f["type"] == "pong").count();
            assert_eq!(pongs, 3);

            advance(Duration::from_millis(50)).await;
            let t1 = Instant::now();
            ping(&ctx);
            settle().await;
            assert_eq!(writes(&conn), before + 3, "after a quiet spell: at once");
            assert_eq!(Instant::now(), t1);
        })
        .await;
}
