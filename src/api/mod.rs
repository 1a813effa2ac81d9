//! The server API: JSON over HTTP under `/api/`, for an application's backend to publish, send
//! direct messages, broadcast, disconnect users and look inside (docs/api.md is the contract).
//!
//! Owns the routes, the API key check, request parsing and the JSON responses. It validates
//! with the same rules as the WebSocket protocol (`Name`, the message size limit, JSON bodies)
//! and hands the work to the shards exactly as a client's frame would be, through the router and
//! the store writer: it must not touch shard state or the store itself. `call` parses a request
//! (pure, fuzzed), `error` maps failures to HTTP statuses; this file runs the calls.

mod call;
mod error;

use call::idempotency_header;
pub use call::{Call, parse_call};
pub use error::ApiError;

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::core::Name;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::event::EventKind;
use crate::engine::NodesCall;
use crate::http::json;
use crate::msg::{EngineMsg, FoldFor, LocalMsg, ReplyTo};
use crate::protocol::encode;
use crate::shard::Shard;
use crate::shard::runtime::Ctx;

type Body = Full<Bytes>;

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
