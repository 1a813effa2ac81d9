//! Binary client frames read straight into the parsed request: prost decodes the frame, and
//! `protocol::fields::message` checks its fields exactly as it checks a JSON frame's members,
//! so both forms have one set of checks and no JSON text is built in between.

use std::borrow::Cow;
use std::cell::OnceCell;

use base64::Engine as _;
use prost::Message as _;
use serde_json::value::RawValue;

use super::DecodeError;
use super::schema::{self, client_frame::Frame, client_frame::Id};
use crate::core::ReqId;
use crate::core::error::{ErrorCode, ReplyError};
use crate::protocol::fields::{self, Field, Fields};
use crate::protocol::{ParseError, Request};

/// A decoded binary client frame, and room for its body's JSON form when the body's bytes are
/// not JSON (`{"$b64":..}`, made only then).
pub struct Decoded {
    frame: schema::ClientFrame,
    b64: OnceCell<Box<RawValue>>,
}

/// Decodes a binary client frame. Cost: one prost decode (the frame's strings and body copied
/// out of the message once).
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    Ok(Decoded {
        frame: schema::ClientFrame::decode(bytes)?,
        b64: OnceCell::new(),
    })
}

impl Decoded {
    /// The request, checked as a JSON client's is. A body is one JSON check of its bytes,
    /// borrowed when they are JSON.
    pub fn request(&self) -> Result<Request<'_>, ParseError> {
        let id = match &self.frame.id {
            None => None,
            Some(id) => Some(req_id(id).map_err(|error| ParseError { id: None, error })?),
        };
        let (ty, fields) = match &self.frame.frame {
            None => ("(unknown binary frame)", Bin::default()),
            Some(f) => self.fields(f),
        };
        match fields::message(ty, &fields) {
            Ok(msg) => Ok(Request { id, msg }),
            Err(error) => Err(ParseError { id, error }),
        }
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

/// A request id as its JSON text, checked by the JSON form's rule (`ReqId::parse`).
fn req_id(id: &Id) -> Result<ReqId, ReplyError> {
    let raw = match id {
        Id::NumId(n) => serde_json::value::to_raw_value(n),
        Id::StrId(s) => serde_json::value::to_raw_value(s),
    };
    let not_json = |_| ReplyError::new(ErrorCode::BadRequest, "id must be a number or a string");
    ReqId::parse(&raw.map_err(not_json)?)
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
