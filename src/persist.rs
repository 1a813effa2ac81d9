//! The store threads: the writer, which owns every call to the `Store` on the message path
//! (group commit, the durability modes, replays and history reads) and reads the data
//! directory's free space against `min_free_disk_bytes`, and the trimmer, which applies
//! retention in the background.
//!
//! Shards never block on disk: they send `Op`s here and get answers back through the router as
//! messages (`NodeMsg::Replay`, `NodeMsg::Reply`, `LocalMsg::Stored`). This module must not hold room, user or connection state (the shards do) and
//! must not know which database the `Store` is.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::oneshot;

use crate::config::{Config, Durability, Engine};
use crate::core::Stream;
use crate::core::counters::WriterCounters;
use crate::core::error::{ErrorCode, ReplyError};
use crate::core::health::Health;
use crate::core::{ConnId, JoinGen, ShardId};
use crate::core::{Name, ReqId};
use crate::msg::{LocalMsg, NodeMsg, Replay, ReplayTo, ReplyTo, Written};
use crate::protocol::encode::{self, Recovery, Target};
use crate::router::Router;
use crate::store::{Append, Store, StoreError, StoredMessage};

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

/// How shards reach the writer. Cheap to clone.
#[derive(Clone)]
pub struct Persist {
    tx: Sender<Vec<Op>>,
    /// Where the writer says whether the disk is below its floor.
    health: Arc<Health>,
}

impl Persist {
    /// A `Persist` that drops every operation: for driving a shard without a store in unit
    /// tests and benches (with `memory` or `async` durability, so nothing waits for an answer).
    pub fn discarding() -> Persist {
        Persist {
            tx: crossbeam_channel::unbounded().0,
            health: Arc::default(),
        }
    }

    /// The free bytes of the writer's last reading of the disk, when it is below
    /// `min_free_disk_bytes`: new messages must be refused. One relaxed atomic load.
    pub fn disk_low(&self) -> Option<u64> {
        self.health.disk_low()
    }

    /// Queues `ops` in order. A shard sends what one scheduler pass produced at once: one
    /// wake-up of the writer per pass, not per message.
    pub fn send(&self, ops: Vec<Op>) {
        // The writer outlives the shards; a send can only fail during a failed start-up.
        let _ = self.tx.send(ops);
    }
}

