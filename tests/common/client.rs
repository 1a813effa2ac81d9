//! [`Client`]: a WebSocket client on tokio-tungstenite (never the server's own code), which
//! reads one frame at a time ([`Incoming`]) and has a method per protocol request. Opening
//! the connection is [`super::handshake`]'s job.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::assert::{assert_ack_room, page_of};
use super::{TIMEOUT, connect, enc};

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
        Client::new(ws, name.to_owned())
    }

    /// A client on `ws`, called `name` until a welcome names its user; nothing read yet.
    pub(super) fn new(ws: Ws, name: String) -> Client {
        Client {
            ws,
            name,
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

    /// [`Client::call`], letting the frames `skip` passes over come before the reply.
    pub async fn call_past(&mut self, mut frame: Value, skip: impl Fn(&Value) -> bool) -> Value {
        let id = self.id_of(&mut frame);
        self.send_json(&frame).await;
        let got = self.recv_past(skip).await;
        assert_eq!(
            got["id"], id,
            "{}: the reply to {frame}, got {got}",
            self.name
        );
        got
    }

    /// [`Client::call`], letting presence events about this client's own user come before the
    /// reply (whether a joiner sees its own `joined` is not specified).
    pub async fn call_past_own_presence(&mut self, frame: Value) -> Value {
        let me = self.name.clone();
        self.call_past(frame, |f| own_presence(f, &me)).await
    }

    /// The next JSON frame that is not a presence event about this client's own user.
    pub async fn recv_past_own_presence(&mut self) -> Value {
        let me = self.name.clone();
        self.recv_past(|f| own_presence(f, &me)).await
    }

    /// The next frame that `skip` does not pass over.
    pub async fn recv_past(&mut self, skip: impl Fn(&Value) -> bool) -> Value {
        loop {
            let got = self.recv_json().await;
            if !skip(&got) {
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

/// A `joined` or `left` event about `user`.
fn own_presence(frame: &Value, user: &str) -> bool {
    (frame["type"] == "joined" || frame["type"] == "left") && frame["user"] == user
}
