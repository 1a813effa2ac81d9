//! `chat --client full`: every simulated user is a `shardcast_client::Client`, with its own
//! transport (tokio-tungstenite), reconnect, recovery and outbox, publishing through
//! `Client::publish` and counting what its `Events` hand it. The bot then measures what an
//! application on this client pays and sees, where the default bot (`pubsub`) writes
//! pipelined frames on its own cheaper socket.
//!
//! The same plan, schedule, counters, drain and exact check as `pubsub::run`, so the report
//! is the same. Open loop: message k of a user is due at `base + k / rate`, and the client's
//! outbox puts it on the wire (one per room at a time: a publisher's order holds). Owns only
//! the driving of clients; it must not judge delivery (`stats` does).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{Context, bail};
use shardcast_client::{Auth, Body, Client, Event, Events, Format, Options, Reply};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::plan::{ConnPlan, Plan};
use super::pubsub::{PubsubResult, drain, wait_with_progress};
use super::run::RunCtx;
use crate::cli::LoadArgs;
use crate::client::{self, BodyStamp, Dest};
use crate::stats::{ConnOutcome, RecvState, Shared, verify};

/// One user: its client, and the tasks that read its events and its acks.
struct User {
    client: Client,
    index: u32,
    plan: ConnPlan,
    start_seq: u64,
    reader: JoinHandle<Read>,
}

