//! Readiness: whether the server should be sent traffic (`GET /readyz`). Liveness is
//! `GET /healthz`, which answers whenever a shard can run an HTTP handler.
//!
//! Owns two flags shared by every thread: shutdown has begun (set by `Server::shutdown`), and
//! the store writer's last write failed (set and cleared by the writer after each batch). They
//! are written once per batch or once per process, never per message, so atomics cost nothing
//! on the message path. It must not hold any other state.

use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct Health {
    shutting_down: AtomicBool,
    store_failed: AtomicBool,
}

impl Health {
    pub fn start_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// The outcome of the writer's latest batch: a success makes the server ready again.
    pub fn store_written(&self, ok: bool) {
        self.store_failed.store(!ok, Ordering::Relaxed);
    }

    /// `None` when ready; otherwise why not, for the 503's message.
    pub fn unready(&self) -> Option<&'static str> {
        if self.shutting_down.load(Ordering::Relaxed) {
            Some("server is shutting down; use another instance")
        } else if self.store_failed.load(Ordering::Relaxed) {
            Some("the message store's last write failed; messages are refused until one succeeds")
        } else {
            None
        }
    }
}
