//! The joins scenario's figures and rows: the server's CPU per join over the join phase, raw and
//! net of the idle rate measured before it, the join latency, the frames the joins caused, and
//! the `joined` check.
//!
//! Owns that arithmetic and how it is shown. It must not run anything or take samples.

use std::fmt::Write as _;

use super::build::{empty_report, window_figures};
use super::table::{latency_row, thousands};
use super::{JoinsReport, Report};
use crate::cli::{CommonArgs, JoinsArgs, Scenario};
use crate::scenario::joins::JoinsResult;
use crate::scenario::run::Samples;
use crate::stats::Counts;
use crate::system::TargetInfo;

pub(crate) fn joins_report(
    scenario: &Scenario,
    a: &JoinsArgs,
    common: &CommonArgs,
    r: JoinsResult,
    target: &TargetInfo,
) -> Report {
    let mut rep = empty_report(scenario, common);
    rep.connections = a.clients as u64;
    rep.connect_seconds = r.connect_seconds;
    // The report's window is the join phase; nothing is published in it.
    window_figures(
        &mut rep,
        target,
        (&r.baseline, &r.connected),
        (&r.start, &r.end),
        Counts::default(),
    );
    let cpu = |a: &Samples, b: &Samples| {
        let (x, y) = (a.server_total()?, b.server_total()?);
        Some((y.cpu_since(&x), y.wall_since(&x)))
    };
    let phase = cpu(&r.start, &r.end);
    let idle = cpu(&r.idle, &r.start).filter(|&(_, secs)| secs > 0.0);
    let per_join = |s: f64| (r.joined > 0).then(|| s * 1e6 / r.joined as f64);
    let net = phase
        .zip(idle)
        .map(|((c, secs), (ic, isecs))| c - ic / isecs * secs);
    let j = JoinsReport {
        clients: a.clients as u64,
        room_size: a.room_size as u64,
        rooms: r.rooms,
        join_rate: a.join_rate,
        joined: r.joined,
        failed: r.failed,
        join_seconds: r.join_seconds,
        phase_seconds: rep.window_seconds,
        settle_ms: a.settle_ms,
        server_cpu_seconds: phase.map(|(c, _)| c),
        cpu_us_per_join: phase.and_then(|(c, _)| per_join(c)),
        net_cpu_us_per_join: net.and_then(per_join),
        idle_seconds: r
            .start
            .at
            .saturating_duration_since(r.idle.at)
            .as_secs_f64(),
        idle_cpu_percent: idle.map(|(c, secs)| 100.0 * c / secs),
        bot_cpu_percent: rep.bot.as_ref().map(|b| b.cpu_percent),
        join_latency: r.join_latency,
        frames: r.delivery.other_frames.clone(),
        joined_check: r.joined_check,
    };
    rep.passed =
        r.delivery.passed && j.failed == 0 && j.joined == j.clients && j.joined_check.passed();
    rep.delivery = Some(r.delivery);
    rep.notes = r.notes;
    rep.joins = Some(j);
    rep
}

impl JoinsReport {
    /// Its rows in the summary table.
    pub(super) fn human(&self, o: &mut String) {
        let us = |x: Option<f64>| x.map_or("?".into(), |x| format!("{x:.1} µs"));
        let pct = |x: Option<f64>| x.map_or("?".into(), |x| format!("{x:.0}%"));
        let _ = writeln!(o, "joins");
        let _ = writeln!(
            o,
            "  rooms             {} of {} (the last takes the remainder); {} joins/s",
            thousands(self.rooms),
            thousands(self.room_size),
            self.join_rate
        );
        let _ = writeln!(
            o,
            "  joined            {} of {} in {}; {} failed",
            thousands(self.joined),
            thousands(self.clients),
            self.join_seconds
                .map_or("(not all)".into(), |s| format!("{s:.3} s")),
            self.failed
        );
        let _ = writeln!(
            o,
            "  server CPU/join   {} ({} net of the idle rate, {} over {:.1} s before the \
             joins)",
            us(self.cpu_us_per_join),
            us(self.net_cpu_us_per_join),
            pct(self.idle_cpu_percent),
            self.idle_seconds
        );
        let _ = writeln!(
            o,
            "  phase             {:.3} s (to the last ack + {} ms); server CPU {}; bot CPU {}",
            self.phase_seconds,
            self.settle_ms,
            self.server_cpu_seconds
                .map_or("?".into(), |c| format!("{c:.3} s")),
            pct(self.bot_cpu_percent)
        );
        let c = &self.joined_check;
        match &c.skipped {
            Some(why) => {
                let _ = writeln!(o, "  joined check      skipped: {why}");
            }
            None => {
                let _ = writeln!(
                    o,
                    "  joined check      {} received of {} owed; {} clients wrong, {} rooms \
                     out of order",
                    thousands(c.received),
                    thousands(c.owed),
                    c.clients_wrong,
                    c.rooms_misordered
                );
            }
        }
    }

    /// Its latency row.
    pub(super) fn latency_rows(&self, o: &mut String) {
        latency_row(o, "join due→ack", &self.join_latency);
    }
}
