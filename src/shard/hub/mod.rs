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

mod replay;

use std::rc::Rc;

use ahash::AHashMap;
use bytes::Bytes;

use super::merge::{CatchUp, Gap, Held, Next, Position};
use super::{Shard, queue_frame, remove_conn};
use crate::conn::RoomEntry;
use crate::conn::{Conn, OutFrame};
use crate::core::Name;
use crate::core::Stream;
use crate::core::counters::ShardCounters;
use crate::core::error::CloseCode;
use crate::core::{ConnId, JoinGen};
use crate::msg::{EngineMsg, Own, ReplayTo};

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

    /// The room's live members on this shard.
    pub fn members(&self, room: &Name) -> &[Rc<Conn>] {
        self.rooms.get(room).map_or(&[], |r| &r.members[..])
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
            self.reads.forget(&conn.user);
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
            let ack = self.with_read(&c.user, &room, &ack);
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

    /// A live frame from the engine, merged by seq (see the module doc). `own` (a keyed room
    /// message's copy for its sender's connections) goes only with a frame handed on at once:
    /// one that waits behind a gap, or reaches a connection catching up, goes without it.
    pub(super) fn deliver(
        &mut self,
        stream: Stream,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
        own: Option<Box<Own>>,
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
            Stream::Room(room) => self.hand_room(room, range, frame, exclude, own),
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

    /// Writes a frame to the room's local members, and offers it to those catching up. `range`
    /// (the seqs it covers) moves the room's position.
    fn hand_room(
        &mut self,
        room: &Name,
        range: Option<(u64, u64)>,
        frame: Bytes,
        ex: Option<ConnId>,
        own: Option<Box<Own>>,
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
        let mut out = Fanout::new(dirty, stats, config.max_queue_bytes);
        let frame = Rc::new(frame);
        if !frame.is_empty() {
            let members = hr.members.iter().filter(|c| Some(c.id) != ex);
            match own {
                // Per member: an `Rc` clone and a queue push.
                None => members.for_each(|c| out.write(c, &frame)),
                // A keyed message: also a name comparison per member.
                Some(own) => {
                    let mine = Rc::new(own.frame);
                    for c in members {
                        out.write(c, if c.user == own.user { &mine } else { &frame });
                    }
                }
            }
        }
        for cu in &mut hr.catch_up {
            let held = Held {
                range,
                frame: frame.clone(),
                mine: Some(cu.conn.id) == ex,
            };
            let to = ReplayTo::Conn {
                conn: cu.conn.id,
                jgen: cu.jgen,
            };
            out.offer(cu, held, to);
        }
        let (gaps, slow) = (out.gaps, out.slow);
        self.fetch_all(&Stream::Room(room.clone()), gaps);
        if range.is_some() {
            self.settle(room);
        }
        self.close_slow(slow);
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
        let mut out = Fanout::new(dirty, stats, config.max_queue_bytes);
        let frame = Rc::new(frame);
        for c in u.conns.iter().filter(|c| Some(c.id) != exclude) {
            let catching = match hub.inbox.is_empty() {
                true => None,
                false => hub.inbox.get_mut(&c.id),
            };
            match catching {
                None if frame.is_empty() => {}
                None => out.write(c, &frame),
                Some(cu) => {
                    let held = Held {
                        range,
                        frame: frame.clone(),
                        mine: false,
                    };
                    let to = ReplayTo::Conn {
                        conn: c.id,
                        jgen: 0,
                    };
                    out.offer(cu, held, to);
                }
            }
        }
        let (gaps, slow) = (out.gaps, out.slow);
        self.fetch_all(&Stream::Inbox(user.clone()), gaps);
        self.close_slow(slow);
    }

    /// Reads the gaps a fan-out revealed.
    fn fetch_all(&mut self, stream: &Stream, gaps: Vec<(ReplayTo, Gap)>) {
        for (to, gap) in gaps {
            self.fetch(stream.clone(), gap, to);
        }
    }

    fn close_slow(&mut self, slow: Vec<Rc<Conn>>) {
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
}

/// One fan-out of a live frame to a room's or a user's local receivers. What it cannot do while
/// the hub's maps are borrowed is left in it: the gaps catching-up connections revealed, and
/// the connections over their queue limit.
struct Fanout<'a> {
    dirty: &'a mut Vec<Rc<Conn>>,
    stats: &'a mut ShardCounters,
    max: usize,
    gaps: Vec<(ReplayTo, Gap)>,
    slow: Vec<Rc<Conn>>,
}

impl<'a> Fanout<'a> {
    fn new(dirty: &'a mut Vec<Rc<Conn>>, stats: &'a mut ShardCounters, max: usize) -> Self {
        Fanout {
            dirty,
            stats,
            max,
            gaps: Vec::new(),
            slow: Vec::new(),
        }
    }

    /// Queues the frame for a live receiver.
    ///
    /// Per receiver: one non-atomic `Rc` increment, a queue push and two counter adds. No
    /// allocation (queue capacity is reused), no copy, no syscall: each socket touched gets
    /// one writev for the whole scheduler pass, in `flush_dirty`.
    fn write(&mut self, c: &Rc<Conn>, frame: &OutFrame) {
        self.stats.deliveries += 1;
        if !queue_frame(self.dirty, self.stats, c, frame, self.max) {
            self.slow.push(c.clone());
        }
    }

    /// Offers the frame to a catching-up connection and queues what it may write now. A gap
    /// it reveals is read for `to`; a connection holding too much is slow.
    fn offer(&mut self, cu: &mut CatchUp, held: Held, to: ReplayTo) {
        let mut out = Vec::new();
        if let Some(gap) = cu.offer(held, &mut out) {
            self.gaps.push((to, gap));
        }
        for f in &out {
            self.write(&cu.conn, f);
        }
        if cu.held_bytes > self.max {
            self.slow.push(cu.conn.clone());
        }
    }
}

/// Marks the connection's entry for the room (of this join) live.
fn go_live(c: &Conn, room: &Name, jgen: JoinGen) {
    if let Some(e) = (c.rooms.borrow_mut().iter_mut()).find(|e| e.room == *room && e.jgen == jgen) {
        e.live = true;
    }
}
