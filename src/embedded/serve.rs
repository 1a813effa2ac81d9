//! The embedded engine's handlers at a stream's home: each `EngineMsg` taken in order,
//! admission (session policy), online and the inbox replay, joins (presence, the join's seq,
//! the replay read), leaves, presence, user info and range reads. New messages go on to
//! `write`.
//!
//! They answer only with `NodeMsg`s: they must not touch connections or the hub's state.

use bytes::Bytes;

use super::Embedded;
use crate::config::PresenceMode;
use crate::core::error::HandshakeError;
use crate::core::{ConnId, Name, ShardId, Stream};
use crate::engine::{Joined, Outbox};
use crate::msg::{EngineMsg, NodeMsg, Replay, ReplayTo, WriteTarget};
use crate::persist::{FeedEvent, Op, Read};
use crate::protocol::encode;

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
            EngineMsg::Leave { room, user, conn } => self.leave(room, user, conn, out),
            EngineMsg::Publish {
                room,
                from,
                body,
                key,
                reply,
            } => self.message(WriteTarget::Room(room), from, body, key, reply, out),
            EngineMsg::Direct {
                to,
                from,
                body,
                key,
                reply,
            } => {
                let target = WriteTarget::Inbox {
                    to,
                    from: from.clone(),
                };
                self.message(target, from, body, key, reply, out)
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

    /// A member leaves: the feed's `left` (list rooms) and `vacated` (the last member), and
    /// the presence event to the members left.
    fn leave(&mut self, room: Name, user: Name, conn: ConnId, out: &mut Outbox) {
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

    /// Sends an answer to the shard that asked.
    pub(super) fn answer(&mut self, (shard, msg): (ShardId, NodeMsg), out: &mut Outbox) {
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

    /// Test-only: a panic halfway through a home's bookkeeping (a seq assigned, nothing
    /// stored or sent).
    #[cfg(any(test, feature = "fault-injection"))]
    pub(super) fn panic_here(&mut self) {
        let room = Name::new("fault-injection").expect("a valid name");
        self.rooms.next_seq(&room);
        panic!("fault injection: a panic inside a home's handler");
    }
}
