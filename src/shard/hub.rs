//! The hub: this shard's local membership, the fan-out of each frame to it, and catch-up.
//!
//! Owns the room → members and user → connections maps of this shard, each room's position
//! in its stream (`HubRoom::last`), and the connections catching up on a stream. Every live
//! frame arrives with its stream's seq, and the hub merges by seq, not by arrival order:
//! - a room frame at or below `last` is a duplicate and dropped; one above `last + 1` means a
//!   gap, and the frames after it wait while the engine reads the gap;
//! - a catching-up connection holds the live frames while its replay is read, then drops what
//!   the replay covered and writes the rest in seq order (`CatchUp`).
//!
//! So the hub is correct over any transport that may drop, repeat or reorder. It must not
//! sequence or store (the engine does) nor parse client requests (the client side does).

use std::collections::VecDeque;
use std::rc::Rc;

use ahash::AHashMap;
use bytes::Bytes;

use super::client::RoomEntry;
use super::{Shard, queue_frame, remove_conn};
use crate::conn::{Conn, OutFrame};
use crate::error::CloseCode;
use crate::msg::{ConnId, EngineMsg, JoinGen, ReplayTo};
use crate::protocol::Name;
use crate::store::Stream;

#[derive(Default)]
pub(super) struct Hub {
    rooms: AHashMap<Name, HubRoom>,
    /// Attached connections of each user on this shard.
    users: AHashMap<Name, Vec<Rc<Conn>>>,
    /// Connections catching up on their inbox (right after connecting).
    inbox: AHashMap<ConnId, CatchUp>,
}

struct HubRoom {
    /// Members that receive the room's frames as they come.
    members: Vec<Rc<Conn>>,
    /// The last seq handed to the members.
    last: u64,
    /// Members whose join is still catching up.
    catch_up: Vec<CatchUp>,
    /// While the engine reads a gap: the live frames after it, in arrival order.
    waiting: Option<Vec<(u64, Bytes, Option<ConnId>)>>,
}

impl HubRoom {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.catch_up.is_empty()
    }
}

/// One connection catching up on a stream: the frames it has been written cover the stream up
/// to `written`; live frames wait in `held` while a read is out.
struct CatchUp {
    conn: Rc<Conn>,
    jgen: JoinGen,
    written: u64,
    /// A replay or gap read is out.
    reading: bool,
    /// The inbox's first replay, which goes right behind `welcome`.
    first_inbox: bool,
    held: VecDeque<Held>,
    held_bytes: usize,
}

/// A live frame held for a catching-up connection. `range` is the seqs it covers (one message,
/// or a gap fill), `None` for a frame outside the stream (a presence event, the copy of a
/// direct message sent). `mine`: the connection's own publish, which it is not sent.
struct Held {
    range: Option<(u64, u64)>,
    frame: OutFrame,
    mine: bool,
}

/// A read to ask the engine for: the stream's messages in (after, upto].
type Gap = (u64, u64);

impl CatchUp {
    fn new(conn: Rc<Conn>, jgen: JoinGen, written: u64, reading: bool) -> CatchUp {
        CatchUp {
            conn,
            jgen,
            written,
            reading,
            first_inbox: false,
            held: VecDeque::new(),
            held_bytes: 0,
        }
    }

    /// A live frame: written now (into `out`) if nothing is pending, else held.
    fn offer(&mut self, h: Held, out: &mut Vec<OutFrame>) -> Option<Gap> {
        if self.reading || !self.held.is_empty() {
            self.held_bytes += h.frame.len();
            self.held.push_back(h);
            return None;
        }
        self.apply(h, out)
    }

    /// A read's answer: its frames cover the stream up to `upto`; then the held frames.
    fn replayed(&mut self, upto: u64, frames: Bytes, out: &mut Vec<OutFrame>) -> Option<Gap> {
        self.reading = false;
        if !frames.is_empty() {
            out.push(Rc::new(frames));
        }
        self.written = self.written.max(upto);
        while !self.reading
            && let Some(h) = self.held.pop_front()
        {
            self.held_bytes -= h.frame.len();
            if let Some(gap) = self.apply(h, out) {
                return Some(gap);
            }
        }
        None
    }

