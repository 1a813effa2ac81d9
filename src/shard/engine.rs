//! The embedded engine: what a shard does as the home of the rooms and users that hash to it.
//!
//! It serves `EngineMsg`s: it assigns each stream's next seq, encodes the message once, hands
//! it to the store writer, and once stored sends it to every shard with members as a
//! `NodeMsg::Deliver` carrying its seq. It counts presence and sessions, keeps the inbox's
//! delivered cursor, and serves ranges (replay, gaps) through the writer. Its bookkeeping is
//! `home.rs`; the store threads are `persist`.
//!
//! It answers only with `NodeMsg`s (and reads the writer's `LocalMsg::Stored`): it must not
//! touch connections or the hub's state. A cluster engine serves the same requests elsewhere.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use super::Shard;
use super::home::{HomeRooms, HomeUsers};
use crate::config::Durability;
use crate::core::Name;
use crate::core::Stream;
use crate::core::error::{ErrorCode, HandshakeError, ReplyError};
use crate::core::{ConnId, ShardId};
use crate::msg::{EngineMsg, NodeMsg, Replay, ReplayTo, ReplyTo, WriteTarget, Written};
use crate::persist::{Joined, Op, Read};
use crate::protocol::encode::{self, Target};
use crate::store::{Append, StreamInfo};
use crate::ws;

pub(super) struct Home {
    pub rooms: HomeRooms,
    pub users: HomeUsers,
    /// When each message waiting for the store (sync durability) was sequenced, in the order
    /// handed to the writer. The writer answers a home's writes in that order (`Stored`).
    store_waits: VecDeque<Instant>,
}

impl Home {
    pub fn new(shards: usize, seeds: Vec<StreamInfo>) -> Home {
        let mut rooms = HomeRooms::new(shards);
        let mut users = HomeUsers::default();
        for info in seeds {
            match info.stream {
                Stream::Room(room) => rooms.seed(room, info.last_seq),
                Stream::Inbox(user) => users.seed(&user, info.last_seq, info.cursor),
            }
        }
        Home {
            rooms,
            users,
            store_waits: VecDeque::new(),
        }
    }
}

impl Shard {
    /// Serves one engine request at this home.
    pub(super) fn serve(&mut self, msg: EngineMsg) {
        match msg {
            EngineMsg::Register { user, conn } => self.admit(user, conn),
            EngineMsg::Unregister { user, conn } => self.home.users.release(&user, conn),
            EngineMsg::Online { user, conn } => self.online(user, conn),
            EngineMsg::InboxHanded {
                user,
                after,
                upto,
                ok,
            } => {
                if let Some(cursor) = self.home.users.handed(&user, after, upto, ok) {
                    let stream = Stream::Inbox(user);
                    self.queue_store_op(Op::Cursor { stream, cursor });
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
            } => {
                let joined = Joined::new(room, conn, jgen, id, ack, since);
                self.register_join(&user, joined)
            }
            EngineMsg::Leave { room, user, conn } => {
                let event = self.home.rooms.leave(&room, &user, conn.shard());
                if let (true, Some(event)) = (self.config.presence_events, event) {
                    self.spread(Stream::Room(room.clone()), None, event, None);
                }
            }
            EngineMsg::Publish {
                room,
                from,
                body,
                reply,
            } => {
                if let Some(refused) = self.disk_refusal() {
                    return self.answer(reply.fail(refused));
                }
                let seq = self.home.rooms.next_seq(&room);
                self.stats.room_publishes += 1;
                let ts = crate::core::now_ms();
                let frame = encode::message(Target::Room(&room), &from, seq, ts, &body);
                let stream = Stream::Room(room.clone());
                self.store(stream, WriteTarget::Room(room), seq, ts, frame, reply);
            }
            EngineMsg::Direct {
                to,
                from,
                body,
                reply,
            } => {
                if let Some(refused) = self.disk_refusal() {
                    return self.answer(reply.fail(refused));
                }
                let seq = self.home.users.next_inbox_seq(&to);
                self.stats.direct_publishes += 1;
                let ts = crate::core::now_ms();
                let frame = encode::message(Target::User(&to), &from, seq, ts, &body);
                let stream = Stream::Inbox(to.clone());
                let target = WriteTarget::Inbox { to, from };
                self.store(stream, target, seq, ts, frame, reply);
            }
            EngineMsg::Presence { room, reply, page } => {
                let users = self.home.rooms.users(&room);
                let max_bytes = self.config.max_queue_bytes / 2;
                self.answer(reply.presence(&room, users, page.as_ref(), max_bytes));
            }
            EngineMsg::UserInfo { user, reply } => {
                let n = self.home.users.online_count(&user);
                self.answer(reply.user_info(&user, n as u64));
            }
            EngineMsg::Forward {
                user,
                frame,
                exclude,
            } => self.spread(Stream::Inbox(user), None, frame, exclude),
            EngineMsg::Fetch {
                stream,
                after,
                upto,
                to,
            } => self.queue_store_op(Op::Read(Read::Range {
                stream,
                after,
                upto,
                to,
            })),
        }
    }

    /// The error for a new message while the store writer says the disk is below
    /// `min_free_disk_bytes`: refused before it is sequenced, so it leaves no seq behind. Costs
    /// one relaxed atomic load per message when the disk is not low.
    fn disk_refusal(&self) -> Option<ReplyError> {
        let free = self.persist.disk_low()?;
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

    /// Sends an answer to the shard that asked.
    fn answer(&mut self, (shard, msg): (ShardId, NodeMsg)) {
        self.send(shard, msg);
    }

    fn admit(&mut self, user: Name, conn: ConnId) {
        let verdict = if self.shutting_down {
            Err(HandshakeError::Unavailable)
        } else {
            self.home.users.admit(&self.config, &user, conn)
        };
        let (verdict, kick) = match verdict {
            Ok(kick) => (Ok(self.home.users.inbox_seq(&user)), kick),
            Err(e) => (Err(e), Vec::new()),
        };
        self.send(conn.shard(), NodeMsg::Admitted { conn, verdict });
        for shard in kick {
            let msg = NodeMsg::CloseUser {
                user: user.clone(),
                except: conn,
                code: crate::core::error::CloseCode::Replaced,
            };
            self.send(shard, msg);
        }
    }

    /// A connection is attached: it gets live direct messages from now on, and the ones no
    /// connection got, read from the store (or an empty replay at once).
    fn online(&mut self, user: Name, conn: ConnId) {
        let to = ReplayTo::Conn { conn, jgen: 0 };
        match self.home.users.online(&user, conn) {
            Some((after, upto)) => self.queue_store_op(Op::Read(Read::Inbox {
                user,
                to,
                after,
                upto,
            })),
            None => {
                let upto = self.home.users.inbox_seq(&user);
                let msg = NodeMsg::Replay(Replay {
                    stream: Stream::Inbox(user),
                    to,
                    after: upto,
                    upto,
                    ack: None,
                    frames: Bytes::new(),
                    ok: true,
                });
                self.send(conn.shard(), msg);
            }
        }
    }

    /// Registers a join and answers it with its seq. A join with `since` behind that seq is
    /// answered `replay`, and the writer then sends the ack and the messages in (since, seq].
    fn register_join(&mut self, user: &Name, joined: Joined) {
        let (room, conn) = (&joined.room, joined.conn);
        let (seq, event) = self.home.rooms.join(room, user, conn.shard());
        if let (true, Some(event)) = (self.config.presence_events, event) {
            self.spread(Stream::Room(room.clone()), None, event, None);
        }
        let (done, read) = joined.answer(seq);
        self.send(conn.shard(), done);
        if let Some(read) = read {
            // Queued after every append of a message up to `seq`, so the writer reads them.
            self.queue_store_op(Op::Read(read));
        }
    }

    /// Hands a sequenced message to the store. With sync durability it is acknowledged and
    /// delivered once stored (`Stored`); otherwise at once.
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
            self.home.store_waits.push_back(sequenced);
            self.queue_store_op(Op::Append { append, done });
        } else {
            self.queue_store_op(Op::Append { append, done: None });
            self.delivered(written);
            self.stats.publish_latency.observe(sequenced.elapsed());
        }
    }

