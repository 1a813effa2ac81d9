//! The engine for scenarios with long-lived connections: open every connection (welcome, join),
//! start the publishers on their schedule, sample costs at the edges of the measured window,
//! drain, and collect what every connection saw for the exact check.
//!
//! Each connection has one reader task that owns its read half for the whole run and records
//! every frame; a publishing connection also has a publisher task that writes through the shared
//! write half. Open loop: message k of a publisher is due at `base + k / rate` whatever happened
//! to earlier ones, and its body carries that due time, so latency counts any delay the server
//! (or the bot) caused: no coordinated omission. Closed loop (`--max`): a publisher keeps at most
//! `window` messages unacked and the run keeps at most `max_in_flight` deliveries owed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use fastwebsockets::OpCode;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::catchup::{self, CatchUp, StormCtl, StormPlan, StormSamples, StormTimes};
use super::pacer::{self, Beat, Pacer};
use super::plan::{Plan, PubPlan};
use super::run::{RunCtx, Samples, secs_to_ns};
use crate::cli::LoadArgs;
use crate::client::{self, BodyStamp, RequestBuf, ServerFrame, SharedWriter, Ws};
use crate::stats::{ConnOutcome, DeliveryReport, LatencySummary, Shared, verify};

/// How long a new connection may take to get its `welcome` and join ack.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect attempts per connection.
const CONNECT_ATTEMPTS: u32 = 3;
/// The drain gives up early when nothing has arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// The publishers' first message is due this long after the last connection is ready.
const START_LEAD_NS: u64 = 100_000_000;
/// A publisher whose pacer beat is this late sends on tokio's timer instead.
const PACER_FALLBACK_NS: u64 = 5_000_000;

/// What the engine measured; `lib` turns it into a `Report`.
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
    pub delivery: DeliveryReport,
    pub latency: Option<LatencySummary>,
    pub ack_latency: Option<LatencySummary>,
    pub send_lag: Option<LatencySummary>,
    /// A storm's samples and counters; the window above is then the calm one before it, and
    /// `latency` the steady connections' from the drop on.
    pub storm: Option<(StormSamples, Arc<StormCtl>)>,
    pub notes: Vec<String>,
}

/// What a connection's reader and its publisher share.
struct PubShared {
    /// Messages answered, by an ack or an error reply.
    answered: AtomicU64,
    /// Wakes a closed-loop publisher waiting for acks.
    notify: Notify,
    /// The pacer's beat: wakes an open-loop publisher when its next message is due.
    tick: Arc<Notify>,
    /// Open loop: when message 0 is due (ns since the epoch); set before the publisher starts.
    base_ns: AtomicU64,
    period_ns: f64,
    /// Closed loop: the send stamp of each unacked message, by counter % window.
    ring: Option<Box<[AtomicU64]>>,
    closed_loop: bool,
    /// Deliveries each of its messages owes.
    recipients: u64,
}

impl PubShared {
    fn answer(&self) {
        self.answered.fetch_add(1, Relaxed);
        if self.closed_loop {
            self.notify.notify_one();
        }
    }

    fn stamp_of(&self, counter: u64) -> u64 {
        match &self.ring {
            Some(ring) => ring[(counter % ring.len() as u64) as usize].load(Relaxed),
            None => pacer::due(self.base_ns.load(Relaxed), self.period_ns, counter),
        }
    }
}

/// Fixed inputs of one connection task.
struct ConnEnv {
    index: u32,
    user: String,
    join: Option<Arc<str>>,
    recv_stream: u32,
    pub_stream: Option<u32>,
    publisher: Option<Arc<PubShared>>,
    /// Drops and reconnects in the storm.
    drops: bool,
}

/// Inputs every connection task shares.
struct Common {
    shared: Arc<Shared>,
    endpoints: Vec<client::Endpoint>,
    source_ips: u8,
    connect_gate: Semaphore,
    storm: Option<Arc<StormCtl>>,
}

type Ready = Result<(u32, SharedWriter), (u32, anyhow::Error)>;

