//! The cost figures of a report: the server's CPU per delivery and per publish and RSS per
//! connection, each node's share, the cluster's Redis CPU and commands per publish, and the bot's
//! own CPU, each computed from two samples at the window's edges.
//!
//! Owns how figures are derived from samples. It must not take samples itself (`procfs`,
//! `redis_info`).

use serde::Serialize;

use crate::procfs::ProcSample;
use crate::redis_info::RedisSample;

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
    pub(crate) fn compute(
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
    pub(crate) fn compute(url: &str, pid: u32, w0: &ProcSample, w1: &ProcSample) -> NodeCost {
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
    pub(crate) fn compute(w0: &RedisSample, w1: &RedisSample, work: WindowWork) -> RedisCost {
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
    pub(crate) fn compute(w0: &ProcSample, w1: &ProcSample) -> BotCost {
        let cpu = w1.cpu_since(w0);
        let wall = w1.wall_since(w0);
        BotCost {
            cpu_seconds: cpu,
            cpu_percent: if wall > 0.0 { 100.0 * cpu / wall } else { 0.0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
