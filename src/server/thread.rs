//! A shard's thread: its current-thread tokio runtime, its tasks started, and the inbox loop
//! that drains its queue until shutdown.
//!
//! Owns the thread's start-up and its queue. What a message means is the shard's
//! (`Shard::handle`); serving a connection is `http`'s, then `shard::runtime`'s.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::core::ShardId;
use crate::core::health::Health;
use crate::engine::Engine;
use crate::msg::{LocalMsg, ShardMsg};
use crate::persist::Persist;
use crate::router::{Inbox, Router};
use crate::shard::Shard;
use crate::shard::runtime::{self, Ctx};

/// Messages handled before the shard flushes and yields to its connections.
const INBOX_BATCH: usize = 256;

/// What a shard thread starts with.
pub struct ShardSetup {
    pub id: ShardId,
    pub inbox: Inbox,
    pub router: Router,
    pub config: Arc<Config>,
    pub persist: Persist,
    /// The listening socket, for the shard that accepts.
    pub listener: Option<std::net::TcpListener>,
    /// The metrics listener (`metrics_bind`), for the shard that accepts.
    pub metrics_listener: Option<std::net::TcpListener>,
    pub health: Arc<Health>,
    pub auth: Authenticator,
    /// This shard's handle on the engine.
    pub engine: Box<dyn Engine>,
    /// The hook client, if `hook_url` is set.
    pub hooks: Option<crate::hooks::HookSetup>,
}

/// Runs a shard on the current thread until it has shut down; with `engine` (a node with one
/// shard in cluster mode), the Redis engine runs on this thread too, on its own runtime.
pub fn run_thread(setup: ShardSetup, engine: Option<crate::cluster::OnShard>) {
    if let Some(engine) = engine {
        return engine.run_with(run(setup));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a current-thread runtime only fails if the OS refuses timers or epoll");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(setup));
}

async fn run(setup: ShardSetup) {
    let ShardSetup {
        id,
        inbox,
        router,
        config,
        persist,
        listener,
        metrics_listener,
        health,
        auth,
        engine,
        hooks,
    } = setup;
    let mut shard = Shard::new(id, router.clone(), config.clone(), engine, auth.clone());
    let hooks = hooks.map(|h| h.for_shard());
    let hook_answers = hooks.clone().map(|h| shard.set_hooks(h));
    let mut ctx = Ctx::new(
        id,
        shard,
        auth,
        config.clone(),
        router.clone(),
        persist,
        health,
    );
    ctx.hooks = hooks;
    let ctx = Rc::new(ctx);
    if let Some(rx) = hook_answers {
        tokio::task::spawn_local(crate::shard::hook_answers(ctx.clone(), rx));
    }
    if let Some(listener) = listener {
        tokio::task::spawn_local(super::accept::accept_loop(ctx.clone(), listener, router));
    }
    if let Some(listener) = metrics_listener {
        tokio::task::spawn_local(super::accept::metrics_accept_loop(ctx.clone(), listener));
    }
    tokio::task::spawn_local(runtime::heartbeat(ctx.clone()));
    tokio::task::spawn_local(runtime::engine_timer(ctx.clone()));
    tokio::task::spawn_local(runtime::reads_timer(ctx.clone()));
    tokio::task::spawn_local(runtime::flusher(ctx.clone()));
    inbox_loop(&ctx, inbox).await;

    // Every connection has been sent its 1001; give them time to take it.
    let deadline = Instant::now() + Duration::from_millis(config.shutdown_timeout_ms);
    while ctx.tasks() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::debug!(shard = id, left = ctx.tasks(), "shard stopped");
}

/// Drains the shard's queue in batches until `Shutdown`.
async fn inbox_loop(ctx: &Rc<Ctx>, inbox: Inbox) {
    loop {
        let mut handled = 0;
        let mut stop = false;
        while let Ok(msg) = inbox.rx.try_recv() {
            match msg {
                ShardMsg::Local(LocalMsg::Accept(stream)) => match accepted(stream) {
                    Ok(stream) => spawn_http(ctx, stream),
                    Err(e) => tracing::warn!(error = %e, "dropping a handed-over connection"),
                },
                ShardMsg::Local(LocalMsg::Shutdown) => {
                    ctx.begin_shutdown();
                    ctx.with(|s| s.handle(LocalMsg::Shutdown.into()));
                    stop = true;
                }
                msg => {
                    ctx.with(|s| s.handle(msg));
                }
            }
            handled += 1;
            if handled % INBOX_BATCH == 0 {
                ctx.with(|s| {
                    s.flush_engine();
                    s.flush_dirty();
                });
                tokio::task::yield_now().await;
            }
        }
        ctx.schedule_flush();
        if stop {
            return;
        }
        inbox.wake.notified().await;
    }
}

fn accepted(stream: std::net::TcpStream) -> std::io::Result<TcpStream> {
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

pub(super) fn spawn_http(ctx: &Rc<Ctx>, stream: TcpStream) {
    if let Some(task) = crate::routes::serve(ctx.clone(), stream) {
        tokio::task::spawn_local(task);
    }
}