/// The running store threads.
pub struct Threads {
    persist: Persist,
    writer: Option<JoinHandle<()>>,
    trimmer: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Threads {
    pub fn start(
        store: Arc<dyn Store>,
        router: Router,
        config: Arc<Config>,
        health: Arc<Health>,
    ) -> std::io::Result<Threads> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let persist = Persist {
            tx,
            health: health.clone(),
        };
        let writer = {
            let (store, config) = (store.clone(), config.clone());
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || Writer::new(store, router, &config, health).run(rx))?
        };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let trimmer = std::thread::Builder::new()
            .name("store-trimmer".into())
            .spawn(move || trim_loop(&*store, &config, stop_rx));
        let mut threads = Threads {
            persist,
            writer: Some(writer),
            trimmer: None,
        };
        threads.trimmer = Some((stop_tx, trimmer?));
        Ok(threads)
    }

    pub fn persist(&self) -> Persist {
        self.persist.clone()
    }

    /// Writes and syncs everything queued, then stops both threads. Call after the shards have
    /// stopped, so nothing is queued after the stop.
    pub fn stop(&mut self) {
        if let Some(writer) = self.writer.take() {
            self.persist.send(vec![Op::Stop]);
            if writer.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
        if let Some((stop, trimmer)) = self.trimmer.take() {
            drop(stop);
            let _ = trimmer.join();
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Writer {
    store: Arc<dyn Store>,
    router: Router,
    durability: Durability,
    flush_every: Duration,
    replay_limit: usize,
    /// A reply carrying messages stays under this, so it cannot make its reader a slow consumer.
    reply_bytes: usize,
    /// Told after each batch whether the store wrote it (`/readyz`).
    health: Arc<Health>,
    counters: WriterCounters,
    /// The free-disk floor, when it applies (an embedded store on disk, a floor set).
    disk: Option<DiskFloor>,
    #[cfg(feature = "fault-injection")]
    fail_next_read: bool,
}

/// `min_free_disk_bytes`: the writer's readings of the data directory's filesystem. Below the
/// floor, homes refuse new messages (`Health::disk_low`); the writer itself still writes what
/// was sequenced before it knew, so no acknowledged message (async durability) is dropped and
/// no assigned seq goes missing. That is a batch or two, far inside the floor.
struct DiskFloor {
    path: PathBuf,
    floor: u64,
    /// When free space was last read.
    checked: Instant,
    low: bool,
    /// The last reading failed (logged once until one succeeds).
    unreadable: bool,
    #[cfg(feature = "fault-injection")]
    fake_free: Option<u64>,
}

impl DiskFloor {
    fn new(config: &Config) -> Option<DiskFloor> {
        let on_disk = config.engine == Engine::Embedded && config.durability != Durability::Memory;
        (on_disk && config.min_free_disk_bytes > 0).then(|| DiskFloor {
            path: config.data.clone(),
            floor: config.min_free_disk_bytes,
            checked: Instant::now(),
            low: false,
            unreadable: false,
            #[cfg(feature = "fault-injection")]
            fake_free: None,
        })
    }

    /// Reads the free space and tells `health`. Once low, the disk stays low until free space
    /// is an eighth above the floor, so `/readyz` does not flap while writes take it back down.
    fn check(&mut self, health: &Health) {
        self.checked = Instant::now();
        let free = match self.free() {
            Ok(free) => free,
            Err(e) => {
                if !std::mem::replace(&mut self.unreadable, true) {
                    let path = self.path.display();
                    tracing::warn!(error = %e, "cannot read the free space of {path}");
                }
                return;
            }
        };
        self.unreadable = false;
        let low = match self.low {
            true => free < self.floor.saturating_add(self.floor / 8),
            false => free < self.floor,
        };
        match (self.low, low) {
            (false, true) => tracing::error!(
                free,
                floor = self.floor,
                "the data directory's disk is below min_free_disk_bytes: publish and send are \
                 refused until space is freed"
            ),
            (true, false) => tracing::warn!(free, "disk space is back: messages are accepted"),
            _ => {}
        }
        self.low = low;
        health.disk_read(free, low);
    }

    /// Bytes an unprivileged process may still write on the data directory's filesystem.
    fn free(&self) -> std::io::Result<u64> {
        #[cfg(feature = "fault-injection")]
        if let Some(free) = self.fake_free {
            return Ok(free);
        }
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.path.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: statvfs is a struct of plain integers, for which all zeroes is valid.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and outlives the call; `stat` is a valid out-pointer.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
}

impl Writer {
    fn new(store: Arc<dyn Store>, router: Router, config: &Config, health: Arc<Health>) -> Writer {
        Writer {
            store,
            router,
            durability: config.durability,
            flush_every: Duration::from_millis(config.flush_interval_ms),
            replay_limit: config.replay_limit,
            reply_bytes: config.max_queue_bytes / 2,
            health,
            counters: WriterCounters::default(),
            disk: DiskFloor::new(config),
            #[cfg(feature = "fault-injection")]
            fail_next_read: false,
        }
    }

    /// Reads the free disk space if the last reading is `every` old.
    fn check_disk(&mut self, every: Duration) {
        if let Some(disk) = &mut self.disk
            && disk.checked.elapsed() >= every
        {
            disk.check(&self.health);
        }
    }

    fn run(mut self, rx: Receiver<Vec<Op>>) {
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
            while ops.len() < MAX_BATCH
                && let Ok(more) = rx.try_recv()
            {
                ops.extend(more);
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
    fn apply(&mut self, ops: Vec<Op>) -> bool {
        let mut appends = Vec::new();
        let mut cursors: ahash::AHashMap<Stream, u64> = ahash::AHashMap::new();
        let mut done: Vec<(ShardId, Written)> = Vec::new();
        let mut reads = Vec::new();
        let mut scrapes = Vec::new();
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
        if !appends.is_empty() || !cursors.is_empty() {
            // A cursor alone is not worth an fsync: losing it only repeats a delivery.
            let durable = self.durability == Durability::Sync && !appends.is_empty();
            let started = Instant::now();
            let cursors: Vec<(Stream, u64)> = cursors.into_iter().collect();
            let ok = match self.store.write(&appends, &cursors, durable) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, messages = appends.len(), "store write failed");
                    self.counters.write_failures += 1;
                    false
                }
            };
            self.counters.commit_latency.observe(started.elapsed());
            self.health.store_written(ok);
            self.answer_writes(done, ok);
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
    fn answer_writes(&self, mut done: Vec<(ShardId, Written)>, ok: bool) {
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

    fn sync(&self) {
        if let Err(e) = self.store.sync() {
            tracing::error!(error = %e, "store sync failed");
        }
    }

    fn read(&mut self, read: Read) {
        match read {
            Read::Join {
                room,
                to,
                id,
                since,
                upto,
                epoch,
                lost,
            } => {
                let stream = Stream::Room(room.clone());
                let (messages, mut recovery) =
                    self.replay(&stream, since, upto).unwrap_or_else(|e| {
                        // The join still goes through, with an ack that says what was lost.
                        tracing::error!(error = %e, "replay read failed");
                        self.counters.read_errors += 1;
                        (Vec::new(), Recovery::default())
                    });
                recovery.recovered &= !lost;
                let mut ack = encode::join_ack(id.as_ref(), &room, upto, recovery);
                if let Some(epoch) = epoch {
                    ack = encode::with_epoch(&ack, epoch);
                }
                self.send_replay(stream, to, (since, upto), Some(ack), Ok(messages));
            }
            Read::Inbox {
                user,
                to,
                after,
                upto,
            } => {
                let stream = Stream::Inbox(user);
                let messages = self.replay(&stream, after, upto).map(|(m, _)| m);
                #[cfg(feature = "fault-injection")]
                let messages = match std::mem::take(&mut self.fail_next_read) {
                    true => Err(StoreError::Read("fault injection".into())),
                    false => messages,
                };
                self.send_replay(stream, to, (after, upto), None, messages);
            }
            Read::Range {
                stream,
                after,
                upto,
                to,
            } => {
                let read = self.range(&stream, after, upto);
                let upto = match &read {
                    Ok((_, end)) => *end,
                    Err(_) => upto,
                };
                let messages = read.map(|(m, _)| m);
                self.send_replay(stream, to, (after, upto), None, messages);
            }
            Read::History {
                room,
                reply,
                before,
                limit,
            } => {
                let stream = Stream::Room(room.clone());
                let page = self
                    .store
                    .before(&stream, before.unwrap_or(u64::MAX), limit + 1)
                    .map(|m| self.page(m, limit));
                self.answer_page(reply, Some(&room), page);
            }
            Read::Sync { user, reply, since } => {
                let stream = Stream::Inbox(user);
                let page = self
                    .store
                    .after(&stream, since, self.replay_limit + 1)
                    .map(|m| self.page(m, self.replay_limit));
                self.answer_page(reply, None, page);
            }
        }
    }

    /// Answers a `history` (with `room`) or `sync` read: the page frame to a connection, or its
    /// JSON to an API call.
    fn answer_page(
        &mut self,
        reply: ReplyTo,
        room: Option<&Name>,
        page: Result<(Vec<StoredMessage>, bool), StoreError>,
    ) {
        let (shard, msg) = match page {
            Ok((messages, more)) => reply.answer_read(
                messages.len(),
                |id| encode::page(id, room, payloads(&messages), more),
                || crate::ws::payload_of(&encode::page(None, room, payloads(&messages), more)),
            ),
            Err(e) => {
                tracing::error!(error = %e, "history read failed");
                self.counters.read_errors += 1;
                reply.fail(ReplyError::new(
                    ErrorCode::Unavailable,
                    "the message store could not be read; try again",
                ))
            }
        };
        self.router.send(shard, msg);
    }

    /// Sends a replay (or a gap's read) to the shard it is for. A failed read is sent as not
    /// `ok`: the hub must not skip it silently.
    fn send_replay(
        &mut self,
        stream: Stream,
        to: ReplayTo,
        (after, upto): (u64, u64),
        ack: Option<Bytes>,
        messages: Result<Vec<StoredMessage>, StoreError>,
    ) {
        let (frames, ok) = match messages {
            Ok(m) => (crate::ws::text_frames(payloads(&m)), true),
            Err(e) => {
                tracing::error!(error = %e, ?stream, "range read failed");
                self.counters.read_errors += 1;
                (Bytes::new(), false)
            }
        };
        let msg = NodeMsg::Replay(Replay {
            stream,
            to,
            after,
            upto,
            ack,
            frames,
            ok,
        });
        self.router.send(to.shard(), msg);
    }

    /// The oldest stored messages in (after, upto], under `replay_limit` and `reply_bytes`,
    /// and the seq they cover up to: `upto` when they are all there is, else the last one.
    fn range(
        &self,
        stream: &Stream,
        after: u64,
        upto: u64,
    ) -> Result<(Vec<StoredMessage>, u64), StoreError> {
        let mut messages = self.store.after(stream, after, self.replay_limit)?;
        messages.retain(|m| m.seq <= upto);
        let mut bytes = 0;
        let keep = messages
            .iter()
            .take_while(|m| {
                bytes += m.payload.len() + 10;
                bytes <= self.reply_bytes
            })
            .count()
            .max(messages.len().min(1));
        let full = keep == self.replay_limit || keep < messages.len();
        messages.truncate(keep);
        let end = match messages.last() {
            Some(m) if full => m.seq,
            _ => upto,
        };
        Ok((messages, end))
    }

    /// The stored messages in (after, upto], at most the newest `replay_limit` of them and
    /// `reply_bytes` of payload, oldest first.
    fn replay(
        &self,
        stream: &Stream,
        after: u64,
        upto: u64,
    ) -> Result<(Vec<StoredMessage>, Recovery), StoreError> {
        if after >= upto {
            let recovery = Recovery {
                recovered: after == upto,
                ..Recovery::default()
            };
            return Ok((Vec::new(), recovery));
        }
        let from = after.max(upto - (self.replay_limit as u64).min(upto));
        let mut messages = self.store.after(stream, from, self.replay_limit)?;
        messages.retain(|m| m.seq <= upto);
        let mut bytes = 0;
        let keep = messages
            .iter()
            .rev()
            .take_while(|m| {
                bytes += m.payload.len() + 10;
                bytes <= self.reply_bytes
            })
            .count();
        let cut = messages.len() - keep;
        messages.drain(..cut);
        // Every message after `after` is retained if the oldest one is there.
        let oldest = match (from > after, messages.first()) {
            (false, Some(m)) if cut == 0 => Some(m.seq),
            _ => self.store.after(stream, after, 1)?.first().map(|m| m.seq),
        };
        let recovery = Recovery {
            recovered: oldest == Some(after + 1),
            replayed: messages.len(),
            truncated: from > after || cut > 0,
        };
        Ok((messages, recovery))
    }

    /// Cuts a read of `limit + 1` to a page of at most `limit` messages and `reply_bytes`, and
    /// says whether more follow.
    fn page(&self, mut messages: Vec<StoredMessage>, limit: usize) -> (Vec<StoredMessage>, bool) {
        let mut more = messages.len() > limit;
        messages.truncate(limit);
        let mut bytes = 0;
        let keep = messages
            .iter()
            .take_while(|m| {
                bytes += m.payload.len() + 1;
                bytes <= self.reply_bytes
            })
            .count();
        if keep < messages.len() {
            messages.truncate(keep.max(1));
            more = true;
        }
        (messages, more)
    }
}

fn payloads(messages: &[StoredMessage]) -> impl Iterator<Item = &[u8]> + Clone {
    messages.iter().map(|m| &m.payload[..])
}

/// The trimmer: every `retention_interval_ms`, trims each stream to its retention, until
/// `stop` is dropped.
fn trim_loop(store: &dyn Store, config: &Config, stop: Receiver<()>) {
    let every = Duration::from_millis(config.retention_interval_ms);
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(every) {
        let streams = match store.streams() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "retention: cannot list streams");
                continue;
            }
        };
        let now = crate::core::now_ms();
        let mut removed = 0;
        for info in streams {
            let (max, secs) = match &info.stream {
                Stream::Room(room) => config.room_retention_of(room),
                Stream::Inbox(_) => (config.inbox_retention_messages, config.inbox_retention_secs),
            };
            let keep_from = match max {
                0 => 0,
                max => (info.last_seq + 1).saturating_sub(max),
            };
            let min_ts = match secs {
                0 => 0,
                secs => now.saturating_sub(secs.saturating_mul(1000)),
            };
            match store.trim(&info.stream, keep_from, min_ts) {
                Ok(n) => removed += n,
                Err(e) => tracing::error!(error = %e, "retention: trim failed"),
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "retention trimmed messages");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn writer(store: Arc<dyn Store>, replay_limit: usize, reply_bytes: usize) -> Writer {
        let config = Config {
            replay_limit,
            max_queue_bytes: reply_bytes * 2,
            ..Config::default()
        };
        Writer::new(store, Router::new(1).0, &config, Arc::default())
    }

    fn filled(n: u64, payload: &'static [u8]) -> (Arc<dyn Store>, Stream) {
        let store = Arc::new(MemoryStore::default());
        let stream = Stream::Room(Name::new("r").unwrap());
        let batch: Vec<_> = (1..=n)
            .map(|seq| Append {
                stream: stream.clone(),
                seq,
                ts: seq,
                payload: Bytes::from_static(payload),
            })
            .collect();
        store.write(&batch, &[], false).unwrap();
        (store, stream)
    }

    fn seqs(m: &[StoredMessage]) -> Vec<u64> {
        m.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn replay_takes_the_newest_under_the_caps() {
        let (store, r) = filled(30, b"0123456789");
        let w = writer(store.clone(), 10, 1 << 20);
        let (m, rec) = w.replay(&r, 5, 8).unwrap();
        assert_eq!((seqs(&m), rec), (vec![6, 7, 8], rec_of(true, 3, false)));
        let (m, rec) = w.replay(&r, 5, 30).unwrap();
        assert_eq!(
            (seqs(&m), rec),
            ((21..=30).collect(), rec_of(true, 10, true))
        );
        assert_eq!(w.replay(&r, 30, 30).unwrap().1, rec_of(true, 0, false));
        assert_eq!(w.replay(&r, 31, 30).unwrap().1, rec_of(false, 0, false));
        // Bytes: each message costs 20 here, so 50 bytes hold 2.
        let w = writer(store.clone(), 10, 50);
        let (m, rec) = w.replay(&r, 5, 8).unwrap();
        assert_eq!((seqs(&m), rec), (vec![7, 8], rec_of(true, 2, true)));
        // Trimmed history is not recovered, but what is left is replayed.
        store.trim(&r, 7, 0).unwrap();
        let w = writer(store, 10, 1 << 20);
        let (m, rec) = w.replay(&r, 5, 8).unwrap();
        assert_eq!((seqs(&m), rec), (vec![7, 8], rec_of(false, 2, false)));
        let (_, rec) = w.replay(&r, 0, 30).unwrap();
        assert_eq!(rec, rec_of(false, 10, true));
    }

    fn rec_of(recovered: bool, replayed: usize, truncated: bool) -> Recovery {
        Recovery {
            recovered,
            replayed,
            truncated,
        }
    }

    /// A `MemoryStore` whose writes fail while `failing` is set.
    #[derive(Default)]
    struct Flaky {
        inner: MemoryStore,
        failing: std::sync::atomic::AtomicBool,
    }

    impl Store for Flaky {
        fn write(&self, a: &[Append], c: &[(Stream, u64)], d: bool) -> Result<(), StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(StoreError::Write("injected".into()));
            }
            self.inner.write(a, c, d)
        }
        fn streams(&self) -> Result<Vec<crate::store::StreamInfo>, StoreError> {
            self.inner.streams()
        }
        fn after(&self, s: &Stream, a: u64, l: usize) -> Result<Vec<StoredMessage>, StoreError> {
            self.inner.after(s, a, l)
        }
        fn before(&self, s: &Stream, b: u64, l: usize) -> Result<Vec<StoredMessage>, StoreError> {
            self.inner.before(s, b, l)
        }
        fn trim(&self, s: &Stream, k: u64, t: u64) -> Result<usize, StoreError> {
            self.inner.trim(s, k, t)
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.inner.sync()
        }
    }

    #[test]
    fn a_failed_write_makes_the_server_unready_until_one_succeeds() {
        let store = Arc::new(Flaky::default());
        let health = Arc::new(Health::default());
        let mut w = Writer::new(
            store.clone(),
            Router::new(1).0,
            &Config::default(),
            health.clone(),
        );
        let append = |seq| Op::Append {
            append: Append {
                stream: Stream::Room(Name::new("r").unwrap()),
                seq,
                ts: seq,
                payload: Bytes::from_static(b"{}"),
            },
            done: None,
        };
        let scrape = |w: &mut Writer| {
            let (tx, mut rx) = oneshot::channel();
            w.apply(vec![Op::Stats(tx)]);
            rx.try_recv()
                .expect("the writer answers a scrape in the same batch")
        };
        w.apply(vec![append(1)]);
        assert_eq!(health.unready(), None);

        store
            .failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        w.apply(vec![append(2)]);
        assert!(health.unready().is_some_and(|why| why.contains("store")));
        let counters = scrape(&mut w);
        assert_eq!(counters.write_failures, 1);
        assert_eq!(
            counters.commit_latency.count(),
            2,
            "failed writes are timed too"
        );

        store
            .failing
            .store(false, std::sync::atomic::Ordering::Relaxed);
        w.apply(vec![append(2)]);
        assert_eq!(health.unready(), None);
        assert_eq!(scrape(&mut w).commit_latency.count(), 3);
    }

    #[test]
    fn pages_say_whether_more_follow() {
        let (store, r) = filled(5, b"0123456789");
        let w = writer(store.clone(), 10, 25);
        let (m, more) = w.page(store.before(&r, u64::MAX, 4).unwrap(), 3);
        assert_eq!((seqs(&m), more), (vec![5, 4], true), "cut by bytes");
        let w = writer(store.clone(), 10, 1 << 20);
        let (m, more) = w.page(store.before(&r, 3, 4).unwrap(), 3);
        assert_eq!((seqs(&m), more), (vec![2, 1], false));
    }
}
