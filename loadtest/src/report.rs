//! The result of a run: the `Report` struct (serialized as-is for `--json`), the cost
//! arithmetic (server CPU µs per delivery, RSS per connection, per node; Redis CPU and commands
//! per publish) and the human summary table.
//!
//! Owns how figures are derived from samples and how they are shown. It must not measure
//! anything itself.

use std::fmt::Write as _;

use serde::Serialize;

use crate::procfs::ProcSample;
use crate::redis_info::RedisSample;
use crate::scenario::soak::SoakSample;
use crate::stats::{DeliveryReport, LatencySummary};
use crate::system::TargetInfo;

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    /// "open-loop" or "closed-loop".
    pub mode: String,
    /// The scenario's own parameters.
    pub params: serde_json::Map<String, serde_json::Value>,
    pub target: TargetInfo,
    pub client_cpus: Option<String>,
    pub client_threads: usize,
    /// Connections held during the window (churn: cycles attempted).
    pub connections: u64,
    /// Time to open and join all connections.
    pub connect_seconds: f64,
    pub warmup_seconds: f64,
    pub window_seconds: f64,
    /// Message frames received during the window.
    pub deliveries_in_window: u64,
    pub deliveries_per_sec: f64,
    pub publishes_per_sec: f64,
    /// Acks received during the window: publishes the server stored (under its durability) and
    /// confirmed. The throughput figure of a closed-loop (`--max`) run.
    pub acks_per_sec: f64,
    /// The exact delivery check (not for churn).
    pub delivery: Option<DeliveryReport>,
    /// Scheduled send → received, over messages scheduled in the window.
    pub latency: Option<LatencySummary>,
    /// Scheduled send → ack (closed loop: actual send → ack), over messages scheduled in the
    /// window.
    pub ack_latency: Option<LatencySummary>,
    /// Scheduled send → the bot actually wrote it (the bot's own timer lateness).
    pub send_lag: Option<LatencySummary>,
    /// The server's cost, when its pid is known; a cluster's nodes added up, when every node's
    /// pid is known.
    pub server: Option<ServerCost>,
    /// Each node's share, when there are several.
    pub nodes: Vec<NodeCost>,
    /// The cluster's Redis, when the bot can read its INFO.
    pub redis: Option<RedisCost>,
    /// The bot's own CPU over the window.
    pub bot: Option<BotCost>,
    pub churn: Option<ChurnReport>,
    pub soak: Option<SoakReport>,
    pub storm: Option<StormReport>,
    /// WARN/ERROR lines from a spawned server's log.
    pub server_log_problems: Vec<String>,
    pub notes: Vec<String>,
    /// No loss, duplicate, disorder, error frame or failed connection.
    pub passed: bool,
}

/// The server's CPU and memory, from `/proc`.
#[derive(Clone, Debug, Serialize)]
pub struct ServerCost {
    /// The processes measured together (one per node).
    pub pids: Vec<u32>,
    /// CPU seconds (user + system) during the window.
    pub cpu_seconds: f64,
    /// The same, as a percentage of one core.
    pub cpu_percent: f64,
    /// Server CPU per delivered message in the window, in microseconds.
    pub cpu_us_per_delivery: Option<f64>,
    /// Server CPU per acked publish in the window, in microseconds: the cost of storing a
    /// message, plus its share of delivering it.
    pub cpu_us_per_publish: Option<f64>,
    /// Server CPU per connection per second in the window, in microseconds (idle cost).
    pub cpu_us_per_connection_second: Option<f64>,
    /// RSS before the bot connected.
    pub rss_baseline_bytes: u64,
    /// RSS once every connection was open and joined.
    pub rss_connected_bytes: u64,
    /// RSS at the end of the window.
    pub rss_end_bytes: u64,
    /// (RSS at the end of the window − baseline) / connections.
    pub rss_per_connection_bytes: Option<f64>,
}

