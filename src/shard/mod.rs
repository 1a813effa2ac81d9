//! A shard: one thread's share of the server. It alone owns its connections' write side, its
//! local user → connections and room → members maps, and the home state (sequence numbers,
//! membership counts, sessions) of the rooms and users that hash to it.
//!
//! Everything here is single-threaded. Shards never share mutable state: they exchange
//! `ShardMsg`s through the router, and a message to itself is handled in place. This module must
//! not parse bytes (that is `conn` and `protocol`) or do HTTP (that is `http`).

mod home;
pub mod runtime;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::Bytes;

use crate::auth::Identity;
use crate::config::{Config, Durability};
use crate::conn::{Conn, Event, OutFrame};
use crate::error::{CloseCode, ErrorCode, ReplyError};
use crate::metrics::{Disconnect, ShardCounters, ShardSnapshot};
use crate::persist::{Op, Persist, Read};
use crate::protocol::encode::{self, Recovery, Target};
use crate::protocol::{self, ClientMessage, Name, ReqId, Request};
use crate::router::{ConnId, ReplyTo, Router, ShardId, ShardMsg, WriteTarget, Written};
use crate::store::{Append, Stream, StreamInfo};
use crate::ws;
use home::{HomeRooms, HomeUsers};

pub struct Shard {
    id: ShardId,
    router: Router,
    config: Arc<Config>,
    next_conn: u64,
    conns: AHashMap<ConnId, Rc<Conn>>,
    /// Local connections of each user.
    users: AHashMap<Name, Vec<Rc<Conn>>>,
    /// Local connections in each room whose join has taken effect.
    rooms: AHashMap<Name, Vec<Rc<Conn>>>,
    /// Connections admitted by their user's home but not yet upgraded: a close that arrives for
    /// them in that window is remembered here and applied at attach.
    pending: AHashMap<ConnId, (Name, Option<CloseCode>)>,
    home_rooms: HomeRooms,
    home_users: HomeUsers,
    persist: Persist,
    /// Store operations of this scheduler pass, sent together by `flush_persist`.
    store_ops: Vec<Op>,
    /// Connections catching up on a room (joined with `since`): the room's live frames are held
    /// for them until their `Replay` arrives.
    catch_up: AHashMap<Name, Vec<CatchUp>>,
    /// Connections with frames queued in this batch; each gets one flush at the end.
    dirty: Vec<Rc<Conn>>,
    ping: OutFrame,
    shutting_down: bool,
    /// Metrics: plain counters, read only by a scrape (`ShardMsg::Stats`).
    stats: ShardCounters,
    /// When each message waiting for the store (sync durability) was sequenced, in the order
    /// handed to the writer. The writer answers a home's writes in that order (`Stored`).
    store_waits: VecDeque<Instant>,
}

struct CatchUp {
    conn: Rc<Conn>,
    held: Vec<OutFrame>,
    held_bytes: usize,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shard {
    /// A shard whose homed streams start from `seeds` (what the store holds of them).
    pub fn new(
        id: ShardId,
        router: Router,
        config: Arc<Config>,
        persist: Persist,
        seeds: Vec<StreamInfo>,
    ) -> Shard {
        let n = router.shards();
        let mut home_rooms = HomeRooms::new(n);
        let mut home_users = HomeUsers::new(n);
        for info in seeds {
            match info.stream {
                Stream::Room(room) => home_rooms.seed(room, info.last_seq),
                Stream::Inbox(user) => home_users.seed(&user, info.last_seq, info.cursor),
            }
        }
        Shard {
            id,
            router,
            config,
            next_conn: 0,
            conns: AHashMap::new(),
            users: AHashMap::new(),
            rooms: AHashMap::new(),
            pending: AHashMap::new(),
            home_rooms,
            home_users,
            persist,
            store_ops: Vec::new(),
            catch_up: AHashMap::new(),
            dirty: Vec::new(),
            ping: Rc::new(ws::control_frame(ws::OP_PING, b"")),
            shutting_down: false,
            stats: ShardCounters::default(),
            store_waits: VecDeque::new(),
        }
    }

    /// Sends to another shard, or handles in place when the target is this shard. Handling in
    /// place keeps the per-pair FIFO order the protocol relies on: this shard's own messages to
    /// itself are applied in the order they are sent.
    fn send(&mut self, to: ShardId, msg: ShardMsg) {
        if to == self.id {
            self.handle(msg);
        } else {
            self.router.send(to, msg);
        }
    }

    // ----- connection lifecycle ---------------------------------------------------------------

    /// Reserves an id for a handshake in progress and asks the user's home to admit it.
    pub fn register(
        &mut self,
        user: Name,
        reply: tokio::sync::oneshot::Sender<Result<u64, crate::error::HandshakeError>>,
    ) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId::new(self.id, self.next_conn);
        self.pending.insert(conn, (user.clone(), None));
        let home = self.router.home(&user);
        self.send(home, ShardMsg::Register { user, conn, reply });
        conn
    }

