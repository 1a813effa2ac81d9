//! The WebSocket handshake's middle: admission by the user's home (`admit`, undone by a dropped
//! `Reservation`), the 101 answer (`upgrade`), the stream once hyper lets go of it (`Upgraded`),
//! and its hand-over to the shard as a connection (`start`).

use std::rc::Rc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::auth::Identity;
use crate::config::Config;
use crate::conn::{Conn, FrameLimits};
use crate::core::ConnId;
use crate::core::error::HandshakeError;
use crate::shard::runtime::{self, Ctx};
use crate::wire::Format;

use super::io::HandshakeIo;
use super::response::Body;
/// Undoes a handshake's reservation if the handshake does not reach the connection task.
pub struct Reservation {
    ctx: Rc<Ctx>,
    conn: ConnId,
    /// The home's verdict, until it has been read.
    verdict: Option<oneshot::Receiver<Result<u64, HandshakeError>>>,
    /// The user's home counted this connection; undoing must tell it.
    admitted: bool,
    done: bool,
}

impl Reservation {
    /// The handshake reached the connection task, which now owns the cleanup.
    pub fn fulfil(mut self) -> ConnId {
        self.done = true;
        self.conn
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.done {
            // Dropped while waiting (the client went away): the engine may have admitted the
            // connection already, and must then be told, or it would count it forever. Closing
            // first makes the answer final: either it is here now (and says whether it was
            // admitted), or it has not reached the shard yet, which then unregisters the
            // connection itself when it does (`Shard::admitted`).
            let unread = self.verdict.as_mut().map(|rx| {
                rx.close();
                rx.try_recv()
            });
            let admitted = self.admitted || matches!(unread, Some(Ok(Ok(_))));
            let conn = self.conn;
            self.ctx.with(|s| s.abandon(conn, admitted));
        }
    }
}

/// Asks the user's home to admit a connection (session policy, connection limit). Returns the
/// reservation, which undoes the admission if dropped before `fulfil`, and the inbox seq.
pub async fn admit(
    ctx: &Rc<Ctx>,
    identity: &Identity,
) -> Result<(Reservation, u64), HandshakeError> {
    let (tx, rx) = oneshot::channel();
    let user = identity.user.clone();
    let Some(conn) = ctx.with(|s| s.register(user, tx)) else {
        return Err(HandshakeError::Unavailable);
    };
    ctx.schedule_flush();
    let mut reservation = Reservation {
        ctx: ctx.clone(),
        conn,
        verdict: Some(rx),
        admitted: false,
        done: false,
    };
    let verdict = reservation.verdict.as_mut().expect("just set").await;
    reservation.verdict = None;
    let inbox_seq = verdict.unwrap_or(Err(HandshakeError::Unavailable))?;
    reservation.admitted = true;
    Ok((reservation, inbox_seq))
}

/// Answers an upgrade request with 101, and once hyper lets go of the TCP stream runs `then`
/// on it (`Upgraded`: the 101 is still to be sent). If the upgrade fails, `then` is dropped
/// unrun (a reservation it holds is undone). `extensions` and `protocol` are the negotiated
/// `Sec-WebSocket-Extensions` and `Sec-WebSocket-Protocol` responses, if any.
pub fn upgrade<F: Future<Output = ()> + 'static>(
    req: &mut Request<Incoming>,
    extensions: Option<&'static str>,
    protocol: Option<&'static str>,
    then: impl FnOnce(Upgraded) -> F + 'static,
) -> Result<Response<Body>, HandshakeError> {
    let (mut response, upgrade) = fastwebsockets::upgrade::upgrade(req)
        .map_err(|e| HandshakeError::BadRequest(format!("bad upgrade request: {e}")))?;
    if let Some(ext) = extensions {
        let value = HeaderValue::from_static(ext);
        response
            .headers_mut()
            .insert(SEC_WEBSOCKET_EXTENSIONS, value);
    }
    if let Some(name) = protocol {
        let value = HeaderValue::from_static(name);
        response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, value);
    }
    tokio::task::spawn_local(async move {
        if let Some(up) = upgraded(upgrade).await {
            then(up).await;
        }
    });
    Ok(response.map(|_| Full::new(Bytes::new())))
}

