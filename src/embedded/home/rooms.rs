//! A room's home: its seqs, its members per user and per shard, and the `occupancy` events
//! due for rooms whose presence is a count.

use ahash::AHashMap;
use bytes::Bytes;

use super::Seqs;
use crate::config::{PresenceMode, Rule};
use crate::core::{Name, ShardId};
use crate::engine::shards_with;
use crate::protocol::encode;

struct HomeRoom {
    /// Connections in the room, per user. Its length is the member count: kept, never
    /// counted by walking members.
    users: AHashMap<Name, u32>,
    /// The presence info of users that have one: their first connection's in the room (the
    /// one whose join said `joined`), kept while they are in it.
    info: AHashMap<Name, Bytes>,
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
        info: Option<&Bytes>,
    ) -> Result<Membership, Full> {
        let seq = self.committed_seq(room);
        let shards = self.shards;
        let r = self.rooms.entry(room.clone()).or_insert_with(|| HomeRoom {
            users: AHashMap::new(),
            info: AHashMap::new(),
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
        if let (true, Some(info)) = (first, info) {
            r.info.insert(user.clone(), info.clone());
        }
        let members = r.users.len();
        let event = match rule.presence_at(members) {
            PresenceMode::List => first.then(|| encode::joined(room, user, info)),
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
            r.info.remove(user);
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

    /// A member's presence info, if it has one.
    pub fn info(&self, room: &Name, user: &Name) -> Option<Bytes> {
        self.rooms.get(room)?.info.get(user).cloned()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn n(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn membership_events_follow_the_first_and_last_connection() {
        let config = Config::default();
        let list = config.rule("r");
        let mut h = HomeRooms::new(2);
        let (r, a) = (n("r"), n("a"));
        let joined =
            |h: &mut HomeRooms, u: &Name, shard| h.join(&r, u, shard, &list, None).ok().unwrap();
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
            let m = h.join(&r, &n(u), 0, &rule, None).ok().unwrap();
            assert!(m.event.is_none(), "no joined in a count room");
        }
        assert_eq!(h.occupancy_due(), [(r.clone(), 2)], "two joins, one event");
        assert!(h.occupancy_due().is_empty(), "nothing changed since");
        assert!(
            h.leave(&r, &n("b"), 0, &rule).is_none(),
            "b has another connection"
        );
        assert!(h.occupancy_due().is_empty());
        assert!(h.join(&r, &n("c"), 0, &rule, None).is_ok());
        assert!(h.leave(&r, &n("c"), 0, &rule).is_none(), "no left either");
        assert!(
            h.occupancy_due().is_empty(),
            "back to 2 members: nothing to say"
        );
        assert!(h.join(&r, &n("c"), 0, &rule, None).is_ok());
        assert!(
            matches!(h.join(&r, &n("d"), 0, &rule, None), Err(Full)),
            "max_members"
        );
        assert!(
            h.join(&r, &n("a"), 0, &rule, None).is_ok(),
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
        assert!(
            h.join(&r, &n("a"), 0, &rule, None)
                .ok()
                .unwrap()
                .event
                .is_some()
        );
        assert!(
            h.join(&r, &n("b"), 0, &rule, None)
                .ok()
                .unwrap()
                .event
                .is_some()
        );
        assert!(
            h.join(&r, &n("c"), 0, &rule, None)
                .ok()
                .unwrap()
                .event
                .is_none(),
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
}
