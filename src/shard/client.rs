//! The client side of a shard: connections from handshake to close, the requests they make,
//! and the replies to them.
//!
//! Owns `conns`, the handshakes in progress (`pending`), the joins waiting for the engine
//! (`joins`) and the API calls waiting for an answer. It turns requests into `EngineMsg`s and
//! hands membership to the hub; it must not sequence, store or fan out (the engine and the
//! hub do).

use std::rc::Rc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Shard, Verdict, reply_to};
use crate::auth::Identity;
use crate::conn::{Conn, Event, RoomEntry};
use crate::core::bucket::{Buckets, Rates};
use crate::core::counters::Disconnect;
use crate::core::error::{CloseCode, ErrorCode, ReplyError};
use crate::core::{ConnId, JoinGen};
use crate::core::{Name, ReqId};
use crate::msg::{EngineMsg, PresencePage, ReplyTo};
use crate::protocol::encode::{self, Target};
use crate::protocol::{self, ClientMessage, Request};
use crate::ws;

/// A handshake in progress.
pub(super) struct Pending {
    user: Name,
    /// Where the home's verdict goes, until it has come.
    verdict: Option<oneshot::Sender<Verdict>>,
    /// A close that arrived before the upgrade, applied at attach.
    close: Option<CloseCode>,
    /// The handshake ended before its verdict came.
    abandoned: bool,
}

/// A join sent to the engine and not answered yet.
pub(super) struct PendingJoin {
    pub room: Name,
    /// The join's own request, if it owes an ack (a token's rooms do not).
    pub id: Option<Option<ReqId>>,
    /// Repeated joins of the same room meanwhile, answered right after this one.
    pub repeats: Vec<Option<ReqId>>,
}

impl Shard {
    // ----- connection lifecycle ---------------------------------------------------------------

