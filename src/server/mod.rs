//! The server as a whole: it validates the config, chooses and builds the engine, opens the
//! store, binds, starts the store threads and one thread per shard, and shuts them down.
//!
//! - `thread`: a shard thread's start-up and its inbox loop.
//! - `accept`: the accept loops and their back-off on accept errors.
//!
//! Owns the process-level lifecycle. It must not handle connections or messages: shards do.

mod accept;
mod thread;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::auth::{Authenticator, KeyError};
use crate::config::{Config, ConfigError, Durability, Engine};
use crate::core::Stream;
use crate::core::health::Health;
use crate::embedded::Embedded;
use crate::msg::LocalMsg;
use crate::persist;
use crate::router::Router;
use crate::store::{FjallStore, KeyEntry, MemoryStore, Store, StoreError, StoreMemory, StreamInfo};
use thread::ShardSetup;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot start a server thread: {0}")]
    Thread(std::io::Error),
}

/// A running server. Dropping it shuts it down and waits for its threads.
pub struct Server {
    addr: SocketAddr,
    /// The metrics listener's address (`metrics_bind`).
    metrics_addr: Option<SocketAddr>,
    router: Router,
    threads: Vec<JoinHandle<()>>,
    /// Stopped after the shards, so every message they handed over is written.
    store_threads: persist::Threads,
    /// Readiness: marked shutting down as soon as `shutdown` is called.
    health: Arc<Health>,
}

