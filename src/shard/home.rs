//! Home state: what a shard knows about the rooms and users that hash to it, across all shards.
//!
//! A room's home holds its sequence number and who is in it (per user, and per shard for
//! fan-out). A user's home holds the inbox sequence and where the user's connections are, and
//! applies the session policy. Pure bookkeeping: no I/O, no connections.

use ahash::AHashMap;
use bytes::Bytes;

use crate::config::{Config, SessionPolicy};
use crate::error::HandshakeError;
use crate::protocol::Name;
use crate::protocol::encode;
use crate::router::{ConnId, ShardId};

struct HomeRoom {
    /// The last sequence number given out.
    seq: u64,
    /// Connections in the room, per user.
    users: AHashMap<Name, u32>,
    /// Connections in the room, per shard.
    per_shard: Box<[u32]>,
}

pub struct HomeRooms {
    shards: usize,
    rooms: AHashMap<Name, HomeRoom>,
}

impl HomeRooms {
    pub fn new(shards: usize) -> HomeRooms {
        HomeRooms {
            shards,
            rooms: AHashMap::new(),
        }
    }

    /// Registers a connection of `user` on `shard` joining `room` (unless `already` in it).
    /// Returns the room's current seq, and the `joined` event if this is the user's first
    /// connection in the room.
    pub fn join(
        &mut self,
        room: &Name,
        user: &Name,
        shard: ShardId,
        already: bool,
    ) -> (u64, Option<Bytes>) {
        let shards = self.shards;
        let r = self.rooms.entry(room.clone()).or_insert_with(|| HomeRoom {
            seq: 0,
            users: AHashMap::new(),
            per_shard: vec![0; shards].into(),
        });
        if already {
            return (r.seq, None);
        }
        r.per_shard[shard] += 1;
        let count = r.users.entry(user.clone()).or_insert(0);
        *count += 1;
        let event = (*count == 1).then(|| encode::membership(true, room, user));
        (r.seq, event)
    }

    /// A connection left. Returns the `left` event if it was the user's last one in the room.
    /// An empty room is forgotten (durable sequences come with the store).
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

    /// The next sequence number of a room that has members.
    pub fn next_seq(&mut self, room: &Name) -> Option<u64> {
        let r = self.rooms.get_mut(room)?;
        r.seq += 1;
        Some(r.seq)
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
    inbox_seq: u64,
    conns: u32,
    per_shard: Box<[u32]>,
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

    /// A connection of `user` ended.
    pub fn release(&mut self, user: &Name, conn: ConnId) {
        if let Some(u) = self.users.get_mut(user) {
            u.conns = u.conns.saturating_sub(1);
            u.per_shard[conn.shard()] = u.per_shard[conn.shard()].saturating_sub(1);
        }
    }

    /// The next inbox sequence number of `user`, online or not.
    pub fn next_inbox_seq(&mut self, user: &Name) -> u64 {
        let u = self.entry(user);
        u.inbox_seq += 1;
        u.inbox_seq
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
        assert_eq!(h.next_seq(&r), Some(1));
        assert_eq!(h.join(&r, &a, 1, true).0, 1);
        assert!(h.leave(&r, &a, 0).is_none());
        assert_eq!(h.shards_of(&r).collect::<Vec<_>>(), [1]);
        assert!(h.leave(&r, &a, 1).is_some());
        assert_eq!(h.next_seq(&r), None);
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
    fn inbox_seq_counts_for_offline_users() {
        let mut h = HomeUsers::new(1);
        assert_eq!(h.next_inbox_seq(&n("x")), 1);
        assert_eq!(h.next_inbox_seq(&n("x")), 2);
        assert_eq!(h.shards_of(&n("x")).count(), 0);
    }
}
