//! Shared helpers for the integration tests.
//!
//! - [`TestServer`]: a real shardcast server on `127.0.0.1:0`, its `data` in a temp dir.
//! - [`Client`]: a WebSocket client built on tokio-tungstenite (never the server's own code),
//!   with helpers that read one frame at a time and let the test assert on it.
//! - [`connect`] / [`Refusal`]: the handshake, and the HTTP response of a refused one.
//! - [`mint`]: HS256 tokens for JWT mode; [`keys`]: RS256 / ES256 tokens and a JWKS server.
//! - [`BinaryServer`]: the `shardcast` binary as a child process.
//! - [`client_frame`]: raw masked client frames, for the conformance and property tests.
//! - [`redis`]: real Redis servers and a Redis Cluster; [`cluster`]: shardcast nodes on the
//!   redis engine (the cluster tests); [`proxy`]: a TCP proxy that refuses, freezes or cuts.
//!
//! Every test that uses [`TestServer`] must run on a multi-thread runtime
//! (`#[tokio::test(flavor = "multi_thread")]`): starting and stopping the server blocks, and is
//! done inside `block_in_place`.
#![allow(dead_code)]

pub mod cluster;
pub mod keys;
pub mod proxy;
pub mod redis;

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use shardcast::config::Config;
use shardcast::server::Server;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame it expects before failing.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The secret used by tests that run in JWT mode (an HS256 secret needs at least 32 bytes).
pub const SECRET: &str = "integration-test-secret-of-32-bytes";

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A shardcast server started in this process for one test. Dropping it shuts it down.
pub struct TestServer {
    server: Option<Server>,
    addr: SocketAddr,
    /// The temp dir behind `data`, when the server made its own (see [`TestServer::start_in`]).
    _data: Option<TempDir>,
}

impl TestServer {
    /// Starts a server with the documented defaults, changed by `tweak`. The bind address is
    /// always `127.0.0.1:0` and `data` a fresh temp dir, whatever `tweak` sets.
    pub fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data = tempfile::tempdir().expect("create a temp dir for the server's data");
        let mut server = TestServer::start_in(data.path(), tweak);
        server._data = Some(data);
        server
    }

    /// [`TestServer::start`] with `data` at `dir`, which the caller keeps: a test restarts a
    /// server on the same data by calling this again once the first one has been joined.
    pub fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_at(dir, "127.0.0.1:0".parse().unwrap(), tweak)
    }

    /// [`TestServer::start_in`] bound to `bind`.
    fn start_at(dir: &Path, bind: SocketAddr, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        tweak(&mut config);
        config.bind = bind;
        config.data = dir.to_path_buf();
        let server = tokio::task::block_in_place(|| Server::start(config))
            .unwrap_or_else(|e| panic!("the server failed to start: {e}"));
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback(), "server bound {addr}, not loopback");
        assert_ne!(addr.port(), 0, "server reports port 0 after binding");
        TestServer {
            server: Some(server),
            addr,
            _data: None,
        }
    }

    /// Shuts this server down (connections get 1001) and starts it again on the same port and
    /// data, with `tweak` applied to the defaults: what clients see of a restart.
    pub fn restart(mut self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data = self
            ._data
            .take()
            .expect("restart needs a server started by `start`");
        let addr = self.addr;
        self.shutdown();
        self.join();
        let mut server = TestServer::start_at(data.path(), addr, tweak);
        server._data = Some(data);
        server
    }

    /// A server with every default.
    pub fn default_config() -> TestServer {
        TestServer::start(|_| {})
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics listener's address, when `metrics_bind` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().and_then(Server::metrics_addr)
    }

    /// Starts graceful shutdown (returns at once).
    pub fn shutdown(&mut self) {
        self.server
            .as_mut()
            .expect("server already joined")
            .shutdown();
    }

    /// Makes shard `shard` panic in a home's handler (the `fault-injection` feature).
    pub fn inject_panic(&self, shard: usize) {
        self.server
            .as_ref()
            .expect("server already joined")
            .inject_panic(shard);
    }

    /// Makes the store's next inbox or range read fail (the `fault-injection` feature).
    pub fn inject_read_failure(&self) {
        self.server
            .as_ref()
            .expect("server already joined")
            .inject_read_failure();
    }

    /// Makes the store writer's readings of the free disk space give `free` (`None`: what the
    /// filesystem says) from its next one on, within a second (the `fault-injection` feature).
    pub fn inject_disk_free(&self, free: Option<u64>) {
        self.server
            .as_ref()
            .expect("server already joined")
            .inject_disk_free(free);
    }

    /// Blocks until every server thread has exited.
    pub fn join(mut self) {
        let server = self.server.take().expect("server already joined");
        tokio::task::block_in_place(move || { server }.join());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::task::block_in_place(move || drop(server));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------------

/// A refused handshake: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Value,
    pub raw_body: String,
}

impl Refusal {
    /// Asserts the documented refusal shape: `status`, a JSON content type, and a body
    /// `{"code":code,"message":<non-empty string>}`.
    pub fn assert(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "refused handshake status (body {})",
            self.raw_body
        );
        assert_eq!(
            self.body["code"], code,
            "refused handshake code (body {})",
            self.raw_body
        );
        let message = self.body["message"].as_str();
        assert!(
            message.is_some_and(|m| !m.is_empty()),
            "refused handshake body needs a non-empty string `message`: {}",
            self.raw_body
        );
        let ct = self.content_type.as_deref().unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "refused handshake content-type is {ct:?}, expected application/json"
        );
    }
}

