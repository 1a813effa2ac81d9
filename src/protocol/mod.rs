//! The client protocol: names, client frames parsed into `Request`, and (in `encode`) every server
//! frame, encoded once into a ready-to-write WebSocket frame.
//!
//! Owns the JSON shapes of docs/protocol.md. It must not touch sockets, shards or connection
//! state: parsing is a pure function of the bytes, encoding a pure function of the fields.

pub mod encode;
pub mod fields;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::core::error::{ErrorCode, ReplyError};
use crate::core::{MsgKey, Name, ReqId};

use self::fields::{Field, Fields, missing};

/// Most messages one `history` reply may carry (the contract's limit, not a tunable).
pub const MAX_HISTORY_LIMIT: usize = 100;
/// A `history` request's page size when it gives no `limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 50;
/// Most users one `presence` reply may carry (the contract's limit, not a tunable).
pub const MAX_PRESENCE_LIMIT: usize = 1000;
/// A `presence` request's page size when it gives no `limit`.
pub const DEFAULT_PRESENCE_LIMIT: usize = 100;

/// A parsed client frame.
#[derive(Debug)]
pub struct Request<'a> {
    pub id: Option<ReqId>,
    pub msg: ClientMessage<'a>,
}

/// What a client asked for. `body` borrows the frame's bytes: it is validated JSON, never parsed
/// into a tree.
#[derive(Debug)]
pub enum ClientMessage<'a> {
    /// `since`: replay the stored messages after this seq, then go live.
    Join {
        room: Name,
        since: Option<u64>,
        /// The room's epoch from an earlier join ack (cluster mode).
        epoch: Option<u64>,
    },
    Leave {
        room: Name,
    },
    /// `key`: a repeat of a stored `(sender, key)` is not stored again (docs/protocol.md).
    Publish {
        room: Name,
        body: &'a RawValue,
        key: Option<MsgKey>,
    },
    Send {
        to: Name,
        body: &'a RawValue,
        key: Option<MsgKey>,
    },
    /// One page of who is in the room: the users after `after` (byte order), at most `limit`.
    Presence {
        room: Name,
        after: Option<Name>,
        limit: usize,
    },
    /// Stored messages before `before` (all if `None`), newest first, at most `limit`.
    History {
        room: Name,
        before: Option<u64>,
        limit: usize,
        /// Messages in their current state, edits, deletes and reactions folded in.
        fold: bool,
    },
    /// A new body for message `target` (its author's only).
    Edit {
        room: Name,
        target: u64,
        body: &'a RawValue,
    },
    /// Delete message `target` (its author's only; the body is kept in the store).
    Delete {
        room: Name,
        target: u64,
    },
    /// Add (`on`) or take back a reaction to message `target`.
    React {
        room: Name,
        target: u64,
        emoji: Cow<'a, str>,
        on: bool,
    },
    /// The inbox's stored messages after `since`.
    Sync {
        since: u64,
    },
    Ping,
    /// A new token for the same user: the connection's expiry becomes its `exp`.
    Refresh {
        token: Cow<'a, str>,
    },
    /// The first frame of a connection that authenticates in-band (`first_frame_auth`).
    Connect {
        token: Cow<'a, str>,
    },
    /// A signal (typing…) for the room's other members: not stored, no seq.
    Signal {
        room: Name,
        body: &'a RawValue,
    },
    /// The user has read `room` (or, with `None`, the inbox) up to `seq`.
    Read {
        room: Option<Name>,
        seq: u64,
    },
}

/// A frame that could not be parsed; `id` is set when the frame had a valid one, to echo it.
#[derive(Debug, PartialEq, Eq)]
pub struct ParseError {
    pub id: Option<ReqId>,
    pub error: ReplyError,
}

/// Every field as raw JSON, so a mistyped field is reported by name and the `id` still echoed.
/// `present` keeps an explicit `null` as a value (a `null` body is a valid body).
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "present")]
    ty: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    to: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    body: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    before: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    after: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    key: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    inbox: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    target: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    emoji: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    fold: Option<&'a RawValue>,
}

