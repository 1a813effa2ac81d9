//! What the acceptor does when `accept` fails, usually because the process is out of file
//! descriptors (EMFILE) or the system is (ENFILE).
//!
//! Owns the back-off and its logging only. It must not touch sockets or shard state: the accept
//! loop in `shard::runtime` asks it how long to wait. Existing connections are served by their
//! own tasks meanwhile, so they never notice.

use std::io;
use std::time::{Duration, Instant};

/// The first pause after a failed accept; it doubles while accepts keep failing.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause, so accepting resumes soon after descriptors are freed.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// At most one warning per this long while accepts keep failing, not one per failure.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The accept loop's back-off state.
#[derive(Default)]
pub struct Backoff {
    pause: Duration,
    /// Failures since the last warning, and when that warning was logged.
    unlogged: u64,
    logged_at: Option<Instant>,
    /// Failures since the last successful accept.
    failures: u64,
}

impl Backoff {
    /// An accept failed: returns how long to wait before the next one.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        self.failures += 1;
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(
                %error,
                failures = self.unlogged,
                "accept failed; backing off (out of file descriptors? raise `ulimit -n`)"
            );
            self.logged_at = Some(now);
            self.unlogged = 0;
        }
        self.pause = (self.pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
        self.pause
    }

    /// An accept succeeded: says so once if it had been failing, and resets the back-off.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
            *self = Backoff::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset_on_success() {
        let mut b = Backoff::default();
        let e = io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<u128> = (0..8).map(|_| b.failed(&e).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(b.unlogged, 7, "only the first failure was logged");
        b.succeeded();
        assert_eq!(b.failed(&e), FIRST_PAUSE);
    }
}