impl ServerCost {
    pub fn compute(
        pids: Vec<u32>,
        baseline: &ProcSample,
        connected: &ProcSample,
        window: (&ProcSample, &ProcSample),
        work: WindowWork,
    ) -> ServerCost {
        let WindowWork {
            deliveries,
            publishes,
            connections,
        } = work;
        let (w0, w1) = window;
        let cpu = w1.cpu_since(w0);
        let wall = w1.wall_since(w0);
        ServerCost {
            pids,
            cpu_seconds: cpu,
            cpu_percent: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
            cpu_us_per_delivery: (deliveries > 0).then(|| cpu * 1e6 / deliveries as f64),
            cpu_us_per_publish: (publishes > 0).then(|| cpu * 1e6 / publishes as f64),
            cpu_us_per_connection_second: (connections > 0 && wall > 0.0)
                .then(|| cpu * 1e6 / connections as f64 / wall),
            rss_baseline_bytes: baseline.rss_bytes,
            rss_connected_bytes: connected.rss_bytes,
            rss_end_bytes: w1.rss_bytes,
            rss_per_connection_bytes: (connections > 0)
                .then(|| (w1.rss_bytes as f64 - baseline.rss_bytes as f64) / connections as f64),
        }
    }
}

/// One node's CPU and memory in the window.
#[derive(Clone, Debug, Serialize)]
pub struct NodeCost {
    pub url: String,
    pub pid: u32,
    pub cpu_seconds: f64,
    /// Percentage of one core.
    pub cpu_percent: f64,
    pub rss_end_bytes: u64,
}

impl NodeCost {
    pub fn compute(url: &str, pid: u32, w0: &ProcSample, w1: &ProcSample) -> NodeCost {
        let (cpu, wall) = (w1.cpu_since(w0), w1.wall_since(w0));
        NodeCost {
            url: url.to_string(),
            pid,
            cpu_seconds: cpu,
            cpu_percent: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
            rss_end_bytes: w1.rss_bytes,
        }
    }
}

