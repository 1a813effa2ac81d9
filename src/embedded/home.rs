//! Home state: what a shard knows about the rooms and users that hash to it, across all shards.
//!
//! A room's home holds its sequence numbers and who is in it (per user, and per shard for
//! fan-out). A user's home holds the inbox sequence numbers, where the user's connections are
//! and which of them receive live, and applies the session policy. Pure bookkeeping: no I/O,
//! no connections.
//!
//! Each stream has two seqs: `assigned`, the last given to a message, and `committed`, the last
//! whose store write finished and which was delivered. They differ only while writes are in
//! flight (sync durability).

use ahash::AHashMap;
use bytes::Bytes;

use crate::config::{Config, PresenceMode, Rule, SessionPolicy};
use crate::core::Name;
use crate::core::error::HandshakeError;
use crate::core::{ConnId, ShardId};
use crate::engine::shards_with;
use crate::protocol::encode;

#[derive(Clone, Copy, Default)]
struct Seqs {
    assigned: u64,
    committed: u64,
}

struct HomeRoom {
    /// Connections in the room, per user. Its length is the member count: kept, never
    /// counted by walking members.
    users: AHashMap<Name, u32>,
    /// Connections in the room, per shard.
    per_shard: Box<[u32]>,
    /// The member count the last `occupancy` event said (`u32::MAX`: none sent yet), and
    /// whether the room is listed in `HomeRooms::counted` for the next one.
    told: u32,
    queued: bool,
}

pub struct HomeRooms {
    shards: usize,
    /// Rooms with members.
    rooms: AHashMap<Name, HomeRoom>,
    /// Every room ever written, members or not, so seqs are never reused.
    seqs: AHashMap<Name, Seqs>,
    /// Rooms whose presence is a count and whose member count changed since the last
    /// `occupancy` event: one event each at the next tick, however many joins and leaves.
    counted: Vec<Name>,
}

/// What a room's presence makes of one member's join or leave.
pub struct Membership {
    /// The room's committed seq (a join's answer).
    pub seq: u64,
    /// `joined` or `left`, for the other members of a `list` room.
    pub event: Option<Bytes>,
    /// Members (users) now.
    pub members: u64,
}

/// A join refused: the room has its `max_members` members.
pub struct Full;

impl HomeRooms {
    pub fn new(shards: usize) -> HomeRooms {
        HomeRooms {
            shards,
            rooms: AHashMap::new(),
            seqs: AHashMap::new(),
            counted: Vec::new(),
        }
    }

    /// Rooms with at least one member, on any shard.
    pub fn in_use(&self) -> usize {
        self.rooms.len()
    }

    /// The room's last stored seq, from the store at start-up.
    pub fn seed(&mut self, room: Name, last: u64) {
        self.seqs.insert(
            room,
            Seqs {
                assigned: last,
                committed: last,
            },
        );
    }

    pub fn committed_seq(&self, room: &Name) -> u64 {
        self.seqs.get(room).map_or(0, |s| s.committed)
    }

    /// Registers a connection of `user` on `shard` joining `room`, under `rule`: a `list` room
    /// (within `presence_list_max`) tells its other members with a `joined` event on the user's
    /// first connection; a room whose presence is a count gets an `occupancy` event at the next
    /// tick instead. A new user past `max_members` is refused. O(1): no member is walked.
    pub fn join(
        &mut self,
        room: &Name,
        user: &Name,
        shard: ShardId,
        rule: &Rule,
    ) -> Result<Membership, Full> {
        let seq = self.committed_seq(room);
        let shards = self.shards;
        let r = self.rooms.entry(room.clone()).or_insert_with(|| HomeRoom {
            users: AHashMap::new(),
            per_shard: vec![0; shards].into(),
            told: u32::MAX,
            queued: false,
        });
        let max = rule.max_members as usize;
        if max > 0 && r.users.len() >= max && !r.users.contains_key(user) {
            if r.users.is_empty() {
                self.rooms.remove(room);
            }
            return Err(Full);
        }
        r.per_shard[shard] += 1;
        let count = r.users.entry(user.clone()).or_insert(0);
        *count += 1;
        let first = *count == 1;
        let members = r.users.len();
        let event = match rule.presence_at(members) {
            PresenceMode::List => first.then(|| encode::membership(true, room, user)),
            PresenceMode::Count if first => {
                queue(&mut self.counted, room, r);
                None
            }
            _ => None,
        };
        Ok(Membership {
            seq,
            event,
            members: members as u64,
        })
    }

