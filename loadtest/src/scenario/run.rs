//! What every scenario's run shares: the context (`RunCtx`: the counters, the nodes, the
//! options, the names, the progress bar), the schedule (first due time, measured window), the
//! cost samples taken at a phase's edges, time in nanoseconds since the run's epoch, and waiting
//! for one frame on a short-lived connection.
//!
//! Owns the run's names (users and rooms prefixed with the run's tag), its schedule, and which
//! node connection i talks to. It must not decide what a scenario opens or sends.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::anyhow;

use crate::cli::CommonArgs;
use crate::client::{self, Endpoint, ServerFrame, Ws};
use crate::procfs::{self, ProcSample};
use crate::progress::Progress;
use crate::redis_info::{RedisProbe, RedisSample};
use crate::stats::Shared;

/// How long one step of a short-lived connection (`welcome`, a join ack, the closing handshake)
/// may take before its cycle counts as failed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The first publish (or churn cycle) is due this long after the setup ends (for the engine:
/// after the last connection is ready).
const START_LEAD_NS: u64 = 100_000_000;

/// A run's schedule, in ns since the epoch.
pub struct Schedule {
    /// When the first publish (or churn cycle) is due.
    pub start: u64,
    /// The measured window: after `--warmup`, for `--duration`.
    pub window_start: u64,
    pub window_end: u64,
}

/// What every phase of a run needs.
pub struct RunCtx {
    pub shared: Arc<Shared>,
    /// The nodes; connection (or cycle) i goes to node i mod their number.
    pub endpoints: Vec<Endpoint>,
    pub common: CommonArgs,
    /// Prefix of every user and room name of this run, so runs against a long-lived server do
    /// not meet each other's rooms or inboxes.
    pub tag: String,
    pub progress: Arc<Progress>,
    /// The nodes' pids where known, by node.
    pub server_pids: Vec<Option<u32>>,
    pub redis: Option<RedisProbe>,
}

/// The nodes', Redis's and the bot's cost at one moment.
#[derive(Clone, Debug)]
pub struct Samples {
    pub at: std::time::Instant,
    /// By node; `None` where the pid is not known.
    pub servers: Vec<Option<ProcSample>>,
    pub bot: Option<ProcSample>,
    pub redis: Option<RedisSample>,
}

impl Samples {
    /// All nodes together, when every node's pid is known.
    pub fn server_total(&self) -> Option<ProcSample> {
        let all: Option<Vec<ProcSample>> = self.servers.iter().copied().collect();
        procfs::sum(&all?)
    }
}

impl RunCtx {
    pub fn sample(&self) -> Samples {
        Samples {
            at: std::time::Instant::now(),
            servers: self
                .server_pids
                .iter()
                .map(|pid| pid.and_then(|pid| procfs::sample(pid).ok()))
                .collect(),
            bot: procfs::sample(0).ok(),
            redis: self.redis.as_ref().and_then(|r| r.sample().ok()),
        }
    }

    /// The schedule from now; it sets the window in `shared`, so only what is stamped inside it
    /// is measured.
    pub fn schedule(&self) -> Schedule {
        let start = self.shared.now_ns() + START_LEAD_NS;
        let window_start = start + secs_to_ns(self.common.warmup);
        let window_end = window_start + secs_to_ns(self.common.duration);
        self.shared.window_start_ns.store(window_start, Relaxed);
        self.shared.window_end_ns.store(window_end, Relaxed);
        Schedule {
            start,
            window_start,
            window_end,
        }
    }

    /// The node connection (or cycle) `i` talks to.
    pub fn endpoint(&self, i: usize) -> &Endpoint {
        &self.endpoints[i % self.endpoints.len()]
    }

    /// A tokio instant `ns` after the run's epoch.
    pub fn at(&self, ns: u64) -> tokio::time::Instant {
        self.shared.at(ns)
    }

    pub fn user(&self, i: usize) -> String {
        format!("{}-u{i}", self.tag)
    }

    pub fn room(&self, name: &str) -> Arc<str> {
        format!("{}-{name}", self.tag).into()
    }
}

/// The bot's tokio runtime. One thread: a current-thread runtime on this (pinned) thread, with
/// no work stealing and no cross-thread wake-ups. More: a multi-thread runtime with that many
/// workers.
pub fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| anyhow!("start the tokio runtime: {e}"))
}

pub fn secs_to_ns(s: f64) -> u64 {
    (s.max(0.0) * 1e9) as u64
}

/// Reads until a text frame `want` accepts, within `STEP_TIMEOUT`; an `error` frame or a close
/// fails.
pub async fn wait_for(ws: &mut Ws, want: impl Fn(&ServerFrame) -> bool) -> anyhow::Result<()> {
    tokio::time::timeout(
        STEP_TIMEOUT,
        client::expect_frame(ws, |f| want(f).then_some(())),
    )
    .await
    .map_err(|_| anyhow!("no answer within {STEP_TIMEOUT:?}"))?
}
