//! The frames a chat is made of (`message` and `ack`), written as a `ServerFrame` straight
//! from their fields: the fields are read at the places `protocol::encode` put them (no JSON
//! parser, no tree, no owned strings, no allocation) and written into the outgoing frame
//! itself, sized exactly. Any frame that is not in exactly that layout (edits, folded
//! pages, a key or id with escapes…) gives `None`, and `server` reads it the general way. The
//! bytes are prost's for the same frame (fields in tag order, defaults left out), which a unit
//! test checks.

use prost::encoding::encoded_len_varint;

use super::server::body_cross;
use super::{LEN, VARINT};
use crate::ws;

/// `ServerFrame`'s id arms and the frames written here (proto/shardcast.proto).
const NUM_ID: u32 = 1;
const STR_ID: u32 = 2;
const MESSAGE: u32 = 11;
const ACK: u32 = 16;

/// Appends `json` as a `ServerFrame` to `out` (as a binary WebSocket frame if `framed`), if it
/// is a `message` or an `ack` in `protocol::encode`'s layout; `false` (and `out` untouched)
/// otherwise. Cost: one pass over the field names and digits, no allocation but `out`'s (of
/// exactly the frame's size), the body copied once.
pub fn write(json: &[u8], out: &mut Vec<u8>, framed: bool) -> bool {
    let mut c = Cur(json);
    let frame = if c.lit(br#"{"type":"message","#) {
        message(c)
    } else if c.lit(br#"{"type":"ack","#) {
        ack(c)
    } else {
        None
    };
    let Some((id, tag, fields)) = frame else {
        return false;
    };
    let inner: usize = fields.iter().map(F::len).sum();
    let id = match id {
        None => F::Skip,
        Some(Id::Num(n)) => F::V(NUM_ID, n),
        Some(Id::Str(s)) => F::B(STR_ID, s),
    };
    let len = id.len()
        + encoded_len_varint(u64::from(tag << 3))
        + encoded_len_varint(inner as u64)
        + inner;
    // Exactly: a frame written into an empty buffer becomes a `Bytes` without a second
    // allocation (`Bytes::from` a `Vec` with spare room allocates its shared header).
    out.reserve_exact(len + if framed { ws::header_len(len) } else { 0 });
    if framed {
        ws::push_header(out, ws::OP_BINARY, len);
    }
    id.write(out);
    varint(u64::from(tag << 3 | LEN), out);
    varint(inner as u64, out);
    for f in &fields {
        f.write(out);
    }
    true
}

