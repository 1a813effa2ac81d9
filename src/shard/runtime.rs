//! A shard's thread: its tokio runtime, the inbox loop, the heartbeat, the acceptor (shard 0) and
//! each connection's task.
//!
//! Owns scheduling: when the shard's state is touched and when batches are flushed. It must not
//! decide what a message means (that is `Shard::handle` / `Shard::on_event`).

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Shard;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::conn::{Conn, Event, ReadStatus};
use crate::core::ShardId;
use crate::core::error::CloseCode;
use crate::core::health::Health;
use crate::engine::Engine;
use crate::msg::{LocalMsg, ShardMsg};
use crate::persist::Persist;
use crate::router::{Inbox, Router};

/// Messages handled before the shard flushes and yields to its connections.
const INBOX_BATCH: usize = 256;

/// What the tasks of one shard share. Lives on the shard's thread only.
pub struct Ctx {
    pub id: ShardId,
    pub shard: RefCell<Shard>,
    pub auth: Authenticator,
    pub config: Arc<Config>,
    /// For a scrape: it asks every shard and the writer (`metrics::gather`).
    pub router: Router,
    pub persist: Persist,
    pub health: Arc<Health>,
    /// Connection tasks still running; shutdown waits for them.
    tasks: Cell<usize>,
    shutdown: watch::Sender<bool>,
    /// A flush is due; the flusher task runs after the tasks already woken in this pass.
    flush_due: Cell<bool>,
    flusher: Cell<Option<Waker>>,
}

impl Ctx {
    /// Asks for the dirty connections to be written once every task already runnable has run,
    /// so frames produced by several connections' input in one pass share each socket's writev.
    /// Store operations leave at once: they are not paced like socket writes.
    pub fn schedule_flush(&self) {
        self.with(Shard::flush_engine);
        if !self.flush_due.replace(true)
            && let Some(w) = self.flusher.take()
        {
            w.wake();
        }
    }

    /// Runs `f` on the shard state. A panic is contained: one bad message or connection cannot
    /// take the shard down. It is not hidden either: it is logged, counted
    /// (`shardcast_panics_total`), and `/readyz` turns 503 for good, since the state it
    /// interrupted may be half-updated.
    pub fn with<R>(&self, f: impl FnOnce(&mut Shard) -> R) -> Option<R> {
        match catch_unwind(AssertUnwindSafe(|| f(&mut self.shard.borrow_mut()))) {
            Ok(r) => Some(r),
            Err(_) => {
                tracing::error!(shard = self.id, "panic while handling a message; contained");
                self.health.panicked();
                if let Ok(mut shard) = self.shard.try_borrow_mut() {
                    shard.count_panic();
                }
                None
            }
        }
    }
}

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
}

/// Runs a shard on the current thread until it has shut down.
pub fn run_thread(setup: ShardSetup) {
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
    } = setup;
    let shard = Shard::new(id, router.clone(), config.clone(), engine, auth.clone());
    let ctx = Rc::new(Ctx {
        id,
        shard: RefCell::new(shard),
        auth,
        config: config.clone(),
        router: router.clone(),
        persist,
        health,
        tasks: Cell::new(0),
        shutdown: watch::channel(false).0,
        flush_due: Cell::new(false),
        flusher: Cell::new(None),
    });
    if let Some(listener) = listener {
        tokio::task::spawn_local(accept_loop(ctx.clone(), listener, router));
    }
    if let Some(listener) = metrics_listener {
        tokio::task::spawn_local(metrics_accept_loop(ctx.clone(), listener));
    }
    tokio::task::spawn_local(heartbeat(ctx.clone()));
    tokio::task::spawn_local(flusher(ctx.clone()));
    inbox_loop(&ctx, inbox).await;

    // Every connection has been sent its 1001; give them time to take it.
    let deadline = Instant::now() + Duration::from_millis(config.shutdown_timeout_ms);
    while ctx.tasks.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::debug!(shard = id, left = ctx.tasks.get(), "shard stopped");
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
                    ctx.shutdown.send_replace(true);
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

fn spawn_http(ctx: &Rc<Ctx>, stream: TcpStream) {
    if let Some(task) = crate::http::serve(ctx.clone(), stream) {
        tokio::task::spawn_local(task);
    }
}

