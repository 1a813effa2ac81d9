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

use crate::core::counters::{
    BUCKETS, DISCONNECT_REASONS, ERROR_CODES, Histogram, ShardSnapshot, WriterCounters,
};
use crate::core::error::ErrorCode;
use crate::msg::LocalMsg;
use crate::persist::Op;
use crate::shard::runtime::Ctx;

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
    pub redis: Option<std::sync::Arc<crate::core::counters::RedisCounters>>,
    /// The writer's last reading of the data directory's disk, when it reads it
    /// (`min_free_disk_bytes` set, a store on disk).
    pub disk: Option<crate::core::health::Disk>,
    /// The event feed's counters, when the feed is on.
    pub feed: Option<std::sync::Arc<crate::persist::FeedShared>>,
    /// The hook client's counters, with `hook_url` set.
    pub hooks: Option<crate::hooks::HookStats>,
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
        redis: ctx.with(|s| s.engine().redis_counters()).flatten(),
        disk: ctx.health.disk(),
        feed: ctx.persist.feed().cloned(),
        hooks: ctx.hooks.as_ref().map(|h| h.stats()),
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
            "shardcast_signals_total",
            "counter",
            "Signal frames (typing indicators) accepted from clients.",
            |s| s.counters.signals_in,
        );
        per_shard(
            &mut out,
            "shardcast_signals_dropped_total",
            "counter",
            "Signals and receipts not queued for a member whose queue was over signal_queue_bytes.",
            |s| s.counters.signals_dropped,
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
            let name = "shardcast_read_position_writes_total";
            out.family(
                name,
                "counter",
                "Read positions written to the store (coalesced per read_interval_ms).",
            );
            out.sample(name, &[], w.read_position_writes);
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
        if let Some(h) = &self.hooks {
            use crate::hooks::{HookEvent, Outcome};
            let name = "shardcast_hook_calls_total";
            out.family(
                name,
                "counter",
                "Hook calls by event and outcome: allowed, refused, timeout, error (unreachable, \
                 non-2xx, an answer that is not the expected JSON).",
            );
            for event in HookEvent::ALL {
                for outcome in Outcome::ALL {
                    let labels = [("event", event.as_str()), ("outcome", outcome.as_str())];
                    out.sample(name, &labels, h.calls[event as usize][outcome as usize]);
                }
            }
            let mut all = Histogram::default();
            for l in &h.latency {
                all.merge(l);
            }
            out.histogram(
                "shardcast_hook_latency_seconds",
                "From a hook call's start (waiting for a slot included) to its answer or failure.",
                &all,
            );
        }
        if let Some(r) = &self.redis {
            use crate::core::counters::RedisCounters as C;
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
                (
                    "shardcast_redis_rollbacks_total",
                    "Streams whose seq went back in Redis (lost acked writes): each began a new epoch.",
                    C::get(&r.rollbacks),
                ),
            ] {
                out.family(name, "counter", help);
                out.sample(name, &[], value);
            }
        }
        if let Some(f) = &self.feed {
            let c = &f.counters;
            let get =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            for (name, kind, help, value) in [
                (
                    "shardcast_feed_recorded_total",
                    "counter",
                    "Events written to the event feed.",
                    get(&c.recorded),
                ),
                (
                    "shardcast_feed_delivered_total",
                    "counter",
                    "Feed events the webhook acknowledged with a 2xx.",
                    get(&c.delivered),
                ),
                (
                    "shardcast_feed_failed_total",
                    "counter",
                    "Webhook POSTs that failed (no answer in time, or not 2xx); each is retried.",
                    get(&c.failed),
                ),
                (
                    "shardcast_feed_backlog",
                    "gauge",
                    "Feed events stored and not yet acknowledged by the webhook.",
                    get(&c.backlog),
                ),
                (
                    "shardcast_feed_dropped_total",
                    "counter",
                    "Feed events dropped by webhook_retention before they were delivered.",
                    get(&c.dropped),
                ),
            ] {
                out.family(name, kind, help);
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

/// CPU time and resident memory of this process; `None` where there is no procfs.
fn process() -> Option<Process> {
    let s = crate::core::procfs::sample(0).ok()?;
    Some(Process {
        cpu_seconds: s.cpu_seconds,
        rss_bytes: s.rss_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::counters::{Disconnect, disconnect_index, error_index};
    use crate::core::error::CloseCode;

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
}