/// Opens a WebSocket to `ws://addr{path}` with extra request headers. On success the first frame
/// is read and must be a `welcome`; on an HTTP refusal the response is returned; any other error
/// panics.
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, Refusal> {
    connect_with(addr, path, headers, None).await
}

/// [`connect`] with a tungstenite config (e.g. smaller buffers for thousands of clients).
pub async fn connect_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    config: Option<WebSocketConfig>,
) -> Result<Client, Refusal> {
    let url = format!("ws://{addr}{path}");
    let mut request = url
        .as_str()
        .into_client_request()
        .unwrap_or_else(|e| panic!("bad request url {url}: {e}"));
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let result = tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, config, true),
    )
    .await
    .unwrap_or_else(|_| panic!("handshake to {url} timed out after {TIMEOUT:?}"));
    match result {
        Ok((ws, _response)) => {
            let mut client = Client {
                ws,
                name: path.to_string(),
                pings: 0,
                next_id: 0,
                welcome: Value::Null,
            };
            let welcome = client.recv_json().await;
            assert_eq!(
                welcome["type"], "welcome",
                "the first frame must be a welcome, got {welcome}"
            );
            if let Some(user) = welcome["user"].as_str() {
                client.name = user.to_string();
            }
            client.welcome = welcome;
            Ok(client)
        }
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let raw = response.body().clone().unwrap_or_default();
            let raw_body = String::from_utf8_lossy(&raw).into_owned();
            let body = serde_json::from_slice(&raw).unwrap_or_else(|e| {
                panic!("refused handshake ({status}) body is not JSON ({e}): {raw_body:?}")
            });
            Err(Refusal {
                status,
                content_type,
                body,
                raw_body,
            })
        }
        Err(e) => panic!("handshake to {url} failed without an HTTP response: {e}"),
    }
}

