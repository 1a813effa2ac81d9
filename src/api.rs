//! The server API: JSON over HTTP under `/api/`, for an application's backend to publish, send
//! direct messages, broadcast, disconnect users and look inside (docs/api.md is the contract).
//!
//! Owns the routes, the API key check, request parsing and the JSON responses. It validates
//! with the same rules as the WebSocket protocol (`Name`, the message size limit, JSON bodies)
//! and hands the work to the shards exactly as a client's frame would be, through the router and
//! the store writer: it must not touch shard state or the store itself.

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::config::Config;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::event::{Event, EventKind};
use crate::core::{MsgKey, Name};
use crate::engine::NodesCall;
use crate::http::{json, json_error};
use crate::msg::{EngineMsg, FoldFor, LocalMsg, ReplyTo};
use crate::protocol::{DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, encode};
use crate::shard::Shard;
use crate::shard::runtime::Ctx;

type Body = Full<Bytes>;

/// The sender a message from the API carries when the request names none.
const SYSTEM: &str = "system";

/// An API error: its HTTP status and the `{"code","message"}` body.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    code: &'static str,
    message: Cow<'static, str>,
}

impl ApiError {
    fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError::new(400, ErrorCode::BadRequest.as_str(), message)
    }

    fn unavailable() -> ApiError {
        ApiError::new(
            503,
            "unavailable",
            "the server is shutting down; retry shortly",
        )
    }

    pub fn response(&self) -> Response<Body> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        json_error(status, self.code, &self.message)
    }
}

impl From<ReplyError> for ApiError {
    fn from(e: ReplyError) -> ApiError {
        ApiError::new(e.code.http_status(), e.code.as_str(), e.message)
    }
}

/// Serves one `/api/...` request.
pub async fn handle(ctx: Rc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    match route(ctx, req).await {
        Ok(body) => json(StatusCode::OK, body),
        Err(e) if e.status == 408 => {
            // The rest of the body may still come: the connection cannot be reused.
            let mut response = e.response();
            let close = HeaderValue::from_static("close");
            response.headers_mut().insert(CONNECTION, close);
            response
        }
        Err(e) => e.response(),
    }
}

async fn route(ctx: Rc<Ctx>, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    if !ctx.config.api {
        return Err(ApiError::new(
            404,
            "not_found",
            "the server API is turned off",
        ));
    }
    authorize(&ctx.config, req.headers())?;
    if req.method() == Method::POST && ctx.config.dev_mode() {
        json_content_type(req.headers())?;
    }
    let header_key = idempotency_header(req.headers())?;
    let method = req.method().clone();
    let uri = req.uri().clone();
    let path = uri.path().trim_start_matches("/api/");
    let body = match method {
        Method::POST => read_body(&ctx, req).await?,
        _ => Bytes::new(),
    };
    let mut call = parse_call(
        &method,
        path,
        uri.query().unwrap_or(""),
        &body,
        ctx.config.max_message_size,
        ctx.config.max_body_depth,
    )?;
    if let Some(given) = header_key {
        let (Call::Publish { key, .. } | Call::Send { key, .. }) = &mut call else {
            return Err(ApiError::bad(
                "Idempotency-Key is only taken by /api/publish and /api/send",
            ));
        };
        match key {
            Some(body_key) if *body_key != given => {
                return Err(ApiError::bad(
                    "the Idempotency-Key header and the body's `key` differ; give one of them",
                ));
            }
            _ => *key = Some(given),
        }
    }
    run(&ctx, call).await
}

/// The `Idempotency-Key` header (a synonym of the body's `key`), checked like it.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<MsgKey>, ApiError> {
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

