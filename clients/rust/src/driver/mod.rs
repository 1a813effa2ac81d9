//! The connection task: one per [`crate::Client`]. It connects, rejoins and recovers after
//! every drop (backoff, `since`, inbox `sync`), runs the outbox, matches replies to requests,
//! and turns server frames into [`Event`]s.
//!
//! Owns the socket and every piece of state about it; the [`crate::Client`] handles only send
//! it commands. It must not block: the application reads events at its own pace from an
//! unbounded channel.
//!
//! [`inbound`] turns what the server sends into state and events; [`socket`] opens the
//! WebSocket and sends frames; [`outbox`] keeps the keyed requests until answered; this file
//! keeps the state and the session loop.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::codec::{self, Frame, Request};
use crate::event::{Event, JoinAck, Message, Recovery, RoomRecovery};
use crate::{Auth, Error, Options};

mod inbound;
mod outbox;
mod socket;

use outbox::Outbox;
pub(crate) use outbox::{Entry, Target};

pub(crate) use socket::reconnects;
use socket::{closed, connect, dropped, send, sleep_until, ws_message};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The token that replaced [`Auth`]'s: from an accepted `refresh` or from `get_token`.
#[derive(Clone, Default)]
pub(crate) struct TokenCell(Arc<Mutex<Option<String>>>);

impl TokenCell {
    pub(crate) fn set(&self, token: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(token);
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Completes a request with its reply frame (or why none came).
pub(crate) type Done = Box<dyn for<'a> FnOnce(Result<Frame<'a>, Error>) + Send>;

pub(crate) enum Command {
    /// A request already encoded with its id.
    Request {
        id: u64,
        frame: Bytes,
        done: Done,
    },
    Join {
        room: String,
        done: oneshot::Sender<Result<JoinAck, Error>>,
    },
    Leave {
        room: String,
        id: u64,
        frame: Bytes,
        done: Done,
    },
    Outbox(Entry),
    Close,
}

/// A room the application joined: rejoined after every reconnect.
struct Room {
    /// The last seq seen (`None`: never joined yet).
    seq: Option<u64>,
    epoch: Option<u64>,
    /// The last ack's rights include `history` (a `join` with `since` needs it).
    history: bool,
    /// Joined on the current connection: its outbox entries may go.
    live: bool,
    /// Seqs of our own acked publishes above `seq` (the publisher gets no copy of its own).
    own: BTreeSet<u64>,
    waiters: Vec<oneshot::Sender<Result<JoinAck, Error>>>,
}

enum Pending {
    Request(Done),
    /// A join (first or rejoin) of a room.
    Join {
        room: String,
        since: Option<u64>,
        /// Sent by a reconnect's recovery.
        rejoin: bool,
        /// Sent as the session began: `recovering` counts it until it is answered.
        counted: bool,
    },
    Outbox,
    Sync,
}

/// How a connection ended.
enum End {
    /// The application closed the client.
    Closed,
    /// The connection dropped: reconnect unless the code says not to.
    Dropped { code: Option<u16>, reason: String },
}

pub(crate) struct Driver {
    pub(crate) opts: Options,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Ids of the driver's own requests (rejoins, syncs) count down from the top, so they
    /// never meet the client handles' ids, which count up.
    next_id: u64,
    rooms: HashMap<String, Room>,
    /// The inbox seq handed out so far (`None` before the first welcome).
    inbox_seq: Option<u64>,
    /// Direct messages held while the reconnect's `sync` runs, merged by seq after it.
    held: Option<Vec<Message>>,
    /// The first `welcome`'s `inbox_seq`: the inbox seq once its offline messages are out.
    inbox_floor: u64,
    pending: HashMap<u64, Pending>,
    /// Requests waiting for the connection to be up (recovered).
    queue: VecDeque<(u64, Bytes, Option<Done>)>,
    outbox: Outbox,
    /// Rejoins and syncs still out; the connection is up when it reaches 0.
    recovering: usize,
    recovery: Vec<RoomRecovery>,
    user: String,
    attempt: u32,
    token: TokenCell,
    /// The TLS settings of a `wss://` URL, made once.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Driver {
    pub(crate) fn new(
        opts: Options,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::UnboundedSender<Event>,
        token: TokenCell,
    ) -> Driver {
        Driver {
            opts,
            commands,
            events,
            next_id: u64::MAX / 2,
            rooms: HashMap::new(),
            inbox_seq: None,
            held: None,
            inbox_floor: 0,
            pending: HashMap::new(),
            queue: VecDeque::new(),
            outbox: Outbox::default(),
            recovering: 0,
            recovery: Vec::new(),
            user: String::new(),
            attempt: 0,
            token,
            tls: None,
        }
    }

