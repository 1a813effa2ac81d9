//! A request's checks, one set for both forms: `Fields` is where a request's fields come from
//! (a JSON frame's members, or a binary frame's fields in `wire`), and `message` builds the
//! `ClientMessage` from them with every check of docs/protocol.md (missing fields, names,
//! keys, limits, targets).
//!
//! Owns those checks. It must not know either encoding: a source says only whether a field is
//! there and what it holds, and reports a field of the wrong type by its name.

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::{ClientMessage, DEFAULT_HISTORY_LIMIT, DEFAULT_PRESENCE_LIMIT};
use super::{MAX_HISTORY_LIMIT, MAX_PRESENCE_LIMIT};
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::{MsgKey, Name};

/// A request field other than `type`, `id` and `body`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Room,
    To,
    Since,
    Epoch,
    Before,
    Limit,
    Token,
    After,
    Key,
    Seq,
    Inbox,
    Target,
    Emoji,
    Fold,
}

impl Field {
    /// The field's name in both forms.
    pub fn name(self) -> &'static str {
        match self {
            Field::Room => "room",
            Field::To => "to",
            Field::Since => "since",
            Field::Epoch => "epoch",
            Field::Before => "before",
            Field::Limit => "limit",
            Field::Token => "token",
            Field::After => "after",
            Field::Key => "key",
            Field::Seq => "seq",
            Field::Inbox => "inbox",
            Field::Target => "target",
            Field::Emoji => "emoji",
            Field::Fold => "fold",
        }
    }
}

/// Where a request's fields come from. Each getter says `None` (or `false`) for an absent
/// field and an error naming the field when it holds the wrong type.
pub trait Fields<'a> {
    /// Whether the field is there at all (whatever its type).
    fn has(&self, f: Field) -> bool;
    fn string(&self, f: Field) -> Result<Option<Cow<'a, str>>, ReplyError>;
    fn int(&self, f: Field) -> Result<Option<u64>, ReplyError>;
    fn flag(&self, f: Field) -> Result<bool, ReplyError>;
    /// The body, valid JSON.
    fn body(&self) -> Option<&'a RawValue>;
}

/// The request of type `ty` from `f`, checked. Cost: one pass over the fields the type has.
pub fn message<'a>(ty: &str, f: &impl Fields<'a>) -> Result<ClientMessage<'a>, ReplyError> {
    let name = |field: Field| -> Result<Name, ReplyError> {
        let s = f.string(field)?.ok_or_else(|| missing(field.name()))?;
        Name::new(&s)
    };
    let body = || f.body().ok_or_else(|| missing("body"));
    let token = || f.string(Field::Token)?.ok_or_else(|| missing("token"));
    let key = || -> Result<Option<MsgKey>, ReplyError> {
        f.string(Field::Key)?.map(|s| MsgKey::new(&s)).transpose()
    };
    let limit = |default: usize, max: usize| {
        let limit = f.int(Field::Limit)?.unwrap_or(default as u64);
        if !(1..=max as u64).contains(&limit) {
            return Err(ReplyError::new(
                ErrorCode::BadRequest,
                format!("`limit` must be 1 to {max}"),
            ));
        }
        Ok(limit as usize)
    };
    let target = || {
        f.int(Field::Target)?.filter(|&t| t > 0).ok_or_else(|| {
            ReplyError::new(
                ErrorCode::BadRequest,
                "`target` must be the seq of a message of the room (an integer from 1)",
            )
        })
    };
    Ok(match ty {
        "join" => ClientMessage::Join {
            room: name(Field::Room)?,
            since: f.int(Field::Since)?,
            epoch: f.int(Field::Epoch)?,
        },
        "leave" => ClientMessage::Leave {
            room: name(Field::Room)?,
        },
        "publish" => ClientMessage::Publish {
            room: name(Field::Room)?,
            body: body()?,
            key: key()?,
        },
        "send" => ClientMessage::Send {
            to: name(Field::To)?,
            body: body()?,
            key: key()?,
        },
        "presence" => ClientMessage::Presence {
            room: name(Field::Room)?,
            after: match f.has(Field::After) {
                true => Some(name(Field::After)?),
                false => None,
            },
            limit: limit(DEFAULT_PRESENCE_LIMIT, MAX_PRESENCE_LIMIT)?,
        },
        "history" => ClientMessage::History {
            room: name(Field::Room)?,
            before: f.int(Field::Before)?,
            limit: limit(DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?,
            fold: f.flag(Field::Fold)?,
        },
        "edit" => ClientMessage::Edit {
            room: name(Field::Room)?,
            target: target()?,
            body: body()?,
        },
        "delete" => ClientMessage::Delete {
            room: name(Field::Room)?,
            target: target()?,
        },
        "react" | "unreact" => ClientMessage::React {
            room: name(Field::Room)?,
            target: target()?,
            emoji: f.string(Field::Emoji)?.ok_or_else(|| missing("emoji"))?,
            on: ty == "react",
        },
        "sync" => ClientMessage::Sync {
            since: f.int(Field::Since)?.ok_or_else(|| missing("since"))?,
        },
        "ping" => ClientMessage::Ping,
        "refresh" => ClientMessage::Refresh { token: token()? },
        "connect" => ClientMessage::Connect { token: token()? },
        "signal" => ClientMessage::Signal {
            room: name(Field::Room)?,
            body: body()?,
        },
        "read" => {
            let inbox = f.flag(Field::Inbox)?;
            match (inbox, f.has(Field::Room)) {
                (true, true) => {
                    return Err(ReplyError::new(
                        ErrorCode::BadRequest,
                        "a read is of a `room` or of the `inbox`, not both",
                    ));
                }
                (false, false) => return Err(missing("room")),
                _ => {}
            }
            ClientMessage::Read {
                room: if inbox {
                    None
                } else {
                    Some(name(Field::Room)?)
                },
                seq: f.int(Field::Seq)?.ok_or_else(|| missing("seq"))?,
            }
        }
        other => {
            return Err(ReplyError::new(
                ErrorCode::UnknownType,
                format!(
                    "unknown type {:?}; expected join, leave, publish, send, presence, history, \
                     sync, signal, read, ping, refresh, connect, edit, delete, react or unreact",
                    super::truncate(other, 32)
                ),
            ));
        }
    })
}

pub(super) fn missing(field: &str) -> ReplyError {
    ReplyError::new(ErrorCode::BadRequest, format!("missing field `{field}`"))
}

/// The error of a field that holds the wrong type.
pub fn not_a(f: Field, what: &str) -> ReplyError {
    ReplyError::new(
        ErrorCode::BadRequest,
        format!("`{}` must be {what}", f.name()),
    )
}
