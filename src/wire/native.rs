//! The frames a chat is made of (`message` and `ack`), written as a `ServerFrame` straight
//! from their fields: the fields are read at the places `protocol::encode` put them (no JSON
//! parser, no tree, no owned strings) and written with prost's varint and key writers into
//! the outgoing frame itself. Any frame that is not in exactly that layout (edits, folded
//! pages, a key or id with escapes…) gives `None`, and `server` reads it the general way. The
//! bytes are prost's for the same frame (fields in tag order, defaults left out), which a unit
//! test checks.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::server::body_cross;
use crate::ws;

/// `ServerFrame`'s id arms and the frames written here (proto/shardcast.proto).
const NUM_ID: u32 = 1;
const STR_ID: u32 = 2;
const MESSAGE: u32 = 11;
const ACK: u32 = 16;

/// Appends `json` as a `ServerFrame` to `out` (as a binary WebSocket frame if `framed`), if it
/// is a `message` or an `ack` in `protocol::encode`'s layout; `false` (and `out` untouched)
/// otherwise. Cost: one pass over the field names and digits, the body copied once.
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
        None => None,
        Some(Id::Num(n)) => Some(F::V(NUM_ID, n)),
        Some(Id::Str(s)) => Some(F::B(STR_ID, s.as_bytes())),
    };
    let len =
        id.as_ref().map_or(0, F::len) + key_len(tag) + encoded_len_varint(inner as u64) + inner;
    out.reserve(len + 10);
    if framed {
        ws::push_header(out, ws::OP_BINARY, len);
    }
    if let Some(id) = id {
        id.write(out);
    }
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(inner as u64, out);
    for f in &fields {
        f.write(out);
    }
    true
}

/// A frame's id, frame tag and fields.
type Frame<'a> = (Option<Id<'a>>, u32, Vec<F<'a>>);

/// `"room":R` or `"to":U,"from":F,"seq":N[,"key":K],"ts":T,"body":B}` (`encode::message`,
/// `encode::with_key`).
fn message(mut c: Cur<'_>) -> Option<Frame<'_>> {
    let (room, to) = c.target()?;
    let from = c.field(br#","from":"#)?.string()?;
    let seq = c.field(br#","seq":"#)?.num()?;
    let key = match c.lit(br#","key":"#) {
        true => Some(c.string()?),
        false => None,
    };
    let ts = c.field(br#","ts":"#)?.num()?;
    let body = c.field(br#","body":"#)?.0.strip_suffix(b"}")?;
    let (body, body_json) = body_cross(body);
    let body = match body {
        std::borrow::Cow::Borrowed(b) => b,
        // A `{"$b64":..}` body: rare, and its bytes must outlive this function.
        std::borrow::Cow::Owned(_) => return None,
    };
    let mut m = Vec::with_capacity(8);
    m.extend([F::B(1, room.as_bytes()), F::B(2, to.as_bytes())]);
    m.extend([F::B(3, from.as_bytes()), F::V(4, seq), F::V(5, ts)]);
    m.extend(key.map(|k| F::Always(6, k.as_bytes())));
    m.extend([F::B(7, body), F::V(8, u64::from(body_json))]);
    m.retain(|f| !f.is_default());
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
        true => Some(c.num()?),
        false => None,
    };
    if c.0 != b"}" {
        return None;
    }
    let mut a = vec![F::B(1, room.as_bytes()), F::B(2, to.as_bytes())];
    a.retain(|f| !f.is_default());
    // `seq` is `optional`: written even when 0.
    a.extend(seq.map(|s| F::V(3, s)));
    Some((id, ACK, a))
}

enum Id<'a> {
    Num(u64),
    Str(&'a str),
}

/// One protobuf field: bytes (a string or bytes field), bytes written even when empty (an
/// `optional` field), or a varint.
enum F<'a> {
    B(u32, &'a [u8]),
    Always(u32, &'a [u8]),
    V(u32, u64),
}

impl F<'_> {
    /// A proto3 field without `optional` at its default, which prost leaves out.
    fn is_default(&self) -> bool {
        match self {
            F::B(_, b) => b.is_empty(),
            F::Always(..) => false,
            F::V(_, n) => *n == 0,
        }
    }
    fn len(&self) -> usize {
        match self {
            F::B(tag, b) | F::Always(tag, b) => {
                key_len(*tag) + encoded_len_varint(b.len() as u64) + b.len()
            }
            F::V(tag, n) => key_len(*tag) + encoded_len_varint(*n),
        }
    }
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            F::B(tag, b) | F::Always(tag, b) => {
                encode_key(*tag, WireType::LengthDelimited, out);
                encode_varint(b.len() as u64, out);
                out.extend_from_slice(b);
            }
            F::V(tag, n) => {
                encode_key(*tag, WireType::Varint, out);
                encode_varint(*n, out);
            }
        }
    }
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
    fn target(&mut self) -> Option<(&'a str, &'a str)> {
        if self.lit(br#""room":"#) {
            Some((self.string()?, ""))
        } else if self.lit(br#""to":"#) {
            Some(("", self.string()?))
        } else {
            None
        }
    }
    /// A JSON string with no escapes in it.
    fn string(&mut self) -> Option<&'a str> {
        let rest = self.0.strip_prefix(b"\"")?;
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        if rest[end] != b'"' {
            return None;
        }
        self.0 = &rest[end + 1..];
        std::str::from_utf8(&rest[..end]).ok()
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
