//! The result of a run: the `Report` struct (serialized as-is for `--json`) and what each
//! scenario adds to it. The cost figures are in `cost`, the human summary table in `table`.
//!
//! Owns the report's fields and their meaning. It must not measure anything itself.

pub(crate) mod bigroom;
pub(crate) mod build;
mod cost;
pub(crate) mod joins;
mod table;

use serde::Serialize;

pub use crate::scenario::joins::JoinedCheck;
pub use crate::scenario::soak::SoakSample;
pub use crate::stats::{DeliveryReport, LatencySummary};
pub use crate::system::{NodeInfo, RedisInfo, TargetInfo};
pub use cost::{BotCost, CommandCost, NodeCost, RedisCost, ServerCost};

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
    /// WebSocket bytes the server sent per delivery in the window (data frames with their
    /// headers: the messages, and the acks and other frames, shared out); pub/sub scenarios.
    pub wire_bytes_per_delivery: Option<f64>,
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
    pub bigroom: Option<BigroomReport>,
    pub joins: Option<JoinsReport>,
    /// WARN/ERROR lines from a spawned server's log.
    pub server_log_problems: Vec<String>,
    pub notes: Vec<String>,
    /// No loss, duplicate, disorder, error frame or failed connection.
    pub passed: bool,
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

/// What the bigroom scenario adds. The report's window (throughput, server cost) is its first
/// rest window; its `latency` covers every live delivery from the fill's start on, and
/// `delivery` checks every member over all its joins.
#[derive(Clone, Debug, Serialize)]
pub struct BigroomReport {
    /// Members that join in the fill, publishers (members too, joined before it), and the
    /// members that leave and rejoin in the churn.
    pub members: u64,
    pub publishers: u64,
    pub churners: u64,
    /// Bot processes the clients were spread over.
    pub processes: u64,
    /// Fill start → the last member's join ack; `None` if some never got one.
    pub fill_seconds: Option<f64>,
    /// Members whose join was acked.
    pub joined: u64,
    /// Join sent → its ack, over the fill.
    pub join_latency: Option<LatencySummary>,
    /// Server CPU over the fill phase (its start until the first rest window) per member
    /// joined, in microseconds: raw, and net of the publishing, which is the fill's deliveries
    /// times the first rest window's CPU per delivery (the cost of a delivery, and its share of
    /// storing and sequencing the message, when nobody joins). Presence events that a join
    /// causes are the join's cost.
    pub cpu_us_per_join: Option<f64>,
    pub net_cpu_us_per_join: Option<f64>,
    /// Churn start → the last churning member back and caught up.
    pub churn_seconds: Option<f64>,
    /// Rejoins with `since` acked, and members back and caught up after one.
    pub rejoined: u64,
    pub back: u64,
    /// Rejoin acks with `recovered` not true, or `truncated` true; messages they replayed.
    pub not_recovered: u64,
    pub truncated: u64,
    pub replayed: u64,
    /// Rejoin sent → the last replayed message received.
    pub rejoin_latency: Option<LatencySummary>,
    /// Server CPU over the churn phase per member that left and came back (one leave and one
    /// rejoin), raw and net of the publishing as for a join.
    pub cpu_us_per_churn: Option<f64>,
    pub net_cpu_us_per_churn: Option<f64>,
    /// A cluster's Redis: commands per member joined over the fill, and per member that left
    /// and came back over the churn; raw, and net of the first rest window's rate of commands
    /// per second (publishing and the connections' upkeep) over the phase's length.
    pub redis_commands_per_join: Option<f64>,
    pub net_redis_commands_per_join: Option<f64>,
    pub redis_commands_per_churn: Option<f64>,
    pub net_redis_commands_per_churn: Option<f64>,
    /// Members whose join or leave was refused or unanswered, or whose connection ended.
    pub failed: u64,
    /// Fill, rest, churn, rest again.
    pub phases: Vec<PhaseReport>,
}

/// One phase of a bigroom run, between two of its edges.
#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    pub name: String,
    pub seconds: f64,
    /// Message frames received in the phase, and per second.
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    /// Publishes acked in the phase.
    pub publishes: u64,
    /// Frames that were not messages or replies (presence events), in the phase.
    pub other_frames: u64,
    /// The servers' CPU (all nodes) in the phase, when their pids are known.
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_percent: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    /// The bot's CPU (all its processes), as a percentage of one core.
    pub bot_cpu_percent: Option<f64>,
    /// A cluster's Redis: commands processed and CPU seconds in the phase.
    pub redis_commands: Option<u64>,
    pub redis_cpu_seconds: Option<f64>,
    /// Publish → delivery of the live messages scheduled in the phase.
    pub latency: Option<LatencySummary>,
}

/// What the joins scenario measured. The report's window is its join phase: from its start
/// until the last ack plus `settle_ms`.
#[derive(Clone, Debug, Serialize)]
pub struct JoinsReport {
    pub clients: u64,
    pub room_size: u64,
    pub rooms: u64,
    pub join_rate: f64,
    /// Clients whose join was acked, and those whose join was refused or unanswered (or whose
    /// connection ended).
    pub joined: u64,
    pub failed: u64,
    /// Phase start → the last ack; `None` when some join failed.
    pub join_seconds: Option<f64>,
    /// The phase: its start until the last ack plus `settle_ms`.
    pub phase_seconds: f64,
    pub settle_ms: u64,
    /// The servers' CPU over the phase, and per join, in microseconds: raw, and net of the idle
    /// rate (the connections' upkeep, measured over `idle_seconds` before the phase) over the
    /// phase's length. The events a join causes are the join's cost.
    pub server_cpu_seconds: Option<f64>,
    pub cpu_us_per_join: Option<f64>,
    pub net_cpu_us_per_join: Option<f64>,
    pub idle_seconds: f64,
    pub idle_cpu_percent: Option<f64>,
    /// The bot's CPU over the phase, as a percentage of one core.
    pub bot_cpu_percent: Option<f64>,
    /// Due time → ack.
    pub join_latency: Option<LatencySummary>,
    /// Frames that were not replies, by type (`joined`, `occupancy`, …), over the run: the
    /// connect phase joins nothing, so they are the joins'.
    pub frames: std::collections::BTreeMap<String, u64>,
    /// Each client got exactly one `joined` for every member that joined its room after it.
    pub joined_check: JoinedCheck,
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