/// A frame's id, frame tag and fields (`F::Skip` where a field is absent).
type Frame<'a> = (Option<Id<'a>>, u32, [F<'a>; 8]);

/// `"room":R` or `"to":U,"from":F,"seq":N[,"key":K],"ts":T,"body":B}` (`encode::message`,
/// `encode::with_key`).
fn message(mut c: Cur<'_>) -> Option<Frame<'_>> {
    let (room, to) = c.target()?;
    let from = c.field(br#","from":"#)?.string()?;
    let seq = c.field(br#","seq":"#)?.num()?;
    let key = match c.lit(br#","key":"#) {
        true => F::Always(6, c.string()?),
        false => F::Skip,
    };
    let ts = c.field(br#","ts":"#)?.num()?;
    let body = c.field(br#","body":"#)?.0.strip_suffix(b"}")?;
    let (body, body_json) = body_cross(body);
    let body = match body {
        std::borrow::Cow::Borrowed(b) => b,
        // A `{"$b64":..}` body: rare, and its bytes must outlive this function.
        std::borrow::Cow::Owned(_) => return None,
    };
    let m = [
        F::B(1, room),
        F::B(2, to),
        F::B(3, from),
        F::V(4, seq),
        F::V(5, ts),
        key,
        F::B(7, body),
        F::V(8, u64::from(body_json)),
    ];
    Some((None, MESSAGE, m))
}

/// `["id":I,]"room":R` or `"to":U`, `[,"seq":N]}` (`encode::ack`).
fn ack(mut c: Cur<'_>) -> Option<Frame<'_>> {
    let id = match c.lit(br#""id":"#) {
        true => {
            let id = c.id()?;
            Some(c.lit(b",").then_some(id)?)
        }
        false => None,
    };
    let (room, to) = c.target()?;
    let seq = match c.lit(br#","seq":"#) {
        // `seq` is `optional`: written even when 0.
        true => F::VAlways(3, c.num()?),
        false => F::Skip,
    };
    if c.0 != b"}" {
        return None;
    }
    let a = [
        F::B(1, room),
        F::B(2, to),
        seq,
        F::Skip,
        F::Skip,
        F::Skip,
        F::Skip,
        F::Skip,
    ];
    Some((id, ACK, a))
}

enum Id<'a> {
    Num(u64),
    Str(&'a [u8]),
}

/// One protobuf field: bytes (a string or bytes field) or a varint, left out at its default as
/// prost does for a proto3 field without `optional`; the `Always` forms are `optional` fields,
/// written whenever present.
enum F<'a> {
    Skip,
    B(u32, &'a [u8]),
    Always(u32, &'a [u8]),
    V(u32, u64),
    VAlways(u32, u64),
}

impl F<'_> {
    fn len(&self) -> usize {
        match *self {
            F::Skip | F::V(_, 0) | F::B(_, []) => 0,
            F::B(tag, b) | F::Always(tag, b) => {
                encoded_len_varint(u64::from(tag << 3))
                    + encoded_len_varint(b.len() as u64)
                    + b.len()
            }
            F::V(tag, n) | F::VAlways(tag, n) => {
                encoded_len_varint(u64::from(tag << 3)) + encoded_len_varint(n)
            }
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        match *self {
            F::Skip | F::V(_, 0) | F::B(_, []) => {}
            F::B(tag, b) | F::Always(tag, b) => {
                varint(u64::from(tag << 3 | LEN), out);
                varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            F::V(tag, n) | F::VAlways(tag, n) => {
                varint(u64::from(tag << 3 | VARINT), out);
                varint(n, out);
            }
        }
    }
}

/// Appends `n` as a protobuf varint (into room `write` reserved: each push is a store).
fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// A reader of `protocol::encode`'s layout: literal field names, names and keys as strings
/// without escapes, numbers as plain digits.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn lit(&mut self, s: &[u8]) -> bool {
        match self.0.strip_prefix(s) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }
    fn field(&mut self, name: &[u8]) -> Option<&mut Self> {
        self.lit(name).then_some(self)
    }
    /// `"room":R` or `"to":U` as (room, to), the other one empty.
    fn target(&mut self) -> Option<(&'a [u8], &'a [u8])> {
        if self.lit(br#""room":"#) {
            Some((self.string()?, b""))
        } else if self.lit(br#""to":"#) {
            Some((b"", self.string()?))
        } else {
            None
        }
    }
    /// A JSON string of ASCII with no escapes in it (names, keys and most ids: anything else
    /// is read the general way), as its bytes: ASCII is UTF-8, so no check is needed.
    fn string(&mut self) -> Option<&'a [u8]> {
        let rest = self.0.strip_prefix(b"\"")?;
        let end = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b >= 0x80)?;
        if rest[end] != b'"' {
            return None;
        }
        self.0 = &rest[end + 1..];
        Some(&rest[..end])
    }
    /// A non-negative integer in plain digits (no leading zero) that fits a u64.
    fn num(&mut self) -> Option<u64> {
        let end = (self.0.iter())
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(self.0.len());
        let digits = &self.0[..end];
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        let mut n: u64 = 0;
        for &d in digits {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.0 = &self.0[end..];
        Some(n)
    }
    fn id(&mut self) -> Option<Id<'a>> {
        match self.0.first()? {
            b'"' => self.string().map(Id::Str),
            _ => self.num().map(Id::Num),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn varints_are_prosts() {
        let mut edges = vec![0, 1, u64::MAX];
        for bits in (7..64).step_by(7) {
            edges.extend([(1u64 << bits) - 1, 1 << bits]);
        }
        for n in edges {
            let (mut ours, mut prost) = (Vec::new(), Vec::new());
            super::varint(n, &mut ours);
            prost::encoding::encode_varint(n, &mut prost);
            assert_eq!(ours, prost, "{n}");
            // The length the frame's buffer is sized by.
            assert_eq!(prost::encoding::encoded_len_varint(n), ours.len(), "{n}");
        }
    }
}
