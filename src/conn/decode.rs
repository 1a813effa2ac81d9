//! The RFC 6455 decoder for client frames: masking, fragments, control frames, UTF-8 of text,
//! close payloads, size limits and, once permessage-deflate is negotiated, compressed messages.
//!
//! Owns the inbound frame state that must survive between reads (empty for an idle connection).
//! It must not read the socket (the connection does, into the shard thread's shared buffer) or
//! interpret messages (they go to the shard through a callback).

use crate::core::error::CloseCode;
use crate::ws::{self, Header};

use super::Event;

/// Inbound frame state that must survive between reads. Empty for an idle connection.
/// Public for the fuzz targets and property tests, which feed it the way reads would.
/// No `Default`: a decoder exists only with its limits (one with 0 refused every frame).
pub struct Decoder {
    /// Bytes of a frame cut by the end of a read.
    partial: Vec<u8>,
    /// Payload bytes of a discarded (too large) frame still to skip.
    skip: u64,
    /// A fragmented message being assembled.
    /// Boxed: rare, and an idle connection's `Conn` is kept small.
    frag: Option<Box<Fragments>>,
    /// A close frame was received; ignore whatever follows.
    pub(super) closed: bool,
    /// Framing was refused (1002, 1007, 1009); whatever follows is dropped, not decoded.
    pub(super) failed: bool,
    max_message: usize,
    hard_limit: u64,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    pub(super) inflate: bool,
}

struct Fragments {
    binary: bool,
    /// RSV1 was on the first fragment: `data` is deflate data, inflated and checked at the end.
    compressed: bool,
    data: Vec<u8>,
    /// Bytes of `data` known to be valid UTF-8 (text only): each fragment is checked as it
    /// arrives, so invalid text fails fast, and a character cut between fragments is checked
    /// once the next one completes it.
    checked: usize,
    /// Over the size limit: the remaining fragments are skipped.
    discard: bool,
}

impl Fragments {
    /// Checks the text received since the last check; `fin` says no more is coming.
    fn check_utf8(&mut self, fin: bool) -> Result<(), CloseCode> {
        if self.binary || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            // Cut at the end, not wrong (yet): the next fragment must complete it.
            Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
            Err(_) => return Err(CloseCode::InvalidPayload),
        }
        Ok(())
    }
}

/// Close codes a client may send (RFC 6455 section 7.4 and the IANA registry): 1004-1006 and
/// 1015 are reserved for reporting and must never be on the wire.
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Checks a client close frame's payload: empty, or a valid code and a UTF-8 reason.
fn check_close(payload: &[u8]) -> Result<(), CloseCode> {
    match payload {
        [] => Ok(()),
        [_] => Err(CloseCode::ProtocolError),
        [hi, lo, reason @ ..] => {
            if !valid_close_code(u16::from_be_bytes([*hi, *lo])) {
                return Err(CloseCode::ProtocolError);
            }
            std::str::from_utf8(reason).map_err(|_| CloseCode::InvalidPayload)?;
            Ok(())
        }
    }
}

impl Decoder {
    pub fn new(max_message: usize, hard_limit: u64) -> Decoder {
        Decoder {
            partial: Vec::new(),
            skip: 0,
            frag: None,
            closed: false,
            failed: false,
            max_message,
            hard_limit,
            inflate: false,
        }
    }

