//! One process's share of a bigroom run (the whole run when it is alone): open its
//! connections, publish from the fill's start to the end, send its members' joins at the join
//! rate, then its churners' leaves and rejoins at the churn rate, note its counters at every
//! phase edge, drain to the room's last seq, and hand back what its connections saw.
//!
//! Owns the order of the phases and the requests that change membership. It must not read
//! frames (the engine's read loop feeds `membership`) or judge delivery (`stats`).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use super::coord::{Coord, Step};
use super::{Hists, Layout, PHASES, RoomCounts};
use crate::cli::{BigroomArgs, LoadArgs};
use crate::client::{self, RequestBuf, SharedWriter};
use crate::scenario::membership::{JOIN_ID, LEAVE_ID, Member, RoomCtl};
use crate::scenario::pubsub::{self, Engine, Extras};
use crate::scenario::run::{RunCtx, Samples, secs_to_ns};
use crate::stats::{ConnOutcome, Counts, Shared};

/// The drain gives up early when nothing has arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// What one process saw; a child sends it to its parent as JSON.
#[derive(Serialize, Deserialize)]
pub struct SideResult {
    pub connect_seconds: f64,
    /// The counters, and this process's CPU seconds, at the phase edges.
    pub counts: Vec<Counts>,
    pub bot_cpu: Vec<Option<f64>>,
    /// When its last member settled in the fill, and in the churn; `None` if some never did.
    pub filled_ns: Option<u64>,
    pub churned_ns: Option<u64>,
    pub room: RoomCounts,
    pub hists: Hists,
    pub outcomes: Vec<ConnOutcome>,
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// The samples this process took itself (with the servers' costs when it knows their pids).
pub struct LocalSamples {
    pub baseline: Samples,
    pub connected: Samples,
    /// The phase edges (ns since the epoch) and the samples there.
    pub times: Vec<u64>,
    pub edges: Vec<Samples>,
}

/// This process's part: its connections are `range` of the run's.
pub async fn run(
    ctx: &RunCtx,
    a: &BigroomArgs,
    load: &LoadArgs,
    layout: Layout,
    range: Range<usize>,
    coord: &mut Coord,
) -> anyhow::Result<(SideResult, LocalSamples)> {
    let shared = &ctx.shared;
    let room_name = ctx.room("bigroom");
    let room = Arc::new(RoomCtl::new(PHASES.len()));
    let members = layout.members(range.clone());
    let plan = layout.plan(ctx, &room_name, a.rate, range.clone());
    let extras = Extras {
        storm: None,
        members: Some((room.clone(), members.clone())),
    };
    let mut engine = Engine::open(ctx, plan, Some(load), extras).await?;
    let mut notes = Vec::new();
    let drain_ns = secs_to_ns(ctx.common.drain_timeout);

    // The fill; publishing starts with it and goes on to the end.
    let e0 = coord
        .arrive(ctx, Step::Connected, shared.now_ns(), 0)
        .await?
        .at;
    room.start_phase(0, e0);
    shared.window_start_ns.store(e0, Relaxed);
    shared.window_end_ns.store(u64::MAX, Relaxed);
    let pub_end = Arc::new(AtomicU64::new(u64::MAX));
    let (publishing, writers) = engine.start_publishers(ctx, e0, pub_end.clone(), Some(load))?;
    let ops = Arc::new(Ops {
        shared: shared.clone(),
        room_name,
        room: room.clone(),
        members,
        writers,
        first: range.start,
        layout,
    });
    let fill = tokio::spawn(ops.clone().fill(e0, a.join_rate));
    let mut edges = Edges::default();
    edges.take(ctx, e0).await;
    let fill_n = range.clone().filter(|&i| i >= layout.publishers).count() as u64;
    let last_join = e0 + secs_to_ns(layout.members.saturating_sub(1) as f64 / a.join_rate);
    let filled = watch(
        ctx,
        "filling",
        fill_n,
        || room.fill_settled(),
        last_join + drain_ns,
    )
    .await;
    fill.abort();
    if filled.is_none() {
        let now = shared.now_ns();
        let stuck = ops.give_up(|m| !m.joined(), now);
        notes.push(format!(
            "{stuck} members had no join ack {:.1} s after the last join was due",
            ctx.common.drain_timeout
        ));
    }
    let at = filled.unwrap_or_else(|| shared.now_ns());
    let r1 = coord.arrive(ctx, Step::Filled, at, 0).await?.at;

    // At rest, then the churn.
    room.start_phase(1, r1);
    edges.take(ctx, r1).await;
    let c0 = r1 + secs_to_ns(ctx.common.duration);
    room.start_phase(2, c0);
    watch(ctx, "rest", 0, || (1, 0), c0).await;
    edges.take(ctx, c0).await;
    let away = Duration::from_millis(a.away_ms);
    let give_up = c0
        + secs_to_ns(layout.churners().saturating_sub(1) as f64 / a.churn_rate)
        + secs_to_ns(away.as_secs_f64())
        + drain_ns;
    let churns = ops.clone().churn(c0, a.churn_rate, away, give_up);
    let churn_n = churns.len() as u64;
    let churned = watch(ctx, "churning", churn_n, || room.churn_settled(), give_up).await;
    for c in churns {
        c.abort();
    }
    if churned.is_none() {
        let now = shared.now_ns();
        let stuck = ops.give_up(|m| m.churns && !m.is_back(), now);
        notes.push(format!(
            "{stuck} churning members were not back and caught up in time"
        ));
    }
    let at = churned.unwrap_or_else(|| shared.now_ns());
    let r2 = coord.arrive(ctx, Step::Churned, at, 0).await?.at;

    // At rest again, then the end of publishing and the drain.
    room.start_phase(3, r2);
    edges.take(ctx, r2).await;
    let end = r2 + secs_to_ns(ctx.common.duration);
    pub_end.store(end, Relaxed);
    watch(ctx, "rest again", 0, || (1, 0), end).await;
    edges.take(ctx, end).await;
    let sent = publishing.join().await?;
    pubsub::drain(ctx, &mut notes).await;
    let last_acked = room.last_acked.load(Relaxed);
    let last = coord
        .arrive(ctx, Step::Published, shared.now_ns(), last_acked)
        .await?
        .value;
    drain_to(ctx, &ops.members, last, &mut notes).await;
    let connect_seconds = engine.connect_seconds;
    let (baseline, connected) = (engine.baseline.clone(), engine.connected.clone());
    let outcomes = engine.finish(&sent).await?;
    ctx.progress.finish();

    let r = &room;
    let side = SideResult {
        connect_seconds,
        counts: edges.counts.clone(),
        bot_cpu: edges
            .samples
            .iter()
            .map(|s| s.bot.map(|b| b.cpu_seconds))
            .collect(),
        filled_ns: filled,
        churned_ns: churned,
        room: RoomCounts {
            joined: r.joined.load(Relaxed),
            rejoined: r.rejoined.load(Relaxed),
            back: r.back.load(Relaxed),
            failed: r.failed.load(Relaxed),
            not_recovered: r.not_recovered.load(Relaxed),
            truncated: r.truncated.load(Relaxed),
            replayed: r.replayed.load(Relaxed),
        },
        hists: Hists {
            latency: shared.latency.export(),
            ack_latency: shared.ack_latency.export(),
            send_lag: shared.send_lag.export(),
            join_latency: r.join_latency.export(),
            rejoin_latency: r.rejoin_latency.export(),
            phases: r.phase_latency.iter().map(|h| h.export()).collect(),
        },
        outcomes,
        problems: shared.problems(),
        notes,
    };
    let local = LocalSamples {
        baseline,
        connected,
        times: edges.times,
        edges: edges.samples,
    };
    Ok((side, local))
}

/// The samples and counters at the phase edges.
#[derive(Default)]
pub(super) struct Edges {
    pub(super) times: Vec<u64>,
    pub(super) samples: Vec<Samples>,
    counts: Vec<Counts>,
}

impl Edges {
    /// Sleeps until `at`, then samples.
    pub(super) async fn take(&mut self, ctx: &RunCtx, at: u64) {
        tokio::time::sleep_until(ctx.at(at)).await;
        self.times.push(at);
        self.samples.push(ctx.sample());
        self.counts.push(ctx.shared.counts());
    }
}

/// Updates the progress bar until `settled()` reaches `n` (returns when the last one settled)
/// or `deadline_ns` passes (returns `None`; `n` = 0 waits for the deadline).
async fn watch(
    ctx: &RunCtx,
    phase: &str,
    n: u64,
    settled: impl Fn() -> (u64, u64),
    deadline_ns: u64,
) -> Option<u64> {
    let shared = &ctx.shared;
    ctx.progress.phase(phase, n);
    let mut last = (shared.now_ns(), shared.counts());
    loop {
        let (done, at) = settled();
        if n > 0 && done >= n {
            return Some(at);
        }
        let now = shared.now_ns();
        if now >= deadline_ns {
            return None;
        }
        let step = (deadline_ns - now).min(100_000_000);
        tokio::time::sleep_until(ctx.at(now + step)).await;
        let (t, c) = (shared.now_ns(), shared.counts());
        let secs = (t - last.0).max(1) as f64 / 1e9;
        let d = c.since(last.1);
        last = (t, c);
        ctx.progress.set(
            done.min(n),
            format!(
                "{done}/{n}: {:.0} deliveries/s, {:.0} other frames/s",
                d.delivered as f64 / secs,
                d.other_frames as f64 / secs
            ),
        );
    }
}

/// Waits until every member in the room has reached seq `last`, or the drain timeout, or until
/// nothing has moved for `DRAIN_QUIET`.
async fn drain_to(ctx: &RunCtx, members: &[Arc<Member>], last: u64, notes: &mut Vec<String>) {
    let shared = &ctx.shared;
    ctx.progress.phase("draining", members.len() as u64);
    let started = Instant::now();
    let timeout = Duration::from_secs_f64(ctx.common.drain_timeout.max(0.0));
    let (mut delivered, mut moved) = (shared.counts().delivered, Instant::now());
    loop {
        let behind = members
            .iter()
            .filter(|m| m.in_room() && m.position() < last)
            .count();
        ctx.progress.set(
            (members.len() - behind) as u64,
            format!("{behind} members short of seq {last}"),
        );
        if behind == 0 {
            return;
        }
        let now = shared.counts().delivered;
        if now != delivered {
            (delivered, moved) = (now, Instant::now());
        }
        if started.elapsed() > timeout || moved.elapsed() > DRAIN_QUIET {
            notes.push(format!(
                "drain stopped after {:.1} s with {behind} members short of the room's last seq {last}",
                started.elapsed().as_secs_f64()
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What sends this process's joins, leaves and rejoins.
struct Ops {
    shared: Arc<Shared>,
    room_name: Arc<str>,
    room: Arc<RoomCtl>,
    /// By slot.
    members: Vec<Arc<Member>>,
    writers: Vec<Option<SharedWriter>>,
    /// The run-wide index of slot 0.
    first: usize,
    layout: Layout,
}

impl Ops {
    /// Sends each member's join when it is due: member m at `e0 + m / rate`.
    async fn fill(self: Arc<Self>, e0: u64, rate: f64) {
        let mut rb = RequestBuf::default();
        for (slot, m) in self.members.iter().enumerate() {
            let i = self.first + slot;
            let Some(member) = i.checked_sub(self.layout.publishers) else {
                continue;
            };
            let due = e0 + secs_to_ns(member as f64 / rate);
            tokio::time::sleep_until(self.shared.at(due)).await;
            m.join_sent(self.shared.now_ns());
            self.send(slot, rb.join(&self.room_name, JOIN_ID)).await;
        }
    }

    /// Starts one task per churning member: leave at `c0 + rank / rate`, rejoin `away` later
    /// (or once the leave is acked, if that is later); the churn gives up at `give_up`.
    fn churn(
        self: Arc<Self>,
        c0: u64,
        rate: f64,
        away: Duration,
        give_up: u64,
    ) -> Vec<JoinHandle<()>> {
        (0..self.members.len())
            .filter(|&slot| self.members[slot].churns)
            .map(|slot| {
                let rank = self.layout.churn_rank(self.first + slot);
                let leave_at = c0 + secs_to_ns(rank as f64 / rate);
                let job = self.clone().leave_and_rejoin(slot, leave_at, away, give_up);
                tokio::spawn(job)
            })
            .collect()
    }

    async fn leave_and_rejoin(
        self: Arc<Self>,
        slot: usize,
        leave_at: u64,
        away: Duration,
        give_up: u64,
    ) {
        let m = &self.members[slot];
        tokio::time::sleep_until(self.shared.at(leave_at)).await;
        if !m.in_room() {
            return;
        }
        let mut rb = RequestBuf::default();
        if !self.send(slot, rb.leave(&self.room_name, LEAVE_ID)).await {
            return;
        }
        // Messages sequenced before the leave arrive before its ack: after it, the member's
        // position is final. A server far behind acks late; the churn's end bounds the wait.
        if tokio::time::timeout_at(self.shared.at(give_up), m.left())
            .await
            .is_err()
        {
            self.shared.problem(format!(
                "member {}: no ack for its leave by the end of the churn",
                self.first + slot
            ));
            m.fail(&self.room, self.shared.now_ns());
            return;
        }
        if m.failed() {
            return;
        }
        tokio::time::sleep_until(self.shared.at(leave_at) + away).await;
        let since = m.rejoin_sent(self.shared.now_ns());
        self.send(slot, rb.join_since(&self.room_name, Some(since), JOIN_ID))
            .await;
    }

    /// Writes a join or leave for the member in `slot`; a failed write fails the member.
    async fn send(&self, slot: usize, frame: client::Outgoing<'_>) -> bool {
        let m = &self.members[slot];
        let Some(w) = &self.writers[slot] else {
            return false;
        };
        if let Err(e) = client::send(w, frame).await {
            self.shared
                .problem(format!("member {}: write failed: {e}", self.first + slot));
            m.fail(&self.room, self.shared.now_ns());
            return false;
        }
        true
    }

    /// Fails the members `stuck` picks; returns how many.
    fn give_up(&self, stuck: impl Fn(&Member) -> bool, now: u64) -> usize {
        let mut n = 0;
        for (slot, m) in self.members.iter().enumerate() {
            if self.first + slot >= self.layout.publishers && stuck(m) && !m.failed() {
                m.fail(&self.room, now);
                n += 1;
            }
        }
        n
    }
}
