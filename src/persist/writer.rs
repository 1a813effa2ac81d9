//! The writer thread: takes every queued `Op` in order, commits the appends of a batch with one
//! fsync (group commit), answers each home in the order it sent, and serves reads after the
//! writes queued before them.
//!
//! It must not hold room, user or connection state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::{Config, Durability};
use crate::core::ShardId;
use crate::core::Stream;
use crate::core::counters::WriterCounters;
use crate::core::health::Health;
use crate::core::pace::Pacer;
use crate::msg::{LocalMsg, Written};
use crate::router::Router;
use crate::store::{FeedRecord, Store};

use super::disk::DiskFloor;
use super::feed::{FeedShared, read_page};
use super::op::Op;

/// Most queued operations the writer takes into one commit.
const MAX_BATCH: usize = 4096;

/// How often the writer reads the free disk space while it writes: a `statvfs` (~1 µs) ten
/// times a second at most, whatever the message rate. By time rather than by bytes written, so
/// space taken by other processes is seen too; what can be written between two readings (100
/// ms of the disk's bandwidth) is far below the default floor of 256 MiB.
const DISK_CHECK_BUSY: Duration = Duration::from_millis(100);

/// How often it reads it while idle: how soon freed space (or space taken by another process)
/// is seen when nothing is written.
const DISK_CHECK_IDLE: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub(super) store: Arc<dyn Store>,
    pub(super) router: Router,
    pub(super) durability: Durability,
    pub(super) flush_every: Duration,
    /// With sync durability: at most one group commit per `commit_interval_us`. An fsync
    /// costs ~45 us of CPU on this project's VM whatever it carries (docs/performance-log.md,
    /// issue 25), so under load fewer, larger commits cost less per message.
    pub(super) pacer: Pacer,
    pub(super) replay_limit: usize,
    /// A reply carrying messages stays under this, so it cannot make its reader a slow consumer.
    pub(super) reply_bytes: usize,
    /// Told after each batch whether the store wrote it (`/readyz`).
    pub(super) health: Arc<Health>,
    pub(super) counters: WriterCounters,
    /// The free-disk floor, when it applies (an embedded store on disk, a floor set).
    pub(super) disk: Option<DiskFloor>,
    /// The event feed, when it is on: its horizon, the next cursor to give, and (async
    /// durability) the last cursor written and not yet synced.
    pub(super) feed: Option<Arc<FeedShared>>,
    pub(super) feed_next: u64,
    pub(super) feed_unsynced: u64,
    #[cfg(feature = "fault-injection")]
    pub(super) fail_next_read: bool,
    /// Test-only (`SHARDCAST_FAULT_ABORT_AFTER_KEYED_WRITE=1`): the process aborts right after
    /// the first commit holding a keyed message, before any ack leaves (a kill -9 there).
    #[cfg(feature = "fault-injection")]
    pub(super) abort_after_keyed_write: bool,
}

impl Writer {
    pub(super) fn new(
        store: Arc<dyn Store>,
        router: Router,
        config: &Config,
        health: Arc<Health>,
        feed: Option<Arc<FeedShared>>,
    ) -> Writer {
        let feed_next = feed.as_ref().map_or(1, |f| f.durable() + 1);
        Writer {
            feed,
            feed_next,
            feed_unsynced: 0,
            store,
            router,
            durability: config.durability,
            flush_every: Duration::from_millis(config.flush_interval_ms),
            pacer: Pacer::new(Duration::from_micros(config.commit_interval_us)),
            replay_limit: config.replay_limit,
            reply_bytes: config.max_queue_bytes / 2,
            health,
            counters: WriterCounters::default(),
            disk: DiskFloor::new(config),
            #[cfg(feature = "fault-injection")]
            fail_next_read: false,
            #[cfg(feature = "fault-injection")]
            abort_after_keyed_write: std::env::var_os("SHARDCAST_FAULT_ABORT_AFTER_KEYED_WRITE")
                .is_some_and(|v| v == "1"),
        }
    }

    /// Reads the free disk space if the last reading is `every` old.
    pub(super) fn check_disk(&mut self, every: Duration) {
        if let Some(disk) = &mut self.disk
            && disk.checked.elapsed() >= every
        {
            disk.check(&self.health);
        }
    }

