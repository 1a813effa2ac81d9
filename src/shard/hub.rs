//! The hub: this shard's local membership, the fan-out of each frame to it, and catch-up.
//!
//! Owns the room → members and user → connections maps of this shard, each room's position
//! in its stream (`merge::Position`), and the connections catching up on a stream. Every live
//! frame arrives with its stream's seq, and the hub merges by seq, not by arrival order:
//! - a frame at or below the position is a duplicate and dropped; one above it + 1 means a
//!   gap, and the frames after it wait while the engine reads the gap;
//! - a catching-up connection holds the live frames while its replay is read, then drops what
//!   the replay covered and writes the rest in seq order (`CatchUp`).
//!
//! So the hub is correct over any transport that may drop, repeat or reorder. It must not
//! sequence or store (the engine does) nor parse client requests (the client side does).

use std::rc::Rc;

use ahash::AHashMap;
use bytes::Bytes;

use super::merge::{CatchUp, Gap, Held, Next, Position};
use super::{Shard, queue_frame, remove_conn};
use crate::conn::RoomEntry;
use crate::conn::{Conn, OutFrame};
use crate::core::Name;
use crate::core::Stream;
use crate::core::error::CloseCode;
use crate::core::{ConnId, JoinGen};
use crate::msg::{EngineMsg, Replay, ReplayTo};

#[derive(Default)]
pub(super) struct Hub {
    rooms: AHashMap<Name, HubRoom>,
    /// Attached connections of each user on this shard.
    users: AHashMap<Name, HubUser>,
    /// Connections catching up on their inbox (right after connecting).
    inbox: AHashMap<ConnId, CatchUp>,
}

struct HubRoom {
    /// Members that receive the room's frames as they come.
    members: Vec<Rc<Conn>>,
    /// The room's position on this shard.
    pos: Position,
    /// Members whose join is still catching up.
    catch_up: Vec<CatchUp>,
}

#[derive(Default)]
struct HubUser {
    conns: Vec<Rc<Conn>>,
    /// The inbox's position on this shard, known once a connection has caught up.
    pos: Position,
}

impl Hub {
    /// The room's name as the hub already holds it, so a room's members share one allocation
    /// instead of each keeping the copy its `join` was parsed into.
    pub fn interned(&self, room: Name) -> Name {
        match self.rooms.get_key_value(&room) {
            Some((name, _)) => name.clone(),
            None => room,
        }
    }
}

impl HubRoom {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.catch_up.is_empty()
    }

    fn last(&self) -> u64 {
        self.pos.last.unwrap_or(0)
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
        self.rooms.get(room).map_or(0, HubRoom::last)
    }

    /// The user's attached connections on this shard.
    pub fn conns_of(&self, user: &Name) -> Vec<Rc<Conn>> {
        self.users
            .get(user)
            .map(|u| u.conns.clone())
            .unwrap_or_default()
    }
}

impl Shard {
    /// A new connection: it receives its user's direct messages, held until its inbox replay.
    pub(super) fn hub_attach(&mut self, conn: &Rc<Conn>) {
        let conns = &mut self.hub.users.entry(conn.user.clone()).or_default().conns;
        // Most users have one connection: no spare capacity.
        conns.reserve_exact(1);
        conns.push(conn.clone());
        let mut cu = CatchUp::new(conn.clone(), 0, 0, true);
        cu.first_inbox = true;
        self.hub.inbox.insert(conn.id, cu);
    }

