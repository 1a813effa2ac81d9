//! HTTP on a shard: routing, the WebSocket handshake (auth, admission by the user's home shard,
//! upgrade) and JSON error responses. The web pages are `web`'s.
//!
//! Owns everything before a connection is a WebSocket. It must not touch connection I/O after
//! the upgrade: the raw TCP stream is handed to `conn` and the shard runtime.

use std::cell::Cell;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};
use std::thread::LocalKey;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderValue, ORIGIN, SEC_WEBSOCKET_EXTENSIONS,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::auth::{Authenticator, Identity};
use crate::config::Config;
use crate::conn::{Conn, FrameLimits};
use crate::core::ConnId;
use crate::core::error::HandshakeError;
use crate::shard::runtime::{self, Ctx};

type Body = Full<Bytes>;

thread_local! {
    /// This shard's handshake slots in use (`max_handshakes`). Each shard is one thread, so a
    /// thread-local is a per-shard count with no atomics.
    static IN_HTTP: Cell<usize> = const { Cell::new(0) };
    /// This shard's idle keep-alive connections (`max_keepalive_connections`).
    static IDLE_HTTP: Cell<usize> = const { Cell::new(0) };
}

/// One connection counted in one of this shard's tallies (`IN_HTTP` or `IDLE_HTTP`) until
/// dropped.
pub(crate) struct HttpSlot(&'static LocalKey<Cell<usize>>);

impl HttpSlot {
    /// Takes a handshake slot, whether or not the shard is full: the caller has checked, holds
    /// a slot it is about to give back, or is a connection already let in.
    pub(crate) fn take() -> Self {
        HttpSlot::count(&IN_HTTP)
    }

    /// Counts an idle keep-alive connection; the caller has checked the cap.
    fn idle() -> Self {
        HttpSlot::count(&IDLE_HTTP)
    }

    fn count(tally: &'static LocalKey<Cell<usize>>) -> Self {
        tally.set(tally.get() + 1);
        HttpSlot(tally)
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Whether this shard is at `max_handshakes`: its accept loop then waits, leaving new
/// connections in the listen backlog rather than closing them.
pub fn handshakes_full(config: &Config) -> bool {
    IN_HTTP.get() >= config.max_handshakes
}

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
    if response.status() != StatusCode::SWITCHING_PROTOCOLS && IDLE_HTTP.get() >= max_idle {
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

/// `{"code":..,"message":..}` with the error's status.
pub(crate) fn error(e: &HandshakeError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_error(status, e.code(), &e.to_string())
}

/// `{"code":..,"message":..}` with `status`.
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    json(status, Bytes::from(body))
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Undoes a handshake's reservation if the handshake does not reach the connection task.
pub(crate) struct Reservation {
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
    pub(crate) fn fulfil(mut self) -> ConnId {
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
        // Until its `connect` frame is read the connection is still a handshake: it keeps a
        // slot under `max_handshakes`, so silent upgrades cannot pile up past the cap.
        let slot = HttpSlot::take();
        // Not negotiated here: the `connect` frame is read before the connection is a `Conn`.
        return upgrade(&mut req, None, move |up| {
            crate::first_frame::connect(ctx, up, slot)
        });
    }
    // Credentials are checked before the upgrade headers: a browser never sees why a handshake
    // was refused, so its client asks again with a plain GET, which answers 401 if they are bad.
    let identity = ctx
        .auth
        .authenticate(query, bearer, ctx.config.max_rooms_per_connection)?;
    upgrade_check(&req)?;
    let (reservation, inbox_seq) = admit(&ctx, &identity).await?;
    let deflate = ctx.config.compression_min_bytes.and_then(|min| {
        let offers = req.headers().get_all(SEC_WEBSOCKET_EXTENSIONS).iter();
        crate::deflate::negotiate(offers.filter_map(|v| v.to_str().ok())).map(|r| (min, r))
    });
    upgrade(&mut req, deflate.map(|d| d.1), move |up| {
        let conn = reservation.fulfil();
        start(ctx, conn, identity, inbox_seq, up, deflate.map(|d| d.0));
        std::future::ready(())
    })
}

/// Asks the user's home to admit a connection (session policy, connection limit). Returns the
/// reservation, which undoes the admission if dropped before `fulfil`, and the inbox seq.
pub(crate) async fn admit(
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
/// unrun (a reservation it holds is undone). `extensions` is the negotiated
/// `Sec-WebSocket-Extensions` response, if any.
fn upgrade<F: Future<Output = ()> + 'static>(
    req: &mut Request<Incoming>,
    extensions: Option<&'static str>,
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
    tokio::task::spawn_local(async move {
        if let Some(up) = upgraded(upgrade).await {
            then(up).await;
        }
    });
    Ok(response.map(|_| Full::new(Bytes::new())))
}

/// A connection once hyper has let go of it.
pub(crate) struct Upgraded {
    pub stream: TcpStream,
    /// What hyper read past the request (requests the client sent right behind it).
    pub early: Bytes,
    /// The `101 Switching Protocols` response, not yet written (`HandshakeIo`): its taker sends
    /// it before anything else.
    pub head: Bytes,
}

/// The TCP stream under a completed upgrade.
pub(crate) async fn upgraded(upgrade: fastwebsockets::upgrade::UpgradeFut) -> Option<Upgraded> {
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
    let io = io.into_inner();
    Some(Upgraded {
        stream: io.stream,
        early: read_buf,
        head: io.held.into(),
    })
}

/// The TCP stream while hyper serves HTTP on it. A `101 Switching Protocols` response is held
/// back instead of written: whoever takes the stream after the upgrade sends it, so for `/ws`
/// it leaves in the same write as `welcome` (a `sendmsg` and a TCP segment fewer for every
/// connection). Every other response is written as it comes.
///
/// It also keeps the connection's place in the shard's counts, from what hyper reads and
/// writes: a handshake slot from the first byte of a request (or the accept) until its response
/// has been written, then an idle keep-alive slot until the next request's first byte. hyper
/// calls `poll_flush` with its buffer empty only, so a flush after response bytes means the
/// response is out (every response body is one `Full` chunk, written with its head).
pub(crate) struct HandshakeIo {
    stream: TcpStream,
    /// The 101 and anything hyper wrote after it (nothing, in practice).
    held: Vec<u8>,
    phase: Phase,
    /// Response bytes were written since the last flush.
    answering: bool,
    limits: Limits,
    /// While idle: when the keep-alive ends. While busy and a write is blocked: when that
    /// write gives up.
    timer: Option<Pin<Box<Sleep>>>,
}

/// Where a connection is between requests. The slots are held for their `Drop`.
#[allow(dead_code)]
enum Phase {
    /// Reading a request or writing its response: holds a handshake slot.
    Busy(HttpSlot),
    /// Between requests: holds a keep-alive slot.
    Idle(HttpSlot),
    /// Answered while the shard had its fill of idle connections: reads end (EOF), so hyper
    /// closes it.
    Closing,
}

/// `HandshakeIo`'s part of the config.
#[derive(Clone, Copy)]
struct Limits {
    max_idle: usize,
    idle: Duration,
    stall: Duration,
}

impl HandshakeIo {
    /// `slot` is the handshake slot the accept took.
    fn new(stream: TcpStream, slot: HttpSlot, config: &Config) -> HandshakeIo {
        HandshakeIo {
            stream,
            held: Vec::new(),
            phase: Phase::Busy(slot),
            answering: false,
            limits: Limits {
                max_idle: config.max_keepalive_connections,
                idle: Duration::from_millis(config.keepalive_timeout_ms),
                stall: Duration::from_millis(config.handshake_timeout_ms),
            },
            timer: None,
        }
    }

    /// Whether a write that starts with `first` is held.
    fn holds(&self, first: &[u8]) -> bool {
        !self.held.is_empty() || first.starts_with(b"HTTP/1.1 101 ")
    }

    /// A request starts (its first byte, or a pipelined one's response): the connection takes
    /// a handshake slot again, even at the cap, since it was let in already; the accept loop
    /// waits for the count to fall back.
    fn busy(&mut self) {
        if !matches!(self.phase, Phase::Busy(_)) {
            self.timer = None;
            self.phase = Phase::Busy(HttpSlot::take());
        }
    }

    /// A response is out: the handshake slot is given back, and the connection idles for its
    /// next request, or closes if the shard keeps as many idle connections as it may.
    fn answered(&mut self) {
        self.phase = Phase::Closing;
        self.timer = None;
        // The same test `handle` made for `Connection: close`; a response that raced past it
        // closes here.
        if IDLE_HTTP.get() < self.limits.max_idle {
            self.phase = Phase::Idle(HttpSlot::idle());
            self.timer = Some(Box::pin(tokio::time::sleep(self.limits.idle)));
        }
    }

    /// Whether `timer` is set and has fired (registering `cx` if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// Accounts for a write of `first` and the bytes after it; a write that stays blocked
    /// for `stall` fails, so a client that does not read cannot keep its slot.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                // `100 Continue` is not the answer: the request's body comes after it.
                self.answering |= !first.starts_with(b"HTTP/1.1 1");
                self.timer = None;
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let stall = self.limits.stall;
                self.timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if self.expired(cx) {
                    let why = "the client did not read its response";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncRead for HandshakeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Phase::Closing = this.phase {
            // EOF between requests: hyper ends the connection quietly.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Phase::Idle(_) = this.phase {
            match read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.busy(),
                Poll::Pending if this.expired(cx) => {
                    this.phase = Phase::Closing;
                    return Poll::Ready(Ok(()));
                }
                _ => {}
            }
        }
        read
    }
}

impl tokio::io::AsyncWrite for HandshakeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.holds(buf) {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        this.busy();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(cx, buf, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.first().map_or(&[][..], |b| &b[..]);
        if this.holds(first) {
            bufs.iter().for_each(|b| this.held.extend_from_slice(b));
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        this.busy();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(cx, first, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        if std::mem::take(&mut this.answering) {
            this.answered();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Attaches the upgraded stream to the shard and starts its task. The held 101 leaves with
/// `welcome`. `up.early` is a slice of hyper's 8 KiB read buffer, so it must not outlive this
/// setup. `deflate` is `compression_min_bytes` if the handshake negotiated permessage-deflate.
pub(crate) fn start(
    ctx: Rc<Ctx>,
    id: ConnId,
    identity: Identity,
    inbox_seq: u64,
    up: Upgraded,
    deflate: Option<usize>,
) {
    let Upgraded {
        stream,
        early,
        head,
    } = up;
    let limits = FrameLimits::of(&ctx.config);
    let rates = ctx.config.rates();
    let conn = Conn::new(id, stream, &identity, &rates, limits);
    let conn = Rc::new(match deflate {
        Some(min) => conn.deflating(min),
        None => conn,
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{HandshakeIo, HttpSlot};
    use crate::config::Config;

    #[tokio::test]
    async fn a_101_is_held_and_other_responses_are_written() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (mut client, (server, _)) = tokio::try_join!(client, listener.accept()).unwrap();
        let mut io = HandshakeIo::new(server, HttpSlot::take(), &Config::default());

        io.write_all(b"HTTP/1.1 200 OK\r\n\r\nfirst").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 24];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\nfirst");

        let switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        io.write_all(switching).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.held, switching, "the 101 is held for its taker");
        // Nothing reached the client: closing the server side gives it EOF at once.
        drop(io);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the 101 was written: {rest:?}");
    }
}