/// permessage-deflate for this upgrade: with `compression_min_bytes` set and an offer the server
/// accepts, the minimum and the `Sec-WebSocket-Extensions` answer.
pub fn negotiate_deflate(
    config: &Config,
    req: &Request<Incoming>,
) -> Option<(usize, &'static str)> {
    let min = config.compression_min_bytes?;
    let offers = req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS).iter();
    crate::deflate::negotiate(offers.filter_map(|v| v.to_str().ok())).map(|r| (min, r))
}

/// The subprotocol for this upgrade (`wire::negotiate`): JSON when none is asked, and a 400
/// when only subprotocols this server does not speak are.
pub fn negotiate_protocol(
    req: &Request<Incoming>,
) -> Result<(Format, Option<&'static str>), HandshakeError> {
    let offers = req.headers().get_all(SEC_WEBSOCKET_PROTOCOL).iter();
    crate::wire::negotiate(offers.filter_map(|v| v.to_str().ok())).map_err(|offered| {
        HandshakeError::BadRequest(format!(
            "unknown subprotocol {offered:?} (Sec-WebSocket-Protocol); this server speaks {} \
             (JSON text frames, the default) and {} (binary frames)",
            crate::wire::JSON,
            crate::wire::PROTO
        ))
    })
}

/// A connection once hyper has let go of it.
pub struct Upgraded {
    pub stream: TcpStream,
    /// What hyper read past the request (requests the client sent right behind it).
    pub early: Bytes,
    /// The `101 Switching Protocols` response, not yet written (`HandshakeIo`): its taker sends
    /// it before anything else.
    pub head: Bytes,
}

/// The TCP stream under a completed upgrade.
async fn upgraded(upgrade: fastwebsockets::upgrade::UpgradeFut) -> Option<Upgraded> {
    let parts = match upgrade.await {
        Ok(ws) => ws
            .into_inner()
            .into_inner()
            .downcast::<TokioIo<HandshakeIo>>(),
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
    };
    let Ok(hyper::upgrade::Parts { io, read_buf, .. }) = parts else {
        tracing::error!("upgraded connection is not a TCP stream");
        return None;
    };
    let (stream, held) = io.into_inner().into_parts();
    Some(Upgraded {
        stream,
        early: read_buf,
        head: held.into(),
    })
}

/// Attaches the upgraded stream to the shard and starts its task. The held 101 leaves with
/// `welcome`. `up.early` is a slice of hyper's 8 KiB read buffer, so it must not outlive this
/// setup. `deflate` is `compression_min_bytes` if the handshake negotiated permessage-deflate;
/// `format` is the negotiated subprotocol's.
pub fn start(
    ctx: Rc<Ctx>,
    id: ConnId,
    identity: Identity,
    inbox_seq: u64,
    up: Upgraded,
    (deflate, format): (Option<usize>, Format),
) {
    let Upgraded {
        stream,
        early,
        head,
    } = up;
    let limits = FrameLimits::of(&ctx.config);
    let rates = ctx.config.rates();
    let conn = Conn::new(id, stream, &identity, &rates, limits);
    let conn = match deflate {
        Some(min) => conn.deflating(min),
        None => conn,
    };
    let conn = Rc::new(match format {
        Format::Proto => conn.speaking_proto(),
        Format::Json => conn,
    });
    ctx.with(|s| {
        s.attach(&conn, &identity, inbox_seq, head);
        if !early.is_empty()
            && let Err(code) = conn.preload(&early, &mut |ev| s.on_event(&conn, ev))
        {
            s.close_conn(&conn, code);
        }
    });
    ctx.schedule_flush();
    // Every line logged for this connection carries who and which, at `debug` only: a span
    // costs ~400 bytes for the connection's life. Never the request's URI: its query may hold
    // the token.
    let span = tracing::debug_span!("conn", user = %identity.user, conn = ?id);
    span.in_scope(|| tracing::debug!("connected"));
    runtime::spawn_conn(ctx, conn, span);
}