/// Does what `call` asks, through the engine, the shards and the store writer.
async fn run(ctx: &Ctx, call: Call) -> Result<Bytes, ApiError> {
    match call {
        Call::Events { after, limit } => {
            if ctx.persist.feed().is_none() {
                return Err(ApiError::new(
                    404,
                    "not_found",
                    "the event feed is off; start the server with --event-feed true (or a \
                     webhook_url)",
                ));
            }
            let (reply, rx) = oneshot::channel();
            ctx.persist.send(vec![crate::persist::Op::FeedRead {
                after,
                limit,
                reply,
            }]);
            match rx.await {
                Ok(Ok(page)) => Ok(page.json()),
                Ok(Err(e)) => Err(ApiError::new(503, "unavailable", e.to_string())),
                Err(_) => Err(ApiError::unavailable()),
            }
        }
        Call::Publish {
            room,
            from,
            body,
            key,
        } => {
            ask_engine(ctx, |reply| EngineMsg::Publish {
                room,
                from,
                body,
                key,
                reply,
            })
            .await
        }
        Call::Send {
            to,
            from,
            body,
            key,
        } => {
            ask_engine(ctx, |reply| EngineMsg::Direct {
                to,
                from,
                body,
                key,
                reply,
            })
            .await
        }
        Call::Broadcast { from, body } => {
            let frame = encode::broadcast(&from, crate::core::now_ms(), &body);
            let json = crate::ws::payload_of(&frame);
            let n = ask_all(ctx, |reply| LocalMsg::Broadcast {
                frame: frame.clone(),
                reply,
            })
            .await?;
            let nodes = ask_nodes(ctx, |reply| NodesCall::Broadcast { json, reply }).await?;
            Ok(counted(n.iter().sum(), nodes))
        }
        Call::Disconnect { user, reason } => {
            let n = ask_all(ctx, |reply| LocalMsg::Kick {
                user: user.clone(),
                reason: reason.clone(),
                reply,
            })
            .await?;
            let nodes = ask_nodes(ctx, |reply| NodesCall::Kick {
                user,
                reason: reason.unwrap_or_default(),
                reply,
            })
            .await?;
            Ok(counted(n.iter().sum(), nodes))
        }
        Call::Presence(room) => {
            ask_engine(ctx, |reply| EngineMsg::Presence {
                room,
                reply,
                page: None,
            })
            .await
        }
        Call::History {
            room,
            before,
            limit,
            fold,
        } => {
            ask_engine(ctx, |reply| EngineMsg::History {
                room,
                reply,
                before,
                limit,
                fold: fold.then_some(FoldFor { reader: None }),
            })
            .await
        }
        Call::User(user) => ask_engine(ctx, |reply| EngineMsg::UserInfo { user, reply }).await,
        Call::Unread(user) => ask_engine(ctx, |reply| EngineMsg::Unread { user, reply }).await,
        Call::Event { room, from, event } => {
            if let EventKind::React(e) | EventKind::Unreact(e) = &event.kind {
                crate::protocol::check_emoji(e, ctx.config.max_emoji_bytes)?;
            }
            ask_engine(ctx, |reply| EngineMsg::Event {
                room,
                from,
                event,
                api: true,
                reply,
            })
            .await
        }
        Call::Rooms(limit) => {
            let rooms = match ask_nodes(ctx, |reply| NodesCall::Rooms { reply }).await? {
                Some(rooms) => rooms,
                None => {
                    let per_shard = ask_all(ctx, |reply| LocalMsg::Rooms { reply }).await?;
                    per_shard.into_iter().flatten().collect()
                }
            };
            Ok(rooms_json(&ctx.config, rooms, limit))
        }
        Call::Stats => {
            let mine = crate::metrics::stats_json(ctx).await;
            let Some(cluster) = ask_nodes(ctx, |reply| NodesCall::Totals { reply }).await? else {
                return Ok(mine);
            };
            let mut body: serde_json::Value =
                serde_json::from_slice(&mine).map_err(|_| ApiError::unavailable())?;
            body["cluster"] = cluster;
            Ok(body.to_string().into())
        }
    }
}

/// `Authorization: apikey KEY`. With no key configured the API is open: `Config::validate`
/// allows that only in loopback dev mode.
fn authorize(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &config.api_key else {
        return Ok(());
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(401, "unauthorized", "wrong API key")),
        None => Err(ApiError::new(
            401,
            "unauthorized",
            "missing API key; send Authorization: apikey KEY",
        )),
    }
}

/// `Content-Type: application/json`, required of a POST in dev mode, where the API has no key:
/// a page on another site can send a cross-site POST without a CORS preflight only as
/// `text/plain`, a form or no type at all, and the preflight gets no CORS headers.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let essence = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    match essence {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(ApiError::new(
            415,
            "unsupported_media_type",
            "in dev mode the API takes only JSON bodies sent with Content-Type: application/json \
             (so that a web page on another site cannot call it); add that header",
        )),
    }
}

