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

use crate::config::{Config, SessionPolicy};
use crate::error::HandshakeError;
use crate::protocol::Name;
use crate::protocol::encode;
use crate::router::{ConnId, ShardId};

#[derive(Clone, Copy, Default)]
struct Seqs {
    assigned: u64,
    committed: u64,
}

struct HomeRoom {
    /// Connections in the room, per user.
    users: AHashMap<Name, u32>,
    /// Connections in the room, per shard.
    per_shard: Box<[u32]>,
}

pub struct HomeRooms {
    shards: usize,
    /// Rooms with members.
    rooms: AHashMap<Name, HomeRoom>,
    /// Every room ever written, members or not, so seqs are never reused.
    seqs: AHashMap<Name, Seqs>,
}

impl HomeRooms {
    pub fn new(shards: usize) -> HomeRooms {
        HomeRooms {
            shards,
            rooms: AHashMap::new(),
            seqs: AHashMap::new(),
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

    fn committed_seq(&self, room: &Name) -> u64 {
        self.seqs.get(room).map_or(0, |s| s.committed)
    }

    /// Registers a connection of `user` on `shard` joining `room` (unless `already` in it).
    /// Returns the room's committed seq, and the `joined` event if this is the user's first
    /// connection in the room.
    pub fn join(
        &mut self,
        room: &Name,
        user: &Name,
        shard: ShardId,
        already: bool,
    ) -> (u64, Option<Bytes>) {
        let seq = self.committed_seq(room);
        let shards = self.shards;
        let r = self.rooms.entry(room.clone()).or_insert_with(|| HomeRoom {
            users: AHashMap::new(),
            per_shard: vec![0; shards].into(),
        });
        if already {
            return (seq, None);
        }
        r.per_shard[shard] += 1;
        let count = r.users.entry(user.clone()).or_insert(0);
        *count += 1;
        let event = (*count == 1).then(|| encode::membership(true, room, user));
        (seq, event)
    }

    /// A connection left. Returns the `left` event if it was the user's last one in the room.
    /// An empty room's membership is forgotten; its seqs are kept.
    pub fn leave(&mut self, room: &Name, user: &Name, shard: ShardId) -> Option<Bytes> {
        let r = self.rooms.get_mut(room)?;
        r.per_shard[shard] = r.per_shard[shard].saturating_sub(1);
        let count = r.users.get_mut(user)?;
        *count -= 1;
        let event = if *count == 0 {
            r.users.remove(user);
            Some(encode::membership(false, room, user))
        } else {
            None
        };
        if r.users.is_empty() {
            self.rooms.remove(room);
        }
        event
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

    /// The room's users, sorted.
    pub fn users(&self, room: &Name) -> Vec<Name> {
        let mut users: Vec<Name> = self
            .rooms
            .get(room)
            .map(|r| r.users.keys().cloned().collect())
            .unwrap_or_default();
        users.sort_unstable();
        users
    }

    /// Shards with members in the room.
    pub fn shards_of(&self, room: &Name) -> impl Iterator<Item = ShardId> + '_ {
        let per_shard = self
            .rooms
            .get(room)
            .map(|r| &r.per_shard[..])
            .unwrap_or_default();
        per_shard
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(s, _)| s)
    }
}

#[derive(Default)]
struct HomeUser {
    inbox: Seqs,
    /// Every inbox message up to this one reached a connection (or is on its way to one).
    delivered: u64,
    /// Connections admitted (attached or not), in all and per shard.
    conns: u32,
    per_shard: Box<[u32]>,
    /// Attached connections, which receive direct messages live.
    online: Vec<ConnId>,
}

pub struct HomeUsers {
    shards: usize,
    users: AHashMap<Name, HomeUser>,
}

impl HomeUsers {
    pub fn new(shards: usize) -> HomeUsers {
        HomeUsers {
            shards,
            users: AHashMap::new(),
        }
    }

    fn entry(&mut self, user: &Name) -> &mut HomeUser {
        let shards = self.shards;
        self.users.entry(user.clone()).or_insert_with(|| HomeUser {
            per_shard: vec![0; shards].into(),
            ..HomeUser::default()
        })
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
        let kick = match config.session_policy {
            SessionPolicy::Multi if u.conns >= config.max_connections_per_user => {
                return Err(HandshakeError::ConnectionLimit(
                    config.max_connections_per_user,
                ));
            }
            SessionPolicy::RejectNew if u.conns > 0 => return Err(HandshakeError::SessionExists),
            SessionPolicy::KickOld => u
                .per_shard
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(s, _)| s)
                .collect(),
            _ => Vec::new(),
        };
        u.conns += 1;
        u.per_shard[conn.shard()] += 1;
        Ok(kick)
    }

    /// The user's inbox, from the store at start-up: its last seq and delivered cursor.
    pub fn seed(&mut self, user: &Name, last: u64, delivered: u64) {
        let u = self.entry(user);
        u.inbox = Seqs {
            assigned: last,
            committed: last,
        };
        u.delivered = delivered.min(last);
    }