/// Percent-encodes a query value (every byte outside `[A-Za-z0-9_.-]`).
pub fn enc(value: &str) -> String {
    let mut out = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Connects in dev mode as `user`; panics if refused.
pub async fn dev(addr: SocketAddr, user: &str) -> Client {
    Client::connect_dev(addr, user).await
}

/// Retries a dev-mode connection for up to `within` while it is refused (e.g. while a
/// disconnect propagates); returns the last refusal if it never succeeds.
pub async fn retry_dev(addr: SocketAddr, user: &str, within: Duration) -> Result<Client, Refusal> {
    let deadline = Instant::now() + within;
    loop {
        match connect(addr, &format!("/ws?user={}", enc(user)), &[]).await {
            Ok(c) => return Ok(c),
            Err(r) if Instant::now() >= deadline => return Err(r),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One thing read from the server (WebSocket pings and pongs are counted, never returned).
#[derive(Debug)]
pub enum Incoming {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: its code and reason (`None` for a close frame without a code).
    Close(Option<(u16, String)>),
    /// The stream ended without a close frame (EOF, reset, protocol error).
    Ended(String),
}

impl fmt::Display for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incoming::Text(t) if t.len() > 300 => write!(f, "text frame {}...", &t[..300]),
            Incoming::Text(t) => write!(f, "text frame {t}"),
            Incoming::Binary(b) => write!(f, "binary frame of {} bytes", b.len()),
            Incoming::Close(c) => write!(f, "close frame {c:?}"),
            Incoming::Ended(e) => write!(f, "end of stream ({e})"),
        }
    }
}

/// A WebSocket client over tokio-tungstenite.
pub struct Client {
    ws: Ws,
    /// Who this is, for failure messages (the welcome's user once connected).
    pub name: String,
    /// WebSocket pings received from the server so far (tungstenite answers them while we read).
    pub pings: usize,
    next_id: u64,
    /// The `welcome` frame.
    pub welcome: Value,
}

impl Client {
    /// `GET /ws?user=USER` (dev mode).
    pub async fn connect_dev(addr: SocketAddr, user: &str) -> Client {
        connect(addr, &format!("/ws?user={}", enc(user)), &[])
            .await
            .unwrap_or_else(|r| panic!("dev connect as {user:?} refused: {r:?}"))
    }

    /// `GET /ws?token=TOKEN`.
    pub async fn connect_token(addr: SocketAddr, token: &str) -> Client {
        connect(addr, &format!("/ws?token={}", enc(token)), &[])
            .await
            .unwrap_or_else(|r| panic!("token connect refused: {r:?}"))
    }

    /// `GET /ws` with `Authorization: Bearer TOKEN`.
    pub async fn connect_bearer(addr: SocketAddr, token: &str) -> Client {
        let auth = format!("Bearer {token}");
        connect(addr, "/ws", &[("authorization", &auth)])
            .await
            .unwrap_or_else(|r| panic!("bearer connect refused: {r:?}"))
    }

    /// `GET /ws` with no credentials; returns once upgraded, without reading anything (for
    /// `first_frame_auth`, where the client speaks first). Panics if refused.
    pub async fn upgrade_only(addr: SocketAddr, name: &str) -> Client {
        let url = format!("ws://{addr}/ws");
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(&url))
            .await
            .unwrap_or_else(|_| panic!("{name}: upgrade timed out"))
            .unwrap_or_else(|e| panic!("{name}: upgrade failed: {e}"));
        Client {
            ws,
            name: name.to_owned(),
            pings: 0,
            next_id: 0,
            welcome: Value::Null,
        }
    }

    // --- sending ---------------------------------------------------------------------------

    pub async fn send_msg(&mut self, msg: Message) {
        let name = self.name.clone();
        tokio::time::timeout(TIMEOUT, self.ws.send(msg))
            .await
            .unwrap_or_else(|_| panic!("{name}: send timed out"))
            .unwrap_or_else(|e| panic!("{name}: send failed: {e}"));
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.send_msg(Message::text(text.into())).await;
    }

    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(value.to_string()).await;
    }

    /// A fresh id for a request (numbers, unique per client).
    pub fn fresh_id(&mut self) -> Value {
        self.next_id += 1;
        json!(self.next_id)
    }

    // --- receiving -------------------------------------------------------------------------

    /// The next data or close frame within `wait`, or `None` if nothing came.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(next) => next,
            };
            return Some(match next {
                Some(Ok(Message::Ping(_))) => {
                    self.pings += 1;
                    continue;
                }
                Some(Ok(Message::Pong(_))) => continue,
                Some(Ok(Message::Text(t))) => Incoming::Text(t.to_string()),
                Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Close(frame))) => {
                    // Let tungstenite send its close reply.
                    let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.next()).await;
                    Incoming::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Frame(_))) => unreachable!("tungstenite never yields raw frames"),
                Some(Err(e)) => Incoming::Ended(e.to_string()),
                None => Incoming::Ended("stream ended".into()),
            });
        }
    }

    /// The next frame, which must be a text frame; returns its raw text.
    pub async fn recv_text(&mut self) -> String {
        match self.next_within(TIMEOUT).await {
            Some(Incoming::Text(t)) => t,
            Some(other) => panic!("{}: expected a text frame, got {other}", self.name),
            None => panic!(
                "{}: expected a text frame, nothing arrived within {TIMEOUT:?}",
                self.name
            ),
        }
    }

    /// The next frame, which must be a JSON text frame.
    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: frame is not JSON ({e}): {text}", self.name))
    }

    /// The next frame, which must be a JSON frame of type `ty`.
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        let frame = self.recv_json().await;
        assert_eq!(
            frame["type"], ty,
            "{}: expected a {ty:?} frame, got {frame}",
            self.name
        );
        frame
    }

    /// The next `n` frames, which must be JSON.
    pub async fn recv_n(&mut self, n: usize) -> Vec<Value> {
        let mut frames = Vec::with_capacity(n);
        for _ in 0..n {
            frames.push(self.recv_json().await);
        }
        frames
    }

    /// The next frame must be a close frame with `code`.
    pub async fn expect_close(&mut self, code: u16) {
        self.expect_close_within(code, TIMEOUT).await;
    }

    pub async fn expect_close_within(&mut self, code: u16, wait: Duration) {
        match self.next_within(wait).await {
            Some(Incoming::Close(Some((got, reason)))) => assert_eq!(
                got, code,
                "{}: closed with {got} ({reason:?}), expected {code}",
                self.name
            ),
            Some(other) => panic!("{}: expected close {code}, got {other}", self.name),
            None => panic!(
                "{}: expected close {code}, nothing arrived within {wait:?}",
                self.name
            ),
        }
    }

    /// Nothing but WebSocket pings arrives for `wait`.
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Some(frame) = self.next_within(wait).await {
            panic!("{}: expected silence for {wait:?}, got {frame}", self.name);
        }
    }

    // --- requests --------------------------------------------------------------------------

    /// The `id` of `frame`, after giving it a fresh one if it has none.
    fn id_of(&mut self, frame: &mut Value) -> Value {
        match frame.get("id") {
            Some(id) => id.clone(),
            None => {
                let id = self.fresh_id();
                frame["id"] = id.clone();
                id
            }
        }
    }

    /// Sends `frame` (adding a fresh `id` if it has none) and returns the next frame, which
    /// must echo that id.
    pub async fn call(&mut self, mut frame: Value) -> Value {
        let id = self.id_of(&mut frame);
        self.send_json(&frame).await;
        let reply = self.recv_json().await;
        assert_eq!(
            reply["id"], id,
            "{}: the reply to {frame} must echo its id, got {reply}",
            self.name
        );
        reply
    }

    /// [`Client::call`], letting presence events about this client's own user come before the
    /// reply (whether a joiner sees its own `joined` is not specified).
    pub async fn call_past_own_presence(&mut self, mut frame: Value) -> Value {
        let id = self.id_of(&mut frame);
        self.send_json(&frame).await;
        let got = self.recv_past_own_presence().await;
        assert_eq!(
            got["id"], id,
            "{}: the reply to {frame}, got {got}",
            self.name
        );
        got
    }

    /// The next JSON frame that is not a presence event about this client's own user.
    pub async fn recv_past_own_presence(&mut self) -> Value {
        loop {
            let got = self.recv_json().await;
            let presence = got["type"] == "joined" || got["type"] == "left";
            if !(presence && got["user"] == self.name.as_str()) {
                return got;
            }
        }
    }

    /// Joins `room`; returns the ack's seq.
    pub async fn join(&mut self, room: &str) -> u64 {
        let reply = self.call(json!({"type": "join", "room": room})).await;
        assert_ack_room(&reply, room, &self.name)
    }

    /// Leaves `room`.
    pub async fn leave(&mut self, room: &str) {
        let reply = self.call(json!({"type": "leave", "room": room})).await;
        assert_eq!(reply["type"], "ack", "{}: leave reply {reply}", self.name);
        assert_eq!(reply["room"], room, "{}: leave reply {reply}", self.name);
    }

    /// Publishes `body` to `room`; returns the ack's seq.
    pub async fn publish(&mut self, room: &str, body: Value) -> u64 {
        let reply = self
            .call(json!({"type": "publish", "room": room, "body": body}))
            .await;
        assert_ack_room(&reply, room, &self.name)
    }

    /// Sends a direct message; returns the ack's seq (the recipient's inbox seq).
    pub async fn dm(&mut self, to: &str, body: Value) -> u64 {
        let reply = self
            .call(json!({"type": "send", "to": to, "body": body}))
            .await;
        assert_eq!(reply["type"], "ack", "{}: send reply {reply}", self.name);
        assert_eq!(reply["to"], to, "{}: send reply {reply}", self.name);
        reply["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: send ack without a seq: {reply}", self.name))
    }

    /// A JSON ping must get its pong.
    pub async fn ping(&mut self) {
        let reply = self.call(json!({"type": "ping"})).await;
        assert_eq!(reply["type"], "pong", "{}: ping reply {reply}", self.name);
    }

    /// The `presence` query; returns the users, sorted.
    pub async fn presence(&mut self, room: &str) -> Vec<String> {
        let reply = self.call(json!({"type": "presence", "room": room})).await;
        assert_eq!(reply["type"], "presence", "{}: reply {reply}", self.name);
        assert_eq!(reply["room"], room, "{}: reply {reply}", self.name);
        let mut users: Vec<String> = reply["users"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: presence without users: {reply}", self.name))
            .iter()
            .map(|u| u.as_str().expect("user ids are strings").to_string())
            .collect();
        users.sort();
        users
    }

    /// One page of the `presence` query: the users after `after`, at most `limit` (the server's
    /// default if `None`), and `more`. Checks the page is sorted and within its limit.
    pub async fn presence_page(
        &mut self,
        room: &str,
        after: Option<&str>,
        limit: Option<u64>,
    ) -> (Vec<String>, bool) {
        let mut frame = json!({"type": "presence", "room": room});
        if let Some(after) = after {
            frame["after"] = json!(after);
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
        }
        let reply = self.call(frame).await;
        assert_eq!(reply["type"], "presence", "{}: reply {reply}", self.name);
        let users: Vec<String> = reply["users"]
            .as_array()
            .unwrap_or_else(|| panic!("{}: presence without users: {reply}", self.name))
            .iter()
            .map(|u| u.as_str().expect("user ids are strings").to_string())
            .collect();
        let more = reply["more"]
            .as_bool()
            .unwrap_or_else(|| panic!("{}: presence without a boolean more: {reply}", self.name));
        assert!(users.is_sorted(), "{}: an unsorted page {reply}", self.name);
        assert!(
            users.len() as u64 <= limit.unwrap_or(100),
            "{}: {} users over the limit {limit:?}",
            self.name,
            users.len()
        );
        (users, more)
    }

    /// Every user of `room`, paged `limit` at a time with `after`: each page within its limit,
    /// and each user on exactly one page. Returns the users and the number of pages.
    pub async fn presence_all(&mut self, room: &str, limit: u64) -> (Vec<String>, usize) {
        let (mut all, mut pages) = (Vec::new(), 0);
        let mut after: Option<String> = None;
        loop {
            let (page, more) = self
                .presence_page(room, after.as_deref(), Some(limit))
                .await;
            pages += 1;
            if let (Some(last), Some(first)) = (all.last(), page.first()) {
                assert!(first > last, "{}: pages overlap at {first}", self.name);
            }
            after = page.last().cloned();
            all.extend(page);
            if !more {
                return (all, pages);
            }
            assert!(
                after.is_some(),
                "{}: an empty page with more:true",
                self.name
            );
        }
    }

    /// Sends `frame` (adding a fresh `id` if it has none) and reads up to the reply that echoes
    /// that id, for when other frames (live messages, a replay) may come first. Returns those
    /// other frames, in order, and the reply.
    pub async fn request(&mut self, mut frame: Value) -> (Vec<Value>, Value) {
        let id = self.id_of(&mut frame);
        self.send_json(&frame).await;
        let mut before = Vec::new();
        loop {
            let got = self.recv_json().await;
            if got.get("id") == Some(&id) {
                return (before, got);
            }
            before.push(got);
        }
    }

    /// Joins `room` with `since`; returns the ack (checked to be an ack for `room` with a seq).
    pub async fn join_since(&mut self, room: &str, since: u64) -> Value {
        let reply = self
            .call(json!({"type": "join", "room": room, "since": since}))
            .await;
        assert_ack_room(&reply, room, &self.name);
        reply
    }

    /// One `history` page: the messages (newest first) and `more`.
    pub async fn history(
        &mut self,
        room: &str,
        before: Option<u64>,
        limit: Option<u64>,
    ) -> (Vec<Value>, bool) {
        let mut frame = json!({"type": "history", "room": room});
        if let Some(before) = before {
            frame["before"] = json!(before);
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
        }
        let reply = self.call(frame).await;
        assert_eq!(reply["type"], "history", "{}: reply {reply}", self.name);
        assert_eq!(reply["room"], room, "{}: reply {reply}", self.name);
        page_of(&reply, &self.name)
    }

    /// A room's whole retained history, newest first, paged 100 at a time.
    pub async fn history_all(&mut self, room: &str) -> Vec<Value> {
        let (mut all, mut more) = self.history(room, None, Some(100)).await;
        while more {
            let last = all.last().map(|m| m["seq"].as_u64().expect("a seq"));
            let (page, m) = self.history(room, last, Some(100)).await;
            assert!(
                !page.is_empty(),
                "{}: an empty history page with more:true before {last:?}",
                self.name
            );
            all.extend(page);
            more = m;
        }
        all
    }

    /// One `sync` page: the inbox messages after `since` (oldest first) and `more`.
    pub async fn sync(&mut self, since: u64) -> (Vec<Value>, bool) {
        let reply = self.call(json!({"type": "sync", "since": since})).await;
        assert_eq!(reply["type"], "sync", "{}: reply {reply}", self.name);
        page_of(&reply, &self.name)
    }

    /// Sends `value` without panicking: for a test that expects the server may be gone.
    pub async fn try_send_json(&mut self, value: &Value) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::text(value.to_string())).await
    }

    /// Writes raw bytes to the TCP socket under the WebSocket (for malformed framing).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        match self.ws.get_mut() {
            MaybeTlsStream::Plain(tcp) => {
                tcp.write_all(bytes).await.expect("raw write");
                tcp.flush().await.expect("raw flush");
            }
            _ => unreachable!("tests use plain ws://"),
        }
    }

    /// Sends `frames` as masked text frames in one TCP write, so the server reads them together
    /// (pipelined requests, handled in one pass).
    pub async fn send_batch(&mut self, frames: &[Value]) {
        let mut bytes = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let payload = frame.to_string().into_bytes();
            bytes.push(0x81);
            match payload.len() {
                n if n < 126 => bytes.push(0x80 | n as u8),
                n => {
                    bytes.push(0x80 | 126);
                    bytes.extend_from_slice(&(n as u16).to_be_bytes());
                }
            }
            let mask = [0x5a, 0x17, i as u8, 0xc3];
            bytes.extend_from_slice(&mask);
            bytes.extend(payload.iter().enumerate().map(|(j, b)| b ^ mask[j % 4]));
        }
        self.write_raw(&bytes).await;
    }

    /// Sends a close frame with `code` and returns the server's close frame (code, reason).
    pub async fn close_with(&mut self, code: u16) -> Incoming {
        let frame = CloseFrame {
            code: code.into(),
            reason: "bye".into(),
        };
        self.send_msg(Message::Close(Some(frame))).await;
        self.next_within(TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{}: no answer to our close", self.name))
    }

    /// Sends a close frame and waits for the server's answer (or the end of the stream).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            match tokio::time::timeout(TIMEOUT, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => break,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frame assertions
// ---------------------------------------------------------------------------------------------

fn assert_ack_room(reply: &Value, room: &str, who: &str) -> u64 {
    assert_eq!(reply["type"], "ack", "{who}: expected an ack, got {reply}");
    assert_eq!(
        reply["room"], room,
        "{who}: ack for the wrong room: {reply}"
    );
    reply["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("{who}: ack without a numeric seq: {reply}"))
}

/// The `messages` and `more` of a `history` or `sync` reply.
fn page_of(reply: &Value, who: &str) -> (Vec<Value>, bool) {
    let messages = reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: reply without a messages array: {reply}"))
        .clone();
    let more = reply["more"]
        .as_bool()
        .unwrap_or_else(|| panic!("{who}: reply without a boolean more: {reply}"));
    (messages, more)
}

/// The `seq`s of `messages`, in order.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("message without a numeric seq: {m}"))
        })
        .collect()
}