    /// Merges one frame by seq: what the connection has is dropped, the next is written, and
    /// anything past a gap waits for a read of the gap.
    fn apply(&mut self, h: Held, out: &mut Vec<OutFrame>) -> Option<Gap> {
        let Some((first, last)) = h.range else {
            if !h.mine {
                out.push(h.frame);
            }
            return None;
        };
        if last <= self.written {
            return None;
        }
        if first == self.written + 1 {
            if !h.mine && !h.frame.is_empty() {
                out.push(h.frame);
            }
            self.written = last;
            return None;
        }
        self.reading = true;
        if first > self.written + 1 {
            let gap = (self.written, first - 1);
            self.held_bytes += h.frame.len();
            self.held.push_front(h);
            Some(gap)
        } else {
            // Overlaps what was written: re-read the rest of its range instead.
            Some((self.written, last))
        }
    }

    fn idle(&self) -> bool {
        !self.reading && self.held.is_empty()
    }
}

impl Hub {
    /// Rooms with a live member on this shard.
    pub fn rooms_in_use(&self) -> usize {
        self.rooms
            .values()
            .filter(|r| !r.members.is_empty())
            .count()
    }

    /// The seq this shard's members of the room have been written up to.
    pub fn last_seq(&self, room: &Name) -> u64 {
        self.rooms.get(room).map_or(0, |r| r.last)
    }

    /// The user's attached connections on this shard.
    pub fn conns_of(&self, user: &Name) -> Vec<Rc<Conn>> {
        self.users.get(user).cloned().unwrap_or_default()
    }
}

impl Shard {
    /// A new connection: it receives its user's direct messages, held until its inbox replay.
    pub(super) fn hub_attach(&mut self, conn: &Rc<Conn>) {
        self.hub
            .users
            .entry(conn.user.clone())
            .or_default()
            .push(conn.clone());
        let mut cu = CatchUp::new(conn.clone(), 0, 0, true);
        cu.first_inbox = true;
        self.hub.inbox.insert(conn.id, cu);
    }

    /// Removes a connection from the hub (before its room entries are dropped).
    pub(super) fn hub_detach(&mut self, conn: &Rc<Conn>) {
        if let Some(list) = self.hub.users.get_mut(&conn.user)
            && remove_conn(list, conn.id)
        {
            self.hub.users.remove(&conn.user);
        }
        self.hub.inbox.remove(&conn.id);
        let rooms = conn.rooms.borrow();
        for entry in rooms.iter() {
            self.hub_leave(conn, entry);
        }
    }

    /// The connection is no longer in the room, live or catching up.
    pub(super) fn hub_leave(&mut self, conn: &Conn, entry: &RoomEntry) {
        let Some(hr) = self.hub.rooms.get_mut(&entry.room) else {
            return;
        };
        if entry.live {
            remove_conn(&mut hr.members, conn.id);
        } else {
            hr.catch_up.retain(|cu| cu.conn.id != conn.id);
        }
        if hr.is_empty() {
            self.hub.rooms.remove(&entry.room);
        }
    }

    /// The engine registered a join at `seq`. Without `replay` the ack (if owed) is written now
    /// and the connection goes live once the hub is at `seq`; with it, the connection catches
    /// up from the `Replay` that follows.
    pub(super) fn join_done(
        &mut self,
        room: Name,
        conn: ConnId,
        jgen: JoinGen,
        seq: u64,
        ack: Option<Bytes>,
        replay: bool,
    ) {
        let Some(c) = self.conns.get(&conn).cloned() else {
            return;
        };
        let current = c
            .rooms
            .borrow()
            .iter()
            .any(|e| e.room == room && e.jgen == jgen && !e.live);
        if !current {
            return;
        }
        if let Some(ack) = ack {
            self.enqueue(&c, &Rc::new(ack));
        }
        if !replay {
            self.join_answered(&c, jgen, seq);
        }
        let hr = self
            .hub
            .rooms
            .entry(room.clone())
            .or_insert_with(|| HubRoom {
                members: Vec::new(),
                last: seq,
                catch_up: Vec::new(),
                waiting: None,
            });
        if !replay && hr.last == seq {
            // The usual case: nothing to merge.
            go_live(&c, &room, jgen);
            hr.members.push(c);
            return;
        }
        hr.catch_up.push(CatchUp::new(c, jgen, seq, replay));
        self.settle(&room);
    }