    /// Removes a connection from the hub (before its room entries are dropped).
    pub(super) fn hub_detach(&mut self, conn: &Rc<Conn>) {
        if let Some(u) = self.hub.users.get_mut(&conn.user)
            && remove_conn(&mut u.conns, conn.id)
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
                pos: Position::at(seq),
                catch_up: Vec::new(),
            });
        if !replay && hr.last() == seq {
            // The usual case: nothing to merge.
            go_live(&c, &room, jgen);
            hr.members.push(c);
            return;
        }
        hr.catch_up.push(CatchUp::new(c, jgen, seq, replay));
        self.settle(&room);
    }

    /// A read from the engine: a catching-up connection's replay or gap, or this hub's gap.
    pub(super) fn replayed(&mut self, r: Replay) {
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

    /// The stream began again (a new epoch): its seqs restart, so no local receiver can be
    /// caught up by seq. Each is closed with a code that says reconnect and recover.
    pub(super) fn stream_lost(&mut self, stream: &Stream) {
        let receivers: Vec<Rc<Conn>> = match stream {
            Stream::Room(room) => self.hub.rooms.get(room).map_or(Vec::new(), |hr| {
                let catching = hr.catch_up.iter().map(|cu| &cu.conn);
                hr.members.iter().chain(catching).cloned().collect()
            }),
            Stream::Inbox(user) => self.hub.conns_of(user),
        };
        for c in receivers {
            self.close_conn_with(
                &c,
                CloseCode::Internal,
                Some("this stream's history was lost; reconnect and join with since"),
            );
        }
    }

    /// A live frame from the engine, merged by seq (see the module doc).
    pub(super) fn deliver(
        &mut self,
        stream: Stream,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
    ) {
        let pos = match &stream {
            Stream::Room(room) => self.hub.rooms.get_mut(room).map(|r| &mut r.pos),
            Stream::Inbox(user) => self.hub.users.get_mut(user).map(|u| &mut u.pos),
        };
        let Some(pos) = pos else {
            return;
        };
        let range = match seq.map(|s| (s, pos.next(s, &frame, exclude))) {
            None => None,
            Some((s, Next::Hand)) => Some((s, s)),
            Some((_, next)) => return self.not_handed(stream, next),
        };
        match &stream {
            Stream::Room(room) => self.hand_room(room, range, frame, exclude),
            Stream::Inbox(user) => self.hand_user(user, range, frame, exclude),
        }
    }

    /// Counts a frame that was not handed on, and asks for the gap it revealed.
    fn not_handed(&mut self, stream: Stream, next: Next) {
        match next {
            Next::Hand | Next::Waits => {}
            Next::Duplicate => self.stats.duplicates_dropped += 1,
            Next::Gap(gap) => {
                self.stats.gaps += 1;
                let to = ReplayTo::Hub {
                    node: self.router.node(),
                    shard: self.id,
                };
                self.fetch(stream, gap, to);
            }
        }
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
                Stream::Room(room) => self.hand_room(room, range, frames, None),
                Stream::Inbox(user) => self.hand_user(user, range, frames, None),
            }
        }
        for (seq, frame, exclude) in waiting {
            self.deliver(stream.clone(), Some(seq), frame, exclude);
        }
    }

    /// Writes a frame to the room's local members, and offers it to those catching up. `range`
    /// (the seqs it covers) moves the room's position.
    ///
    /// Per live member: one non-atomic `Rc` increment, a queue push and two counter adds. No
    /// allocation (queue capacity is reused), no copy, no syscall: each socket touched gets
    /// one writev for the whole scheduler pass, in `flush_dirty`.
    fn hand_room(
        &mut self,
        room: &Name,
        range: Option<(u64, u64)>,
        frame: Bytes,
        ex: Option<ConnId>,
    ) {
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
            let held = Held {
                range,
                frame: frame.clone(),
                mine: Some(cu.conn.id) == ex,
            };
            if let Some(gap) = offer(cu, held, dirty, stats, max, &mut slow) {
                gaps.push((cu.conn.id, cu.jgen, gap));
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
            if cu.idle() && cu.written == hr.pos.last.unwrap_or(0) {
                let cu = hr.catch_up.swap_remove(i);
                go_live(&cu.conn, room, cu.jgen);
                hr.members.push(cu.conn);
                continue;
            }
            let last = hr.pos.last.unwrap_or(0);
            if cu.idle() && cu.written < last {
                cu.reading = true;
                gaps.push((cu.conn.id, cu.jgen, (cu.written, last)));
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

    /// Writes a frame to the user's local connections; those catching up on their inbox merge
    /// it by seq.
    fn hand_user(
        &mut self,
        user: &Name,
        range: Option<(u64, u64)>,
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
        let Some(u) = hub.users.get(user) else {
            return;
        };
        let max = config.max_queue_bytes;
        let frame = Rc::new(frame);
        let mut slow = Vec::new();
        let mut gaps = Vec::new();
        for c in &u.conns {
            if Some(c.id) == exclude {
                continue;
            }
            let catching = match hub.inbox.is_empty() {
                true => None,
                false => hub.inbox.get_mut(&c.id),
            };
            let Some(cu) = catching else {
                if !frame.is_empty() {
                    stats.deliveries += 1;
                    if !queue_frame(dirty, stats, c, &frame, max) {
                        slow.push(c.clone());
                    }
                }
                continue;
            };
            let held = Held {
                range,
                frame: frame.clone(),
                mine: false,
            };
            if let Some(gap) = offer(cu, held, dirty, stats, max, &mut slow) {
                gaps.push((c.id, gap));
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

/// Offers a live frame to a catching-up connection and queues what it may write now. Returns
/// the gap to read, if the frame revealed one; a connection holding too much is `slow`.
fn offer(
    cu: &mut CatchUp,
    held: Held,
    dirty: &mut Vec<Rc<Conn>>,
    stats: &mut crate::core::counters::ShardCounters,
    max: usize,
    slow: &mut Vec<Rc<Conn>>,
) -> Option<Gap> {
    let mut out = Vec::new();
    let gap = cu.offer(held, &mut out);
    for f in &out {
        stats.deliveries += 1;
        if !queue_frame(dirty, stats, &cu.conn, f, max) {
            slow.push(cu.conn.clone());
        }
    }
    if cu.held_bytes > max {
        slow.push(cu.conn.clone());
    }
    gap
}

/// Marks the connection's entry for the room (of this join) live.
fn go_live(c: &Conn, room: &Name, jgen: JoinGen) {
    if let Some(e) = (c.rooms.borrow_mut().iter_mut()).find(|e| e.room == *room && e.jgen == jgen) {
        e.live = true;
    }
}
