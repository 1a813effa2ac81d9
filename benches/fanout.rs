//! The fan-out path and write coalescing, through the real shard code.
//!
//! - `fanout/N`: one publish, handled by a shard that is the room's home, delivered to N
//!   in-memory members, then flushed (one write per member). Parse, route, sequence, encode once,
//!   queue N times, N writes. Throughput is per delivery.
//! - `coalesce/K`: K frames queued on a real loopback TCP connection, then written, either as
//!   one `flush` (one sendmsg) or as K flushes of one frame (K syscalls).
//!
//! - `deflate/{plain,deflate}_{200B,8KB}/N`: a room message with a ~200-byte or ~8 KB JSON
//!   body delivered to N members that did not (`plain`) or did (`deflate`) negotiate
//!   permessage-deflate. The compressed variant is made once per message and shared; the
//!   setup prints the bytes each delivery puts on the wire.
//!
//! Run with `cargo bench --bench fanout`.

use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardcast::auth::Identity;
use shardcast::config::{Config, Durability};
use shardcast::conn::{Conn, Event, FrameLimits, MemorySink};
use shardcast::core::ConnId;
use shardcast::core::Name;
use shardcast::core::bucket::Rates;
use shardcast::persist::Persist;
use shardcast::router::{Inbox, Router};
use shardcast::shard::Shard;

/// Rate limits no bench reaches.
const UNLIMITED: Rates = Rates {
    requests: u32::MAX,
    request_burst: u32::MAX,
    reads: u32::MAX,
    read_burst: u32::MAX,
    signals: u32::MAX,
    signal_burst: u32::MAX,
};

fn identity(user: &str) -> Identity {
    Identity {
        user: Name::new(user).unwrap(),
        rooms: None,
        exp: None,
        info: None,
    }
}

fn message(shard: &mut Shard, conn: &Rc<Conn>, json: &str) {
    shard.on_event(conn, Event::Text(json));
}

/// A shard with `members` + 1 in-memory connections in room `bench`, each made by `conn`, and
/// the router's inboxes, kept open while the shard runs.
fn room(members: u64, conn: impl Fn(Conn) -> Conn) -> (Shard, Vec<Rc<Conn>>, Vec<Inbox>) {
    let (router, inboxes) = Router::new(1);
    let config = Config {
        presence_events: false,
        publish_rate: u32::MAX,
        publish_burst: u32::MAX,
        // The shard path alone: the store's cost is measured by the loadtest.
        durability: Durability::Memory,
        ..Config::default()
    };
    let mut shard = {
        let config = Arc::new(config);
        let engine = shardcast::embedded::Embedded::new(
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
            shardcast::auth::Authenticator::new(&Config::default()).expect("dev mode"),
        )
    };
    let conns: Vec<_> = (0..=members)
        .map(|i| {
            let id = identity(&format!("u{i}"));
            let (tx, _rx) = tokio::sync::oneshot::channel();
            let conn_id = shard.register(id.user.clone(), tx);
            let conn = Rc::new(conn(Conn::in_memory(
                conn_id,
                MemorySink::default(),
                &id,
                &UNLIMITED,
                FrameLimits::of(&Config::default()),
            )));
            shard.attach(&conn, &id, 0, Bytes::new());
            message(&mut shard, &conn, r#"{"type":"join","room":"bench"}"#);
            conn
        })
        .collect();
    shard.flush_dirty();
    (shard, conns, inboxes)
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for members in [10u64, 100, 1000] {
        let (mut shard, conns, _inboxes) = room(members, |c| c);
        let publisher = &conns[0];
        let publish = format!(
            r#"{{"type":"publish","room":"bench","id":1,"body":{{"text":"{}"}}}}"#,
            "x".repeat(50)
        );
        g.throughput(Throughput::Elements(members));
        g.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                message(&mut shard, publisher, &publish);
                shard.flush_dirty();
            })
        });
    }
    g.finish();
}