pub(crate) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame's payload. The body is checked as JSON by the same pass.
pub fn parse(text: &str) -> Result<Request<'_>, ParseError> {
    let bad = |message: String| ParseError {
        id: None,
        error: ReplyError::new(ErrorCode::BadRequest, message),
    };
    if !text.trim_start().starts_with('{') {
        return Err(bad("a frame must be one JSON object".into()));
    }
    let env: Envelope<'_> =
        serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let id = match env.id {
        None => None,
        Some(raw) => Some(ReqId::parse(raw).map_err(|error| ParseError { id: None, error })?),
    };
    let with_id = |error: ReplyError| ParseError {
        id: id.clone(),
        error,
    };
    let ty = env
        .ty
        .ok_or_else(|| with_id(missing("type")))
        .and_then(|raw| string_field("type", raw).map_err(with_id))?;
    let msg = fields::message(&ty, &env).map_err(with_id)?;
    Ok(Request { id, msg })
}

impl<'a> Envelope<'a> {
    fn raw(&self, f: Field) -> Option<&'a RawValue> {
        match f {
            Field::Room => self.room,
            Field::To => self.to,
            Field::Since => self.since,
            Field::Epoch => self.epoch,
            Field::Before => self.before,
            Field::Limit => self.limit,
            Field::Token => self.token,
            Field::After => self.after,
            Field::Key => self.key,
            Field::Seq => self.seq,
            Field::Inbox => self.inbox,
            Field::Target => self.target,
            Field::Emoji => self.emoji,
            Field::Fold => self.fold,
        }
    }
}

/// A JSON frame's members, each read only when its type asks for it.
impl<'a> Fields<'a> for Envelope<'a> {
    fn has(&self, f: Field) -> bool {
        self.raw(f).is_some()
    }
    fn string(&self, f: Field) -> Result<Option<Cow<'a, str>>, ReplyError> {
        self.raw(f)
            .map(|raw| string_field(f.name(), raw))
            .transpose()
    }
    fn int(&self, f: Field) -> Result<Option<u64>, ReplyError> {
        (self.raw(f))
            .map(|raw| {
                serde_json::from_str::<u64>(raw.get())
                    .map_err(|_| fields::not_a(f, "a non-negative integer"))
            })
            .transpose()
    }
    fn flag(&self, f: Field) -> Result<bool, ReplyError> {
        match self.raw(f).map(RawValue::get) {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(fields::not_a(f, "true or false")),
        }
    }
    fn body(&self) -> Option<&'a RawValue> {
        self.body
    }
}

/// Checks that a `body` nests arrays and objects at most `max` deep (`max_body_depth`). The
/// body is relayed as it is to every recipient, and parsers that bound depth (Python's `json`,
/// serde_json's default) fail on deeper ones. `body` is valid JSON (serde_json checked it as
/// a `RawValue`), so brackets inside strings are the only ones to skip. Cost: one pass over
/// the bytes, no allocation.
pub fn check_body_depth(body: &str, max: usize) -> Result<(), ReplyError> {
    if nests_deeper(body.as_bytes(), max) {
        return Err(ReplyError::new(
            ErrorCode::BadRequest,
            format!("body is nested more than {max} levels deep (max_body_depth); flatten it"),
        ));
    }
    Ok(())
}

/// An emoji (or any short reaction name): 1 to `max` bytes, no control characters.
pub fn check_emoji(emoji: &str, max: usize) -> Result<(), ReplyError> {
    if emoji.is_empty() || emoji.len() > max || emoji.chars().any(char::is_control) {
        return Err(ReplyError::new(
            ErrorCode::BadRequest,
            format!(
                "`emoji` must be 1 to {max} bytes (max_emoji_bytes) without control \
                 characters, e.g. \"👍\""
            ),
        ));
    }
    Ok(())
}