/// The cluster's Redis in the window, from `INFO all` at its edges.
#[derive(Clone, Debug, Serialize)]
pub struct RedisCost {
    /// `used_cpu_sys + used_cpu_user` in the window (every Redis thread).
    pub cpu_seconds: f64,
    pub cpu_percent: f64,
    /// Redis CPU per acked publish (room publish or direct message), in microseconds.
    pub cpu_us_per_publish: Option<f64>,
    /// Publishes per second at which this CPU per publish fills one core: where a
    /// single-threaded Redis saturates, extrapolated from the window (1 s ÷ CPU per publish).
    pub saturation_publishes_per_sec: Option<f64>,
    /// Commands Redis processed in the window (`total_commands_processed`, which counts the
    /// commands a script runs too), without the bot's own INFO.
    pub commands: u64,
    pub commands_per_publish: Option<f64>,
    /// Redis CPU and commands per connection held, per second: the background cost (presence
    /// and session refreshes) that grows with connections, not messages; the idle figure.
    pub cpu_us_per_connection_second: Option<f64>,
    pub commands_per_connection_second: Option<f64>,
    /// By command, busiest first: calls per acked publish and Redis's time per call.
    pub by_command: Vec<CommandCost>,
    /// `used_memory` at the window's edges, and its growth per acked publish (history the
    /// streams keep until they reach their retention).
    pub used_memory_start_bytes: u64,
    pub used_memory_end_bytes: u64,
    pub memory_bytes_per_publish: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandCost {
    pub command: String,
    pub calls: u64,
    pub calls_per_publish: Option<f64>,
    pub usec_per_call: f64,
}

impl RedisCost {
    pub fn compute(w0: &RedisSample, w1: &RedisSample, work: WindowWork) -> RedisCost {
        let WindowWork {
            publishes,
            connections,
            ..
        } = work;
        let cpu = (w1.cpu_seconds - w0.cpu_seconds).max(0.0);
        let wall = match (w0.at, w1.at) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let per_publish = |x: f64| (publishes > 0).then(|| x / publishes as f64);
        let cpu_us_per_publish = per_publish(cpu * 1e6);
        let commands = w1.commands_since(w0);
        let per_conn_sec =
            |x: f64| (connections > 0 && wall > 0.0).then(|| x / connections as f64 / wall);
        RedisCost {
            cpu_seconds: cpu,
            cpu_percent: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
            cpu_us_per_publish,
            saturation_publishes_per_sec: cpu_us_per_publish
                .filter(|us| *us > 0.0)
                .map(|us| 1e6 / us),
            commands,
            commands_per_publish: per_publish(commands as f64),
            cpu_us_per_connection_second: per_conn_sec(cpu * 1e6),
            commands_per_connection_second: per_conn_sec(commands as f64),
            by_command: w1
                .busiest_since(w0)
                .into_iter()
                .map(|(command, s)| CommandCost {
                    command,
                    calls: s.calls,
                    calls_per_publish: per_publish(s.calls as f64),
                    usec_per_call: s.usec as f64 / s.calls.max(1) as f64,
                })
                .collect(),
            used_memory_start_bytes: w0.used_memory,
            used_memory_end_bytes: w1.used_memory,
            memory_bytes_per_publish: per_publish(w1.used_memory as f64 - w0.used_memory as f64),
        }
    }
}

/// What the server did in the window, to divide its CPU by.
#[derive(Clone, Copy, Debug, Default)]
pub struct WindowWork {
    /// Message frames received by the bot.
    pub deliveries: u64,
    /// Acks received by the bot.
    pub publishes: u64,
    /// Connections held.
    pub connections: u64,
}

/// The bot's own CPU during the window: a bot near 100% of its cores is the bottleneck.
#[derive(Clone, Debug, Serialize)]
pub struct BotCost {
    pub cpu_seconds: f64,
    /// Percentage of one core.
    pub cpu_percent: f64,
}

impl BotCost {
    pub fn compute(w0: &ProcSample, w1: &ProcSample) -> BotCost {
        let cpu = w1.cpu_since(w0);
        let wall = w1.wall_since(w0);
        BotCost {
            cpu_seconds: cpu,
            cpu_percent: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
        }
    }
}

/// What the churn scenario measured.
#[derive(Clone, Debug, Serialize)]
pub struct ChurnReport {
    /// Cycles started (connect, join, close).
    pub attempted: u64,
    pub completed: u64,
    pub failed: u64,
    /// Cycles completed per second during the window.
    pub cycles_per_sec: f64,
    /// Scheduled start → `welcome` received.
    pub connect_latency: Option<LatencySummary>,
    /// Join sent → ack.
    pub join_latency: Option<LatencySummary>,
    /// Close sent → the server's close frame.
    pub close_latency: Option<LatencySummary>,
    /// Server CPU per completed cycle in the window, in microseconds.
    pub server_cpu_us_per_cycle: Option<f64>,
    /// Server RSS a second after the last cycle, minus the baseline (growth here hints at a
    /// leak).
    pub server_rss_retained_bytes: Option<i64>,
    /// A cluster's Redis CPU and commands per completed cycle in the window (sessions,
    /// presence, subscriptions).
    pub redis_cpu_us_per_cycle: Option<f64>,
    pub redis_commands_per_cycle: Option<f64>,
}

/// What a storm adds. The report's window, throughput and server cost are the calm window
/// before it; `latency` is the steady connections' from the drop until the publishers stopped.
#[derive(Clone, Debug, Serialize)]
pub struct StormReport {
    /// Clients that dropped and reconnected; the others (publishers, steady rooms) stayed.
    pub reconnecting: u64,
    pub staying: u64,
    pub down_ms: u64,
    /// Reconnected clients that got their replay to the end.
    pub back: u64,
    /// Reconnect signal → the last client back and caught up; `None` if some never were.
    pub back_seconds: Option<f64>,
    /// Connect attempts that failed (each is retried up to twice).
    pub failed_handshakes: u64,
    /// Rejoin acks with `recovered` not true, or `truncated` true.
    pub not_recovered: u64,
    pub truncated: u64,
    /// Messages the rejoin acks said were replayed.
    pub replayed: u64,
    /// Socket connect → `welcome`, per reconnect.
    pub connect_to_welcome: Option<LatencySummary>,
    /// Reconnect signal → `welcome` (adds the time the bot took to start each connect).
    pub signal_to_welcome: Option<LatencySummary>,
    /// Reconnect signal → the last replayed message received.
    pub signal_to_caught_up: Option<LatencySummary>,
    /// Every connection's publish→deliver latency in the calm window, for comparison.
    pub calm_latency: Option<LatencySummary>,
    /// Server CPU from the reconnect signal until the last client was caught up, in seconds,
    /// and per reconnect: raw, and net of the calm window's CPU rate (the publishing that went
    /// on meanwhile).
    pub reconnect_cpu_seconds: Option<f64>,
    pub cpu_us_per_reconnect: Option<f64>,
    pub net_cpu_us_per_reconnect: Option<f64>,
    /// The same for the drop: server CPU from the drop to the reconnect signal, net of the calm
    /// rate, per dropped client.
    pub net_cpu_us_per_disconnect: Option<f64>,
    /// The bot's CPU from the reconnect signal until all were back, as a percentage of one core.
    pub bot_cpu_percent_reconnecting: Option<f64>,
}

/// What a soak run adds: the server's resources over time and the churn cycles' outcome.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// RSS at the last sample against the first one after the warm-up, in percent.
    pub rss_growth_percent: Option<f64>,
    /// The highest RSS after the warm-up against the first one, in percent.
    pub peak_rss_growth_percent: Option<f64>,
    /// The bound `rss_growth_percent` was held to.
    pub max_rss_growth_percent: f64,
    /// Churn cycles (connect, join, history page, close) that completed and that failed.
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    /// Seconds from the start of the run to the end of the warm-up.
    pub warmup_end_secs: f64,
    pub samples: Vec<SoakSample>,
}