pub async fn run(
    ctx: &RunCtx,
    plan: Plan,
    load: Option<&LoadArgs>,
    storm_plan: Option<StormPlan>,
) -> anyhow::Result<PubsubResult> {
    let shared = ctx.shared.clone();
    let n = plan.conns.len();
    let closed_loop = load.is_some_and(|l| l.max);
    let window = load.map_or(1, |l| l.window.max(1));
    let common = Arc::new(Common {
        shared: shared.clone(),
        endpoints: ctx.endpoints.clone(),
        source_ips: ctx.common.source_ips,
        connect_gate: Semaphore::new(ctx.common.connect_concurrency.max(1)),
        storm: storm_plan.as_ref().map(|s| {
            let clients = s.drops.iter().filter(|&&d| d).count();
            Arc::new(StormCtl::new(clients as u64))
        }),
    });
    let baseline = ctx.sample();

    // Connect and join everyone.
    ctx.progress.phase("connecting", n as u64);
    let connect_started = Instant::now();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Ready>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    let mut pubs: Vec<Option<(Arc<PubShared>, PubPlan)>> = Vec::with_capacity(n);
    for (i, c) in plan.conns.into_iter().enumerate() {
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
            })
        });
        let env = ConnEnv {
            index: i as u32,
            user: c.user,
            join: c.join,
            recv_stream: c.recv_stream,
            pub_stream: c.publish.as_ref().map(|p| p.stream),
            publisher: publisher.clone(),
            drops: storm_plan.as_ref().is_some_and(|s| s.drops[i]),
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
                writers[i as usize] = Some(w);
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
    let connected = ctx.sample();

    // The schedule.
    let t0 = shared.now_ns() + START_LEAD_NS;
    let window_start = t0 + secs_to_ns(ctx.common.warmup);
    let window_end = window_start + secs_to_ns(ctx.common.duration);
    shared.window_start_ns.store(window_start, Relaxed);
    shared.window_end_ns.store(window_end, Relaxed);
    // A storm follows the calm window; publishing goes on through it.
    let storm_times = storm_plan.as_ref().map(|s| StormTimes::new(window_end, s));
    let pub_end = storm_times.as_ref().map_or(window_end, |t| t.pub_end);
    let body_size = load.map_or(64, |l| l.body_size);
    let max_in_flight = load.map_or(u64::MAX, |l| l.max_in_flight);
    let mut publishers = Vec::new();
    let mut beats = Vec::new();
    for (i, p) in pubs.into_iter().enumerate() {
        let Some((ps, plan)) = p else { continue };
        let writer = writers[i].take().expect("ready connections have writers");
        ps.base_ns
            .store(t0 + (plan.phase * ps.period_ns) as u64, Relaxed);
        if !closed_loop {
            beats.push(Beat {
                base_ns: ps.base_ns.load(Relaxed),
                period_ns: ps.period_ns,
                notify: ps.tick.clone(),
            });
        }
        let job = PublishJob {
            shared: shared.clone(),
            index: i as u32,
            writer,
            ps,
            plan,
            end_ns: pub_end,
            body_size,
            window,
            max_in_flight,
        };
        publishers.push(tokio::spawn(job.run()));
    }
    drop(writers);
    let pacer = Pacer::start(shared.epoch, beats, pub_end).context("start the pacer thread")?;

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
    let storm = match (&common.storm, &storm_times) {
        (Some(ctl), Some(times)) => {
            let give_up = times.pub_end + secs_to_ns(ctx.common.drain_timeout);
            Some((catchup::drive(ctx, ctl, times, give_up).await, ctl.clone()))
        }
        _ => None,
    };

    // Drain: every publisher has stopped; wait for the acks and deliveries still owed.
    let mut sent_counts = vec![0u64; n];
    for p in publishers {
        let (i, sent) = p.await.context("a publisher task panicked")?;
        sent_counts[i as usize] = sent;
    }
    drop(pacer);
    let mut notes = Vec::new();
    drain(ctx, &mut notes).await;
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::with_capacity(n);
    for t in tasks {
        outcomes.push(t.await.context("a connection task panicked")?);
    }
    for o in &mut outcomes {
        o.sent = sent_counts[o.index as usize];
    }
    ctx.progress.finish();
    let delivery = verify(&outcomes, plan.streams, shared.problems());
    Ok(PubsubResult {
        connections: n as u64,
        connect_seconds,
        baseline,
        connected,
        window_start: w0,
        window_end: w1,
        delivered_in_window: c1.delivered - c0.delivered,
        sent_in_window: c1.sent - c0.sent,
        acked_in_window: c1.acked - c0.acked,
        delivery,
        latency: shared.latency.summary(),
        ack_latency: shared.ack_latency.summary(),
        send_lag: shared.send_lag.summary(),
        storm,
        notes,
    })
}

