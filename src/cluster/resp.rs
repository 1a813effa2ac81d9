//! A RESP2 reader and command writer for the subscription connection we read ourselves
//! (`pubsub`): replies are found in one read buffer and a message's channel and payload are
//! slices of it (`Bytes`, no copy, no generic value tree). Pure: owns the format only; it must
//! not touch sockets, Redis state or the engine.
//!
//! Cost: a complete frame is scanned once to find its end (its bulk strings are skipped by
//! length, not read), then its first elements are read again to tell what it is; a message
//! costs two reference-count increments and no allocation.

use bytes::{BufMut, Bytes, BytesMut};

/// The longest bulk string accepted: Redis's own `proto-max-bulk-len` default.
const MAX_BULK: usize = 512 << 20;
/// Elements claimed by one array at most; more is garbage, not a reply of ours.
const MAX_ELEMENTS: usize = 1 << 24;
/// The longest simple line (`+`, `-`, `:` and headers): past it without CRLF is garbage.
const MAX_LINE: usize = 64 << 10;
/// Spare room kept in the buffer before a read: about one busy read of messages.
const READ_SIZE: usize = 64 << 10;

/// What one reply on a subscribed connection is.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `message` (`smessage`): a channel's message.
    Message { channel: Bytes, payload: Bytes },
    /// `subscribe` (`ssubscribe`): one channel's subscription confirmed.
    Subscribed { channel: Bytes },
    /// `unsubscribe` (`sunsubscribe`): one channel's (or, with none left, no channel's).
    Unsubscribed { channel: Option<Bytes> },
    /// An error reply (`-ERR ...`), without its `-`.
    Error(Bytes),
    /// Anything else: `+OK`, an integer, `pong`, a nested array.
    Other,
}

/// Bytes that are not RESP: the connection cannot be read further.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("byte {0:#04x} where a RESP type was due")]
    Type(u8),
    #[error("a malformed length or integer")]
    Number,
    #[error("a line without CRLF")]
    Line,
    #[error("a bulk string or array of {0} past the limit")]
    TooLong(i64),
}

/// One element's header and, for strings, where its bytes are.
#[derive(Debug)]
enum Elem {
    Bulk(usize, usize),
    Simple,
    Error(usize, usize),
    Int,
    Null,
    Array(usize),
}

/// Reads replies out of what the connection delivered.
#[derive(Default)]
pub struct Reader {
    buf: BytesMut,
}

impl Reader {
    /// The buffer to read into, with room for at least one more read.
    pub fn spare(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
            self.buf.reserve(READ_SIZE);
        }
        &mut self.buf
    }

    /// Takes the next complete reply, if the buffer holds one.
    pub fn next(&mut self) -> Result<Option<Reply>, RespError> {
        let Some(end) = frame_end(&self.buf)? else {
            return Ok(None);
        };
        Ok(Some(decode(self.buf.split_to(end).freeze())))
    }
}

/// Appends a command (an array of bulk strings) to `out`.
pub fn command(out: &mut BytesMut, args: &[&[u8]]) {
    out.put_u8(b'*');
    out.put_slice(args.len().to_string().as_bytes());
    out.put_slice(b"\r\n");
    for a in args {
        out.put_u8(b'$');
        out.put_slice(a.len().to_string().as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(a);
        out.put_slice(b"\r\n");
    }
}

/// Where the reply at the start of `buf` ends, if all of it is there. Nested arrays are
/// counted, not recursed into: a RESP value is prefix-encoded.
fn frame_end(buf: &[u8]) -> Result<Option<usize>, RespError> {
    let (mut pos, mut left) = (0usize, 1usize);
    while left > 0 {
        let Some((e, next)) = elem(buf, pos)? else {
            return Ok(None);
        };
        left -= 1;
        if let Elem::Array(n) = e {
            left = left.saturating_add(n);
        }
        pos = next;
    }
    Ok(Some(pos))
}

/// The element at `pos` and where the next begins; `None`: not all of it is in `buf` yet.
fn elem(buf: &[u8], pos: usize) -> Result<Option<(Elem, usize)>, RespError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let start = pos + 1;
    let Some(cr) = buf[start..].iter().position(|&b| b == b'\r') else {
        if buf.len() - start > MAX_LINE {
            return Err(RespError::Line);
        }
        return Ok(None);
    };
    let (line_end, next) = (start + cr, start + cr + 2);
    match buf.get(line_end + 1) {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(RespError::Line),
    }
    let line = &buf[start..line_end];
    Ok(Some(match kind {
        b'+' => (Elem::Simple, next),
        b'-' => (Elem::Error(start, line_end), next),
        b':' => {
            number(line)?;
            (Elem::Int, next)
        }
        b'$' => match number(line)? {
            -1 => (Elem::Null, next),
            n if n < 0 => return Err(RespError::Number),
            n if n as u64 > MAX_BULK as u64 => return Err(RespError::TooLong(n)),
            n => {
                let end = next + n as usize;
                match buf.get(end..end + 2) {
                    None => return Ok(None),
                    Some(b"\r\n") => (Elem::Bulk(next, end), end + 2),
                    Some(_) => return Err(RespError::Line),
                }
            }
        },
        // `>`: a RESP3 push is read as the array it is.
        b'*' | b'>' => match number(line)? {
            -1 => (Elem::Null, next),
            n if n < 0 => return Err(RespError::Number),
            n if n as u64 > MAX_ELEMENTS as u64 => return Err(RespError::TooLong(n)),
            n => (Elem::Array(n as usize), next),
        },
        b'_' => (Elem::Null, next),
        other => return Err(RespError::Type(other)),
    }))
}