    /// A handshake that will not become a connection. If the user's home had `admitted` it,
    /// the home is told to forget it.
    pub fn abandon(&mut self, conn: ConnId, admitted: bool) {
        if let Some((user, _)) = self.pending.remove(&conn)
            && admitted
        {
            let home = self.router.home(&user);
            self.send(home, ShardMsg::Unregister { user, conn });
        }
    }

    /// A new connection after its upgrade: queues `welcome`, asks the user's home for the
    /// undelivered direct messages, and joins the token's rooms. Nothing is written until the
    /// undelivered messages (placed right behind `welcome`) and the joins are in.
    pub fn attach(&mut self, conn: &Rc<Conn>, identity: &Identity, inbox_seq: u64) {
        let early_close = self.pending.remove(&conn.id).and_then(|(_, code)| code);
        self.conns.insert(conn.id, conn.clone());
        self.users
            .entry(conn.user.clone())
            .or_default()
            .push(conn.clone());
        let rooms = identity.rooms.as_deref().unwrap_or_default();
        self.stats.frames_out += 1;
        conn.push(Rc::new(encode::welcome(
            &conn.user,
            rooms,
            self.config.heartbeat_ms,
            inbox_seq,
        )));
        conn.hold.set(conn.hold.get() + 1);
        let home = self.router.home(&conn.user);
        let msg = ShardMsg::Online {
            user: conn.user.clone(),
            conn: conn.id,
        };
        self.send(home, msg);
        for room in rooms {
            self.start_join(conn, room.clone(), None, false, None);
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
    fn close_conn_with(&mut self, conn: &Rc<Conn>, code: CloseCode, reason: Option<&str>) {
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

    /// Removes a connection from every map and tells the homes. Idempotent.
    pub fn detach(&mut self, conn: &Rc<Conn>) {
        if conn.detached.replace(true) {
            return;
        }
        self.conns.remove(&conn.id);
        remove_member(&mut self.users, &conn.user, conn.id);
        if !self.catch_up.is_empty() {
            self.catch_up.retain(|_, list| {
                list.retain(|cu| cu.conn.id != conn.id);
                !list.is_empty()
            });
        }
        let rooms = std::mem::take(&mut *conn.rooms.borrow_mut());
        for entry in rooms {
            if entry.live {
                remove_member(&mut self.rooms, &entry.room, conn.id);
            }
            let home = self.router.home(&entry.room);
            let msg = ShardMsg::Leave {
                room: entry.room,
                user: conn.user.clone(),
                conn: conn.id,
            };
            self.send(home, msg);
        }
        let home = self.router.home(&conn.user);
        let msg = ShardMsg::Unregister {
            user: conn.user.clone(),
            conn: conn.id,
        };
        self.send(home, msg);
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
            ClientMessage::Join { room, since } => self.join(conn, room, since, &id),
            ClientMessage::Leave { room } => self.leave(conn, room, &id),
            ClientMessage::Publish { room, body } => {
                self.member(conn, &room, "publishing to").and_then(|()| {
                    self.take_token(conn)?;
                    let home = self.router.home(&room);
                    let msg = ShardMsg::Publish {
                        room,
                        from: conn.user.clone(),
                        body: Bytes::copy_from_slice(body.get().as_bytes()),
                        reply: reply_to(conn, &id),
                    };
                    self.send(home, msg);
                    Ok(())
                })
            }
            ClientMessage::Send { to, body } => self.take_token(conn).map(|()| {
                let home = self.router.home(&to);
                let msg = ShardMsg::Direct {
                    to,
                    from: conn.user.clone(),
                    body: Bytes::copy_from_slice(body.get().as_bytes()),
                    reply: reply_to(conn, &id),
                };
                self.send(home, msg);
            }),
            ClientMessage::History {
                room,
                before,
                limit,
            } => self
                .member(conn, &room, "reading the history of")
                .and_then(|()| self.take_token(conn))
                .map(|()| {
                    self.queue_store_op(Op::Read(Read::History {
                        room,
                        reply: reply_to(conn, &id),
                        before,
                        limit,
                    }))
                }),
            ClientMessage::Sync { since } => self.take_token(conn).map(|()| {
                self.queue_store_op(Op::Read(Read::Sync {
                    user: conn.user.clone(),
                    reply: reply_to(conn, &id),
                    since,
                }))
            }),
            ClientMessage::Presence { room } => {
                self.member(conn, &room, "asking who is in").map(|()| {
                    let home = self.router.home(&room);
                    let msg = ShardMsg::Presence {
                        room,
                        reply: reply_to(conn, &id),
                    };
                    self.send(home, msg);
                })
            }
        };
        if let Err(e) = result {
            self.reply_error(conn, id.as_ref(), e);
        }
    }

    fn join(
        &mut self,
        conn: &Rc<Conn>,
        room: Name,
        since: Option<u64>,
        id: &Option<ReqId>,
    ) -> Result<(), ReplyError> {
        if let Some(allowed) = &conn.allowed_rooms
            && !allowed.contains(&room)
        {
            return Err(ReplyError::new(
                ErrorCode::Forbidden,
                format!("your token does not allow joining {room}"),
            ));
        }
        let already = conn.rooms.borrow().iter().any(|e| e.room == room);
        if !already && conn.rooms.borrow().len() >= self.config.max_rooms_per_connection {
            return Err(ReplyError::new(
                ErrorCode::Forbidden,
                format!(
                    "a connection may be in at most {} rooms",
                    self.config.max_rooms_per_connection
                ),
            ));
        }
        if already {
            let home = self.router.home(&room);
            let msg = ShardMsg::Join {
                room,
                user: conn.user.clone(),
                conn: conn.id,
                id: id.clone(),
                ack: true,
                already: true,
                since: None,
            };
            self.send(home, msg);
        } else {
            self.start_join(conn, room, id.clone(), true, since);
        }
        Ok(())
    }

    /// Records a pending join and asks the room's home to register it. The connection receives
    /// the room's messages from `JoinDone` on, which the home sends after the join's seq.
    fn start_join(
        &mut self,
        conn: &Rc<Conn>,
        room: Name,
        id: Option<ReqId>,
        ack: bool,
        since: Option<u64>,
    ) {
        conn.rooms.borrow_mut().push(crate::conn::RoomEntry {
            room: room.clone(),
            live: false,
        });
        if !ack {
            conn.hold.set(conn.hold.get() + 1);
        }
        let home = self.router.home(&room);
        let msg = ShardMsg::Join {
            room,
            user: conn.user.clone(),
            conn: conn.id,
            id,
            ack,
            already: false,
            since,
        };
        self.send(home, msg);
    }

    /// From now on, holds the stream's live frames for `conn` until its `Replay`.
    fn start_catch_up(&mut self, conn: &Rc<Conn>, room: Name) {
        self.catch_up.entry(room).or_default().push(CatchUp {
            conn: conn.clone(),
            held: Vec::new(),
            held_bytes: 0,
        });
    }

    fn cancel_catch_up(&mut self, room: &Name, conn: ConnId) {
        if let Some(list) = self.catch_up.get_mut(room) {
            list.retain(|cu| cu.conn.id != conn);
            if list.is_empty() {
                self.catch_up.remove(room);
            }
        }
    }

    /// Ends a catch-up: writes the replayed `frames`, then the held live ones. Returns the
    /// connection, or `None` if it has gone or left.
    fn finish_catch_up(&mut self, room: &Name, conn: ConnId, frames: Bytes) -> Option<Rc<Conn>> {
        let list = self.catch_up.get_mut(room)?;
        let i = list.iter().position(|cu| cu.conn.id == conn)?;
        let cu = list.swap_remove(i);
        if list.is_empty() {
            self.catch_up.remove(room);
        }
        if !frames.is_empty() {
            self.enqueue(&cu.conn, &Rc::new(frames));
        }
        for frame in &cu.held {
            self.enqueue(&cu.conn, frame);
        }
        Some(cu.conn)
    }

    fn leave(&mut self, conn: &Rc<Conn>, room: Name, id: &Option<ReqId>) -> Result<(), ReplyError> {
        let entry = {
            let mut rooms = conn.rooms.borrow_mut();
            let i = rooms.iter().position(|e| e.room == room);
            i.map(|i| rooms.swap_remove(i))
        };
        let Some(entry) = entry else {
            return Err(not_member(&room, "leaving"));
        };
        if entry.live {
            remove_member(&mut self.rooms, &room, conn.id);
        } else {
            self.cancel_catch_up(&room, conn.id);
        }
        self.enqueue(
            conn,
            &Rc::new(encode::ack(id.as_ref(), Target::Room(&room), None)),
        );
        let home = self.router.home(&room);
        let msg = ShardMsg::Leave {
            room,
            user: conn.user.clone(),
            conn: conn.id,
        };
        self.send(home, msg);
        Ok(())
    }

    fn member(&self, conn: &Conn, room: &Name, doing: &str) -> Result<(), ReplyError> {
        if conn.rooms.borrow().iter().any(|e| &e.room == room) {
            Ok(())
        } else {
            Err(not_member(room, doing))
        }
    }

    fn take_token(&self, conn: &Conn) -> Result<(), ReplyError> {
        let mut bucket = conn.rate.get();
        let ok = bucket.take(self.config.publish_rate, self.config.publish_burst);
        conn.rate.set(bucket);
        if ok {
            Ok(())
        } else {
            Err(ReplyError::new(
                ErrorCode::RateLimited,
                format!(
                    "over {} requests per second (publish, send, history, sync); this one was dropped",
                    self.config.publish_rate
                ),
            ))
        }
    }

    fn reply_error(&mut self, conn: &Rc<Conn>, id: Option<&ReqId>, err: ReplyError) {
        self.stats.error(err.code);
        self.enqueue(conn, &Rc::new(encode::error(id, &err)));
    }

    // ----- the server API -------------------------------------------------------------------

    /// Sends `msg` to the home of `name` (a room or a user), on behalf of an API call.
    pub fn send_home(&mut self, name: &Name, msg: ShardMsg) {
        let home = self.router.home(name);
        self.send(home, msg);
    }

    /// Sends `make()` to every shard, this one included.
    pub fn send_all(&mut self, mut make: impl FnMut() -> ShardMsg) {
        for shard in 0..self.router.shards() {
            self.send(shard, make());
        }
    }

    /// Queues a store read on behalf of an API call.
    pub fn read_store(&mut self, read: Read) {
        self.queue_store_op(Op::Read(read));
    }

    // ----- messages from shards ---------------------------------------------------------------

    /// Applies one message from a shard (possibly this one).
    pub fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Accept(_) => unreachable!("accepts are handled by the runtime"),
            ShardMsg::Register { user, conn, reply } => {
                let verdict = if self.shutting_down {
                    Err(crate::error::HandshakeError::Unavailable)
                } else {
                    self.home_users.admit(&self.config, &user, conn)
                };
                let (verdict, kick) = match verdict {
                    Ok(kick) => (Ok(self.home_users.inbox_seq(&user)), kick),
                    Err(e) => (Err(e), Vec::new()),
                };
                if reply.send(verdict).is_err() {
                    self.home_users.release(&user, conn);
                    return;
                }
                for shard in kick {
                    let msg = ShardMsg::CloseUser {
                        user: user.clone(),
                        except: conn,
                        code: CloseCode::Replaced,
                    };
                    self.send(shard, msg);
                }
            }
            ShardMsg::Unregister { user, conn } => self.home_users.release(&user, conn),
            ShardMsg::Online { user, conn } => match self.home_users.online(&user, conn) {
                Some((after, upto)) => {
                    let stream = Stream::Inbox(user.clone());
                    self.queue_store_op(Op::Cursor {
                        stream,
                        cursor: upto,
                    });
                    self.queue_store_op(Op::Read(Read::Inbox {
                        user,
                        conn,
                        after,
                        upto,
                    }));
                }
                None => {
                    let msg = ShardMsg::Replay {
                        stream: Stream::Inbox(user),
                        conn,
                        frames: Bytes::new(),
                    };
                    self.send(conn.shard(), msg);
                }
            },
            ShardMsg::CloseUser { user, except, code } => {
                let victims: Vec<_> = self
                    .users
                    .get(&user)
                    .into_iter()
                    .flatten()
                    .filter(|c| c.id != except)
                    .cloned()
                    .collect();
                for c in victims {
                    self.close_conn(&c, code);
                }
                for (id, (u, pending_code)) in &mut self.pending {
                    if *u == user && *id != except {
                        *pending_code = Some(code);
                    }
                }
            }
            ShardMsg::Join {
                room,
                user,
                conn,
                id,
                ack,
                already,
                since,
            } => {
                let events = self.config.presence_events;
                let (seq, event) = self.home_rooms.join(&room, &user, conn.shard(), already);
                if let (true, Some(event)) = (events, event) {
                    self.fan_out(&room, event, None);
                }
                let since = since.filter(|_| ack && !already);
                if let Some(since) = since.filter(|&n| n < seq) {
                    // The replay ends at `seq`; later messages reach the connection live, held
                    // on its shard from JoinDone until the replay has been written.
                    let done = ShardMsg::JoinDone {
                        room: room.clone(),
                        conn,
                        ack: None,
                        replay: true,
                    };
                    self.send(conn.shard(), done);
                    let read = Read::Join {
                        room,
                        conn,
                        id,
                        since,
                        upto: seq,
                    };
                    return self.queue_store_op(Op::Read(read));
                }
                let ack = ack.then(|| match since {
                    Some(since) => {
                        let recovery = Recovery {
                            recovered: since == seq,
                            ..Recovery::default()
                        };
                        encode::join_ack(id.as_ref(), &room, seq, recovery)
                    }
                    None => encode::ack(id.as_ref(), Target::Room(&room), Some(seq)),
                });
                let done = ShardMsg::JoinDone {
                    room,
                    conn,
                    ack,
                    replay: false,
                };
                self.send(conn.shard(), done);
            }
            ShardMsg::JoinDone {
                room,
                conn,
                ack,
                replay,
            } => self.join_done(room, conn, ack, replay),
            ShardMsg::Replay {
                stream,
                conn,
                frames,
            } => match stream {
                Stream::Room(room) => {
                    if let Some(c) = self.finish_catch_up(&room, conn, frames) {
                        self.go_live(&c, &room);
                    }
                }
                Stream::Inbox(_) => self.inbox_ready(conn, frames),
            },
            ShardMsg::Stored { writes, ok } => {
                for w in writes {
                    let sequenced = self.store_waits.pop_front();
                    if ok {
                        self.delivered(w);
                        if let Some(at) = sequenced {
                            self.stats.publish_latency.observe(at.elapsed());
                        }
                    } else {
                        self.stats.error(ErrorCode::Unavailable);
                        let err = ReplyError::new(
                            ErrorCode::Unavailable,
                            "the message store failed; the message was not stored or delivered",
                        );
                        let answer = w.reply.fail(err);
                        self.send_answer(answer);
                    }
                }
            }
            ShardMsg::Leave { room, user, conn } => {
                let event = self.home_rooms.leave(&room, &user, conn.shard());
                if let (true, Some(event)) = (self.config.presence_events, event) {
                    self.fan_out(&room, event, None);
                }
            }
            ShardMsg::Publish {
                room,
                from,
                body,
                reply,
            } => {
                let seq = self.home_rooms.next_seq(&room);
                self.stats.room_publishes += 1;
                let ts = now_ms();
                let frame = encode::message(Target::Room(&room), &from, seq, ts, &body);
                let stream = Stream::Room(room.clone());
                let target = WriteTarget::Room(room);
                self.store(stream, target, seq, ts, frame, reply);
            }
            ShardMsg::Direct {
                to,
                from,
                body,
                reply,
            } => {
                let seq = self.home_users.next_inbox_seq(&to);
                self.stats.direct_publishes += 1;
                let ts = now_ms();
                let frame = encode::message(Target::User(&to), &from, seq, ts, &body);
                let stream = Stream::Inbox(to.clone());
                let target = WriteTarget::Inbox { to, from };
                self.store(stream, target, seq, ts, frame, reply);
            }
            ShardMsg::Presence { room, reply } => {
                let users = self.home_rooms.users(&room);
                let answer = reply.answer(
                    |id| encode::presence(id, &room, users.iter()),
                    || serde_json::json!({ "room": &*room, "users": users.iter().map(|u| &**u).collect::<Vec<_>>() }).to_string().into(),
                );
                self.send_answer(answer);
            }
            ShardMsg::UserInfo { user, reply } => {
                let n = self.home_users.online_count(&user);
                let _ = reply.send((n > 0, n));
            }
            ShardMsg::Broadcast { frame, reply } => {
                let frame = Rc::new(frame);
                let all: Vec<_> = self.conns.values().cloned().collect();
                let mut sent = 0;
                for c in &all {
                    if c.closing().is_none() {
                        self.enqueue(c, &frame);
                        sent += 1;
                    }
                }
                let _ = reply.send(sent);
            }
            ShardMsg::Kick {
                user,
                reason,
                reply,
            } => {
                let victims: Vec<_> = self
                    .users
                    .get(&user)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                for c in &victims {
                    self.close_conn_with(c, CloseCode::Kicked, reason.as_deref());
                }
                for (u, pending_code) in self.pending.values_mut() {
                    if *u == user {
                        *pending_code = Some(CloseCode::Kicked);
                    }
                }
                let _ = reply.send(victims.len());
            }
            ShardMsg::Deliver {
                room,
                frame,
                exclude,
            } => self.deliver_local(LocalTarget::Room(&room), frame, exclude),
            ShardMsg::DeliverUser {
                user,
                frame,
                exclude,
            } => self.deliver_local(LocalTarget::User(&user), frame, exclude),
            ShardMsg::ForwardUser {
                user,
                frame,
                exclude,
            } => self.deliver_to_user(&user, frame, exclude),
            ShardMsg::ToConn { conn, frame } => {
                if let Some(c) = self.conns.get(&conn).cloned() {
                    self.enqueue(&c, &Rc::new(frame));
                }
            }
            ShardMsg::Shutdown => {
                self.shutting_down = true;
                let all: Vec<_> = self.conns.values().cloned().collect();
                for c in all {
                    self.close_conn(&c, CloseCode::GoingAway);
                }
                for (_, code) in self.pending.values_mut() {
                    *code = Some(CloseCode::GoingAway);
                }
            }
            ShardMsg::Stats { reply } => {
                let _ = reply.send(self.snapshot());
            }
        }
    }