/// Sleeps until `deadline_ns`, updating the progress bar.
async fn wait_with_progress(ctx: &RunCtx, deadline_ns: u64, phase_start: u64) {
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
async fn drain(ctx: &RunCtx, notes: &mut Vec<String>) {
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
        if (acked, delivered) != last {
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

/// One connection: connect, welcome, join, then read until told to stop.
async fn conn_task(
    common: Arc<Common>,
    env: ConnEnv,
    ready: mpsc::UnboundedSender<Ready>,
    mut stop: watch::Receiver<bool>,
) -> ConnOutcome {
    let mut out = ConnOutcome {
        index: env.index,
        recv_stream: env.recv_stream,
        pub_stream: env.pub_stream,
        ..Default::default()
    };
    let setup = async {
        let _permit = common.connect_gate.acquire().await?;
        let src = client::source_ip(env.index as usize, common.source_ips);
        let endpoint = &common.endpoints[env.index as usize % common.endpoints.len()];
        let mut attempt = 0;
        let mut ws = loop {
            attempt += 1;
            match Ws::connect(endpoint, src, &env.user).await {
                Ok(ws) => break ws,
                Err(e) if attempt >= CONNECT_ATTEMPTS => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await,
            }
        };
        let start_seq = tokio::time::timeout(
            SETUP_TIMEOUT,
            welcome_and_join(&mut ws, env.join.as_deref()),
        )
        .await
        .map_err(|_| anyhow!("no welcome or join ack within {SETUP_TIMEOUT:?}"))??;
        anyhow::Ok((ws, start_seq))
    };
    let mut ws = match setup.await {
        Ok((ws, start_seq)) => {
            out.start_seq = start_seq;
            ws
        }
        Err(e) => {
            out.ended = Some(format!("{e:#}"));
            let _ = ready.send(Err((env.index, e)));
            return out;
        }
    };
    if ready.send(Ok((env.index, ws.write.clone()))).is_err() {
        return out;
    }
    drop(ready);

    let shared = common.shared.clone();
    let storm = common.storm.as_deref().filter(|_| env.drops);
    let mut catch_up: Option<CatchUp> = None;
    let mut dropped = false;
    let ended = loop {
        let drop_signal = async {
            match storm {
                Some(s) if !dropped => s.drop_signal().await,
                _ => std::future::pending().await,
            }
        };
        let mut reader = Reader {
            shared: &shared,
            publisher: env.publisher.as_deref(),
            storm,
            catch_up: &mut catch_up,
            // After a reconnect, replayed messages would count the time away as latency.
            latency: !dropped,
        };
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break None,
            why = read_loop(&mut ws, &mut out, &mut reader) => break Some(why),
            () = drop_signal => {}
        }
        // The storm: drop the socket, wait, then reconnect and join with the last seq seen.
        dropped = true;
        drop(ws);
        let Some(s) = storm else { break None };
        let since = out.recv.last_seq.max(out.start_seq.unwrap_or(0));
        let src = client::source_ip(env.index as usize, common.source_ips);
        let endpoint = &common.endpoints[env.index as usize % common.endpoints.len()];
        let room = env.join.as_deref().unwrap_or_default();
        let rejoin = s.rejoin(&shared, endpoint, src, &env.user, room, since, env.index);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break Some("the run ended before it was back".into()),
            r = rejoin => match r {
                Ok((w, c)) => (ws, catch_up) = (w, c),
                Err(e) => break Some(format!("reconnect failed: {e:#}")),
            },
        }
    };
    if let Some(why) = ended
        && !*stop.borrow()
    {
        shared.disconnects.fetch_add(1, Relaxed);
        shared.problem(format!(
            "connection {} ended during the run: {why}",
            env.index
        ));
        out.ended = Some(why);
    }
    out
}

/// Reads `welcome`, then joins `room` and returns the join ack's seq.
async fn welcome_and_join(ws: &mut Ws, room: Option<&str>) -> anyhow::Result<Option<u64>> {
    client::expect_frame(ws, |f| (f.kind == "welcome").then_some(())).await?;
    let Some(room) = room else { return Ok(None) };
    let mut rb = RequestBuf::default();
    client::send_text(&ws.write, rb.join(room, 0)).await?;
    let seq = client::expect_frame(ws, |f| {
        (f.kind == "ack" && f.id == Some(0)).then(|| f.seq.unwrap_or(0))
    })
    .await?;
    Ok(Some(seq))
}

/// What the read loop of one connection needs besides its socket.
struct Reader<'a> {
    shared: &'a Shared,
    publisher: Option<&'a PubShared>,
    /// Set for a client that drops in the storm.
    storm: Option<&'a StormCtl>,
    /// A reconnected client's replay still owed.
    catch_up: &'a mut Option<CatchUp>,
    /// Whether deliveries go into the latency histogram.
    latency: bool,
}