    /// A connection left. A `list` room tells its other members with `left` on the user's last
    /// connection; a room whose presence is a count queues an `occupancy` event. An empty
    /// room's membership is forgotten; its seqs are kept.
    pub fn leave(
        &mut self,
        room: &Name,
        user: &Name,
        shard: ShardId,
        rule: &Rule,
    ) -> Option<Bytes> {
        let r = self.rooms.get_mut(room)?;
        r.per_shard[shard] = r.per_shard[shard].saturating_sub(1);
        let count = r.users.get_mut(user)?;
        *count -= 1;
        let mut event = None;
        if *count == 0 {
            // The room as its members saw it before the leave.
            match rule.presence_at(r.users.len()) {
                PresenceMode::List => event = Some(encode::membership(false, room, user)),
                PresenceMode::Count => queue(&mut self.counted, room, r),
                PresenceMode::Off => {}
            }
            r.users.remove(user);
        }
        if r.users.is_empty() {
            self.rooms.remove(room);
        }
        event
    }

    /// The `occupancy` events due: each room queued since the last call whose member count is
    /// not what its last event said, with that count. A room emptied meanwhile has no one to
    /// tell.
    pub fn occupancy_due(&mut self) -> Vec<(Name, u64)> {
        let mut due = Vec::new();
        for room in std::mem::take(&mut self.counted) {
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            r.queued = false;
            let members = r.users.len() as u32;
            if members != r.told {
                r.told = members;
                due.push((room, u64::from(members)));
            }
        }
        due
    }

    /// Every room with members, with its member count.
    pub fn all(&self) -> Vec<(Name, u64)> {
        (self.rooms.iter())
            .map(|(name, r)| (name.clone(), r.users.len() as u64))
            .collect()
    }

    /// The room's members (users) now.
    pub fn members(&self, room: &Name) -> u64 {
        self.rooms.get(room).map_or(0, |r| r.users.len() as u64)
    }

    /// The room's next sequence number. A room needs no members to be published to (the
    /// server API does so), and its messages are stored either way.
    pub fn next_seq(&mut self, room: &Name) -> u64 {
        let s = self.seqs.entry(room.clone()).or_default();
        s.assigned += 1;
        s.assigned
    }

    /// Message `seq` of the room is stored and about to be delivered.
    pub fn commit(&mut self, room: &Name, seq: u64) {
        let s = self.seqs.entry(room.clone()).or_default();
        s.committed = s.committed.max(seq);
    }

    /// The room's users, in no order.
    pub fn users(&self, room: &Name) -> impl Iterator<Item = &Name> {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|r| r.users.keys())
    }

    /// Shards with members in the room.
    pub fn shards_of(&self, room: &Name) -> impl Iterator<Item = ShardId> + '_ {
        shards_with(self.rooms.get(room).map_or(&[][..], |r| &r.per_shard[..]))
    }
}

/// Lists `room` for the next `occupancy` events, once.
fn queue(counted: &mut Vec<Name>, room: &Name, r: &mut HomeRoom) {
    if !std::mem::replace(&mut r.queued, true) {
        counted.push(room.clone());
    }
}

/// A user with connections (admitted, attached, or with an inbox replay out). Removed when
/// none is left, so the home's memory follows the users online, not every user ever seen.
struct HomeUser {
    /// Connections admitted, each with whether it is attached (it then receives direct
    /// messages live). A list, not counters per shard: most users have one connection, and
    /// there is an entry per user online.
    conns: Vec<(ConnId, bool)>,
    /// Inbox replays read for a connection and not yet handed to it.
    replaying: u32,
}

impl HomeUser {
    fn is_idle(&self) -> bool {
        self.conns.is_empty() && self.replaying == 0
    }

    fn is_online(&self) -> bool {
        self.conns.iter().any(|&(_, attached)| attached)
    }

    /// The shards holding its connections, each once.
    fn shards(&self) -> Vec<ShardId> {
        let mut shards: Vec<ShardId> = self.conns.iter().map(|(c, _)| c.shard()).collect();
        shards.sort_unstable();
        shards.dedup();
        shards
    }
}

/// A user's inbox: kept for every inbox ever written, like a room's seqs, so seqs are never
/// reused.
#[derive(Clone, Copy, Default)]
struct Inbox {
    seqs: Seqs,
    /// Every inbox message up to this one reached a connection (or is on its way to one).
    delivered: u64,
}

#[derive(Default)]
pub struct HomeUsers {
    users: AHashMap<Name, HomeUser>,
    inboxes: AHashMap<Name, Inbox>,
}

impl HomeUsers {
    /// Users with connections or a replay out.
    pub fn tracked(&self) -> usize {
        self.users.len()
    }

