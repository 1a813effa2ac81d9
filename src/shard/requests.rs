//! A connection's requests: each decoded frame parsed into a request, checked (membership,
//! rights, limits) and turned into an `EngineMsg`; joins and leaves with their generations, so
//! a connection's join acks come in the order of its requests.
//!
//! Owns the joins waiting for the engine (`joins`). It must not sequence, store or fan out.

use std::rc::Rc;

use bytes::Bytes;

use super::{Shard, reply_to};
use crate::conn::{Conn, Event, RoomEntry};
use crate::core::error::{CloseCode, ErrorCode, ReplyError};
use crate::core::rights::Rights;
use crate::core::{ConnId, JoinGen};
use crate::core::{Name, ReqId};
use crate::msg::{EngineMsg, FoldFor, PresencePage};
use crate::protocol::encode::{self, RoomInfo, Target};
use crate::protocol::{self, ClientMessage, Request};
use crate::ws;

/// A join sent to the engine and not answered yet.
pub(super) struct PendingJoin {
    pub room: Name,
    /// The join's own request, if it owes an ack (a token's rooms do not).
    pub id: Option<Option<ReqId>>,
    /// Repeated joins of the same room meanwhile, answered right after this one.
    pub repeats: Vec<Option<ReqId>>,
}

impl Shard {
    // ----- inbound client traffic -------------------------------------------------------------

