//! The joins scenario: what a join costs the server in rooms of a given size. `--clients`
//! connections open first (not measured) and idle for `--warmup`; then client i joins room i ÷ K
//! at i ÷ rate after the phase starts (open loop, woken by the pacer), and the phase ends
//! `--settle-ms` after the last ack. The server's CPU over the phase, divided by the joins, is
//! the cost of a join with the events it causes.
//!
//! The `pubsub` engine opens the connections (no one publishes) and its read loop hands the
//! acks to `membership`. This module owns the joins' schedule and the `joined` check: a client
//! is owed one `joined` for every member that joined its room after it, in the server's order
//! (the `members` count of each join ack), while the room was a `list` room within its
//! presence_list_max. It must not build figures (`report::joins` does).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::Notify;

use super::membership::{JOIN_ID, Member, RoomCtl};
use super::pacer::{self, Beat, PACER_FALLBACK_NS, Pacer};
use super::plan::{ConnPlan, Plan};
use super::pubsub::{Engine, Extras};
use super::run::{RunCtx, Samples, secs_to_ns};
use crate::cli::JoinsArgs;
use crate::client::{self, RequestBuf, SharedWriter};
use crate::stats::{ConnOutcome, DeliveryReport, LatencySummary, Shared, verify};

/// The shortest idle window before the phase (with `--warmup 0`), so the pacer starts in time.
const MIN_LEAD_NS: u64 = 100_000_000;
/// After the phase, the bot collects the frames still in flight until none came for this long.
const QUIET: Duration = Duration::from_millis(500);
/// Clients named in the problems, at most.
const MAX_NAMED: usize = 10;

/// What the run measured; `report::joins` turns it into figures.
pub struct JoinsResult {
    pub rooms: u64,
    pub connect_seconds: f64,
    /// Costs before the first connection and once all were open; at the start of the idle
    /// window, at the phase's start (the idle window's end) and at its end.
    pub baseline: Samples,
    pub connected: Samples,
    pub idle: Samples,
    pub start: Samples,
    pub end: Samples,
    /// Phase start → the last join ack; `None` when some join was not acked.
    pub join_seconds: Option<f64>,
    pub joined: u64,
    /// Joins refused or unanswered, and connections that ended.
    pub failed: u64,
    /// Due time → ack.
    pub join_latency: Option<LatencySummary>,
    /// Server error frames, disconnects, and every frame that was not a reply, by type.
    pub delivery: DeliveryReport,
    pub joined_check: JoinedCheck,
    pub notes: Vec<String>,
}

/// The `joined` check.
#[derive(Clone, Debug, Default, Serialize)]
pub struct JoinedCheck {
    /// Why it was not made, when it was not.
    pub skipped: Option<String>,
    /// `joined` events owed and received, all clients together.
    pub owed: u64,
    pub received: u64,
    /// Clients that did not get exactly the events they were owed.
    pub clients_wrong: u64,
    /// Rooms whose join acks did not count 1, 2, …, size (the order the check relies on).
    pub rooms_misordered: u64,
}

impl JoinedCheck {
    pub fn passed(&self) -> bool {
        self.clients_wrong == 0 && self.rooms_misordered == 0
    }
}

/// A client's join as the server placed it: its room, the room's member count once it was in,
/// and whether the room's presence was `list`.
#[derive(Clone, Copy, Debug)]
pub struct Placed {
    pub room: usize,
    pub place: u64,
    pub listed: bool,
}

/// The `joined` events each client is owed: one for each later member of its room (a higher
/// place) whose join found a `list` room and left it within `list_max` members.
pub fn owed_joined(clients: &[Placed], list_max: u64) -> Vec<u64> {
    let rooms = clients.iter().map(|c| c.room + 1).max().unwrap_or(0);
    let mut told: Vec<Vec<u64>> = vec![Vec::new(); rooms];
    for c in clients.iter().filter(|c| c.listed && c.place <= list_max) {
        told[c.room].push(c.place);
    }
    for t in &mut told {
        t.sort_unstable();
    }
    clients
        .iter()
        .map(|c| {
            let t = &told[c.room];
            (t.len() - t.partition_point(|&p| p <= c.place)) as u64
        })
        .collect()
}

/// Rooms whose places are not 1, 2, …, their size.
fn misordered_rooms(clients: &[Placed]) -> Vec<usize> {
    let rooms = clients.iter().map(|c| c.room + 1).max().unwrap_or(0);
    let mut places: Vec<Vec<u64>> = vec![Vec::new(); rooms];
    for c in clients {
        places[c.room].push(c.place);
    }
    (places.iter_mut().enumerate())
        .filter_map(|(r, p)| {
            p.sort_unstable();
            (!p.iter().zip(1..).all(|(&a, b)| a == b)).then_some(r)
        })
        .collect()
}

