//! The client frames a chat is made of (`publish` and `send`), read in place: the strings and
//! the body borrowed from the frame, no allocation. Only the plain layout is read here: an
//! optional id, then the frame, each at most once, with no field but those of the schema
//! (room or to, body, key), each at most once. Anything else (a repeated or unknown field, a
//! string that is not UTF-8, a malformed varint) gives `None` and prost reads the frame, so
//! whatever is read here is exactly what prost would have read; a unit test and the fuzz
//! target `proto_decode` compare the two.

use prost::encoding::decode_varint;

use super::{LEN, VARINT};

/// `ClientFrame`'s fields read here (proto/shardcast.proto).
const NUM_ID: u64 = 1;
const STR_ID: u64 = 2;
const PUBLISH: u64 = 12;
const SEND: u64 = 13;

/// A request id as the frame carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id<'a> {
    Num(u64),
    Str(&'a str),
}

/// A `publish` (`target` is the room) or a `send` (`target` is the recipient).
#[derive(Debug)]
pub struct Chat<'a> {
    pub id: Option<Id<'a>>,
    pub send: bool,
    pub target: &'a str,
    pub body: &'a [u8],
    pub key: Option<&'a str>,
}

/// `bytes` as a plain `publish` or `send`, or `None`. Cost: one pass over the field keys.
pub fn read(bytes: &[u8]) -> Option<Chat<'_>> {
    let mut buf = bytes;
    let mut id = None;
    let mut frame = None;
    while !buf.is_empty() {
        match key(&mut buf)? {
            (NUM_ID, VARINT) if id.is_none() => id = Some(Id::Num(decode_varint(&mut buf).ok()?)),
            (STR_ID, LEN) if id.is_none() => id = Some(Id::Str(text(delimited(&mut buf)?)?)),
            (tag @ (PUBLISH | SEND), LEN) if frame.is_none() => {
                frame = Some((tag == SEND, delimited(&mut buf)?));
            }
            _ => return None,
        }
    }
    let (send, mut buf) = frame?;
    let (mut target, mut body, mut key_) = (None, None, None);
    while !buf.is_empty() {
        let (tag, wire) = key(&mut buf)?;
        let slot = match tag {
            1 => &mut target,
            2 => &mut body,
            3 => &mut key_,
            _ => return None,
        };
        if wire != LEN || slot.is_some() {
            return None;
        }
        *slot = Some(delimited(&mut buf)?);
    }
    Some(Chat {
        id,
        send,
        target: target.map_or(Some(""), text)?,
        body: body.unwrap_or_default(),
        key: match key_ {
            Some(k) => Some(text(k)?),
            None => None,
        },
    })
}

/// A field's key as (tag, wire type).
fn key(buf: &mut &[u8]) -> Option<(u64, u32)> {
    let key = decode_varint(buf).ok()?;
    Some((key >> 3, (key & 7) as u32))
}

/// A length-delimited field's bytes.
fn delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    let (field, rest) = buf.split_at_checked(len)?;
    *buf = rest;
    Some(field)
}

fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}
