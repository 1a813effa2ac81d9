//! The engine for scenarios with long-lived connections: open every connection (welcome, join),
//! start the publishers on their schedule, sample costs at the edges of the measured window,
//! drain, and collect what every connection saw for the exact check.
//!
//! It comes in steps, [`Engine`] (open, start the publishers, finish), which [`run`] drives
//! through one measured window (and a storm), and a scenario with phases of its own drives its
//! own way; the connections, their read loop and the publishers are the same.
//!
//! Each connection has one reader task that owns its read half for the whole run and records
//! every frame; a publishing connection also has a publisher task that writes through the shared
//! write half. Open loop: message k of a publisher is due at `base + k / rate` whatever happened
//! to earlier ones, and its body carries that due time, so latency counts any delay the server
//! (or the bot) caused: no coordinated omission. Closed loop (`--max`): a publisher keeps at most
//! `window` messages unacked and the run keeps at most `max_in_flight` deliveries owed.
//!
//! Owns the run's phases and the result it hands back. It must not parse frames (`conn` and
//! `client` do) or judge delivery (`stats` does).
//!
//! `conn`: one connection's task and its read loop. `publish`: one connection's publisher.
//! `resend`: `--resend`'s reconnect and resend of unacked messages.

mod conn;
pub mod extras;
mod publish;
mod resend;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;

use super::catchup::{self, StormCtl, StormPlan, StormSamples, StormTimes};
use super::membership::{Member, RoomCtl};
use super::pacer::{Beat, Pacer};
use super::plan::{Plan, PubPlan};
use super::run::{RunCtx, Samples, Schedule, secs_to_ns};
use crate::cli::LoadArgs;
use crate::client::SharedWriter;
use crate::stats::{ConnOutcome, Counts, DeliveryReport, LatencySummary, Shared, verify};
use conn::{Common, ConnEnv, Ready, conn_task};
use publish::{PubShared, PublishJob};

/// The drain gives up early when nothing has arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// What the engine measured; `report::build` turns it into a `Report`.
pub struct PubsubResult {
    pub connections: u64,
    pub connect_seconds: f64,
    /// Costs before the first connection, once all were joined, and at the window's edges.
    pub baseline: Samples,
    pub connected: Samples,
    pub window_start: Samples,
    pub window_end: Samples,
    pub delivered_in_window: u64,
    pub sent_in_window: u64,
    pub acked_in_window: u64,
    /// `Shared::bytes_in` in the window.
    pub bytes_in_window: u64,
    pub delivery: DeliveryReport,
    pub latency: Option<LatencySummary>,
    pub ack_latency: Option<LatencySummary>,
    pub send_lag: Option<LatencySummary>,
    /// A storm's samples and counters; the window above is then the calm one before it, and
    /// `latency` the steady connections' from the drop on.
    pub storm: Option<(StormSamples, Arc<StormCtl>)>,
    pub notes: Vec<String>,
}

/// The connections of a run, open (and joined where their plan says), before anything is
/// published. `run` below drives it through a whole window; `bigroom` drives it through its
/// phases.
pub struct Engine {
    common: Arc<Common>,
    tasks: Vec<JoinHandle<ConnOutcome>>,
    /// By slot (position in the plan): the publisher's shared state and plan, if it publishes.
    pubs: Vec<Option<(Arc<PubShared>, PubPlan)>>,
    writers: Vec<Option<SharedWriter>>,
    stop_tx: watch::Sender<bool>,
    /// The run-wide index of slot 0 (a child process runs a slice of the run's connections).
    first_index: usize,
    streams: usize,
    closed_loop: bool,
    window: u64,
    pub connect_seconds: f64,
    /// Costs before the first connection, and once all were ready.
    pub baseline: Samples,
    pub connected: Samples,
}