fn thousands(n: u64) -> String {
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

fn latency_row(out: &mut String, name: &str, l: &Option<LatencySummary>) {
    if let Some(l) = l {
        let _ = writeln!(
            out,
            "  {name:<18}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>9.3}{:>12}",
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
        }
        if self.deliveries_in_window > 0 || self.publishes_per_sec > 0.0 {
            let _ = writeln!(o, "throughput (window)");
            let _ = writeln!(
                o,
                "  deliveries/s      {}",
                thousands(self.deliveries_per_sec.round() as u64)
            );
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
        if !rows.is_empty() {
            let _ = writeln!(
                o,
                "latency (ms)        {:>9}{:>9}{:>9}{:>9}{:>9}{:>12}",
                "p50", "p90", "p99", "p99.9", "max", "count"
            );
            for (name, l) in rows {
                latency_row(&mut o, name, l);
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

    #[test]
    fn cpu_is_divided_by_deliveries_and_by_publishes() {
        let t0 = std::time::Instant::now();
        let sample = |secs: u64, cpu: f64| ProcSample {
            at: t0 + std::time::Duration::from_secs(secs),
            cpu_seconds: cpu,
            rss_bytes: 1 << 20,
        };
        let (w0, w1) = (sample(1, 1.0), sample(3, 2.0));
        let work = WindowWork {
            deliveries: 0,
            publishes: 100_000,
            connections: 10,
        };
        let c = ServerCost::compute(vec![7], &w0, &w0, (&w0, &w1), work);
        assert_eq!(c.cpu_percent, 50.0);
        assert_eq!(
            c.cpu_us_per_delivery, None,
            "no deliveries: no per-delivery figure"
        );
        assert_eq!(c.cpu_us_per_publish, Some(10.0));
    }

    #[test]
    fn redis_cost_per_publish() {
        let t0 = std::time::Instant::now();
        let mut w0 = RedisSample {
            at: Some(t0),
            cpu_seconds: 1.0,
            total_commands: 1_000,
            used_memory: 1_000_000,
            ..Default::default()
        };
        w0.calls.insert(
            "evalsha".into(),
            crate::redis_info::CommandStat {
                calls: 100,
                usec: 0,
            },
        );
        let mut w1 = w0.clone();
        w1.at = Some(t0 + std::time::Duration::from_secs(2));
        w1.cpu_seconds = 1.5;
        w1.total_commands = 5_000;
        w1.used_memory = 1_200_000;
        w1.calls.insert(
            "evalsha".into(),
            crate::redis_info::CommandStat {
                calls: 1_100,
                usec: 10_000,
            },
        );
        let work = WindowWork {
            deliveries: 0,
            publishes: 1_000,
            connections: 100,
        };
        let c = RedisCost::compute(&w0, &w1, work);
        assert_eq!(c.cpu_percent, 25.0);
        assert_eq!(c.cpu_us_per_publish, Some(500.0));
        assert_eq!(c.saturation_publishes_per_sec, Some(2_000.0));
        assert_eq!(c.commands_per_publish, Some(4.0));
        assert_eq!(c.by_command[0].calls_per_publish, Some(1.0));
        assert_eq!(c.by_command[0].usec_per_call, 10.0);
        assert_eq!(c.memory_bytes_per_publish, Some(200.0));
        assert_eq!(c.cpu_us_per_connection_second, Some(2_500.0));
        assert_eq!(c.commands_per_connection_second, Some(20.0));
        let idle = WindowWork {
            publishes: 0,
            ..work
        };
        assert_eq!(RedisCost::compute(&w0, &w1, idle).cpu_us_per_publish, None);
    }
}