    /// This shard's counters, and its gauges read now (O(connections): scrapes only).
    fn snapshot(&self) -> ShardSnapshot {
        ShardSnapshot {
            shard: self.id,
            connections: self.conns.len() as u64,
            rooms_local: self.rooms.len() as u64,
            rooms_homed: self.home_rooms.in_use() as u64,
            queued_bytes: self.conns.values().map(|c| c.queued_bytes() as u64).sum(),
            counters: self.stats.clone(),
        }
    }

    /// Sends an answer made by `ReplyTo` (one for a connection; an API call's went already).
    fn send_answer(&mut self, answer: Option<(ShardId, ShardMsg)>) {
        if let Some((shard, msg)) = answer {
            self.send(shard, msg);
        }
    }

    /// At a message's home: hands a sequenced message to the store. With sync durability it is
    /// acknowledged and delivered once stored (`Stored`); otherwise at once.
    fn store(
        &mut self,
        stream: Stream,
        target: WriteTarget,
        seq: u64,
        ts: u64,
        frame: Bytes,
        reply: ReplyTo,
    ) {
        let append = Append {
            stream,
            seq,
            ts,
            payload: ws::payload_of(&frame),
        };
        let written = Written {
            target,
            seq,
            frame,
            reply,
        };
        // Publish latency starts here; one clock read per message.
        let sequenced = Instant::now();
        if self.config.durability == Durability::Sync {
            let done = Some((self.id, written));
            self.store_waits.push_back(sequenced);
            self.queue_store_op(Op::Append { append, done });
        } else {
            self.queue_store_op(Op::Append { append, done: None });
            self.delivered(written);
            self.stats.publish_latency.observe(sequenced.elapsed());
        }
    }