/// What changes a connection's behaviour besides receiving and publishing.
#[derive(Default)]
pub struct Extras<'a> {
    /// The storm: who drops and reconnects.
    pub storm: Option<&'a StormPlan>,
    /// Membership that changes while connected: the room's counters, and each connection's
    /// `Member`, by slot.
    pub members: Option<(Arc<RoomCtl>, Vec<Arc<Member>>)>,
}

/// The publishers, running; `join` waits for them to pass their end.
pub struct Publishing {
    handles: Vec<JoinHandle<(usize, u64)>>,
    _pacer: Pacer,
}

impl Publishing {
    /// Waits for every publisher to stop; returns (slot, messages written) for each.
    pub async fn join(self) -> anyhow::Result<Vec<(usize, u64)>> {
        let mut sent = Vec::with_capacity(self.handles.len());
        for h in self.handles {
            let (slot, n) = h.await.context("a publisher task panicked")?;
            // A connection's chat extras (usize::MAX) send no messages.
            if slot != usize::MAX {
                sent.push((slot, n));
            }
        }
        Ok(sent)
    }
}

impl Engine {
    /// Opens every connection of `plan` (welcome, and its join if it has one) and waits until
    /// all are ready; errs if any could not connect and join.
    pub async fn open(
        ctx: &RunCtx,
        plan: Plan,
        load: Option<&LoadArgs>,
        extras: Extras<'_>,
    ) -> anyhow::Result<Engine> {
        let shared = ctx.shared.clone();
        let n = plan.conns.len();
        let closed_loop = load.is_some_and(|l| l.max);
        let window = load.map_or(1, |l| l.window.max(1));
        let resend = load.is_some_and(|l| l.resend);
        let body_size = load.map_or(64, |l| l.body_size);
        let common = Arc::new(Common {
            shared: shared.clone(),
            endpoints: ctx.endpoints.clone(),
            source_ips: ctx.common.source_ips,
            connect_gate: Semaphore::new(ctx.common.connect_concurrency.max(1)),
            storm: extras.storm.map(|s| {
                let clients = s.drops.iter().filter(|&&d| d).count();
                Arc::new(StormCtl::new(clients as u64))
            }),
            room: extras.members.as_ref().map(|(room, _)| room.clone()),
            resend,
        });
        let members = extras.members.map(|(_, m)| m);
        let baseline = ctx.sample();

        ctx.progress.phase("connecting", n as u64);
        let connect_started = Instant::now();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::with_capacity(n);
        let mut pubs: Vec<Option<(Arc<PubShared>, PubPlan)>> = Vec::with_capacity(n);
        for (slot, c) in plan.conns.into_iter().enumerate() {
            let publisher = c.publish.as_ref().map(|p| {
                Arc::new(PubShared {
                    answered: AtomicU64::new(0),
                    notify: Notify::new(),
                    tick: Arc::new(Notify::new()),
                    base_ns: AtomicU64::new(0),
                    period_ns: 1e9 / p.rate.max(1e-9),
                    ring: closed_loop.then(|| (0..window).map(|_| AtomicU64::new(0)).collect()),
                    closed_loop,
                    recipients: p.recipients,
                    resend: resend.then(|| resend::Resend {
                        dest: p.dest.clone(),
                        body_size,
                        written: AtomicU64::new(0),
                    }),
                })
            });
            let env = ConnEnv {
                index: (plan.first_index + slot) as u32,
                user: c.user,
                join: c.join,
                recv_stream: c.recv_stream,
                pub_stream: c.publish.as_ref().map(|p| p.stream),
                publisher: publisher.clone(),
                drops: extras.storm.is_some_and(|s| s.drops[slot]),
                member: members.as_ref().map(|m| m[slot].clone()),
            };
            pubs.push(publisher.zip(c.publish));
            tasks.push(tokio::spawn(conn_task(
                common.clone(),
                env,
                ready_tx.clone(),
                stop_rx.clone(),
            )));
        }
        drop(ready_tx);

        let mut writers: Vec<Option<SharedWriter>> = vec![None; n];
        let mut ready = 0usize;
        let mut failed: Vec<(u32, anyhow::Error)> = Vec::new();
        while ready + failed.len() < n {
            match ready_rx.recv().await {
                Some(Ok((i, w))) => {
                    writers[i as usize - plan.first_index] = Some(w);
                    ready += 1;
                }
                Some(Err(e)) => failed.push(e),
                None => break,
            }
            let done = (ready + failed.len()) as u64;
            if done.is_multiple_of(64) || done == n as u64 {
                ctx.progress
                    .set(done, format!("{done}/{n} ready, {} failed", failed.len()));
            }
        }
        let connect_seconds = connect_started.elapsed().as_secs_f64();
        if !failed.is_empty() {
            let _ = stop_tx.send(true);
            for t in tasks {
                let _ = t.await;
            }
            let (i, e) = &failed[0];
            bail!(
                "{} of {n} connections could not connect and join; the first (connection {i}): {e:#}",
                failed.len()
            );
        }
        Ok(Engine {
            common,
            tasks,
            pubs,
            writers,
            stop_tx,
            first_index: plan.first_index,
            streams: plan.streams,
            closed_loop,
            window,
            connect_seconds,
            baseline,
            connected: ctx.sample(),
        })
    }

