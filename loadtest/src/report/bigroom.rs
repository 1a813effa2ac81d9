//! The bigroom scenario's figures and rows: the report's window (the first rest window), each
//! phase's throughput, CPU and latency, the time to fill and to churn, and the CPU per join and
//! per leave-and-rejoin, net of the publishing that went on meanwhile.
//!
//! Owns that arithmetic and how it is shown. It must not run anything or take samples.

use std::fmt::Write as _;

use super::build::{empty_report, window_figures};
use super::cost::BotCost;
use super::table::{latency_row, thousands};
use super::{BigroomReport, PhaseReport, Report};
use crate::cli::{CommonArgs, Scenario};
use crate::scenario::bigroom::{BigroomResult, PHASES};
use crate::system::TargetInfo;

pub(crate) fn bigroom_report(
    scenario: &Scenario,
    common: &CommonArgs,
    r: BigroomResult,
    target: &TargetInfo,
) -> Report {
    let mut rep = empty_report(scenario, common);
    rep.connections = r.layout.connections() as u64;
    rep.connect_seconds = r.connect_seconds;
    let phases: Vec<PhaseReport> = (0..PHASES.len()).filter_map(|i| phase(&r, i)).collect();

    // The report's window is the first rest window; the bot's CPU there is all its processes'.
    if let (Some(w0), Some(w1)) = (r.edges.get(1), r.edges.get(2)) {
        let c = r.counts[2].since(r.counts[1]);
        window_figures(&mut rep, target, (&r.baseline, &r.connected), (w0, w1), c);
        if let (Some(a), Some(b)) = (r.bot_cpu[1], r.bot_cpu[2]) {
            let cpu = (b - a).max(0.0);
            let secs = rep.window_seconds;
            rep.bot = Some(BotCost {
                cpu_seconds: cpu,
                cpu_percent: if secs > 0.0 { 100.0 * cpu / secs } else { 0.0 },
            });
        }
    }

    // CPU per join and per churn cycle: the phase's server CPU, less its deliveries at the rest
    // window's price of a delivery, over what the phase did.
    let rest_price = phases
        .get(1)
        .and_then(|p| Some(p.server_cpu_seconds? / p.deliveries as f64))
        .filter(|p| p.is_finite());
    let per = |p: Option<&PhaseReport>, n: u64| -> (Option<f64>, Option<f64>) {
        let Some(p) = p.filter(|_| n > 0) else {
            return (None, None);
        };
        let raw = p.server_cpu_seconds;
        let net = raw
            .zip(rest_price)
            .map(|(c, price)| c - price * p.deliveries as f64);
        let us = |s: Option<f64>| s.map(|s| s * 1e6 / n as f64);
        (us(raw), us(net))
    };
    let room = &r.room;
    let (cpu_us_per_join, net_cpu_us_per_join) = per(phases.first(), room.joined);
    let (cpu_us_per_churn, net_cpu_us_per_churn) = per(phases.get(2), room.back);
    // Redis's work is paced by time (publishes, upkeep), not by deliveries.
    let redis_rate = phases
        .get(1)
        .and_then(|p| Some(p.redis_commands? as f64 / p.seconds))
        .filter(|r| r.is_finite());
    let redis_per = |p: Option<&PhaseReport>, n: u64| -> (Option<f64>, Option<f64>) {
        let Some(raw) = p.and_then(|p| p.redis_commands).filter(|_| n > 0) else {
            return (None, None);
        };
        let secs = p.map_or(0.0, |p| p.seconds);
        let net = redis_rate.map(|rate| (raw as f64 - rate * secs) / n as f64);
        (Some(raw as f64 / n as f64), net)
    };
    let (redis_commands_per_join, net_redis_commands_per_join) =
        redis_per(phases.first(), room.joined);
    let (redis_commands_per_churn, net_redis_commands_per_churn) =
        redis_per(phases.get(2), room.back);
    let b = BigroomReport {
        members: r.layout.members as u64,
        publishers: r.layout.publishers as u64,
        churners: r.layout.churners() as u64,
        processes: r.processes as u64,
        fill_seconds: r.fill_seconds,
        joined: room.joined,
        join_latency: r.join_latency,
        cpu_us_per_join,
        net_cpu_us_per_join,
        churn_seconds: r.churn_seconds,
        rejoined: room.rejoined,
        back: room.back,
        not_recovered: room.not_recovered,
        truncated: room.truncated,
        replayed: room.replayed,
        rejoin_latency: r.rejoin_latency,
        cpu_us_per_churn,
        net_cpu_us_per_churn,
        redis_commands_per_join,
        net_redis_commands_per_join,
        redis_commands_per_churn,
        net_redis_commands_per_churn,
        failed: room.failed,
        phases,
    };
    rep.latency = r.latency;
    rep.ack_latency = r.ack_latency;
    rep.send_lag = r.send_lag;
    rep.passed = r.delivery.passed
        && b.fill_seconds.is_some()
        && b.churn_seconds.is_some()
        && b.failed == 0
        && b.not_recovered == 0
        && b.truncated == 0;
    rep.delivery = Some(r.delivery);
    rep.notes = r.notes;
    rep.bigroom = Some(b);
    rep
}

