//! Binary client frames read straight into the parsed request: prost decodes the frame, and
//! `protocol::fields::message` checks its fields exactly as it checks a JSON frame's members,
//! so both forms have one set of checks and no JSON text is built in between.

use std::borrow::Cow;
use std::cell::OnceCell;

use base64::Engine as _;
use prost::Message as _;
use serde_json::value::RawValue;

use super::schema::{self, client_frame::Frame, client_frame::Id};
use super::{DecodeError, chat};
use crate::core::ReqId;
use crate::core::error::{ErrorCode, ReplyError};
use crate::protocol::fields::{self, Field, Fields};
use crate::protocol::{ParseError, Request};

/// A decoded binary client frame, and room for its body's JSON form when the body's bytes are
/// not JSON (`{"$b64":..}`, made only then).
pub struct Decoded<'a> {
    frame: Whole<'a>,
    b64: OnceCell<Box<RawValue>>,
}

/// A frame read in place (`chat::read`: a plain `publish` or `send`), or by prost.
enum Whole<'a> {
    Chat(chat::Chat<'a>),
    Prost(schema::ClientFrame),
}

/// Decodes a binary client frame. Cost: a plain `publish` or `send` is read in place (its
/// strings and body borrowed from `bytes`, no allocation); any other frame is one prost decode
/// (its strings and body copied out once).
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    let frame = match chat::read(bytes) {
        Some(chat) => Whole::Chat(chat),
        None => Whole::Prost(schema::ClientFrame::decode(bytes)?),
    };
    Ok(Decoded {
        frame,
        b64: OnceCell::new(),
    })
}

/// `decode` by prost alone, for tests and the fuzz target's oracle.
#[doc(hidden)]
pub fn decode_by_prost(bytes: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    Ok(Decoded {
        frame: Whole::Prost(schema::ClientFrame::decode(bytes)?),
        b64: OnceCell::new(),
    })
}

impl<'b> Decoded<'b> {
    /// The request, checked as a JSON client's is. A body is one JSON check of its bytes,
    /// borrowed when they are JSON.
    pub fn request(&self) -> Result<Request<'_>, ParseError> {
        let (id, (ty, fields)) = match &self.frame {
            Whole::Chat(c) => (c.id, self.chat_fields(c)),
            Whole::Prost(f) => (
                f.id.as_ref().map(chat::Id::from),
                match &f.frame {
                    None => ("(unknown binary frame)", Bin::default()),
                    Some(f) => self.fields(f),
                },
            ),
        };
        let id = match id {
            None => None,
            Some(id) => Some(req_id(id).map_err(|error| ParseError { id: None, error })?),
        };
        match fields::message(ty, &fields) {
            Ok(msg) => Ok(Request { id, msg }),
            Err(error) => Err(ParseError { id, error }),
        }
    }

    fn chat_fields<'a>(&'a self, c: &chat::Chat<'a>) -> (&'static str, Bin<'a>) {
        let (ty, room, to) = match c.send {
            false => ("publish", c.target, ""),
            true => ("send", "", c.target),
        };
        let bin = Bin {
            room,
            to,
            body: Some(self.body(c.body)),
            key: c.key,
            ..Bin::default()
        };
        (ty, bin)
    }

    fn fields<'a>(&'a self, frame: &'a Frame) -> (&'static str, Bin<'a>) {
        let body = |bytes: &'a [u8]| Some(self.body(bytes));
        match frame {
            Frame::Join(f) => (
                "join",
                Bin {
                    room: &f.room,
                    since: f.since,
                    epoch: f.epoch,
                    ..Bin::default()
                },
            ),
            Frame::Leave(f) => ("leave", Bin::room(&f.room)),
            Frame::Publish(f) => (
                "publish",
                Bin {
                    room: &f.room,
                    body: body(&f.body),
                    key: f.key.as_deref(),
                    ..Bin::default()
                },
            ),
            Frame::Send(f) => (
                "send",
                Bin {
                    to: &f.to,
                    body: body(&f.body),
                    key: f.key.as_deref(),
                    ..Bin::default()
                },
            ),
            Frame::Presence(f) => (
                "presence",
                Bin {
                    room: &f.room,
                    after: f.after.as_deref(),
                    limit: f.limit,
                    ..Bin::default()
                },
            ),
            Frame::History(f) => (
                "history",
                Bin {
                    room: &f.room,
                    before: f.before,
                    limit: f.limit,
                    fold: f.fold,
                    ..Bin::default()
                },
            ),
            Frame::Sync(f) => (
                "sync",
                Bin {
                    since: Some(f.since),
                    ..Bin::default()
                },
            ),
            Frame::Ping(_) => ("ping", Bin::default()),
            Frame::Refresh(f) => (
                "refresh",
                Bin {
                    token: &f.token,
                    ..Bin::default()
                },
            ),
            Frame::Connect(f) => (
                "connect",
                Bin {
                    token: &f.token,
                    ..Bin::default()
                },
            ),
            Frame::Signal(f) => (
                "signal",
                Bin {
                    room: &f.room,
                    body: body(&f.body),
                    ..Bin::default()
                },
            ),
            Frame::Read(f) => (
                "read",
                Bin {
                    room: &f.room,
                    inbox: f.inbox,
                    seq: Some(f.seq),
                    ..Bin::default()
                },
            ),
            Frame::Edit(f) => (
                "edit",
                Bin {
                    room: &f.room,
                    target: Some(f.target),
                    body: body(&f.body),
                    ..Bin::default()
                },
            ),
            Frame::Delete(f) => (
                "delete",
                Bin {
                    room: &f.room,
                    target: Some(f.target),
                    ..Bin::default()
                },
            ),
            Frame::React(f) | Frame::Unreact(f) => (
                if matches!(frame, Frame::React(_)) {
                    "react"
                } else {
                    "unreact"
                },
                Bin {
                    room: &f.room,
                    target: Some(f.target),
                    emoji: &f.emoji,
                    ..Bin::default()
                },
            ),
        }
    }

    /// A body as JSON (docs/protocol.md, "Bodies across formats"): the bytes themselves when
    /// they are one JSON value, else `{"$b64":"<standard base64>"}`.
    fn body<'a>(&'a self, bytes: &'a [u8]) -> &'a RawValue {
        match serde_json::from_slice::<&RawValue>(bytes) {
            Ok(raw) => raw,
            Err(_) => self.b64.get_or_init(|| b64_json(bytes)),
        }
    }
}

