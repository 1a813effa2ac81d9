//! The Redis engine: several nodes share rooms, direct messages, presence, sessions and
//! history through one Redis (or Redis Cluster). It serves the same `EngineMsg`s as the
//! embedded engine and answers with the same `NodeMsg`s, so the shards (client side and hub)
//! do not know which engine runs.
//!
//! - Redis assigns each stream's seq in a Lua script that also appends the message to the
//!   stream's log (entry id = seq) and publishes it (`lua/`).
//! - Each node subscribes to the channels of the rooms and users it has local connections for;
//!   what arrives is encoded into a frame once and handed to the hubs, which merge by seq.
//! - The store thread reads history from Redis (`store`), with the embedded store's code.
//!
//! Layout: `keys` (names), `wire` (pub/sub format), `link` (connections), `engine` (the
//! requests and the subscription), `store` (reads). The engine runs on its own thread, or on
//! the shard's thread when the node has one shard (`OnShard`); the shards reach it through
//! `Handle`. It must not touch connections or hub state.

mod engine;
mod feed;
mod keys;
mod link;
mod parts;
mod pubsub;
mod resp;
mod store;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::core::NodeId;
use crate::core::counters::RedisCounters;
use crate::core::health::Health;
use crate::engine::{Engine, NodesCall, Outbox, StoreReads};
use crate::msg::EngineMsg;
use crate::persist::Persist;
use crate::router::Router;

pub use keys::Keys;
pub use link::Target;
pub use store::RedisStore;

/// Why the cluster engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach Redis at {url}: {source}; check --redis-url and that Redis runs")]
    Connect {
        url: String,
        source: redis::RedisError,
    },
    #[error("cannot read redis_ca_file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
}

/// What the shards and the API ask of the engine thread.
pub enum Req {
    Engine(EngineMsg),
    /// The API's call to every other node.
    Nodes(NodesCall),
    /// A shard's publishes and direct messages of one pass, in order (one wake-up of the
    /// engine thread for them all).
    Batch(Vec<EngineMsg>),
}

/// How the shards reach the engine thread. Cheap to clone.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Req>,
    pub counters: Arc<RedisCounters>,
}

impl Handle {
    pub fn send(&self, req: Req) {
        // The engine thread outlives the shards.
        let _ = self.tx.send(req);
    }

    /// One shard's `Engine`: requests go to the engine thread, except the reads a shard hands
    /// to the store thread itself (`history`, `sync`), which `persist` serves from Redis.
    pub fn for_shard(&self, persist: Persist) -> RedisEngine {
        RedisEngine {
            handle: self.clone(),
            reads: StoreReads::new(persist),
            kept: Vec::new(),
        }
    }
}

/// The Redis engine as one shard sees it.
pub struct RedisEngine {
    handle: Handle,
    reads: StoreReads,
    /// Publishes and direct messages of this pass, sent together at `flush`.
    kept: Vec<EngineMsg>,
}

impl RedisEngine {
    fn send_kept(&mut self) {
        match self.kept.len() {
            0 => {}
            1 => self.handle.send(Req::Engine(self.kept.pop().expect("one"))),
            _ => self.handle.send(Req::Batch(std::mem::take(&mut self.kept))),
        }
    }
}

impl Engine for RedisEngine {
    /// Publishes and direct messages wait for the pass's `flush` (every pass that takes input
    /// ends with one); anything else goes at once, after them, so the order stays.
    fn request(&mut self, msg: EngineMsg, _out: &mut Outbox) {
        let Some(msg) = self.reads.take(msg) else {
            return;
        };
        if matches!(msg, EngineMsg::Publish { .. } | EngineMsg::Direct { .. }) {
            return self.kept.push(msg);
        }
        self.send_kept();
        self.handle.send(Req::Engine(msg));
    }

    fn flush(&mut self) {
        self.send_kept();
        self.reads.flush();
    }

    /// The engine thread admits nothing once the node is shutting down: its Redis scripts
    /// refuse no one, and the shard refuses the handshakes itself.
    fn shutdown(&mut self) {}

    fn call_nodes(&self, call: NodesCall) -> Result<(), NodesCall> {
        self.handle.send(Req::Nodes(call));
        Ok(())
    }

