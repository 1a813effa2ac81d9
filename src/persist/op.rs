//! What the shards and the engines ask of the writer: store a message, move a cursor, read a
//! range or a page (`Op`, `Read`), and the answer to a join that both engines give (`Joined`).
//!
//! Plain data. It must not do I/O.

use tokio::sync::oneshot;

use crate::core::Stream;
use crate::core::counters::WriterCounters;
use crate::core::{ConnId, JoinGen, ShardId};
use crate::core::{Name, ReqId};
use crate::msg::{NodeMsg, ReplayTo, ReplyTo, Written};
use crate::protocol::encode::{self, Recovery, Target};
use crate::store::Append;

/// Work for the writer thread.
pub enum Op {
    /// Store a message. With `done` (sync durability), the home shard is told once it is on
    /// disk, or that it failed.
    Append {
        append: Append,
        done: Option<(ShardId, Written)>,
    },
    /// Set a stream's cursor (an inbox's delivered mark).
    Cursor {
        stream: Stream,
        cursor: u64,
    },
    Read(Read),
    /// Sync and stop, after everything queued before it.
    Stop,
    /// Answer a metrics scrape with the writer's counters, after the writes queued before it.
    Stats(oneshot::Sender<WriterCounters>),
    /// Test-only: the next inbox or range read fails as if the store could not be read.
    #[cfg(feature = "fault-injection")]
    FailNextRead,
    /// Test-only: free disk space reads as this (`None`: as the filesystem says) from the
    /// writer's next reading on.
    #[cfg(feature = "fault-injection")]
    SetDiskFree(Option<u64>),
}

/// A read, answered to the asking connection's shard. Served after every write queued before
/// it, so it sees them; bounds that matter for exactness (`upto`) come from the home shard.
pub enum Read {
    /// A `join` with `since`: the ack and the stored messages in (since, upto].
    Join {
        room: Name,
        to: ReplayTo,
        id: Option<ReqId>,
        since: u64,
        upto: u64,
        /// The room's epoch, for the ack (cluster mode).
        epoch: Option<u64>,
        /// The client's `since` was from another epoch: not recovered, whatever is replayed.
        lost: bool,
    },
    /// At connect: the inbox messages in (after, upto] that reached no connection.
    Inbox {
        user: Name,
        to: ReplayTo,
        after: u64,
        upto: u64,
    },
    /// A gap: the oldest stored messages in (after, upto], as many as one reply may carry.
    Range {
        stream: Stream,
        after: u64,
        upto: u64,
        to: ReplayTo,
    },
    History {
        room: Name,
        reply: ReplyTo,
        before: Option<u64>,
        limit: usize,
    },
    Sync {
        user: Name,
        reply: ReplyTo,
        since: u64,
    },
}

/// A join the engine has just registered at the room's `seq`: what either engine answers.
pub struct Joined {
    pub room: Name,
    pub conn: ConnId,
    pub jgen: JoinGen,
    pub id: Option<ReqId>,
    /// Whether the join owes an ack (a token's rooms do not).
    pub ack: bool,
    pub since: Option<u64>,
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
    ) -> Joined {
        Joined {
            room,
            conn,
            jgen,
            id,
            ack,
            since,
            epoch: None,
            lost: false,
        }
    }

    /// The `JoinDone` for the connection's shard and, when `since` is behind `seq`, the read
    /// that replays (since, seq] after the ack. A `since` from a lost epoch replays it all.
    pub fn answer(self, seq: u64) -> (NodeMsg, Option<Read>) {
        let since = if self.lost { Some(0) } else { self.since };
        let replay = since.is_some_and(|s| s < seq);
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
            match self.epoch {
                Some(epoch) => encode::with_epoch(&frame, epoch),
                None => frame,
            }
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
        });
        (done, read)
    }
}
