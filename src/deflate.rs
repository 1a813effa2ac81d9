//! permessage-deflate (RFC 7692): the handshake's negotiation, outgoing frames compressed once
//! per shard however many members receive them, and compressed client messages inflated within
//! the message size limit.
//!
//! Owns the extension's bytes only. It must not read sockets or know rooms or JSON: `http`
//! asks it to negotiate, `conn` to compress what it queues and to inflate what it decodes.
//! Both directions use no context takeover, so every message stands alone: one compressed copy
//! serves every member, and a connection keeps no compression state (no 32 KiB window each).

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::ws;

/// The response to an accepted offer. `client_no_context_takeover` is sent whatever the offer
/// said (RFC 7692 7.1.1.2 lets the server), so client messages can be inflated without keeping
/// a window per connection.
const ACCEPT: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The same, for an offer that named `server_max_window_bits=15`: an accepted parameter is
/// echoed (7.1.2.1).
const ACCEPT_15: &str = "permessage-deflate; server_no_context_takeover; \
                         client_no_context_takeover; server_max_window_bits=15";

/// Level 1: the cheapest, and the CPU is paid on the shard thread; chat JSON gains little from
/// higher levels (docs/performance.md).
const LEVEL: u32 = 1;
/// What a sync flush ends with; RFC 7692 strips it from each message and the reader adds it.
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// A frame and its compressed variant.
type Variant = (Rc<Bytes>, Rc<Bytes>);

thread_local! {
    static COMPRESS: RefCell<Compress> = RefCell::new(Compress::new(Compression::new(LEVEL), false));
    static INFLATE: RefCell<Decompress> = RefCell::new(Decompress::new(false));
    /// The last two frames compressed on this shard thread and their compressed variants: the
    /// hub hands one `Rc` to every member, so all but the first member find it here. Two, so a
    /// room with JSON and binary members (`wire::variant`) compresses each form once.
    static LAST: RefCell<[Option<Variant>; 2]> = const { RefCell::new([None, None]) };
}

/// The `Sec-WebSocket-Extensions` response to the client's offers (every value of the header),
/// or `None` if no offer is permessage-deflate with parameters this server supports. Offers
/// are tried in the client's order of preference (RFC 7692 5).
pub fn negotiate<'a>(headers: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    headers.flat_map(|h| h.split(',')).find_map(accept_offer)
}

/// One offer: `permessage-deflate` and `;`-separated parameters. An unknown, repeated or
/// malformed parameter declines the offer (RFC 7692 7.1). `server_max_window_bits` below 15 is
/// declined too: the compressor cannot bound its window.
fn accept_offer(offer: &str) -> Option<&'static str> {
    let mut parts = offer.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    let mut window_15 = false;
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        if seen.contains(&name) {
            return None;
        }
        seen.push(name);
        let bits = || {
            value
                .and_then(|v| v.parse::<u8>().ok())
                .filter(|b| (8..=15).contains(b))
        };
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(_)) => {
                bits()?;
            }
            ("server_max_window_bits", Some(_)) => {
                if bits()? != 15 {
                    return None;
                }
                window_15 = true;
            }
            _ => return None,
        }
    }
    Some(if window_15 { ACCEPT_15 } else { ACCEPT })
}

/// What a connection that negotiated compression is sent for `frame`: its compressed variant,
/// computed once per frame on this thread, or `frame` itself if nothing in it is at least `min`
/// payload bytes or compressing did not make it smaller.
pub fn variant(frame: &Rc<Bytes>, min: usize) -> Rc<Bytes> {
    if frame.len() < min || frame.first().is_some_and(|b| b & 0x08 != 0) {
        // Too short to hold a payload of `min` bytes, or a control frame (never compressed).
        return frame.clone();
    }
    LAST.with_borrow_mut(|last| {
        if let Some((_, packed)) = last.iter().flatten().find(|(p, _)| Rc::ptr_eq(p, frame)) {
            return packed.clone();
        }
        let packed = compress_frames(frame, min).map_or_else(|| frame.clone(), Rc::new);
        last.rotate_right(1);
        last[0] = Some((frame.clone(), packed.clone()));
        packed
    })
}

/// Compresses each data frame of `frames` (server frames back to back, as `ws` builds them)
/// whose payload is at least `min` bytes, setting RSV1; `None` if none got smaller.
pub fn compress_frames(frames: &[u8], min: usize) -> Option<Bytes> {
    let mut out = Vec::new();
    let mut any = false;
    let mut rest = frames;
    while let Some((b0, payload, next)) = ws::split_server_frame(rest) {
        let opcode = b0 & 0x0F;
        let data = b0 & 0x80 != 0 && matches!(opcode, ws::OP_TEXT | ws::OP_BINARY);
        let packed = (data && payload.len() >= min)
            .then(|| compress(payload))
            .filter(|c| c.len() < payload.len());
        match packed {
            Some(c) => {
                any = true;
                ws::push_frame(&mut out, opcode, true, &c);
            }
            None => out.extend_from_slice(&rest[..rest.len() - next.len()]),
        }
        rest = next;
    }
    (any && rest.is_empty()).then(|| Bytes::from(out))
}

