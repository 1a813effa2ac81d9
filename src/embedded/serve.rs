//! The embedded engine's handlers at a stream's home: admission (session policy), online and
//! the inbox replay, joins (presence, the join's seq, the replay read), publish and direct
//! (sequence, encode once, store, then one `Deliver` per shard with receivers; a repeated key
//! answered with its first seq), presence, user info and range reads.
//!
//! They answer only with `NodeMsg`s: they must not touch connections or the hub's state.

use std::time::Instant;

use bytes::Bytes;

use super::Embedded;
use super::keys::Keyed;
use crate::config::{Durability, PresenceMode};
use crate::core::error::{ErrorCode, HandshakeError, ReplyError};
use crate::core::event::EventWrite;
use crate::core::{ConnId, MsgKey, Name, ShardId, Stream};
use crate::engine::{Joined, Outbox};
use crate::msg::{EngineMsg, NodeMsg, Own, Replay, ReplayTo, ReplyTo, WriteTarget, Written};
use crate::persist::{FeedEvent, Op, Read};
use crate::protocol::encode::{self, Target};
use crate::store::Append;
use crate::ws;

impl Embedded {
    /// Serves one engine request at this home.
    pub(super) fn serve_here(&mut self, msg: EngineMsg, out: &mut Outbox) {
        match msg {
            EngineMsg::Register { user, conn } => self.admit(user, conn, out),
            EngineMsg::Unregister { user, conn } => {
                if self.users.release(&user, conn) {
                    self.store.feed(|| FeedEvent::Conn {
                        connected: false,
                        user,
                        conn,
                    });
                }
            }
            EngineMsg::Online { user, conn } => self.online(user, conn, out),
            EngineMsg::InboxHanded {
                user,
                after,
                upto,
                ok,
            } => {
                if let Some(cursor) = self.users.handed(&user, after, upto, ok) {
                    let stream = Stream::Inbox(user);
                    self.store.queue(Op::Cursor { stream, cursor });
                }
            }
            EngineMsg::Join {
                room,
                user,
                conn,
                jgen,
                id,
                ack,
                since,
                epoch: _,
                rights,
                info,
            } => {
                let joined = Joined::new(room, conn, jgen, id, ack, since, rights);
                self.register_join(&user, joined, info, out)
            }
            EngineMsg::Leave { room, user, conn } => {
                let rule = self.config.rule(&room);
                let before = self.rooms.members(&room);
                let event = self.rooms.leave(&room, &user, conn.shard(), &rule);
                if event.is_some() {
                    let (room, user) = (room.clone(), user.clone());
                    self.store.feed(|| FeedEvent::Member {
                        joined: false,
                        room,
                        user,
                    });
                }
                if before > 0 && self.rooms.members(&room) == 0 {
                    let room = room.clone();
                    self.store.feed(|| FeedEvent::Room {
                        occupied: false,
                        room,
                    });
                }
                if let (true, Some(event)) = (self.config.presence_events, event) {
                    self.spread(Stream::Room(room.clone()), None, event, None, None, out);
                }
            }
            EngineMsg::Publish {
                room,
                from,
                body,
                key,
                reply,
            } => {
                let stream = || Stream::Room(room.clone());
                let Some((key, reply)) = self.check_key(stream, &from, key, reply, out) else {
                    return;
                };
                if let Some(refused) = self.disk_refusal() {
                    return self.answer(reply.fail(refused), out);
                }
                let seq = self.rooms.next_seq(&room);
                self.counters.room_publishes += 1;
                let ts = crate::core::now_ms();
                let frame = encode::message(Target::Room(&room), &from, seq, ts, &body);
                let key = key.map(|(keyed, k)| (keyed, own_copy(&from, &k, &frame)));
                let target = WriteTarget::Room(room);
                self.store(target, seq, ts, frame, key, reply, out);
            }
            EngineMsg::Direct {
                to,
                from,
                body,
                key,
                reply,
            } => {
                let stream = || Stream::Inbox(to.clone());
                let Some((key, reply)) = self.check_key(stream, &from, key, reply, out) else {
                    return;
                };
                if let Some(refused) = self.disk_refusal() {
                    return self.answer(reply.fail(refused), out);
                }
                let seq = self.users.next_inbox_seq(&to);
                self.counters.direct_publishes += 1;
                let ts = crate::core::now_ms();
                let frame = encode::message(Target::User(&to), &from, seq, ts, &body);
                let key = key.map(|(keyed, k)| (keyed, own_copy(&from, &k, &frame)));
                let target = WriteTarget::Inbox { to, from };
                self.store(target, seq, ts, frame, key, reply, out);
            }
            EngineMsg::Presence { room, reply, page } => {
                let members = self.rooms.members(&room);
                let answer = match self.config.rule(&room).presence_at(members as usize) {
                    PresenceMode::List => {
                        let users = self.rooms.users(&room);
                        let max_bytes = self.config.max_queue_bytes / 2;
                        let info = |u: &Name| self.rooms.info(&room, u);
                        reply.presence(&room, users, page.as_ref(), max_bytes, info)
                    }
                    mode => reply.presence_count(&room, mode.as_str(), members),
                };
                self.answer(answer, out);
            }
            EngineMsg::UserInfo { user, reply } => {
                let n = self.users.online_count(&user);
                self.answer(reply.user_info(&user, n as u64), out);
            }
            EngineMsg::Forward {
                user,
                frame,
                exclude,
            } => self.spread(Stream::Inbox(user), None, frame, exclude, None, out),
            // Reads a shard hands straight to the store threads; served here all the same.
            EngineMsg::Event {
                room,
                from,
                event,
                api,
                reply,
            } => self.event(room, (from, event, api), reply, out),
            EngineMsg::Checked {
                room,
                from,
                event,
                reply,
                verdict,
            } => self.checked(room, (from, event), reply, verdict, out),
            msg @ (EngineMsg::History { .. } | EngineMsg::Sync { .. }) => {
                let _ = self.store.take(msg);
            }
            EngineMsg::Fetch {
                stream,
                after,
                upto,
                to,
            } => self.store.queue(Op::Read(Read::Range {
                stream,
                after,
                upto,
                to,
            })),
            EngineMsg::Signal {
                room,
                frame,
                exclude,
            } => self.signal_here(room, frame, exclude, out),
            EngineMsg::Read(read) => self.read_here(read, out),
            EngineMsg::Unread { user, reply } => self.unread_here(user, reply, out),
        }
    }

