//! The hub's side of reads: a catching-up connection's replay (a join with `since`, the inbox at
//! connect) and the gaps read for it or for the hub itself, merged by seq with the live frames
//! that waited for them. A read that failed is never skipped: the connections that needed it
//! are told to reconnect and recover.

use std::rc::Rc;

use bytes::Bytes;

use crate::conn::{Conn, OutFrame};
use crate::core::Stream;
use crate::core::error::CloseCode;
use crate::msg::{EngineMsg, Replay, ReplayTo};
use crate::shard::Shard;
use crate::shard::merge::Position;

impl Shard {
    /// A read from the engine: a catching-up connection's replay or gap, or this hub's gap.
    pub(in crate::shard) fn replayed(&mut self, r: Replay) {
        let Replay {
            stream,
            to,
            after,
            upto,
            ack,
            frames,
            ok,
        } = r;
        match (stream, to) {
            (stream @ Stream::Room(_), ReplayTo::Hub { .. }) => {
                self.filled(stream, after, upto, frames, ok)
            }
            (Stream::Room(room), ReplayTo::Conn { conn, jgen }) => {
                let Some(hr) = self.hub.rooms.get_mut(&room) else {
                    return;
                };
                let Some(i) = hr
                    .catch_up
                    .iter()
                    .position(|cu| cu.conn.id == conn && cu.jgen == jgen && cu.reading)
                else {
                    return;
                };
                let c = hr.catch_up[i].conn.clone();
                if !ok {
                    return self.lost_reading(&c);
                }
                let acked = ack.is_some();
                if let Some(ack) = ack {
                    let ack = self.with_read(&c.user, &room, &ack);
                    self.enqueue(&c, &Rc::new(ack));
                }
                let Some(hr) = self.hub.rooms.get_mut(&room) else {
                    return;
                };
                let mut out = Vec::new();
                let gap = hr.catch_up[i].replayed(upto, frames, &mut out);
                let written = hr.catch_up[i].written;
                self.write_all(&c, out);
                if acked {
                    // Repeated joins are answered after what the connection was just written.
                    self.join_answered(&c, jgen, written);
                }
                if let Some(gap) = gap {
                    self.fetch(
                        Stream::Room(room.clone()),
                        gap,
                        ReplayTo::Conn { conn, jgen },
                    );
                }
                self.settle(&room);
            }
            (Stream::Inbox(user), ReplayTo::Conn { conn, .. }) => {
                let Some(cu) = self.hub.inbox.get_mut(&conn).filter(|cu| cu.reading) else {
                    return;
                };
                let c = cu.conn.clone();
                let first = std::mem::replace(&mut cu.first_inbox, false);
                if first {
                    let handed = EngineMsg::InboxHanded {
                        user: user.clone(),
                        after,
                        upto,
                        ok,
                    };
                    self.to_engine(handed);
                }
                if !ok {
                    return self.lost_reading(&c);
                }
                let Some(cu) = self.hub.inbox.get_mut(&conn) else {
                    return;
                };
                let mut out = Vec::new();
                let gap = if first {
                    // Right behind `welcome`, ahead of everything queued since; then the
                    // connection's writes, held for this, may start.
                    let gap = cu.replayed(upto, Bytes::new(), &mut out);
                    if !frames.is_empty() {
                        self.stats.frames_out += 1;
                        c.push_after_first(Rc::new(frames));
                    }
                    c.hold.set(c.hold.get().saturating_sub(1));
                    self.mark_dirty(&c);
                    gap
                } else {
                    cu.replayed(upto, frames, &mut out)
                };
                self.write_all(&c, out);
                match gap {
                    Some(gap) => {
                        self.fetch(Stream::Inbox(user), gap, ReplayTo::Conn { conn, jgen: 0 })
                    }
                    None => {
                        if let Some(cu) = self.hub.inbox.remove(&conn) {
                            if !cu.idle() {
                                self.hub.inbox.insert(conn, cu);
                            } else if let Some(u) = self.hub.users.get_mut(&user) {
                                u.pos.caught_up(cu.written);
                            }
                        }
                    }
                }
                if c.queued_bytes() > self.config.max_queue_bytes {
                    self.close_conn(&c, CloseCode::SlowConsumer);
                }
            }
            (Stream::Inbox(user), ReplayTo::Hub { .. }) => {
                self.filled(Stream::Inbox(user), after, upto, frames, ok)
            }
        }
    }

    /// A stored range could not be read for this connection: it cannot be caught up without a
    /// gap, so it is closed with a code that says reconnect (and join with `since`).
    fn lost_reading(&mut self, c: &Rc<Conn>) {
        self.close_conn_with(
            c,
            CloseCode::Internal,
            Some("could not read missed messages; reconnect and join with since"),
        );
    }

    /// The engine's read of this hub's gap: hand it on, then the frames that waited for it.
    fn filled(&mut self, stream: Stream, after: u64, upto: u64, frames: Bytes, ok: bool) {
        let (pos, members): (&mut Position, Vec<Rc<Conn>>) = match &stream {
            Stream::Room(room) => match self.hub.rooms.get_mut(room) {
                Some(hr) => {
                    let all = (hr.members.iter())
                        .chain(hr.catch_up.iter().map(|cu| &cu.conn))
                        .cloned()
                        .collect();
                    (&mut hr.pos, all)
                }
                None => return,
            },
            Stream::Inbox(user) => match self.hub.users.get_mut(user) {
                Some(u) => (&mut u.pos, u.conns.clone()),
                None => return,
            },
        };
        if !ok {
            // Never skipped silently: every local member is told to reconnect and recover.
            for c in members {
                self.lost_reading(&c);
            }
            return;
        }
        let (new, waiting) = pos.filled(upto);
        if new {
            let range = Some((after + 1, upto));
            match &stream {
                Stream::Room(room) => self.hand_room(room, range, frames, None, None),
                Stream::Inbox(user) => self.hand_user(user, range, frames, None),
            }
        }
        for (seq, frame, exclude) in waiting {
            self.deliver(stream.clone(), Some(seq), frame, exclude, None);
        }
    }

    /// Queues a catch-up's frames for its connection.
    fn write_all(&mut self, c: &Rc<Conn>, frames: Vec<OutFrame>) {
        for f in &frames {
            self.stats.deliveries += 1;
            self.enqueue(c, f);
        }
    }
}
