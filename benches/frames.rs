//! Hot-path micro-benchmarks: encoding a room-message frame once, and parsing a client publish.
//! Run with `cargo bench --bench frames`. The load-test issue adds the fan-out and coalescing
//! benches and the simd-json comparison.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shardcast::protocol::encode::{self, Target};
use shardcast::protocol::{Name, parse};
use std::hint::black_box;

fn frames(c: &mut Criterion) {
    let room = Name::new("room-42").unwrap();
    let from = Name::new("user-1234").unwrap();
    let body = br#"{"text":"hello everyone, this is a 64-byte-ish chat message body"}"#;
    let mut g = c.benchmark_group("frames");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_room_message", |b| {
        b.iter(|| {
            encode::message(
                Target::Room(black_box(&room)),
                &from,
                black_box(123_456),
                1_732_200_000_000,
                black_box(body),
            )
        })
    });
    let publish = r#"{"type":"publish","room":"room-42","id":17,"body":{"text":"hello everyone, this is a 64-byte-ish chat message body"}}"#;
    g.bench_function("parse_publish", |b| {
        b.iter(|| parse(black_box(publish)).map(|r| r.id.is_some()))
    });
    g.finish();
}

criterion_group!(benches, frames);
criterion_main!(benches);