    /// At a message's home, once it is stored: acks the publisher and delivers the message.
    fn delivered(&mut self, w: Written) {
        let Written {
            target,
            seq,
            frame,
            reply,
        } = w;
        let publisher = reply.conn();
        let seq_json = || Bytes::from(format!("{{\"seq\":{seq}}}"));
        match target {
            WriteTarget::Room(room) => {
                self.home_rooms.commit(&room, seq);
                // The ack goes first: with a large room the fan-out's writes would delay it.
                let ack = reply.answer(
                    |id| encode::ack(id, Target::Room(&room), Some(seq)),
                    seq_json,
                );
                self.send_answer(ack);
                self.fan_out(&room, frame, publisher);
            }
            WriteTarget::Inbox { to, from } => {
                if self.home_users.commit(&to, seq) {
                    self.deliver_to_user(&to, frame.clone(), publisher);
                    let cursor = Op::Cursor {
                        stream: Stream::Inbox(to.clone()),
                        cursor: seq,
                    };
                    self.queue_store_op(cursor);
                }
                if from != to {
                    let home = self.router.home(&from);
                    let msg = ShardMsg::ForwardUser {
                        user: from,
                        frame,
                        exclude: publisher,
                    };
                    self.send(home, msg);
                }
                let ack =
                    reply.answer(|id| encode::ack(id, Target::User(&to), Some(seq)), seq_json);
                self.send_answer(ack);
            }
        }
    }