/// Whether arrays and objects in the JSON text `json` nest more than `max` deep.
fn nests_deeper(json: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                // To the closing quote; an escape takes the byte after it (`\"` is an escaped
                // backslash, then the end).
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

fn string_field<'a>(field: &str, raw: &'a RawValue) -> Result<Cow<'a, str>, ReplyError> {
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map_err(|_| ReplyError::new(ErrorCode::BadRequest, format!("`{field}` must be a string")))
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ParseError {
        parse(text).unwrap_err()
    }

    #[test]
    fn parses_each_type_and_keeps_body_bytes() {
        let r = parse(r#"{"type":"publish","room":"r1","body":{"a" : [1, 2]},"id":7}"#).unwrap();
        assert_eq!(r.id.unwrap().as_json(), "7");
        match r.msg {
            ClientMessage::Publish { room, body, key } => {
                assert_eq!(&*room, "r1");
                assert_eq!(body.get(), r#"{"a" : [1, 2]}"#);
                assert_eq!(key, None);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"ping"}"#).unwrap().msg,
            ClientMessage::Ping
        ));
        match parse(r#"{"type":"publish","room":"r","body":null}"#)
            .unwrap()
            .msg
        {
            ClientMessage::Publish { body, .. } => assert_eq!(body.get(), "null"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"send","to":"u@x","body":"hi"}"#)
                .unwrap()
                .msg,
            ClientMessage::Send { .. }
        ));
    }

    #[test]
    fn publish_and_send_take_a_key() {
        match parse(r#"{"type":"publish","room":"r","body":1,"key":"k-1"}"#)
            .unwrap()
            .msg
        {
            ClientMessage::Publish { key, .. } => assert_eq!(key.unwrap().as_str(), "k-1"),
            other => panic!("{other:?}"),
        }
        match parse(r#"{"type":"send","to":"u","body":1,"key":"k\u0032"}"#)
            .unwrap()
            .msg
        {
            ClientMessage::Send { key, .. } => assert_eq!(key.unwrap().as_str(), "k2"),
            other => panic!("{other:?}"),
        }
        for key in [r#""""#, "5", "null", r#""a b""#, r#""é""#] {
            let text = format!(r#"{{"type":"publish","room":"r","body":1,"key":{key},"id":4}}"#);
            let e = err(&text);
            assert_eq!(e.error.code, ErrorCode::BadRequest, "{text}");
            assert!(e.error.message.contains("`key`"), "{}", e.error.message);
            assert_eq!(e.id.unwrap().as_json(), "4");
        }
    }

    #[test]
    fn errors_echo_a_valid_id() {
        let e = err(r#"{"type":"publish","room":5,"id":"x1","body":1}"#);
        assert_eq!(e.id.unwrap().as_json(), r#""x1""#);
        assert_eq!(e.error.code, ErrorCode::BadRequest);
        assert!(e.error.message.contains("room"));

        let e = err(r#"{"type":"nope","id":1}"#);
        assert_eq!(e.error.code, ErrorCode::UnknownType);
        assert_eq!(e.id.unwrap().as_json(), "1");

        let e = err(r#"{"type":"join","room":"bad name","id":2}"#);
        assert_eq!(e.error.code, ErrorCode::InvalidName);
    }

    #[test]
    fn rejects_bad_shapes() {
        for text in [
            "not json",
            "[1,2]",
            "{\"type\":\"ping\"",
            r#"{"id":1}"#,
            r#"{"type":"publish","room":"r"}"#,
            r#"{"type":"ping","id":{"a":1}}"#,
            r#"{"type":"ping","id":true}"#,
            r#"{"type":"ping","id":null}"#,
        ] {
            assert_eq!(err(text).error.code, ErrorCode::BadRequest, "{text}");
        }
        let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(63));
        assert!(err(&long).error.message.contains("64"));
    }

    #[test]
    fn recovery_fields() {
        match parse(r#"{"type":"join","room":"r","since":41}"#)
            .unwrap()
            .msg
        {
            ClientMessage::Join { since, .. } => assert_eq!(since, Some(41)),
            other => panic!("{other:?}"),
        }
        match parse(r#"{"type":"history","room":"r","before":9}"#)
            .unwrap()
            .msg
        {
            ClientMessage::History { before, limit, .. } => {
                assert_eq!((before, limit), (Some(9), DEFAULT_HISTORY_LIMIT))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(r#"{"type":"sync","since":0}"#).unwrap().msg,
            ClientMessage::Sync { since: 0 }
        ));
        for text in [
            r#"{"type":"join","room":"r","since":-1,"id":1}"#,
            r#"{"type":"join","room":"r","since":"4","id":1}"#,
            r#"{"type":"history","room":"r","limit":101,"id":1}"#,
            r#"{"type":"history","room":"r","limit":0,"id":1}"#,
            r#"{"type":"history","room":"r","before":1.5,"id":1}"#,
            r#"{"type":"sync","id":1}"#,
        ] {
            let e = err(text);
            assert_eq!(e.error.code, ErrorCode::BadRequest, "{text}");
            assert_eq!(e.id.unwrap().as_json(), "1", "{text}");
        }
    }

    #[test]
    fn presence_takes_a_page() {
        match parse(r#"{"type":"presence","room":"r"}"#).unwrap().msg {
            ClientMessage::Presence { after, limit, .. } => {
                assert_eq!((after, limit), (None, DEFAULT_PRESENCE_LIMIT))
            }
            other => panic!("{other:?}"),
        }
        match parse(r#"{"type":"presence","room":"r","after":"bo","limit":1000}"#)
            .unwrap()
            .msg
        {
            ClientMessage::Presence { after, limit, .. } => {
                assert_eq!((after.as_deref(), limit), (Some("bo"), 1000))
            }
            other => panic!("{other:?}"),
        }
        for (text, code) in [
            (
                r#"{"type":"presence","room":"r","limit":1001,"id":1}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"presence","room":"r","limit":0,"id":1}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"presence","room":"r","after":5,"id":1}"#,
                ErrorCode::BadRequest,
            ),
            (
                r#"{"type":"presence","room":"r","after":"a b","id":1}"#,
                ErrorCode::InvalidName,
            ),
        ] {
            let e = err(text);
            assert_eq!(
                (e.error.code, e.id.unwrap().as_json()),
                (code, "1"),
                "{text}"
            );
        }
    }

    #[test]
    fn refresh_takes_a_string_token() {
        match parse(r#"{"type":"refresh","token":"a.b.c","id":3}"#)
            .unwrap()
            .msg
        {
            ClientMessage::Refresh { token } => assert_eq!(token, "a.b.c"),
            other => panic!("{other:?}"),
        }
        for text in [
            r#"{"type":"refresh","id":1}"#,
            r#"{"type":"refresh","token":5,"id":1}"#,
        ] {
            let e = err(text);
            assert_eq!(e.error.code, ErrorCode::BadRequest, "{text}");
            assert!(e.error.message.contains("token"), "{text}");
        }
    }

    #[test]
    fn body_depth_counts_brackets_outside_strings() {
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let deep = |body: &str, max| nests_deeper(body.as_bytes(), max);
        assert!(!deep(&nested(64), 64), "exactly at the limit");
        assert!(deep(&nested(65), 64), "one over");
        assert!(
            !deep("1", 0) && !deep(r#""[{""#, 0),
            "scalars have no depth"
        );
        assert!(deep("[]", 0) && !deep("[]", 1));
        assert!(deep(r#"{"a":{"b":[1]}}"#, 2) && !deep(r#"{"a":{"b":[1]}}"#, 3));
        // Siblings do not add up: depth is the deepest path.
        assert!(!deep(r#"[[1],[2],{"a":[3]},[4]]"#, 3) && deep(r#"[[1],{"a":[3]}]"#, 2));
        // Brackets in strings, also behind escaped quotes and backslashes, are not nesting.
        assert!(!deep(r#"["[[[{{{", "]]]"]"#, 1));
        assert!(!deep(r#"["\"[[[", "\\", "x\\\"[["]"#, 1));
        assert!(
            deep(r#"["\\", [[1]]]"#, 2),
            "a string ending in a backslash ends"
        );
        assert!(!deep(r#"{"k[{": "\u005b[", "v": ["]"]}"#, 2));
        let err = check_body_depth(&nested(65), 64).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("64") && err.message.contains("max_body_depth"));
        assert!(check_body_depth(&nested(64), 64).is_ok());
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let r = parse(r#"{"type":"join","room":"r\u0031"}"#).unwrap();
        assert!(matches!(r.msg, ClientMessage::Join { room, .. } if &*room == "r1"));
    }
}