    /// A new message's key, checked: `None` when it repeats a remembered one, which is then
    /// answered (or, if its first message is not stored yet, answered once it is). Without a
    /// key, nothing is hashed or allocated.
    fn check_key(
        &mut self,
        stream: impl FnOnce() -> Stream,
        from: &Name,
        key: Option<MsgKey>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) -> Option<(Option<(Keyed, MsgKey)>, ReplyTo)> {
        let Some(key) = key else {
            return Some((None, reply));
        };
        let keyed = self.keys.keyed(from, &key);
        let stream = stream();
        let Some(seq) = self.keys.seen(&stream, keyed.0) else {
            return Some((Some((keyed, key)), reply));
        };
        let committed = match &stream {
            Stream::Room(room) => self.rooms.committed_seq(room),
            Stream::Inbox(user) => self.users.inbox_seq(user),
        };
        if seq > committed {
            self.repeats.push((stream, seq, reply));
        } else {
            self.answer(repeat_ack(&stream, seq, reply), out);
        }
        None
    }

    /// Answers the repeats waiting for message `seq` of `stream`, stored (`ok`) or not.
    fn settle_repeats(&mut self, stream: &Stream, seq: u64, ok: bool, out: &mut Outbox) {
        let waiting = std::mem::take(&mut self.repeats);
        for (s, at, reply) in waiting {
            if at != seq || s != *stream {
                self.repeats.push((s, at, reply));
            } else if ok {
                self.answer(repeat_ack(&s, seq, reply), out);
            } else {
                self.answer(reply.fail(write_failed()), out);
            }
        }
    }