    /// Decodes one read's bytes, `chunk`. Whole frames are decoded in place, in `chunk`; only
    /// a frame cut by the end of the read is copied, into `partial`. After a close frame or a
    /// refusal, input is ignored.
    pub fn feed(
        &mut self,
        chunk: &mut [u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), CloseCode> {
        if self.closed || self.failed {
            return Ok(());
        }
        self.guard(|dec| {
            if dec.partial.is_empty() {
                // The common case: whole frames, decoded in the shared buffer.
                let used = dec.decode(chunk, on)?;
                dec.partial.extend_from_slice(&chunk[used..]);
                Ok(())
            } else {
                let mut partial = std::mem::take(&mut dec.partial);
                partial.extend_from_slice(chunk);
                dec.decode_owned(partial, on)
            }
        })
    }

    /// The same decoder, for a connection that negotiated permessage-deflate.
    pub fn inflating(mut self) -> Decoder {
        self.inflate = true;
        self
    }

    /// Bytes of memory held between reads: zero when no frame or message is cut.
    pub fn held(&self) -> usize {
        self.partial.capacity() + self.frag.as_ref().map_or(0, |f| f.data.capacity())
    }

    /// Runs `f` and remembers a refusal, so nothing after it is decoded.
    pub(super) fn guard<R>(
        &mut self,
        f: impl FnOnce(&mut Decoder) -> Result<R, CloseCode>,
    ) -> Result<R, CloseCode> {
        let r = f(self);
        if r.is_err() {
            self.failed = true;
            self.partial = Vec::new();
            self.frag = None;
        }
        r
    }

    /// Decodes complete frames from `buf`, returning how many bytes were used.
    fn decode(
        &mut self,
        buf: &mut [u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<usize, CloseCode> {
        let mut pos = 0;
        while !self.closed {
            if self.skip > 0 {
                let n = self.skip.min((buf.len() - pos) as u64);
                pos += n as usize;
                self.skip -= n;
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            let h = match ws::parse_header_with(&buf[pos..], self.inflate) {
                Ok(Some(h)) if h.rsv1 && h.opcode == ws::OP_CONTINUATION => {
                    // RSV1 belongs on a message's first frame only (RFC 7692 6.1).
                    return Err(CloseCode::ProtocolError);
                }
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => return Err(CloseCode::ProtocolError),
            };
            if h.payload_len > self.hard_limit {
                return Err(CloseCode::TooBig);
            }
            if !h.is_control() && self.oversized(&h, on)? {
                // Skip this frame's payload, whether or not it has all arrived.
                let avail = (buf.len() - pos - h.header_len) as u64;
                let n = avail.min(h.payload_len);
                pos += h.header_len + n as usize;
                self.skip = h.payload_len - n;
                continue;
            }
            let total = h.header_len + h.payload_len as usize;
            if buf.len() - pos < total {
                break;
            }
            let payload = &mut buf[pos + h.header_len..pos + total];
            ws::unmask(payload, h.mask);
            pos += total;
            self.dispatch(&h, payload, on)?;
        }
        Ok(pos)
    }

    /// Decodes `buf` and keeps what is left of a cut frame as `partial`; an empty remainder
    /// keeps no allocation.
    pub(super) fn decode_owned(
        &mut self,
        mut buf: Vec<u8>,
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), CloseCode> {
        let used = self.decode(&mut buf, on)?;
        buf.drain(..used);
        if !buf.is_empty() {
            self.partial = buf;
        }
        Ok(())
    }

    /// Checks a data frame against fragmentation rules and the size limit. `true` means the
    /// frame is to be skipped.
    fn oversized(&mut self, h: &Header, on: &mut dyn FnMut(Event<'_>)) -> Result<bool, CloseCode> {
        let so_far = match (&self.frag, h.opcode) {
            (None, ws::OP_CONTINUATION) | (Some(_), ws::OP_TEXT | ws::OP_BINARY) => {
                return Err(CloseCode::ProtocolError);
            }
            (Some(f), _) if f.discard => {
                if h.fin {
                    self.frag = None;
                }
                return Ok(true);
            }
            (Some(f), _) => f.data.len() as u64,
            (None, _) => 0,
        };
        if so_far + h.payload_len <= self.max_message as u64 {
            return Ok(false);
        }
        on(Event::TooLarge);
        self.frag = (!h.fin).then(|| {
            Box::new(Fragments {
                binary: false,
                compressed: false,
                data: Vec::new(),
                checked: 0,
                discard: true,
            })
        });
        Ok(true)
    }

    fn dispatch(
        &mut self,
        h: &Header,
        payload: &[u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), CloseCode> {
        match h.opcode {
            ws::OP_TEXT | ws::OP_BINARY if h.fin && h.rsv1 => {
                self.inflated(h.opcode == ws::OP_BINARY, payload, on)?
            }
            // The common case: a whole message in one frame, passed on without a copy.
            ws::OP_TEXT if h.fin => match std::str::from_utf8(payload) {
                Ok(text) => on(Event::Text(text)),
                Err(_) => return Err(CloseCode::InvalidPayload),
            },
            ws::OP_BINARY if h.fin => on(Event::Binary(payload)),
            ws::OP_TEXT | ws::OP_BINARY => {
                let mut frag = Box::new(Fragments {
                    binary: h.opcode == ws::OP_BINARY,
                    compressed: h.rsv1,
                    data: payload.to_vec(),
                    checked: 0,
                    discard: false,
                });
                frag.check_utf8(false)?;
                self.frag = Some(frag);
            }
            ws::OP_CONTINUATION => {
                let frag = self.frag.as_mut().expect("checked in oversized");
                frag.data.extend_from_slice(payload);
                frag.check_utf8(h.fin)?;
                if h.fin {
                    let frag = self.frag.take().expect("present");
                    if frag.compressed {
                        return self.inflated(frag.binary, &frag.data, on);
                    }
                    match frag.binary {
                        true => on(Event::Binary(&frag.data)),
                        // Checked fragment by fragment above; the second pass costs only
                        // fragmented messages, and keeps this free of `unsafe`.
                        false => on(Event::Text(
                            std::str::from_utf8(&frag.data)
                                .map_err(|_| CloseCode::InvalidPayload)?,
                        )),
                    }
                }
            }
            ws::OP_PING => on(Event::Ping(payload)),
            ws::OP_CLOSE => {
                check_close(payload)?;
                self.closed = true;
                on(Event::Close);
            }
            _ => {} // pong: the read itself counted as activity
        }
        Ok(())
    }

    /// Inflates a compressed message and passes it on. Over `max_message` once inflated (a zip
    /// bomb) closes with 1009 as soon as the limit is passed; invalid deflate data, like
    /// invalid UTF-8, with 1007.
    fn inflated(
        &mut self,
        binary: bool,
        data: &[u8],
        on: &mut dyn FnMut(Event<'_>),
    ) -> Result<(), CloseCode> {
        let message = crate::deflate::inflate(data, self.max_message).map_err(|e| match e {
            crate::deflate::InflateError::TooBig => CloseCode::TooBig,
            crate::deflate::InflateError::Invalid => CloseCode::InvalidPayload,
        })?;
        match binary {
            true => on(Event::Binary(&message)),
            false => on(Event::Text(
                std::str::from_utf8(&message).map_err(|_| CloseCode::InvalidPayload)?,
            )),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut v = vec![first];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    fn decoder(max: usize) -> Decoder {
        Decoder::new(max, max as u64 * 16)
    }

    fn run(dec: &mut Decoder, wire: &[u8], step: usize) -> Result<Vec<String>, CloseCode> {
        let mut seen = Vec::new();
        for chunk in wire.chunks(step) {
            dec.feed(&mut chunk.to_vec(), &mut |e| {
                seen.push(match e {
                    Event::Text(text) => format!("text:{text}"),
                    Event::Binary(b) => format!("bin:{}", String::from_utf8_lossy(b)),
                    Event::Ping(p) => format!("ping:{}", p.len()),
                    Event::TooLarge => "too_large".into(),
                    Event::Close => "close".into(),
                })
            })?;
        }
        Ok(seen)
    }

    #[test]
    fn decodes_across_any_split() {
        let mut wire = frame(0x81, b"hello");
        wire.extend(frame(0x01, b"frag"));
        wire.extend(frame(0x89, b"pp"));
        wire.extend(frame(0x80, b"ment"));
        wire.extend(frame(0x82, &[b'z'; 300]));
        wire.extend(frame(0x88, &[3, 232]));
        wire.extend(frame(0x81, b"after close"));
        for step in [1, 2, 3, 7, 64, 10_000] {
            let seen = run(&mut decoder(1024), &wire, step).unwrap();
            assert_eq!(
                seen,
                vec![
                    "text:hello".to_string(),
                    "ping:2".into(),
                    "text:fragment".into(),
                    format!("bin:{}", "z".repeat(300)),
                    "close".into(),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn oversized_messages_are_skipped_not_buffered() {
        let mut wire = frame(0x81, &[b'x'; 600]);
        wire.extend(frame(0x01, &[b'y'; 300]));
        wire.extend(frame(0x00, &[b'y'; 300]));
        wire.extend(frame(0x80, b"tail"));
        wire.extend(frame(0x81, b"ok"));
        for step in [1, 5, 100, 10_000] {
            let mut dec = decoder(500);
            let seen = run(&mut dec, &wire, step).unwrap();
            assert_eq!(seen, ["too_large", "too_large", "text:ok"], "step {step}");
            assert_eq!(dec.held(), 0);
        }
    }

    #[test]
    fn framing_violations_close_the_connection() {
        let unmasked = vec![0x81, 0x01, b'x'];
        assert_eq!(
            run(&mut decoder(100), &unmasked, 10),
            Err(CloseCode::ProtocolError)
        );
        let stray_continuation = frame(0x80, b"x");
        assert_eq!(
            run(&mut decoder(100), &stray_continuation, 10),
            Err(CloseCode::ProtocolError)
        );
        let huge = frame(0x81, &[0; 2000]);
        assert_eq!(run(&mut decoder(100), &huge, 10), Err(CloseCode::TooBig));
    }

    #[test]
    fn utf8_is_checked_per_fragment_and_across_cuts() {
        // "é" (c3 a9) split between two fragments is fine.
        let mut wire = frame(0x01, b"caf\xc3");
        wire.extend(frame(0x80, b"\xa9!"));
        for step in [1, 3, 100] {
            let seen = run(&mut decoder(100), &wire, step).unwrap();
            assert_eq!(seen, ["text:café!"], "step {step}");
        }
        // An invalid byte in the first fragment fails before the message ends.
        let bad_first = frame(0x01, b"ok\xff");
        assert_eq!(
            run(&mut decoder(100), &bad_first, 1),
            Err(CloseCode::InvalidPayload)
        );
        // A sequence still cut when the message ends is invalid.
        let mut cut = frame(0x01, b"x");
        cut.extend(frame(0x80, b"\xc3"));
        assert_eq!(
            run(&mut decoder(100), &cut, 2),
            Err(CloseCode::InvalidPayload)
        );
        // Binary is never checked.
        let seen = run(&mut decoder(100), &frame(0x82, b"\xff"), 1).unwrap();
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn close_frames_are_checked() {
        for (payload, want) in [
            (&b""[..], Ok(vec!["close".to_string()])),
            (&[0x03, 0xE8][..], Ok(vec!["close".to_string()])),
            (&[0x0F, 0xA0, b'o', b'k'][..], Ok(vec!["close".to_string()])), // 4000
            (&[0x03][..], Err(CloseCode::ProtocolError)),
            (&[0x03, 0xED][..], Err(CloseCode::ProtocolError)), // 1005
            (&[0x03, 0xE7][..], Err(CloseCode::ProtocolError)), // 999
            (&[0x13, 0x88][..], Err(CloseCode::ProtocolError)), // 5000
            (&[0x03, 0xE8, 0xff][..], Err(CloseCode::InvalidPayload)),
        ] {
            assert_eq!(
                run(&mut decoder(100), &frame(0x88, payload), 1),
                want,
                "{payload:?}"
            );
        }
    }
}
