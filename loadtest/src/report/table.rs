//! The human summary table of a [`Report`]: what `shardcast-loadtest` prints without `--json`.
//!
//! Owns only how figures are shown. It must not compute a figure: every one comes from the
//! report.

use std::fmt::Write as _;

use super::Report;
use crate::stats::LatencySummary;

pub(super) fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(super) fn latency_row(out: &mut String, name: &str, l: &Option<LatencySummary>) {
    if let Some(l) = l {
        let _ = writeln!(
            out,
            "  {name:<18}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>10.3}{:>12}",
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            thousands(l.count)
        );
    }
}

impl Report {
    /// The summary table for a person.
    pub fn human(&self) -> String {
        let mut o = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(
            o,
            "shardcast-loadtest {} ({})  {verdict}",
            self.scenario, self.mode
        );
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(o, "  params            {}", params.join(" "));
        let t = &self.target;
        for (i, n) in t.nodes.iter().enumerate() {
            let mut where_ = n.url.clone();
            if t.spawned {
                where_ += " (spawned";
                if let Some(c) = &t.server_cpus {
                    where_ += &format!(", server cpus {c}");
                }
                where_ += ")";
            }
            if let Some(pid) = n.pid {
                where_ += &format!(" pid {pid}");
            }
            let label = if t.nodes.len() > 1 {
                format!("node {i}")
            } else {
                "target".to_string()
            };
            let _ = writeln!(o, "  {label:<18}{where_}");
        }
        if let Some(r) = &t.redis {
            let mut where_ = r.url.clone();
            if let Some(pid) = r.pid {
                where_ += &format!(" (spawned, pid {pid}");
                if let Some(c) = &r.cpus {
                    where_ += &format!(", cpus {c}");
                }
                where_ += ")";
            }
            let _ = writeln!(o, "  redis             {where_}");
        }
        let _ = writeln!(o, "  durability        {}", t.durability_words());
        let _ = writeln!(
            o,
            "  bot               {} worker thread(s){}",
            self.client_threads,
            self.client_cpus
                .as_ref()
                .map(|c| format!(", cpus {c}"))
                .unwrap_or_default()
        );
        if self.churn.is_none() {
            let _ = writeln!(
                o,
                "  connections       {} (opened in {:.2} s)",
                thousands(self.connections),
                self.connect_seconds
            );
        }
        let _ = writeln!(
            o,
            "  window            {:.1} s after {:.1} s warm-up",
            self.window_seconds, self.warmup_seconds
        );

        if let Some(d) = self
            .delivery
            .as_ref()
            .filter(|d| d.published > 0 || !d.passed)
        {
            let _ = writeln!(o, "delivery");
            let _ = writeln!(
                o,
                "  published         {}  (acked {}, unacked {})",
                thousands(d.published),
                thousands(d.acked),
                d.unacked
            );
            let _ = writeln!(
                o,
                "  deliveries        {} received of {} owed",
                thousands(d.delivered),
                thousands(d.expected)
            );
            let _ = writeln!(
                o,
                "  lost {}  duplicates {}  out of order {}  unexpected {}  wrong content {}",
                d.lost, d.duplicates, d.out_of_order, d.unexpected, d.content_mismatches
            );
            let _ = writeln!(
                o,
                "  ack errors {}  server error frames {}  disconnects {}",
                d.ack_errors, d.server_errors, d.disconnects
            );
            if d.reconnects + d.resent + d.dup_acks > 0 {
                let _ = writeln!(
                    o,
                    "  resend: {} reconnects, {} publishes sent again, {} acked as dup",
                    thousands(d.reconnects),
                    thousands(d.resent),
                    thousands(d.dup_acks)
                );
            }
        }
        if let Some(d) = self
            .delivery
            .as_ref()
            .filter(|d| !d.other_frames.is_empty())
        {
            let kinds: Vec<String> = d
                .other_frames
                .iter()
                .map(|(kind, n)| format!("{kind}: {}", thousands(*n)))
                .collect();
            let _ = writeln!(o, "  not messages      {}", kinds.join(", "));
        }
        if self.deliveries_in_window > 0 || self.publishes_per_sec > 0.0 {
            let _ = writeln!(o, "throughput (window)");
            let _ = writeln!(
                o,
                "  deliveries/s      {}",
                thousands(self.deliveries_per_sec.round() as u64)
            );
            if let Some(b) = self.wire_bytes_per_delivery {
                let _ = writeln!(
                    o,
                    "  bytes/delivery    {b:.1}  (server to clients, WebSocket)"
                );
            }
            let _ = writeln!(o, "  publishes/s       {:.1}", self.publishes_per_sec);
            let _ = writeln!(
                o,
                "  acks/s            {:.1}{}",
                self.acks_per_sec,
                if self.mode == "closed-loop" {
                    "  (peak: stored publishes/s)"
                } else {
                    ""
                }
            );
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(o, "churn");
            let _ = writeln!(
                o,
                "  cycles            {} started, {} completed, {} failed; {:.1}/s in the window",
                c.attempted, c.completed, c.failed, c.cycles_per_sec
            );
            if let Some(us) = c.server_cpu_us_per_cycle {
                let _ = writeln!(o, "  server CPU/cycle  {us:.1} µs");
            }
            if let (Some(us), Some(n)) = (c.redis_cpu_us_per_cycle, c.redis_commands_per_cycle) {
                let _ = writeln!(o, "  Redis/cycle       {us:.1} µs CPU, {n:.1} commands");
            }
            if let Some(b) = c.server_rss_retained_bytes {
                let _ = writeln!(o, "  RSS retained      {:+.1} KiB", b as f64 / 1024.0);
            }
        }
        if let Some(st) = &self.storm {
            let _ = writeln!(o, "storm");
            let _ = writeln!(
                o,
                "  clients           {} reconnecting, {} staying; down {} ms",
                thousands(st.reconnecting),
                thousands(st.staying),
                st.down_ms
            );
            let _ = writeln!(
                o,
                "  back, caught up   {}/{} in {}",
                thousands(st.back),
                thousands(st.reconnecting),
                st.back_seconds
                    .map_or("(not all)".into(), |s| format!("{s:.3} s"))
            );
            let _ = writeln!(
                o,
                "  failures          {} failed handshakes, {} not recovered, {} truncated; {} replayed",
                st.failed_handshakes,
                st.not_recovered,
                st.truncated,
                thousands(st.replayed)
            );
            if let (Some(raw), Some(net)) = (st.cpu_us_per_reconnect, st.net_cpu_us_per_reconnect) {
                let _ = writeln!(
                    o,
                    "  server CPU        {net:.1} µs/reconnect net of the calm rate ({raw:.1} raw, {:.3} s)",
                    st.reconnect_cpu_seconds.unwrap_or(0.0)
                );
            }
            if let Some(us) = st.net_cpu_us_per_disconnect {
                let _ = writeln!(o, "                    {us:.1} µs/disconnect net");
            }
            if let Some(p) = st.bot_cpu_percent_reconnecting {
                let _ = writeln!(
                    o,
                    "  bot CPU           {p:.0}% of a core while reconnecting"
                );
            }
        }
        if let Some(b) = &self.bigroom {
            b.human(&mut o);
        }
        if let Some(j) = &self.joins {
            j.human(&mut o);
        }
        if let Some(k) = &self.soak {
            let _ = writeln!(o, "soak");
            let _ = writeln!(
                o,
                "  churn cycles      {} completed, {} failed (each reads a history page)",
                k.cycles_ok, k.cycles_failed
            );
            let pct = |p: Option<f64>| p.map_or("?".into(), |p| format!("{p:+.1}%"));
            let _ = writeln!(
                o,
                "  RSS after warm-up {} at the end, {} at the peak (allowed {:.1}%)",
                pct(k.rss_growth_percent),
                pct(k.peak_rss_growth_percent),
                k.max_rss_growth_percent
            );
            let _ = writeln!(
                o,
                "  {:>8} {:>10} {:>8} {:>12}",
                "t (s)", "RSS", "fds", "queued"
            );
            // About a dozen rows, whatever the run's length.
            let step = k.samples.len().div_ceil(12).max(1);
            let last = k.samples.len().saturating_sub(1);
            for (i, s) in k.samples.iter().enumerate() {
                if i % step == 0 || i == last {
                    let queued = s.queue_bytes.map_or("?".into(), thousands);
                    let _ = writeln!(
                        o,
                        "  {:>8.0} {:>10} {:>8} {:>12}",
                        s.at_secs,
                        mib(s.rss_bytes),
                        s.open_fds,
                        queued
                    );
                }
            }
        }
        let lat = [
            (
                if self.storm.is_some() {
                    "steady in storm"
                } else {
                    "publish→deliver"
                },
                &self.latency,
            ),
            ("publish→ack", &self.ack_latency),
            ("send lag (bot)", &self.send_lag),
        ];
        let churn_lat = self.churn.as_ref().map(|c| {
            [
                ("connect→welcome", &c.connect_latency),
                ("join→ack", &c.join_latency),
                ("close→close", &c.close_latency),
            ]
        });
        let storm_lat = self.storm.as_ref().map(|s| {
            [
                ("calm deliver", &s.calm_latency),
                ("connect→welcome", &s.connect_to_welcome),
                ("signal→welcome", &s.signal_to_welcome),
                ("signal→caught up", &s.signal_to_caught_up),
            ]
        });
        let rows: Vec<(&str, &Option<LatencySummary>)> = lat
            .into_iter()
            .chain(churn_lat.into_iter().flatten())
            .chain(storm_lat.into_iter().flatten())
            .filter(|(_, l)| l.is_some())
            .collect();
        let join_lat = self
            .joins
            .as_ref()
            .is_some_and(|j| j.join_latency.is_some());
        if !rows.is_empty() || join_lat {
            let _ = writeln!(
                o,
                "latency (ms)        {:>10}{:>10}{:>10}{:>10}{:>10}{:>12}",
                "p50", "p90", "p99", "p99.9", "max", "count"
            );
            for (name, l) in rows {
                latency_row(&mut o, name, l);
            }
            if let Some(b) = &self.bigroom {
                b.latency_rows(&mut o);
            }
            if let Some(j) = &self.joins {
                j.latency_rows(&mut o);
            }
        }
        if let Some(s) = &self.server {
            let pids: Vec<String> = s.pids.iter().map(u32::to_string).collect();
            if s.pids.len() > 1 {
                let _ = writeln!(
                    o,
                    "servers ({} nodes together, pids {})",
                    s.pids.len(),
                    pids.join(", ")
                );
            } else {
                let _ = writeln!(o, "server (pid {})", pids.join(""));
            }
            let _ = writeln!(
                o,
                "  CPU               {:.3} s in the window = {:.1}% of a core",
                s.cpu_seconds, s.cpu_percent
            );
            if let Some(us) = s.cpu_us_per_delivery {
                let _ = writeln!(o, "  CPU/delivery      {us:.3} µs");
            }
            if let Some(us) = s.cpu_us_per_publish {
                let _ = writeln!(o, "  CPU/publish       {us:.3} µs");
            }
            if self.delivery.as_ref().is_some_and(|d| d.published == 0)
                && let Some(us) = s.cpu_us_per_connection_second
            {
                let _ = writeln!(
                    o,
                    "  idle CPU          {us:.3} µs per connection per second"
                );
            }
            let _ = writeln!(
                o,
                "  RSS               baseline {}, connected {}, end {}",
                mib(s.rss_baseline_bytes),
                mib(s.rss_connected_bytes),
                mib(s.rss_end_bytes)
            );
            if let Some(b) = s.rss_per_connection_bytes {
                let _ = writeln!(o, "  RSS/connection    {b:.0} bytes");
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let _ = writeln!(
                o,
                "  node {i:<12}{:.1}% of a core, RSS {} (pid {})",
                n.cpu_percent,
                mib(n.rss_end_bytes),
                n.pid
            );
        }
        if let Some(r) = &self.redis {
            let _ = writeln!(o, "redis");
            let _ = writeln!(
                o,
                "  CPU               {:.3} s in the window = {:.1}% of a core",
                r.cpu_seconds, r.cpu_percent
            );
            if let Some(us) = r.cpu_us_per_publish {
                let _ = writeln!(o, "  CPU/publish       {us:.3} µs");
            }
            if let Some(rate) = r.saturation_publishes_per_sec {
                let _ = writeln!(
                    o,
                    "  saturates at      ~{} publishes/s (one core ÷ CPU per publish)",
                    thousands(rate.round() as u64)
                );
            }
            if let Some(c) = r.commands_per_publish {
                let _ = writeln!(
                    o,
                    "  commands/publish  {c:.2} ({} in the window, script-run commands included)",
                    thousands(r.commands)
                );
            }
            if let (Some(us), Some(c)) = (
                r.cpu_us_per_connection_second,
                r.commands_per_connection_second,
            ) {
                let _ = writeln!(
                    o,
                    "  per connection    {us:.3} µs CPU and {c:.3} commands per second"
                );
            }
            for c in r.by_command.iter().take(8) {
                let per = c
                    .calls_per_publish
                    .map_or(String::new(), |p| format!("{p:.3}/publish, "));
                let _ = writeln!(
                    o,
                    "    {:<16}{per}{:.2} µs/call",
                    c.command, c.usec_per_call
                );
            }
            if let Some(b) = r.memory_bytes_per_publish {
                let _ = writeln!(
                    o,
                    "  memory            {} → {} ({b:.0} bytes per publish)",
                    mib(r.used_memory_start_bytes),
                    mib(r.used_memory_end_bytes)
                );
            }
        }
        if let Some(b) = &self.bot {
            let _ = writeln!(
                o,
                "bot CPU             {:.1}% of a core in the window",
                b.cpu_percent
            );
        }
        let problems = self.delivery.as_ref().map(|d| &d.problems);
        if problems.is_some_and(|p| !p.is_empty())
            || !self.server_log_problems.is_empty()
            || !self.notes.is_empty()
        {
            let _ = writeln!(o, "notes");
            for p in problems.into_iter().flatten() {
                let _ = writeln!(o, "  - {p}");
            }
            for p in &self.notes {
                let _ = writeln!(o, "  - {p}");
            }
            for p in &self.server_log_problems {
                let _ = writeln!(o, "  - server log: {p}");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