    /// The token to connect with: the last one refreshed, else [`Auth`]'s.
    fn current_token(&self) -> Option<String> {
        self.token.get().or_else(|| match &self.opts.auth {
            Auth::Dev(_) => None,
            Auth::Token(t) | Auth::FirstFrame(t) => Some(t.clone()),
        })
    }

    /// Asks the application for a new token (`get_token`); true when it gave one that differs
    /// from the last, which the next connection uses (the JS client's rule).
    async fn new_token(&mut self) -> bool {
        let (Some(get), Some(old)) = (self.opts.get_token.clone(), self.current_token()) else {
            return false;
        };
        match get.call().await {
            Ok(token) if token != old => {
                self.token.set(token);
                true
            }
            Ok(_) => false,
            Err(message) => {
                self.emit(Event::ServerError {
                    code: "token".into(),
                    message: format!("get_token failed: {message}"),
                });
                false
            }
        }
    }

    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    pub(crate) async fn run(mut self) {
        if self.opts.url.starts_with("wss://") {
            match crate::tls::client_config(self.opts.extra_ca_pem.as_deref()) {
                Ok(c) => self.tls = Some(c),
                Err(e) => return self.stop(&e.to_string()),
            }
        }
        let why = loop {
            let token = self.current_token();
            let (code, reason) = match connect(&self.opts, token, self.tls.clone()).await {
                Ok(ws) => match self.session(ws).await {
                    End::Closed => break "closed by the application".to_string(),
                    End::Dropped { code, reason } => (code, reason),
                },
                // A refused token is worth one more try with a new one.
                Err(e @ Error::Refused { status, .. }) if status != 503 => {
                    if !(status == 401 && self.new_token().await) {
                        break e.to_string();
                    }
                    (None, e.to_string())
                }
                Err(e) => (None, e.to_string()),
            };
            self.lost();
            if let Some(c) = code
                && !reconnects(c, &reason)
                && !self.new_token().await
            {
                self.emit(Event::Disconnected {
                    code,
                    reason: reason.clone(),
                    retry_in: None,
                });
                break format!("close {c} {reason}");
            }
            let delay = self.opts.backoff.delay(self.attempt);
            self.attempt = self.attempt.saturating_add(1);
            self.emit(Event::Disconnected {
                code,
                reason,
                retry_in: Some(delay),
            });
            // Commands that come meanwhile wait for the connection (the outbox, joins, the
            // queue); only a close ends the wait.
            let wake = tokio::time::sleep(delay);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    () = &mut wake => break,
                    cmd = self.commands.recv() => match cmd {
                        Some(Command::Close) | None => {
                            self.stop("closed by the application");
                            return;
                        }
                        Some(cmd) => self.offline(cmd),
                    },
                }
            }
        };
        self.stop(&why);
    }

    /// The client stops: everything waiting (commands not yet read included) fails with
    /// `Closed`.
    fn stop(&mut self, why: &str) {
        self.commands.close();
        while let Ok(cmd) = self.commands.try_recv() {
            self.offline(cmd);
        }
        let err = || Error::Closed(why.to_string());
        for (_, _, done) in self.queue.drain(..) {
            if let Some(done) = done {
                done(Err(err()));
            }
        }
        self.outbox.fail_all(err);
        for (_, r) in self.rooms.drain() {
            for w in r.waiters {
                let _ = w.send(Err(err()));
            }
        }
        self.emit(Event::Closed {
            reason: why.to_string(),
        });
    }

    /// The connection is gone: requests outside the outbox fail, the outbox's go again later.
    fn lost(&mut self) {
        for (_, p) in self.pending.drain() {
            if let Pending::Request(done) = p {
                done(Err(Error::Disconnected));
            }
        }
        self.outbox.lost();
        for r in self.rooms.values_mut() {
            r.live = false;
        }
        self.recovering = 0;
        self.recovery.clear();
        if let Some(held) = self.held.take() {
            // Not handed out: the next sync brings them again.
            drop(held);
        }
    }

    /// A command while there is no connection: kept for the next one.
    fn offline(&mut self, cmd: Command) {
        match cmd {
            Command::Request { id, frame, done } => self.queue.push_back((id, frame, Some(done))),
            Command::Join { room, done } => self.room_entry(room).waiters.push(done),
            Command::Leave { room, done, .. } => {
                self.rooms.remove(&room);
                done(Ok(Frame::default()));
            }
            Command::Outbox(e) => self.outbox.push(e),
            Command::Close => {}
        }
    }

    fn room_entry(&mut self, room: String) -> &mut Room {
        self.rooms.entry(room).or_insert_with(|| Room {
            seq: None,
            epoch: None,
            history: true,
            live: false,
            own: BTreeSet::new(),
            waiters: Vec::new(),
        })
    }

    fn own_id(&mut self) -> u64 {
        self.next_id -= 1;
        self.next_id
    }

    /// One connection, from `welcome` to its end.
    async fn session(&mut self, mut ws: Ws) -> End {
        let format = self.opts.format;
        if let Auth::FirstFrame(_) = &self.opts.auth {
            let token = self.current_token().unwrap_or_default();
            let mut buf = Vec::new();
            codec::encode(format, None, &Request::Connect { token: &token }, &mut buf);
            if let Err(e) = ws.send(ws_message(format, buf.into())).await {
                return dropped(None, e.to_string());
            }
        }
        // The welcome comes first on every connection (a ping may come before it).
        let first = self.inbox_seq.is_none();
        let deadline = Instant::now() + self.opts.request_timeout;
        let payload = loop {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return dropped(None, "no welcome in time".into()),
                Ok(None) => return dropped(None, "closed before welcome".into()),
                Ok(Some(Err(e))) => return dropped(None, e.to_string()),
                Ok(Some(Ok(WsMessage::Close(c)))) => return closed(c),
                Ok(Some(Ok(m @ (WsMessage::Text(_) | WsMessage::Binary(_))))) => {
                    break m.into_data();
                }
                Ok(Some(Ok(_))) => {}
            }
        };
        match codec::decode(format, &payload) {
            Ok(f) if f.ty == "welcome" => {
                self.user = f.user.as_deref().unwrap_or_default().to_string();
                for room in f.rooms.into_iter().flatten() {
                    self.room_entry(room.into_owned());
                }
                // The direct messages stored while the user had no connection come right
                // behind `welcome`, at or below its `inbox_seq`: on the first connection they
                // are handed out, and the floor moves to `inbox_seq` once the sync is done.
                let since = if first {
                    self.inbox_seq = Some(0);
                    self.inbox_floor = f.inbox_seq.unwrap_or(0);
                    self.inbox_floor
                } else {
                    self.inbox_seq.unwrap_or(0)
                };
                if let Err(e) = self.sync(&mut ws, since).await {
                    return e;
                }
            }
            Ok(f) => return dropped(None, format!("expected welcome, got {}", f.ty)),
            Err(e) => return dropped(None, e.to_string()),
        }
        let reconnect = !first;
        // Rejoin every room with the last seq seen.
        let rooms: Vec<(String, Option<u64>, Option<u64>)> = self
            .rooms
            .iter()
            .map(|(name, r)| {
                let since = r.seq.filter(|_| r.history);
                (name.clone(), since, r.epoch.filter(|_| since.is_some()))
            })
            .collect();
        for (room, since, epoch) in rooms {
            let id = self.own_id();
            let mut buf = Vec::new();
            let req = Request::Join {
                room: &room,
                since,
                epoch,
            };
            codec::encode(format, Some(id), &req, &mut buf);
            if let Err(e) = ws.send(ws_message(format, buf.into())).await {
                return dropped(None, e.to_string());
            }
            let rejoin = reconnect && since.is_some();
            self.pending.insert(
                id,
                Pending::Join {
                    room,
                    since,
                    rejoin,
                    counted: true,
                },
            );
            self.recovering += 1;
        }
        let mut first_ready = Some(reconnect);
        if self.recovering == 0 {
            first_ready = None;
            if let Err(e) = self.ready(&mut ws, reconnect).await {
                return e;
            }
        }
        let hb = Duration::from_millis(self.opts.heartbeat_ms.max(100));
        let mut tick = tokio::time::interval(hb);
        let mut last_rx = Instant::now();
        loop {
            let wake = self.outbox.next_wake();
            tokio::select! {
                msg = ws.next() => {
                    last_rx = Instant::now();
                    let payload = match msg {
                        None => return dropped(None, "connection closed".into()),
                        Some(Err(e)) => return dropped(None, e.to_string()),
                        Some(Ok(WsMessage::Close(c))) => return closed(c),
                        Some(Ok(WsMessage::Text(t))) => Bytes::from(t),
                        Some(Ok(WsMessage::Binary(b))) => b,
                        Some(Ok(_)) => continue,
                    };
                    let frame = match codec::decode(format, &payload) {
                        Ok(f) => f,
                        Err(e) => {
                            self.emit(Event::ServerError { code: "bad_frame".into(), message: e.to_string() });
                            continue;
                        }
                    };
                    if let Err(e) = self.on_frame(&mut ws, frame).await {
                        return e;
                    }
                    if self.recovering == 0
                        && let Some(reconnect) = first_ready.take()
                        && let Err(e) = self.ready(&mut ws, reconnect).await
                    {
                        return e;
                    }
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else {
                        let _ = ws.close(None).await;
                        return End::Closed;
                    };
                    if let Err(e) = self.command(&mut ws, cmd, first_ready.is_none()).await {
                        return e;
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {
                    if first_ready.is_none() && let Err(e) = self.flush(&mut ws).await {
                        return e;
                    }
                }
                _ = tick.tick() => {
                    // The server pings every heartbeat: two without a frame mean a dead link.
                    if last_rx.elapsed() > hb * 2 + Duration::from_secs(1) {
                        return dropped(None, "no frame from the server for two heartbeats".into());
                    }
                }
            }
        }
    }

    /// Recovery is over: the queue and the outbox go, and the application hears of it.
    async fn ready(&mut self, ws: &mut Ws, reconnect: bool) -> Result<(), End> {
        self.attempt = 0;
        let recovery = reconnect.then(|| {
            let rooms = std::mem::take(&mut self.recovery);
            Recovery {
                complete: rooms.iter().all(|r| r.recovered && !r.truncated),
                rooms,
            }
        });
        self.emit(Event::Connected {
            user: self.user.clone(),
            recovery,
        });
        while let Some((id, frame, done)) = self.queue.pop_front() {
            send(ws, self.opts.format, frame).await?;
            if let Some(done) = done {
                self.pending.insert(id, Pending::Request(done));
            }
        }
        self.flush(ws).await
    }

    async fn command(&mut self, ws: &mut Ws, cmd: Command, up: bool) -> Result<(), End> {
        // Joins go at once (a rejoin may be out: the server answers both); the rest waits
        // for recovery to end.
        if !up && !matches!(cmd, Command::Join { .. }) {
            self.offline(cmd);
            return Ok(());
        }
        match cmd {
            Command::Request { id, frame, done } => {
                send(ws, self.opts.format, frame).await?;
                self.pending.insert(id, Pending::Request(done));
            }
            Command::Join { room, done } => {
                let r = self.room_entry(room.clone());
                r.waiters.push(done);
                if r.live || r.waiters.len() > 1 {
                    // Already in, or its join is out: answered with that join's ack.
                    if r.live {
                        let ack = JoinAck {
                            room: room.clone(),
                            seq: r.seq.unwrap_or(0),
                            ..JoinAck::default()
                        };
                        for w in r.waiters.drain(..) {
                            let _ = w.send(Ok(ack.clone()));
                        }
                    }
                    return Ok(());
                }
                let id = self.own_id();
                let mut buf = Vec::new();
                let req = Request::Join {
                    room: &room,
                    since: None,
                    epoch: None,
                };
                codec::encode(self.opts.format, Some(id), &req, &mut buf);
                send(ws, self.opts.format, buf.into()).await?;
                let p = Pending::Join {
                    room,
                    since: None,
                    rejoin: false,
                    counted: false,
                };
                self.pending.insert(id, p);
            }
            Command::Leave {
                room,
                id,
                frame,
                done,
            } => {
                let live = self.rooms.remove(&room).is_some_and(|r| r.live);
                if live {
                    send(ws, self.opts.format, frame).await?;
                    self.pending.insert(id, Pending::Request(done));
                } else {
                    done(Ok(Frame::default()));
                }
            }
            Command::Outbox(e) => {
                self.outbox.push(e);
                self.flush(ws).await?;
            }
            Command::Close => {
                let _ = ws.close(None).await;
                return Err(End::Closed);
            }
        }
        Ok(())
    }

    /// Sends the outbox entries that may go (`Outbox::due`); a room's wait while it is being
    /// rejoined (one never joined is the server's to refuse: `not_member`).
    async fn flush(&mut self, ws: &mut Ws) -> Result<(), End> {
        let rooms = &self.rooms;
        let held = |t: &Target| match t {
            Target::Room(room) => rooms.get(room).is_some_and(|r| !r.live),
            Target::User(_) => false,
        };
        for (id, frame) in self.outbox.due(Instant::now(), held) {
            self.pending.insert(id, Pending::Outbox);
            send(ws, self.opts.format, frame).await?;
        }
        Ok(())
    }

    /// The inbox's missed messages after `since`: live ones are held until it is done, then
    /// all are handed out in seq order, each once.
    async fn sync(&mut self, ws: &mut Ws, since: u64) -> Result<(), End> {
        self.held = Some(Vec::new());
        self.sync_page(ws, since).await
    }

    async fn sync_page(&mut self, ws: &mut Ws, since: u64) -> Result<(), End> {
        let id = self.own_id();
        let mut buf = Vec::new();
        codec::encode(
            self.opts.format,
            Some(id),
            &Request::Sync { since },
            &mut buf,
        );
        send(ws, self.opts.format, buf.into()).await?;
        self.pending.insert(id, Pending::Sync);
        self.recovering += 1;
        Ok(())
    }
}
