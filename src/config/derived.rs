//! Values derived from the fields, which the rest of the server reads instead of the raw fields.

use std::time::Duration;

use super::Config;

impl Config {
    /// No client JWT key of any kind is configured: `?user=ID` is trusted (loopback only).
    pub fn dev_mode(&self) -> bool {
        self.jwt_secret.is_none() && self.jwt_public_key.is_none() && self.jwks_url.is_none()
    }

    /// The event feed is recorded (`event_feed`, or a `webhook_url` to push it to).
    pub fn feed_on(&self) -> bool {
        self.event_feed || self.webhook_url.is_some()
    }

    /// The number of shards to run: `shards`, or one per available core.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }

    /// Heartbeats a connection may miss before it counts as idle.
    pub fn idle_heartbeats(&self) -> u32 {
        let idle = match self.idle_timeout_ms {
            0 => 2 * self.heartbeat_ms,
            ms => ms,
        };
        idle.div_ceil(self.heartbeat_ms).max(1) as u32
    }

    /// A connection's request, read and signal rates (`publish_rate`/`publish_burst`,
    /// `read_rate`/`read_burst`, `signal_rate`/`signal_burst`).
    pub fn rates(&self) -> crate::core::bucket::Rates {
        crate::core::bucket::Rates {
            requests: self.publish_rate,
            request_burst: self.publish_burst,
            reads: self.read_rate,
            read_burst: self.read_burst,
            signals: self.signal_rate,
            signal_burst: self.signal_burst,
        }
    }

    /// A frame over this many bytes closes the connection (1009) instead of being skipped.
    pub fn hard_frame_limit(&self) -> u64 {
        self.max_message_size as u64 * 16
    }
}
