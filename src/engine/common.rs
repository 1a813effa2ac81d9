//! What both engines do alike: the answer to a join, the shards a live frame goes to, and the
//! reads they hand to the store threads.

use crate::config::Rule;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::rights::Rights;
use crate::core::{ConnId, JoinGen, Name, ReqId, ShardId};
use crate::msg::{EngineMsg, NodeMsg, ReplayTo};
use crate::persist::{Op, Persist, Read};
use crate::protocol::encode::{self, Recovery, RoomInfo, Target};

/// A join the engine has just registered at the room's `seq`: what either engine answers.
pub struct Joined {
    pub room: Name,
    pub conn: ConnId,
    pub jgen: JoinGen,
    pub id: Option<ReqId>,
    /// Whether the join owes an ack (a token's rooms do not).
    pub ack: bool,
    pub since: Option<u64>,
    /// What the connection may do in the room, for the ack.
    pub rights: Rights,
    /// The room's epoch (cluster mode), and whether the client's `since` was from another.
    pub epoch: Option<u64>,
    pub lost: bool,
}

impl Joined {
    /// A join as the engine received it (`EngineMsg::Join`), before any epoch is known.
    pub fn new(
        room: Name,
        conn: ConnId,
        jgen: JoinGen,
        id: Option<ReqId>,
        ack: bool,
        since: Option<u64>,
        rights: Rights,
    ) -> Joined {
        Joined {
            room,
            conn,
            jgen,
            id,
            ack,
            since,
            rights,
            epoch: None,
            lost: false,
        }
    }

    /// The answer to a join refused because the room has its `max_members` members.
    pub fn full(self, rule: &Rule) -> NodeMsg {
        let message = format!(
            "{} has its {} members ({}: max_members); try again later",
            self.room,
            rule.max_members,
            rule.describe()
        );
        NodeMsg::JoinFailed {
            room: self.room,
            conn: self.conn,
            jgen: self.jgen,
            error: ReplyError::new(ErrorCode::RoomFull, message),
        }
    }

    /// The `JoinDone` for the connection's shard and, when `since` is behind `seq`, the read
    /// that replays (since, seq] after the ack. A `since` from a lost epoch replays it all; a
    /// room whose rule does not `recover` replays nothing, and its ack says `recovered: false`
    /// unless nothing was missed. The ack carries the room's rule and `members` when known.
    pub fn answer(self, seq: u64, rule: &Rule, members: Option<u64>) -> (NodeMsg, Option<Read>) {
        let since = if self.lost { Some(0) } else { self.since };
        let replay = rule.recover && since.is_some_and(|s| s < seq);
        let room = RoomInfo {
            publish: rule.publish.as_str(),
            presence: rule.presence.as_str(),
            rights: self.rights,
            members,
        };
        let ack = (self.ack && !replay).then(|| {
            let frame = match since {
                Some(since) => {
                    let recovery = Recovery {
                        recovered: since == seq && !self.lost,
                        ..Recovery::default()
                    };
                    encode::join_ack(self.id.as_ref(), &self.room, seq, recovery)
                }
                None => encode::ack(self.id.as_ref(), Target::Room(&self.room), Some(seq)),
            };
            let frame = match self.epoch {
                Some(epoch) => encode::with_epoch(&frame, epoch),
                None => frame,
            };
            encode::with_room(&frame, &room)
        });
        let done = NodeMsg::JoinDone {
            room: self.room.clone(),
            conn: self.conn,
            jgen: self.jgen,
            seq,
            ack,
            replay,
        };
        let read = since.filter(|_| replay).map(|since| Read::Join {
            room: self.room,
            to: ReplayTo::Conn {
                conn: self.conn,
                jgen: self.jgen,
            },
            id: self.id,
            since,
            upto: seq,
            epoch: self.epoch,
            lost: self.lost,
            info: room,
        });
        (done, read)
    }
}

/// The shards whose count of receivers is not zero.
pub fn shards_with(per_shard: &[u32]) -> impl Iterator<Item = ShardId> + '_ {
    (per_shard.iter().enumerate()).filter_map(|(shard, &n)| (n > 0).then_some(shard))
}

/// Reads a shard hands straight to the store threads (`history`, `sync`), queued during a
/// scheduler pass and sent together at its end (`Engine::flush`). Neither needs the stream's
/// home: a page is read from what is stored.
pub struct StoreReads {
    persist: Persist,
    ops: Vec<Op>,
}

impl StoreReads {
    pub fn new(persist: Persist) -> StoreReads {
        StoreReads {
            persist,
            ops: Vec::new(),
        }
    }

    /// Queues `msg` if it is such a read, else gives it back.
    pub fn take(&mut self, msg: EngineMsg) -> Option<EngineMsg> {
        let read = match msg {
            EngineMsg::History {
                room,
                reply,
                before,
                limit,
                fold,
            } => Read::History {
                room,
                reply,
                before,
                limit,
                fold,
            },
            EngineMsg::Sync { user, reply, since } => Read::Sync { user, reply, since },
            msg => return Some(msg),
        };
        self.ops.push(Op::Read(read));
        None
    }

    /// Queues any operation, in order with the reads.
    pub fn queue(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Queues `ops` (none or some) in this pass's batch.
    pub fn queue_all(&mut self, ops: impl IntoIterator<Item = Op>) {
        self.ops.extend(ops);
    }

    /// Queues an event for the feed when it is on (`event_feed`, `webhook_url`); otherwise
    /// `event` is not even built: one branch when off. Queued in this pass's batch, so an
    /// event queued right after its append is committed with it.
    pub fn feed(&mut self, event: impl FnOnce() -> crate::persist::FeedEvent) {
        if self.persist.feed().is_some() {
            self.ops.push(Op::Feed(event()));
        }
    }

    /// Sends what this pass queued.
    pub fn flush(&mut self) {
        if !self.ops.is_empty() {
            self.persist.send(std::mem::take(&mut self.ops));
        }
    }

    pub fn persist(&self) -> &Persist {
        &self.persist
    }
}
