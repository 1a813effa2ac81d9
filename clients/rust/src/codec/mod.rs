//! The two wire forms of docs/protocol.md: JSON text frames (`shardcast.json`) and Protocol
//! Buffers binary frames (`shardcast.proto`). Requests are encoded from one [`Request`] into
//! either; server frames of either form decode into one [`Frame`] with the JSON frame's
//! fields.
//!
//! Owns the byte formats only; it must not touch sockets or keep state (that is the driver).
//! Usable on its own by a caller with its own transport (the load-test bot).
//!
//! Cost: decoding a JSON frame borrows every string and the body from the frame (no allocation
//! for a message); a proto frame is decoded by prost into owned strings and bytes.
//!
//! [`proto`] is the binary form; this file holds the JSON form and the shapes both share.

mod proto;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use crate::body::{self, BodyRef, RawBody};

/// Which form a connection speaks, negotiated with `Sec-WebSocket-Protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// `shardcast.json`: one JSON object per text frame.
    #[default]
    Json,
    /// `shardcast.proto`: one `ClientFrame` / `ServerFrame` per binary frame.
    Proto,
}

impl Format {
    /// The subprotocol name asked for in the upgrade.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Format::Json => "shardcast.json",
            Format::Proto => "shardcast.proto",
        }
    }
}

/// A client frame (docs/protocol.md, "Client → server"), borrowed from the caller.
#[derive(Clone, Copy, Debug)]
pub enum Request<'a> {
    Join {
        room: &'a str,
        since: Option<u64>,
        epoch: Option<u64>,
    },
    Leave {
        room: &'a str,
    },
    Publish {
        room: &'a str,
        body: BodyRef<'a>,
        key: Option<&'a str>,
    },
    Send {
        to: &'a str,
        body: BodyRef<'a>,
        key: Option<&'a str>,
    },
    Presence {
        room: &'a str,
        after: Option<&'a str>,
        limit: Option<u64>,
    },
    History {
        room: &'a str,
        before: Option<u64>,
        limit: Option<u64>,
        fold: bool,
    },
    Sync {
        since: u64,
    },
    Ping,
    Refresh {
        token: &'a str,
    },
    /// The first frame under `first_frame_auth`.
    Connect {
        token: &'a str,
    },
    Signal {
        room: &'a str,
        body: BodyRef<'a>,
    },
    /// A read position: in `room`, or in the inbox when `room` is `None`.
    Read {
        room: Option<&'a str>,
        seq: u64,
    },
    Edit {
        room: &'a str,
        target: u64,
        body: BodyRef<'a>,
    },
    Delete {
        room: &'a str,
        target: u64,
    },
    React {
        room: &'a str,
        target: u64,
        emoji: &'a str,
    },
    Unreact {
        room: &'a str,
        target: u64,
        emoji: &'a str,
    },
}

/// Appends `req` with request id `id` to `out` in `format`.
pub fn encode(format: Format, id: Option<u64>, req: &Request<'_>, out: &mut Vec<u8>) {
    match format {
        Format::Json => encode_json(id, req, out),
        Format::Proto => proto::encode(id, req, out),
    }
}

