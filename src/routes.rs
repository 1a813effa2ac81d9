//! The routes of the public listener and of the metrics listener: `/ws` (the handshake: origin,
//! credentials, then the upgrade), `/echo`, `/healthz`, `/readyz`, `/metrics`, `/api/` and the
//! web pages.
//!
//! It sits on top of the HTTP layer and of every endpoint; nothing imports it but `server`.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderValue, ORIGIN, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::auth::Authenticator;
use crate::core::error::HandshakeError;
use crate::shard::runtime::Ctx;

use crate::http::{
    Body, HandshakeIo, HttpSlot, admit, error, handshakes_full, json_error, keepalive_full,
    negotiate_deflate, negotiate_protocol, start, upgrade,
};

/// Takes one of this shard's handshake slots for a TCP connection and returns the task that
/// serves its HTTP requests until it upgrades or closes; `None` (the connection is closed)
/// when every slot is taken. The slot is counted now, not when the task first runs, so the
/// accept loop sees it at once; it is given back when the first response has been written
/// (`HandshakeIo`).
pub fn serve(ctx: Rc<Ctx>, stream: TcpStream) -> Option<impl std::future::Future<Output = ()>> {
    if handshakes_full(&ctx.config) {
        // Slow or stalled handshakes hold every slot: shed this one without reading it.
        let limit = ctx.config.max_handshakes;
        tracing::debug!(limit, "too many handshakes; closing");
        return None;
    }
    let slot = HttpSlot::take();
    Some(serve_http(ctx, stream, slot))
}

async fn serve_http(ctx: Rc<Ctx>, stream: TcpStream, slot: HttpSlot) {
    let config = &ctx.config;
    let timeout = Duration::from_millis(config.handshake_timeout_ms);
    let header_limit = config.max_header_bytes;
    let io = HandshakeIo::new(stream, slot, config);
    let service = hyper::service::service_fn(move |req| handle(ctx.clone(), req));
    // hyper's header timer also runs from the end of each response to the end of the next
    // request's headers; `HandshakeIo` adds the shorter idle limit and the slots.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_header_size(header_limit)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

async fn handle(ctx: Rc<Ctx>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (max_idle, metrics_elsewhere) = (
        ctx.config.max_keepalive_connections,
        ctx.config.metrics_bind.is_some(),
    );
    let mut response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/ws") => websocket(ctx, req).await.unwrap_or_else(|e| error(&e)),
        (&Method::GET, "/echo") if ctx.config.echo => crate::echo::upgrade(ctx, req),
        // With `metrics_bind`, /metrics is on that listener only.
        (&Method::GET, "/metrics") if metrics_elsewhere => error(&HandshakeError::NotFound),
        (&Method::GET, "/healthz" | "/readyz" | "/metrics") => operator(&ctx, &req).await,
        (_, path) if path.starts_with("/api/") => crate::api::handle(ctx, req).await,
        (&Method::GET, path) if ctx.config.web => {
            crate::web::asset(path).unwrap_or_else(|| error(&HandshakeError::NotFound))
        }
        _ => error(&HandshakeError::NotFound),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS && keepalive_full(max_idle) {
        // Said up front, so the client does not reuse a connection `HandshakeIo` would close.
        let close = HeaderValue::from_static("close");
        response.headers_mut().insert(CONNECTION, close);
    }
    Ok(response)
}

/// Liveness (`/healthz`), readiness (`/readyz`) and `/metrics` (behind `metrics_key`, if set),
/// on either listener; any other path is 404.
async fn operator(ctx: &Rc<Ctx>, req: &Request<Incoming>) -> Response<Body> {
    let ok = || Response::new(Full::new(Bytes::from_static(b"ok\n")));
    match req.uri().path() {
        "/healthz" => ok(),
        "/readyz" => match ctx.health.unready() {
            None => ok(),
            Some(why) => json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why),
        },
        "/metrics" => {
            if let Some(key) = &ctx.config.metrics_key {
                let given = req
                    .headers()
                    .get(AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                if !given
                    .is_some_and(|g| crate::api::constant_time_eq(g.as_bytes(), key.as_bytes()))
                {
                    let why = "missing or wrong metrics key; send Authorization: Bearer KEY";
                    let mut refused = json_error(StatusCode::UNAUTHORIZED, "unauthorized", why);
                    let challenge = HeaderValue::from_static("Bearer realm=\"metrics\"");
                    refused.headers_mut().insert(WWW_AUTHENTICATE, challenge);
                    return refused;
                }
            }
            let text = crate::metrics::gather(ctx).await.prometheus();
            let mut response = Response::new(Full::new(Bytes::from(text)));
            let v = HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");
            response.headers_mut().insert(CONTENT_TYPE, v);
            response
        }
        _ => error(&HandshakeError::NotFound),
    }
}

/// Serves a connection of the metrics listener (`metrics_bind`): the `operator` routes, GET
/// only. It takes no handshake slot: scrapes go on while the public listener is full. hyper's
/// header timer (`handshake_timeout_ms`, which also runs between requests) closes idle ones.
pub async fn serve_metrics(ctx: Rc<Ctx>, stream: TcpStream) {
    let timeout = Duration::from_millis(ctx.config.handshake_timeout_ms);
    let header_limit = ctx.config.max_header_bytes;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = ctx.clone();
        async move {
            Ok::<_, Infallible>(match *req.method() {
                Method::GET => operator(&ctx, &req).await,
                _ => error(&HandshakeError::NotFound),
            })
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        .max_header_size(header_limit)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "metrics connection ended with an error");
    }
}

