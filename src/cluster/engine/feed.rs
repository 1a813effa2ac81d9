//! The event feed's part in the engine's scripts (docs/hooks.md): with the feed on, every
//! script that makes an event happen is passed the feed's keys after its own and writes the
//! event in the same call (`lua/common.lua`). Owns only which keys are passed; reading and
//! delivering the feed is `cluster::store` and `persist::deliver`.

use redis::ScriptInvocation;

use super::*;

impl Node {
    /// Adds the feed's stream and meta hash to `inv`'s keys when the feed is on (one server:
    /// a Redis Cluster refuses the feed at start, `cluster::connect`).
    pub(super) fn feed_keys(&self, inv: &mut ScriptInvocation<'_>) {
        if self.config.feed_on() {
            let (log, meta, _) = self.keys.feed();
            inv.key(log).key(meta);
        }
    }

    /// The same, for an upkeep script's owned keys (`run_later`).
    pub(super) fn with_feed_keys(&self, mut keys: Vec<String>) -> Vec<String> {
        if self.config.feed_on() {
            let (log, meta, _) = self.keys.feed();
            keys.extend([log, meta]);
        }
        keys
    }
}