/// Sends `GET /healthz` on a new raw connection and checks that no answer comes within `wait`:
/// the shard is at `max_handshakes`, so the connection waits in the listen backlog. Returns it,
/// for the answer that must come once a slot frees. `why` says what holds the slots.
pub async fn healthz_left_waiting(addr: SocketAddr, wait: Duration, why: &str) -> TcpStream {
    let mut waiting = TcpStream::connect(addr).await.expect("connect");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write the request");
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(wait, waiting.read(&mut byte)).await;
    assert!(
        early.is_err(),
        "{why}, yet a new connection was answered: {early:?}"
    );
    waiting
}

/// Calls `probe` every 50 ms until it returns `Some`, for up to `within`; then fails, saying
/// what was awaited.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `error` frame with `code` and a non-empty message. `id`: `Some(id)` the id must be echoed;
/// `None` no valid id was sent, so the id must be absent or null.
pub fn assert_error(frame: &Value, code: &str, id: Option<&Value>) {
    assert_eq!(
        frame["type"], "error",
        "expected an error frame, got {frame}"
    );
    assert_eq!(frame["code"], code, "error code in {frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error frame needs a non-empty message: {frame}"
    );
    match id {
        Some(id) => assert_eq!(&frame["id"], id, "error must echo the id: {frame}"),
        None => assert!(
            frame.get("id").is_none_or(Value::is_null),
            "no valid id was sent, yet the error carries one: {frame}"
        ),
    }
}

