//! The trimmer thread: applies retention (by count and by age, per room rule) in the
//! background, never on the message path.

use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::config::Config;
use crate::core::Stream;
use crate::store::Store;

/// The trimmer: every `retention_interval_ms`, trims each stream to its retention, until
/// `stop` is dropped.
pub(super) fn trim_loop(store: &dyn Store, config: &Config, stop: Receiver<()>) {
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
                Stream::Room(room) => {
                    let rule = config.rule(room);
                    (rule.history_messages, rule.history_secs)
                }
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
            // A key outlives its message by `idempotency_window_secs` at least.
            let window = config.idempotency_window_secs.saturating_mul(1000);
            if let Err(e) = store.trim_keys(&info.stream, now.saturating_sub(window)) {
                tracing::error!(error = %e, "retention: trimming keys failed");
            }
        }
        if removed > 0 {
            tracing::debug!(removed, "retention trimmed messages");
        }
        if config.feed_on() {
            // The webhook thread applies it after each batch too.
            let age_ms = config.webhook_retention_secs.saturating_mul(1000);
            super::deliver::apply_retention(store, config.webhook_retention_events, age_ms);
        }
    }
}