/// Runs `plan` (chat's) with a full client per user; see the module doc.
pub async fn run(ctx: &RunCtx, plan: Plan, load: &LoadArgs) -> anyhow::Result<PubsubResult> {
    if load.max || load.resend || load.keyed {
        bail!(
            "--client full is open loop with the client's own outbox: drop --max, --resend and --keyed"
        );
    }
    let shared = ctx.shared.clone();
    let baseline = ctx.sample();
    let n = plan.conns.len();
    ctx.progress.phase("connecting", n as u64);
    let started = std::time::Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut opening = Vec::with_capacity(n);
    for (slot, c) in plan.conns.into_iter().enumerate() {
        let ep = &ctx.endpoints[slot % ctx.endpoints.len()];
        let format = if client::speaks_proto(ep.protocol, &c.user) {
            Format::Proto
        } else {
            Format::Json
        };
        let url = format!("ws://{}{}", ep.addr, ep.path);
        let opts = Options::new(url, Auth::Dev(c.user.clone())).format(format);
        let index = (plan.first_index + slot) as u32;
        let stop = stop_rx.clone();
        let shared = shared.clone();
        opening.push(tokio::spawn(async move {
            let (client, events) = Client::connect(opts);
            let room = c.join.clone().context("a chat user joins a room")?;
            let ack = client.join(&room).await.context("join")?;
            let reader = tokio::spawn(read(shared, index, events, stop));
            anyhow::Ok(User {
                client,
                index,
                plan: c,
                start_seq: ack.seq,
                reader,
            })
        }));
    }
    let mut users = Vec::with_capacity(n);
    for (i, t) in opening.into_iter().enumerate() {
        users.push(
            t.await
                .context("a connecting task panicked")?
                .with_context(|| format!("connection {i} could not connect and join"))?,
        );
        ctx.progress
            .set(users.len() as u64, format!("{}/{n} ready", users.len()));
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    let connected = ctx.sample();

    let schedule = ctx.schedule();
    let body_size = load.body_size;
    let mut publishers = Vec::new();
    for (slot, u) in users.iter().enumerate() {
        let Some(p) = &u.plan.publish else { continue };
        let Dest::Room(room) = &p.dest else {
            bail!("--client full publishes to rooms (chat)");
        };
        let period_ns = 1e9 / p.rate.max(1e-9);
        let job = Publisher {
            shared: shared.clone(),
            client: u.client.clone(),
            room: room.clone(),
            index: u.index,
            base_ns: schedule.start + (p.phase * period_ns) as u64,
            period_ns,
            end_ns: schedule.window_end,
            recipients: p.recipients,
            body_size,
        };
        publishers.push((slot, tokio::spawn(job.run())));
    }

    ctx.progress.phase(
        "running",
        schedule.window_end.saturating_sub(shared.now_ns()) / 100_000_000,
    );
    let phase_start = shared.now_ns();
    wait_with_progress(ctx, schedule.window_start, phase_start).await;
    let (w0, c0) = (ctx.sample(), shared.counts());
    wait_with_progress(ctx, schedule.window_end, phase_start).await;
    let (w1, c1) = (ctx.sample(), shared.counts());

    let mut sent = vec![(0u64, Acks::default()); n];
    let mut notes = Vec::new();
    // The acks come in while the drain waits: each publisher awaits its own in order.
    let drained = drain(ctx, &mut notes);
    let mut joined = Vec::new();
    let collect = async {
        for (slot, h) in publishers {
            joined.push((slot, h.await.context("a publisher task panicked")?));
        }
        anyhow::Ok(())
    };
    let (_, collected) = tokio::join!(drained, collect);
    collected?;
    for (slot, r) in joined {
        sent[slot] = r;
    }
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::with_capacity(n);
    for (u, (written, acks)) in users.into_iter().zip(sent) {
        u.client.close();
        let r = u.reader.await.context("a reader task panicked")?;
        outcomes.push(ConnOutcome {
            index: u.index,
            recv_stream: u.plan.recv_stream,
            pub_stream: u.plan.publish.as_ref().map(|p| p.stream),
            start_seq: Some(u.start_seq),
            recv: r.recv,
            acks: acks.seqs,
            dup_acks: acks.dups,
            sent: written,
            server_errors: r.errors,
            reconnects: r.reconnects,
            ended: r.ended,
            ..ConnOutcome::default()
        });
    }
    ctx.progress.finish();
    let delivery = verify(&outcomes, plan.streams, shared.problems());
    let opened = (n as u64, connect_seconds, baseline, connected);
    let edges = ((w0, c0), (w1, c1));
    Ok(PubsubResult::assemble(
        &shared, opened, edges, delivery, None, notes,
    ))
}

/// What one user's events showed.
#[derive(Default)]
struct Read {
    recv: RecvState,
    errors: u64,
    /// Reconnects the client made (and recovered from) by itself.
    reconnects: u64,
    /// Why the client stopped before the run's end, if it did.
    ended: Option<String>,
}

/// Reads one user's events until told to stop: room messages into its `RecvState` (and the
/// latency histogram until its first reconnect: replayed messages would count the time away),
/// errors and reconnects counted.
async fn read(
    shared: Arc<Shared>,
    index: u32,
    mut events: Events,
    mut stop: watch::Receiver<bool>,
) -> Read {
    let mut r = Read::default();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = stop.wait_for(|s| *s) => None,
        };
        match event {
            None => break,
            Some(Event::Message(m)) if m.room.is_some() => {
                let now = shared.now_ns();
                match m.body.as_json().and_then(client::decode_body) {
                    Some(stamp) => {
                        r.recv.on_message(m.seq, stamp);
                        shared.delivered.fetch_add(1, Relaxed);
                        if r.reconnects == 0 && shared.in_window(stamp.sched_ns) {
                            shared
                                .latency
                                .record(index as usize, now.saturating_sub(stamp.sched_ns));
                        }
                    }
                    None => r.recv.foreign += 1,
                }
            }
            Some(Event::Connected {
                recovery: Some(rec),
                ..
            }) => {
                r.reconnects += 1;
                if !rec.complete {
                    shared.problem(format!("connection {index}: recovery incomplete: {rec:?}"));
                }
            }
            // The client reconnects by itself; a stop is what counts (below).
            Some(Event::Disconnected { .. }) => {
                shared.disconnects.fetch_add(1, Relaxed);
            }
            Some(Event::ServerError { code, message }) => {
                r.errors += 1;
                shared.server_errors.fetch_add(1, Relaxed);
                shared.problem(format!("connection {index}: {code}: {message}"));
            }
            Some(Event::Closed { reason }) => {
                if !*stop.borrow() {
                    shared.problem(format!("connection {index}: client stopped: {reason}"));
                    r.ended = Some(reason);
                }
                break;
            }
            Some(_) => {}
        }
    }
    r
}