fn assert_ts(frame: &Value) {
    let ts = frame["ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("message without a numeric ts: {frame}"));
    let now = now_millis();
    assert!(
        ts.abs_diff(now) < 60_000,
        "ts {ts} is not unix milliseconds near now ({now}): {frame}"
    );
}

/// A room message in `room` from `from` with `body`; returns its seq.
pub fn assert_room_msg(frame: &Value, room: &str, from: &str, body: &Value) -> u64 {
    assert_eq!(frame["type"], "message", "expected a message, got {frame}");
    assert_eq!(frame["room"], room, "message room in {frame}");
    assert!(
        frame.get("to").is_none(),
        "room message with a `to`: {frame}"
    );
    assert_eq!(frame["from"], from, "message sender in {frame}");
    assert_eq!(&frame["body"], body, "message body in {frame}");
    assert_ts(frame);
    frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("message without a numeric seq: {frame}"))
}

/// A direct message to `to` from `from` with `body`; returns its seq.
pub fn assert_dm(frame: &Value, to: &str, from: &str, body: &Value) -> u64 {
    assert_eq!(frame["type"], "message", "expected a message, got {frame}");
    assert_eq!(frame["to"], to, "direct message recipient in {frame}");
    assert!(
        frame.get("room").is_none(),
        "direct message with a `room`: {frame}"
    );
    assert_eq!(frame["from"], from, "message sender in {frame}");
    assert_eq!(&frame["body"], body, "message body in {frame}");
    assert_ts(frame);
    frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("message without a numeric seq: {frame}"))
}