/// `a == b` in a time that depends on their lengths only, for comparing keys.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request body, at most `max_message_size` bytes plus room for the envelope, within
/// `api_body_timeout_ms`: a body that stops short would otherwise hold the connection (and its
/// handshake slot) for good.
async fn read_body(ctx: &Ctx, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limit = ctx.config.max_message_size + 1024;
    let wait = Duration::from_millis(ctx.config.api_body_timeout_ms);
    let read = Limited::new(req.into_body(), limit).collect();
    let Ok(read) = tokio::time::timeout(wait, read).await else {
        return Err(ApiError::new(
            408,
            "request_timeout",
            format!(
                "the request body did not arrive within {} ms; send the whole body that \
                 Content-Length announces",
                wait.as_millis()
            ),
        ));
    };
    match read {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::from(ReplyError::new(
                ErrorCode::TooLarge,
                format!("the request is over the {limit}-byte limit"),
            )))
        }
        Err(e) => Err(ApiError::bad(format!("cannot read the request body: {e}"))),
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

/// Hands a request to the shards (`submit`) and waits for its answer on `rx`. A shard that
/// panicked or stopped (shutdown) makes it `unavailable`.
async fn ask<T>(
    ctx: &Ctx,
    submit: impl FnOnce(&mut Shard),
    rx: oneshot::Receiver<T>,
) -> Result<T, ApiError> {
    ctx.with(submit).ok_or_else(ApiError::unavailable)?;
    ctx.schedule_flush();
    rx.await.map_err(|_| ApiError::unavailable())
}

/// Sends `msg` (built around the call's reply address) to the engine and waits for the JSON
/// answer.
async fn ask_engine(ctx: &Ctx, msg: impl FnOnce(ReplyTo) -> EngineMsg) -> Result<Bytes, ApiError> {
    let (tx, rx) = oneshot::channel();
    ask(
        ctx,
        |s| {
            let reply = s.api_reply(tx);
            s.to_engine(msg(reply))
        },
        rx,
    )
    .await?
    .map_err(ApiError::from)
}

/// Asks the other nodes through the Redis engine (cluster mode): their answer (for a broadcast
/// or a kick, how many nodes got it), or `None` on a single node.
async fn ask_nodes<T>(
    ctx: &Ctx,
    make: impl FnOnce(oneshot::Sender<Option<T>>) -> NodesCall,
) -> Result<Option<T>, ApiError> {
    let (reply, rx) = oneshot::channel();
    let call = make(reply);
    if !ctx
        .with(|s| s.engine().call_nodes(call).is_ok())
        .unwrap_or(false)
    {
        return Ok(None);
    }
    match rx.await {
        Ok(Some(answer)) => Ok(Some(answer)),
        _ => Err(redis_unavailable()),
    }
}

fn redis_unavailable() -> ApiError {
    ApiError::new(
        503,
        "unavailable",
        "Redis is unreachable: done on this node only; retry shortly",
    )
}

/// `{"connections":N}`, with `"nodes"` in cluster mode.
fn counted(connections: usize, nodes: Option<u64>) -> Bytes {
    match nodes {
        Some(nodes) => format!("{{\"connections\":{connections},\"nodes\":{nodes}}}"),
        None => format!("{{\"connections\":{connections}}}"),
    }
    .into()
}

/// Sends `make(reply)` to every shard and collects their answers, one per shard.
async fn ask_all<T>(
    ctx: &Ctx,
    make: impl Fn(oneshot::Sender<T>) -> LocalMsg,
) -> Result<Vec<T>, ApiError> {
    let mut answers = Vec::new();
    ctx.with(|s| {
        s.send_all(|| {
            let (tx, rx) = oneshot::channel();
            answers.push(rx);
            make(tx)
        })
    })
    .ok_or_else(ApiError::unavailable)?;
    ctx.schedule_flush();
    let mut all = Vec::with_capacity(answers.len());
    for rx in answers {
        all.push(rx.await.map_err(|_| ApiError::unavailable())?);
    }
    Ok(all)
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

/// `?before=N&limit=L` of `GET /api/rooms/{room}/history`.
/// `{"rooms":[{"room":R,"members":N,"rule":P,"publish":..,"presence":..},..],"more":B}`: the
/// biggest rooms first (then by name), at most `limit`, each with the rule it obeys.
fn rooms_json(config: &Config, mut rooms: Vec<(Name, u64)>, limit: usize) -> Bytes {
    let more = rooms.len() > limit;
    rooms.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rooms.truncate(limit);
    let rooms: Vec<_> = (rooms.iter())
        .map(|(room, members)| {
            let rule = config.rule(room);
            serde_json::json!({
                "room": &**room,
                "members": members,
                "rule": rule.prefix,
                "publish": rule.publish.as_str(),
                "presence": rule.presence.as_str(),
            })
        })
        .collect();
    serde_json::json!({"rooms": rooms, "more": more})
        .to_string()
        .into()
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