    fn entry(&mut self, user: &Name) -> &mut HomeUser {
        self.users.entry(user.clone()).or_insert_with(|| HomeUser {
            conns: Vec::new(),
            replaying: 0,
        })
    }

    /// Forgets the user's connection state if nothing is left of it.
    fn evict_if_idle(&mut self, user: &Name) {
        if self.users.get(user).is_some_and(HomeUser::is_idle) {
            self.users.remove(user);
        }
    }

    /// Admits a new connection under the session policy. On success, returns the shards whose
    /// connections of this user must be closed as replaced (`kick_old`).
    pub fn admit(
        &mut self,
        config: &Config,
        user: &Name,
        conn: ConnId,
    ) -> Result<Vec<ShardId>, HandshakeError> {
        let u = self.entry(user);
        let verdict = match config.session_policy {
            SessionPolicy::Multi if u.conns.len() >= config.max_connections_per_user as usize => {
                Err(HandshakeError::ConnectionLimit(
                    config.max_connections_per_user,
                ))
            }
            SessionPolicy::RejectNew if !u.conns.is_empty() => Err(HandshakeError::SessionExists),
            SessionPolicy::KickOld => Ok(u.shards()),
            _ => Ok(Vec::new()),
        };
        if verdict.is_ok() {
            u.conns.reserve_exact(1);
            u.conns.push((conn, false));
        } else {
            self.evict_if_idle(user);
        }
        verdict
    }

    /// The user's inbox, from the store at start-up: its last seq and delivered cursor.
    pub fn seed(&mut self, user: &Name, last: u64, delivered: u64) {
        let inbox = Inbox {
            seqs: Seqs {
                assigned: last,
                committed: last,
            },
            delivered: delivered.min(last),
        };
        self.inboxes.insert(user.clone(), inbox);
    }

    /// The last inbox seq stored for the user.
    pub fn inbox_seq(&self, user: &Name) -> u64 {
        self.inboxes.get(user).map_or(0, |i| i.seqs.committed)
    }

    /// A connection of `user` ended.
    pub fn release(&mut self, user: &Name, conn: ConnId) {
        if let Some(u) = self.users.get_mut(user) {
            u.conns.retain(|(c, _)| *c != conn);
        }
        self.evict_if_idle(user);
    }

    /// The next inbox sequence number of `user`, online or not.
    pub fn next_inbox_seq(&mut self, user: &Name) -> u64 {
        let i = self.inboxes.entry(user.clone()).or_default();
        i.seqs.assigned += 1;
        i.seqs.assigned
    }

    /// Inbox message `seq` is stored. Returns whether to deliver it live (the user has an
    /// attached connection, which makes it delivered), and the delivered cursor to store: none
    /// while an inbox replay is out, since the cursor may only pass what was handed over.
    pub fn commit(&mut self, user: &Name, seq: u64) -> (bool, Option<u64>) {
        let inbox = self.inboxes.entry(user.clone()).or_default();
        inbox.seqs.committed = inbox.seqs.committed.max(seq);
        let Some(u) = self.users.get(user).filter(|u| u.is_online()) else {
            return (false, None);
        };
        inbox.delivered = inbox.delivered.max(seq);
        (true, (u.replaying == 0).then_some(inbox.delivered))
    }

    /// Connection `conn` of the user is attached. Returns the inbox range (after, upto] it must
    /// be sent because no connection got it; it counts as delivered from now on, and the
    /// cursor is stored once the connection has it (`handed`).
    pub fn online(&mut self, user: &Name, conn: ConnId) -> Option<(u64, u64)> {
        let inbox = self.inboxes.get(user).copied().unwrap_or_default();
        let range = (inbox.delivered < inbox.seqs.committed)
            .then_some((inbox.delivered, inbox.seqs.committed));
        let u = self.entry(user);
        match u.conns.iter_mut().find(|(c, _)| *c == conn) {
            Some((_, attached)) => *attached = true,
            None => {
                u.conns.reserve_exact(1);
                u.conns.push((conn, true));
            }
        }
        if range.is_some() {
            u.replaying += 1;
            if let Some(i) = self.inboxes.get_mut(user) {
                i.delivered = i.seqs.committed;
            }
        }
        range
    }

    /// The replay of (after, upto] reached its connection (`ok`), or could not be read. Returns
    /// the delivered cursor to store, if any. A failed read puts the cursor back, so the
    /// messages go to the next connection; some may then reach the user twice.
    pub fn handed(&mut self, user: &Name, after: u64, upto: u64, ok: bool) -> Option<u64> {
        let u = self.users.get_mut(user).filter(|u| u.replaying > 0)?;
        u.replaying -= 1;
        let outstanding = u.replaying;
        let inbox = self.inboxes.get_mut(user)?;
        if !ok {
            inbox.delivered = inbox.delivered.min(after);
        }
        let cursor = (ok && outstanding == 0).then_some(inbox.delivered.max(upto));
        self.evict_if_idle(user);
        cursor
    }