/// A `join` ack with `since`: the room's last `seq` and the recovery fields.
pub fn assert_recovery(ack: &Value, seq: u64, recovered: bool, replayed: u64, truncated: bool) {
    assert_eq!(ack["type"], "ack", "expected a join ack, got {ack}");
    let got = [
        &ack["seq"],
        &ack["recovered"],
        &ack["replayed"],
        &ack["truncated"],
    ];
    let expected = [
        &json!(seq),
        &json!(recovered),
        &json!(replayed),
        &json!(truncated),
    ];
    assert_eq!(
        got, expected,
        "join ack [seq, recovered, replayed, truncated] in {ack}"
    );
}

// ---------------------------------------------------------------------------------------------
// Numbered messages: the body of the message with seq N is `numbered(N)`
// ---------------------------------------------------------------------------------------------

/// The body of message number `n`.
pub fn numbered(n: u64) -> Value {
    json!({"n": n})
}

/// Publishes `numbered(n)` to `room` for each n in `seqs`; each ack's seq must be n.
pub async fn publish_numbered(c: &mut Client, room: &str, seqs: RangeInclusive<u64>) {
    for n in seqs {
        assert_eq!(c.publish(room, numbered(n)).await, n, "{}: ack seq", c.name);
    }
}

/// Sends `numbered(n)` to `to` for each n in `seqs`; each ack's seq must be n.
pub async fn dm_numbered(c: &mut Client, to: &str, seqs: RangeInclusive<u64>) {
    for n in seqs {
        assert_eq!(c.dm(to, numbered(n)).await, n, "{}: ack seq", c.name);
    }
}

/// Room messages `numbered(n)` from `from`, with seq n, for each n in `seqs`, in order.
pub fn assert_room_msgs(msgs: &[Value], room: &str, from: &str, seqs: impl Iterator<Item = u64>) {
    assert_numbered(msgs, seqs, |m, body| assert_room_msg(m, room, from, body));
}

/// Direct messages `numbered(n)` to `to` from `from`, with seq n, for each n in `seqs`.
pub fn assert_dms(msgs: &[Value], to: &str, from: &str, seqs: impl Iterator<Item = u64>) {
    assert_numbered(msgs, seqs, |m, body| assert_dm(m, to, from, body));
}

/// `msgs` are `numbered(n)` with seq n for each n in `seqs`; `check(message, body)` checks
/// the rest of a message and returns its seq.
fn assert_numbered(
    msgs: &[Value],
    seqs: impl Iterator<Item = u64>,
    check: impl Fn(&Value, &Value) -> u64,
) {
    let seqs: Vec<u64> = seqs.collect();
    assert_eq!(
        msgs.len(),
        seqs.len(),
        "messages {seqs:?} expected, got {msgs:?}"
    );
    for (m, n) in msgs.iter().zip(seqs) {
        assert_eq!(check(m, &numbered(n)), n, "in {msgs:?}");
    }
}

/// The `max_queue_bytes` of [`small_queue`].
pub const SMALL_QUEUE: usize = 64 * 1024;

/// [`fast`], with a queue of [`SMALL_QUEUE`] bytes and messages up to 4 KiB: a few dozen
/// [`padded`] messages fill half the queue.
pub fn small_queue(c: &mut Config) {
    fast(c);
    c.max_message_size = 4096;
    c.max_queue_bytes = SMALL_QUEUE;
}

/// A body of about 1 KB for message number `n`.
pub fn padded(n: u64) -> Value {
    json!({"n": n, "pad": "x".repeat(1000)})
}

/// "a" and "b" join `room`; b publishes 1..=`seen`, which a reads; a disconnects while b
/// publishes up to `last`, then connects again (not yet in the room). Returns (a, b).
pub async fn miss_messages(addr: SocketAddr, room: &str, seen: u64, last: u64) -> (Client, Client) {
    let mut a = dev(addr, "a").await;
    let mut b = dev(addr, "b").await;
    a.join(room).await;
    b.join(room).await;
    publish_numbered(&mut b, room, 1..=seen).await;
    assert_room_msgs(&a.recv_n(seen as usize).await, room, "b", 1..=seen);
    a.close().await;
    publish_numbered(&mut b, room, seen + 1..=last).await;
    (dev(addr, "a").await, b)
}

