//! The accept loops: shard 0 accepts from the listener and deals connections round-robin to
//! every shard, waiting while its handshake slots are full; it also serves the metrics listener
//! (`metrics_bind`). When `accept` fails, usually because the process is out of file
//! descriptors (EMFILE) or the system is (ENFILE), it backs off (`Backoff`). Existing
//! connections are served by their own tasks meanwhile, so they never notice.
//!
//! It must not touch shard state: a connection goes to `http` on its shard.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::msg::LocalMsg;
use crate::router::Router;
use crate::shard::runtime::Ctx;

/// Shard 0 accepts and deals connections round-robin to all shards.
pub(super) async fn accept_loop(ctx: Rc<Ctx>, listener: std::net::TcpListener, router: Router) {
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
            super::thread::spawn_http(&ctx, stream);
        } else {
            match stream.into_std() {
                Ok(s) => router.send(target, LocalMsg::Accept(s)),
                Err(e) => tracing::warn!(error = %e, "cannot hand over a connection"),
            }
        }
    }
}

/// The metrics listener (`metrics_bind`), served on the accepting shard: scrapes are few.
pub(super) async fn metrics_accept_loop(ctx: Rc<Ctx>, listener: std::net::TcpListener) {
    let Some(mut acceptor) = Acceptor::new(&ctx, listener) else {
        return;
    };
    while let Some(stream) = acceptor.next().await {
        tokio::task::spawn_local(crate::routes::serve_metrics(ctx.clone(), stream));
    }
}

/// A listener, accepted from until shutdown, backing off when `accept` fails (EMFILE).
struct Acceptor {
    listener: TcpListener,
    stop: watch::Receiver<bool>,
    backoff: Backoff,
}

impl Acceptor {
    fn new(ctx: &Ctx, listener: std::net::TcpListener) -> Option<Acceptor> {
        match TcpListener::from_std(listener) {
            Ok(listener) => Some(Acceptor {
                listener,
                stop: ctx.stopping(),
                backoff: Backoff::default(),
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

/// The first pause after a failed accept; it doubles while accepts keep failing.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause, so accepting resumes soon after descriptors are freed.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// At most one warning per this long while accepts keep failing, not one per failure.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The accept loop's back-off state.
#[derive(Default)]
pub struct Backoff {
    pause: Duration,
    /// Failures since the last warning, and when that warning was logged.
    unlogged: u64,
    logged_at: Option<Instant>,
    /// Failures since the last successful accept.
    failures: u64,
}

impl Backoff {
    /// An accept failed: returns how long to wait before the next one.
    pub fn failed(&mut self, error: &io::Error) -> Duration {
        self.failures += 1;
        self.unlogged += 1;
        let now = Instant::now();
        if self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::warn!(
                %error,
                failures = self.unlogged,
                "accept failed; backing off (out of file descriptors? raise `ulimit -n`)"
            );
            self.logged_at = Some(now);
            self.unlogged = 0;
        }
        self.pause = (self.pause * 2).clamp(FIRST_PAUSE, MAX_PAUSE);
        self.pause
    }

    /// An accept succeeded: says so once if it had been failing, and resets the back-off.
    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            tracing::info!(failures = self.failures, "accepting connections again");
            *self = Backoff::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_reset_on_success() {
        let mut b = Backoff::default();
        let e = io::Error::from_raw_os_error(24); // EMFILE
        let pauses: Vec<u128> = (0..8).map(|_| b.failed(&e).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(b.unlogged, 7, "only the first failure was logged");
        b.succeeded();
        assert_eq!(b.failed(&e), FIRST_PAUSE);
    }
}
