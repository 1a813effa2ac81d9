//! What the shards and the engines ask of the writer: store a message, move a cursor, read a
//! range or a page.
//!
//! Plain data. It must not do I/O.

use tokio::sync::oneshot;

use crate::core::ShardId;
use crate::core::Stream;
use crate::core::counters::WriterCounters;
use crate::core::event::Event;
use crate::core::{Name, ReqId};
use crate::msg::{FoldFor, ReplayTo, ReplyTo, Written};
use crate::protocol::encode::RoomInfo;
use crate::store::{Append, StoreError};

use super::feed::{FeedEvent, FeedPage};

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
    /// Record an event in the feed (with `event_feed`). A home queues it in the same pass as
    /// the append it tells of, so the writer commits both in one batch.
    Feed(FeedEvent),
    /// `GET /api/events`: up to `limit` durable events after cursor `after`.
    FeedRead {
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<FeedPage, StoreError>>,
    },
    /// Set read positions (coalesced by the homes: at most one per user and stream per
    /// `read_interval_ms`).
    Reads(Vec<crate::store::ReadPosition>),
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
        /// The room's fields for the ack.
        info: RoomInfo,
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
        fold: Option<FoldFor>,
    },
    /// An edit, delete or reaction to check against its stored target; the verdict goes back
    /// to the room's home shard `home` (`EngineMsg::Checked`).
    Check {
        room: Name,
        from: Name,
        event: Event,
        api: bool,
        reply: ReplyTo,
        home: ShardId,
        /// `max_reaction_emojis`.
        max_emojis: usize,
    },
    Sync {
        user: Name,
        reply: ReplyTo,
        since: u64,
    },
    /// `GET /api/users/{user}/unread`: the user's positions with each stream's last seq (the
    /// inbox's from its home; the rooms' as stored).
    Unread {
        user: Name,
        positions: Vec<(Stream, u64)>,
        inbox_seq: u64,
        reply: ReplyTo,
    },
}
