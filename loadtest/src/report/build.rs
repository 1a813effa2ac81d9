//! Building a [`Report`] from what a scenario measured: the scenario's parameters, throughput
//! over the window, the cost figures from the samples at its edges, and what churn, soak and the
//! storm add, with the verdict each adds to the delivery check.
//!
//! Owns the arithmetic from results to figures that belongs to one scenario (the storm's net CPU
//! per reconnect, the soak's RSS growth). It must not run anything or take samples.

use serde_json::json;

use super::cost::{BotCost, NodeCost, RedisCost, ServerCost, WindowWork};
use super::{ChurnReport, Report, SoakReport, StormReport};
use crate::cli::{CommonArgs, Scenario};
use crate::scenario::churn::ChurnResult;
use crate::scenario::pubsub::PubsubResult;
use crate::scenario::soak::SoakResult;
use crate::stats::Counts;
use crate::system::TargetInfo;
use crate::{cli, scenario};

fn params(scenario: &Scenario) -> serde_json::Map<String, serde_json::Value> {
    let v = match scenario {
        Scenario::Fanout { args, .. } => json!({
            "subscribers": args.subscribers, "publishers": args.publishers, "rate": args.rate,
        }),
        Scenario::Chat { args, .. } => json!({
            "users": args.users, "room_size": args.room_size, "rate": args.rate,
            "client": args.client,
        }),
        Scenario::Dm { args, .. } => json!({ "users": args.users, "rate": args.rate }),
        Scenario::Idle { args, .. } => json!({
            "connections": args.connections, "room_size": args.room_size,
        }),
        Scenario::Soak { args, .. } => json!({
            "users": args.users, "room_size": args.room_size, "dm_users": args.dm_users,
            "rate": args.rate, "churn_rate": args.churn_rate, "sample_secs": args.sample_secs,
        }),
        Scenario::Churn { args, .. } => json!({
            "rate": args.rate, "hold_ms": args.hold_ms, "rooms": args.rooms,
            "max_concurrent": args.max_concurrent,
        }),
        Scenario::Storm { args, .. } => json!({
            "clients": args.clients, "room_size": args.room_size, "rate": args.rate,
            "steady_rooms": args.steady_rooms, "down_ms": args.down_ms, "after": args.after,
        }),
        Scenario::Bigroom { args, .. } => json!({
            "members": args.members, "publishers": args.publishers, "rate": args.rate,
            "join_rate": args.join_rate, "churn_rate": args.churn_rate,
            "away_ms": args.away_ms, "processes": args.processes,
        }),
        Scenario::Joins { args, .. } => json!({
            "clients": args.clients, "room_size": args.room_size, "join_rate": args.join_rate,
            "settle_ms": args.settle_ms, "presence_list_max": args.presence_list_max,
        }),
    };
    let mut map = match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("params are objects"),
    };
    if let Some(l) = scenario.load() {
        map.insert("body_size".into(), json!(l.body_size));
        if l.max {
            map.insert("window".into(), json!(l.window));
            map.insert("max_in_flight".into(), json!(l.max_in_flight));
        }
    }
    map
}

pub(super) fn empty_report(scenario: &Scenario, common: &CommonArgs) -> Report {
    Report {
        scenario: scenario.name().to_string(),
        mode: match scenario {
            Scenario::Idle { .. } => "hold".into(),
            _ if scenario.load().is_some_and(|l| l.max) => "closed-loop".into(),
            _ => "open-loop".into(),
        },
        params: params(scenario),
        target: TargetInfo {
            nodes: Vec::new(),
            spawned: false,
            server_bin: None,
            server_cpus: None,
            durability: None,
            redis: None,
        },
        client_cpus: None,
        client_threads: 0,
        connections: 0,
        connect_seconds: 0.0,
        warmup_seconds: common.warmup,
        window_seconds: 0.0,
        deliveries_in_window: 0,
        deliveries_per_sec: 0.0,
        wire_bytes_per_delivery: None,
        publishes_per_sec: 0.0,
        acks_per_sec: 0.0,
        delivery: None,
        latency: None,
        ack_latency: None,
        send_lag: None,
        server: None,
        nodes: Vec::new(),
        redis: None,
        bot: None,
        churn: None,
        soak: None,
        storm: None,
        bigroom: None,
        joins: None,
        server_log_problems: Vec::new(),
        notes: Vec::new(),
        passed: false,
    }
}

