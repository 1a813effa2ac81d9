//! Server frames, each encoded once into a complete WebSocket text frame (`Bytes`) that can be
//! written to any number of sockets as it is.
//!
//! Names need no escaping (their alphabet is JSON-safe) and bodies are spliced verbatim, so the
//! only escaping done here is for error messages.

use bytes::Bytes;

use crate::core::error::ReplyError;
use crate::core::event::{Event, EventKind};
use crate::core::rights::Rights;
use crate::core::{Name, ReqId};
use crate::ws::{FrameBuf, OP_TEXT};

/// Writes one JSON object into a frame buffer.
struct Json(FrameBuf);

impl Json {
    fn new(capacity: usize) -> Json {
        Json(FrameBuf::with_capacity(capacity))
    }
    fn raw(&mut self, s: &str) -> &mut Self {
        self.0.push(s.as_bytes());
        self
    }
    fn name(&mut self, n: &Name) -> &mut Self {
        self.raw("\"").raw(n).raw("\"")
    }
    fn u64(&mut self, n: u64) -> &mut Self {
        self.raw(itoa::Buffer::new().format(n))
    }
    /// `"id":X,` when the request had an id.
    fn id(&mut self, id: Option<&ReqId>) -> &mut Self {
        if let Some(id) = id {
            self.raw("\"id\":").raw(id.as_json()).raw(",");
        }
        self
    }
    fn escaped(&mut self, s: &str) -> &mut Self {
        self.raw("\"");
        let mut start = 0;
        for (i, c) in s.char_indices() {
            let esc = match c {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                c if (c as u32) < 0x20 => "?",
                _ => continue,
            };
            self.raw(&s[start..i]).raw(esc);
            start = i + c.len_utf8();
        }
        self.raw(&s[start..]).raw("\"")
    }
    fn finish(self) -> Bytes {
        self.0.finish(OP_TEXT)
    }
}