    /// A read from the engine: a catching-up connection's replay or gap, or this hub's gap.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn replayed(
        &mut self,
        stream: Stream,
        to: ReplayTo,
        after: u64,
        upto: u64,
        ack: Option<Bytes>,
        frames: Bytes,
        ok: bool,
    ) {
        match (stream, to) {
            (Stream::Room(room), ReplayTo::Hub { .. }) => {
                self.filled(&room, after, upto, frames, ok)
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
                        if self.hub.inbox.get(&conn).is_some_and(CatchUp::idle) {
                            self.hub.inbox.remove(&conn);
                        }
                    }
                }
                if c.queued_bytes() > self.config.max_queue_bytes {
                    self.close_conn(&c, CloseCode::SlowConsumer);
                }
            }
            (Stream::Inbox(_), ReplayTo::Hub { .. }) => {}
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

    /// A room frame from the engine, merged by seq (see the module doc).
    pub(super) fn deliver_room(
        &mut self,
        room: &Name,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
    ) {
        let Some(hr) = self.hub.rooms.get_mut(room) else {
            return;
        };
        let Some(s) = seq else {
            return self.hand(room, None, frame, exclude);
        };
        if let Some(waiting) = &mut hr.waiting {
            waiting.push((s, frame, exclude));
            return;
        }
        if s <= hr.last {
            self.stats.duplicates_dropped += 1;
            return;
        }
        if s > hr.last + 1 {
            let gap = (hr.last, s - 1);
            hr.waiting = Some(vec![(s, frame, exclude)]);
            self.stats.gaps += 1;
            let to = ReplayTo::Hub {
                node: self.router.node(),
                shard: self.id,
            };
            return self.fetch(Stream::Room(room.clone()), gap, to);
        }
        self.hand(room, Some((s, s)), frame, exclude);
    }

    /// The engine's read of this hub's gap: hand it on, then the frames that waited for it.
    fn filled(&mut self, room: &Name, after: u64, upto: u64, frames: Bytes, ok: bool) {
        let Some(hr) = self.hub.rooms.get_mut(room) else {
            return;
        };
        if !ok {
            // Never skipped silently: every local member is told to reconnect and recover.
            let all: Vec<_> = (hr.members.iter())
                .chain(hr.catch_up.iter().map(|cu| &cu.conn))
                .cloned()
                .collect();
            for c in all {
                self.lost_reading(&c);
            }
            return;
        }
        let waiting = hr.waiting.take().unwrap_or_default();
        if upto > hr.last {
            self.hand(room, Some((after + 1, upto)), frames, None);
        }
        for (seq, frame, exclude) in waiting {
            self.deliver_room(room, Some(seq), frame, exclude);
        }
    }

    /// Writes a frame to the room's local members, and offers it to those catching up. `range`
    /// (the seqs it covers) moves the room's position.
    ///
    /// Per live member: one non-atomic `Rc` increment, a queue push and two counter adds. No
    /// allocation (queue capacity is reused), no copy, no syscall: each socket touched gets
    /// one writev for the whole scheduler pass, in `flush_dirty`.
    fn hand(&mut self, room: &Name, range: Option<(u64, u64)>, frame: Bytes, ex: Option<ConnId>) {
        let Shard {
            hub,
            dirty,
            stats,
            config,
            ..
        } = self;
        let Some(hr) = hub.rooms.get_mut(room) else {
            return;
        };
        if let Some((_, last)) = range {
            hr.last = last;
        }
        let max = config.max_queue_bytes;
        let frame = Rc::new(frame);
        let mut slow = Vec::new();
        if !frame.is_empty() {
            for c in &hr.members {
                if Some(c.id) == ex {
                    continue;
                }
                stats.deliveries += 1;
                if !queue_frame(dirty, stats, c, &frame, max) {
                    slow.push(c.clone());
                }
            }
        }
        let mut gaps = Vec::new();
        for cu in &mut hr.catch_up {
            let mine = Some(cu.conn.id) == ex;
            let mut out = Vec::new();
            let held = Held {
                range,
                frame: frame.clone(),
                mine,
            };
            if let Some(gap) = cu.offer(held, &mut out) {
                gaps.push((cu.conn.id, cu.jgen, gap));
            }
            for f in &out {
                stats.deliveries += 1;
                if !queue_frame(dirty, stats, &cu.conn, f, max) {
                    slow.push(cu.conn.clone());
                }
            }
            if cu.held_bytes > max {
                slow.push(cu.conn.clone());
            }
        }
        for (conn, jgen, gap) in gaps {
            self.fetch(
                Stream::Room(room.clone()),
                gap,
                ReplayTo::Conn { conn, jgen },
            );
        }
        if range.is_some() {
            self.settle(room);
        }
        for c in slow {
            self.close_conn(&c, CloseCode::SlowConsumer);
        }
    }

    /// Moves the room's caught-up connections to its members, and asks for what an idle one
    /// is missing behind the room's position.
    fn settle(&mut self, room: &Name) {
        let Some(hr) = self.hub.rooms.get_mut(room) else {
            return;
        };
        let mut gaps = Vec::new();
        let mut i = 0;
        while i < hr.catch_up.len() {
            let cu = &mut hr.catch_up[i];
            if cu.idle() && cu.written == hr.last {
                let cu = hr.catch_up.swap_remove(i);
                go_live(&cu.conn, room, cu.jgen);
                hr.members.push(cu.conn);
                continue;
            }
            if cu.idle() && cu.written < hr.last {
                cu.reading = true;
                gaps.push((cu.conn.id, cu.jgen, (cu.written, hr.last)));
            }
            i += 1;
        }
        for (conn, jgen, gap) in gaps {
            self.fetch(
                Stream::Room(room.clone()),
                gap,
                ReplayTo::Conn { conn, jgen },
            );
        }
    }

    /// A direct-message frame for the user's local connections; those catching up on their
    /// inbox merge it by seq.
    pub(super) fn deliver_user(
        &mut self,
        user: &Name,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
    ) {
        let Shard {
            hub,
            dirty,
            stats,
            config,
            ..
        } = self;
        let Some(conns) = hub.users.get(user) else {
            return;
        };
        let max = config.max_queue_bytes;
        let frame = Rc::new(frame);
        let mut slow = Vec::new();
        let mut gaps = Vec::new();
        for c in conns {
            if Some(c.id) == exclude {
                continue;
            }
            let catching = match hub.inbox.is_empty() {
                true => None,
                false => hub.inbox.get_mut(&c.id),
            };
            let Some(cu) = catching else {
                stats.deliveries += 1;
                if !queue_frame(dirty, stats, c, &frame, max) {
                    slow.push(c.clone());
                }
                continue;
            };
            let mut out = Vec::new();
            let held = Held {
                range: seq.map(|s| (s, s)),
                frame: frame.clone(),
                mine: false,
            };
            if let Some(gap) = cu.offer(held, &mut out) {
                gaps.push((c.id, gap));
            }
            for f in &out {
                stats.deliveries += 1;
                if !queue_frame(dirty, stats, c, f, max) {
                    slow.push(c.clone());
                }
            }
            if cu.held_bytes > max {
                slow.push(c.clone());
            }
        }
        for (conn, gap) in gaps {
            let to = ReplayTo::Conn { conn, jgen: 0 };
            self.fetch(Stream::Inbox(user.clone()), gap, to);
        }
        for c in slow {
            self.close_conn(&c, CloseCode::SlowConsumer);
        }
    }

    fn fetch(&mut self, stream: Stream, (after, upto): Gap, to: ReplayTo) {
        self.to_engine(EngineMsg::Fetch {
            stream,
            after,
            upto,
            to,
        });
    }

    /// Queues a catch-up's frames for its connection.
    fn write_all(&mut self, c: &Rc<Conn>, frames: Vec<OutFrame>) {
        for f in &frames {
            self.stats.deliveries += 1;
            self.enqueue(c, f);
        }
    }
}

/// Marks the connection's entry for the room (of this join) live.
fn go_live(c: &Conn, room: &Name, jgen: JoinGen) {
    if let Some(e) = (c.rooms.borrow_mut().iter_mut()).find(|e| e.room == *room && e.jgen == jgen) {
        e.live = true;
    }
}
