//! Metrics: the counters each shard and the store writer keep, the scrape that gathers them,
//! and the two renderings of a scrape (`GET /metrics` in the Prometheus text format 0.0.4, and
//! the JSON of `GET /api/stats`).
//!
//! Owns the metric names, the histogram buckets and the process figures read from `/proc`. It
//! must not decide when anything is counted (the shard and the writer do, with plain adds on
//! state they alone own) and must not hold state between scrapes: a scrape asks every shard
//! (`LocalMsg::Stats`) and the writer (`Op::Stats`) for a snapshot and merges them.

use std::fmt::{Display, Write as _};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::{CloseCode, ErrorCode};
use crate::msg::{LocalMsg, ShardId};
use crate::persist::Op;
use crate::shard::runtime::Ctx;

/// Every reply error code, in the order of `ShardCounters::errors`.
const ERROR_CODES: [ErrorCode; 10] = [
    ErrorCode::BadRequest,
    ErrorCode::UnknownType,
    ErrorCode::InvalidName,
    ErrorCode::NotMember,
    ErrorCode::Forbidden,
    ErrorCode::TooLarge,
    ErrorCode::RateLimited,
    ErrorCode::Unavailable,
    ErrorCode::Cancelled,
    ErrorCode::Unauthorized,
];

fn error_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::BadRequest => 0,
        ErrorCode::UnknownType => 1,
        ErrorCode::InvalidName => 2,
        ErrorCode::NotMember => 3,
        ErrorCode::Forbidden => 4,
        ErrorCode::TooLarge => 5,
        ErrorCode::RateLimited => 6,
        ErrorCode::Unavailable => 7,
        ErrorCode::Cancelled => 8,
        ErrorCode::Unauthorized => 9,
    }
}

/// Why a connection ended: the close code the server sent, or `LOST` when the socket ended
/// (EOF, reset, a failed write) before anything closed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disconnect {
    Closed(CloseCode),
    Lost,
}

/// The `reason` label of each `Disconnect`, in the order of `ShardCounters::disconnects`.
const DISCONNECT_REASONS: [&str; 12] = [
    "normal",
    "going_away",
    "protocol_error",
    "idle_timeout",
    "too_big",
    "internal",
    "slow_consumer",
    "token_expired",
    "replaced",
    "kicked",
    "connection_lost",
    "invalid_payload",
];

fn disconnect_index(d: Disconnect) -> usize {
    match d {
        Disconnect::Closed(code) => match code {
            CloseCode::Normal => 0,
            CloseCode::GoingAway => 1,
            CloseCode::ProtocolError => 2,
            CloseCode::Policy => 3,
            CloseCode::TooBig => 4,
            CloseCode::Internal => 5,
            CloseCode::SlowConsumer => 6,
            CloseCode::TokenExpired => 7,
            CloseCode::Replaced => 8,
            CloseCode::Kicked => 9,
            CloseCode::InvalidPayload => 11,
        },
        Disconnect::Lost => 10,
    }
}

