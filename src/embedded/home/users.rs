//! A user's home: its inbox seqs and delivered cursor, where its connections are and which
//! receive live, and the session policy.

use ahash::AHashMap;

use super::Seqs;
use crate::config::{Config, SessionPolicy};
use crate::core::error::HandshakeError;
use crate::core::{ConnId, Name, ShardId};

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

    /// A connection of `user` ended. Returns whether it was admitted here.
    pub fn release(&mut self, user: &Name, conn: ConnId) -> bool {
        let mut had = false;
        if let Some(u) = self.users.get_mut(user) {
            let before = u.conns.len();
            u.conns.retain(|(c, _)| *c != conn);
            had = u.conns.len() < before;
        }
        self.evict_if_idle(user);
        had
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