    fn join_done(&mut self, room: Name, conn: ConnId, ack: Option<Bytes>, replay: bool) {
        let Some(c) = self.conns.get(&conn).cloned() else {
            return;
        };
        if replay {
            return self.start_catch_up(&c, room);
        }
        self.go_live(&c, &room);
        match ack {
            Some(frame) => self.enqueue(&c, &Rc::new(frame)),
            None => {
                c.hold.set(c.hold.get().saturating_sub(1));
                self.mark_dirty(&c);
            }
        }
    }

    /// A new connection's undelivered direct messages: they go right behind `welcome`, ahead of
    /// everything queued since (replies, live messages, which are all newer), and the writes the
    /// connection held for them may start.
    fn inbox_ready(&mut self, conn: ConnId, frames: Bytes) {
        let Some(c) = self.conns.get(&conn).cloned() else {
            return;
        };
        if c.closing().is_some() {
            return;
        }
        if !frames.is_empty() {
            self.stats.frames_out += 1;
            c.push_after_first(Rc::new(frames));
        }
        c.hold.set(c.hold.get().saturating_sub(1));
        if c.queued_bytes() > self.config.max_queue_bytes {
            return self.close_conn(&c, CloseCode::SlowConsumer);
        }
        self.mark_dirty(&c);
    }