/// Histogram upper bounds: nanoseconds, and the `le` label (seconds) for each.
const BUCKETS: [(u64, &str); 15] = [
    (50_000, "0.00005"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
];

/// A latency histogram with fixed buckets, so two of them merge by adding counts. Owned by one
/// thread; observing is a bucket search over 15 bounds and three non-atomic adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last counts what is over the largest bound.
    counts: [u64; BUCKETS.len() + 1],
    sum_ns: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS
            .iter()
            .position(|&(bound, _)| ns <= bound)
            .unwrap_or(BUCKETS.len());
        self.counts[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// What a shard counts as it works. Plain integers in the shard's own state: an increment on
/// the message path is one non-atomic add, and no cache line is shared with another core.
#[derive(Clone, Debug, Default)]
pub struct ShardCounters {
    /// Data messages read from clients (text or binary, including discarded over-size ones).
    pub frames_in: u64,
    /// Frames queued for clients: welcome, replies, messages, events, pings, pongs, close
    /// frames. A replay of stored messages is queued as one buffer and counts as one.
    pub frames_out: u64,
    /// Live frames (messages, presence events) queued or held for a member or recipient.
    pub deliveries: u64,
    /// Room messages this shard sequenced as the room's home.
    pub room_publishes: u64,
    /// Direct messages this shard sequenced as the recipient's home.
    pub direct_publishes: u64,
    /// Gaps in a stream's live frames that the hub asked the engine to read (a live seq above
    /// the last one handed on, or a catch-up behind the room).
    pub gaps: u64,
    /// Live room frames dropped because their seq had been handed on already.
    pub duplicates_dropped: u64,
    /// Panics caught while handling a message, a connection's input or a flush.
    pub panics: u64,
    errors: [u64; ERROR_CODES.len()],
    disconnects: [u64; DISCONNECT_REASONS.len()],
    /// At the home: from sequencing a message to handing it to fan-out (see ARCHITECTURE.md).
    pub publish_latency: Histogram,
}

impl ShardCounters {
    pub fn error(&mut self, code: ErrorCode) {
        self.errors[error_index(code)] += 1;
    }

    pub fn disconnect(&mut self, d: Disconnect) {
        self.disconnects[disconnect_index(d)] += 1;
    }
}

/// One shard's answer to a scrape.
#[derive(Clone, Debug, Default)]
pub struct ShardSnapshot {
    pub shard: ShardId,
    /// Upgraded connections on this shard.
    pub connections: u64,
    /// Rooms with at least one live member connected to this shard.
    pub rooms_local: u64,
    /// Rooms homed on this shard with at least one member anywhere. Summed over shards: the
    /// rooms in use.
    pub rooms_homed: u64,
    /// Users homed on this shard with a connection (or an inbox replay out) anywhere.
    pub users_homed: u64,
    /// Bytes queued and not yet written, over this shard's connections.
    pub queued_bytes: u64,
    pub counters: ShardCounters,
}

/// What the store writer counts. It is one thread; these are plain fields of it.
#[derive(Clone, Debug, Default)]
pub struct WriterCounters {
    /// Time in `Store::write` per batch (group commit, including the fsync under `sync`).
    pub commit_latency: Histogram,
    pub write_failures: u64,
    /// History and sync reads that failed (each answered with `unavailable`).
    pub read_errors: u64,
}

/// The process, from `/proc/self`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Process {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
}

/// One scrape: every shard that answered, the writer (unless it has stopped), the process.
pub struct Snapshot {
    pub shards: Vec<ShardSnapshot>,
    pub writer: Option<WriterCounters>,
    pub process: Option<Process>,
    /// The Redis engine's counters, in cluster mode.
    pub redis: Option<std::sync::Arc<crate::cluster::RedisCounters>>,
    /// The writer's last reading of the data directory's disk, when it reads it
    /// (`min_free_disk_bytes` set, a store on disk).
    pub disk: Option<crate::health::Disk>,
}

/// Asks every shard and the writer for their counters and waits for the answers. A shard or
/// writer that has stopped (shutdown) is left out rather than waited for.
pub async fn gather(ctx: &Ctx) -> Snapshot {
    let asks: Vec<_> = (0..ctx.router.shards())
        .map(|shard| {
            let (reply, rx) = oneshot::channel();
            ctx.router.send(shard, LocalMsg::Stats { reply });
            rx
        })
        .collect();
    let (reply, writer) = oneshot::channel();
    ctx.persist.send(vec![Op::Stats(reply)]);
    let mut shards = Vec::with_capacity(asks.len());
    for rx in asks {
        shards.extend(rx.await.ok());
    }
    Snapshot {
        shards,
        writer: writer.await.ok(),
        process: process(),
        redis: ctx
            .with(|s| s.cluster().map(|c| c.counters.clone()))
            .flatten(),
        disk: ctx.health.disk(),
    }
}

impl Snapshot {
    /// The Prometheus text exposition format, version 0.0.4.
    pub fn prometheus(&self) -> String {
        let mut out = Exposition::default();
        let per_shard = |out: &mut Exposition, name, kind, help, f: fn(&ShardSnapshot) -> u64| {
            out.family(name, kind, help);
            for s in &self.shards {
                out.sample(name, &[("shard", &s.shard.to_string())], f(s));
            }
        };
        per_shard(
            &mut out,
            "shardcast_connections",
            "gauge",
            "WebSocket connections open on the shard.",
            |s| s.connections,
        );
        per_shard(
            &mut out,
            "shardcast_rooms_local",
            "gauge",
            "Rooms with at least one member connected to the shard.",
            |s| s.rooms_local,
        );
        per_shard(
            &mut out,
            "shardcast_rooms_homed",
            "gauge",
            "Rooms homed on the shard with at least one member; the sum is the rooms in use.",
            |s| s.rooms_homed,
        );
        per_shard(
            &mut out,
            "shardcast_users_homed",
            "gauge",
            "Users homed on the shard with a connection anywhere; the sum is the users online.",
            |s| s.users_homed,
        );
        per_shard(
            &mut out,
            "shardcast_stream_gaps_total",
            "counter",
            "Gaps in a stream's live frames filled by a read from the engine.",
            |s| s.counters.gaps,
        );
        per_shard(
            &mut out,
            "shardcast_duplicates_dropped_total",
            "counter",
            "Live room frames dropped because their seq was already handed on.",
            |s| s.counters.duplicates_dropped,
        );
        per_shard(
            &mut out,
            "shardcast_panics_total",
            "counter",
            "Panics caught in a shard; any is a bug (see /readyz).",
            |s| s.counters.panics,
        );
        per_shard(
            &mut out,
            "shardcast_frames_in_total",
            "counter",
            "Data messages read from clients.",
            |s| s.counters.frames_in,
        );
        per_shard(
            &mut out,
            "shardcast_frames_out_total",
            "counter",
            "Frames queued for clients (a replay of stored messages counts as one).",
            |s| s.counters.frames_out,
        );
        per_shard(
            &mut out,
            "shardcast_deliveries_total",
            "counter",
            "Live messages and events queued for a member or recipient.",
            |s| s.counters.deliveries,
        );
        per_shard(
            &mut out,
            "shardcast_outbound_queue_bytes",
            "gauge",
            "Bytes queued for clients and not yet written.",
            |s| s.queued_bytes,
        );

        let name = "shardcast_publishes_total";
        out.family(
            name,
            "counter",
            "Messages sequenced at their home shard: room publishes and direct messages.",
        );
        for s in &self.shards {
            let shard = s.shard.to_string();
            let c = &s.counters;
            out.sample(
                name,
                &[("shard", &shard), ("kind", "room")],
                c.room_publishes,
            );
            out.sample(
                name,
                &[("shard", &shard), ("kind", "direct")],
                c.direct_publishes,
            );
        }

        let name = "shardcast_errors_total";
        out.family(name, "counter", "Error replies sent to clients, by code.");
        for (i, code) in ERROR_CODES.iter().enumerate() {
            let mut n: u64 = self.shards.iter().map(|s| s.counters.errors[i]).sum();
            if *code == ErrorCode::Unavailable {
                n += self.writer.as_ref().map_or(0, |w| w.read_errors);
            }
            out.sample(name, &[("code", code.as_str())], n);
        }

        let name = "shardcast_disconnects_total";
        out.family(name, "counter", "Connections ended, by reason.");
        for (i, reason) in DISCONNECT_REASONS.iter().enumerate() {
            let n: u64 = self.shards.iter().map(|s| s.counters.disconnects[i]).sum();
            out.sample(name, &[("reason", reason)], n);
        }

        let mut publish = Histogram::default();
        for s in &self.shards {
            publish.merge(&s.counters.publish_latency);
        }
        out.histogram(
            "shardcast_publish_latency_seconds",
            "From sequencing a message at its home to handing it to fan-out (after the store \
             write under sync durability).",
            &publish,
        );
        if let Some(w) = &self.writer {
            out.histogram(
                "shardcast_store_commit_seconds",
                "Time in the store's write of one batch (group commit, with its fsync under sync \
                 durability).",
                &w.commit_latency,
            );
            let name = "shardcast_store_write_failures_total";
            out.family(name, "counter", "Store batch writes that failed.");
            out.sample(name, &[], w.write_failures);
        }
        if let Some(disk) = self.disk {
            let name = "shardcast_store_disk_free_bytes";
            out.family(
                name,
                "gauge",
                "Free bytes on the data directory's filesystem, read by the store writer every \
                 100 ms while writing and every second while idle.",
            );
            out.sample(name, &[], disk.free);
            let name = "shardcast_store_disk_low";
            out.family(
                name,
                "gauge",
                "1 while free disk space is below min_free_disk_bytes: publish and send are refused.",
            );
            out.sample(name, &[], u8::from(disk.low));
        }
        if let Some(r) = &self.redis {
            use crate::cluster::RedisCounters as C;
            for (name, help, value) in [
                (
                    "shardcast_redis_round_trips_total",
                    "Redis commands and scripts answered.",
                    C::get(&r.round_trips),
                ),
                (
                    "shardcast_redis_errors_total",
                    "Redis commands and scripts that failed (unreachable, timed out, error reply).",
                    C::get(&r.errors),
                ),
                (
                    "shardcast_redis_pubsub_reconnects_total",
                    "Times the subscription connection was replaced (dropped or silent).",
                    C::get(&r.pubsub_reconnects),
                ),
                (
                    "shardcast_redis_gap_fills_total",
                    "Messages read from Redis history after a subscription gap.",
                    C::get(&r.gap_fills),
                ),
                (
                    "shardcast_redis_received_total",
                    "Messages received over Redis pub/sub.",
                    C::get(&r.received),
                ),
            ] {
                out.family(name, "counter", help);
                out.sample(name, &[], value);
            }
        }
        if let Some(p) = self.process {
            let name = "process_cpu_seconds_total";
            out.family(
                name,
                "counter",
                "Total user and system CPU time spent in seconds.",
            );
            out.sample(name, &[], p.cpu_seconds);
            let name = "process_resident_memory_bytes";
            out.family(name, "gauge", "Resident memory size in bytes.");
            out.sample(name, &[], p.rss_bytes);
        }
        out.text
    }

    /// The `GET /api/stats` body: connections, rooms and messages in and out, per shard and in
    /// total. `rooms` is `shardcast_rooms_homed` (so the total is the rooms in use),
    /// `messages_in` / `messages_out` are `shardcast_frames_in_total` / `_out_total`, and
    /// `deliveries` is `shardcast_deliveries_total`.
    pub fn stats_json(&self) -> Bytes {
        let (mut connections, mut rooms, mut messages_in, mut messages_out, mut deliveries) =
            (0, 0, 0, 0, 0);
        let shards: Vec<_> = self
            .shards
            .iter()
            .map(|s| {
                connections += s.connections;
                rooms += s.rooms_homed;
                messages_in += s.counters.frames_in;
                messages_out += s.counters.frames_out;
                deliveries += s.counters.deliveries;
                serde_json::json!({
                    "shard": s.shard,
                    "connections": s.connections,
                    "rooms": s.rooms_homed,
                    "messages_in": s.counters.frames_in,
                    "messages_out": s.counters.frames_out,
                    "deliveries": s.counters.deliveries,
                })
            })
            .collect();
        let body = serde_json::json!({
            "shards": shards,
            "total": {
                "connections": connections,
                "rooms": rooms,
                "messages_in": messages_in,
                "messages_out": messages_out,
                "deliveries": deliveries,
            },
        });
        Bytes::from(body.to_string())
    }
}

/// `GET /api/stats`'s body, for the API router.
pub async fn stats_json(ctx: &Ctx) -> Bytes {
    gather(ctx).await.stats_json()
}

/// Text in the exposition format: `# HELP` and `# TYPE` before each family's samples.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// `help` must hold no backslash or newline (the names and help here are constants).
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        debug_assert!(!help.contains(['\\', '\n']), "{help}");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample. Label values are shard numbers and fixed identifiers: nothing to escape.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        for (i, (key, value)) in labels.iter().enumerate() {
            debug_assert!(!value.contains(['\\', '"', '\n']), "{value}");
            let sep = if i == 0 { '{' } else { ',' };
            let _ = write!(self.text, "{sep}{key}=\"{value}\"");
        }
        if !labels.is_empty() {
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// `_bucket` (cumulative, ending with `+Inf`), `_sum` in seconds, `_count`.
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (&(_, le), n) in BUCKETS.iter().zip(h.counts) {
            cumulative += n;
            self.sample(&bucket, &[("le", le)], cumulative);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count());
        let sum = Duration::from_nanos(h.sum_ns).as_secs_f64();
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], h.count());
    }
}

