//! Property tests of the frame layer: client frames encoded here (masked, fragmented, with
//! control frames between fragments) decode to the same messages however the bytes are cut
//! into reads: at every single split point, and at random chunkings. Server frames built by
//! `ws::FrameBuf` carry their payload back out.

mod common;

use common::client_frame;
use proptest::prelude::*;
use shardcast::conn::{Decoder, Event};
use shardcast::core::error::CloseCode;
use shardcast::ws::{self, FrameBuf};

/// One client message as sent: text or binary, cut into fragments, with a ping after some.
#[derive(Clone, Debug)]
struct Message {
    binary: bool,
    data: Vec<u8>,
    /// Fragment lengths (the last fragment takes the rest).
    cuts: Vec<usize>,
    /// A ping payload sent after the first fragment, if any.
    ping: Option<Vec<u8>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    TooLarge,
    Close,
}

fn encode(m: &Message) -> Vec<u8> {
    let mut pieces = Vec::new();
    let mut rest = &m.data[..];
    for &cut in &m.cuts {
        let (piece, tail) = rest.split_at(cut.min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces.push(rest);
    let mut wire = Vec::new();
    let last = pieces.len() - 1;
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = match (i, m.binary) {
            (0, true) => ws::OP_BINARY,
            (0, false) => ws::OP_TEXT,
            _ => ws::OP_CONTINUATION,
        };
        wire.extend(client_frame(u8::from(i == last) << 7 | opcode, piece));
        if i == 0
            && let Some(p) = &m.ping
        {
            wire.extend(client_frame(0x80 | ws::OP_PING, p));
        }
    }
    wire
}

fn expected(messages: &[Message]) -> Vec<Seen> {
    let mut out = Vec::new();
    for m in messages {
        if let Some(p) = &m.ping {
            out.push(Seen::Ping(p.clone()));
        }
        out.push(match m.binary {
            true => Seen::Binary(m.data.clone()),
            false => Seen::Text(String::from_utf8(m.data.clone()).unwrap()),
        });
    }
    out.push(Seen::Close);
    out
}

/// Feeds `wire` to a fresh decoder in reads cut at `cuts` (sorted offsets).
fn decode(wire: &[u8], cuts: &[usize], max: usize) -> (Result<(), CloseCode>, Vec<Seen>, usize) {
    let mut dec = Decoder::new(max, max as u64 * 16);
    let mut seen = Vec::new();
    let mut start = 0;
    let mut result = Ok(());
    for &end in cuts.iter().chain([&wire.len()]) {
        let mut chunk = wire[start..end].to_vec();
        start = end;
        result = dec.feed(&mut chunk, &mut |e| {
            seen.push(match e {
                Event::Text(t) => Seen::Text(t.to_owned()),
                Event::Binary(b) => Seen::Binary(b.to_vec()),
                Event::Ping(p) => Seen::Ping(p.to_vec()),
                Event::TooLarge => Seen::TooLarge,
                Event::Close => Seen::Close,
            })
        });
        if result.is_err() {
            break;
        }
    }
    (result, seen, dec.held())
}

fn message() -> impl Strategy<Value = Message> {
    let text = any::<String>().prop_map(|s| (false, s.into_bytes()));
    let binary = proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (true, b));
    (
        prop_oneof![text, binary],
        proptest::collection::vec(0usize..40, 0..4),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..=125)),
    )
        .prop_map(|((binary, data), cuts, ping)| Message {
            binary,
            data,
            ping: ping.filter(|_| !cuts.is_empty()),
            cuts,
        })
}

fn messages_and_wire() -> impl Strategy<Value = (Vec<Message>, Vec<u8>)> {
    proptest::collection::vec(message(), 1..5).prop_map(|messages| {
        let mut wire: Vec<u8> = messages.iter().flat_map(encode).collect();
        wire.extend(client_frame(0x80 | ws::OP_CLOSE, &1000u16.to_be_bytes()));
        (messages, wire)
    })
}

proptest! {
    // Each case decodes its wire once per byte: fewer cases keep this test a few seconds long.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn decodes_the_same_at_every_split_point((messages, wire) in messages_and_wire()) {
        let want = expected(&messages);
        for split in 0..=wire.len() {
            let (result, seen, held) = decode(&wire, &[split], 1 << 20);
            prop_assert_eq!(result, Ok(()));
            prop_assert_eq!(&seen, &want, "split at {}", split);
            prop_assert_eq!(held, 0, "nothing held after the close (split at {})", split);
        }
    }

    #[test]
    fn decodes_the_same_for_any_chunking(
        (messages, wire) in messages_and_wire(),
        mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut cuts: Vec<usize> = cuts.drain(..).map(|i| i.index(wire.len() + 1)).collect();
        cuts.sort_unstable();
        let (result, seen, _) = decode(&wire, &cuts, 1 << 20);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(seen, expected(&messages));
    }

    /// Whole unfragmented frames leave nothing held, however many arrive in one read.
    #[test]
    fn whole_frames_hold_no_buffer(payloads in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..70_000), 1..4)
    ) {
        let wire: Vec<u8> = payloads
            .iter()
            .flat_map(|p| client_frame(0x80 | ws::OP_BINARY, p))
            .collect();
        let (result, seen, held) = decode(&wire, &[], 1 << 20);
        prop_assert_eq!(result, Ok(()));
        prop_assert_eq!(seen.len(), payloads.len());
        prop_assert_eq!(held, 0);
    }

    /// Arbitrary bytes never panic the decoder, whatever the cuts; a refusal is a close code.
    #[test]
    fn arbitrary_bytes_never_panic(
        wire in proptest::collection::vec(any::<u8>(), 0..512),
        split in any::<prop::sample::Index>(),
    ) {
        let split = split.index(wire.len() + 1);
        let (result, _, _) = decode(&wire, &[split], 256);
        if let Err(code) = result {
            prop_assert!(matches!(
                code,
                CloseCode::ProtocolError | CloseCode::InvalidPayload | CloseCode::TooBig
            ));
        }
    }

    /// A server frame's payload comes back out, for every length encoding.
    #[test]
    fn server_frames_round_trip(len in prop_oneof![0usize..130, 65_530usize..65_540], opcode in
        prop_oneof![Just(ws::OP_TEXT), Just(ws::OP_BINARY)])
    {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mut f = FrameBuf::with_capacity(len);
        f.push(&payload);
        let frame = f.finish(opcode);
        prop_assert_eq!(frame[0], 0x80 | opcode);
        prop_assert_eq!(&ws::payload_of(&frame)[..], &payload[..]);
    }
}