    /// The connection receives the room's messages from now on (unless it has left meanwhile).
    fn go_live(&mut self, c: &Rc<Conn>, room: &Name) {
        let became_live = {
            let mut rooms = c.rooms.borrow_mut();
            match rooms.iter_mut().find(|e| &e.room == room) {
                Some(e) if !e.live => {
                    e.live = true;
                    true
                }
                _ => false,
            }
        };
        if became_live {
            self.rooms.entry(room.clone()).or_default().push(c.clone());
        }
    }

    /// At a room's home: sends `frame` to every shard with members in the room.
    fn fan_out(&mut self, room: &Name, frame: Bytes, exclude: Option<ConnId>) {
        let mut local = false;
        for shard in self.home_rooms.shards_of(room) {
            if shard == self.id {
                local = true;
            } else {
                let msg = ShardMsg::Deliver {
                    room: room.clone(),
                    frame: frame.clone(),
                    exclude,
                };
                self.router.send(shard, msg);
            }
        }
        if local {
            self.deliver_local(LocalTarget::Room(room), frame, exclude);
        }
    }

    /// At a user's home: sends `frame` to every shard with connections of the user.
    fn deliver_to_user(&mut self, user: &Name, frame: Bytes, exclude: Option<ConnId>) {
        let mut local = false;
        for shard in self.home_users.shards_of(user) {
            if shard == self.id {
                local = true;
            } else {
                let msg = ShardMsg::DeliverUser {
                    user: user.clone(),
                    frame: frame.clone(),
                    exclude,
                };
                self.router.send(shard, msg);
            }
        }
        if local {
            self.deliver_local(LocalTarget::User(user), frame, exclude);
        }
    }