/// One user's open-loop publishing through `Client::publish`.
struct Publisher {
    shared: Arc<Shared>,
    client: Client,
    room: Arc<str>,
    index: u32,
    base_ns: u64,
    period_ns: f64,
    end_ns: u64,
    recipients: u64,
    body_size: usize,
}

impl Publisher {
    /// Returns (messages published, their acks). The replies are
    /// awaited in order by a second task (the outbox answers one room's publishes in order),
    /// so a slow ack never delays the next due publish.
    async fn run(self) -> (u64, Acks) {
        let (tx, rx) = mpsc::unbounded_channel::<(u64, Reply<shardcast_client::Ack>)>();
        let acks = tokio::spawn(collect_acks(
            self.shared.clone(),
            self.index,
            self.recipients,
            rx,
        ));
        let mut body = Vec::with_capacity(self.body_size + 8);
        let mut k = 0u64;
        loop {
            let due = self.base_ns + (k as f64 * self.period_ns) as u64;
            if due >= self.end_ns {
                break;
            }
            tokio::time::sleep_until(self.shared.at(due)).await;
            let now = self.shared.now_ns();
            body.clear();
            let stamp = BodyStamp {
                sched_ns: due,
                publisher: self.index,
                counter: k,
            };
            client::encode_body(&mut body, stamp, self.body_size);
            let Ok(b) = Body::raw_json(body.clone()) else {
                self.shared.problem(format!(
                    "connection {}: a body that is not JSON",
                    self.index
                ));
                break;
            };
            let reply = self.client.publish(&self.room, b);
            self.shared.sent.fetch_add(1, Relaxed);
            self.shared.owed.fetch_add(self.recipients, Relaxed);
            if self.shared.in_window(due) {
                self.shared
                    .send_lag
                    .record(self.index as usize, now.saturating_sub(due));
            }
            let _ = tx.send((due, reply));
            k += 1;
        }
        drop(tx);
        let acks = acks.await.unwrap_or_default();
        (k, acks)
    }
}

/// One publisher's acks: the seq acked for each message by counter (0: none), and how many
/// were `dup` (sent again after a reconnect, stored the first time).
#[derive(Clone, Default)]
struct Acks {
    seqs: Vec<u64>,
    dups: u64,
}

/// Awaits one publisher's replies in order; records each ack (its seq by counter, its
/// latency from the due time) or refusal.
async fn collect_acks(
    shared: Arc<Shared>,
    index: u32,
    recipients: u64,
    mut rx: mpsc::UnboundedReceiver<(u64, Reply<shardcast_client::Ack>)>,
) -> Acks {
    let mut acks = Acks::default();
    while let Some((due, reply)) = rx.recv().await {
        let counter = acks.seqs.len();
        match reply.await {
            Ok(ack) => {
                acks.seqs.push(ack.seq.unwrap_or(0));
                acks.dups += u64::from(ack.dup);
                if shared.in_window(due) {
                    shared
                        .ack_latency
                        .record(index as usize, shared.now_ns().saturating_sub(due));
                }
                shared.acked.fetch_add(1, Relaxed);
            }
            Err(e) => {
                acks.seqs.push(0);
                shared.rejected.fetch_add(1, Relaxed);
                shared.owed.fetch_sub(recipients, Relaxed);
                shared.server_errors.fetch_add(1, Relaxed);
                shared.problem(format!(
                    "connection {index}: publish {counter} refused: {e}"
                ));
            }
        }
    }
    acks
}
