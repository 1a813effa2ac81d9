//! The fan-out path and write coalescing, through the real shard code.
//!
//! - `fanout/N`: one publish, handled by a shard that is the room's home, delivered to N
//!   in-memory members, then flushed (one write per member). Parse, route, sequence, encode once,
//!   queue N times, N writes. Throughput is per delivery.
//! - `coalesce/K`: K frames queued on a real loopback TCP connection, then written, either as
//!   one `flush` (one sendmsg) or as K flushes of one frame (K syscalls).
//!
//! Run with `cargo bench --bench fanout`.

use std::io::Read;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shardcast::auth::Identity;
use shardcast::config::{Config, Durability};
use shardcast::conn::{Conn, Event, MemorySink};
use shardcast::msg::ConnId;
use shardcast::persist::Persist;
use shardcast::protocol::Name;
use shardcast::router::Router;
use shardcast::shard::Shard;

fn identity(user: &str) -> Identity {
    Identity {
        user: Name::new(user).unwrap(),
        rooms: None,
        exp: None,
    }
}

fn message(shard: &mut Shard, conn: &Rc<Conn>, json: &str) {
    shard.on_event(conn, Event::Text(json));
}

fn fanout(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    for members in [10u64, 100, 1000] {
        let (router, _inboxes) = Router::new(1);
        let config = Config {
            presence_events: false,
            publish_rate: u32::MAX,
            publish_burst: u32::MAX,
            // The shard path alone: the store's cost is measured by the loadtest.
            durability: Durability::Memory,
            ..Config::default()
        };
        let mut shard = Shard::new(
            0,
            router,
            Arc::new(config),
            Persist::discarding(),
            Vec::new(),
            shardcast::auth::Authenticator::new(&Config::default()).expect("dev mode"),
            None,
        );
        let conns: Vec<_> = (0..=members)
            .map(|i| {
                let id = identity(&format!("u{i}"));
                let (tx, _rx) = tokio::sync::oneshot::channel();
                let conn_id = shard.register(id.user.clone(), tx);
                let conn = Rc::new(Conn::in_memory(
                    conn_id,
                    MemorySink::default(),
                    &id,
                    u32::MAX,
                ));
                shard.attach(&conn, &id, 0);
                message(&mut shard, &conn, r#"{"type":"join","room":"bench"}"#);
                conn
            })
            .collect();
        shard.flush_dirty();
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
    let conn = Conn::new(ConnId::new(0, 0, 1), stream, &identity("bench"), 1);
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

criterion_group!(benches, fanout, coalesce);
criterion_main!(benches);