    pub(super) fn run(mut self, rx: Receiver<Vec<Op>>) {
        // Before the shards start: a server started on a full disk refuses at once.
        self.check_disk(Duration::ZERO);
        // With async durability: when the oldest write not yet on disk was made.
        let mut unsynced: Option<Instant> = None;
        loop {
            let sync_at = unsynced.map(|since| since + self.flush_every);
            let disk_at = self.disk.as_ref().map(|d| d.checked + DISK_CHECK_IDLE);
            let first = match sync_at.into_iter().chain(disk_at).min() {
                None => rx.recv().ok(),
                Some(at) => match rx.recv_deadline(at) {
                    Ok(op) => Some(op),
                    Err(RecvTimeoutError::Timeout) => {
                        if unsynced.is_some_and(|since| since.elapsed() >= self.flush_every) {
                            self.sync();
                            unsynced = None;
                        }
                        self.check_disk(DISK_CHECK_IDLE);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => None,
                },
            };
            let Some(first) = first else {
                self.sync();
                return;
            };
            let mut ops = first;
            take_queued(&rx, &mut ops);
            if self.durability == Durability::Sync
                && let Some(wait) = self.pacer.wait(Instant::now())
                && ops
                    .iter()
                    .any(|op| matches!(op, Op::Append { .. } | Op::Feed(_)))
            {
                // A sleep, not a receive: what the shards send meanwhile must not wake this
                // thread once per send. Whatever arrived by the end joins this commit.
                std::thread::sleep(wait);
                take_queued(&rx, &mut ops);
            }
            let stop = self.apply(ops);
            if self.durability == Durability::Async {
                let since = *unsynced.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.flush_every {
                    self.sync();
                    unsynced = None;
                }
            }
            if stop {
                self.sync();
                return;
            }
        }
    }

    /// Commits the writes among `ops` as one batch, answers them, then serves the reads.
    /// Returns whether a `Stop` was among them.
    pub(super) fn apply(&mut self, ops: Vec<Op>) -> bool {
        let mut appends = Vec::new();
        let mut cursors: ahash::AHashMap<Stream, u64> = ahash::AHashMap::new();
        let mut done: Vec<(ShardId, Written)> = Vec::new();
        let mut reads = Vec::new();
        let mut scrapes = Vec::new();
        let mut feed: Vec<FeedRecord> = Vec::new();
        let mut feed_reads = Vec::new();
        let mut positions = Vec::new();
        let mut stop = false;
        for op in ops {
            match op {
                Op::Append { append, done: d } => {
                    appends.push(append);
                    done.extend(d);
                }
                Op::Cursor { stream, cursor } => {
                    let c = cursors.entry(stream).or_default();
                    *c = (*c).max(cursor);
                }
                Op::Read(r) => reads.push(r),
                // Dropped when the feed is off (a home checks first; this is the backstop).
                Op::Feed(event) if self.feed.is_some() => {
                    feed.push(event.record(self.feed_next));
                    self.feed_next += 1;
                }
                Op::Feed(_) => {}
                Op::FeedRead {
                    after,
                    limit,
                    reply,
                } => feed_reads.push((after, limit, reply)),
                Op::Reads(p) => positions.extend(p),
                Op::Stop => stop = true,
                Op::Stats(reply) => scrapes.push(reply),
                #[cfg(feature = "fault-injection")]
                Op::FailNextRead => self.fail_next_read = true,
                #[cfg(feature = "fault-injection")]
                Op::SetDiskFree(free) => {
                    if let Some(disk) = &mut self.disk {
                        disk.fake_free = free;
                    }
                }
            }
        }
        if !appends.is_empty() {
            self.check_disk(DISK_CHECK_BUSY);
        }
        if !appends.is_empty() || !cursors.is_empty() || !feed.is_empty() {
            // A cursor alone is not worth an fsync: losing it only repeats a delivery.
            let durable =
                self.durability == Durability::Sync && (!appends.is_empty() || !feed.is_empty());
            let started = Instant::now();
            if durable {
                self.pacer.started(started);
            }
            let cursors: Vec<(Stream, u64)> = cursors.into_iter().collect();
            let ok = match self
                .store
                .write_with_feed(&appends, &cursors, &feed, durable)
            {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, messages = appends.len(), "store write failed");
                    self.counters.write_failures += 1;
                    false
                }
            };
            #[cfg(feature = "fault-injection")]
            if ok && self.abort_after_keyed_write && appends.iter().any(|a| a.key.is_some()) {
                std::process::abort();
            }
            self.counters.commit_latency.observe(started.elapsed());
            self.health.store_written(ok);
            self.answer_writes(done, ok);
            self.feed_written(&feed, ok, durable);
        }
        for (after, limit, reply) in feed_reads {
            let durable = self.feed.as_ref().map_or(0, |f| f.durable());
            let _ = reply.send(read_page(&*self.store, after, limit, durable));
        }
        if !positions.is_empty() {
            let durable = self.durability == Durability::Sync;
            match self.store.write_reads(&positions, durable) {
                Ok(()) => self.counters.read_position_writes += positions.len() as u64,
                Err(e) => {
                    tracing::error!(error = %e, "store write of read positions failed");
                    self.counters.write_failures += 1;
                }
            }
        }
        for r in reads {
            self.read(r);
        }
        for reply in scrapes {
            let _ = reply.send(self.counters.clone());
        }
        stop
    }

    /// Tells each home shard, in one message, which of its messages were stored.
    pub(super) fn answer_writes(&self, mut done: Vec<(ShardId, Written)>, ok: bool) {
        // Stable: each home must see its messages in the order it sent them.
        done.sort_by_key(|(home, _)| *home);
        let mut it = done.into_iter().peekable();
        while let Some((home, first)) = it.next() {
            let mut writes = vec![first];
            while let Some((_, w)) = it.next_if(|(h, _)| *h == home) {
                writes.push(w);
            }
            self.router.send(home, LocalMsg::Stored { writes, ok });
        }
    }

    pub(super) fn sync(&mut self) {
        match self.store.sync() {
            Ok(()) => {
                if let Some(feed) = &self.feed {
                    feed.made_durable(self.feed_unsynced);
                }
            }
            Err(e) => tracing::error!(error = %e, "store sync failed"),
        }
    }

    /// After a commit holding `feed`: on success the events may be read out once durable;
    /// on failure their cursors are given again (the store deleted them), so none is skipped.
    fn feed_written(&mut self, feed: &[FeedRecord], ok: bool, durable: bool) {
        let (Some(shared), Some(first), Some(last)) = (&self.feed, feed.first(), feed.last())
        else {
            return;
        };
        if !ok {
            self.feed_next = first.cursor;
            return;
        }
        let n = feed.len() as u64;
        (shared.counters.recorded).fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        match self.durability {
            Durability::Async => self.feed_unsynced = last.cursor,
            Durability::Sync if !durable => self.feed_unsynced = last.cursor,
            _ => shared.made_durable(last.cursor),
        }
    }
}

/// Takes what is queued, up to `MAX_BATCH` operations.
fn take_queued(rx: &Receiver<Vec<Op>>, ops: &mut Vec<Op>) {
    while ops.len() < MAX_BATCH
        && let Ok(more) = rx.try_recv()
    {
        ops.extend(more);
    }
}