pub(crate) fn pubsub_report(
    scenario: &Scenario,
    common: &CommonArgs,
    r: PubsubResult,
    target: &TargetInfo,
) -> Report {
    let mut rep = empty_report(scenario, common);
    rep.connections = r.connections;
    rep.connect_seconds = r.connect_seconds;
    let counts = Counts {
        delivered: r.delivered_in_window,
        sent: r.sent_in_window,
        acked: r.acked_in_window,
        other_frames: 0,
        bytes_in: r.bytes_in_window,
    };
    let edges = (&r.window_start, &r.window_end);
    window_figures(&mut rep, target, (&r.baseline, &r.connected), edges, counts);
    rep.latency = r.latency;
    rep.ack_latency = r.ack_latency;
    rep.send_lag = r.send_lag;
    rep.passed = r.delivery.passed;
    rep.delivery = Some(r.delivery);
    rep.notes = r.notes;
    if let (Some((s, ctl)), Scenario::Storm { args, .. }) = (&r.storm, scenario) {
        let st = storm_report(
            (&r.window_start, &r.window_end),
            s,
            ctl,
            args,
            r.connections,
        );
        rep.passed &= st.back_seconds.is_some()
            && st.failed_handshakes == 0
            && st.not_recovered == 0
            && st.truncated == 0;
        rep.storm = Some(st);
    }
    rep
}

/// The storm's figures. CPU "net" subtracts the calm window's server CPU rate over the same
/// span: what the publishing alone would have cost.
fn storm_report(
    (w0, w1): (&scenario::run::Samples, &scenario::run::Samples),
    s: &scenario::catchup::StormSamples,
    ctl: &scenario::catchup::StormCtl,
    args: &cli::StormArgs,
    connections: u64,
) -> StormReport {
    use std::sync::atomic::Ordering::Relaxed;
    let reconnecting = ctl.clients;
    let calm_rate = match (w0.server_total(), w1.server_total()) {
        (Some(a), Some(b)) if b.wall_since(&a) > 0.0 => Some(b.cpu_since(&a) / b.wall_since(&a)),
        _ => None,
    };
    // (raw seconds, net seconds) between two samples.
    let span = |a: &scenario::run::Samples, b: &scenario::run::Samples| {
        let (a, b) = (a.server_total()?, b.server_total()?);
        let raw = b.cpu_since(&a);
        Some((raw, raw - calm_rate? * b.wall_since(&a)))
    };
    let n = reconnecting.max(1) as f64;
    let reconnect = s.back.as_ref().and_then(|b| span(&s.reconnect, b));
    let bot = s.back.as_ref().and_then(|b| {
        let (a, b) = (s.reconnect.bot?, b.bot?);
        let wall = b.wall_since(&a);
        (wall > 0.0).then(|| 100.0 * b.cpu_since(&a) / wall)
    });
    StormReport {
        reconnecting,
        staying: connections - reconnecting,
        down_ms: args.down_ms,
        back: ctl.back(),
        back_seconds: ctl.back_seconds(),
        failed_handshakes: ctl.failed_handshakes.load(Relaxed),
        not_recovered: ctl.not_recovered.load(Relaxed),
        truncated: ctl.truncated.load(Relaxed),
        replayed: ctl.replayed.load(Relaxed),
        connect_to_welcome: ctl.connect_to_welcome.summary(),
        signal_to_welcome: ctl.signal_to_welcome.summary(),
        signal_to_caught_up: ctl.signal_to_caught_up.summary(),
        calm_latency: s.calm_latency.clone(),
        reconnect_cpu_seconds: reconnect.map(|(raw, _)| raw),
        cpu_us_per_reconnect: reconnect.map(|(raw, _)| raw * 1e6 / n),
        net_cpu_us_per_reconnect: reconnect.map(|(_, net)| net * 1e6 / n),
        net_cpu_us_per_disconnect: span(&s.dropped, &s.reconnect).map(|(_, net)| net * 1e6 / n),
        bot_cpu_percent_reconnecting: bot,
    }
}

/// A report's window figures, from the samples at its edges and what the bot counted in it:
/// its length and rates, the servers' CPU and RSS (`baseline` and `connected` for the RSS),
/// each node's share, Redis's cost and the bot's CPU.
pub(super) fn window_figures(
    rep: &mut Report,
    target: &TargetInfo,
    (baseline, connected): (&scenario::run::Samples, &scenario::run::Samples),
    (w0, w1): (&scenario::run::Samples, &scenario::run::Samples),
    c: Counts,
) {
    let wall = window(rep, target, w0, w1);
    rep.deliveries_in_window = c.delivered;
    rep.wire_bytes_per_delivery =
        (c.delivered > 0 && c.bytes_in > 0).then(|| c.bytes_in as f64 / c.delivered as f64);
    if wall > 0.0 {
        rep.deliveries_per_sec = c.delivered as f64 / wall;
        rep.publishes_per_sec = c.sent as f64 / wall;
        rep.acks_per_sec = c.acked as f64 / wall;
    }
    let work = WindowWork {
        deliveries: c.delivered,
        publishes: c.acked,
        connections: rep.connections,
    };
    if let (Some(b), Some(cn), Some(a0), Some(a1)) = (
        baseline.server_total(),
        connected.server_total(),
        w0.server_total(),
        w1.server_total(),
    ) {
        let pids = target.nodes.iter().filter_map(|n| n.pid).collect();
        rep.server = Some(ServerCost::compute(pids, &b, &cn, (&a0, &a1), work));
    }
    if let (Some(a), Some(b)) = (&w0.redis, &w1.redis) {
        rep.redis = Some(RedisCost::compute(a, b, work));
    }
}

