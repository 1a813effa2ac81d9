//! The storm's machinery, which the `pubsub` engine runs when a plan comes with a
//! [`StormPlan`]: the signals that drop the storm's clients and then reconnect them, each
//! client's rejoin with `since` = the last seq it saw, the catch-up on its replay, and the
//! counters and histograms of it all.
//!
//! Each connection keeps one `ConnOutcome` across its two sockets, so the exact check at the end
//! proves that the messages after a client's last seen seq arrived once and in order, via replay
//! and then live. This module owns the storm's signals and counters. It must not build the storm's
//! plan (that is `storm`'s) or its figures (`report::build`'s).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::anyhow;
use tokio::sync::{Notify, watch};

use super::run::{RunCtx, Samples};
use crate::client::{self, Endpoint, RequestBuf, Ws};
use crate::stats::{Hist, LatencySummary, Shared};

/// Connect attempts per reconnect; every failed one is counted.
const CONNECT_ATTEMPTS: u32 = 3;
/// How long a reconnect may take to get its `welcome` and join ack.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What the engine needs to run a storm.
pub struct StormPlan {
    /// By connection: whether it drops and reconnects.
    pub drops: Vec<bool>,
    pub down_ns: u64,
    /// Publishing goes on this long after the reconnect signal.
    pub after_ns: u64,
}

/// The storm's signals and counters, shared by every connection task.
pub struct StormCtl {
    /// 0: calm; 1: drop now; 2: reconnect now.
    phase: watch::Sender<u8>,
    /// When the reconnect signal went out (ns since the epoch).
    reconnect_ns: AtomicU64,
    /// Clients that drop.
    pub clients: u64,
    /// Clients back and caught up, and when the last one was.
    back: AtomicU64,
    last_back_ns: AtomicU64,
    all_back: Notify,
    pub failed_handshakes: AtomicU64,
    pub not_recovered: AtomicU64,
    pub truncated: AtomicU64,
    pub replayed: AtomicU64,
    /// Socket connect started → `welcome` received.
    pub connect_to_welcome: Hist,
    /// Reconnect signal → `welcome` received (adds the bot's own queueing).
    pub signal_to_welcome: Hist,
    /// Reconnect signal → the last replayed message received.
    pub signal_to_caught_up: Hist,
}

/// A reconnected client still owed its replay: caught up once it has seen `seq`.
pub struct CatchUp {
    pub seq: u64,
}

impl StormCtl {
    pub fn new(clients: u64) -> StormCtl {
        StormCtl {
            phase: watch::Sender::new(0),
            reconnect_ns: AtomicU64::new(0),
            clients,
            back: AtomicU64::new(0),
            last_back_ns: AtomicU64::new(0),
            all_back: Notify::new(),
            failed_handshakes: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            connect_to_welcome: Hist::default(),
            signal_to_welcome: Hist::default(),
            signal_to_caught_up: Hist::default(),
        }
    }

    /// Clients back and caught up.
    pub fn back(&self) -> u64 {
        self.back.load(Relaxed)
    }

    /// Reconnect signal → the last client caught up, in seconds.
    pub fn back_seconds(&self) -> Option<f64> {
        (self.back() == self.clients).then(|| {
            let ns = self
                .last_back_ns
                .load(Relaxed)
                .saturating_sub(self.reconnect_ns.load(Relaxed));
            ns as f64 / 1e9
        })
    }

    /// Resolves when the clients must drop.
    pub async fn drop_signal(&self) {
        let _ = self.phase.subscribe().wait_for(|p| *p >= 1).await;
    }

    /// A client that has seen everything up to its rejoin ack's seq.
    pub fn caught_up(&self, index: u32, now_ns: u64) {
        let since = now_ns.saturating_sub(self.reconnect_ns.load(Relaxed));
        self.signal_to_caught_up.record(index as usize, since);
        self.last_back_ns.fetch_max(now_ns, Relaxed);
        if self.back.fetch_add(1, Relaxed) + 1 == self.clients {
            self.all_back.notify_one();
        }
    }

