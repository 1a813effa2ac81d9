//! The binary protocol (`Sec-WebSocket-Protocol: shardcast.proto`, proto/shardcast.proto): the
//! subprotocol negotiation, client frames turned into the JSON text `protocol::parse` reads,
//! and server frames turned into their binary form once per shard.
//!
//! Owns the mapping between the two forms and the body crossing rules (docs/protocol.md,
//! "Bodies across formats"). It must not read sockets or know rooms: `http` asks it to
//! negotiate, `conn` for the binary variant of what it queues, `shard` to decode a binary
//! client frame. The JSON form stays the one the engines sequence, store and encode; this
//! module only translates at the edge, so every frame kind exists once, in `protocol`.
//!
//! `schema.rs` is prost's code for the schema, committed (scripts/gen-proto.sh regenerates
//! it), so a build needs no `protoc`.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod schema;

mod server;

use std::fmt::Write as _;

use base64::Engine as _;
use prost::Message as _;
use serde_json::value::RawValue;

pub use server::{to_binary, variant};

use self::schema::client_frame::{Frame, Id};

/// The subprotocol of today's JSON frames, also what a client that names none gets.
pub const JSON: &str = "shardcast.json";
/// The subprotocol of binary frames: one `ClientFrame` or `ServerFrame` per message.
pub const PROTO: &str = "shardcast.proto";

/// Which form a connection's frames take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Json,
    Proto,
}

/// The client's `Sec-WebSocket-Protocol` offers (every value of the header) against ours: the
/// first one we speak, in the client's order, with the name to answer (`None`: the client
/// named none, so none is answered and it speaks JSON). `Err` holds what was offered when
/// none is ours.
pub fn negotiate<'a>(
    headers: impl Iterator<Item = &'a str>,
) -> Result<(Format, Option<&'static str>), String> {
    let mut offered = Vec::new();
    for offer in headers.flat_map(|h| h.split(',')).map(str::trim) {
        match offer {
            "" => continue,
            JSON => return Ok((Format::Json, Some(JSON))),
            PROTO => return Ok((Format::Proto, Some(PROTO))),
            other => offered.push(other),
        }
    }
    if offered.is_empty() {
        Ok((Format::Json, None))
    } else {
        Err(offered.join(", "))
    }
}

/// A binary message that is not a `ClientFrame`: the connection is closed with 1007, as for a
/// text message that is not UTF-8 (the frame is well-formed, its data is not).
#[derive(Debug, thiserror::Error)]
#[error("not a shardcast.proto ClientFrame: {0}")]
pub struct DecodeError(#[from] prost::DecodeError);

/// A binary client frame as the JSON text of the same request, for `protocol::parse`, which
/// then checks it exactly as it checks a JSON client's frame (names, limits, keys, depth).
/// An empty string field is left out, so it is reported as missing. Cost: one prost decode and
/// one JSON string, about the frame's size (a non-JSON body grows by a third, as base64).
pub fn client_to_json(bytes: &[u8]) -> Result<String, DecodeError> {
    let frame = schema::ClientFrame::decode(bytes)?;
    let mut j = Obj(String::with_capacity(bytes.len() + 64));
    let ty = match &frame.frame {
        None => "(unknown binary frame)",
        Some(f) => match f {
            Frame::Join(_) => "join",
            Frame::Leave(_) => "leave",
            Frame::Publish(_) => "publish",
            Frame::Send(_) => "send",
            Frame::Presence(_) => "presence",
            Frame::History(_) => "history",
            Frame::Sync(_) => "sync",
            Frame::Ping(_) => "ping",
            Frame::Refresh(_) => "refresh",
            Frame::Connect(_) => "connect",
            Frame::Signal(_) => "signal",
            Frame::Read(_) => "read",
            Frame::Edit(_) => "edit",
            Frame::Delete(_) => "delete",
            Frame::React(_) => "react",
            Frame::Unreact(_) => "unreact",
        },
    };
    j.str("type", ty);
    match &frame.id {
        Some(Id::NumId(n)) => j.num("id", *n),
        Some(Id::StrId(s)) => j.str("id", s),
        None => {}
    }
    match frame.frame {
        None | Some(Frame::Ping(_)) => {}
        Some(Frame::Join(f)) => {
            j.str("room", &f.room);
            j.opt_num("since", f.since);
            j.opt_num("epoch", f.epoch);
        }
        Some(Frame::Leave(f)) => j.str("room", &f.room),
        Some(Frame::Publish(f)) => {
            j.str("room", &f.room);
            j.body(&f.body);
            j.opt_str("key", f.key.as_deref());
        }
        Some(Frame::Send(f)) => {
            j.str("to", &f.to);
            j.body(&f.body);
            j.opt_str("key", f.key.as_deref());
        }
        Some(Frame::Presence(f)) => {
            j.str("room", &f.room);
            j.opt_str("after", f.after.as_deref());
            j.opt_num("limit", f.limit);
        }
        Some(Frame::History(f)) => {
            j.str("room", &f.room);
            j.opt_num("before", f.before);
            j.opt_num("limit", f.limit);
            j.flag("fold", f.fold);
        }
        Some(Frame::Sync(f)) => j.num("since", f.since),
        Some(Frame::Refresh(f)) => j.str("token", &f.token),
        Some(Frame::Connect(f)) => j.str("token", &f.token),
        Some(Frame::Signal(f)) => {
            j.str("room", &f.room);
            j.body(&f.body);
        }
        Some(Frame::Read(f)) => {
            j.str("room", &f.room);
            j.flag("inbox", f.inbox);
            j.num("seq", f.seq);
        }
        Some(Frame::Edit(f)) => {
            j.str("room", &f.room);
            j.num("target", f.target);
            j.body(&f.body);
        }
        Some(Frame::Delete(f)) => {
            j.str("room", &f.room);
            j.num("target", f.target);
        }
        Some(Frame::React(f) | Frame::Unreact(f)) => {
            j.str("room", &f.room);
            j.num("target", f.target);
            j.str("emoji", &f.emoji);
        }
    }
    Ok(j.finish())
}

/// A body from a binary client as JSON: the bytes themselves when they are valid JSON (UTF-8
/// text of one JSON value), else `{"$b64":"<standard base64>"}`.
pub fn body_json(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match serde_json::from_slice::<&RawValue>(bytes) {
        Ok(raw) => raw.get().into(),
        Err(_) => format!(
            r#"{{"$b64":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
        .into(),
    }
}

/// A JSON object written field by field.
struct Obj(String);

impl Obj {
    fn key(&mut self, k: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        let _ = write!(self.0, "\"{k}\":");
    }
    /// A string field; an empty string is left out (absent in the binary form).
    fn str(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.key(k);
            self.0
                .push_str(&serde_json::to_string(v).unwrap_or_default());
        }
    }
    fn opt_str(&mut self, k: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.key(k);
            self.0
                .push_str(&serde_json::to_string(v).unwrap_or_default());
        }
    }
    fn num(&mut self, k: &str, v: u64) {
        self.key(k);
        self.0.push_str(itoa::Buffer::new().format(v));
    }
    fn opt_num(&mut self, k: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.num(k, v);
        }
    }
    /// `"k":true` when set; `false` is left out (unset in the binary form).
    fn flag(&mut self, k: &str, v: bool) {
        if v {
            self.key(k);
            self.0.push_str("true");
        }
    }
    fn body(&mut self, bytes: &[u8]) {
        self.key("body");
        self.0.push_str(&body_json(bytes));
    }
    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

#[cfg(test)]
mod tests;