    /// Starts every publisher, message 0 due at `t0` (plus its phase), until `end_ns` (which may
    /// be moved later). Returns them, and the write halves of the connections that do not
    /// publish (dropping those lets a dropped connection's socket close).
    pub fn start_publishers(
        &mut self,
        ctx: &RunCtx,
        t0: u64,
        end_ns: Arc<AtomicU64>,
        load: Option<&LoadArgs>,
    ) -> anyhow::Result<(Publishing, Vec<Option<SharedWriter>>)> {
        let shared = &ctx.shared;
        let body_size = load.map_or(64, |l| l.body_size);
        let keyed = load.is_some_and(|l| l.keyed);
        let max_in_flight = load.map_or(u64::MAX, |l| l.max_in_flight);
        let (signal_rate, read_rate) = load.map_or((0.0, 0.0), |l| (l.signal_rate, l.read_rate));
        let mut writers = std::mem::take(&mut self.writers);
        let mut handles = Vec::new();
        let mut beats = Vec::new();
        for (slot, p) in std::mem::take(&mut self.pubs).into_iter().enumerate() {
            let Some((ps, plan)) = p else { continue };
            let writer = writers[slot]
                .take()
                .expect("ready connections have writers");
            ps.base_ns
                .store(t0 + (plan.phase * ps.period_ns) as u64, Relaxed);
            if !self.closed_loop {
                beats.push(Beat {
                    base_ns: ps.base_ns.load(Relaxed),
                    period_ns: ps.period_ns,
                    notify: ps.tick.clone(),
                });
            }
            if let Some(room) = extras::Extras::for_room(&plan.dest, signal_rate, read_rate) {
                let extras = extras::Extras {
                    shared: shared.clone(),
                    writer: writer.clone(),
                    room,
                    signal_rate,
                    read_rate,
                    end_ns: end_ns.clone(),
                    phase: plan.phase,
                };
                handles.push(tokio::spawn(async move {
                    extras.run().await;
                    (usize::MAX, 0)
                }));
            }
            let job = PublishJob {
                shared: shared.clone(),
                index: (self.first_index + slot) as u32,
                slot,
                writer,
                ps,
                plan,
                end_ns: end_ns.clone(),
                body_size,
                keyed,
                window: self.window,
                max_in_flight,
            };
            handles.push(tokio::spawn(job.run()));
        }
        let pacer = Pacer::start(shared.epoch, beats, end_ns.load(Relaxed))
            .context("start the pacer thread")?;
        Ok((
            Publishing {
                handles,
                _pacer: pacer,
            },
            writers,
        ))
    }