/// Shard 0 accepts and deals connections round-robin to all shards.
async fn accept_loop(ctx: Rc<Ctx>, listener: std::net::TcpListener, router: Router) {
    let Some(mut acceptor) = Acceptor::new(&ctx, listener) else {
        return;
    };
    let mut next = 0usize;
    loop {
        // At the limit, connections wait in the backlog (a storm queues instead of failing).
        while crate::http::handshakes_full(&ctx.config) {
            tokio::select! {
                _ = acceptor.stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(Duration::from_millis(1)) => {}
            }
        }
        let Some(stream) = acceptor.next().await else {
            return;
        };
        // Latency matters more than packet count: frames are already coalesced.
        let _ = stream.set_nodelay(true);
        let target = next % router.shards();
        next = next.wrapping_add(1);
        if target == ctx.id {
            spawn_http(&ctx, stream);
        } else {
            match stream.into_std() {
                Ok(s) => router.send(target, LocalMsg::Accept(s)),
                Err(e) => tracing::warn!(error = %e, "cannot hand over a connection"),
            }
        }
    }
}

/// The metrics listener (`metrics_bind`), served on the accepting shard: scrapes are few.
async fn metrics_accept_loop(ctx: Rc<Ctx>, listener: std::net::TcpListener) {
    let Some(mut acceptor) = Acceptor::new(&ctx, listener) else {
        return;
    };
    while let Some(stream) = acceptor.next().await {
        tokio::task::spawn_local(crate::http::serve_metrics(ctx.clone(), stream));
    }
}

/// A listener, accepted from until shutdown, backing off when `accept` fails (EMFILE).
struct Acceptor {
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    backoff: crate::accept::Backoff,
}

