//! Parsing an API request into a `Call`: the path, the query and the JSON body, checked with
//! the protocol's rules (`Name`, sizes, nesting). Pure: it must not touch the shards, the
//! engine or the store (it is fuzzed on its own).

use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ApiError;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::event::{Event, EventKind};
use crate::core::{MsgKey, Name};
use crate::protocol::{DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT};

/// The sender a message from the API carries when the request names none.
const SYSTEM: &str = "system";

/// The `Idempotency-Key` header (a synonym of the body's `key`), checked like it.
pub(super) fn idempotency_header(headers: &HeaderMap) -> Result<Option<MsgKey>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let text = (value.to_str()).map_err(|_| ApiError::from(MsgKey::refusal()))?;
    msg_key(text).map(Some)
}

fn msg_key(text: &str) -> Result<MsgKey, ApiError> {
    MsgKey::new(text).map_err(ApiError::from)
}

/// One API request, parsed and checked; nothing has been done yet.
#[derive(Debug)]
pub enum Call {
    /// `POST /api/publish {"room","body","from"?,"key"?}` → `{"seq":N}`: sequenced, stored
    /// and delivered by the room's home exactly like a client's publish (a repeated `key`:
    /// `{"seq":N,"dup":true}`).
    Publish {
        room: Name,
        from: Name,
        body: Bytes,
        key: Option<MsgKey>,
    },
    /// `POST /api/send {"to","body","from"?,"key"?}` → `{"seq":N}`: a direct message, stored
    /// in the recipient's inbox (delivered at the next connect if the recipient is offline).
    Send {
        to: Name,
        from: Name,
        body: Bytes,
        key: Option<MsgKey>,
    },
    /// `POST /api/broadcast {"body","from"?}` → `{"connections":N}`: one frame, encoded once,
    /// to every connection. Not stored: it is for whoever is connected now.
    Broadcast { from: Name, body: Bytes },
    /// `POST /api/disconnect {"user","reason"?}` → `{"connections":N}`: closes every
    /// connection of the user with 4501 (kicked), the reason in the close frame.
    Disconnect { user: Name, reason: Option<String> },
    /// `GET /api/rooms/{room}/presence` → `{"room","users":[..]}`.
    Presence(Name),
    /// `GET /api/rooms/{room}/history?before=N&limit=L` → the `history` reply of the protocol
    /// (newest first, `more`), without an `id`.
    History {
        room: Name,
        before: Option<u64>,
        limit: usize,
        /// `fold=true`: messages in their current state (docs/protocol.md).
        fold: bool,
    },
    /// `GET /api/users/{user}` → `{"user","online","connections"}`.
    User(Name),
    /// `GET /api/users/{user}/unread` → `{"user","inbox":{seq,read,unread},"rooms":{R:{..}}}`.
    Unread(Name),
    /// `GET /api/stats`.
    Stats,
    /// The rooms with members, the biggest first, at most this many.
    Rooms(usize),
    /// `GET /api/events?after=C&limit=N` → `{"dropped","next","events":[..]}`: the event feed
    /// after cursor `after` (docs/hooks.md).
    Events { after: u64, limit: usize },
    /// `POST /api/edit {"room","target","body","from"?}`, `POST /api/delete
    /// {"room","target","hard"?,"from"?}`, `POST /api/react` and `/api/unreact`
    /// `{"room","target","emoji","from"?}` → `{"seq":N}` (or `{"noop":true}`): an edit, delete
    /// or reaction with the API's rights (any message; `hard` erases the body from the store).
    Event {
        room: Name,
        from: Name,
        event: Event,
    },
}

/// Parses a request: `path` is what follows `/api/`. It checks everything that can be checked
/// without the shards (names, JSON, sizes, query numbers). Pure, so it is fuzzed on its own
/// (fuzz/fuzz_targets/api_request.rs).
pub fn parse_call(
    method: &Method,
    path: &str,
    query: &str,
    body: &[u8],
    max_message_size: usize,
    max_body_depth: usize,
) -> Result<Call, ApiError> {
    let segments: Vec<&str> = path.split('/').collect();
    let size = |body: &RawValue| body_bytes(body, max_message_size, max_body_depth);
    match (method, segments.as_slice()) {
        (&Method::POST, ["publish"]) => {
            let req: PublishRequest<'_> = parse(body)?;
            Ok(Call::Publish {
                room: name("room", req.room)?,
                from: sender(req.from)?,
                body: size(req.body)?,
                key: req.key.as_deref().map(msg_key).transpose()?,
            })
        }
        (&Method::POST, ["send"]) => {
            let req: SendRequest<'_> = parse(body)?;
            Ok(Call::Send {
                to: name("to", req.to)?,
                from: sender(req.from)?,
                body: size(req.body)?,
                key: req.key.as_deref().map(msg_key).transpose()?,
            })
        }
        (&Method::POST, ["broadcast"]) => {
            let req: BroadcastRequest<'_> = parse(body)?;
            Ok(Call::Broadcast {
                from: sender(req.from)?,
                body: size(req.body)?,
            })
        }
        (&Method::POST, ["disconnect"]) => {
            let req: DisconnectRequest<'_> = parse(body)?;
            Ok(Call::Disconnect {
                user: name("user", req.user)?,
                reason: req.reason,
            })
        }
        (&Method::POST, [kind @ ("edit" | "delete" | "react" | "unreact")]) => {
            let req: EventRequest<'_> = parse(body)?;
            let needed = |field: &str| ApiError::bad(format!("missing field `{field}`"));
            let kind = match *kind {
                "edit" => EventKind::Edit(size(req.body.ok_or_else(|| needed("body"))?)?),
                "delete" => EventKind::Delete {
                    hard: req.hard.unwrap_or(false),
                },
                "react" => EventKind::React(req.emoji.ok_or_else(|| needed("emoji"))?),
                _ => EventKind::Unreact(req.emoji.ok_or_else(|| needed("emoji"))?),
            };
            if req.target == 0 {
                return Err(ApiError::bad(
                    "`target` must be the seq of a message (from 1)",
                ));
            }
            Ok(Call::Event {
                room: name("room", req.room)?,
                from: sender(req.from)?,
                event: Event {
                    target: req.target,
                    kind,
                },
            })
        }
        (&Method::GET, ["rooms", room, "presence"]) => Ok(Call::Presence(name("room", room)?)),
        (&Method::GET, ["rooms", room, "history"]) => {
            let (before, limit, fold) = history_query(query)?;
            Ok(Call::History {
                room: name("room", room)?,
                before,
                limit,
                fold,
            })
        }
        (&Method::GET, ["users", user]) => Ok(Call::User(name("user", user)?)),
        (&Method::GET, ["users", user, "unread"]) => Ok(Call::Unread(name("user", user)?)),
        (&Method::GET, ["stats"]) => Ok(Call::Stats),
        (&Method::GET, ["rooms"]) => Ok(Call::Rooms(rooms_query(query)?)),
        (&Method::GET, ["events"]) => events_query(query),
        (_, ["events"]) => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{method} is not allowed on /api/{path}"),
        )),
        (_, ["publish" | "send" | "broadcast" | "disconnect"])
        | (_, ["edit" | "delete" | "react" | "unreact"])
        | (_, ["rooms", _, "presence" | "history"])
        | (_, ["users", _] | ["users", _, "unread"] | ["stats"] | ["rooms"]) => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{method} is not allowed on /api/{path}"),
        )),
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!("no such endpoint: /api/{path}"),
        )),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid request: {e}")))
}