    /// The write halves of every connection, for a scenario that sends its own requests and
    /// publishes nothing (`joins`); instead of [`Engine::start_publishers`].
    pub fn take_writers(&mut self) -> Vec<Option<SharedWriter>> {
        std::mem::take(&mut self.writers)
    }

    /// The storm's signals and counters, when the plan came with a storm.
    pub fn storm(&self) -> Option<&Arc<StormCtl>> {
        self.common.storm.as_ref()
    }

    /// Tells every connection to stop and collects what each saw, with the messages each
    /// publisher wrote (`sent`, by slot, from [`Publishing::join`]).
    pub async fn finish(self, sent: &[(usize, u64)]) -> anyhow::Result<Vec<ConnOutcome>> {
        let _ = self.stop_tx.send(true);
        let mut outcomes = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            outcomes.push(t.await.context("a connection task panicked")?);
        }
        for &(slot, n) in sent {
            outcomes[slot].sent = n;
        }
        Ok(outcomes)
    }

    /// The number of streams the plan numbered, for the check.
    pub fn streams(&self) -> usize {
        self.streams
    }
}

/// Runs `plan` through one measured window: open, publish from the schedule's start, sample the
/// window's edges, run the storm if there is one, drain, and check.
pub async fn run(
    ctx: &RunCtx,
    plan: Plan,
    load: Option<&LoadArgs>,
    storm_plan: Option<StormPlan>,
) -> anyhow::Result<PubsubResult> {
    let shared = ctx.shared.clone();
    let extras = Extras {
        storm: storm_plan.as_ref(),
        members: None,
    };
    let mut engine = Engine::open(ctx, plan, load, extras).await?;
    let n = engine.tasks.len();
    let closed_loop = engine.closed_loop;

    // The schedule.
    let Schedule {
        start: t0,
        window_start,
        window_end,
    } = ctx.schedule();
    // A storm follows the calm window; publishing goes on through it.
    let storm_times = storm_plan.as_ref().map(|s| StormTimes::new(window_end, s));
    let pub_end = storm_times.as_ref().map_or(window_end, |t| t.pub_end);
    let (publishing, others) =
        engine.start_publishers(ctx, t0, Arc::new(AtomicU64::new(pub_end)), load)?;
    drop(others);

    // Warm-up, then the measured window.
    let total = window_end.saturating_sub(shared.now_ns());
    ctx.progress.phase(
        if closed_loop { "max" } else { "running" },
        total / 100_000_000,
    );
    let phase_start = shared.now_ns();
    wait_with_progress(ctx, window_start, phase_start).await;
    let (w0, c0) = (ctx.sample(), shared.counts());
    wait_with_progress(ctx, window_end, phase_start).await;
    let (w1, c1) = (ctx.sample(), shared.counts());
    let storm = match (engine.storm(), &storm_times) {
        (Some(ctl), Some(times)) => {
            let give_up = times.pub_end + secs_to_ns(ctx.common.drain_timeout);
            Some((catchup::drive(ctx, ctl, times, give_up).await, ctl.clone()))
        }
        _ => None,
    };

    // Drain: every publisher has stopped; wait for the acks and deliveries still owed.
    let sent = publishing.join().await?;
    let mut notes = Vec::new();
    drain(ctx, &mut notes).await;
    let streams = engine.streams();
    let (baseline, connected, connect_seconds) = (
        engine.baseline.clone(),
        engine.connected.clone(),
        engine.connect_seconds,
    );
    let outcomes = engine.finish(&sent).await?;
    ctx.progress.finish();
    let delivery = verify(&outcomes, streams, shared.problems());
    let opened = (n as u64, connect_seconds, baseline, connected);
    let edges = ((w0, c0), (w1, c1));
    Ok(PubsubResult::assemble(
        &shared, opened, edges, delivery, storm, notes,
    ))
}

/// A window's edges: the costs and the counters at its start and at its end.
pub(crate) type Edges = ((Samples, Counts), (Samples, Counts));