/// One message's payload, deflated on its own (no context from earlier messages), without the
/// sync flush's 4-byte tail.
pub fn compress(payload: &[u8]) -> Vec<u8> {
    COMPRESS.with_borrow_mut(|c| {
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let used = c.total_in() as usize;
            if out.len() == out.capacity() {
                out.reserve(out.capacity());
            }
            c.compress_vec(&payload[used..], &mut out, FlushCompress::Sync)
                .expect("deflating into a growing buffer cannot fail");
            // Done once all input is in and the flush did not fill the buffer.
            if c.total_in() as usize == payload.len() && out.len() < out.capacity() {
                break;
            }
        }
        if out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        out
    })
}

/// Why a compressed client message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    #[error("inflated message is over the size limit")]
    TooBig,
    #[error("invalid deflate data")]
    Invalid,
}

/// Inflates one client message (its payload, fragments joined). Stops as soon as the output
/// passes `max` bytes, so a small message that inflates to gigabytes costs at most `max`.
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    INFLATE.with_borrow_mut(|d| {
        d.reset(false);
        let limit = max.saturating_add(1);
        let mut out = Vec::with_capacity(data.len().saturating_mul(3).max(64).min(limit));
        for input in [data, &TAIL[..]] {
            let mut pos = 0;
            loop {
                if out.len() == out.capacity() {
                    if out.len() >= limit {
                        return Err(InflateError::TooBig);
                    }
                    out.reserve_exact(out.len().max(64).min(limit - out.len()));
                }
                let (in_before, out_before) = (d.total_in(), out.len());
                let status = d
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync)
                    .map_err(|_| InflateError::Invalid)?;
                pos += (d.total_in() - in_before) as usize;
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                if status == Status::StreamEnd {
                    // A final block (BFINAL) ends the message; nothing may follow it.
                    return match pos == input.len() || input == TAIL {
                        true => Ok(out),
                        false => Err(InflateError::Invalid),
                    };
                }
                if pos == input.len() && out.len() < out.capacity() {
                    break;
                }
                if d.total_in() == in_before && out.len() == out_before {
                    // No progress with input left and room to write: not a deflate stream.
                    return Err(InflateError::Invalid);
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_supported_offers_only() {
        let one = |h: &str| negotiate(std::iter::once(h));
        assert_eq!(one("permessage-deflate"), Some(ACCEPT));
        // What browsers send.
        assert_eq!(
            one("permessage-deflate; client_max_window_bits"),
            Some(ACCEPT)
        );
        assert_eq!(
            one("permessage-deflate; client_no_context_takeover; client_max_window_bits=10"),
            Some(ACCEPT)
        );
        assert_eq!(
            one("permessage-deflate; server_max_window_bits=\"15\""),
            Some(ACCEPT_15)
        );
        for declined in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; unknown",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        ] {
            assert_eq!(one(declined), None, "{declined}");
        }
        // A declined offer falls back to the next one, across header lines too.
        let offers = ["permessage-deflate; server_max_window_bits=9, permessage-deflate"];
        assert_eq!(negotiate(offers.into_iter()), Some(ACCEPT));
        let lines = ["foo", "permessage-deflate; server_no_context_takeover"];
        assert_eq!(negotiate(lines.into_iter()), Some(ACCEPT));
    }

    #[test]
    fn the_rfc_example_inflates() {
        // RFC 7692 7.2.3.1: "Hello", compressed with the tail removed.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&hello, 100).unwrap(), b"Hello");
        assert_eq!(inflate(&hello, 4), Err(InflateError::TooBig));
        assert_eq!(
            inflate(&[0xff, 0xff, 0xff], 100),
            Err(InflateError::Invalid)
        );
        // The same with BFINAL set (7.2.3.3's first form is allowed too).
        let final_block = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(&final_block, 100).unwrap(), b"Hello");
    }

    #[test]
    fn frames_compress_once_and_small_ones_stay_plain() {
        let body = br#"{"type":"message","room":"lobby","body":"hello hello hello hello"}"#;
        let mut big = Vec::new();
        ws::push_frame(&mut big, ws::OP_TEXT, false, &body.repeat(20));
        let big = Rc::new(Bytes::from(big));
        let a = variant(&big, 64);
        assert!(!Rc::ptr_eq(&a, &big) && a.len() < big.len());
        assert_eq!(a[0], 0xC1, "FIN, RSV1, text");
        assert!(Rc::ptr_eq(&variant(&big, 64), &a), "computed once");
        let (_, payload, rest) = ws::split_server_frame(&a).unwrap();
        assert!(rest.is_empty());
        assert_eq!(inflate(payload, 1 << 20).unwrap(), body.repeat(20));
        // Under the threshold, and control frames, go out as they are.
        let small = Rc::new(ws::text_frames(std::iter::once(&body[..])));
        assert!(Rc::ptr_eq(&variant(&small, 1024), &small));
        let ping = Rc::new(ws::control_frame(ws::OP_PING, &[b'a'; 100]));
        assert!(Rc::ptr_eq(&variant(&ping, 0), &ping));
    }
}
