//! Signals and read positions in the embedded engine (issue 23). A signal goes from the room's
//! home to the shards with members, like a presence event, and is never stored. Read positions
//! live at the user's home (`HomeReads`): every user's position per stream, loaded from the
//! store at start, moved forward only, written to the store coalesced (at most one write per
//! user and stream per `read_interval_ms`), and receipts coalesced the same way.
//!
//! It must not touch connections or the hub's state: it answers with `NodeMsg`s.

use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;

use super::Embedded;
use crate::core::{ConnId, Name, Stream};
use crate::engine::Outbox;
use crate::msg::{EngineMsg, NodeMsg, ReadMove, ReplyTo};
use crate::persist::Op;
use crate::protocol::encode;
use crate::store::ReadPosition;

/// A receipt due: (room, user, seq).
type Receipt = (Name, Name, u64);

/// The read positions of the users homed on one shard.
pub struct HomeReads {
    /// Each user's positions (a user reads few streams: a short list beats a map).
    by_user: AHashMap<Name, Vec<(Stream, u64)>>,
    /// Positions moved since the last write to the store.
    dirty: AHashMap<(Name, Stream), u64>,
    /// Receipts due: (room, user) → seq.
    receipts: AHashMap<(Name, Name), u64>,
    last_flush: Instant,
}

impl Default for HomeReads {
    fn default() -> Self {
        HomeReads {
            by_user: AHashMap::new(),
            dirty: AHashMap::new(),
            receipts: AHashMap::new(),
            last_flush: Instant::now(),
        }
    }
}

impl HomeReads {
    pub fn seed(&mut self, (user, stream, seq): ReadPosition) {
        self.by_user.entry(user).or_default().push((stream, seq));
    }

    /// The user's positions.
    pub fn of(&self, user: &Name) -> Vec<(Stream, u64)> {
        self.by_user.get(user).cloned().unwrap_or_default()
    }

    pub fn get(&self, user: &Name, stream: &Stream) -> u64 {
        (self.by_user.get(user).into_iter().flatten())
            .find(|(s, _)| s == stream)
            .map_or(0, |(_, seq)| *seq)
    }

    /// Moves the position forward to `seq`; whether it moved. With `receipt`, a receipt is
    /// due for the room.
    pub fn advance(&mut self, user: &Name, stream: &Stream, seq: u64, receipt: bool) -> bool {
        let list = self.by_user.entry(user.clone()).or_default();
        match list.iter_mut().find(|(s, _)| s == stream) {
            Some((_, at)) if *at >= seq => return false,
            Some((_, at)) => *at = seq,
            None => list.push((stream.clone(), seq)),
        }
        self.dirty.insert((user.clone(), stream.clone()), seq);
        if let (true, Stream::Room(room)) = (receipt, stream) {
            self.receipts.insert((room.clone(), user.clone()), seq);
        }
        true
    }

    /// Once per `every`: the positions to write and the receipts to send. So each user and
    /// stream costs at most one store write and one receipt per interval, however often read.
    pub fn due(&mut self, every: Duration) -> Option<(Vec<ReadPosition>, Vec<Receipt>)> {
        if self.last_flush.elapsed() < every || (self.dirty.is_empty() && self.receipts.is_empty())
        {
            return None;
        }
        self.last_flush = Instant::now();
        Some((self.take_dirty(), {
            let r = std::mem::take(&mut self.receipts);
            r.into_iter()
                .map(|((room, user), seq)| (room, user, seq))
                .collect()
        }))
    }

    /// Every position not written yet (at shutdown).
    pub fn take_dirty(&mut self) -> Vec<ReadPosition> {
        let d = std::mem::take(&mut self.dirty);
        d.into_iter().map(|((u, s), seq)| (u, s, seq)).collect()
    }
}

impl Embedded {
    /// A signal at the room's home: to every shard with members, as it is.
    pub(super) fn signal_here(
        &mut self,
        room: Name,
        frame: Bytes,
        exclude: Option<ConnId>,
        out: &mut Outbox,
    ) {
        for shard in self.rooms.shards_of(&room).collect::<Vec<_>>() {
            let msg = NodeMsg::Signal {
                room: room.clone(),
                frame: frame.clone(),
                exclude,
            };
            self.send(shard, msg, out);
        }
    }

    /// A `read` at the user's home: forward only (an inbox's clamped to its last seq here; a
    /// room's was clamped by the asking shard), told to the user's shards.
    pub(super) fn read_here(&mut self, mut read: ReadMove, out: &mut Outbox) {
        if let Stream::Inbox(_) = read.stream {
            read.seq = read.seq.min(self.users.inbox_seq(&read.user));
        }
        let ReadMove {
            user, stream, seq, ..
        } = &read;
        if self.reads.advance(user, stream, *seq, read.receipts) {
            for shard in self.users.shards_of(user).collect::<Vec<_>>() {
                let msg = NodeMsg::ReadMoved {
                    user: user.clone(),
                    stream: stream.clone(),
                    seq: *seq,
                    exclude: Some(read.conn),
                };
                self.send(shard, msg, out);
            }
        }
        if let Some(reply) = read.reply.take() {
            let at = self.reads.get(&read.user, &read.stream);
            let (shard, msg) = reply.read_ack(read.room(), at);
            self.send(shard, msg, out);
        }
    }

    /// The user's positions, to the shard of a connection being admitted (before `Admitted`).
    pub(super) fn reads_for(&self, user: &Name, conn: ConnId, out: &mut Outbox) {
        let msg = NodeMsg::Reads {
            user: user.clone(),
            reads: self.reads.of(user),
        };
        self.send(conn.shard(), msg, out);
    }

    /// Every `read_interval_ms`: the moved positions to the store (one op), the due receipts
    /// to their rooms' homes.
    pub(super) fn reads_tick(&mut self, out: &mut Outbox) {
        let every = Duration::from_millis(self.config.read_interval_ms);
        let Some((writes, receipts)) = self.reads.due(every) else {
            return;
        };
        if !writes.is_empty() {
            self.store.queue(Op::Reads(writes));
        }
        for (room, user, seq) in receipts {
            let frame = encode::receipt(&room, &user, seq);
            let msg = EngineMsg::Signal {
                room,
                frame,
                exclude: None,
            };
            self.route(msg, out);
        }
    }

    /// At shutdown: what has not been written yet.
    pub(super) fn reads_flush(&mut self) {
        let writes = self.reads.take_dirty();
        if !writes.is_empty() {
            self.store.queue(Op::Reads(writes));
            self.store.flush();
        }
    }
}

impl Embedded {
    /// `GET /api/users/{user}/unread` at the user's home: the writer adds each room's last
    /// seq (read after the appends queued before it).
    pub(super) fn unread_here(&mut self, user: Name, reply: ReplyTo, _out: &mut Outbox) {
        let read = crate::persist::Read::Unread {
            positions: self.reads.of(&user),
            inbox_seq: self.users.inbox_seq(&user),
            user,
            reply,
        };
        self.store.queue(Op::Read(read));
    }
}