    /// Waits for the reconnect signal, then connects, reads `welcome` and joins `room` with
    /// `since`. Returns the socket and, when a replay is owed, the seq that ends it.
    #[allow(clippy::too_many_arguments)]
    pub async fn rejoin(
        &self,
        shared: &Shared,
        endpoint: &Endpoint,
        src: std::net::Ipv4Addr,
        user: &str,
        room: &str,
        since: u64,
        index: u32,
    ) -> anyhow::Result<(Ws, Option<CatchUp>)> {
        let _ = self.phase.subscribe().wait_for(|p| *p >= 2).await;
        let mut attempt = 0;
        let (mut ws, started) = loop {
            attempt += 1;
            let started = shared.now_ns();
            match Ws::connect(endpoint, src, user).await {
                Ok(ws) => break (ws, started),
                Err(e) => {
                    self.failed_handshakes.fetch_add(1, Relaxed);
                    shared.problem(format!(
                        "client {index}: reconnect attempt {attempt}: {e:#}"
                    ));
                    if attempt >= CONNECT_ATTEMPTS {
                        return Err(e);
                    }
                    tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
                }
            }
        };
        let ack = tokio::time::timeout(REJOIN_TIMEOUT, async {
            client::expect_frame(&mut ws, |f| (f.kind == "welcome").then_some(())).await?;
            let now = shared.now_ns();
            let i = index as usize;
            self.connect_to_welcome
                .record(i, now.saturating_sub(started));
            let signal = self.reconnect_ns.load(Relaxed);
            self.signal_to_welcome.record(i, now.saturating_sub(signal));
            let mut rb = RequestBuf::default();
            client::send(&ws.write, rb.join_since(room, Some(since), 0)).await?;
            client::expect_frame(&mut ws, |f| {
                (f.kind == "ack" && f.id == Some(0)).then(|| {
                    (
                        f.seq.unwrap_or(0),
                        f.recovered,
                        f.replayed.unwrap_or(0),
                        f.truncated,
                    )
                })
            })
            .await
        })
        .await
        .map_err(|_| anyhow!("no welcome or join ack within {REJOIN_TIMEOUT:?}"))??;
        let (seq, recovered, replayed, truncated) = ack;
        self.replayed.fetch_add(replayed, Relaxed);
        if recovered != Some(true) {
            self.not_recovered.fetch_add(1, Relaxed);
            shared.problem(format!(
                "client {index}: join since {since} not recovered ({recovered:?})"
            ));
        }
        if truncated == Some(true) {
            self.truncated.fetch_add(1, Relaxed);
            shared.problem(format!("client {index}: join since {since} truncated"));
        }
        if seq <= since {
            self.caught_up(index, shared.now_ns());
            return Ok((ws, None));
        }
        Ok((ws, Some(CatchUp { seq })))
    }
}

/// The engine's schedule for a storm, in ns since the epoch.
pub struct StormTimes {
    pub drop_at: u64,
    pub reconnect_at: u64,
    /// When the publishers stop.
    pub pub_end: u64,
}

impl StormTimes {
    pub fn new(calm_end: u64, s: &StormPlan) -> StormTimes {
        let reconnect_at = calm_end + s.down_ns;
        StormTimes {
            drop_at: calm_end,
            reconnect_at,
            pub_end: reconnect_at + s.after_ns,
        }
    }
}

/// What the storm's driver saw.
pub struct StormSamples {
    /// The steady connections' latency before the drop (every connection's, in fact: all were
    /// connected then).
    pub calm_latency: Option<LatencySummary>,
    pub dropped: Samples,
    pub reconnect: Samples,
    /// When the last client was back and caught up; `None` if some never were.
    pub back: Option<Samples>,
}

/// Drops every storm client at `drop_at`, signals the reconnect at `reconnect_at`, and waits
/// until every one is back and caught up (or `give_up_ns`). The latency histogram then covers
/// only the steady connections, from the drop on.
pub async fn drive(
    ctx: &RunCtx,
    ctl: &StormCtl,
    times: &StormTimes,
    give_up_ns: u64,
) -> StormSamples {
    let shared = &ctx.shared;
    tokio::time::sleep_until(ctx.at(times.drop_at)).await;
    let calm_latency = shared.latency.summary();
    shared.latency.reset();
    shared.window_start_ns.store(times.drop_at, Relaxed);
    shared.window_end_ns.store(times.pub_end, Relaxed);
    let dropped = ctx.sample();
    ctl.phase.send_replace(1);
    ctx.progress.phase("storm: down", ctl.clients);

    tokio::time::sleep_until(ctx.at(times.reconnect_at)).await;
    let reconnect = ctx.sample();
    ctl.reconnect_ns.store(shared.now_ns(), Relaxed);
    ctl.phase.send_replace(2);
    ctx.progress.phase("storm: reconnecting", ctl.clients);
    loop {
        let back = ctl.back.load(Relaxed);
        ctx.progress.set(
            back,
            format!(
                "{back}/{} back, {} failed handshakes",
                ctl.clients,
                ctl.failed_handshakes.load(Relaxed)
            ),
        );
        if back >= ctl.clients {
            break;
        }
        if shared.now_ns() >= give_up_ns {
            return StormSamples {
                calm_latency,
                dropped,
                reconnect,
                back: None,
            };
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), ctl.all_back.notified()).await;
    }
    StormSamples {
        calm_latency,
        dropped,
        reconnect,
        back: Some(ctx.sample()),
    }
}