fn encode_json(id: Option<u64>, req: &Request<'_>, out: &mut Vec<u8>) {
    let mut w = JsonWriter { out };
    let ty = match req {
        Request::Join { .. } => "join",
        Request::Leave { .. } => "leave",
        Request::Publish { .. } => "publish",
        Request::Send { .. } => "send",
        Request::Presence { .. } => "presence",
        Request::History { .. } => "history",
        Request::Sync { .. } => "sync",
        Request::Ping => "ping",
        Request::Refresh { .. } => "refresh",
        Request::Connect { .. } => "connect",
        Request::Signal { .. } => "signal",
        Request::Read { .. } => "read",
        Request::Edit { .. } => "edit",
        Request::Delete { .. } => "delete",
        Request::React { .. } => "react",
        Request::Unreact { .. } => "unreact",
    };
    w.out.extend_from_slice(br#"{"type":""#);
    w.out.extend_from_slice(ty.as_bytes());
    w.out.push(b'"');
    w.num("id", id);
    match *req {
        Request::Join { room, since, epoch } => {
            w.str("room", Some(room));
            w.num("since", since);
            w.num("epoch", epoch);
        }
        Request::Leave { room } => w.str("room", Some(room)),
        Request::Publish { room, body, key } => {
            w.str("room", Some(room));
            w.str("key", key);
            w.body(body);
        }
        Request::Send { to, body, key } => {
            w.str("to", Some(to));
            w.str("key", key);
            w.body(body);
        }
        Request::Presence { room, after, limit } => {
            w.str("room", Some(room));
            w.str("after", after);
            w.num("limit", limit);
        }
        Request::History {
            room,
            before,
            limit,
            fold,
        } => {
            w.str("room", Some(room));
            w.num("before", before);
            w.num("limit", limit);
            if fold {
                w.out.extend_from_slice(br#","fold":true"#);
            }
        }
        Request::Sync { since } => w.num("since", Some(since)),
        Request::Ping => {}
        Request::Refresh { token } | Request::Connect { token } => w.str("token", Some(token)),
        Request::Signal { room, body } => {
            w.str("room", Some(room));
            w.body(body);
        }
        Request::Read { room, seq } => {
            match room {
                Some(room) => w.str("room", Some(room)),
                None => w.out.extend_from_slice(br#","inbox":true"#),
            }
            w.num("seq", Some(seq));
        }
        Request::Edit { room, target, body } => {
            w.str("room", Some(room));
            w.num("target", Some(target));
            w.body(body);
        }
        Request::Delete { room, target } => {
            w.str("room", Some(room));
            w.num("target", Some(target));
        }
        Request::React {
            room,
            target,
            emoji,
        }
        | Request::Unreact {
            room,
            target,
            emoji,
        } => {
            w.str("room", Some(room));
            w.num("target", Some(target));
            w.str("emoji", Some(emoji));
        }
    }
    w.out.push(b'}');
}

struct JsonWriter<'o> {
    out: &'o mut Vec<u8>,
}

impl JsonWriter<'_> {
    fn key(&mut self, name: &str) {
        self.out.extend_from_slice(b",\"");
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, name: &str, v: Option<&str>) {
        if let Some(v) = v {
            self.key(name);
            serde_json::to_writer(&mut *self.out, v).expect("a string writes to a Vec");
        }
    }

    fn num(&mut self, name: &str, v: Option<u64>) {
        if let Some(v) = v {
            self.key(name);
            self.out
                .extend_from_slice(itoa_u64(v, &mut [0; 20]).as_bytes());
        }
    }

    fn body(&mut self, body: BodyRef<'_>) {
        self.key("body");
        body::write_json(self.out, body);
    }
}

fn itoa_u64(mut v: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

/// A server frame of either form, with the JSON frame's field names (docs/protocol.md,
/// "Server → client"). Fields a frame kind does not have are `None` / `false`. A folded
/// history message's `reactions` and `welcome`'s `reads` are not kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Frame<'a> {
    /// The frame's `type`: `message`, `ack`, `error`, `welcome`…
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    /// The request id of a reply, when it was a number (the only ids this crate sends).
    #[serde(deserialize_with = "num_id")]
    pub id: Option<u64>,
    #[serde(borrow)]
    pub room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub from: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub user: Option<Cow<'a, str>>,
    pub seq: Option<u64>,
    pub ts: Option<u64>,
    #[serde(borrow)]
    pub key: Option<Cow<'a, str>>,
    /// An event's kind (`edit`, `delete`, `react`, `unreact`); `None` for a plain message.
    #[serde(borrow)]
    pub kind: Option<Cow<'a, str>>,
    pub target: Option<u64>,
    #[serde(borrow)]
    pub emoji: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub body: Option<RawBody<'a>>,
    pub edited: Option<u64>,
    pub deleted: bool,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub reason: Option<Cow<'a, str>>,
    pub dup: bool,
    pub noop: bool,
    pub recovered: Option<bool>,
    pub replayed: Option<u64>,
    pub truncated: Option<bool>,
    pub members: Option<u64>,
    pub epoch: Option<u64>,
    #[serde(borrow)]
    pub publish: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub presence: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub rights: Option<Vec<Cow<'a, str>>>,
    pub read: Option<u64>,
    pub inbox: bool,
    #[serde(borrow)]
    pub mode: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub users: Option<Vec<Cow<'a, str>>>,
    pub more: bool,
    #[serde(borrow)]
    pub messages: Option<Vec<Frame<'a>>>,
    pub heartbeat_ms: Option<u64>,
    pub inbox_seq: Option<u64>,
    #[serde(borrow)]
    pub rooms: Option<Vec<Cow<'a, str>>>,
    pub exp: Option<u64>,
}

/// A frame that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the server sent a frame that does not decode: {0}")]
pub struct DecodeError(String);

/// Decodes one server frame's payload.
pub fn decode(format: Format, payload: &[u8]) -> Result<Frame<'_>, DecodeError> {
    match format {
        Format::Json => serde_json::from_slice(payload).map_err(|e| DecodeError(e.to_string())),
        Format::Proto => proto::decode(payload),
    }
}

/// An id that is a number, or `None` (a string id, which this crate never sends).
fn num_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or a string")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}
