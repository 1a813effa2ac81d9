//! The counter data types: what shards, the store writer and the Redis engine count, and the
//! fixed label sets a scrape renders them with.
//!
//! Each is owned by the one thread that counts it (plain integers: an increment on the message
//! path is one non-atomic add), except `RedisCounters` and `FeedCounters`, shared atomics added
//! to once per command or batch. Gathering and rendering a scrape is `metrics`'s job, above.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::error::{CloseCode, ErrorCode};
use super::ids::ShardId;

/// Every reply error code, in the order of `ShardCounters::errors`.
pub const ERROR_CODES: [ErrorCode; 12] = [
    ErrorCode::BadRequest,
    ErrorCode::UnknownType,
    ErrorCode::InvalidName,
    ErrorCode::NotMember,
    ErrorCode::Forbidden,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Unavailable,
    ErrorCode::Cancelled,
    ErrorCode::Unauthorized,
    ErrorCode::RoomFull,
    ErrorCode::NoSuchMessage,
];

pub(crate) fn error_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::BadRequest => 0,
        ErrorCode::UnknownType => 1,
        ErrorCode::InvalidName => 2,
        ErrorCode::NotMember => 3,
        ErrorCode::Forbidden => 4,
        ErrorCode::TooLarge => 5,
        ErrorCode::RateLimited => 6,
        ErrorCode::Unavailable => 7,
        ErrorCode::Cancelled => 8,
        ErrorCode::Unauthorized => 9,
        ErrorCode::RoomFull => 10,
        ErrorCode::NoSuchMessage => 11,
    }
}

/// Why a connection ended: the close code the server sent, or `LOST` when the socket ended
/// (EOF, reset, a failed write) before anything closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    Closed(CloseCode),
    Lost,
}

/// The `reason` label of each `Disconnect`, in the order of `ShardCounters::disconnects`.
pub const DISCONNECT_REASONS: [&str; 12] = [
    "normal",
    "going_away",
    "protocol_error",
    "idle_timeout",
    "too_big",
    "internal",
    "slow_consumer",
    "token_expired",
    "replaced",
    "kicked",
    "connection_lost",
    "invalid_payload",
];

pub(crate) fn disconnect_index(d: Disconnect) -> usize {
    match d {
        Disconnect::Closed(code) => match code {
            CloseCode::Normal => 0,
            CloseCode::GoingAway => 1,
            CloseCode::ProtocolError => 2,
            CloseCode::Policy => 3,
            CloseCode::TooBig => 4,
            CloseCode::Internal => 5,
            CloseCode::SlowConsumer => 6,
            CloseCode::TokenExpired => 7,
            CloseCode::Replaced => 8,
            CloseCode::Kicked => 9,
            CloseCode::InvalidPayload => 11,
        },
        Disconnect::Lost => 10,
    }
}

