//! Readiness: whether the server should be sent traffic (`GET /readyz`). Liveness is
//! `GET /healthz`, which answers whenever a shard can run an HTTP handler.
//!
//! Owns four flags shared by every thread: shutdown has begun (set by `Server::shutdown`), the
//! store writer's last write failed (set and cleared by the writer after each batch), Redis is
//! unreachable (cluster mode; set and cleared by the Redis engine), and a shard caught a panic
//! (set once, never cleared). They are written once per batch, per panic
//! or per process, never per message, so atomics cost nothing on the message path. It must not
//! hold any other state.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    shutting_down: AtomicBool,
    store_failed: AtomicBool,
    panicked: AtomicBool,
    redis_down: AtomicBool,
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

    /// `None` when ready; otherwise why not, for the 503's message.
    pub fn unready(&self) -> Option<&'static str> {
        if self.shutting_down.load(Ordering::Relaxed) {
            Some("server is shutting down; use another instance")
        } else if self.panicked.load(Ordering::Relaxed) {
            Some("a shard caught a panic and its state may be inconsistent; restart this instance")
        } else if self.redis_down.load(Ordering::Relaxed) {
            Some("Redis is unreachable; messages are refused until the node reconnects")
        } else if self.store_failed.load(Ordering::Relaxed) {
            Some("the message store's last write failed; messages are refused until one succeeds")
        } else {
            None
        }
    }
}
