//! The event feed's part in the engine's scripts (docs/hooks.md): with the feed on, every
//! script that makes an event happen is passed the feed's keys after its own and writes the
//! event in the same call (`lua/common.lua`). Owns only which keys are passed; reading and
//! delivering the feed is `cluster::store`, `cluster::parts` and `persist::deliver`.

use redis::ScriptInvocation;

use super::*;

impl Node {
    /// Adds the feed's stream and meta hash to `inv`'s keys when the feed is on. On one server
    /// they are the feed's own; on a Redis Cluster those of the partition in the slot of
    /// `tagged` (any of the script's keys), which the collector moves on (`cluster::parts`).
    pub(super) fn feed_keys(&self, inv: &mut ScriptInvocation<'_>, tagged: &str) {
        if self.config.feed_on() {
            let (log, meta) = self.feed_pair(tagged);
            inv.key(log).key(meta);
        }
    }

    /// The same, for an upkeep script's owned keys (`run_later`).
    pub(super) fn with_feed_keys(&self, mut keys: Vec<String>) -> Vec<String> {
        if self.config.feed_on() {
            let (log, meta) = self.feed_pair(keys.first().map_or("", String::as_str));
            keys.extend([log, meta]);
        }
        keys
    }

    fn feed_pair(&self, tagged: &str) -> (String, String) {
        match self.target.cluster {
            true => self.keys.feed_part(slot(tagged.as_bytes())),
            false => {
                let (log, meta, _) = self.keys.feed();
                (log, meta)
            }
        }
    }
}