/// A chat body of about `size` bytes: JSON objects of words drawn from a small vocabulary by a
/// fixed pseudo-random sequence, so it compresses like text rather than like one repeated byte.
fn chat_body(size: usize) -> String {
    const WORDS: [&str; 32] = [
        "the", "meeting", "is", "moved", "to", "three", "tomorrow", "can", "you", "send", "deck",
        "please", "thanks", "sounds", "good", "I'll", "be", "late", "by", "ten", "minutes",
        "lunch", "after", "review", "ok", "shipping", "release", "notes", "draft", "link", "here",
        "again",
    ];
    let mut seed = 0x2545_f491_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    let mut items = Vec::new();
    let mut len = 0;
    while len + 100 < size {
        // Items of 180 to 240 bytes, each a chat message: one alone is a ~200-byte body.
        let target = size.min(180 + (next() % 60) as usize);
        let head = format!(
            r#"{{"id":"m{:08x}","user":"user-{}","ts":{},"reactions":[],"text":""#,
            next(),
            next() % 500,
            1_732_200_000_000u64 + u64::from(next() % 1_000_000),
        );
        let mut item = head;
        while item.len() + 2 < target {
            item.push_str(WORDS[(next() % 32) as usize]);
            item.push(' ');
        }
        item.push_str("\"}");
        len += item.len() + 1;
        items.push(item);
    }
    match items.len() {
        1 => items.pop().expect("one"),
        _ => format!(r#"{{"messages":[{}]}}"#, items.join(",")),
    }
}

fn deflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate");
    g.warm_up_time(std::time::Duration::from_secs(1));
    g.measurement_time(std::time::Duration::from_secs(3));
    for (size, label) in [(200, "200B"), (8 << 10, "8KB")] {
        let body = chat_body(size);
        let publish = format!(r#"{{"type":"publish","room":"bench","id":1,"body":{body}}}"#);
        for members in [1u64, 100] {
            for on in [false, true] {
                let (mut shard, conns, _inboxes) =
                    room(members, |c| if on { c.deflating(0) } else { c });
                let publisher = &conns[0];
                let sink = conns[1].memory().expect("in memory");
                let before = sink.bytes.get();
                message(&mut shard, publisher, &publish);
                shard.flush_dirty();
                let mode = if on { "deflate" } else { "plain" };
                eprintln!(
                    "deflate/{mode}_{label}: body {} B, {} B on the wire per delivery",
                    body.len(),
                    sink.bytes.get() - before
                );
                g.throughput(Throughput::Elements(members));
                let id = BenchmarkId::new(format!("{mode}_{label}"), members);
                g.bench_with_input(id, &members, |b, _| {
                    b.iter(|| {
                        message(&mut shard, publisher, &publish);
                        shard.flush_dirty();
                    })
                });
            }
        }
    }
    g.finish();
}

fn coalesce(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    // Drain the client side so the server's writes never block.
    std::thread::spawn(move || {
        let mut client = client;
        let mut buf = vec![0u8; 1 << 20];
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
    });
    let stream = tokio::net::TcpStream::from_std(server).unwrap();
    let limits = FrameLimits::of(&Config::default());
    let conn = Conn::new(
        ConnId::new(0, 0, 1),
        stream,
        &identity("bench"),
        &UNLIMITED,
        limits,
    );
    let frame = Rc::new(Bytes::from(vec![b'x'; 100]));

    let mut g = c.benchmark_group("coalesce");
    for k in [1u64, 8, 32] {
        g.throughput(Throughput::Elements(k));
        g.bench_with_input(BenchmarkId::new("one_write", k), &k, |b, &k| {
            b.iter(|| {
                for _ in 0..k {
                    conn.push(frame.clone());
                }
                drain(&rt, &conn);
            })
        });
        g.bench_with_input(BenchmarkId::new("write_per_frame", k), &k, |b, &k| {
            b.iter(|| {
                for _ in 0..k {
                    conn.push(frame.clone());
                    drain(&rt, &conn);
                }
            })
        });
    }
    g.finish();
}

/// Flushes until the queue is empty, waiting for the socket like a connection task would (a
/// refused write clears tokio's readiness until the reactor sees the socket writable again).
fn drain(rt: &tokio::runtime::Runtime, conn: &Conn) {
    conn.flush();
    while conn.has_unsent() {
        let tcp = conn.tcp().expect("a TCP connection");
        rt.block_on(tcp.writable()).expect("writable");
        conn.flush();
    }
}

criterion_group!(benches, fanout, deflate, coalesce);
criterion_main!(benches);
