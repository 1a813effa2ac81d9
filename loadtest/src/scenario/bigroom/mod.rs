//! The bigroom scenario: one room that `--members` clients join at `--join-rate` while
//! `--publishers` publish into it; once it is full, it is measured at rest, then while half of
//! its members leave and rejoin with `since`, then at rest again.
//!
//! Its phases, each a window whose edges every process of the run shares: **fill** (from the
//! first join until the first rest window starts, so it holds the settling after the last join
//! too), **rest**, **churn** (from the first leave until the second rest window), **rest
//! again**. The fill and the churn end when their last member is settled (joined, or back and
//! caught up, or failed), plus `--warmup`; the rest windows last `--duration`. A message's
//! latency counts in the phase it was scheduled in.
//!
//! It drives the `pubsub` engine through these phases (the same connections, read loop,
//! publishers and exact check); the joins, leaves and rejoins are `membership`'s. This module
//! owns who is who (`Layout`) and merging what the processes saw into one result. It must not
//! build figures (`report::bigroom` does).
//!
//! `side`: one process's share of the run (all of it, when alone). `coord`: how the processes
//! keep in step. `procs`: the parent that starts child processes, and a child's life.

mod coord;
pub mod procs;
mod side;

use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::membership::Member;
use super::plan::{ConnPlan, Plan, PubPlan};
use super::run::{RunCtx, Samples};
use crate::cli::{BigroomArgs, LoadArgs};
use crate::client::Dest;
use crate::stats::{ConnOutcome, Counts, DeliveryReport, Hist, HistData, LatencySummary, verify};
use side::LocalSamples;

pub use side::SideResult;

/// The phases, in order.
pub const PHASES: [&str; 4] = ["fill", "rest", "churn", "rest again"];

/// Who is who: connections `0..publishers` publish (and join when they connect); the others are
/// the members, in the order they join.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Layout {
    pub publishers: usize,
    pub members: usize,
    /// Connection i talks to node i mod `nodes`.
    pub nodes: usize,
}

impl Layout {
    pub fn new(a: &BigroomArgs, nodes: usize) -> Layout {
        Layout {
            publishers: a.publishers,
            members: a.members,
            nodes: nodes.max(1),
        }
    }

    pub fn connections(&self) -> usize {
        self.publishers + self.members
    }

    /// Connection i churns when it is a member in an odd round of the nodes: half of the
    /// members, spread evenly over the nodes and over the processes' slices.
    pub fn churns(&self, i: usize) -> bool {
        i >= self.publishers && (i / self.nodes) % 2 == 1
    }

    /// Connections below `x` in an odd round of the nodes.
    fn odd_rounds_below(&self, x: usize) -> usize {
        let n = self.nodes;
        (x / (2 * n)) * n + (x % (2 * n)).saturating_sub(n)
    }

    /// The churning members below connection i: when i's leave is due.
    pub fn churn_rank(&self, i: usize) -> usize {
        self.odd_rounds_below(i) - self.odd_rounds_below(self.publishers)
    }

    pub fn churners(&self) -> usize {
        self.churn_rank(self.connections())
    }

    /// Process `w` of `k`: its connections. The members are split evenly and in order; the
    /// first process also has the publishers.
    pub fn slice(&self, w: usize, k: usize) -> Range<usize> {
        let at = |w: usize| self.publishers + w * self.members / k;
        (if w == 0 { 0 } else { at(w) })..at(w + 1)
    }

    /// The connections of `range`: everyone receives the room (stream 0); the publishers join
    /// when they connect, the members later.
    fn plan(&self, ctx: &RunCtx, room: &Arc<str>, rate: f64, range: Range<usize>) -> Plan {
        let first = range.start;
        let conns = range
            .map(|i| {
                let publishes = i < self.publishers;
                ConnPlan {
                    user: ctx.user(i),
                    join: publishes.then(|| room.clone()),
                    recv_stream: 0,
                    publish: publishes.then(|| PubPlan {
                        dest: Dest::Room(room.clone()),
                        stream: 0,
                        rate,
                        phase: i as f64 / self.publishers as f64,
                        // What a message owes changes as members come and go; the drain waits
                        // for the room's last seq instead.
                        recipients: 0,
                    }),
                }
            })
            .collect();
        let mut plan = Plan::new(conns, 1);
        plan.first_index = first;
        plan
    }

    fn members(&self, range: Range<usize>) -> Vec<Arc<Member>> {
        range
            .map(|i| {
                let publishes = i < self.publishers;
                Arc::new(Member::new(publishes, !publishes, self.churns(i)))
            })
            .collect()
    }
}

/// The room's counters, all processes together.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomCounts {
    /// Members whose first join was acked.
    pub joined: u64,
    /// Rejoins acked, and members back and caught up after one.
    pub rejoined: u64,
    pub back: u64,
    /// Members whose join or leave was refused or unanswered, or whose connection ended.
    pub failed: u64,
    pub not_recovered: u64,
    pub truncated: u64,
    pub replayed: u64,
}

impl RoomCounts {
    fn add(&mut self, o: &RoomCounts) {
        self.joined += o.joined;
        self.rejoined += o.rejoined;
        self.back += o.back;
        self.failed += o.failed;
        self.not_recovered += o.not_recovered;
        self.truncated += o.truncated;
        self.replayed += o.replayed;
    }
}

/// A process's histograms, to merge.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Hists {
    pub latency: HistData,
    pub ack_latency: HistData,
    pub send_lag: HistData,
    pub join_latency: HistData,
    pub rejoin_latency: HistData,
    /// By phase.
    pub phases: Vec<HistData>,
}

