//! The embedded engine: each room and user has a home shard, chosen by hashing its name
//! (`Router::home`), which sequences its messages, hands them to the store threads and counts its
//! presence and sessions. A request is served where it is made when this shard is the home, and
//! routed to the home otherwise.
//!
//! - `home`: the bookkeeping (`HomeRooms`: seqs, members per user and per shard; `HomeUsers`:
//!   connections, the session policy, each inbox's seqs and delivered cursor).
//! - `keys`: idempotency keys (`HomeKeys`: per stream, each remembered key's seq).
//! - `serve`: the handlers; `write`: a new message sequenced, stored, acked and spread to the
//!   shards; `events`: edits, deletes and reactions (checked by the store writer, then
//!   sequenced like messages); `reads`: read positions and receipts.
//!
//! It must not touch connections or the hub's state (it answers with `NodeMsg`s), and it does
//! not know the Redis engine.

mod events;
mod home;
mod keys;
mod reads;
mod serve;
mod write;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::core::counters::{Histogram, ShardSnapshot};
use crate::core::{Name, ShardId, Stream};
use crate::engine::{Engine, Outbox, StoreReads};
use crate::msg::{EngineMsg, ReplyTo, Written};
use crate::persist::Persist;
use crate::router::Router;
use crate::store::{KeyEntry, ReadPosition, StreamInfo};

pub use home::{HomeRooms, HomeUsers};
pub use keys::HomeKeys;

/// The embedded engine as one shard runs it: the homes of the streams that hash to this shard.
pub struct Embedded {
    id: ShardId,
    router: Router,
    config: Arc<Config>,
    rooms: HomeRooms,
    users: HomeUsers,
    keys: HomeKeys,
    /// Read positions of the users homed here.
    reads: reads::HomeReads,
    /// Repeats of a key whose first message is not stored yet (sync durability): answered
    /// once it is, with its seq (or its failure). Nearly always empty.
    repeats: Vec<(Stream, u64, ReplyTo)>,
    /// Store operations of this scheduler pass, sent together by `flush`.
    store: StoreReads,
    /// When each message waiting for the store (sync durability) was sequenced, in the order
    /// handed to the writer. The writer answers a home's writes in that order (`stored`).
    store_waits: VecDeque<Instant>,
    counters: Counters,
    shutting_down: bool,
    /// Rooms with an edit, delete or reaction being checked by the store writer, each with
    /// the events waiting behind it (`events`). Empty unless such events are in flight.
    checking: HashMap<Name, VecDeque<events::Waiting>>,
}

/// What the homes of one shard count (merged into the shard's scrape).
#[derive(Default)]
struct Counters {
    room_publishes: u64,
    direct_publishes: u64,
    /// From sequencing a message to handing it to fan-out (see ARCHITECTURE.md).
    publish_latency: Histogram,
}

impl Embedded {
    /// Shard `id`'s homes, starting from what the store holds of its streams (`seeds`: each
    /// with its newest keys).
    pub fn new(
        id: ShardId,
        router: Router,
        config: Arc<Config>,
        persist: Persist,
        seeds: Vec<(StreamInfo, Vec<KeyEntry>)>,
        positions: Vec<ReadPosition>,
    ) -> Embedded {
        let mut reads = reads::HomeReads::default();
        positions.into_iter().for_each(|p| reads.seed(p));
        let mut rooms = HomeRooms::new(router.shards());
        let mut users = HomeUsers::default();
        let mut keys = HomeKeys::new(config.idempotency_max_keys);
        for (info, entries) in seeds {
            if !entries.is_empty() {
                keys.seed(&info.stream, entries);
            }
            match info.stream {
                Stream::Room(room) => rooms.seed(room, info.last_seq),
                Stream::Inbox(user) => users.seed(&user, info.last_seq, info.cursor),
            }
        }
        Embedded {
            id,
            router,
            config,
            rooms,
            users,
            keys,
            reads,
            repeats: Vec::new(),
            store: StoreReads::new(persist),
            store_waits: VecDeque::new(),
            counters: Counters::default(),
            shutting_down: false,
            checking: HashMap::new(),
        }
    }

    /// Serves `msg` here if this shard is its home, else sends it there.
    fn route(&mut self, msg: EngineMsg, out: &mut Outbox) {
        let home = self.router.home(msg.key());
        if home == self.id {
            self.serve_here(msg, out);
        } else {
            self.router.send(home, msg);
        }
    }
}

impl Engine for Embedded {
    fn request(&mut self, msg: EngineMsg, out: &mut Outbox) {
        if let Some(msg) = self.store.take(msg) {
            self.route(msg, out);
        }
    }

    fn serve(&mut self, msg: EngineMsg, out: &mut Outbox) {
        self.serve_here(msg, out);
    }

    fn stored(&mut self, writes: Vec<Written>, ok: bool, out: &mut Outbox) {
        self.stored_here(writes, ok, out);
    }

    fn flush(&mut self) {
        self.store.flush();
    }

    fn rooms(&self) -> Vec<(Name, u64)> {
        self.rooms.all()
    }

    fn tick(&mut self, out: &mut Outbox) {
        self.occupancy(out);
    }

    fn reads_tick(&mut self, out: &mut Outbox) {
        self.reads_tick(out);
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        self.reads_flush();
    }

    fn snapshot(&self, into: &mut ShardSnapshot) {
        into.rooms_homed = self.rooms.in_use() as u64;
        into.users_homed = self.users.tracked() as u64;
        into.counters.room_publishes = self.counters.room_publishes;
        into.counters.direct_publishes = self.counters.direct_publishes;
        into.counters.publish_latency = self.counters.publish_latency.clone();
    }

    #[cfg(any(test, feature = "fault-injection"))]
    fn panic_midway(&mut self) {
        self.panic_here();
    }
}