    /// Reserves an id for a handshake in progress and asks the engine to admit it.
    pub fn register(&mut self, user: Name, verdict: oneshot::Sender<Verdict>) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId::new(self.router.node(), self.id, self.next_conn);
        let pending = Pending {
            user: user.clone(),
            verdict: Some(verdict),
            close: None,
            abandoned: false,
        };
        self.pending.insert(conn, pending);
        self.to_engine(EngineMsg::Register { user, conn });
        conn
    }

    /// The engine's verdict on a handshake. One that was abandoned meanwhile and admitted
    /// anyway is unregistered, or the user would stay counted.
    pub(super) fn admitted(&mut self, conn: ConnId, verdict: Verdict) {
        let Some(p) = self.pending.get_mut(&conn) else {
            return;
        };
        if !p.abandoned {
            if let Some(tx) = p.verdict.take() {
                let _ = tx.send(verdict);
            }
            return;
        }
        let user = p.user.clone();
        self.pending.remove(&conn);
        if verdict.is_ok() {
            self.to_engine(EngineMsg::Unregister { user, conn });
        }
    }

    /// A handshake that will not become a connection. If the engine had `admitted` it, it is
    /// told to forget it; if the verdict has not come yet, `admitted` does that when it comes.
    pub fn abandon(&mut self, conn: ConnId, admitted: bool) {
        let Some(p) = self.pending.get_mut(&conn) else {
            return;
        };
        if p.verdict.is_some() {
            p.abandoned = true;
            return;
        }
        let user = p.user.clone();
        self.pending.remove(&conn);
        if admitted {
            self.to_engine(EngineMsg::Unregister { user, conn });
        }
    }

    /// A new connection after its upgrade: queues `welcome`, starts catching up on the inbox,
    /// and joins the token's rooms. Nothing is written until the undelivered direct messages
    /// (placed right behind `welcome`) and the joins are in.
    /// `head` is the handshake's 101, still to be sent: it leaves in front of `welcome`.
    pub fn attach(&mut self, conn: &Rc<Conn>, identity: &Identity, inbox_seq: u64, head: Bytes) {
        let early_close = self.pending.remove(&conn.id).and_then(|p| p.close);
        self.conns.insert(conn.id, conn.clone());
        let rooms = identity.rooms.as_deref().unwrap_or_default();
        self.stats.frames_out += 1;
        let welcome = encode::welcome(&conn.user, rooms, self.config.heartbeat_ms, inbox_seq);
        conn.push_behind(head, Rc::new(welcome));
        conn.hold.set(conn.hold.get() + 1);
        self.hub_attach(conn);
        let msg = EngineMsg::Online {
            user: conn.user.clone(),
            conn: conn.id,
        };
        self.to_engine(msg);
        for room in rooms {
            self.start_join(conn, room.clone(), None, (None, None));
        }
        self.mark_dirty(conn);
        if let Some(code) = early_close.or(self.shutting_down.then_some(CloseCode::GoingAway)) {
            self.close_conn(conn, code);
        }
    }

    /// Closes a connection: it leaves everything at once, then its task flushes the close frame.
    pub fn close_conn(&mut self, conn: &Rc<Conn>, code: CloseCode) {
        self.close_conn_with(conn, code, None);
    }

    /// `close_conn` with a reason other than the code's own.
    pub(super) fn close_conn_with(
        &mut self,
        conn: &Rc<Conn>,
        code: CloseCode,
        reason: Option<&str>,
    ) {
        if conn.closing().is_none() && !conn.detached.get() {
            self.stats.disconnect(Disconnect::Closed(code));
            self.stats.frames_out += 1;
        }
        self.detach(conn);
        conn.begin_close_with(code, reason);
        self.mark_dirty(conn);
    }

    /// A connection's task has ended: counts it as lost if nothing had closed it, and detaches it.
    pub fn conn_ended(&mut self, conn: &Rc<Conn>) {
        if conn.closing().is_none() && !conn.detached.get() {
            self.stats.disconnect(Disconnect::Lost);
        }
        self.detach(conn);
    }

    /// Removes a connection from every map and tells the engine. Idempotent.
    pub fn detach(&mut self, conn: &Rc<Conn>) {
        if conn.detached.replace(true) {
            return;
        }
        self.conns.remove(&conn.id);
        self.hub_detach(conn);
        let rooms = std::mem::take(&mut *conn.rooms.borrow_mut());
        for entry in rooms {
            if !entry.live {
                self.joins.remove(&entry.jgen);
            }
            let msg = EngineMsg::Leave {
                room: entry.room,
                user: conn.user.clone(),
                conn: conn.id,
            };
            self.to_engine(msg);
        }
        let msg = EngineMsg::Unregister {
            user: conn.user.clone(),
            conn: conn.id,
        };
        self.to_engine(msg);
    }

    /// Closes the user's connections on this shard but `except` (session policy), and those
    /// still in their handshake.
    pub(super) fn close_user(&mut self, user: &Name, except: ConnId, code: CloseCode) {
        for c in self.hub.conns_of(user) {
            if c.id != except {
                self.close_conn(&c, code);
            }
        }
        for (id, p) in &mut self.pending {
            if p.user == *user && *id != except {
                p.close = Some(code);
            }
        }
    }

    /// Closes the user's connections with 4501; returns how many.
    pub(super) fn kick(&mut self, user: &Name, reason: Option<&str>) -> usize {
        let victims = self.hub.conns_of(user);
        for c in &victims {
            self.close_conn_with(c, CloseCode::Kicked, reason);
        }
        for p in self.pending.values_mut() {
            if p.user == *user {
                p.close = Some(CloseCode::Kicked);
            }
        }
        victims.len()
    }

    /// Writes `frame` to every connection; returns how many.
    pub(super) fn broadcast(&mut self, frame: Bytes) -> usize {
        let frame = Rc::new(frame);
        let all: Vec<_> = self.conns.values().cloned().collect();
        let mut sent = 0;
        for c in &all {
            if c.closing().is_none() {
                self.enqueue(c, &frame);
                sent += 1;
            }
        }
        sent
    }

    pub(super) fn shutdown(&mut self) {
        self.shutting_down = true;
        self.engine.shutdown();
        let all: Vec<_> = self.conns.values().cloned().collect();
        for c in all {
            self.close_conn(&c, CloseCode::GoingAway);
        }
        for p in self.pending.values_mut() {
            p.close = Some(CloseCode::GoingAway);
        }
    }

    // ----- inbound client traffic -------------------------------------------------------------

    /// Applies one decoded event from a connection.
    pub fn on_event(&mut self, conn: &Rc<Conn>, event: Event<'_>) {
        if let Event::Text(_) | Event::Binary(_) | Event::TooLarge = event {
            self.stats.frames_in += 1;
        }
        match event {
            Event::Binary(_) => self.reply_error(
                conn,
                None,
                ReplyError::new(
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON in text frames",
                ),
            ),
            Event::Text(text) => match protocol::parse(text) {
                Ok(req) => self.on_request(conn, req),
                Err(e) => self.reply_error(conn, e.id.as_ref(), e.error),
            },
            Event::TooLarge => {
                let limit = self.config.max_message_size;
                self.reply_error(
                    conn,
                    None,
                    ReplyError::new(
                        ErrorCode::TooLarge,
                        format!("message is over the {limit}-byte limit; it was discarded"),
                    ),
                )
            }
            Event::Ping(payload) => {
                self.enqueue(conn, &Rc::new(ws::control_frame(ws::OP_PONG, payload)))
            }
            Event::Close => self.close_conn(conn, CloseCode::Normal),
        }
    }

    fn on_request(&mut self, conn: &Rc<Conn>, req: Request<'_>) {
        let id = req.id;
        if self.shutting_down {
            let err = ReplyError::new(ErrorCode::Unavailable, "server is shutting down");
            return self.reply_error(conn, id.as_ref(), err);
        }
        let result = match req.msg {
            ClientMessage::Ping => {
                self.enqueue(conn, &Rc::new(encode::pong(id.as_ref())));
                Ok(())
            }
            ClientMessage::Refresh { token } => self
                .take_token(conn)
                .and_then(|()| self.refresh(conn, &token, id.as_ref())),
            ClientMessage::Connect { .. } => Err(ReplyError::new(
                ErrorCode::BadRequest,
                "already authenticated: connect is only valid as a connection's first frame",
            )),
            ClientMessage::Join { room, since, epoch } => {
                self.join(conn, room, (since, epoch), id.clone())
            }
            ClientMessage::Leave { room } => self.leave(conn, room, &id),
            ClientMessage::Publish { room, body } => self
                .member(conn, &room, "publishing to")
                .and_then(|()| protocol::check_body_depth(body.get(), self.config.max_body_depth))
                .and_then(|()| self.take_token(conn))
                .and_then(|()| self.charge_store(conn, &room, body.get().len()))
                .map(|()| {
                    self.to_engine(EngineMsg::Publish {
                        room,
                        from: conn.user.clone(),
                        body: Bytes::copy_from_slice(body.get().as_bytes()),
                        reply: reply_to(conn, &id),
                    })
                }),
            ClientMessage::Send { to, body } => {
                protocol::check_body_depth(body.get(), self.config.max_body_depth)
                    .and_then(|()| self.take_token(conn))
                    .and_then(|()| self.charge_store(conn, &to, body.get().len()))
                    .map(|()| {
                        self.to_engine(EngineMsg::Direct {
                            to,
                            from: conn.user.clone(),
                            body: Bytes::copy_from_slice(body.get().as_bytes()),
                            reply: reply_to(conn, &id),
                        })
                    })
            }
            ClientMessage::History {
                room,
                before,
                limit,
            } => self
                .member(conn, &room, "reading the history of")
                .and_then(|()| self.may_read(conn))
                .and_then(|()| self.take_token(conn))
                .map(|()| {
                    self.to_engine(EngineMsg::History {
                        room,
                        reply: reply_to(conn, &id),
                        before,
                        limit,
                    })
                }),
            ClientMessage::Sync { since } => self
                .may_read(conn)
                .and_then(|()| self.take_token(conn))
                .map(|()| {
                    self.to_engine(EngineMsg::Sync {
                        user: conn.user.clone(),
                        reply: reply_to(conn, &id),
                        since,
                    })
                }),
            ClientMessage::Presence { room, after, limit } => self
                .member(conn, &room, "asking who is in")
                .and_then(|()| self.take_token(conn))
                .map(|()| {
                    self.to_engine(EngineMsg::Presence {
                        room,
                        reply: reply_to(conn, &id),
                        page: Some(PresencePage { after, limit }),
                    })
                }),
        };
        if let Err(e) = result {
            self.reply_error(conn, id.as_ref(), e);
        }
    }

    /// A `join`. A room the connection is already in is acked here, at the seq the hub has
    /// written it up to; one whose join is still pending is acked right after that join, so a
    /// connection's join acks come in the order of its requests and one catch-up serves both.
    /// A `join`; `since` is the `since` and `epoch` of the request.
    fn join(
        &mut self,
        conn: &Rc<Conn>,
        room: Name,
        since: (Option<u64>, Option<u64>),
        id: Option<ReqId>,
    ) -> Result<(), ReplyError> {
        if !conn.may_join(&room) {
            return Err(ReplyError::new(
                ErrorCode::Forbidden,
                format!("your token does not allow joining {room}"),
            ));
        }
        let existing = conn
            .rooms
            .borrow()
            .iter()
            .find(|e| e.room == room)
            .map(|e| (e.jgen, e.live));
        match existing {
            Some((_, true)) => {
                let seq = self.hub.last_seq(&room);
                let ack = encode::ack(id.as_ref(), Target::Room(&room), Some(seq));
                self.enqueue(conn, &Rc::new(ack));
            }
            Some((jgen, false)) => match self.joins.get_mut(&jgen) {
                Some(j) => j.repeats.push(id),
                // A token room's join (nothing to answer) that is catching up.
                None => {
                    let seq = self.hub.last_seq(&room);
                    let ack = encode::ack(id.as_ref(), Target::Room(&room), Some(seq));
                    self.enqueue(conn, &Rc::new(ack));
                }
            },
            None => {
                let max = self.config.max_rooms_per_connection;
                if conn.rooms.borrow().len() >= max {
                    return Err(ReplyError::new(
                        ErrorCode::Forbidden,
                        format!("a connection may be in at most {max} rooms"),
                    ));
                }
                if since.0.is_some() {
                    self.may_read(conn)?;
                }
                self.start_join(conn, room, Some(id), since);
            }
        }
        Ok(())
    }

    /// Records a pending join and asks the engine to register it. `id` is `Some` when an ack is
    /// owed; a token's rooms (`None`) hold the connection's writes until they are done.
    fn start_join(
        &mut self,
        conn: &Rc<Conn>,
        room: Name,
        id: Option<Option<ReqId>>,
        (since, epoch): (Option<u64>, Option<u64>),
    ) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let jgen = self.next_gen;
        let room = self.hub.interned(room);
        let mut rooms = conn.rooms.borrow_mut();
        // Most connections are in a room or two: no spare capacity.
        rooms.reserve_exact(1);
        rooms.push(RoomEntry {
            room: room.clone(),
            jgen,
            live: false,
        });
        drop(rooms);
        if id.is_none() {
            conn.hold.set(conn.hold.get() + 1);
        }
        let msg = EngineMsg::Join {
            room: room.clone(),
            user: conn.user.clone(),
            conn: conn.id,
            jgen,
            id: id.clone().flatten(),
            ack: id.is_some(),
            since: since.filter(|_| id.is_some()),
            epoch,
        };
        let pending = PendingJoin {
            room,
            id,
            repeats: Vec::new(),
        };
        self.joins.insert(jgen, pending);
        self.to_engine(msg);
    }

    /// The join of generation `jgen` is acked (or, for a token room, done): the repeated joins
    /// that waited for it are acked at `seq`, in order, and a token room releases its hold.
    pub(super) fn join_answered(&mut self, conn: &Rc<Conn>, jgen: JoinGen, seq: u64) {
        let Some(j) = self.joins.remove(&jgen) else {
            return;
        };
        if j.id.is_none() {
            conn.hold.set(conn.hold.get().saturating_sub(1));
            self.mark_dirty(conn);
        }
        for id in j.repeats {
            let ack = encode::ack(id.as_ref(), Target::Room(&j.room), Some(seq));
            self.enqueue(conn, &Rc::new(ack));
        }
    }

    /// A `leave`. A join still pending is cancelled: its request (and any repeat) is answered
    /// with `cancelled` before the leave's ack, and its late answers are dropped by generation.
    fn leave(&mut self, conn: &Rc<Conn>, room: Name, id: &Option<ReqId>) -> Result<(), ReplyError> {
        let cancelled = || {
            ReplyError::new(
                ErrorCode::Cancelled,
                format!("left {room} before the join was done"),
            )
        };
        if !self.quit_room(conn, &room, cancelled) {
            return Err(not_member(&room, "leaving"));
        }
        self.enqueue(
            conn,
            &Rc::new(encode::ack(id.as_ref(), Target::Room(&room), None)),
        );
        self.to_engine(EngineMsg::Leave {
            room,
            user: conn.user.clone(),
            conn: conn.id,
        });
        Ok(())
    }

    /// Takes the connection out of `room` on this shard: its entry, its place in the hub, and
    /// a join still pending, whose request (and repeats) get `pending`'s error. Whether it was
    /// in the room. The caller tells the engine.
    fn quit_room(
        &mut self,
        conn: &Rc<Conn>,
        room: &Name,
        pending: impl FnOnce() -> ReplyError,
    ) -> bool {
        let entry = {
            let mut rooms = conn.rooms.borrow_mut();
            let i = rooms.iter().position(|e| e.room == *room);
            i.map(|i| rooms.swap_remove(i))
        };
        let Some(entry) = entry else {
            return false;
        };
        self.hub_leave(conn, &entry);
        if let Some(j) = self.joins.remove(&entry.jgen) {
            if j.id.is_none() {
                conn.hold.set(conn.hold.get().saturating_sub(1));
                self.mark_dirty(conn);
            }
            let error = pending();
            for join_id in j.id.into_iter().chain(j.repeats) {
                self.reply_error(conn, join_id.as_ref(), error.clone());
            }
        }
        true
    }

    /// A `refresh`: the new token (same user) gives the connection its expiry and the rooms it
    /// may be in. A room the new `rooms` claim leaves out is left as with `leave` (a pending
    /// join of it is refused with `forbidden`), and the client gets `removed` for it, before
    /// `refreshed`. A token without `exp` cannot take off an expiry the connection has.
    fn refresh(
        &mut self,
        conn: &Rc<Conn>,
        token: &str,
        id: Option<&ReqId>,
    ) -> Result<(), ReplyError> {
        let max_rooms = self.config.max_rooms_per_connection;
        let new = self.auth.refresh(&conn.user, token, max_rooms)?;
        if new.exp.is_none() && conn.exp().is_some() {
            return Err(ReplyError::new(
                ErrorCode::Unauthorized,
                "the token has no exp, and this connection expires: a refresh cannot remove \
                 its expiry; send a token with an exp",
            ));
        }
        conn.set_exp(new.exp);
        conn.allow_rooms(new.rooms);
        let gone: Vec<Name> = (conn.rooms.borrow().iter())
            .filter(|e| !conn.may_join(&e.room))
            .map(|e| e.room.clone())
            .collect();
        for room in gone {
            let forbidden = || {
                ReplyError::new(
                    ErrorCode::Forbidden,
                    format!("your refreshed token does not allow {room}"),
                )
            };
            self.quit_room(conn, &room, forbidden);
            let reason = "the refreshed token does not allow this room";
            self.enqueue(conn, &Rc::new(encode::removed(&room, reason)));
            self.to_engine(EngineMsg::Leave {
                room,
                user: conn.user.clone(),
                conn: conn.id,
            });
        }
        self.enqueue(conn, &Rc::new(encode::refreshed(id, new.exp)));
        Ok(())
    }

    /// The engine could not register a join: it and its repeats are answered with `error`,
    /// and the connection is not in the room (it may join again).
    pub(super) fn join_failed(
        &mut self,
        room: Name,
        conn: ConnId,
        jgen: JoinGen,
        error: ReplyError,
    ) {
        let Some(c) = self.conns.get(&conn).cloned() else {
            return;
        };
        let entry = {
            let mut rooms = c.rooms.borrow_mut();
            let i = rooms.iter().position(|e| e.room == room && e.jgen == jgen);
            i.map(|i| rooms.swap_remove(i))
        };
        let Some(entry) = entry else {
            return;
        };
        self.hub_leave(&c, &entry);
        if let Some(j) = self.joins.remove(&jgen) {
            if j.id.is_none() {
                c.hold.set(c.hold.get().saturating_sub(1));
                self.mark_dirty(&c);
            }
            for join_id in j.id.into_iter().chain(j.repeats) {
                self.reply_error(&c, join_id.as_ref(), error.clone());
            }
        }
    }

    fn member(&self, conn: &Conn, room: &Name, doing: &str) -> Result<(), ReplyError> {
        if conn.rooms.borrow().iter().any(|e| &e.room == room) {
            Ok(())
        } else {
            Err(not_member(room, doing))
        }
    }

    /// Applies `f` to the connection's rate limits.
    fn buckets<R>(&self, conn: &Conn, f: impl FnOnce(&mut Buckets, &Rates) -> R) -> R {
        let mut buckets = conn.rate.get();
        let r = f(&mut buckets, &self.config.rates());
        conn.rate.set(buckets);
        r
    }

    fn take_token(&self, conn: &Conn) -> Result<(), ReplyError> {
        if self.buckets(conn, Buckets::take_request) {
            return Ok(());
        }
        Err(ReplyError::new(
            ErrorCode::RateLimited,
            format!(
                "over {} requests per second (publish, send, history, sync, presence, \
                 refresh); this one was dropped",
                self.config.publish_rate
            ),
        ))
    }

    /// A read (`join` with `since`, `history`, `sync`) may start unless the connection's read
    /// budget is in debt; it is charged when its answer comes (`charge_reads`).
    fn may_read(&self, conn: &Conn) -> Result<(), ReplyError> {
        if self.buckets(conn, Buckets::may_read) {
            return Ok(());
        }
        Err(ReplyError::new(
            ErrorCode::RateLimited,
            format!(
                "over {} stored messages read per second (join with since, history, sync); \
                 this read was dropped: wait, then ask again",
                self.config.read_rate
            ),
        ))
    }

    /// A read's answer reached connection `conn` with `messages` stored messages.
    pub(super) fn charge_reads(&self, conn: ConnId, messages: usize) {
        if let Some(c) = self.conns.get(&conn).filter(|_| messages > 0) {
            self.buckets(c, |b, rates| b.charge_reads(rates, messages));
        }
    }

    pub(super) fn reply_error(&mut self, conn: &Rc<Conn>, id: Option<&ReqId>, err: ReplyError) {
        self.stats.error(err.code);
        self.enqueue(conn, &Rc::new(encode::error(id, &err)));
    }

    /// An answer from the engine or the store: a frame for a connection, or an API call's
    /// result.
    pub(super) fn reply(&mut self, to: ReplyTo, result: Result<Bytes, ReplyError>, read: u32) {
        match to {
            ReplyTo::Conn { conn, id } => {
                self.charge_reads(conn, read as usize);
                let Some(c) = self.conns.get(&conn).cloned() else {
                    return;
                };
                match result {
                    Ok(frame) => self.enqueue(&c, &Rc::new(frame)),
                    Err(e) => self.reply_error(&c, id.as_ref(), e),
                }
            }
            ReplyTo::Api { call, .. } => {
                if let Some(tx) = self.api_calls.remove(&call) {
                    let _ = tx.send(result);
                }
            }
        }
    }

    // ----- the server API -------------------------------------------------------------------

    /// An address for an API call's answer, which will be sent on `tx`.
    pub fn api_reply(&mut self, tx: oneshot::Sender<Result<Bytes, ReplyError>>) -> ReplyTo {
        self.next_call += 1;
        self.api_calls.insert(self.next_call, tx);
        ReplyTo::Api {
            node: self.router.node(),
            shard: self.id,
            call: self.next_call,
        }
    }
}

fn not_member(room: &Name, doing: &str) -> ReplyError {
    ReplyError::new(
        ErrorCode::NotMember,
        format!("join room {room} before {doing} it"),
    )
}