/// Histogram upper bounds: nanoseconds, and the `le` label (seconds) for each.
pub const BUCKETS: [(u64, &str); 15] = [
    (50_000, "0.00005"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
];

/// A latency histogram with fixed buckets, so two of them merge by adding counts. Owned by one
/// thread; observing is a bucket search over 15 bounds and three non-atomic adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last counts what is over the largest bound.
    pub(crate) counts: [u64; BUCKETS.len() + 1],
    pub(crate) sum_ns: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS
            .iter()
            .position(|&(bound, _)| ns <= bound)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What a shard counts as it works. Plain integers in the shard's own state: an increment on
/// the message path is one non-atomic add, and no cache line is shared with another core.
#[derive(Clone, Debug, Default)]
pub struct ShardCounters {
    /// Data messages read from clients (text or binary, including discarded over-size ones).
    pub frames_in: u64,
    /// Frames queued for clients: welcome, replies, messages, events, pings, pongs, close
    /// frames. A replay of stored messages is queued as one buffer and counts as one.
    pub frames_out: u64,
    /// Live frames (messages, presence events) queued or held for a member or recipient.
    pub deliveries: u64,
    /// Room messages this shard sequenced as the room's home.
    pub room_publishes: u64,
    /// Direct messages this shard sequenced as the recipient's home.
    pub direct_publishes: u64,
    /// Gaps in a stream's live frames that the hub asked the engine to read (a live seq above
    /// the last one handed on, or a catch-up behind the room).
    pub gaps: u64,
    /// Live room frames dropped because their seq had been handed on already.
    pub duplicates_dropped: u64,
    /// Panics caught while handling a message, a connection's input or a flush.
    pub panics: u64,
    pub(crate) errors: [u64; ERROR_CODES.len()],
    pub(crate) disconnects: [u64; DISCONNECT_REASONS.len()],
    /// At the home: from sequencing a message to handing it to fan-out (see ARCHITECTURE.md).
    pub publish_latency: Histogram,
    /// `signal` frames accepted from clients.
    pub signals_in: u64,
    /// Signals and receipts not queued for a member whose queue was over `signal_queue_bytes`.
    pub signals_dropped: u64,
}

impl ShardCounters {
    pub fn error(&mut self, code: ErrorCode) {
        self.errors[error_index(code)] += 1;
    }

    pub fn disconnect(&mut self, d: Disconnect) {
        self.disconnects[disconnect_index(d)] += 1;
    }
}

/// One shard's answer to a scrape.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: ShardId,
    /// Upgraded connections on this shard.
    pub connections: u64,
    /// Rooms with at least one live member connected to this shard.
    pub rooms_local: u64,
    /// Rooms homed on this shard with at least one member anywhere. Summed over shards: the
    /// rooms in use.
    pub rooms_homed: u64,
    /// Users homed on this shard with a connection (or an inbox replay out) anywhere.
    pub users_homed: u64,
    /// Bytes queued and not yet written, over this shard's connections.
    pub queued_bytes: u64,
    pub counters: ShardCounters,
}

/// What the store writer counts. It is one thread; these are plain fields of it.
#[derive(Clone, Debug, Default)]
pub struct WriterCounters {
    /// Time in `Store::write` per batch (group commit, including the fsync under `sync`).
    pub commit_latency: Histogram,
    pub write_failures: u64,
    /// History and sync reads that failed (each answered with `unavailable`).
    pub read_errors: u64,
    /// Read positions written to the store (each one key, coalesced per `read_interval_ms`).
    pub read_position_writes: u64,
}

/// Counters of the Redis engine, read by a scrape.
#[derive(Debug, Default)]
pub struct RedisCounters {
    /// Commands and scripts answered by Redis.
    pub round_trips: AtomicU64,
    /// Commands and scripts that failed (Redis unreachable, timed out, or an error reply).
    pub errors: AtomicU64,
    /// Times the subscription connection was re-established (dropped, or silent).
    pub pubsub_reconnects: AtomicU64,
    /// Messages read from history after a subscription gap.
    pub gap_fills: AtomicU64,
    /// Messages received over pub/sub.
    pub received: AtomicU64,
    /// Streams whose seq went back in Redis (a failover lost acked writes): each began a new
    /// epoch.
    pub rollbacks: AtomicU64,
}

impl RedisCounters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Counters of the event feed, read by a scrape: shared atomics, added to by the store writer
/// (`recorded`, once per batch) and the feed's delivery thread (once per POST).
#[derive(Debug, Default)]
pub struct FeedCounters {
    /// Events written to the feed.
    pub recorded: AtomicU64,
    /// Events the webhook acknowledged (2xx).
    pub delivered: AtomicU64,
    /// Webhook POSTs that failed (no answer in time, not 2xx).
    pub failed: AtomicU64,
    /// Events stored and not yet acknowledged, at the last look of the delivery thread.
    pub backlog: AtomicU64,
    /// Events dropped by retention before they were delivered.
    pub dropped: AtomicU64,
}
