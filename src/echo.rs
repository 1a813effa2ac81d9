//! `/echo`: a WebSocket endpoint that sends every text and binary message back, so a conformance
//! suite (or tests/conformance.rs) can exercise the server's own frame layer end to end.
//!
//! Owns the echo loop only. It reuses `conn` for all framing and must not touch shard state:
//! an echo connection is in no room, no user's sessions and no metrics. Served only when
//! `Config::echo` is on, which `Config::validate` allows in dev mode only.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};

use crate::auth::Identity;
use crate::conn::{Conn, Event, FrameLimits, ReadStatus};
use crate::core::ConnId;
use crate::core::Name;
use crate::core::error::{CloseCode, HandshakeError};
use crate::http;
use crate::shard::runtime::{self, Ctx};
use crate::ws::{self, FrameBuf};

/// Answers the upgrade and starts the echo task. permessage-deflate is negotiated as on `/ws`
/// (with `compression_min_bytes` set), so a conformance suite can test the server's RFC 7692
/// code too.
pub fn upgrade(ctx: Rc<Ctx>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let why = "expected a WebSocket upgrade (GET /echo with Upgrade: websocket)";
        return http::error(&HandshakeError::BadRequest(why.into()));
    }
    let deflate = http::negotiate_deflate(&ctx.config, &req);
    let started = http::upgrade(&mut req, deflate.map(|d| d.1), None, move |up| {
        run(ctx, up, deflate.map(|d| d.0))
    });
    started.unwrap_or_else(|e| http::error(&e))
}

/// Queues the echo of one event; a close or an oversized message starts the closing handshake.
fn echo(conn: &Conn, event: Event<'_>) {
    let frame = |opcode, payload: &[u8]| {
        let mut f = FrameBuf::with_capacity(payload.len());
        f.push(payload);
        Rc::new(f.finish(opcode))
    };
    match event {
        Event::Text(text) => _ = conn.push(frame(ws::OP_TEXT, text.as_bytes())),
        Event::Binary(bytes) => _ = conn.push(frame(ws::OP_BINARY, bytes)),
        Event::Ping(payload) => _ = conn.push(Rc::new(ws::control_frame(ws::OP_PONG, payload))),
        Event::TooLarge => conn.begin_close(CloseCode::TooBig),
        Event::Close => {
            // Echoes of messages that came before the close go out before it.
            conn.flush();
            conn.begin_close(CloseCode::Normal);
        }
    }
}

async fn run(ctx: Rc<Ctx>, up: http::Upgraded, deflate: Option<usize>) {
    let http::Upgraded {
        stream,
        early,
        head,
    } = up;
    let identity = Identity {
        user: Name::new("echo").expect("a valid name"),
        rooms: None,
        exp: None,
        info: None,
    };
    let conn = Conn::new(
        ConnId::new(ctx.router.node(), ctx.id, 0),
        stream,
        &identity,
        &ctx.config.rates(),
        FrameLimits::of(&ctx.config),
    );
    // The held 101 goes first, queued before compression is on so it leaves as it is.
    if !head.is_empty() {
        conn.push(Rc::new(head));
    }
    let conn = match deflate {
        Some(min) => conn.deflating(min),
        None => conn,
    };
    let config = &ctx.config;
    if let Err(code) = conn.preload(&early, &mut |ev| echo(&conn, ev)) {
        conn.begin_close(code);
    }
    drop(early);
    let stream = conn.tcp().expect("built on a TCP stream");
    loop {
        conn.flush();
        if conn.queued_bytes() > config.max_queue_bytes {
            conn.begin_close(CloseCode::SlowConsumer);
        }
        if conn.closing().is_some() || conn.is_broken() {
            break;
        }
        tokio::select! {
            biased;
            _ = conn.kicked() => {}
            r = stream.writable(), if conn.wants_write() => if r.is_err() { break },
            r = stream.readable() => {
                if r.is_err() {
                    break;
                }
                match conn.read_ready(&mut |ev| echo(&conn, ev)) {
                    Ok(ReadStatus::Open) => {}
                    Ok(ReadStatus::Eof) => break,
                    Err(code) => {
                        conn.flush();
                        conn.begin_close(code);
                    }
                }
            }
        }
    }
    if conn.closing().is_some() && !conn.is_broken() {
        let timeout = Duration::from_millis(config.close_timeout_ms);
        let _ = tokio::time::timeout(timeout, runtime::finish_close(&conn, stream)).await;
    }
}
