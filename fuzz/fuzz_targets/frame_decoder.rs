//! The inbound frame decoder (`conn::Decoder`), fed the way socket reads would feed it.
//!
//! Input: a byte choosing the read size, then the wire bytes. The oracle: decoding the same
//! bytes in one read and cut into reads must give the same messages and the same verdict, and
//! no message over the size limit may get through.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shardcast::conn::{Decoder, Event};
use shardcast::core::error::CloseCode;

/// A small limit, so the size checks and the skip path are reached by short inputs.
const MAX: usize = 128;

#[derive(Debug, PartialEq)]
enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    TooLarge,
    Close,
}

fn decode(wire: &[u8], step: usize) -> (Result<(), CloseCode>, Vec<Seen>) {
    let mut dec = Decoder::new(MAX, MAX as u64 * 16);
    let mut seen = Vec::new();
    for chunk in wire.chunks(step) {
        let r = dec.feed(&mut chunk.to_vec(), &mut |e| {
            seen.push(match e {
                Event::Text(t) => Seen::Text(t.to_owned()),
                Event::Binary(b) => Seen::Binary(b.to_vec()),
                Event::Ping(p) => {
                    assert!(p.len() <= 125, "a ping over 125 bytes got through");
                    Seen::Ping(p.to_vec())
                }
                Event::TooLarge => Seen::TooLarge,
                Event::Close => Seen::Close,
            })
        });
        if r.is_err() {
            return (r, seen);
        }
    }
    (Ok(()), seen)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, wire)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 16) + 1;
    let whole = decode(wire, wire.len().max(1));
    let cut = decode(wire, step);
    assert_eq!(whole, cut, "read size {step} changed the outcome");
    for seen in &whole.1 {
        let len = match seen {
            Seen::Text(t) => t.len(),
            Seen::Binary(b) => b.len(),
            _ => 0,
        };
        assert!(
            len <= MAX,
            "a {len}-byte message passed the {MAX}-byte limit"
        );
    }
});