    /// The error for a new message while the store writer says the disk is below
    /// `min_free_disk_bytes`: refused before it is sequenced, so it leaves no seq behind. Costs
    /// one relaxed atomic load per message when the disk is not low.
    pub(super) fn disk_refusal(&self) -> Option<ReplyError> {
        let free = self.store.persist().disk_low()?;
        let floor = self.config.min_free_disk_bytes;
        Some(ReplyError::new(
            ErrorCode::Unavailable,
            format!(
                "the server's disk is almost full ({free} bytes free, under its floor of \
                 {floor}); this message was not stored or delivered. Reading history still \
                 works; try sending again later"
            ),
        ))
    }

    /// `answer`, for the handlers in `events`.
    pub(super) fn answer_to(&mut self, answer: (ShardId, NodeMsg), out: &mut Outbox) {
        self.answer(answer, out);
    }

    /// Sends an answer to the shard that asked.
    fn answer(&mut self, (shard, msg): (ShardId, NodeMsg), out: &mut Outbox) {
        self.send(shard, msg, out);
    }

    /// Sends to shard `to`; an answer for this shard goes into `out`.
    pub(super) fn send(&self, to: ShardId, msg: NodeMsg, out: &mut Outbox) {
        if to == self.id {
            out.push(msg);
        } else {
            self.router.send(to, msg);
        }
    }

    fn admit(&mut self, user: Name, conn: ConnId, out: &mut Outbox) {
        let verdict = if self.shutting_down {
            Err(HandshakeError::Unavailable)
        } else {
            self.users.admit(&self.config, &user, conn)
        };
        if verdict.is_ok() {
            self.reads_for(&user, conn, out);
            self.store.feed(|| FeedEvent::Conn {
                connected: true,
                user: user.clone(),
                conn,
            });
        }
        let (verdict, kick) = match verdict {
            Ok(kick) => (Ok(self.users.inbox_seq(&user)), kick),
            Err(e) => (Err(e), Vec::new()),
        };
        self.send(conn.shard(), NodeMsg::Admitted { conn, verdict }, out);
        for shard in kick {
            let msg = NodeMsg::CloseUser {
                user: user.clone(),
                except: conn,
                code: crate::core::error::CloseCode::Replaced,
            };
            self.send(shard, msg, out);
        }
    }

    /// A connection is attached: it gets live direct messages from now on, and the ones no
    /// connection got, read from the store (or an empty replay at once).
    fn online(&mut self, user: Name, conn: ConnId, out: &mut Outbox) {
        let to = ReplayTo::Conn { conn, jgen: 0 };
        match self.users.online(&user, conn) {
            Some((after, upto)) => self.store.queue(Op::Read(Read::Inbox {
                user,
                to,
                after,
                upto,
            })),
            None => {
                let upto = self.users.inbox_seq(&user);
                let msg = NodeMsg::Replay(Replay {
                    stream: Stream::Inbox(user),
                    to,
                    after: upto,
                    upto,
                    ack: None,
                    frames: Bytes::new(),
                    ok: true,
                });
                self.send(conn.shard(), msg, out);
            }
        }
    }

    /// Registers a join and answers it with its seq. A join with `since` behind that seq is
    /// answered `replay`, and the writer then sends the ack and the messages in (since, seq].
    /// A room at its `max_members` refuses a new member with `room_full`.
    fn register_join(
        &mut self,
        user: &Name,
        joined: Joined,
        info: Option<Bytes>,
        out: &mut Outbox,
    ) {
        let (room, conn) = (&joined.room, joined.conn);
        let rule = self.config.rule(room);
        let before = self.rooms.members(room);
        let Ok(m) = self
            .rooms
            .join(room, user, conn.shard(), &rule, info.as_ref())
        else {
            return self.send(conn.shard(), joined.full(&rule), out);
        };
        if before == 0 {
            let room = room.clone();
            self.store.feed(|| FeedEvent::Room {
                occupied: true,
                room,
            });
        }
        if m.event.is_some() {
            let (room, user) = (room.clone(), user.clone());
            self.store.feed(|| FeedEvent::Member {
                joined: true,
                room,
                user,
            });
        }
        if let (true, Some(event)) = (self.config.presence_events, m.event) {
            self.spread(Stream::Room(room.clone()), None, event, None, None, out);
        }
        let (done, read) = joined.answer(m.seq, &rule, Some(m.members));
        self.send(conn.shard(), done, out);
        if let Some(read) = read {
            // Queued after every append of a message up to `seq`, so the writer reads them.
            self.store.queue(Op::Read(read));
        }
    }