/// Phase `i`: between edges `i` and `i + 1`.
fn phase(r: &BigroomResult, i: usize) -> Option<PhaseReport> {
    let (a, b) = (r.edges.get(i)?, r.edges.get(i + 1)?);
    let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
    let c = r.counts.get(i + 1)?.since(*r.counts.get(i)?);
    let cpu = a
        .server_total()
        .zip(b.server_total())
        .map(|(x, y)| y.cpu_since(&x));
    let rate = |x: f64| (secs > 0.0).then(|| x / secs);
    Some(PhaseReport {
        name: PHASES[i].to_string(),
        seconds: secs,
        deliveries: c.delivered,
        deliveries_per_sec: rate(c.delivered as f64).unwrap_or(0.0),
        publishes: c.acked,
        other_frames: c.other_frames,
        server_cpu_seconds: cpu,
        server_cpu_percent: cpu.and_then(|c| rate(100.0 * c)),
        cpu_us_per_delivery: cpu
            .filter(|_| c.delivered > 0)
            .map(|cpu| cpu * 1e6 / c.delivered as f64),
        bot_cpu_percent: r.bot_cpu[i]
            .zip(r.bot_cpu[i + 1])
            .and_then(|(x, y)| rate(100.0 * (y - x))),
        latency: r.phase_latency.get(i).cloned().flatten(),
        redis_commands: a
            .redis
            .as_ref()
            .zip(b.redis.as_ref())
            .map(|(x, y)| y.commands_since(x)),
        redis_cpu_seconds: a
            .redis
            .as_ref()
            .zip(b.redis.as_ref())
            .map(|(x, y)| (y.cpu_seconds - x.cpu_seconds).max(0.0)),
    })
}

impl BigroomReport {
    /// Its rows in the summary table.
    pub(super) fn human(&self, o: &mut String) {
        let us = |x: Option<f64>| x.map_or("?".into(), |x| format!("{x:.1} µs"));
        let secs = |x: Option<f64>| x.map_or("(not all)".into(), |x| format!("{x:.3} s"));
        let _ = writeln!(o, "bigroom");
        let _ = writeln!(
            o,
            "  room              {} members + {} publisher(s); {} churn; {} bot process(es)",
            thousands(self.members),
            self.publishers,
            thousands(self.churners),
            self.processes
        );
        let _ = writeln!(
            o,
            "  fill              {} joined in {}; server CPU/join {} ({} net of publishing)",
            thousands(self.joined),
            secs(self.fill_seconds),
            us(self.cpu_us_per_join),
            us(self.net_cpu_us_per_join)
        );
        let _ = writeln!(
            o,
            "  churn             {} left and rejoined with since, {} back in {}; \
             {} not recovered, {} truncated, {} replayed",
            thousands(self.rejoined),
            thousands(self.back),
            secs(self.churn_seconds),
            self.not_recovered,
            self.truncated,
            thousands(self.replayed)
        );
        let _ = writeln!(
            o,
            "                    server CPU per leave + rejoin {} ({} net of publishing)",
            us(self.cpu_us_per_churn),
            us(self.net_cpu_us_per_churn)
        );
        if let Some(c) = self.redis_commands_per_join {
            let n = |x: Option<f64>| x.map_or("?".into(), |x| format!("{x:.1}"));
            let _ = writeln!(
                o,
                "  redis             {c:.1} commands/join ({} net of the rest rate), {} per \
                 leave + rejoin ({} net)",
                n(self.net_redis_commands_per_join),
                n(self.redis_commands_per_churn),
                n(self.net_redis_commands_per_churn)
            );
        }
        if self.failed > 0 {
            let _ = writeln!(
                o,
                "  failed members    {} (a join or leave refused or unanswered, or the \
                 connection ended)",
                self.failed
            );
        }
        let _ = writeln!(
            o,
            "  {:<12}{:>8}{:>14}{:>15}{:>12}{:>14}{:>9}{:>10}",
            "phase",
            "secs",
            "deliveries/s",
            "not messages",
            "server CPU",
            "CPU/delivery",
            "bot CPU",
            "p99 ms"
        );
        for p in &self.phases {
            let pct = |x: Option<f64>| x.map_or("?".into(), |x| format!("{x:.0}%"));
            let _ = writeln!(
                o,
                "  {:<12}{:>8.1}{:>14}{:>15}{:>12}{:>14}{:>9}{:>10}",
                p.name,
                p.seconds,
                thousands(p.deliveries_per_sec.round() as u64),
                thousands(p.other_frames),
                pct(p.server_cpu_percent),
                p.cpu_us_per_delivery
                    .map_or("?".into(), |x| format!("{x:.3} µs")),
                pct(p.bot_cpu_percent),
                p.latency
                    .as_ref()
                    .map_or("-".into(), |l| format!("{:.1}", l.p99_ms))
            );
        }
    }

    /// Its latency rows: publish→deliver by the phase a message was scheduled in, then joins
    /// and rejoins.
    pub(super) fn latency_rows(&self, o: &mut String) {
        for p in &self.phases {
            latency_row(o, &format!("in {}", p.name), &p.latency);
        }
        latency_row(o, "join→ack", &self.join_latency);
        latency_row(o, "rejoin→caught up", &self.rejoin_latency);
    }
}