    // ----- output -----------------------------------------------------------------------------

    /// Writes `frame` to this shard's members of a room, or connections of a user.
    fn deliver_local(&mut self, target: LocalTarget<'_>, frame: Bytes, exclude: Option<ConnId>) {
        let frame = Rc::new(frame);
        let max = self.config.max_queue_bytes;
        let mut slow = Vec::new();
        if let (LocalTarget::Room(room), false) = (target, self.catch_up.is_empty())
            && let Some(list) = self.catch_up.get_mut(room)
        {
            for cu in list.iter_mut().filter(|cu| Some(cu.conn.id) != exclude) {
                self.stats.deliveries += 1;
                cu.held_bytes += frame.len();
                cu.held.push(frame.clone());
                if cu.held_bytes > max {
                    slow.push(cu.conn.clone());
                }
            }
        }
        let members = match target {
            LocalTarget::Room(room) => self.rooms.get(room),
            LocalTarget::User(user) => self.users.get(user),
        };
        // Per recipient: one non-atomic Rc increment, a queue push and two counter adds. No
        // allocation (queue capacity is reused), no copy, no syscall: each socket touched gets
        // one writev for the whole scheduler pass, in `flush_dirty`.
        for c in members.into_iter().flatten() {
            if Some(c.id) == exclude {
                continue;
            }
            self.stats.deliveries += 1;
            if !queue_frame(&mut self.dirty, &mut self.stats, c, &frame, max) {
                slow.push(c.clone());
            }
        }
        for c in slow {
            self.close_conn(&c, CloseCode::SlowConsumer);
        }
    }

