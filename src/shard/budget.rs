//! The per-user budget for stored bytes (`user_store_rate_bytes`, `user_store_burst_bytes`):
//! one token bucket of bytes per user on this shard, charged by `publish` and `send` before
//! the request goes to the engine.
//!
//! Owns the buckets only. Shards share nothing, so a user's connections on one shard share one
//! bucket and a user spread over S shards (or nodes) has S buckets. A bucket outlives the
//! user's connections until it has refilled, so reconnecting does not buy a fresh burst. It
//! must not look at connections or rooms (the client side does).

use std::time::Instant;

use ahash::AHashMap;

use super::Shard;
use crate::config::STORE_COST_OVERHEAD;
use crate::conn::Conn;
use crate::core::Name;
use crate::core::error::{ErrorCode, ReplyError};

#[derive(Default)]
pub(super) struct StoreBudgets {
    users: AHashMap<Name, Bucket>,
}

/// Bytes available, as of `at`. f64: exact for byte counts far beyond any burst.
struct Bucket {
    bytes: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, rate: u64, burst: u64, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.bytes + secs * rate as f64).min(burst as f64)
    }
}

impl StoreBudgets {
    /// Takes `cost` bytes from `user`'s bucket if it holds that many. A hash lookup and a
    /// few float operations; an insert (one `Name` clone) only for a user not seen lately.
    pub fn charge(&mut self, user: &Name, cost: u64, rate: u64, burst: u64, now: Instant) -> bool {
        let bucket = match self.users.get_mut(user) {
            Some(b) => b,
            None => self.users.entry(user.clone()).or_insert(Bucket {
                bytes: burst as f64,
                at: now,
            }),
        };
        let bytes = bucket.refilled(rate, burst, now);
        bucket.at = now;
        if bytes >= cost as f64 {
            bucket.bytes = bytes - cost as f64;
            true
        } else {
            bucket.bytes = bytes;
            false
        }
    }

    /// Forgets the buckets that have refilled: a new one would be the same. O(users charged
    /// lately); called at the heartbeat.
    pub fn sweep(&mut self, rate: u64, burst: u64, now: Instant) {
        self.users
            .retain(|_, b| b.refilled(rate, burst, now) < burst as f64);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.users.len()
    }
}

/// What a message costs: its body, the names in its envelope, and the rest of the envelope and
/// its key in the store.
fn cost(body: usize, target: &Name, from: &Name) -> u64 {
    (body + target.len() + from.len()) as u64 + STORE_COST_OVERHEAD
}

impl Shard {
    /// Charges a `publish` (to room `target`) or `send` (to user `target`) of `body` bytes to
    /// the connection's user, before it goes to the engine.
    pub(super) fn charge_store(
        &mut self,
        conn: &Conn,
        target: &Name,
        body: usize,
    ) -> Result<(), ReplyError> {
        let (rate, burst) = (
            self.config.user_store_rate_bytes,
            self.config.user_store_burst_bytes,
        );
        if rate == 0 {
            return Ok(());
        }
        let cost = cost(body, target, &conn.user);
        if self
            .budgets
            .charge(&conn.user, cost, rate, burst, Instant::now())
        {
            return Ok(());
        }
        Err(ReplyError::new(
            ErrorCode::RateLimited,
            format!(
                "over your budget of {rate} stored bytes per second ({burst} in a burst) for \
                 publish and send together; this message ({cost} bytes) was not stored"
            ),
        ))
    }

    /// Drops the buckets that have refilled (at the heartbeat).
    pub(super) fn sweep_budgets(&mut self) {
        let (rate, burst) = (
            self.config.user_store_rate_bytes,
            self.config.user_store_burst_bytes,
        );
        self.budgets.sweep(rate, burst, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate_and_is_forgotten_once_full() {
        let a = Name::new("a").unwrap();
        let b = Name::new("b").unwrap();
        let t0 = Instant::now();
        let mut budgets = StoreBudgets::default();
        // rate 1000 B/s, burst 3000 B.
        assert!(budgets.charge(&a, 2000, 1000, 3000, t0));
        assert!(budgets.charge(&a, 1000, 1000, 3000, t0));
        assert!(!budgets.charge(&a, 1, 1000, 3000, t0), "the burst is spent");
        assert!(
            budgets.charge(&b, 3000, 1000, 3000, t0),
            "b has its own bucket"
        );
        let t1 = t0 + Duration::from_millis(500);
        assert!(
            !budgets.charge(&a, 501, 1000, 3000, t1),
            "500 bytes came back"
        );
        assert!(budgets.charge(&a, 500, 1000, 3000, t1));
        // A refused charge takes nothing.
        assert!(budgets.charge(&a, 1000, 1000, 3000, t1 + Duration::from_secs(1)));

        budgets.sweep(1000, 3000, t1 + Duration::from_secs(2));
        assert_eq!(budgets.len(), 2, "neither has refilled yet");
        budgets.sweep(1000, 3000, t1 + Duration::from_secs(4));
        assert_eq!(budgets.len(), 0);
    }
}