/// Runs the scenario.
pub async fn run(ctx: &RunCtx, a: &JoinsArgs) -> anyhow::Result<JoinsResult> {
    let shared = &ctx.shared;
    let n = a.clients;
    let k = a.room_size.max(1);
    let names: Vec<Arc<str>> = (0..n.div_ceil(k))
        .map(|r| ctx.room(&format!("joins{r}")))
        .collect();
    let conns = (0..n)
        .map(|i| ConnPlan {
            user: ctx.user(i),
            join: None,
            recv_stream: 0,
            publish: None,
        })
        .collect();
    let room = Arc::new(RoomCtl::new(1));
    let members: Vec<Arc<Member>> = (0..n)
        .map(|_| Arc::new(Member::new(false, true, false)))
        .collect();
    let extras = Extras {
        storm: None,
        members: Some((room.clone(), members.clone())),
    };
    let mut engine = Engine::open(ctx, Plan::new(conns, 1), None, extras).await?;
    let writers = engine.take_writers();

    // The idle window, then the joins.
    let i0 = shared.now_ns();
    let idle = ctx.sample();
    let e0 = i0 + secs_to_ns(ctx.common.warmup).max(MIN_LEAD_NS);
    let period_ns = 1e9 / a.join_rate;
    let last_due = pacer::due(e0, period_ns, n.saturating_sub(1) as u64);
    let tick = Arc::new(Notify::new());
    let beat = Beat {
        base_ns: e0,
        period_ns,
        notify: tick.clone(),
    };
    let pacer = Pacer::start(shared.epoch, vec![beat], last_due + 1).context("start the pacer")?;
    ctx.progress.phase("idle", 0);
    tokio::time::sleep_until(ctx.at(e0)).await;
    let start = ctx.sample();
    let driver = Driver {
        shared: shared.clone(),
        room: room.clone(),
        members: members.clone(),
        writers,
        names,
        room_size: k,
    };
    let sending = tokio::spawn(driver.send_joins(e0, period_ns, tick));

    // Every join answered (or failed), or the drain timeout past the last one due.
    let give_up = last_due + secs_to_ns(ctx.common.drain_timeout);
    ctx.progress.phase("joining", n as u64);
    let mut notes = Vec::new();
    let settled = loop {
        let (done, at) = room.fill_settled();
        if done >= n as u64 {
            break at;
        }
        let now = shared.now_ns();
        if now >= give_up {
            let stuck: Vec<_> = (members.iter())
                .filter(|m| !m.joined() && !m.failed())
                .collect();
            notes.push(format!(
                "{} joins had no ack {:.1} s after the last one was due",
                stuck.len(),
                ctx.common.drain_timeout
            ));
            for m in stuck {
                m.fail(&room, now);
            }
            break now;
        }
        let joined = room.joined.load(Relaxed);
        ctx.progress.set(done, format!("{joined} acked"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    sending.abort();
    drop(pacer);
    let failed = room.failed.load(Relaxed);
    let joined = room.joined.load(Relaxed);
    let end_ns = settled + a.settle_ms * 1_000_000;
    ctx.progress.phase("settling", 0);
    tokio::time::sleep_until(ctx.at(end_ns)).await;
    let end = ctx.sample();

    // The events still in flight, for the check (outside the measured phase).
    collect_stragglers(ctx).await;
    let connect_seconds = engine.connect_seconds;
    let (baseline, connected) = (engine.baseline.clone(), engine.connected.clone());
    let outcomes = engine.finish(&[]).await?;
    ctx.progress.finish();

    let mut problems = shared.problems();
    let joined_check = check_joined(ctx, a, &members, &outcomes, &mut problems);
    Ok(JoinsResult {
        rooms: n.div_ceil(k) as u64,
        connect_seconds,
        baseline,
        connected,
        idle,
        start,
        end,
        join_seconds: (failed == 0).then(|| settled.saturating_sub(e0) as f64 / 1e9),
        joined,
        failed,
        join_latency: room.join_latency.summary(),
        delivery: verify(&outcomes, 1, problems),
        joined_check,
        notes,
    })
}

/// Waits until no frame that is not a reply has come for `QUIET`, or the drain timeout.
async fn collect_stragglers(ctx: &RunCtx) {
    let started = Instant::now();
    let timeout = Duration::from_secs_f64(ctx.common.drain_timeout.max(0.0));
    let mut seen = ctx.shared.counts().other_frames;
    while started.elapsed() < timeout {
        tokio::time::sleep(QUIET).await;
        let now = ctx.shared.counts().other_frames;
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// Compares each client's `joined` events with what it was owed; names the first few that
/// differ in `problems`.
fn check_joined(
    ctx: &RunCtx,
    a: &JoinsArgs,
    members: &[Arc<Member>],
    outcomes: &[ConnOutcome],
    problems: &mut Vec<String>,
) -> JoinedCheck {
    let received: Vec<u64> = outcomes
        .iter()
        .map(|o| {
            let joined = o.other_frames.iter().find(|(kind, _)| kind == "joined");
            joined.map_or(0, |(_, n)| *n)
        })
        .collect();
    let mut check = JoinedCheck {
        received: received.iter().sum(),
        ..Default::default()
    };
    if ctx.endpoints.len() > 1 {
        check.skipped = Some("a cluster's join acks do not give one order of joins".into());
        return check;
    }
    let k = a.room_size.max(1);
    let placed: Option<Vec<Placed>> = (members.iter().enumerate())
        .map(|(i, m)| {
            let (place, listed) = m.place()?;
            Some(Placed {
                room: i / k,
                place,
                listed,
            })
        })
        .collect();
    let Some(placed) = placed else {
        check.skipped = Some(
            "some join acks had no `members` and `presence` (a failed join, or a server \
             without room rules)"
                .into(),
        );
        return check;
    };
    let misordered = misordered_rooms(&placed);
    check.rooms_misordered = misordered.len() as u64;
    for r in misordered.iter().take(MAX_NAMED) {
        problems.push(format!(
            "room {r}: its join acks' member counts are not 1 to its size"
        ));
    }
    let owed = if ctx.common.presence_events {
        owed_joined(&placed, a.presence_list_max)
    } else {
        vec![0; placed.len()]
    };
    check.owed = owed.iter().sum();
    for (i, (&got, &want)) in received.iter().zip(&owed).enumerate() {
        if got != want {
            check.clients_wrong += 1;
            if check.clients_wrong as usize <= MAX_NAMED {
                problems.push(format!(
                    "client {i} (room {}, member {} of it): {got} joined events, owed {want}",
                    placed[i].room, placed[i].place
                ));
            }
        }
    }
    check
}

/// What sends the joins.
struct Driver {
    shared: Arc<Shared>,
    room: Arc<RoomCtl>,
    members: Vec<Arc<Member>>,
    writers: Vec<Option<SharedWriter>>,
    names: Vec<Arc<str>>,
    room_size: usize,
}

impl Driver {
    /// Sends client i's join at its due time, `e0 + i × period`, when the pacer says so
    /// (tokio's coarser timer is only a fallback). Latency counts from the due time, so the
    /// bot's own lateness is charged too: no coordinated omission.
    async fn send_joins(self, e0: u64, period_ns: f64, tick: Arc<Notify>) {
        let shared = &self.shared;
        let mut rb = RequestBuf::default();
        for (i, m) in self.members.iter().enumerate() {
            let due = pacer::due(e0, period_ns, i as u64);
            let fallback = shared.at(due + PACER_FALLBACK_NS);
            while shared.now_ns() < due {
                let _ = tokio::time::timeout_at(fallback, tick.notified()).await;
            }
            m.join_sent(due);
            let Some(w) = &self.writers[i] else { continue };
            let frame = rb.join(&self.names[i / self.room_size], JOIN_ID);
            if let Err(e) = client::send(w, frame).await {
                shared.problem(format!("client {i}: write failed: {e}"));
                m.fail(&self.room, shared.now_ns());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms_of(k: usize, places: &[u64], listed: bool) -> Vec<Placed> {
        (places.iter().enumerate())
            .map(|(i, &place)| Placed {
                room: i / k,
                place,
                listed,
            })
            .collect()
    }

    #[test]
    fn each_client_is_owed_the_members_that_joined_after_it() {
        // Two rooms of 3 and a last room of 1, joined in order.
        let c = rooms_of(3, &[1, 2, 3, 1, 2, 3, 1], true);
        assert_eq!(owed_joined(&c, 1000), vec![2, 1, 0, 2, 1, 0, 0]);
        assert!(misordered_rooms(&c).is_empty());
        // The server's order, not the bot's: room 0 took client 2 first.
        let c = rooms_of(3, &[2, 3, 1], true);
        assert_eq!(owed_joined(&c, 1000), vec![1, 0, 2]);
        // A count room sends none.
        assert_eq!(
            owed_joined(&rooms_of(3, &[1, 2, 3], false), 1000),
            vec![0; 3]
        );
    }

    #[test]
    fn joins_past_the_list_max_are_owed_nothing() {
        // Past 3 members the room counts: the joins that made it 4 and 5 tell no one.
        let c = rooms_of(5, &[1, 2, 3, 4, 5], true);
        assert_eq!(owed_joined(&c, 3), vec![2, 1, 0, 0, 0]);
        let owed: u64 = owed_joined(&rooms_of(2000, &(1..=2000).collect::<Vec<_>>(), true), 1000)
            .iter()
            .sum();
        assert_eq!(owed, 999 * 1000 / 2, "a pair of the first 1,000, once each");
    }

    #[test]
    fn places_must_count_one_to_the_room_size() {
        let c = rooms_of(3, &[1, 2, 3, 1, 1, 3], true);
        assert_eq!(misordered_rooms(&c), vec![1]);
    }
}