/// `{"type":"welcome","user":U,"rooms":[..],"heartbeat_ms":N,"inbox_seq":S}`
pub fn welcome(user: &Name, rooms: &[Name], heartbeat_ms: u64, inbox_seq: u64) -> Bytes {
    let mut j = Json::new(64 + user.len() + rooms.iter().map(|r| r.len() + 3).sum::<usize>());
    j.raw(r#"{"type":"welcome","user":"#)
        .name(user)
        .raw(r#","rooms":["#);
    for (i, room) in rooms.iter().enumerate() {
        if i > 0 {
            j.raw(",");
        }
        j.name(room);
    }
    j.raw(r#"],"heartbeat_ms":"#).u64(heartbeat_ms);
    j.raw(r#","inbox_seq":"#).u64(inbox_seq).raw("}");
    j.finish()
}

/// Where a message is addressed: a room, or a user's inbox.
#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Room(&'a Name),
    User(&'a Name),
}

/// `{"type":"message","room":R|"to":U,"from":F,"seq":N,"ts":T,"body":B}` with `body` spliced.
pub fn message(target: Target<'_>, from: &Name, seq: u64, ts: u64, body: &[u8]) -> Bytes {
    let mut j = Json::new(96 + from.len() + body.len());
    match target {
        Target::Room(room) => j.raw(r#"{"type":"message","room":"#).name(room),
        Target::User(to) => j.raw(r#"{"type":"message","to":"#).name(to),
    };
    j.raw(r#","from":"#).name(from);
    j.raw(r#","seq":"#).u64(seq).raw(r#","ts":"#).u64(ts);
    j.raw(r#","body":"#);
    j.0.push(body);
    j.raw("}");
    j.finish()
}

/// An edit, delete or reaction as its room's members get it: a `message` with `kind` and
/// `target` (and `hard` for an erasing delete, `emoji` for a reaction) before its body, which
/// is the new body of an edit and `null` otherwise:
/// `{"type":"message","room":R,"from":F,"seq":N,"ts":T,"kind":K,"target":S,...,"body":B}`.
pub fn event(room: &Name, from: &Name, seq: u64, ts: u64, event: &Event) -> Bytes {
    let body: &[u8] = match &event.kind {
        EventKind::Edit(body) => body,
        _ => b"null",
    };
    let mut j = Json::new(128 + from.len() + body.len());
    j.raw(r#"{"type":"message","room":"#).name(room);
    j.raw(r#","from":"#).name(from);
    j.raw(r#","seq":"#).u64(seq).raw(r#","ts":"#).u64(ts);
    j.raw(r#","kind":""#).raw(event.kind.as_str());
    j.raw(r#"","target":"#).u64(event.target);
    match &event.kind {
        EventKind::Delete { hard: true } => {
            j.raw(r#","hard":true"#);
        }
        EventKind::React(emoji) | EventKind::Unreact(emoji) => {
            j.raw(r#","emoji":"#).escaped(emoji);
        }
        _ => {}
    }
    j.raw(r#","body":"#);
    j.0.push(body);
    j.raw("}");
    j.finish()
}

/// `event`'s JSON in two parts, before and after the seq (see `message_parts`).
pub fn event_parts(room: &Name, from: &Name, ts: u64, ev: &Event) -> (Bytes, Bytes) {
    let full = crate::ws::payload_of(&event(room, from, 0, ts, ev));
    let at = seq_at(&full);
    (full.slice(..at), full.slice(at + 1..))
}

/// `{"type":"ack","id":I,"room":R,"noop":true}`: an edit, delete or reaction that changed
/// nothing (a repeated reaction), so no event was sequenced.
pub fn noop_ack(id: Option<&ReqId>, room: &Name) -> Bytes {
    let mut j = Json::new(96);
    j.raw(r#"{"type":"ack","#).id(id);
    j.raw(r#""room":"#).name(room).raw(r#","noop":true}"#);
    j.finish()
}

/// A folded `history` page: `page`'s fields, then `"fold":true,"before":B`, where `B` is the
/// `before` of the next page (the lowest seq the page read, events included).
pub fn fold_page<'a>(
    id: Option<&ReqId>,
    room: &Name,
    messages: impl Iterator<Item = &'a [u8]> + Clone,
    more: bool,
    next: u64,
) -> Bytes {
    let page = page(id, Some(room), messages, more);
    let json = crate::ws::payload_of(&page);
    let mut j = Json::new(json.len() + 32);
    j.0.push(&json[..json.len().saturating_sub(1)]);
    j.raw(r#","fold":true,"before":"#).u64(next).raw("}");
    j.finish()
}

/// A message's JSON (`message`'s payload) with `"key":K` after its seq, framed: the copy for
/// the sender's own other connections, so a device can match its own sends. `,"ts":` is the
/// first such field (names hold no quotes), so the body is never touched.
pub fn with_key(json: &[u8], key: &str) -> Bytes {
    let marker = br#","ts":"#;
    let at = (json.windows(marker.len()))
        .position(|w| w == marker)
        .unwrap_or(json.len().saturating_sub(1));
    let mut j = Json::new(json.len() + key.len() + 16);
    j.0.push(&json[..at]);
    j.raw(r#","key":"#).escaped(key);
    j.0.push(&json[at..]);
    j.finish()
}

/// `message`'s JSON in two parts, before and after the seq, for a sequencer that learns the
/// seq later (the Redis engine's publish script joins them around it).
pub fn message_parts(target: Target<'_>, from: &Name, ts: u64, body: &[u8]) -> (Bytes, Bytes) {
    let full = crate::ws::payload_of(&message(target, from, 0, ts, body));
    let at = seq_at(&full);
    (full.slice(..at), full.slice(at + 1..))
}

/// Where the `0` of `"seq":0` sits in a message's JSON (the first `"seq":`; names cannot
/// contain quotes, so it is the field itself).
fn seq_at(json: &[u8]) -> usize {
    let key = br#","seq":"#;
    json.windows(key.len())
        .position(|w| w == key)
        .map_or(0, |i| i + key.len())
}

/// A join ack with the room's `"epoch":E` added (cluster mode).
pub fn with_epoch(ack: &Bytes, epoch: u64) -> Bytes {
    let json = crate::ws::payload_of(ack);
    let mut j = Json::new(json.len() + 24);
    j.0.push(&json[..json.len().saturating_sub(1)]);
    j.raw(r#","epoch":"#).u64(epoch).raw("}");
    j.finish()
}

/// What a join's ack says of the room: its rule's modes, what this connection may do in it
/// (`rights`), and its member count when the engine knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    pub publish: &'static str,
    pub presence: &'static str,
    pub rights: Rights,
    pub members: Option<u64>,
}

/// `ack` with the room's fields appended: `"publish":P,"presence":M,"rights":[..]` and, when
/// known, `"members":N`.
pub fn with_room(ack: &Bytes, room: &RoomInfo) -> Bytes {
    let json = crate::ws::payload_of(ack);
    let mut j = Json::new(json.len() + 96);
    j.0.push(&json[..json.len().saturating_sub(1)]);
    j.raw(r#","publish":""#).raw(room.publish);
    j.raw(r#"","presence":""#).raw(room.presence);
    j.raw(r#"","rights":["#);
    for (i, right) in room.rights.names().enumerate() {
        j.raw(if i == 0 { "\"" } else { ",\"" })
            .raw(right)
            .raw("\"");
    }
    j.raw("]");
    if let Some(n) = room.members {
        j.raw(r#","members":"#).u64(n);
    }
    j.raw("}");
    j.finish()
}

/// `{"type":"occupancy","room":R,"members":N}`: how many members a `count` room has now.
pub fn occupancy(room: &Name, members: u64) -> Bytes {
    let mut j = Json::new(48 + room.len());
    j.raw(r#"{"type":"occupancy","room":"#).name(room);
    j.raw(r#","members":"#).u64(members).raw("}");
    j.finish()
}

/// `{"type":"presence","id":I,"room":R,"mode":M,"members":N}`: the answer of a room whose
/// presence is a count.
pub fn presence_count(id: Option<&ReqId>, room: &Name, mode: &str, members: u64) -> Bytes {
    let mut j = Json::new(96 + room.len());
    j.raw(r#"{"type":"presence","#).id(id);
    j.raw(r#""room":"#).name(room).raw(r#","mode":""#).raw(mode);
    j.raw(r#"","members":"#).u64(members).raw("}");
    j.finish()
}

/// `{"type":"message","from":F,"ts":T,"body":B}`: a broadcast to every connection.
pub fn broadcast(from: &Name, ts: u64, body: &[u8]) -> Bytes {
    let mut j = Json::new(64 + from.len() + body.len());
    j.raw(r#"{"type":"message","from":"#).name(from);
    j.raw(r#","ts":"#).u64(ts).raw(r#","body":"#);
    j.0.push(body);
    j.raw("}");
    j.finish()
}

/// `{"type":"joined","room":R,"user":U,"info":I}`: `membership`, with the user's presence
/// info (a JSON object, spliced in as the connect hook gave it) when it has one.
pub fn joined(room: &Name, user: &Name, info: Option<&Bytes>) -> Bytes {
    let Some(info) = info else {
        return membership(true, room, user);
    };
    let mut j = Json::new(56 + room.len() + user.len() + info.len());
    j.raw(r#"{"type":"joined","room":"#).name(room);
    j.raw(r#","user":"#).name(user).raw(r#","info":"#);
    j.0.push(info);
    j.raw("}");
    j.finish()
}

/// `{"type":"joined"|"left","room":R,"user":U}`
pub fn membership(joined: bool, room: &Name, user: &Name) -> Bytes {
    let mut j = Json::new(48 + room.len() + user.len());
    j.raw(if joined {
        r#"{"type":"joined","room":"#
    } else {
        r#"{"type":"left","room":"#
    });
    j.name(room).raw(r#","user":"#).name(user).raw("}");
    j.finish()
}

/// `{"type":"removed","room":R,"reason":M}`: the server took the connection out of room R.
pub fn removed(room: &Name, reason: &str) -> Bytes {
    let mut j = Json::new(48 + room.len() + reason.len());
    j.raw(r#"{"type":"removed","room":"#).name(room);
    j.raw(r#","reason":"#).escaped(reason).raw("}");
    j.finish()
}

/// `{"type":"ack","id":I,"room":R[,"seq":N]}` or, for a direct message, `..."to":U,"seq":N}`.
pub fn ack(id: Option<&ReqId>, target: Target<'_>, seq: Option<u64>) -> Bytes {
    let mut j = Json::new(128);
    j.raw(r#"{"type":"ack","#).id(id);
    match target {
        Target::Room(room) => j.raw(r#""room":"#).name(room),
        Target::User(to) => j.raw(r#""to":"#).name(to),
    };
    if let Some(seq) = seq {
        j.raw(r#","seq":"#).u64(seq);
    }
    j.raw("}");
    j.finish()
}

/// `{"type":"ack","id":I,"room":R,"seq":N,"dup":true}` (or `"to"`): the ack of a repeated
/// `key`, with the seq the first request was given.
pub fn dup_ack(id: Option<&ReqId>, target: Target<'_>, seq: u64) -> Bytes {
    let mut j = Json::new(128);
    j.raw(r#"{"type":"ack","#).id(id);
    match target {
        Target::Room(room) => j.raw(r#""room":"#).name(room),
        Target::User(to) => j.raw(r#""to":"#).name(to),
    };
    j.raw(r#","seq":"#).u64(seq).raw(r#","dup":true}"#);
    j.finish()
}

/// What a `join` with `since` got: the ack's extra fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    pub recovered: bool,
    pub replayed: usize,
    pub truncated: bool,
}

/// `{"type":"ack","id":I,"room":R,"seq":N,"recovered":B,"replayed":K,"truncated":B}`
pub fn join_ack(id: Option<&ReqId>, room: &Name, seq: u64, r: Recovery) -> Bytes {
    let mut j = Json::new(160);
    j.raw(r#"{"type":"ack","#).id(id);
    j.raw(r#""room":"#).name(room).raw(r#","seq":"#).u64(seq);
    j.raw(r#","recovered":"#).raw(bool_str(r.recovered));
    j.raw(r#","replayed":"#).u64(r.replayed as u64);
    j.raw(r#","truncated":"#)
        .raw(bool_str(r.truncated))
        .raw("}");
    j.finish()
}

fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// `{"type":"history","id":I,"room":R,"messages":[..],"more":B}` or, without a room,
/// `{"type":"sync","id":I,"messages":[..],"more":B}`. Each of `messages` is a stored message's
/// JSON, spliced as it is.
pub fn page<'a>(
    id: Option<&ReqId>,
    room: Option<&Name>,
    messages: impl Iterator<Item = &'a [u8]> + Clone,
    more: bool,
) -> Bytes {
    let size: usize = messages.clone().map(|m| m.len() + 1).sum();
    let mut j = Json::new(96 + size);
    match room {
        Some(room) => j
            .raw(r#"{"type":"history","#)
            .id(id)
            .raw(r#""room":"#)
            .name(room)
            .raw(","),
        None => j.raw(r#"{"type":"sync","#).id(id),
    };
    j.raw(r#""messages":["#);
    for (i, m) in messages.enumerate() {
        if i > 0 {
            j.raw(",");
        }
        j.0.push(m);
    }
    j.raw(r#"],"more":"#).raw(bool_str(more)).raw("}");
    j.finish()
}

/// `{"type":"presence","id":I,"room":R,"users":[..],"more":B}` (`more` for a page).
pub fn presence<'a>(
    id: Option<&ReqId>,
    room: &Name,
    users: impl Iterator<Item = &'a Name> + Clone,
    more: Option<bool>,
    info: &[(&Name, Bytes)],
) -> Bytes {
    let size: usize = users.clone().map(|u| u.len() + 3).sum();
    let info_size: usize = info.iter().map(|(u, i)| u.len() + i.len() + 4).sum();
    let mut j = Json::new(64 + room.len() + size + info_size);
    j.raw(r#"{"type":"presence","#).id(id);
    j.raw(r#""room":"#)
        .name(room)
        .raw(r#","mode":"list","users":["#);
    for (i, user) in users.enumerate() {
        if i > 0 {
            j.raw(",");
        }
        j.name(user);
    }
    j.raw("]");
    for (i, (user, info)) in info.iter().enumerate() {
        j.raw(if i == 0 { r#","info":{"# } else { "," });
        j.name(user).raw(":");
        j.0.push(info);
    }
    if !info.is_empty() {
        j.raw("}");
    }
    if let Some(more) = more {
        j.raw(r#","more":"#).raw(bool_str(more));
    }
    j.raw("}");
    j.finish()
}

/// `{"type":"pong","id":I}`
pub fn pong(id: Option<&ReqId>) -> Bytes {
    let mut j = Json::new(96);
    j.raw(r#"{"type":"pong""#);
    if let Some(id) = id {
        j.raw(r#","id":"#).raw(id.as_json());
    }
    j.raw("}");
    j.finish()
}

/// `{"type":"refreshed","id":I,"exp":E}`; no `exp` when the new token has none.
pub fn refreshed(id: Option<&ReqId>, exp: Option<u64>) -> Bytes {
    let mut j = Json::new(96);
    j.raw(r#"{"type":"refreshed""#);
    if let Some(id) = id {
        j.raw(r#","id":"#).raw(id.as_json());
    }
    if let Some(exp) = exp {
        j.raw(r#","exp":"#).u64(exp);
    }
    j.raw("}");
    j.finish()
}

/// `{"type":"error","id":I,"code":C,"message":M}`
pub fn error(id: Option<&ReqId>, err: &ReplyError) -> Bytes {
    let mut j = Json::new(96 + err.message.len());
    j.raw(r#"{"type":"error","#).id(id);
    j.raw(r#""code":""#)
        .raw(err.code.as_str())
        .raw(r#"","message":"#);
    j.escaped(&err.message).raw("}");
    j.finish()
}

// ----- signals, read positions and receipts (issue 23) -------------------------------------------

/// `{"type":"signal","room":R,"from":U,"body":B}`, `body` spliced.
pub fn signal(room: &Name, from: &Name, body: &[u8]) -> Bytes {
    let mut j = Json::new(48 + room.len() + from.len() + body.len());
    j.raw(r#"{"type":"signal","room":"#).name(room);
    j.raw(r#","from":"#).name(from).raw(r#","body":"#);
    j.0.push(body);
    j.raw("}");
    j.finish()
}

/// `{"type":"read","room":R,"seq":N}`, or `{"type":"read","inbox":true,"seq":N}` for the
/// inbox (`room` is `None`): the user's read position moved.
pub fn read_moved(room: Option<&Name>, seq: u64) -> Bytes {
    let mut j = Json::new(48 + room.map_or(0, |r| r.len()));
    match room {
        Some(room) => j.raw(r#"{"type":"read","room":"#).name(room),
        None => j.raw(r#"{"type":"read","inbox":true"#),
    };
    j.raw(r#","seq":"#).u64(seq).raw("}");
    j.finish()
}

/// The ack of a `read`: `{"type":"ack","id":I,"room":R,"read":N}` (or `"inbox":true`), with
/// the position now held.
pub fn read_ack(id: Option<&ReqId>, room: Option<&Name>, read: u64) -> Bytes {
    let mut j = Json::new(64 + room.map_or(0, |r| r.len()));
    j.raw(r#"{"type":"ack","#).id(id);
    match room {
        Some(room) => j.raw(r#""room":"#).name(room),
        None => j.raw(r#""inbox":true"#),
    };
    j.raw(r#","read":"#).u64(read).raw("}");
    j.finish()
}

/// `{"type":"receipt","room":R,"user":U,"seq":N}`: a member has read the room up to N.
pub fn receipt(room: &Name, user: &Name, seq: u64) -> Bytes {
    let mut j = Json::new(56 + room.len() + user.len());
    j.raw(r#"{"type":"receipt","room":"#).name(room);
    j.raw(r#","user":"#)
        .name(user)
        .raw(r#","seq":"#)
        .u64(seq)
        .raw("}");
    j.finish()
}

/// A join ack with the user's read position in the room added: `"read":N`.
pub fn with_read(ack: &Bytes, read: u64) -> Bytes {
    let json = crate::ws::payload_of(ack);
    let mut j = Json::new(json.len() + 24);
    j.0.push(&json[..json.len().saturating_sub(1)]);
    j.raw(r#","read":"#).u64(read).raw("}");
    j.finish()
}

/// `welcome` with the read positions added: `"inbox_read":N,"reads":{"R":{"seq":S,"read":N}}`
/// (the inbox's position, and each room joined at connect's last seq and position; 0 where
/// the user has read nothing).
pub fn with_reads(welcome: &Bytes, inbox_read: u64, rooms: &[(Name, u64, u64)]) -> Bytes {
    let json = crate::ws::payload_of(welcome);
    let room_bytes = rooms.iter().map(|(r, _, _)| r.len() + 48).sum::<usize>();
    let mut j = Json::new(json.len() + 32 + room_bytes);
    j.0.push(&json[..json.len().saturating_sub(1)]);
    j.raw(r#","inbox_read":"#)
        .u64(inbox_read)
        .raw(r#","reads":{"#);
    for (i, (room, seq, read)) in rooms.iter().enumerate() {
        if i > 0 {
            j.raw(",");
        }
        j.name(room).raw(r#":{"seq":"#).u64(*seq);
        j.raw(r#","read":"#).u64(*read).raw("}");
    }
    j.raw("}}");
    j.finish()
}

#[cfg(test)]
mod tests {

    #[test]
    fn with_key_adds_the_escaped_key_after_the_seq() {
        let (r, a) = (Name::new("r").unwrap(), Name::new("a").unwrap());
        let msg = message(Target::Room(&r), &a, 7, 9, br#"{"ts":1,"key":2}"#);
        let keyed = with_key(&crate::ws::payload_of(&msg), r#"k"\1"#);
        assert_eq!(
            &crate::ws::payload_of(&keyed)[..],
            br#"{"type":"message","room":"r","from":"a","seq":7,"key":"k\"\\1","ts":9,"body":{"ts":1,"key":2}}"#
        );
        let v = payload(&keyed);
        assert_eq!(
            (v["key"].as_str(), v["body"]["key"].as_i64()),
            (Some(r#"k"\1"#), Some(2))
        );
    }

    #[test]
    fn message_parts_join_around_the_seq_into_the_message() {
        let (room, from) = (Name::new("r").unwrap(), Name::new("a").unwrap());
        let body = br#"{"seq":1,"x":"\"seq\":"}"#;
        let (head, tail) = message_parts(Target::Room(&room), &from, 77, body);
        let whole = [&head[..], b"4321", &tail[..]].concat();
        let want = message(Target::Room(&room), &from, 4321, 77, body);
        assert_eq!(whole, crate::ws::payload_of(&want));
    }

    #[test]
    fn an_epoch_is_added_to_a_join_ack() {
        let room = Name::new("r").unwrap();
        let ack = with_epoch(&ack(None, Target::Room(&room), Some(3)), 99);
        let v: serde_json::Value = serde_json::from_slice(&crate::ws::payload_of(&ack)).unwrap();
        assert_eq!(
            (v["seq"].as_u64(), v["epoch"].as_u64()),
            (Some(3), Some(99))
        );
    }

    use super::*;
    use crate::core::error::ErrorCode;
    use serde_json::{Value, json};

    /// Strips the server frame header and parses the payload.
    fn payload(frame: &Bytes) -> Value {
        let start = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&frame[start..]).expect("valid JSON")
    }

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn frames_are_valid_json_with_the_documented_shape() {
        let id = crate::protocol::parse(r#"{"type":"ping","id":"a\"b"}"#)
            .unwrap()
            .id;
        assert_eq!(
            payload(&pong(id.as_ref())),
            json!({"type":"pong","id":"a\"b"})
        );
        assert_eq!(
            payload(&welcome(&n("u"), &[n("r1"), n("r2")], 25, 7)),
            json!({"type":"welcome","user":"u","rooms":["r1","r2"],"heartbeat_ms":25,"inbox_seq":7})
        );
        assert_eq!(
            payload(&message(
                Target::Room(&n("r")),
                &n("u"),
                3,
                9,
                br#"{"x": [1]}"#
            )),
            json!({"type":"message","room":"r","from":"u","seq":3,"ts":9,"body":{"x":[1]}})
        );
        assert_eq!(
            payload(&message(Target::User(&n("v")), &n("u"), 1, 2, b"null")),
            json!({"type":"message","to":"v","from":"u","seq":1,"ts":2,"body":null})
        );
        assert_eq!(
            payload(&ack(None, Target::Room(&n("r")), None)),
            json!({"type":"ack","room":"r"})
        );
        assert_eq!(
            payload(&presence(None, &n("r"), [n("a"), n("b")].iter(), None, &[])),
            json!({"type":"presence","room":"r","mode":"list","users":["a","b"]})
        );
        assert_eq!(
            payload(&presence(None, &n("r"), [n("a")].iter(), Some(true), &[])),
            json!({"type":"presence","room":"r","mode":"list","users":["a"],"more":true})
        );
        let (a, b) = (n("a"), n("b"));
        let info = [
            (&a, Bytes::from_static(br#"{"x":1}"#)),
            (&b, Bytes::from_static(b"{}")),
        ];
        assert_eq!(
            payload(&presence(
                None,
                &n("r"),
                [n("a"), n("b")].iter(),
                None,
                &info
            )),
            json!({"type":"presence","room":"r","mode":"list","users":["a","b"],
                   "info":{"a":{"x":1},"b":{}}})
        );
        assert_eq!(
            payload(&joined(&a, &b, Some(&info[0].1))),
            json!({"type":"joined","room":"a","user":"b","info":{"x":1}})
        );
        assert_eq!(
            payload(&joined(&a, &b, None)),
            payload(&membership(true, &a, &b))
        );
        assert_eq!(
            payload(&presence_count(None, &n("r"), "count", 7)),
            json!({"type":"presence","room":"r","mode":"count","members":7})
        );
        assert_eq!(
            payload(&occupancy(&n("r"), 7)),
            json!({"type":"occupancy","room":"r","members":7})
        );
        let info = RoomInfo {
            publish: "granted",
            presence: "count",
            rights: Rights::JOIN.with(Rights::PRESENCE),
            members: Some(3),
        };
        assert_eq!(
            payload(&with_room(
                &ack(None, Target::Room(&n("r")), Some(2)),
                &info
            )),
            json!({"type":"ack","room":"r","seq":2,"publish":"granted","presence":"count",
                   "rights":["join","presence"],"members":3})
        );
        assert_eq!(
            payload(&removed(&n("r"), "a \"why\"")),
            json!({"type":"removed","room":"r","reason":"a \"why\""})
        );
        let r = Recovery {
            recovered: false,
            replayed: 3,
            truncated: true,
        };
        assert_eq!(
            payload(&join_ack(None, &n("r"), 9, r)),
            json!({"type":"ack","room":"r","seq":9,"recovered":false,"replayed":3,"truncated":true})
        );
        let msgs = [&br#"{"a":1}"#[..], &br#"{"b":2}"#[..]];
        assert_eq!(
            payload(&page(None, Some(&n("r")), msgs.into_iter(), true)),
            json!({"type":"history","room":"r","messages":[{"a":1},{"b":2}],"more":true})
        );
        assert_eq!(
            payload(&page(id.as_ref(), None, [].into_iter(), false)),
            json!({"type":"sync","id":"a\"b","messages":[],"more":false})
        );
        let e = ReplyError::new(ErrorCode::BadRequest, "bad \"x\"\n\\ \u{1}");
        assert_eq!(
            payload(&error(None, &e)),
            json!({"type":"error","code":"bad_request","message":"bad \"x\"\n\\ ?"})
        );
    }

    #[test]
    fn body_bytes_pass_through_verbatim() {
        let body = br#"{ "spaced" :  "\u00e9t\u00e9" }"#;
        let frame = message(Target::Room(&n("r")), &n("u"), 1, 1, body);
        let text = std::str::from_utf8(&frame[2..]).unwrap();
        assert!(
            text.ends_with(r#""body":{ "spaced" :  "\u00e9t\u00e9" }}"#),
            "{text}"
        );
    }
}