    /// Queues a frame for one connection (see `queue_frame`).
    fn enqueue(&mut self, conn: &Rc<Conn>, frame: &OutFrame) {
        let max = self.config.max_queue_bytes;
        if !queue_frame(&mut self.dirty, &mut self.stats, conn, frame, max) {
            self.close_conn(conn, CloseCode::SlowConsumer);
        }
    }

    fn mark_dirty(&mut self, conn: &Rc<Conn>) {
        mark_dirty(&mut self.dirty, conn);
    }

    fn queue_store_op(&mut self, op: Op) {
        self.store_ops.push(op);
    }

    /// Hands this pass's store operations to the writer, in the order they were made.
    pub fn flush_persist(&mut self) {
        if !self.store_ops.is_empty() {
            self.persist.send(std::mem::take(&mut self.store_ops));
        }
    }

    /// Writes every connection touched since the last flush: one writev each.
    pub fn flush_dirty(&mut self) {
        for conn in self.dirty.drain(..) {
            conn.dirty.set(false);
            conn.flush();
        }
    }

    /// The heartbeat: pings every connection, and closes the idle and the expired.
    pub fn tick(&mut self) {
        let idle_limit = self.config.idle_heartbeats();
        let now_s = now_ms() / 1000;
        let all: Vec<_> = self.conns.values().cloned().collect();
        for c in all {
            if c.active.replace(false) {
                c.missed.set(0);
            } else {
                c.missed.set(c.missed.get() + 1);
            }
            if c.missed.get() >= idle_limit {
                self.close_conn(&c, CloseCode::Policy);
            } else if c.exp.is_some_and(|exp| exp <= now_s) {
                self.close_conn(&c, CloseCode::TokenExpired);
            } else {
                let ping = self.ping.clone();
                self.enqueue(&c, &ping);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum LocalTarget<'a> {
    Room(&'a Name),
    User(&'a Name),
}

/// Queues `frame` for `conn` and marks it for the end-of-batch flush. Returns `false` for a slow
/// consumer: over `max` unsent bytes even after trying to write them now.
fn queue_frame(
    dirty: &mut Vec<Rc<Conn>>,
    stats: &mut ShardCounters,
    conn: &Rc<Conn>,
    frame: &OutFrame,
    max: usize,
) -> bool {
    if conn.closing().is_some() {
        return true;
    }
    stats.frames_out += 1;
    if conn.push(frame.clone()) > max {
        conn.flush();
        if conn.queued_bytes() > max {
            return false;
        }
    }
    mark_dirty(dirty, conn);
    true
}

fn mark_dirty(dirty: &mut Vec<Rc<Conn>>, conn: &Rc<Conn>) {
    if !conn.dirty.replace(true) {
        dirty.push(conn.clone());
    }
}

fn reply_to(conn: &Conn, id: &Option<ReqId>) -> ReplyTo {
    ReplyTo::Conn {
        conn: conn.id,
        id: id.clone(),
    }
}

fn not_member(room: &Name, doing: &str) -> ReplyError {
    ReplyError::new(
        ErrorCode::NotMember,
        format!("join room {room} before {doing} it"),
    )
}

/// Removes connection `id` from `map[key]`, dropping the key when it empties.
fn remove_member(map: &mut AHashMap<Name, Vec<Rc<Conn>>>, key: &Name, id: ConnId) {
    if let Some(list) = map.get_mut(key) {
        if let Some(i) = list.iter().position(|c| c.id == id) {
            list.swap_remove(i);
        }
        if list.is_empty() {
            map.remove(key);
        }
    }
}