/// No presence events (they would interleave with messages), and a publish rate and a budget
/// of stored bytes no test reaches.
pub fn fast(c: &mut Config) {
    c.presence_events = false;
    c.publish_rate = 1_000_000;
    c.publish_burst = 1_000_000;
    c.user_store_rate_bytes = 0;
}

/// Waits up to [`TIMEOUT`] until `GET /readyz` answers `status`; returns the answer's body.
pub async fn readyz_becomes(http: &mut Http, status: u16) -> String {
    eventually(TIMEOUT, &format!("/readyz answers {status}"), async || {
        let reply = http.get("/readyz", &[]).await;
        (reply.status == status).then_some(reply.body)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Tokens and time
// ---------------------------------------------------------------------------------------------

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An HS256 token over `claims`, signed with `secret`.
pub fn mint(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a JWT")
}

/// A token for `sub` valid for an hour, signed with [`SECRET`].
pub fn token_for(sub: &str) -> String {
    mint(SECRET, &json!({"sub": sub, "exp": now_secs() + 3600}))
}

/// A masked client WebSocket frame, built here rather than by the server's code: `first` is
/// the FIN/RSV/opcode byte. For tests that send what a client library would refuse to.
pub fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// A WebSocket opened by hand on a raw TCP socket, for what a client library cannot do: send
/// frames in the same TCP write as the upgrade request.
pub struct RawWs {
    pub tcp: TcpStream,
    /// Bytes read and not yet taken as frames.
    buf: Vec<u8>,
}

impl RawWs {
    /// `GET path` with a WebSocket upgrade, and `behind` (client frames, see [`client_frame`])
    /// in the same write; returns once the `101` is read.
    pub async fn open(addr: SocketAddr, path: &str, behind: &[u8]) -> RawWs {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        let wire = [request.as_bytes(), behind].concat();
        tcp.write_all(&wire).await.expect("write the upgrade");
        let mut raw = RawWs {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(raw.fill().await > 0, "{path}: EOF during the handshake");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{path}: {head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(TIMEOUT, self.tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("nothing read within {TIMEOUT:?}"))
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next server frame, which must be a JSON text frame (a close frame fails the test
    /// with its code and reason).
    pub async fn recv_json(&mut self) -> Value {
        loop {
            if let Some((first, payload)) = take_server_frame(&mut self.buf) {
                assert_eq!(
                    first,
                    0x81,
                    "expected a text frame, got {first:#x}: code {:?}, {:?}",
                    payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])),
                    String::from_utf8_lossy(payload.get(2..).unwrap_or_default())
                );
                return serde_json::from_slice(&payload).expect("a JSON frame");
            }
            assert!(self.fill().await > 0, "EOF, expected a frame");
        }
    }
}

/// Takes the server frame at the front of `buf`: (first byte, payload), or `None` until it has
/// all arrived. Server frames must be unmasked.
pub fn take_server_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let b1 = *buf.get(1)?;
    assert_eq!(b1 & 0x80, 0, "a masked server frame");
    let (header, len): (usize, usize) = match b1 {
        126 => (
            4,
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
        ),
        127 => (
            10,
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
        ),
        n => (2, n as usize),
    };
    let payload = buf.get(header..header.checked_add(len)?)?.to_vec();
    let first = buf[0];
    buf.drain(..header + len);
    Some((first, payload))
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// HTTP/1.1 over one kept-alive connection: a few lines, so the tests need no HTTP client
/// crate. One connection per test keeps the round-robin dealing of connections to shards
/// predictable, and a request can still be made while the server shuts down (it no longer
/// accepts new connections then).
pub struct Http {
    stream: BufReader<TcpStream>,
}

/// An HTTP response; the body is text.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub content_type: String,
    /// Every header, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).await.expect("connect for HTTP");
        Http {
            stream: BufReader::new(stream),
        }
    }

    /// Waits up to [`TIMEOUT`] for the server to close the connection, with nothing more sent.
    pub async fn wait_closed(&mut self, why: &str) {
        let mut rest = Vec::new();
        match tokio::time::timeout(TIMEOUT, self.stream.read_to_end(&mut rest)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Ok(Err(e)) => panic!("{why}: read failed: {e}"),
            Err(_) => panic!("{why}: the server did not close the connection within {TIMEOUT:?}"),
        }
        assert!(
            rest.is_empty(),
            "{why}: the server sent {:?} before closing",
            String::from_utf8_lossy(&rest)
        );
    }

    /// `GET path` with extra headers.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> HttpReply {
        self.request("GET", path, headers, "").await
    }

    /// One request; the response must come within [`TIMEOUT`] and carry a Content-Length.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpReply {
        tokio::time::timeout(TIMEOUT, self.request_now(method, path, headers, body))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no response within {TIMEOUT:?}"))
    }

    async fn request_now(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> HttpReply {
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            request.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        let s = self.stream.get_mut();
        s.write_all(request.as_bytes()).await.expect("send request");
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await.expect("read");
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: bad status line {status_line:?}"));
        let (mut length, mut content_type, mut headers) = (None, String::new(), Vec::new());
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.expect("read header");
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("header line");
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
            headers.push((name, value.trim().to_string()));
        }
        let length = length.unwrap_or_else(|| panic!("{method} {path}: no Content-Length"));
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await.expect("read body");
        HttpReply {
            status,
            content_type,
            headers,
            body: String::from_utf8(body).expect("UTF-8 body"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------------

/// Binary arguments for a publish rate no test reaches.
pub const NO_RATE_LIMIT: [&str; 4] = ["--publish-rate", "1000000", "--publish-burst", "1000000"];

/// A `shardcast serve` child process. Killed on drop if still running.
pub struct BinaryServer {
    pub child: tokio::process::Child,
    /// Everything it printed so far, stdout and stderr interleaved.
    output: Arc<Mutex<String>>,
    /// What it printed on stderr.
    stderr: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    /// The temp dir behind `--data`, when [`BinaryServer::spawn`] made it.
    _data: Option<TempDir>,
}

impl BinaryServer {
    /// Spawns `shardcast serve --data <tempdir> ARGS...` with no `SHARDCAST_*` variables from
    /// the test's environment, logs at info level and without colours.
    pub fn spawn(args: &[&str]) -> BinaryServer {
        let data = tempfile::tempdir().expect("temp dir");
        let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
        let mut server = BinaryServer::spawn_in(bin, data.path(), args);
        server._data = Some(data);
        server
    }

    /// [`BinaryServer::spawn`] with the environment variables `env` set (after the defaults, so
    /// `RUST_LOG` can be changed).
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> BinaryServer {
        let data = tempfile::tempdir().expect("temp dir");
        let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
        let mut server = BinaryServer::start(bin, data.path(), args, env);
        server._data = Some(data);
        server
    }

    /// [`BinaryServer::spawn`] of the binary at `bin` with `--data data`, a directory the
    /// caller keeps (so that a test can restart the server on it).
    pub fn spawn_in(bin: &Path, data: &Path, args: &[&str]) -> BinaryServer {
        BinaryServer::start(bin, data, args, &[])
    }

    /// [`BinaryServer::spawn`] with its open-files limit (`RLIMIT_NOFILE`) set to `nofile`.
    pub fn spawn_with_fd_limit(args: &[&str], nofile: u64) -> BinaryServer {
        let data = tempfile::tempdir().expect("temp dir");
        let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
        let mut cmd = BinaryServer::command(bin, data.path(), args, &[]);
        let limit = libc::rlimit {
            rlim_cur: nofile,
            rlim_max: nofile,
        };
        // SAFETY: runs in the forked child before exec; setrlimit is async-signal-safe and
        // touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            });
        }
        let mut server = BinaryServer::run(cmd, bin);
        server._data = Some(data);
        server
    }

    fn start(bin: &Path, data: &Path, args: &[&str], env: &[(&str, &str)]) -> BinaryServer {
        BinaryServer::run(BinaryServer::command(bin, data, args, env), bin)
    }

    fn command(
        bin: &Path,
        data: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("serve")
            .arg("--data")
            .arg(data)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        for key in inherited_shardcast_vars() {
            cmd.env_remove(key);
        }
        cmd.envs(env.iter().copied());
        cmd
    }

    fn run(mut cmd: tokio::process::Command, bin: &Path) -> BinaryServer {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let output = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect_lines(child.stdout.take().unwrap(), vec![output.clone()]),
            collect_lines(
                child.stderr.take().unwrap(),
                vec![output.clone(), stderr.clone()],
            ),
        ];
        BinaryServer {
            child,
            output,
            stderr,
            readers,
            _data: None,
        }
    }

    /// stdout and stderr so far, interleaved.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// After the process exited: waits (briefly) until its output has been read to the end.
    pub async fn finish_output(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
        }
    }

    /// Waits (up to 20 s) for the `listening on ADDR` line and returns ADDR.
    pub async fn listening_addr(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.output();
            if let Some(addr) = parse_listening(&out) {
                return addr;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the binary exited with {status} before listening; output:\n{out}");
            }
            assert!(
                Instant::now() < deadline,
                "no `listening on ADDR` line within 20 s; output:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to `wait` for the process to exit.
    pub async fn wait_exit(&mut self, wait: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(wait, self.child.wait()).await {
            Ok(status) => status.expect("wait for the child"),
            Err(_) => panic!(
                "the binary did not exit within {wait:?}; output:\n{}",
                self.output()
            ),
        }
    }

    /// Sends a signal (`TERM`, `INT`) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("child still running").to_string();
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(&pid)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {pid} failed: {status}");
    }
}

/// The `SHARDCAST_*` variables of the test's own environment, which a spawned binary must not
/// inherit.
pub fn inherited_shardcast_vars() -> impl Iterator<Item = String> {
    std::env::vars()
        .map(|(key, _)| key)
        .filter(|key| key.starts_with("SHARDCAST_"))
}

fn collect_lines(
    stream: impl AsyncRead + Unpin + Send + 'static,
    outs: Vec<Arc<Mutex<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = strip_ansi(&line);
            for out in &outs {
                let mut out = out.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        }
    })
}

/// Removes ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Finds the address in a `listening on ADDR` line (ADDR may be written `addr=ADDR`, quoted...).
pub fn parse_listening(output: &str) -> Option<SocketAddr> {
    for line in output.lines() {
        let Some(at) = line.find("listening on") else {
            continue;
        };
        let rest = &line[at + "listening on".len()..];
        for token in rest.split(|c: char| c.is_whitespace() || c == '=' || c == ',') {
            let token = token.trim_matches(|c: char| c == '"' || c == '\'' || c == '`');
            if let Ok(addr) = token.parse::<SocketAddr>() {
                return Some(addr);
            }
        }
    }
    None
}