impl Reader<'_> {
    /// A bot message in this connection's stream, received at `now`.
    #[inline]
    fn on_message(&mut self, out: &mut ConnOutcome, seq: u64, stamp: BodyStamp, now: u64) {
        out.recv.on_message(seq, stamp);
        self.shared.delivered.fetch_add(1, Relaxed);
        if self.latency && self.shared.in_window(stamp.sched_ns) {
            self.shared
                .latency
                .record(out.index as usize, now.saturating_sub(stamp.sched_ns));
        }
        if let (Some(s), Some(c)) = (self.storm, self.catch_up.as_ref())
            && out.recv.last_seq >= c.seq
        {
            s.caught_up(out.index, now);
            *self.catch_up = None;
        }
    }
}

/// The per-message path. Returns why the connection ended.
async fn read_loop(ws: &mut Ws, out: &mut ConnOutcome, r: &mut Reader<'_>) -> String {
    let (shared, publisher) = (r.shared, r.publisher);
    let index = out.index as usize;
    loop {
        let frame = match ws.recv().await {
            Ok(f) => f,
            Err(e) => return format!("read error: {e}"),
        };
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => {
                return format!("server sent {}", client::close_reason(&frame.payload));
            }
            _ => continue,
        }
        let now = shared.now_ns();
        if let Some((seq, stamp)) = client::parse_message_fast(&frame.payload) {
            r.on_message(out, seq, stamp, now);
            continue;
        }
        let f = match ServerFrame::parse(&frame.payload) {
            Ok(f) => f,
            Err(e) => {
                out.recv.foreign += 1;
                shared.problem(format!(
                    "connection {index}: unparsable frame ({e}): {:.200}",
                    String::from_utf8_lossy(&frame.payload)
                ));
                continue;
            }
        };
        match f.kind {
            "message" => {
                let stamp = f.body.and_then(|b| client::decode_body(b.get()));
                match (f.seq, stamp) {
                    (Some(seq), Some(stamp)) => r.on_message(out, seq, stamp, now),
                    _ => {
                        out.recv.count += 1;
                        out.recv.foreign += 1;
                        shared.delivered.fetch_add(1, Relaxed);
                        shared.problem(format!(
                            "connection {index}: message that is not the bot's: {:.200}",
                            String::from_utf8_lossy(&frame.payload)
                        ));
                    }
                }
            }
            "ack" => match (f.id, f.seq, publisher) {
                (Some(0), _, _) => {} // a join ack again
                (Some(id), Some(seq), Some(p)) => {
                    let counter = id - 1;
                    let k = counter as usize;
                    if k >= out.acks.len() {
                        out.acks.resize(k + 1, 0);
                    }
                    if out.acks[k] != 0 || seq == 0 {
                        out.bad_acks += 1;
                        shared.problem(format!(
                            "connection {index}: ack for message {counter} again (seq {seq})"
                        ));
                    } else {
                        out.acks[k] = seq;
                    }
                    let stamp = p.stamp_of(counter);
                    if shared.in_window(stamp) {
                        shared.ack_latency.record(index, now.saturating_sub(stamp));
                    }
                    shared.acked.fetch_add(1, Relaxed);
                    p.answer();
                }
                _ => {
                    out.bad_acks += 1;
                    shared.problem(format!(
                        "connection {index}: unexpected ack {}",
                        String::from_utf8_lossy(&frame.payload)
                    ));
                }
            },
            "error" => {
                out.server_errors += 1;
                shared.server_errors.fetch_add(1, Relaxed);
                // A refused publish is answered too: the drain and the window must not wait
                // for its ack.
                if let (Some(p), Some(1..)) = (publisher, f.id) {
                    shared.rejected.fetch_add(1, Relaxed);
                    shared.owed.fetch_sub(p.recipients, Relaxed);
                    p.answer();
                }
                shared.problem(format!(
                    "connection {index}: server error frame: {}",
                    String::from_utf8_lossy(&frame.payload)
                ));
            }
            // Presence events, pongs and anything new in the protocol are not the bot's concern.
            _ => {}
        }
    }
}