    fn redis_counters(&self) -> Option<Arc<RedisCounters>> {
        Some(self.handle.counters.clone())
    }
}

/// A started engine: connected, with its node id; `run` starts its thread.
pub struct Started {
    pub node: NodeId,
    pub target: Target,
    boot: engine::Boot,
    rt: tokio::runtime::Runtime,
    rx: mpsc::UnboundedReceiver<Req>,
    pub handle: Handle,
}

/// Connects to Redis and takes a node id (the configured one, or the next from Redis).
pub fn connect(config: &Config) -> Result<Started, ClusterError> {
    let url = config.redis_url.clone().unwrap_or_default();
    let err = |source| ClusterError::Connect {
        url: masked(&url),
        source,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClusterError::Thread)?;
    if url.starts_with("rediss://") {
        // rustls needs one process-wide crypto provider; a second install is a no-op error.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let timeout = Duration::from_millis(config.redis_timeout_ms);
    let keys = Keys::new(&config.redis_prefix);
    let root_cert = match &config.redis_ca_file {
        Some(path) => Some(std::fs::read(path).map_err(|source| ClusterError::CaFile {
            path: path.display().to_string(),
            source,
        })?),
        None => None,
    };
    let boot = engine::Boot::connect(
        &url,
        timeout,
        &keys,
        config.node_id,
        root_cert,
        config.presence_ttl_secs,
    );
    let (target, boot) = rt.block_on(boot).map_err(err)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Handle {
        tx,
        counters: Arc::default(),
    };
    Ok(Started {
        node: boot.node,
        target,
        boot,
        rt,
        rx,
        handle,
    })
}

impl Started {
    /// Runs the engine on its own thread until every `Handle` is dropped.
    pub fn run(
        self,
        config: Arc<Config>,
        router: Router,
        persist: Persist,
        health: Arc<Health>,
    ) -> Result<std::thread::JoinHandle<()>, ClusterError> {
        let on = self.on_shard(config, router, persist, health);
        std::thread::Builder::new()
            .name("redis-engine".into())
            .spawn(move || on.run_with(std::future::ready(())))
            .map_err(ClusterError::Thread)
    }

    /// The engine to run on a shard's own thread (`OnShard::run_with`) rather than its own.
    pub fn on_shard(
        self,
        config: Arc<Config>,
        router: Router,
        persist: Persist,
        health: Arc<Health>,
    ) -> OnShard {
        let Started {
            target,
            boot,
            rt,
            rx,
            handle,
            ..
        } = self;
        let counters = handle.counters.clone();
        let node =
            move || engine::Node::new(boot, target, config, router, persist, health, counters);
        OnShard {
            rt,
            rx,
            node: Box::new(node),
        }
    }
}

/// The engine, ready to run on the thread that calls `run_with`. On a node with one shard it
/// runs on that shard's thread: a publish, its script's answer and a received message then
/// never wake another thread (two wake-ups and context switches per message otherwise, most
/// of a node's kernel time in the chat run; docs/performance-log.md).
pub struct OnShard {
    /// The runtime the Redis connections of `connect` were made on (their tasks live on it).
    rt: tokio::runtime::Runtime,
    rx: mpsc::UnboundedReceiver<Req>,
    /// Makes the engine's state on the thread that runs it (it is not `Send`).
    node: Box<dyn FnOnce() -> engine::Node + Send>,
}

impl OnShard {
    /// Runs `shard` (a shard's whole life, or nothing) and the engine on this thread, on the
    /// engine's runtime; returns once the shard has finished and the engine has taken every
    /// request sent before the last `Handle` was dropped, as its own thread does.
    pub fn run_with(self, shard: impl std::future::Future<Output = ()>) {
        let OnShard { rt, rx, node } = self;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let engine = tokio::task::spawn_local(node().run(rx));
            // The shard's tasks in a set of their own: dropping it once the shard has stopped
            // drops their handles on the engine, so the engine's loop ends as on its thread.
            let shard_set = tokio::task::LocalSet::new();
            shard_set.run_until(shard).await;
            drop(shard_set);
            let _ = engine.await;
        });
    }
}

/// The URL without its password, for messages.
fn masked(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_masked() {
        assert_eq!(super::masked("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(super::masked("redis://h:1"), "redis://h:1");
    }
}