impl Server {
    /// Validates `config`, opens the store, binds, and starts the shards. Returns once the
    /// listener is bound.
    pub fn start(config: Config) -> Result<Server, StartError> {
        config.validate()?;
        if !config.room_retention.is_empty() {
            tracing::warn!(
                "[[room_retention]] tables are deprecated: write them as [[rooms]] rules with \
                 history_messages and history_secs (docs/protocol.md, \"Rooms: rules and rights\")"
            );
        }
        let auth = Authenticator::new(&config)?;
        // Cluster mode: Redis sequences and keeps history; the store thread reads it there.
        let cluster = match config.engine {
            Engine::Redis => Some(crate::cluster::connect(&config)?),
            Engine::Embedded => None,
        };
        let store: Arc<dyn Store> = match (&cluster, config.durability) {
            (Some(c), _) => Arc::new(crate::cluster::RedisStore::new(
                c.target.clone(),
                crate::cluster::Keys::new(&config.redis_prefix),
                Arc::new(config.clone()),
            )),
            (None, Durability::Memory) => Arc::new(MemoryStore::default()),
            (None, Durability::Sync | Durability::Async) => {
                let memory = StoreMemory {
                    cache_bytes: config.store_cache_bytes,
                    memtable_bytes: config.store_memtable_bytes,
                    feed: config.feed_on(),
                };
                Arc::new(FjallStore::open_with(&config.data, memory)?)
            }
        };
        let streams = store.streams()?;
        let bind_err = |source| StartError::Bind {
            addr: config.bind,
            source,
        };
        let listener = listen(config.bind, config.listen_backlog).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        let metrics_listener = match config.metrics_bind {
            Some(at) => {
                let bind_err = |source| StartError::Bind { addr: at, source };
                let l = listen(at, config.listen_backlog).map_err(bind_err)?;
                Some((l.local_addr().map_err(bind_err)?, l))
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|(a, _)| *a);
        let mut metrics_listener = metrics_listener.map(|(_, l)| l);
        let shards = config.shard_count();
        let config = Arc::new(config);
        let node = cluster.as_ref().map_or(0, |c| c.node);
        let (router, inboxes) = Router::on_node(node, shards);
        let mut seeds = vec![Vec::new(); shards];
        for info in streams {
            let (Stream::Room(name) | Stream::Inbox(name)) = &info.stream;
            // The embedded engine's idempotency keys (the Redis engine keeps its own).
            let keys = match cluster {
                None => store.keys(&info.stream, config.idempotency_max_keys)?,
                Some(_) => Vec::new(),
            };
            seeds[router.home(name)].push((info, keys));
        }
        // Read positions, at each user's home (the Redis engine keeps them in Redis).
        let mut positions = vec![Vec::new(); shards];
        if cluster.is_none() {
            for p in store.reads()? {
                positions[router.home(&p.0)].push(p);
            }
        }
        let mut positions = positions.into_iter();
        let health = Arc::new(Health::default());
        let store_threads =
            persist::Threads::start(store, router.clone(), config.clone(), health.clone())
                .map_err(StartError::Thread)?;
        let handle = cluster.as_ref().map(|c| c.handle.clone());
        let mut engine_for = |id: usize,
                              seeds: Vec<(StreamInfo, Vec<KeyEntry>)>|
         -> Box<dyn crate::engine::Engine> {
            let persist = store_threads.persist();
            match &handle {
                Some(h) => Box::new(h.for_shard(persist)),
                None => Box::new(Embedded::new(
                    id,
                    router.clone(),
                    config.clone(),
                    persist,
                    seeds,
                    positions.next().unwrap_or_default(),
                )),
            }
        };
        // One shard: the engine runs on its thread, so no message wakes a second thread.
        let (engine_thread, mut engine_here) = match cluster {
            Some(c) if shards == 1 => {
                let persist = store_threads.persist();
                let on = c.on_shard(config.clone(), router.clone(), persist, health.clone());
                (None, Some(on))
            }
            Some(c) => {
                let persist = store_threads.persist();
                let t = c.run(config.clone(), router.clone(), persist, health.clone())?;
                (Some(t), None)
            }
            None => (None, None),
        };
        let hooks = crate::hooks::HookSetup::new(&config, shards).map_err(StartError::Thread)?;
        let mut listener = Some(listener);
        let mut threads = Vec::with_capacity(shards);
        for ((id, inbox), seeds) in inboxes.into_iter().enumerate().zip(seeds) {
            let setup = ShardSetup {
                id,
                inbox,
                router: router.clone(),
                config: config.clone(),
                persist: store_threads.persist(),
                engine: engine_for(id, seeds),
                listener: if id == 0 { listener.take() } else { None },
                metrics_listener: if id == 0 {
                    metrics_listener.take()
                } else {
                    None
                },
                health: health.clone(),
                auth: auth.clone(),
                hooks: hooks.clone(),
            };
            let engine = engine_here.take();
            let thread = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || thread::run_thread(setup, engine));
            match thread {
                Ok(t) => threads.push(t),
                Err(e) => {
                    router.broadcast(|| LocalMsg::Shutdown);
                    return Err(StartError::Thread(e));
                }
            }
        }
        drop(handle);
        if let Some(t) = engine_thread {
            threads.push(t);
        }
        tracing::info!(%addr, shards, node, "listening on {addr}");
        if let Some(at) = metrics_addr {
            tracing::info!(%at, "serving /metrics, /healthz and /readyz on {at}");
        }
        Ok(Server {
            addr,
            metrics_addr,
            router,
            threads,
            store_threads,
            health,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served when `metrics_bind` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Stops accepting and closes every connection with 1001. Returns at once; `join` waits.
    pub fn shutdown(&self) {
        self.health.start_shutdown();
        self.router.broadcast(|| LocalMsg::Shutdown);
    }

    /// Test-only: makes shard `shard` panic halfway through a home's bookkeeping.
    #[cfg(feature = "fault-injection")]
    pub fn inject_panic(&self, shard: usize) {
        self.router.send(shard, LocalMsg::Panic);
    }

    /// Test-only: the store's next inbox or range read fails.
    #[cfg(feature = "fault-injection")]
    pub fn inject_read_failure(&self) {
        self.store_threads
            .persist()
            .send(vec![persist::Op::FailNextRead]);
    }

    /// Test-only: the store writer's readings of the free disk space give `free` (`None`: what
    /// the filesystem says) from its next one on (within a second).
    #[cfg(feature = "fault-injection")]
    pub fn inject_disk_free(&self, free: Option<u64>) {
        self.store_threads
            .persist()
            .send(vec![persist::Op::SetDiskFree(free)]);
    }

    /// Waits until every shard thread has exited.
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a shard thread panicked");
            }
        }
        self.store_threads.stop();
    }
}

/// A non-blocking listener on `addr` with a `backlog`-deep accept queue (std's bind uses 128).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // As std does on Unix: a restarted server can bind while old connections linger.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            self.join_threads();
        }
    }
}