/// What the run measured, every process merged; `report::bigroom` turns it into figures.
pub struct BigroomResult {
    pub layout: Layout,
    pub processes: usize,
    /// The slowest process's time to open its connections.
    pub connect_seconds: f64,
    /// The servers' (and Redis's) cost before the bot connected, once all were connected, and
    /// at the phases' edges: the fill's start, each next phase's start, and the end.
    pub baseline: Samples,
    pub connected: Samples,
    pub edges: Vec<Samples>,
    /// The bot's counters at the same edges, all processes added up.
    pub counts: Vec<Counts>,
    /// The bot's CPU seconds at the same edges, all processes added up (when all are known).
    pub bot_cpu: Vec<Option<f64>>,
    /// Fill start → the last member's join ack; churn start → the last churner back and caught
    /// up. `None` when some never were.
    pub fill_seconds: Option<f64>,
    pub churn_seconds: Option<f64>,
    pub room: RoomCounts,
    pub delivery: DeliveryReport,
    /// Publish → delivery of live messages scheduled from the fill's start on.
    pub latency: Option<LatencySummary>,
    pub phase_latency: Vec<Option<LatencySummary>>,
    pub ack_latency: Option<LatencySummary>,
    pub send_lag: Option<LatencySummary>,
    pub join_latency: Option<LatencySummary>,
    pub rejoin_latency: Option<LatencySummary>,
    pub notes: Vec<String>,
}

/// Runs the scenario: in this process, or (`--processes` above 1) as a parent of children.
pub async fn run(ctx: &RunCtx, a: &BigroomArgs, load: &LoadArgs) -> anyhow::Result<BigroomResult> {
    let layout = Layout::new(a, ctx.endpoints.len());
    if a.processes > 1 {
        return procs::parent(ctx, a, load, layout).await;
    }
    let mut coord = coord::Coord::Alone;
    let (side, local) = side::run(ctx, a, load, layout, layout.slice(0, 1), &mut coord).await?;
    Ok(merge(layout, vec![side], local))
}

/// One result from the processes' sides and the servers' samples (taken by the process that
/// knows the servers' pids: the only one, or the parent).
fn merge(layout: Layout, sides: Vec<SideResult>, local: LocalSamples) -> BigroomResult {
    let processes = sides.len();
    let edges_n = local.edges.len();
    let mut counts = vec![Counts::default(); edges_n];
    let mut bot_cpu = vec![Some(0.0); edges_n];
    let mut room = RoomCounts::default();
    let mut outcomes: Vec<ConnOutcome> = Vec::new();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let new_hists = || {
        (0..5 + PHASES.len())
            .map(|_| Hist::default())
            .collect::<Vec<_>>()
    };
    let hists = new_hists();
    let mut connect_seconds: f64 = 0.0;
    let (mut filled, mut churned) = (Some(0u64), Some(0u64));
    for s in sides {
        connect_seconds = connect_seconds.max(s.connect_seconds);
        for (i, c) in s.counts.iter().enumerate().take(edges_n) {
            counts[i] = counts[i].plus(*c);
        }
        for (i, b) in s.bot_cpu.iter().enumerate().take(edges_n) {
            bot_cpu[i] = bot_cpu[i].zip(*b).map(|(x, y)| x + y);
        }
        filled = filled.zip(s.filled_ns).map(|(x, y)| x.max(y));
        churned = churned.zip(s.churned_ns).map(|(x, y)| x.max(y));
        room.add(&s.room);
        let h = &s.hists;
        let all = [
            &h.latency,
            &h.ack_latency,
            &h.send_lag,
            &h.join_latency,
            &h.rejoin_latency,
        ];
        for (into, from) in hists.iter().zip(all.into_iter().chain(&h.phases)) {
            into.add(from);
        }
        outcomes.extend(s.outcomes);
        problems.extend(s.problems);
        notes.extend(s.notes);
    }
    let since = |edge: usize, at: Option<u64>| {
        let start = local.times.get(edge).copied()?;
        Some(at?.saturating_sub(start) as f64 / 1e9)
    };
    problems.truncate(20);
    let delivery = verify(&outcomes, 1, problems);
    BigroomResult {
        layout,
        processes,
        connect_seconds,
        fill_seconds: since(0, filled),
        churn_seconds: since(2, churned),
        baseline: local.baseline,
        connected: local.connected,
        edges: local.edges,
        counts,
        bot_cpu,
        room,
        delivery,
        latency: hists[0].summary(),
        ack_latency: hists[1].summary(),
        send_lag: hists[2].summary(),
        join_latency: hists[3].summary(),
        rejoin_latency: hists[4].summary(),
        phase_latency: hists[5..].iter().map(Hist::summary).collect(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_members_churn_spread_over_nodes_and_slices() {
        for nodes in [1, 2, 3] {
            let l = Layout {
                publishers: 2,
                members: 1000,
                nodes,
            };
            let churners: Vec<usize> = (0..l.connections()).filter(|&i| l.churns(i)).collect();
            assert_eq!(l.churners(), churners.len());
            assert!((495..=505).contains(&churners.len()), "{}", churners.len());
            for (rank, &i) in churners.iter().enumerate() {
                assert_eq!(l.churn_rank(i), rank);
            }
            for node in 0..nodes {
                let on = churners.iter().filter(|&&i| i % nodes == node).count();
                assert!(on * nodes >= churners.len() - nodes, "node {node}: {on}");
            }
            let halves = [l.slice(0, 2), l.slice(1, 2)];
            assert_eq!(halves[0].start, 0);
            assert_eq!(halves[0].end, halves[1].start);
            assert_eq!(halves[1].end, l.connections());
            for h in halves {
                let n = churners.iter().filter(|i| h.contains(i)).count();
                assert!((240..=260).contains(&n), "{n}");
            }
        }
    }
}
