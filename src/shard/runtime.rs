//! What a shard thread's tasks share (`Ctx`) and the tasks that run on it once it has started:
//! each connection's task (`ConnTask`), the flusher and the heartbeat.
//!
//! Owns scheduling: when the shard's state is touched and when batches are flushed. It must not
//! decide what a message means (that is `Shard::handle` / `Shard::on_event`), and knows nothing
//! of HTTP: the thread's start-up, its inbox loop and the accept loops are `server`'s.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;

use super::Shard;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::conn::{Conn, Event, ReadStatus};
use crate::core::ShardId;
use crate::core::error::CloseCode;
use crate::core::health::Health;
use crate::core::pace::Pacer;
use crate::persist::Persist;
use crate::router::Router;

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
    /// The hook client, for the connect hook and a scrape's counters (`hook_url` set).
    pub hooks: Option<crate::hooks::Hooks>,
    /// Connection tasks still running; shutdown waits for them.
    tasks: Cell<usize>,
    shutdown: watch::Sender<bool>,
    /// A flush is due; the flusher task runs after the tasks already woken in this pass.
    flush_due: Cell<bool>,
    flusher: Cell<Option<Waker>>,
}

impl Ctx {
    pub fn new(
        id: ShardId,
        shard: Shard,
        auth: Authenticator,
        config: Arc<Config>,
        router: Router,
        persist: Persist,
        health: Arc<Health>,
    ) -> Ctx {
        Ctx {
            id,
            shard: RefCell::new(shard),
            auth,
            config,
            router,
            persist,
            health,
            hooks: None,
            tasks: Cell::new(0),
            shutdown: watch::channel(false).0,
            flush_due: Cell::new(false),
            flusher: Cell::new(None),
        }
    }

    /// Connection tasks still running.
    pub fn tasks(&self) -> usize {
        self.tasks.get()
    }

    /// Tells this shard's tasks (accept loops, heartbeat) that shutdown has begun.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Turns true when shutdown begins.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

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

/// Writes the dirty connections whenever a flush is due (see `Ctx::schedule_flush`).
///
/// On loopback a write costs ~5 us of kernel time whatever its size, so a big room's fan-out is
/// bounded by writes, not bytes. Two things make each write carry more frames under load, while
/// input keeps being handled:
/// - passes start at least `write_delay_us` apart (off by default): a flush due sooner after
///   the last pass waits for the rest of it, and what is queued meanwhile leaves with it. A
///   flush after a quiet spell (no pass within `write_delay_us`) is not delayed, so latency at
///   low load does not move.
/// - after an expensive pass the flusher also pauses for half its length (at most
///   `max_batch_delay_ms`). A pass under 1 ms, the usual case, adds no pause.
pub async fn flusher(ctx: Rc<Ctx>) {
    let max_pause = Duration::from_millis(ctx.config.max_batch_delay_ms);
    let mut pacer = Pacer::new(Duration::from_micros(ctx.config.write_delay_us));
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
        // tokio's clock, not std's, so a test on paused time sees the wait.
        if let Some(wait) = pacer.wait(tokio::time::Instant::now().into_std()) {
            tokio::time::sleep(wait).await;
        }
        ctx.flush_due.set(false);
        let started = tokio::time::Instant::now();
        pacer.started(started.into_std());
        ctx.with(Shard::flush_dirty);
        let pause = (started.elapsed() / 2).min(max_pause);
        if pause >= Duration::from_millis(1) {
            tokio::time::sleep(pause).await;
        }
    }
}

/// Pings and expires connections every `heartbeat_ms`, until shutdown.
pub async fn heartbeat(ctx: Rc<Ctx>) {
    let period = ctx.config.heartbeat();
    periodic(ctx, period, Shard::tick).await
}

/// Gives the engine its tick every `occupancy_interval_ms` (coalesced `occupancy` events), until
/// shutdown.
pub async fn engine_timer(ctx: Rc<Ctx>) {
    let period = Duration::from_millis(ctx.config.occupancy_interval_ms);
    periodic(ctx, period, Shard::engine_tick).await
}

/// Gives the engine its read-positions tick every `read_interval_ms`, until shutdown.
pub async fn reads_timer(ctx: Rc<Ctx>) {
    let period = Duration::from_millis(ctx.config.read_interval_ms);
    periodic(ctx, period, Shard::reads_tick).await
}

/// Runs `f` on the shard every `period` (the first time after one period), flushing after
/// each, until shutdown.
async fn periodic(ctx: Rc<Ctx>, period: Duration, f: fn(&mut Shard)) {
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    let mut stop = ctx.stopping();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = every.tick() => {}
        }
        ctx.with(f);
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