    /// The writer's answer for this home's writes (sync durability), in the order sent.
    pub(super) fn stored(&mut self, writes: Vec<Written>, ok: bool) {
        for w in writes {
            let sequenced = self.home.store_waits.pop_front();
            if ok {
                self.delivered(w);
                if let Some(at) = sequenced {
                    self.stats.publish_latency.observe(at.elapsed());
                }
            } else {
                let err = ReplyError::new(
                    ErrorCode::Unavailable,
                    "the message store failed; the message was not stored or delivered",
                );
                self.answer(w.reply.fail(err));
            }
        }
    }

    /// Once stored: acks the publisher and delivers the message.
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
                self.home.rooms.commit(&room, seq);
                // The ack goes first: with a large room the fan-out's writes would delay it.
                let ack = reply.answer(
                    |id| encode::ack(id, Target::Room(&room), Some(seq)),
                    seq_json,
                );
                self.answer(ack);
                self.spread(Stream::Room(room), Some(seq), frame, publisher);
            }
            WriteTarget::Inbox { to, from } => {
                let (live, cursor) = self.home.users.commit(&to, seq);
                if live {
                    self.spread(
                        Stream::Inbox(to.clone()),
                        Some(seq),
                        frame.clone(),
                        publisher,
                    );
                }
                if let Some(cursor) = cursor {
                    let stream = Stream::Inbox(to.clone());
                    self.queue_store_op(Op::Cursor { stream, cursor });
                }
                if from != to {
                    // The sender's other connections get a copy (not in their inbox's seqs).
                    self.to_engine(EngineMsg::Forward {
                        user: from,
                        frame,
                        exclude: publisher,
                    });
                }
                let ack =
                    reply.answer(|id| encode::ack(id, Target::User(&to), Some(seq)), seq_json);
                self.answer(ack);
            }
        }
    }

    /// Sends a live frame of `stream` to every shard with its receivers (a room's members, a
    /// user's connections); this shard's own hub gets it in place, without a copy.
    fn spread(&mut self, stream: Stream, seq: Option<u64>, frame: Bytes, exclude: Option<ConnId>) {
        let local = {
            let shards: &mut dyn Iterator<Item = _> = match &stream {
                Stream::Room(room) => &mut self.home.rooms.shards_of(room),
                Stream::Inbox(user) => &mut self.home.users.shards_of(user),
            };
            let mut local = false;
            for shard in shards {
                if shard == self.id {
                    local = true;
                    continue;
                }
                let msg = NodeMsg::Deliver {
                    stream: stream.clone(),
                    seq,
                    frame: frame.clone(),
                    exclude,
                };
                self.router.send(shard, msg);
            }
            local
        };
        if local {
            self.deliver(stream, seq, frame, exclude);
        }
    }

    /// Test-only: a panic halfway through a home's bookkeeping (a seq assigned, nothing
    /// stored or sent).
    #[cfg(any(test, feature = "fault-injection"))]
    pub(super) fn panic_midway(&mut self) {
        let room = Name::new("fault-injection").expect("a valid name");
        self.home.rooms.next_seq(&room);
        panic!("fault injection: a panic inside a home's handler");
    }
}
