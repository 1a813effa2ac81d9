//! Readiness: whether the server should be sent traffic (`GET /readyz`). Liveness is
//! `GET /healthz`, which answers whenever a shard can run an HTTP handler.
//!
//! Owns the flags shared by every thread: shutdown has begun (set by `Server::shutdown`), the
//! store writer's last write failed (set and cleared by the writer after each batch), Redis is
//! unreachable (cluster mode; set and cleared by the Redis engine), a shard caught a panic
//! (set once, never cleared), and the data directory's free space with whether it is below
//! `min_free_disk_bytes` (set by the writer at each reading, at most every 100 ms). They are
//! written once per batch, per reading, per panic or per process, never per message, so
//! atomics cost nothing on the message path: a home reads the disk flag once per message (a
//! load from a cache line that changes at most ten times a second). It must not hold any other
//! state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug)]
pub struct Health {
    shutting_down: AtomicBool,
    store_failed: AtomicBool,
    panicked: AtomicBool,
    redis_down: AtomicBool,
    disk_low: AtomicBool,
    /// Free bytes on the data directory's filesystem at the writer's last reading; `u64::MAX`
    /// while there is none (no floor, or no store on disk).
    disk_free: AtomicU64,
}

impl Default for Health {
    fn default() -> Health {
        Health {
            shutting_down: AtomicBool::new(false),
            store_failed: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            redis_down: AtomicBool::new(false),
            disk_low: AtomicBool::new(false),
            disk_free: AtomicU64::new(u64::MAX),
        }
    }
}

/// The writer's latest reading of the data directory's filesystem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disk {
    pub free: u64,
    /// Below `min_free_disk_bytes` (and not yet back above it with its margin).
    pub low: bool,
}

impl Health {
    pub fn start_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The outcome of the writer's latest batch: a success makes the server ready again.
    pub fn store_written(&self, ok: bool) {
        self.store_failed.store(!ok, Ordering::Relaxed);
    }

    /// A shard caught a panic: its state may be half-updated, so the server asks to be
    /// replaced (restarted) rather than serve on unnoticed.
    pub fn panicked(&self) {
        self.panicked.store(true, Ordering::Relaxed);
    }

    /// Whether the Redis engine's command connection is up (cluster mode).
    pub fn redis_reachable(&self, up: bool) {
        self.redis_down.store(!up, Ordering::Relaxed);
    }

    /// The writer read `free` bytes on the data directory's filesystem; `low`: below the floor.
    pub fn disk_read(&self, free: u64, low: bool) {
        self.disk_free.store(free, Ordering::Relaxed);
        self.disk_low.store(low, Ordering::Relaxed);
    }

    /// The free bytes of the last reading, when it is below the floor: new messages are
    /// refused. One relaxed load when it is not.
    pub fn disk_low(&self) -> Option<u64> {
        self.disk_low
            .load(Ordering::Relaxed)
            .then(|| self.disk_free.load(Ordering::Relaxed))
    }

    /// The last reading, if the writer reads the disk at all.
    pub fn disk(&self) -> Option<Disk> {
        let free = self.disk_free.load(Ordering::Relaxed);
        (free != u64::MAX).then(|| Disk {
            free,
            low: self.disk_low.load(Ordering::Relaxed),
        })
    }

    /// `None` when ready; otherwise why not, for the 503's message.
    pub fn unready(&self) -> Option<&'static str> {
        if self.shutting_down.load(Ordering::Relaxed) {
            Some("server is shutting down; use another instance")
        } else if self.panicked.load(Ordering::Relaxed) {
            Some("a shard caught a panic and its state may be inconsistent; restart this instance")
        } else if self.redis_down.load(Ordering::Relaxed) {
            Some("Redis is unreachable; messages are refused until the node reconnects")
        } else if self.disk_low.load(Ordering::Relaxed) {
            Some(
                "the data directory's disk is below min_free_disk_bytes; publish and send are \
                 refused (reads go on) until space is freed, with no restart",
            )
        } else if self.store_failed.load(Ordering::Relaxed) {
            Some("the message store's last write failed; messages are refused until one succeeds")
        } else {
            None
        }
    }
}