/// One connection's publishing.
struct PublishJob {
    shared: Arc<Shared>,
    index: u32,
    writer: SharedWriter,
    ps: Arc<PubShared>,
    plan: PubPlan,
    end_ns: u64,
    body_size: usize,
    window: u64,
    max_in_flight: u64,
}

impl PublishJob {
    /// Returns (connection index, messages written).
    async fn run(self) -> (u32, u64) {
        let sent = if self.ps.closed_loop {
            self.closed_loop().await
        } else {
            self.open_loop().await
        };
        (self.index, sent)
    }

    async fn send(&self, rb: &mut RequestBuf, counter: u64, stamp_ns: u64) -> bool {
        let stamp = BodyStamp {
            sched_ns: stamp_ns,
            publisher: self.index,
            counter,
        };
        let frame = rb.message(&self.plan.dest, counter + 1, stamp, self.body_size);
        if let Err(e) = client::send_text(&self.writer, frame).await {
            self.shared.problem(format!(
                "connection {}: publish {counter} failed: {e}",
                self.index
            ));
            return false;
        }
        self.shared.sent.fetch_add(1, Relaxed);
        self.shared.owed.fetch_add(self.plan.recipients, Relaxed);
        true
    }

    async fn open_loop(&self) -> u64 {
        let base = self.ps.base_ns.load(Relaxed);
        let mut rb = RequestBuf::default();
        let mut k = 0u64;
        loop {
            let due = pacer::due(base, self.ps.period_ns, k);
            if due >= self.end_ns {
                return k;
            }
            // The pacer signals at the due time; tokio's coarser timer is only a fallback.
            let fallback = self.at(due + PACER_FALLBACK_NS);
            while self.shared.now_ns() < due {
                let _ = tokio::time::timeout_at(fallback, self.ps.tick.notified()).await;
            }
            let now = self.shared.now_ns();
            if !self.send(&mut rb, k, due).await {
                return k;
            }
            if self.shared.in_window(due) {
                self.shared
                    .send_lag
                    .record(self.index as usize, now.saturating_sub(due));
            }
            k += 1;
        }
    }

    fn at(&self, ns: u64) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.shared.epoch + Duration::from_nanos(ns))
    }

    async fn closed_loop(&self) -> u64 {
        let ring = self.ps.ring.as_ref().expect("closed loop has a ring");
        let end =
            tokio::time::Instant::from_std(self.shared.epoch + Duration::from_nanos(self.end_ns));
        let start = tokio::time::Instant::from_std(
            self.shared.epoch + Duration::from_nanos(self.ps.base_ns.load(Relaxed)),
        );
        tokio::time::sleep_until(start).await;
        let mut rb = RequestBuf::default();
        let mut k = 0u64;
        loop {
            // At most `window` unacked.
            while k - self.ps.answered.load(Relaxed) >= self.window {
                if tokio::time::timeout_at(end, self.ps.notify.notified())
                    .await
                    .is_err()
                {
                    return k;
                }
            }
            // At most `max_in_flight` deliveries owed, run-wide.
            while self.shared.owed.load(Relaxed)
                > self.shared.delivered.load(Relaxed) + self.max_in_flight
            {
                if tokio::time::Instant::now() >= end {
                    return k;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let now = self.shared.now_ns();
            if now >= self.end_ns {
                return k;
            }
            ring[(k % ring.len() as u64) as usize].store(now, Relaxed);
            if !self.send(&mut rb, k, now).await {
                return k;
            }
            k += 1;
        }
    }
}