/// CPU time and resident memory from `/proc/self`; `None` where there is no procfs.
fn process() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    Some(Process {
        cpu_seconds: stat_cpu_ticks(&stat)? as f64 / clock_ticks_per_second(),
        rss_bytes: status_rss_kib(&status)? * 1024,
    })
}

/// Clock ticks per second for `/proc/self/stat` times (normally 100).
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant and has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime in clock ticks. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`: utime is field 14, stime 15.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line["VmRSS:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bucket_merge_and_render_cumulatively() {
        let mut a = Histogram::default();
        a.observe(Duration::from_micros(50)); // on the first bound: le="0.00005"
        a.observe(Duration::from_millis(3));
        let mut b = Histogram::default();
        b.observe(Duration::from_secs(10)); // over every bound: +Inf only
        a.merge(&b);
        assert_eq!(a.count(), 3);
        let mut out = Exposition::default();
        out.histogram("h", "help", &a);
        let lines: Vec<&str> = out.text.lines().collect();
        assert_eq!(lines[1], "# TYPE h histogram");
        assert_eq!(lines[2], "h_bucket{le=\"0.00005\"} 1");
        assert!(lines.contains(&"h_bucket{le=\"0.0025\"} 1"));
        assert!(lines.contains(&"h_bucket{le=\"0.005\"} 2"));
        assert!(lines.contains(&"h_bucket{le=\"2.5\"} 2"));
        assert!(lines.contains(&"h_bucket{le=\"+Inf\"} 3"));
        assert!(lines.contains(&"h_sum 10.00305"), "{lines:?}");
        assert!(lines.contains(&"h_count 3"));
    }

    #[test]
    fn every_code_and_reason_has_its_own_series() {
        for (i, code) in ERROR_CODES.iter().enumerate() {
            assert_eq!(error_index(*code), i);
        }
        let codes = [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::ProtocolError,
            CloseCode::Policy,
            CloseCode::TooBig,
            CloseCode::Internal,
            CloseCode::SlowConsumer,
            CloseCode::TokenExpired,
            CloseCode::Replaced,
            CloseCode::Kicked,
            CloseCode::InvalidPayload,
        ];
        let mut seen: Vec<usize> = codes
            .iter()
            .map(|&c| disconnect_index(Disconnect::Closed(c)))
            .collect();
        seen.push(disconnect_index(Disconnect::Lost));
        seen.sort_unstable();
        assert_eq!(seen, (0..DISCONNECT_REASONS.len()).collect::<Vec<_>>());
        assert_eq!(
            DISCONNECT_REASONS[disconnect_index(Disconnect::Closed(CloseCode::SlowConsumer))],
            "slow_consumer"
        );
    }

    #[test]
    fn parses_proc_stat_and_status() {
        let stat = "1234 (we ird) name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 \
                    12345 1000000 500 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        let status = "Name:\tshardcast\nVmRSS:\t    4321 kB\nThreads:\t3\n";
        assert_eq!(status_rss_kib(status), Some(4321));
    }
}
