//! The store threads, shared by both engines: the writer, which owns every call to the `Store`
//! on the message path (group commit, the durability modes, replays and history reads) and
//! reads the data directory's free space against `min_free_disk_bytes`, and the trimmer, which
//! applies retention in the background.
//!
//! Shards never block on disk: they send `Op`s here and get answers back through the router as
//! messages (`NodeMsg::Replay`, `NodeMsg::Reply`, `LocalMsg::Stored`). This module must not hold
//! room, user or connection state (the shards do) and must not know which database the `Store`
//! is (the embedded store on disk or in memory, or Redis in cluster mode).
//!
//! - `op`: what is asked of the writer (`Op`, `Read`) and the join answer both engines give
//!   (`Joined`).
//! - `writer`: the writer thread: batches, group commit, answers to the homes.
//! - `read`: replays, gaps and history pages, capped to what one reply may carry.
//! - `events`: checks of edits, deletes and reactions; folded history pages.
//! - `disk`: the free-disk floor. `trim`: the trimmer thread.
//! - `feed`: the event feed's records and pages; `deliver`: its webhook thread.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::config::Config;
use crate::core::health::Health;
use crate::router::Router;
use crate::store::Store;

mod deliver;
mod disk;
mod events;
mod feed;
mod op;
mod read;
#[cfg(test)]
mod tests;
mod trim;
mod writer;

pub use deliver::{SIGNATURE_HEADER, signature};
pub use feed::{FeedEvent, FeedPage, FeedShared};
pub use op::{Op, Read};

/// How shards reach the writer. Cheap to clone.
#[derive(Clone)]
pub struct Persist {
    tx: Sender<Vec<Op>>,
    /// Where the writer says whether the disk is below its floor.
    health: Arc<Health>,
    /// The event feed's horizon and counters; `None` when the feed is off.
    feed: Option<Arc<FeedShared>>,
}

impl Persist {
    /// A `Persist` that drops every operation: for driving a shard without a store in unit
    /// tests and benches (with `memory` or `async` durability, so nothing waits for an answer).
    pub fn discarding() -> Persist {
        Persist {
            tx: crossbeam_channel::unbounded().0,
            health: Arc::default(),
            feed: None,
        }
    }

    /// The free bytes of the writer's last reading of the disk, when it is below
    /// `min_free_disk_bytes`: new messages must be refused. One relaxed atomic load.
    pub fn disk_low(&self) -> Option<u64> {
        self.health.disk_low()
    }

    /// The event feed, when it is on (`event_feed` or `webhook_url`): its counters, and
    /// whether a home should queue `Op::Feed`s at all.
    pub fn feed(&self) -> Option<&Arc<FeedShared>> {
        self.feed.as_ref()
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
    /// The webhook thread, with `webhook_url`.
    deliverer: Option<(Sender<()>, JoinHandle<()>)>,
}

impl Threads {
    pub fn start(
        store: Arc<dyn Store>,
        router: Router,
        config: Arc<Config>,
        health: Arc<Health>,
    ) -> std::io::Result<Threads> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let feed = match config.feed_on() {
            // A shared feed (Redis) has no writer's horizon: it is read when a page is.
            true if store.feed_shared() => Some(FeedShared::new(0)),
            true => {
                let state = store.feed_state().map_err(std::io::Error::other)?;
                Some(FeedShared::new(state.last.max(state.mark)))
            }
            false => None,
        };
        let persist = Persist {
            tx,
            health: health.clone(),
            feed: feed.clone(),
        };
        let target = deliver::Target::from_config(&config).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("webhook_url: {e}"),
            )
        })?;
        let deliverer = match (&feed, target) {
            (Some(feed), Some(target)) => {
                let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
                let (store, feed) = (store.clone(), feed.clone());
                let thread = std::thread::Builder::new()
                    .name("feed-webhook".into())
                    .spawn(move || deliver::deliver_loop(store, feed, target, stop_rx))?;
                Some((stop_tx, thread))
            }
            _ => None,
        };
        let writer = {
            let (store, config) = (store.clone(), config.clone());
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || writer::Writer::new(store, router, &config, health, feed).run(rx))?
        };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let trimmer = std::thread::Builder::new()
            .name("store-trimmer".into())
            .spawn(move || trim::trim_loop(&*store, &config, stop_rx));
        let mut threads = Threads {
            persist,
            writer: Some(writer),
            trimmer: None,
            deliverer,
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
        if let Some((stop, deliverer)) = self.deliverer.take() {
            drop(stop);
            let _ = deliverer.join();
        }
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