impl Acceptor {
    fn new(ctx: &Ctx, listener: std::net::TcpListener) -> Option<Acceptor> {
        match TcpListener::from_std(listener) {
            Ok(listener) => Some(Acceptor {
                listener,
                stop: ctx.shutdown.subscribe(),
                backoff: crate::accept::Backoff::default(),
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot register the listener");
                None
            }
        }
    }

    /// The next connection; `None` at shutdown.
    async fn next(&mut self) -> Option<TcpStream> {
        loop {
            let accepted = tokio::select! {
                _ = self.stop.wait_for(|s| *s) => return None,
                a = self.listener.accept() => a,
            };
            match accepted {
                Ok((stream, _)) => {
                    self.backoff.succeeded();
                    return Some(stream);
                }
                Err(e) => {
                    let pause = self.backoff.failed(&e);
                    tokio::select! {
                        _ = self.stop.wait_for(|s| *s) => return None,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

/// Writes the dirty connections whenever a flush is due (see `Ctx::schedule_flush`).
///
/// On loopback a write costs ~5 us of kernel time whatever its size, so a big room's fan-out is
/// bounded by writes, not bytes. After an expensive pass the flusher pauses for half its length
/// (at most `max_batch_delay_ms`) while input keeps being handled, so the next pass carries
/// more frames per write. A pass under 1 ms, the usual case, adds no pause.
async fn flusher(ctx: Rc<Ctx>) {
    let max_pause = Duration::from_millis(ctx.config.max_batch_delay_ms);
    loop {
        std::future::poll_fn(|cx| {
            if ctx.flush_due.get() {
                Poll::Ready(())
            } else {
                ctx.flusher.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        ctx.flush_due.set(false);
        let started = std::time::Instant::now();
        ctx.with(Shard::flush_dirty);
        let pause = (started.elapsed() / 2).min(max_pause);
        if pause >= Duration::from_millis(1) {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn heartbeat(ctx: Rc<Ctx>) {
    let mut every = tokio::time::interval(ctx.config.heartbeat());
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    let mut stop = ctx.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = every.tick() => {}
        }
        ctx.with(Shard::tick);
        ctx.schedule_flush();
    }
}

/// Starts a connection's task: it reads and hands messages to the shard, waits for the socket
/// when the shard's writes were refused, and performs the closing handshake. However it ends,
/// the connection is detached and the shard's task count drops.
/// `span` is entered whenever the task runs, if it is enabled.
pub fn spawn_conn(ctx: Rc<Ctx>, conn: Rc<Conn>, span: tracing::Span) {
    ctx.tasks.set(ctx.tasks.get() + 1);
    let extra = (!span.is_disabled()).then(|| {
        Box::new(Extra {
            span,
            closing: None,
        })
    });
    tokio::task::spawn_local(ConnTask { ctx, conn, extra });
}

/// A connection's task, written by hand rather than as an `async fn`: an async state machine
/// with its `select!` and close timer took ~1.1 KB per connection. The task is 24 bytes, which
/// keeps tokio's whole task allocation at 128 bytes (it is 128-aligned; 32 bytes more would
/// make it 256): what is not needed while the connection is open is in `extra`.
struct ConnTask {
    ctx: Rc<Ctx>,
    conn: Rc<Conn>,
    extra: Option<Box<Extra>>,
}

/// Made when the task has a span (debug logging), or when the closing handshake starts.
struct Extra {
    span: tracing::Span,
    closing: Option<std::pin::Pin<Box<dyn Future<Output = ()>>>>,
}

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.ctx.tasks.set(self.ctx.tasks.get() - 1);
        self.ctx.with(|s| s.conn_ended(&self.conn));
    }
}

impl Future for ConnTask {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let span = this.extra.as_ref().map(|e| e.span.clone());
        let _entered = span.as_ref().map(tracing::Span::enter);
        if this.extra.as_ref().is_none_or(|e| e.closing.is_none()) {
            if this.poll_open(cx).is_pending() {
                return Poll::Pending;
            }
            let conn = &this.conn;
            if conn.closing().is_none() || conn.is_broken() {
                return Poll::Ready(());
            }
            let (ctx, conn) = (this.ctx.clone(), conn.clone());
            let timeout = Duration::from_millis(ctx.config.close_timeout_ms);
            let closing = Box::pin(async move {
                if let Some(stream) = conn.tcp() {
                    let _ = tokio::time::timeout(timeout, finish_close(&conn, stream)).await;
                }
            });
            let extra = this.extra.get_or_insert_with(|| {
                Box::new(Extra {
                    span: tracing::Span::none(),
                    closing: None,
                })
            });
            extra.closing = Some(closing);
        }
        match this.extra.as_mut().and_then(|e| e.closing.as_mut()) {
            Some(closing) => closing.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl ConnTask {
    /// The open connection: `Ready` once it is closing, broken or gone.
    fn poll_open(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let (ctx, conn) = (&self.ctx, &self.conn);
        let Some(stream) = conn.tcp() else {
            return Poll::Ready(());
        };
        loop {
            if conn.closing().is_some() || conn.is_broken() {
                return Poll::Ready(());
            }
            // A kick is taken (and the waker left for the next one) before the sockets are
            // looked at; the state it signals is what the loop checks.
            while conn.poll_kicked(cx).is_ready() {}
            if conn.wants_write() {
                match stream.poll_write_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        conn.flush();
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            match stream.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            let status = ctx.with(|s| {
                let status = conn.read_ready(&mut |ev| s.on_event(conn, ev));
                if let Err(code) = status {
                    s.close_conn(conn, code);
                }
                status
            });
            ctx.schedule_flush();
            match status {
                None => {
                    ctx.with(|s| s.close_conn(conn, CloseCode::Internal));
                }
                Some(Ok(ReadStatus::Eof)) => return Poll::Ready(()),
                Some(_) => {}
            }
        }
    }
}

/// Flushes the close frame, then waits for the client's close (or EOF) so the frame is not lost
/// to a reset.
pub(crate) async fn finish_close(conn: &Conn, stream: &TcpStream) {
    while conn.has_unsent() && !conn.is_broken() {
        if stream.writable().await.is_err() {
            return;
        }
        conn.flush();
    }
    if conn.read_failed() {
        // Failing the connection (RFC 6455 7.1.7): the client's close cannot be found in input
        // that is no longer decoded, so send FIN now and drain until its EOF, which keeps
        // unread input from turning the close into a reset that could lose the close frame.
        let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
    }
    let mut peer_closed = conn.peer_closed();
    while !peer_closed {
        if stream.readable().await.is_err() {
            return;
        }
        match conn.read_ready(&mut |ev| peer_closed |= matches!(ev, Event::Close)) {
            Ok(ReadStatus::Open) => {}
            Ok(ReadStatus::Eof) | Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    /// tokio's task allocation is 128-aligned: a future over 24 bytes makes it 256 for every
    /// connection (docs/performance-log.md, memory per idle connection).
    #[test]
    fn a_connection_task_stays_within_24_bytes() {
        assert!(std::mem::size_of::<super::ConnTask>() <= 24);
    }
}