impl PubsubResult {
    /// The result of a run: `opened` is (connections, seconds to open them, the costs before
    /// and once open), `edges` the measured window's.
    pub(crate) fn assemble(
        shared: &Shared,
        opened: (u64, f64, Samples, Samples),
        edges: Edges,
        delivery: DeliveryReport,
        storm: Option<(StormSamples, Arc<StormCtl>)>,
        notes: Vec<String>,
    ) -> PubsubResult {
        let (connections, connect_seconds, baseline, connected) = opened;
        let ((w0, c0), (w1, c1)) = edges;
        PubsubResult {
            connections,
            connect_seconds,
            baseline,
            connected,
            window_start: w0,
            window_end: w1,
            delivered_in_window: c1.delivered - c0.delivered,
            sent_in_window: c1.sent - c0.sent,
            acked_in_window: c1.acked - c0.acked,
            bytes_in_window: c1.bytes_in - c0.bytes_in,
            delivery,
            latency: shared.latency.summary(),
            ack_latency: shared.ack_latency.summary(),
            send_lag: shared.send_lag.summary(),
            storm,
            notes,
        }
    }
}

/// Sleeps until `deadline_ns`, updating the progress bar.
pub(crate) async fn wait_with_progress(ctx: &RunCtx, deadline_ns: u64, phase_start: u64) {
    let shared = &ctx.shared;
    let mut last = (shared.now_ns(), shared.counts());
    loop {
        let now = shared.now_ns();
        if now >= deadline_ns {
            return;
        }
        let step = (deadline_ns - now).min(200_000_000);
        tokio::time::sleep_until(ctx.at(now + step)).await;
        let (t, c) = (shared.now_ns(), shared.counts());
        let secs = (t - last.0).max(1) as f64 / 1e9;
        let rate = (c.delivered - last.1.delivered) as f64 / secs;
        let acks = (c.acked - last.1.acked) as f64 / secs;
        last = (t, c);
        let phase = if t < shared.window_start_ns.load(Relaxed) {
            "warm-up"
        } else {
            "measuring"
        };
        ctx.progress.set(
            (t - phase_start) / 100_000_000,
            format!(
                "{phase}: {rate:.0} deliveries/s, {acks:.0} acks/s, {} sent, {} errors",
                c.sent,
                shared.server_errors.load(Relaxed) + shared.disconnects.load(Relaxed)
            ),
        );
    }
}

/// Waits until every sent message is acked and every owed delivery has arrived, or until the
/// drain timeout, or until nothing has moved for `DRAIN_QUIET`.
pub async fn drain(ctx: &RunCtx, notes: &mut Vec<String>) {
    let shared = &ctx.shared;
    let owed = shared.owed.load(Relaxed);
    ctx.progress.phase("draining", owed);
    let started = Instant::now();
    let timeout = Duration::from_secs_f64(ctx.common.drain_timeout.max(0.0));
    let mut last = (0, 0);
    let mut last_move = Instant::now();
    loop {
        let (sent, acked, delivered) = (
            shared.sent.load(Relaxed),
            shared.acked.load(Relaxed) + shared.rejected.load(Relaxed),
            shared.delivered.load(Relaxed),
        );
        ctx.progress
            .set(delivered.min(owed), format!("{acked}/{sent} acked"));
        if acked >= sent && delivered >= owed {
            return;
        }
        // A connection coming back (`--resend`) is progress to wait for.
        if (acked, delivered) != last || shared.reconnecting.load(Relaxed) > 0 {
            last = (acked, delivered);
            last_move = Instant::now();
        }
        if started.elapsed() > timeout || last_move.elapsed() > DRAIN_QUIET {
            notes.push(format!(
                "drain stopped after {:.1} s with {}/{sent} publishes answered and {delivered}/{owed} deliveries",
                started.elapsed().as_secs_f64(),
                acked
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