    /// The user's attached connections.
    pub fn online_count(&self, user: &Name) -> u32 {
        self.users.get(user).map_or(0, |u| {
            u.conns.iter().filter(|&&(_, attached)| attached).count() as u32
        })
    }

    /// Shards with connections of the user.
    pub fn shards_of(&self, user: &Name) -> impl Iterator<Item = ShardId> + '_ {
        self.users
            .get(user)
            .map(HomeUser::shards)
            .into_iter()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn membership_events_follow_the_first_and_last_connection() {
        let config = Config::default();
        let list = config.rule("r");
        let mut h = HomeRooms::new(2);
        let (r, a) = (n("r"), n("a"));
        let joined = |h: &mut HomeRooms, u: &Name, shard| h.join(&r, u, shard, &list).ok().unwrap();
        assert!(joined(&mut h, &a, 0).event.is_some());
        assert!(joined(&mut h, &a, 1).event.is_none());
        assert_eq!(h.shards_of(&r).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(h.next_seq(&r), 1);
        assert_eq!(h.committed_seq(&r), 0, "not committed yet");
        h.commit(&r, 1);
        let b = joined(&mut h, &n("b"), 1);
        assert_eq!((b.seq, b.members), (1, 2));
        assert!(h.leave(&r, &n("b"), 1, &list).is_some());
        assert!(h.leave(&r, &a, 0, &list).is_none());
        assert_eq!(h.shards_of(&r).collect::<Vec<_>>(), [1]);
        assert!(h.leave(&r, &a, 1, &list).is_some());
        assert_eq!(h.next_seq(&r), 2, "seqs outlive the room's members");
        assert!(
            h.occupancy_due().is_empty(),
            "a list room sends no occupancy"
        );
    }

    #[test]
    fn count_rooms_send_no_events_and_coalesce_occupancy() {
        let config = Config {
            rooms: vec![crate::config::RoomRule {
                prefix: "live:".into(),
                presence: Some(PresenceMode::Count),
                max_members: Some(3),
                ..Default::default()
            }],
            ..Config::default()
        };
        let rule = config.rule("live:k");
        let mut h = HomeRooms::new(1);
        let r = n("live:k");
        for u in ["a", "b", "b"] {
            let m = h.join(&r, &n(u), 0, &rule).ok().unwrap();
            assert!(m.event.is_none(), "no joined in a count room");
        }
        assert_eq!(h.occupancy_due(), [(r.clone(), 2)], "two joins, one event");
        assert!(h.occupancy_due().is_empty(), "nothing changed since");
        assert!(
            h.leave(&r, &n("b"), 0, &rule).is_none(),
            "b has another connection"
        );
        assert!(h.occupancy_due().is_empty());
        assert!(h.join(&r, &n("c"), 0, &rule).is_ok());
        assert!(h.leave(&r, &n("c"), 0, &rule).is_none(), "no left either");
        assert!(
            h.occupancy_due().is_empty(),
            "back to 2 members: nothing to say"
        );
        assert!(h.join(&r, &n("c"), 0, &rule).is_ok());
        assert!(
            matches!(h.join(&r, &n("d"), 0, &rule), Err(Full)),
            "max_members"
        );
        assert!(
            h.join(&r, &n("a"), 0, &rule).is_ok(),
            "a member's next connection is let in"
        );
        assert_eq!(h.members(&r), 3);
        assert_eq!(h.occupancy_due(), [(r.clone(), 3)]);
    }

    #[test]
    fn a_list_room_past_its_maximum_counts_until_it_shrinks() {
        let config = Config {
            rooms: vec![crate::config::RoomRule {
                prefix: String::new(),
                presence_list_max: Some(2),
                ..Default::default()
            }],
            ..Config::default()
        };
        let rule = config.rule("r");
        let mut h = HomeRooms::new(1);
        let r = n("r");
        assert!(h.join(&r, &n("a"), 0, &rule).ok().unwrap().event.is_some());
        assert!(h.join(&r, &n("b"), 0, &rule).ok().unwrap().event.is_some());
        assert!(
            h.join(&r, &n("c"), 0, &rule).ok().unwrap().event.is_none(),
            "3 > 2: counted"
        );
        assert_eq!(h.occupancy_due(), [(r.clone(), 3)]);
        assert!(
            h.leave(&r, &n("c"), 0, &rule).is_none(),
            "still counted as it leaves"
        );
        assert!(
            h.leave(&r, &n("b"), 0, &rule).is_some(),
            "a list room again"
        );
    }

    #[test]
    fn session_policies() {
        let u = n("u");
        let c = |shard, i| ConnId::new(0, shard, i);
        let multi = Config {
            max_connections_per_user: 2,
            ..Config::default()
        };
        let mut h = HomeUsers::default();
        assert!(h.admit(&multi, &u, c(0, 1)).is_ok());
        assert!(h.admit(&multi, &u, c(1, 2)).is_ok());
        assert_eq!(
            h.admit(&multi, &u, c(1, 3)),
            Err(HandshakeError::ConnectionLimit(2))
        );
        h.release(&u, c(1, 2));
        assert!(h.admit(&multi, &u, c(1, 3)).is_ok());

        let reject = Config {
            session_policy: SessionPolicy::RejectNew,
            ..Config::default()
        };
        let mut h = HomeUsers::default();
        assert!(h.admit(&reject, &u, c(0, 1)).is_ok());
        assert_eq!(
            h.admit(&reject, &u, c(0, 2)),
            Err(HandshakeError::SessionExists)
        );

        let kick = Config {
            session_policy: SessionPolicy::KickOld,
            ..Config::default()
        };
        let mut h = HomeUsers::default();
        assert_eq!(h.admit(&kick, &u, c(1, 1)), Ok(vec![]));
        assert_eq!(h.admit(&kick, &u, c(0, 2)), Ok(vec![1]));
    }

    #[test]
    fn inbox_delivery_follows_attached_connections() {
        let (x, c1, c2) = (n("x"), ConnId::new(0, 0, 1), ConnId::new(0, 0, 2));
        let mut h = HomeUsers::default();
        h.seed(&x, 4, 2);
        assert_eq!(h.next_inbox_seq(&x), 5);
        assert_eq!(h.inbox_seq(&x), 4, "5 is not stored yet");
        assert_eq!(
            h.commit(&x, 5),
            (false, None),
            "offline: stored, not delivered"
        );
        assert_eq!(h.online(&x, c1), Some((2, 5)));
        assert_eq!(h.next_inbox_seq(&x), 6);
        assert_eq!(h.commit(&x, 6), (true, None), "live, but a replay is out");
        assert_eq!(
            h.handed(&x, 2, 5, true),
            Some(6),
            "the cursor moves once handed"
        );
        assert_eq!(
            h.online(&x, c2),
            None,
            "a second connection gets nothing replayed"
        );
        h.next_inbox_seq(&x);
        assert_eq!(h.commit(&x, 7), (true, Some(7)));
        h.release(&x, c1);
        h.release(&x, c2);
        h.next_inbox_seq(&x);
        assert_eq!(h.commit(&x, 8), (false, None));
        assert_eq!(h.online(&x, c1), Some((7, 8)));
    }

    #[test]
    fn a_failed_inbox_read_moves_no_cursor_and_replays_again() {
        let (x, c1, c2) = (n("x"), ConnId::new(0, 0, 1), ConnId::new(0, 0, 2));
        let mut h = HomeUsers::default();
        h.seed(&x, 3, 0);
        assert_eq!(h.online(&x, c1), Some((0, 3)));
        assert_eq!(h.handed(&x, 0, 3, false), None);
        h.release(&x, c1);
        assert_eq!(
            h.online(&x, c2),
            Some((0, 3)),
            "the next connection gets them"
        );
    }

    #[test]
    fn users_are_forgotten_when_their_last_connection_ends() {
        let mut h = HomeUsers::default();
        let config = Config::default();
        for i in 0..100_000u64 {
            let (user, conn) = (n(&format!("user-{i}")), ConnId::new(0, (i % 2) as usize, i));
            h.admit(&config, &user, conn).unwrap();
            assert_eq!(h.online(&user, conn), None);
            if i % 1000 != 0 {
                h.release(&user, conn);
            }
        }
        assert_eq!(h.tracked(), 100, "only the users still online");
        assert_eq!(
            h.inboxes.len(),
            0,
            "and no inbox for users never written to"
        );
        let refused = Config {
            session_policy: SessionPolicy::RejectNew,
            ..Config::default()
        };
        let ghost = n("ghost");
        h.admit(&refused, &ghost, ConnId::new(0, 0, 1)).unwrap();
        assert!(h.admit(&refused, &ghost, ConnId::new(0, 0, 2)).is_err());
        h.release(&ghost, ConnId::new(0, 0, 1));
        assert_eq!(
            h.tracked(),
            100,
            "a refused connection leaves nothing behind"
        );
    }
}