    /// Applies one decoded event from a connection.
    pub fn on_event(&mut self, conn: &Rc<Conn>, event: Event<'_>) {
        if let Event::Text(_) | Event::Binary(_) | Event::TooLarge = event {
            self.stats.frames_in += 1;
        }
        match event {
            Event::Binary(bytes) if conn.proto() => match crate::wire::decode(bytes) {
                Ok(frame) => match frame.request() {
                    Ok(req) => self.on_request(conn, req),
                    Err(e) => self.reply_error(conn, e.id.as_ref(), e.error),
                },
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable binary frame");
                    let reason = "binary message is not a shardcast.proto ClientFrame";
                    self.close_conn_with(conn, CloseCode::InvalidPayload, Some(reason))
                }
            },
            Event::Binary(_) => self.reply_error(
                conn,
                None,
                ReplyError::new(
                    ErrorCode::BadRequest,
                    "binary frames need the shardcast.proto subprotocol \
                     (Sec-WebSocket-Protocol); send JSON in text frames",
                ),
            ),
            Event::Text(_) if conn.proto() => self.reply_error(
                conn,
                None,
                ReplyError::new(
                    ErrorCode::BadRequest,
                    "this connection speaks shardcast.proto: send ClientFrames in binary frames",
                ),
            ),
            Event::Text(text) => self.on_text(conn, text),
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

    pub(super) fn on_request(&mut self, conn: &Rc<Conn>, req: Request<'_>) {
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
                self.join_or_hook(conn, room, (since, epoch), id.clone())
            }
            ClientMessage::Leave { room } => self.leave(conn, room, &id),
            ClientMessage::Publish { room, body, key } => self
                .member(conn, &room, "publishing to")
                .and_then(|()| self.may(conn, &room, Rights::PUBLISH))
                .and_then(|()| protocol::check_body_depth(body.get(), self.config.max_body_depth))
                .and_then(|()| self.take_token(conn))
                .and_then(|()| self.charge_store(conn, &room, body.get().len()))
                .map(|()| {
                    let body = Bytes::copy_from_slice(body.get().as_bytes());
                    self.publish(conn, room, body, key, id.clone())
                }),
            ClientMessage::Send { to, body, key } => {
                protocol::check_body_depth(body.get(), self.config.max_body_depth)
                    .and_then(|()| self.take_token(conn))
                    .and_then(|()| self.charge_store(conn, &to, body.get().len()))
                    .map(|()| {
                        let body = Bytes::copy_from_slice(body.get().as_bytes());
                        self.send_direct(conn, to, body, key, id.clone())
                    })
            }
            msg @ (ClientMessage::Edit { .. }
            | ClientMessage::Delete { .. }
            | ClientMessage::React { .. }) => self.event_request(conn, msg, &id),
            ClientMessage::History {
                room,
                before,
                limit,
                fold,
            } => self
                .member(conn, &room, "reading the history of")
                .and_then(|()| self.may(conn, &room, Rights::HISTORY))
                .and_then(|()| self.may_read(conn))
                .and_then(|()| self.take_token(conn))
                .map(|()| {
                    self.to_engine(EngineMsg::History {
                        room,
                        reply: reply_to(conn, &id),
                        before,
                        limit,
                        fold: fold.then(|| FoldFor {
                            reader: Some(conn.user.clone()),
                        }),
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
            ClientMessage::Signal { room, body } => self.signal(conn, room, body, id.as_ref()),
            ClientMessage::Read { room, seq } => self.read(conn, room, seq, id.clone()),
            ClientMessage::Presence { room, after, limit } => self
                .member(conn, &room, "asking who is in")
                .and_then(|()| self.may(conn, &room, Rights::PRESENCE))
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
    /// `since` is the request's `since` and `epoch`.
    pub(super) fn join(
        &mut self,
        conn: &Rc<Conn>,
        room: Name,
        since: (Option<u64>, Option<u64>),
        id: Option<ReqId>,
    ) -> Result<(), ReplyError> {
        self.may(conn, &room, Rights::JOIN)?;
        if since.0.is_some() {
            self.may(conn, &room, Rights::HISTORY)?;
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
                let ack = self.room_ack(conn, id.as_ref(), &room, seq);
                self.enqueue(conn, &Rc::new(ack));
            }
            Some((jgen, false)) => match self.joins.get_mut(&jgen) {
                Some(j) => j.repeats.push(id),
                // A token room's join (nothing to answer) that is catching up.
                None => {
                    let seq = self.hub.last_seq(&room);
                    let ack = self.room_ack(conn, id.as_ref(), &room, seq);
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
    pub(super) fn start_join(
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
            rights: self.rights_in(conn, &room),
            info: self.presence_info.get(&conn.id).cloned(),
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
            self.token_room_joined(conn, &j.room, seq);
            conn.hold.set(conn.hold.get().saturating_sub(1));
            self.mark_dirty(conn);
        }
        for id in j.repeats {
            let ack = self.room_ack(conn, id.as_ref(), &j.room, seq);
            self.enqueue(conn, &Rc::new(ack));
        }
    }

    /// The ack of a join the client side answers itself (a room the connection is in, or
    /// joining): the room's rule and the connection's rights, as the engine's ack gives them,
    /// without the member count.
    fn room_ack(&self, conn: &Conn, id: Option<&ReqId>, room: &Name, seq: u64) -> Bytes {
        let rule = self.config.rule(room);
        let info = RoomInfo {
            publish: rule.publish.as_str(),
            presence: rule.presence.as_str(),
            rights: self.rights_in(conn, room),
            members: None,
        };
        let ack = encode::with_room(&encode::ack(id, Target::Room(room), Some(seq)), &info);
        self.with_read(&conn.user, room, &ack)
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
                self.token_room_joined(conn, &j.room, 0);
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
        conn.set_grants(new.rooms);
        let gone: Vec<Name> = (conn.rooms.borrow().iter())
            .filter(|e| !conn.rights(&e.room).contains(Rights::JOIN))
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
                self.token_room_joined(&c, &j.room, 0);
                c.hold.set(c.hold.get().saturating_sub(1));
                self.mark_dirty(&c);
            }
            for join_id in j.id.into_iter().chain(j.repeats) {
                self.reply_error(&c, join_id.as_ref(), error.clone());
            }
        }
    }

    pub(super) fn member(&self, conn: &Conn, room: &Name, doing: &str) -> Result<(), ReplyError> {
        if conn.rooms.borrow().iter().any(|e| &e.room == room) {
            Ok(())
        } else {
            Err(not_member(room, doing))
        }
    }
}

fn not_member(room: &Name, doing: &str) -> ReplyError {
    ReplyError::new(
        ErrorCode::NotMember,
        format!("join room {room} before {doing} it"),
    )
}