/// A decimal integer, as RESP writes lengths and integers.
fn number(line: &[u8]) -> Result<i64, RespError> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::Number);
    }
    let n = digits
        .iter()
        .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
    Ok(if neg { -n } else { n })
}

/// What a complete frame is (`frame_end` found it whole, so every element is there).
fn decode(frame: Bytes) -> Reply {
    let at = |pos| elem(&frame, pos).ok().flatten();
    match at(0) {
        Some((Elem::Error(a, b), _)) => Reply::Error(frame.slice(a..b)),
        Some((Elem::Array(3), pos)) => {
            let Some((Elem::Bulk(a, b), pos)) = at(pos) else {
                return Reply::Other;
            };
            let kind = &frame[a..b];
            let Some((second, pos)) = at(pos) else {
                return Reply::Other;
            };
            let third = at(pos).map(|(e, _)| e);
            match (kind, second, third) {
                (b"message" | b"smessage", Elem::Bulk(c, d), Some(Elem::Bulk(e, f))) => {
                    Reply::Message {
                        channel: frame.slice(c..d),
                        payload: frame.slice(e..f),
                    }
                }
                (b"subscribe" | b"ssubscribe", Elem::Bulk(c, d), Some(Elem::Int)) => {
                    Reply::Subscribed {
                        channel: frame.slice(c..d),
                    }
                }
                (b"unsubscribe" | b"sunsubscribe", second, Some(Elem::Int)) => {
                    Reply::Unsubscribed {
                        channel: match second {
                            Elem::Bulk(c, d) => Some(frame.slice(c..d)),
                            _ => None,
                        },
                    }
                }
                _ => Reply::Other,
            }
        }
        _ => Reply::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Vec<u8> {
        let mut v = format!("${}\r\n", s.len()).into_bytes();
        v.extend_from_slice(s);
        v.extend_from_slice(b"\r\n");
        v
    }

    fn array(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", parts.len()).into_bytes();
        parts.iter().for_each(|p| v.extend_from_slice(p));
        v
    }

    fn message(channel: &[u8], payload: &[u8]) -> Vec<u8> {
        array(&[bulk(b"message"), bulk(channel), bulk(payload)])
    }

    /// Every reply in `input`, fed to a reader `step` bytes at a time.
    fn read_all(input: &[u8], step: usize) -> Result<Vec<Reply>, RespError> {
        let mut r = Reader::default();
        let mut out = Vec::new();
        for chunk in input.chunks(step.max(1)) {
            r.spare().extend_from_slice(chunk);
            while let Some(reply) = r.next()? {
                out.push(reply);
            }
        }
        assert!(r.buf.is_empty(), "bytes left over: {:?}", r.buf);
        Ok(out)
    }

    fn msg(channel: &str, payload: &[u8]) -> Reply {
        Reply::Message {
            channel: Bytes::copy_from_slice(channel.as_bytes()),
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// A mixed stream, as a subscribed connection sends it.
    fn stream() -> (Vec<u8>, Vec<Reply>) {
        let mut input = Vec::new();
        input.extend(array(&[
            bulk(b"subscribe"),
            bulk(b"sc:n:1"),
            b":1\r\n".to_vec(),
        ]));
        input.extend(message(b"sc:r:lobby", b"m 1 \n{\"a\":1}"));
        input.extend(b"-ERR unknown command\r\n");
        input.extend(message(b"sc:r:lobby", b""));
        input.extend(array(&[
            bulk(b"unsubscribe"),
            bulk(b"sc:r:x"),
            b":0\r\n".to_vec(),
        ]));
        input.extend(array(&[
            bulk(b"unsubscribe"),
            b"$-1\r\n".to_vec(),
            b":0\r\n".to_vec(),
        ]));
        input.extend(b"+OK\r\n");
        input.extend(array(&[bulk(b"pong"), bulk(b"")]));
        // A RESP3 push.
        input.extend(b">3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n");
        let expected = vec![
            Reply::Subscribed {
                channel: Bytes::from_static(b"sc:n:1"),
            },
            msg("sc:r:lobby", b"m 1 \n{\"a\":1}"),
            Reply::Error(Bytes::from_static(b"ERR unknown command")),
            msg("sc:r:lobby", b""),
            Reply::Unsubscribed {
                channel: Some(Bytes::from_static(b"sc:r:x")),
            },
            Reply::Unsubscribed { channel: None },
            Reply::Other,
            Reply::Other,
            msg("c", b"hi"),
        ];
        (input, expected)
    }

    #[test]
    fn replies_split_at_every_byte_boundary_read_the_same() {
        let (input, expected) = stream();
        for step in 1..=input.len() {
            assert_eq!(read_all(&input, step).unwrap(), expected, "step {step}");
        }
        // And every single split point of two reads.
        for at in 0..=input.len() {
            let mut r = Reader::default();
            let mut out = Vec::new();
            for part in [&input[..at], &input[at..]] {
                r.spare().extend_from_slice(part);
                while let Some(reply) = r.next().unwrap() {
                    out.push(reply);
                }
            }
            assert_eq!(out, expected, "split at {at}");
        }
    }

    #[test]
    fn payloads_are_binary_and_may_hold_crlf() {
        let payload = b"a\r\nb\r\n$3\r\n*1\r\n\0\xff";
        let input = message(b"ch", payload);
        assert_eq!(read_all(&input, 3).unwrap(), vec![msg("ch", payload)]);
    }

    #[test]
    fn large_bulk_strings_arrive_whole() {
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut input = message(b"big", &payload);
        input.extend(message(b"small", b"x"));
        for step in [1 << 10, 4096 + 7, 1 << 16, input.len()] {
            let got = read_all(&input, step).unwrap();
            assert_eq!(
                got,
                vec![msg("big", &payload), msg("small", b"x")],
                "{step}"
            );
        }
    }

    #[test]
    fn a_message_is_a_slice_of_the_read_buffer() {
        let mut r = Reader::default();
        r.spare().extend_from_slice(&message(b"ch", b"payload"));
        let base = r.buf.as_ptr() as usize;
        let Some(Reply::Message { payload, .. }) = r.next().unwrap() else {
            panic!("not a message");
        };
        let at = payload.as_ptr() as usize - base;
        assert_eq!(at, message(b"ch", b"").len() - 2, "the payload was copied");
    }

    #[test]
    fn nested_arrays_are_one_reply() {
        let inner = array(&[
            bulk(b"a"),
            array(&[b":1\r\n".to_vec(), b"*-1\r\n".to_vec()]),
        ]);
        let mut input = array(&[inner.clone(), bulk(b"b"), b"*0\r\n".to_vec()]);
        input.extend(message(b"ch", b"after"));
        for step in 1..=input.len() {
            let got = read_all(&input, step).unwrap();
            assert_eq!(got, vec![Reply::Other, msg("ch", b"after")], "step {step}");
        }
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        let cases: &[(&[u8], RespError)] = &[
            (b"hello\r\n", RespError::Type(b'h')),
            (b"$abc\r\n", RespError::Number),
            (b"$-5\r\n", RespError::Number),
            (b"$3\r\nabcde\r\n", RespError::Line),
            (b"*2\r\n:1\r\n?\r\n", RespError::Type(b'?')),
            (b"+OK\rX", RespError::Line),
            (b"$99999999999\r\n", RespError::TooLong(99_999_999_999)),
            (b"*99999999999\r\n", RespError::TooLong(99_999_999_999)),
            (b":1234567890123456789012\r\n", RespError::Number),
            (b":\r\n", RespError::Number),
        ];
        for (input, err) in cases {
            let mut r = Reader::default();
            r.spare().extend_from_slice(input);
            assert_eq!(
                r.next().as_ref(),
                Err(err),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // A line that never ends.
        let mut r = Reader::default();
        r.spare().extend_from_slice(&[b'+'; MAX_LINE + 2]);
        assert_eq!(r.next(), Err(RespError::Line));
        // Arbitrary bytes: each prefix of a pseudo-random stream reads or errs, never panics.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"*$:+-\r\n0123-9>_ab";
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                alphabet[(x % alphabet.len() as u64) as usize]
            })
            .collect();
        for step in [1, 2, 5, 64] {
            let mut r = Reader::default();
            'read: for chunk in noise.chunks(step) {
                r.spare().extend_from_slice(chunk);
                loop {
                    match r.next() {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'read,
                    }
                }
            }
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        command(&mut out, &[b"SUBSCRIBE", b"sc:r:a b"]);
        command(&mut out, &[b"PING"]);
        assert_eq!(
            &out[..],
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$8\r\nsc:r:a b\r\n*1\r\n$4\r\nPING\r\n"
        );
    }
}
