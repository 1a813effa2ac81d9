//! Per-message costs on the hot path: encoding a room-message frame once, and parsing a client
//! publish. Parsing is measured three ways, because the protocol requires the `body` to pass
//! through byte for byte:
//! - `serde_json_rawvalue`: what shardcast does (serde_json, body borrowed as `&RawValue`);
//! - `simd_json_tape`: simd-json validating and indexing the frame (it must parse a mutable
//!   copy), without yet getting at the body's bytes;
//! - `simd_json_reencode`: simd-json to a borrowed value, then re-serializing the body, which
//!   is what pass-through would cost with simd-json (it has no raw-value support).
//!
//! Run with `cargo bench --bench frames`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shardcast::core::Name;
use shardcast::protocol::encode::{self, Target};
use shardcast::protocol::parse;
use std::hint::black_box;

const PUBLISH: &str = r#"{"type":"publish","room":"room-42","id":17,"body":{"text":"hello everyone, this is a 64-byte-ish chat message body"}}"#;

fn encode_frames(c: &mut Criterion) {
    let room = Name::new("room-42").unwrap();
    let from = Name::new("user-1234").unwrap();
    let body = br#"{"text":"hello everyone, this is a 64-byte-ish chat message body"}"#;
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("room_message", |b| {
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
    g.finish();
}

fn parse_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_publish");
    g.throughput(Throughput::Bytes(PUBLISH.len() as u64));
    g.bench_function("serde_json_rawvalue", |b| {
        b.iter(|| parse(black_box(PUBLISH)).map(|r| r.id.is_some()))
    });
    g.bench_function("simd_json_tape", |b| {
        b.iter(|| {
            let mut copy = black_box(PUBLISH).as_bytes().to_vec();
            simd_json::to_tape(&mut copy).map(|t| t.0.len())
        })
    });
    g.bench_function("simd_json_reencode", |b| {
        use simd_json::prelude::*;
        b.iter(|| {
            let mut copy = black_box(PUBLISH).as_bytes().to_vec();
            let v = simd_json::to_borrowed_value(&mut copy).unwrap();
            let body = v.get("body").map(|b| b.encode());
            (v.get_str("room").map(str::len), body)
        })
    });
    g.finish();
}

criterion_group!(benches, encode_frames, parse_frames);
criterion_main!(benches);