/// `{"$b64":"<standard base64 of bytes>"}`.
pub fn b64_json(bytes: &[u8]) -> Box<RawValue> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    // Base64 text needs no escaping, so this is always valid JSON.
    RawValue::from_string(format!(r#"{{"$b64":"{b64}"}}"#))
        .unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// A request id as its JSON text, checked by the JSON form's rule (`ReqId::parse`). A number
/// needs no allocation beyond the `ReqId`'s own.
fn req_id(id: chat::Id<'_>) -> Result<ReqId, ReplyError> {
    let not_json = |_| ReplyError::new(ErrorCode::BadRequest, "id must be a number or a string");
    match id {
        chat::Id::Num(n) => {
            let mut digits = itoa::Buffer::new();
            let raw: &RawValue = serde_json::from_str(digits.format(n)).map_err(not_json)?;
            ReqId::parse(raw)
        }
        chat::Id::Str(s) => ReqId::parse(&serde_json::value::to_raw_value(s).map_err(not_json)?),
    }
}

impl<'a> From<&'a Id> for chat::Id<'a> {
    fn from(id: &'a Id) -> chat::Id<'a> {
        match id {
            Id::NumId(n) => chat::Id::Num(*n),
            Id::StrId(s) => chat::Id::Str(s),
        }
    }
}

/// A binary frame's fields: an empty string is absent (proto3 cannot tell them apart), as is
/// an unset flag.
#[derive(Default)]
struct Bin<'a> {
    room: &'a str,
    to: &'a str,
    token: &'a str,
    emoji: &'a str,
    after: Option<&'a str>,
    key: Option<&'a str>,
    since: Option<u64>,
    epoch: Option<u64>,
    before: Option<u64>,
    limit: Option<u64>,
    seq: Option<u64>,
    target: Option<u64>,
    inbox: bool,
    fold: bool,
    body: Option<&'a RawValue>,
}

impl<'a> Bin<'a> {
    fn room(room: &'a str) -> Bin<'a> {
        Bin {
            room,
            ..Bin::default()
        }
    }

    fn str(&self, f: Field) -> Option<&'a str> {
        let s = match f {
            Field::Room => self.room,
            Field::To => self.to,
            Field::Token => self.token,
            Field::Emoji => self.emoji,
            Field::After => return self.after,
            Field::Key => return self.key,
            _ => "",
        };
        (!s.is_empty()).then_some(s)
    }
}

impl<'a> Fields<'a> for Bin<'a> {
    fn has(&self, f: Field) -> bool {
        match f {
            Field::Inbox => self.inbox,
            Field::Fold => self.fold,
            _ => self.str(f).is_some() || matches!(self.int(f), Ok(Some(_))),
        }
    }
    fn string(&self, f: Field) -> Result<Option<Cow<'a, str>>, ReplyError> {
        Ok(self.str(f).map(Cow::Borrowed))
    }
    fn int(&self, f: Field) -> Result<Option<u64>, ReplyError> {
        Ok(match f {
            Field::Since => self.since,
            Field::Epoch => self.epoch,
            Field::Before => self.before,
            Field::Limit => self.limit,
            Field::Seq => self.seq,
            Field::Target => self.target,
            _ => None,
        })
    }
    fn flag(&self, f: Field) -> Result<bool, ReplyError> {
        Ok(match f {
            Field::Inbox => self.inbox,
            Field::Fold => self.fold,
            _ => false,
        })
    }
    fn body(&self) -> Option<&'a RawValue> {
        self.body
    }
}