fn name(field: &str, value: &str) -> Result<Name, ApiError> {
    Name::new(value)
        .map_err(|e| ApiError::from(ReplyError::new(e.code, format!("`{field}`: {}", e.message))))
}

/// `from`, or `system` when the request names no sender.
fn sender(from: Option<&str>) -> Result<Name, ApiError> {
    name("from", from.unwrap_or(SYSTEM))
}

/// The body's bytes, within the message size and nesting limits.
fn body_bytes(body: &RawValue, limit: usize, max_depth: usize) -> Result<Bytes, ApiError> {
    if body.get().len() > limit {
        return Err(ApiError::from(ReplyError::new(
            ErrorCode::TooLarge,
            format!("body is over the {limit}-byte limit"),
        )));
    }
    crate::protocol::check_body_depth(body.get(), max_depth)?;
    Ok(Bytes::copy_from_slice(body.get().as_bytes()))
}

#[derive(Deserialize)]
struct PublishRequest<'a> {
    room: &'a str,
    #[serde(borrow)]
    body: &'a RawValue,
    from: Option<&'a str>,
    #[serde(borrow)]
    key: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct SendRequest<'a> {
    to: &'a str,
    #[serde(borrow)]
    body: &'a RawValue,
    from: Option<&'a str>,
    #[serde(borrow)]
    key: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BroadcastRequest<'a> {
    #[serde(borrow)]
    body: &'a RawValue,
    from: Option<&'a str>,
}

#[derive(Deserialize)]
struct EventRequest<'a> {
    room: &'a str,
    target: u64,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    emoji: Option<String>,
    hard: Option<bool>,
    from: Option<&'a str>,
}

#[derive(Deserialize)]
struct DisconnectRequest<'a> {
    user: &'a str,
    reason: Option<String>,
}

/// `GET /api/rooms`'s `limit`: 1 to 1000, default 100.
fn rooms_query(query: &str) -> Result<usize, ApiError> {
    let mut limit = 100;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if let ("limit", value) = pair.split_once('=').unwrap_or((pair, "")) {
            limit = value
                .parse()
                .map_err(|_| ApiError::bad("`limit` must be a non-negative integer"))?;
        }
    }
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad("`limit` must be 1 to 1000"));
    }
    Ok(limit)
}

/// Most events one `GET /api/events` returns.
const MAX_EVENTS_LIMIT: usize = 10_000;

fn events_query(query: &str) -> Result<Call, ApiError> {
    let (mut after, mut limit) = (0, 100);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value.parse::<u64>().map_err(|_| {
                ApiError::bad(format!(
                    "`{key}` must be a non-negative integer (a cursor from the feed)"
                ))
            })
        };
        match key {
            "after" => after = number()?,
            "limit" => limit = number()?.min(u64::from(u32::MAX)) as usize,
            _ => {}
        }
    }
    if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
        return Err(ApiError::bad(format!(
            "`limit` must be 1 to {MAX_EVENTS_LIMIT}"
        )));
    }
    Ok(Call::Events { after, limit })
}

/// `?before=N&limit=L&fold=B` of `GET /api/rooms/{room}/history`.
fn history_query(query: &str) -> Result<(Option<u64>, usize, bool), ApiError> {
    let mut fold = false;
    let mut before = None;
    let mut limit = DEFAULT_HISTORY_LIMIT;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| ApiError::bad(format!("`{key}` must be a non-negative integer")))
        };
        match key {
            "before" => before = Some(number()?),
            "limit" => limit = number()? as usize,
            "fold" => fold = value == "true",
            _ => {}
        }
    }
    if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
        return Err(ApiError::bad(format!(
            "`limit` must be 1 to {MAX_HISTORY_LIMIT}"
        )));
    }
    Ok((before, limit, fold))
}
