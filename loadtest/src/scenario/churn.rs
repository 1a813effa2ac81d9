//! The churn scenario: C cycles per second, each one a fresh connection that gets its
//! `welcome`, joins a room, optionally waits, and closes with the closing handshake.
//!
//! Open loop like the others: cycle i is due at `t0 + i / C`, and its connect latency is
//! measured from that due time. Owns the cycle and its counters; the report is built in
//! `report::build`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{anyhow, bail};
use fastwebsockets::OpCode;
use tokio::sync::{Notify, Semaphore};

use super::pacer::{self, Beat, PACER_FALLBACK_NS, Pacer};
use super::run::{RunCtx, STEP_TIMEOUT, Samples, Schedule, wait_for};
use crate::cli::ChurnArgs;
use crate::client::{self, RequestBuf, Ws};
use crate::stats::{Hist, LatencySummary, Shared};

pub struct ChurnResult {
    pub attempted: u64,
    pub completed: u64,
    pub failed: u64,
    pub baseline: Samples,
    pub window_start: Samples,
    pub window_end: Samples,
    /// A second after the last cycle ended.
    pub after: Samples,
    pub completed_in_window: u64,
    pub connect_latency: Option<LatencySummary>,
    pub join_latency: Option<LatencySummary>,
    pub close_latency: Option<LatencySummary>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

struct Counters {
    completed: AtomicU64,
    failed: AtomicU64,
    connect: Hist,
    join: Hist,
    close: Hist,
}

pub async fn run(ctx: &RunCtx, a: &ChurnArgs) -> anyhow::Result<ChurnResult> {
    if a.rate <= 0.0 {
        bail!("--rate must be positive");
    }
    let shared = ctx.shared.clone();
    let counters = Arc::new(Counters {
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        connect: Hist::default(),
        join: Hist::default(),
        close: Hist::default(),
    });
    let rooms: Vec<Arc<str>> = (0..a.rooms.max(1))
        .map(|r| ctx.room(&format!("churn{r}")))
        .collect();
    let gate = Arc::new(Semaphore::new(a.max_concurrent.max(1)));
    let baseline = ctx.sample();

    let Schedule {
        start: t0,
        window_start,
        window_end,
    } = ctx.schedule();
    let period = 1e9 / a.rate;
    let total = ((window_end - t0) as f64 / period).ceil() as u64;
    ctx.progress.phase("churning", total);

    // The pacer wakes this loop at each cycle's due time (tokio's timer alone is 1–2 ms late).
    let beat = Arc::new(Notify::new());
    let pacer = Pacer::start(
        shared.epoch,
        vec![Beat {
            base_ns: t0,
            period_ns: period,
            notify: beat.clone(),
        }],
        window_end,
    )?;
    let mut handles = Vec::new();
    let mut samples: [Option<(Samples, u64)>; 2] = [None, None];
    let mut i = 0u64;
    loop {
        let due = pacer::due(t0, period, i);
        // Take the window's samples on time even between cycles.
        for (k, edge) in [window_start, window_end].into_iter().enumerate() {
            if samples[k].is_none() && due >= edge {
                tokio::time::sleep_until(ctx.at(edge)).await;
                samples[k] = Some((ctx.sample(), counters.completed.load(Relaxed)));
            }
        }
        if due >= window_end {
            break;
        }
        while shared.now_ns() < due {
            let _ = tokio::time::timeout_at(ctx.at(due + PACER_FALLBACK_NS), beat.notified()).await;
        }
        let permit = gate.clone().acquire_owned().await?;
        let job = Cycle {
            shared: shared.clone(),
            counters: counters.clone(),
            endpoint: ctx.endpoint(i as usize).clone(),
            src: client::source_ip(i as usize, ctx.common.source_ips),
            user: ctx.user(i as usize),
            room: rooms[i as usize % rooms.len()].clone(),
            index: i as usize,
            due,
            hold: Duration::from_millis(a.hold_ms),
        };
        handles.push(tokio::spawn(async move {
            let _permit = permit;
            job.run().await
        }));
        i += 1;
        if i.is_multiple_of(16) {
            ctx.progress.set(
                i,
                format!(
                    "{} completed, {} failed",
                    counters.completed.load(Relaxed),
                    counters.failed.load(Relaxed)
                ),
            );
        }
    }
    let attempted = i;
    drop(pacer);

    // Let the cycles in progress finish.
    let mut notes = Vec::new();
    let drain = Duration::from_secs_f64(ctx.common.drain_timeout.max(0.0)) + STEP_TIMEOUT;
    if tokio::time::timeout(drain, async {
        for h in handles {
            let _ = h.await;
        }
    })
    .await
    .is_err()
    {
        notes.push(format!(
            "some cycles were still running {drain:?} after the last started"
        ));
    }
    ctx.progress.finish();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = ctx.sample();

    let [Some((w0, c0)), Some((w1, c1))] = samples else {
        return Err(anyhow!("the churn window was never sampled"));
    };
    Ok(ChurnResult {
        attempted,
        completed: counters.completed.load(Relaxed),
        failed: counters.failed.load(Relaxed),
        baseline,
        window_start: w0,
        window_end: w1,
        after,
        completed_in_window: c1 - c0,
        connect_latency: counters.connect.summary(),
        join_latency: counters.join.summary(),
        close_latency: counters.close.summary(),
        problems: shared.problems(),
        notes,
    })
}

struct Cycle {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    endpoint: client::Endpoint,
    src: std::net::Ipv4Addr,
    user: String,
    room: Arc<str>,
    index: usize,
    due: u64,
    hold: Duration,
}

impl Cycle {
    async fn run(self) {
        match tokio::time::timeout(STEP_TIMEOUT * 3, self.steps()).await {
            Ok(Ok(())) => {
                self.counters.completed.fetch_add(1, Relaxed);
            }
            Ok(Err(e)) => self.fail(format!("{e:#}")),
            Err(_) => self.fail(format!("took over {:?}", STEP_TIMEOUT * 3)),
        }
    }

    fn fail(&self, why: String) {
        self.counters.failed.fetch_add(1, Relaxed);
        self.shared
            .problem(format!("churn cycle {}: {why}", self.index));
    }

    async fn steps(&self) -> anyhow::Result<()> {
        let measured = self.shared.in_window(self.due);
        let mut ws = Ws::connect(&self.endpoint, self.src, &self.user).await?;
        wait_for(&mut ws, |f| f.kind == "welcome").await?;
        let now = self.shared.now_ns();
        if measured {
            self.counters
                .connect
                .record(self.index, now.saturating_sub(self.due));
        }
        let mut rb = RequestBuf::default();
        client::send(&ws.write, rb.join(&self.room, 1)).await?;
        wait_for(&mut ws, |f| f.kind == "ack" && f.id == Some(1)).await?;
        if measured {
            self.counters
                .join
                .record(self.index, self.shared.now_ns().saturating_sub(now));
        }
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        let closing = self.shared.now_ns();
        client::send_close(&ws.write).await?;
        // The server answers with its own close frame (or just ends the stream).
        let closed = tokio::time::timeout(STEP_TIMEOUT, async {
            loop {
                match ws.recv().await {
                    Ok(f) if f.opcode == OpCode::Close => return,
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        })
        .await;
        if closed.is_err() {
            bail!("no close frame within {STEP_TIMEOUT:?} of ours");
        }
        if measured {
            self.counters
                .close
                .record(self.index, self.shared.now_ns().saturating_sub(closing));
        }
        Ok(())
    }
}