/// What every report takes from the window's edges: its length (returned, in seconds), each
/// node's CPU when there are several and their pids are known, and the bot's CPU.
fn window(
    rep: &mut Report,
    target: &TargetInfo,
    w0: &scenario::run::Samples,
    w1: &scenario::run::Samples,
) -> f64 {
    let wall = w1.at.saturating_duration_since(w0.at).as_secs_f64();
    rep.window_seconds = wall;
    if target.nodes.len() >= 2 {
        rep.nodes = target
            .nodes
            .iter()
            .zip(w0.servers.iter().zip(&w1.servers))
            .filter_map(|(n, (a, b))| {
                Some(NodeCost::compute(&n.url, n.pid?, a.as_ref()?, b.as_ref()?))
            })
            .collect();
    }
    if let (Some(b0), Some(b1)) = (w0.bot, w1.bot) {
        rep.bot = Some(BotCost::compute(&b0, &b1));
    }
    wall
}

pub(crate) fn churn_report(
    scenario: &Scenario,
    common: &CommonArgs,
    r: ChurnResult,
    target: &TargetInfo,
) -> Report {
    let mut rep = empty_report(scenario, common);
    let wall = window(&mut rep, target, &r.window_start, &r.window_end);
    rep.connections = r.attempted;
    let mut churn = ChurnReport {
        attempted: r.attempted,
        completed: r.completed,
        failed: r.failed,
        cycles_per_sec: if wall > 0.0 {
            r.completed_in_window as f64 / wall
        } else {
            0.0
        },
        connect_latency: r.connect_latency,
        join_latency: r.join_latency,
        close_latency: r.close_latency,
        server_cpu_us_per_cycle: None,
        server_rss_retained_bytes: None,
        redis_cpu_us_per_cycle: None,
        redis_commands_per_cycle: None,
    };
    if let (Some(w0), Some(w1)) = (&r.window_start.redis, &r.window_end.redis) {
        let cost = RedisCost::compute(w0, w1, WindowWork::default());
        if r.completed_in_window > 0 {
            let per_cycle = |x: f64| Some(x / r.completed_in_window as f64);
            churn.redis_cpu_us_per_cycle = per_cycle(cost.cpu_seconds * 1e6);
            churn.redis_commands_per_cycle = per_cycle(cost.commands as f64);
        }
        rep.redis = Some(cost);
    }
    if let (Some(b), Some(w0), Some(w1)) = (
        r.baseline.server_total(),
        r.window_start.server_total(),
        r.window_end.server_total(),
    ) {
        let pids = target.nodes.iter().filter_map(|n| n.pid).collect();
        let cost = ServerCost::compute(pids, &b, &w1, (&w0, &w1), WindowWork::default());
        if r.completed_in_window > 0 {
            churn.server_cpu_us_per_cycle =
                Some(cost.cpu_seconds * 1e6 / r.completed_in_window as f64);
        }
        if let Some(after) = r.after.server_total() {
            churn.server_rss_retained_bytes = Some(after.rss_bytes as i64 - b.rss_bytes as i64);
        }
        rep.server = Some(cost);
    }
    rep.passed = r.failed == 0 && r.completed == r.attempted;
    rep.notes = r.problems.into_iter().chain(r.notes).collect();
    rep.churn = Some(churn);
    rep
}

pub(crate) fn soak_report(
    scenario: &Scenario,
    common: &CommonArgs,
    r: SoakResult,
    target: &TargetInfo,
) -> Report {
    let Scenario::Soak { args, .. } = scenario else {
        unreachable!("a soak result comes from the soak scenario")
    };
    let mut rep = pubsub_report(scenario, common, r.pubsub, target);
    let after_warmup: Vec<_> = r
        .samples
        .iter()
        .filter(|s| s.at_secs >= r.warmup_end_secs)
        .collect();
    let growth = |to: u64| {
        after_warmup.first().map(|first| {
            100.0 * (to as f64 - first.rss_bytes as f64) / first.rss_bytes.max(1) as f64
        })
    };
    let soak = SoakReport {
        rss_growth_percent: after_warmup.last().and_then(|l| growth(l.rss_bytes)),
        peak_rss_growth_percent: after_warmup
            .iter()
            .map(|s| s.rss_bytes)
            .max()
            .and_then(growth),
        max_rss_growth_percent: args.max_rss_growth,
        cycles_ok: r.cycles_ok,
        cycles_failed: r.cycles_failed,
        warmup_end_secs: r.warmup_end_secs,
        samples: r.samples,
    };
    match soak.rss_growth_percent {
        Some(g) if g > args.max_rss_growth => {
            rep.notes.push(format!(
                "RSS grew {g:.1}% after the warm-up (allowed {:.1}%)",
                args.max_rss_growth
            ));
            rep.passed = false;
        }
        Some(_) => {}
        None => {
            rep.notes
                .push("no RSS samples after the warm-up (is the server pid known?)".into());
            rep.passed = false;
        }
    }
    if soak.cycles_failed > 0 {
        rep.passed = false;
    }
    rep.soak = Some(soak);
    rep
}