    /// The last inbox seq stored for the user.
    pub fn inbox_seq(&self, user: &Name) -> u64 {
        self.users.get(user).map_or(0, |u| u.inbox.committed)
    }

    /// A connection of `user` ended.
    pub fn release(&mut self, user: &Name, conn: ConnId) {
        if let Some(u) = self.users.get_mut(user) {
            u.conns = u.conns.saturating_sub(1);
            u.per_shard[conn.shard()] = u.per_shard[conn.shard()].saturating_sub(1);
            u.online.retain(|c| *c != conn);
        }
    }

    /// The next inbox sequence number of `user`, online or not.
    pub fn next_inbox_seq(&mut self, user: &Name) -> u64 {
        let u = self.entry(user);
        u.inbox.assigned += 1;
        u.inbox.assigned
    }

    /// Inbox message `seq` is stored. Returns whether to deliver it live: when the user has an
    /// attached connection, which makes it delivered.
    pub fn commit(&mut self, user: &Name, seq: u64) -> bool {
        let u = self.entry(user);
        u.inbox.committed = u.inbox.committed.max(seq);
        let live = !u.online.is_empty();
        if live {
            u.delivered = u.delivered.max(seq);
        }
        live
    }

    /// Connection `conn` of the user is attached. Returns the inbox range (after, upto] it must
    /// be sent because no connection got it, and counts it as delivered from now on.
    pub fn online(&mut self, user: &Name, conn: ConnId) -> Option<(u64, u64)> {
        let u = self.entry(user);
        u.online.push(conn);
        let range = (u.delivered < u.inbox.committed).then_some((u.delivered, u.inbox.committed));
        u.delivered = u.inbox.committed;
        range
    }

    /// The user's attached connections.
    pub fn online_count(&self, user: &Name) -> u32 {
        self.users.get(user).map_or(0, |u| u.online.len() as u32)
    }

    /// Shards with connections of the user.
    pub fn shards_of(&self, user: &Name) -> impl Iterator<Item = ShardId> + '_ {
        let per_shard = self
            .users
            .get(user)
            .map(|u| &u.per_shard[..])
            .unwrap_or_default();
        per_shard
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(s, _)| s)
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
        let mut h = HomeRooms::new(2);
        let (r, a) = (n("r"), n("a"));
        assert!(h.join(&r, &a, 0, false).1.is_some());
        assert!(h.join(&r, &a, 1, false).1.is_none());
        assert_eq!(h.shards_of(&r).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(h.next_seq(&r), 1);
        assert_eq!(h.join(&r, &a, 1, true).0, 0, "not committed yet");
        h.commit(&r, 1);
        assert_eq!(h.join(&r, &a, 1, true).0, 1);
        assert!(h.leave(&r, &a, 0).is_none());
        assert_eq!(h.shards_of(&r).collect::<Vec<_>>(), [1]);
        assert!(h.leave(&r, &a, 1).is_some());
        assert_eq!(h.next_seq(&r), 2, "seqs outlive the room's members");
    }

    #[test]
    fn session_policies() {
        let u = n("u");
        let c = |shard, i| ConnId::new(shard, i);
        let multi = Config {
            max_connections_per_user: 2,
            ..Config::default()
        };
        let mut h = HomeUsers::new(2);
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
        let mut h = HomeUsers::new(2);
        assert!(h.admit(&reject, &u, c(0, 1)).is_ok());
        assert_eq!(
            h.admit(&reject, &u, c(0, 2)),
            Err(HandshakeError::SessionExists)
        );

        let kick = Config {
            session_policy: SessionPolicy::KickOld,
            ..Config::default()
        };
        let mut h = HomeUsers::new(2);
        assert_eq!(h.admit(&kick, &u, c(1, 1)), Ok(vec![]));
        assert_eq!(h.admit(&kick, &u, c(0, 2)), Ok(vec![1]));
    }

    #[test]
    fn inbox_delivery_follows_attached_connections() {
        let (x, c1, c2) = (n("x"), ConnId::new(0, 1), ConnId::new(0, 2));
        let mut h = HomeUsers::new(1);
        h.seed(&x, 4, 2);
        assert_eq!(h.next_inbox_seq(&x), 5);
        assert_eq!(h.inbox_seq(&x), 4, "5 is not stored yet");
        assert!(!h.commit(&x, 5), "offline: stored, not delivered");
        assert_eq!(h.online(&x, c1), Some((2, 5)));
        assert_eq!(h.next_inbox_seq(&x), 6);
        assert!(h.commit(&x, 6), "online: live");
        assert_eq!(
            h.online(&x, c2),
            None,
            "a second connection gets nothing replayed"
        );
        h.release(&x, c1);
        h.release(&x, c2);
        h.next_inbox_seq(&x);
        assert!(!h.commit(&x, 7));
        assert_eq!(h.online(&x, c1), Some((6, 7)));
    }
}