async fn websocket(
    ctx: Rc<Ctx>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, HandshakeError> {
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    crate::origin::check(&ctx.config, header(ORIGIN), header(HOST))?;
    let bearer = header(AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer "));
    let query = req.uri().query();
    let upgrade_check = |req: &Request<Incoming>| {
        if fastwebsockets::upgrade::is_upgrade_request(req) {
            Ok(())
        } else {
            Err(HandshakeError::BadRequest(
                "expected a WebSocket upgrade (GET /ws with Upgrade: websocket)".into(),
            ))
        }
    };
    if ctx.config.first_frame_auth
        && !ctx.config.dev_mode()
        && !Authenticator::has_credentials(query, bearer)
    {
        upgrade_check(&req)?;
        let (format, protocol) = negotiate_protocol(&req)?;
        // Until its `connect` frame is read the connection is still a handshake: it keeps a
        // slot under `max_handshakes`, so silent upgrades cannot pile up past the cap.
        let slot = HttpSlot::take();
        // Not negotiated here: the `connect` frame is read before the connection is a `Conn`.
        return upgrade(&mut req, None, protocol, move |up| {
            crate::first_frame::connect(ctx, up, slot, format)
        });
    }
    // Credentials are checked before the upgrade headers: a browser never sees why a handshake
    // was refused, so its client asks again with a plain GET, which answers 401 if they are bad.
    let hook = ctx.hooks.clone().filter(|_| ctx.config.hook_connect);
    let identity = match &hook {
        // No credentials: the connect hook names the user from the listed query and headers.
        Some(_) if !Authenticator::has_credentials(query, bearer) => None,
        _ => Some(
            ctx.auth
                .authenticate(query, bearer, ctx.config.max_rooms_per_connection)?,
        ),
    };
    // Before the upgrade check, as credentials are: a plain GET learns the hook's refusal.
    let identity = match (&hook, identity) {
        (Some(h), identity) => {
            crate::hooks::connect(h, &ctx.config, identity, query, req.headers()).await?
        }
        (None, identity) => identity.ok_or(HandshakeError::Unauthorized(
            "missing token: pass ?token= or Authorization: Bearer".into(),
        ))?,
    };
    upgrade_check(&req)?;
    let (format, protocol) = negotiate_protocol(&req)?;
    let (reservation, inbox_seq) = admit(&ctx, &identity).await?;
    let deflate = negotiate_deflate(&ctx.config, &req);
    upgrade(&mut req, deflate.map(|d| d.1), protocol, move |up| {
        let conn = reservation.fulfil();
        start(
            ctx,
            conn,
            identity,
            inbox_seq,
            up,
            (deflate.map(|d| d.0), format),
        );
        std::future::ready(())
    })
}