    /// Sends an `occupancy` event for each room whose presence is a count and whose member
    /// count changed since the last one (`occupancy_interval_ms`).
    pub(super) fn occupancy(&mut self, out: &mut Outbox) {
        for (room, members) in self.rooms.occupancy_due() {
            let event = encode::occupancy(&room, members);
            self.spread(Stream::Room(room), None, event, None, None, out);
        }
    }

    /// Hands a sequenced message to the store (with its key, in the same commit). With sync
    /// durability it is acknowledged and delivered once stored (`Stored`); otherwise at once.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &mut self,
        target: WriteTarget,
        seq: u64,
        ts: u64,
        frame: Bytes,
        key: Option<(Keyed, Box<Own>)>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) {
        self.store_with(target, (seq, ts, frame), key, None, reply, out);
    }

    /// `store` for an edit, delete or reaction: its target's new state goes in the same commit.
    pub(super) fn store_event(
        &mut self,
        target: WriteTarget,
        entry: (u64, u64, Bytes),
        event: Box<EventWrite>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) {
        self.store_with(target, entry, None, Some(event), reply, out);
    }

    fn store_with(
        &mut self,
        target: WriteTarget,
        (seq, ts, frame): (u64, u64, Bytes),
        key: Option<(Keyed, Box<Own>)>,
        event: Option<Box<EventWrite>>,
        reply: ReplyTo,
        out: &mut Outbox,
    ) {
        let stream = target.stream();
        let offline = match &target {
            WriteTarget::Inbox { to, .. } => self.users.online_count(to) == 0,
            WriteTarget::Room(_) => false,
        };
        let (key, text) = match key {
            Some(((id, text), own)) => {
                self.keys.remember(&stream, id, seq);
                (Some((id, own)), Some(text))
            }
            None => (None, None),
        };
        let append = Append {
            stream,
            seq,
            ts,
            payload: ws::payload_of(&frame),
            key: text,
            event,
        };
        // Queued right after its append: the writer commits both in one batch.
        let event = self.store.persist().feed().map(|_| FeedEvent::Stream {
            stream: append.stream.clone(),
            seq,
            ts,
            offline,
            payload: append.payload.clone(),
        });
        let written = Written {
            target,
            seq,
            frame,
            reply,
            key,
        };
        // Publish latency starts here; one clock read per message.
        let sequenced = Instant::now();
        if self.config.durability == Durability::Sync {
            let done = Some((self.id, written));
            self.store_waits.push_back(sequenced);
            self.store.queue(Op::Append { append, done });
            self.store.queue_all(event.map(Op::Feed));
        } else {
            self.store.queue(Op::Append { append, done: None });
            self.store.queue_all(event.map(Op::Feed));
            self.delivered(written, out);
            self.counters.publish_latency.observe(sequenced.elapsed());
        }
    }

    /// The writer's answer for this home's writes (sync durability), in the order sent.
    pub(super) fn stored_here(&mut self, writes: Vec<Written>, ok: bool, out: &mut Outbox) {
        for w in writes {
            let sequenced = self.store_waits.pop_front();
            let keyed = (w.key.as_ref()).map(|(id, _)| (w.target.stream(), w.seq, *id));
            if ok {
                self.delivered(w, out);
                if let Some(at) = sequenced {
                    self.counters.publish_latency.observe(at.elapsed());
                }
            } else {
                self.answer(w.reply.fail(write_failed()), out);
            }
            if let Some((stream, seq, id)) = keyed {
                if !ok {
                    // It names no stored message: a resend must be stored.
                    self.keys.forget(&stream, id);
                }
                if !self.repeats.is_empty() {
                    self.settle_repeats(&stream, seq, ok, out);
                }
            }
        }
    }

    /// Once stored: acks the publisher and delivers the message.
    fn delivered(&mut self, w: Written, out: &mut Outbox) {
        let Written {
            target,
            seq,
            frame,
            reply,
            key,
        } = w;
        let own = key.map(|(_, own)| own);
        let publisher = reply.conn();
        let seq_json = || Bytes::from(format!("{{\"seq\":{seq}}}"));
        match target {
            WriteTarget::Room(room) => {
                self.rooms.commit(&room, seq);
                // The ack goes first: with a large room the fan-out's writes would delay it.
                let ack = reply.answer(
                    |id| encode::ack(id, Target::Room(&room), Some(seq)),
                    seq_json,
                );
                self.answer(ack, out);
                let room = Stream::Room(room);
                self.spread(room, Some(seq), frame, publisher, own, out);
            }
            WriteTarget::Inbox { to, from } => {
                let (live, cursor) = self.users.commit(&to, seq);
                if live {
                    let inbox = Stream::Inbox(to.clone());
                    self.spread(inbox, Some(seq), frame.clone(), publisher, None, out);
                }
                if let Some(cursor) = cursor {
                    let stream = Stream::Inbox(to.clone());
                    self.store.queue(Op::Cursor { stream, cursor });
                }
                if from != to {
                    // The sender's other connections get a copy (not in their inbox's seqs),
                    // with the key if it had one.
                    let forward = EngineMsg::Forward {
                        user: from,
                        frame: own.map_or(frame, |own| own.frame),
                        exclude: publisher,
                    };
                    self.route(forward, out);
                }
                let ack =
                    reply.answer(|id| encode::ack(id, Target::User(&to), Some(seq)), seq_json);
                self.answer(ack, out);
            }
        }
    }

    /// Sends a live frame of `stream` to every shard with its receivers (a room's members, a
    /// user's connections); this shard's own hub gets it through `out`. `own`: a keyed room
    /// message's copy for its sender's connections.
    fn spread(
        &self,
        stream: Stream,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
        own: Option<Box<Own>>,
        out: &mut Outbox,
    ) {
        let shards: &mut dyn Iterator<Item = ShardId> = match &stream {
            Stream::Room(room) => &mut self.rooms.shards_of(room),
            Stream::Inbox(user) => &mut self.users.shards_of(user),
        };
        for shard in shards {
            let msg = NodeMsg::Deliver {
                stream: stream.clone(),
                seq,
                frame: frame.clone(),
                exclude,
                own: own.clone(),
            };
            self.send(shard, msg, out);
        }
    }

    /// Test-only: a panic halfway through a home's bookkeeping (a seq assigned, nothing
    /// stored or sent).
    #[cfg(any(test, feature = "fault-injection"))]
    pub(super) fn panic_here(&mut self) {
        let room = Name::new("fault-injection").expect("a valid name");
        self.rooms.next_seq(&room);
        panic!("fault injection: a panic inside a home's handler");
    }
}

/// The ack of a repeated key: the first message's seq, and `dup`.
fn repeat_ack(stream: &Stream, seq: u64, reply: ReplyTo) -> (ShardId, NodeMsg) {
    let target = match stream {
        Stream::Room(room) => Target::Room(room),
        Stream::Inbox(to) => Target::User(to),
    };
    reply.answer(
        |id| encode::dup_ack(id, target, seq),
        || Bytes::from(format!("{{\"seq\":{seq},\"dup\":true}}")),
    )
}

fn write_failed() -> ReplyError {
    ReplyError::new(
        ErrorCode::Unavailable,
        "the message store failed; the message was not stored or delivered",
    )
}

/// The copy of a keyed message for its sender's other connections: the frame with the key.
fn own_copy(from: &Name, key: &MsgKey, frame: &Bytes) -> Box<Own> {
    Box::new(Own {
        user: from.clone(),
        frame: encode::with_key(&ws::payload_of(frame), key.as_str()),
    })
}
