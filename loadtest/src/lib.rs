//! shardcast-loadtest: a bot that opens thousands of real WebSocket clients against a shardcast
//! server or a cluster of nodes, drives one of seven scenarios (fanout, chat, dm, idle, churn,
//! soak, storm), checks delivery exactly, measures latency with HDR histograms, reads the servers' CPU
//! and RSS from `/proc` and a cluster's Redis cost from its `INFO`.
//!
//! [`run`] is the whole thing: options in, [`Report`] out. From the workspace root:
//!
//! ```text
//! cargo build --release
//! cargo run --release -p shardcast-loadtest -- fanout --spawn-server --server-cpus 0 --client-cpus 1
//! cargo run --release -p shardcast-loadtest -- chat --users 10000 --room-size 10 --rate 1 --spawn-server
//! cargo run --release -p shardcast-loadtest -- idle --connections 15000 --duration 30 --spawn-server
//! cargo run --release -p shardcast-loadtest -- dm --users 2000 --rate 5 --url ws://127.0.0.1:8080
//! cargo run --release -p shardcast-loadtest -- churn --rate 500 --spawn-server --json
//! cargo run --release -p shardcast-loadtest -- soak --duration 600 --warmup 60 --spawn-server
//! cargo run --release -p shardcast-loadtest -- storm --clients 15000 --spawn-server --server-cpus 0 --client-cpus 1
//! cargo run --release -p shardcast-loadtest -- chat --max --users 100 --room-size 1 --durability memory --spawn-server
//! cargo run --release -p shardcast-loadtest -- fanout --spawn-cluster 3
//! cargo run --release -p shardcast-loadtest -- chat --url ws://127.0.0.1:8001,ws://127.0.0.1:8002 --redis-url redis://127.0.0.1:6379
//! ```
//!
//! `--durability` (sync, the default, async or memory) is passed to a spawned server, or declared
//! for a `--url` one, and the report shows it. `chat --room-size 1` leaves every user alone in
//! its room: publishes are stored and acked but delivered to nobody, so acks/s and server CPU per
//! publish measure the store path.
//!
//! A cluster (several `--url`s, or `--spawn-cluster N`: a redis-server and N redis-engine
//! nodes) gets connection i on node i mod N, so every room has members on every node, and the
//! same exact check then covers delivery across nodes. The report adds each node's CPU and the
//! Redis's CPU, commands and memory per publish.
//!
//! The modules:
//! - `cli`: the options (also the library's input).
//! - `system`: the servers under test and the cluster's Redis, given or spawned.
//! - `client`: one WebSocket client and the frames it speaks.
//! - `scenario`: the plans and the run phases (`pubsub` engine, `churn`, and the `pacer` thread
//!   that wakes open-loop senders on time).
//! - `stats`: counters, histograms and the exact delivery check.
//! - `procfs`: CPU and RSS samples. `redis_info`: Redis's counters, read with `INFO`.
//! - `sys`: rlimits and CPU affinity.
//! - `report`: the results, the summary table and the JSON. `progress`: the progress bar.

pub mod cli;
pub mod client;
pub mod procfs;
pub mod progress;
pub mod redis_info;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod sys;
pub mod system;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

pub use cli::Cli;
use cli::{CommonArgs, Scenario};
pub use report::Report;
use report::{
    BotCost, ChurnReport, NodeCost, RedisCost, ServerCost, SoakReport, StormReport, WindowWork,
};
use scenario::RunCtx;
use scenario::churn::ChurnResult;
use scenario::pubsub::PubsubResult;
use scenario::soak::SoakResult;
use stats::Shared;
use system::{Target, TargetInfo};

/// File descriptors the bot keeps for itself besides one per connection.
const SPARE_FDS: u64 = 64;

/// Runs the scenario `cli` describes against its target and returns what it measured. Blocks;
/// must not be called from inside a tokio runtime (it builds its own, with one worker per
/// `--client-cpus` CPU).
pub fn run(cli: &Cli) -> anyhow::Result<Report> {
    let scenario = &cli.scenario;
    let common = scenario.common();
    validate(scenario)?;

    let nofile = sys::raise_nofile_limit().context("raise RLIMIT_NOFILE")?;
    let conns = connections_needed(scenario);
    if conns + SPARE_FDS > nofile {
        bail!(
            "{conns} connections need about {} open files, but this process may open {nofile} \
             (RLIMIT_NOFILE). Use fewer connections per bot process.",
            conns + SPARE_FDS
        );
    }
    let client_cpus = common
        .client_cpus
        .as_deref()
        .map(sys::parse_cpu_list)
        .transpose()
        .context("--client-cpus")?;
    let threads = match &client_cpus {
        Some(c) => c.len(),
        None => common
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
    .max(1);

    let max_mode = scenario.load().is_some_and(|l| l.max);
    let mut target = Target::open(common, max_mode)?;
    let progress = Arc::new(progress::Progress::new(!common.no_progress));
    if let Some(bin) = &target.info.server_bin {
        for n in &target.info.nodes {
            progress.println(format!("spawned {bin} at {}", n.url));
        }
    }
    if let Some(r) = &target.info.redis
        && r.pid.is_some()
    {
        progress.println(format!("spawned redis-server at {}", r.url));
    }

    // Pin this thread before the runtime exists, so its workers inherit the CPU set.
    let previous_affinity = match &client_cpus {
        Some(cpus) => {
            let prev = sys::current_affinity().ok();
            sys::pin_current_thread(cpus).context("pin the bot to --client-cpus")?;
            prev
        }
        None => None,
    };
    let result = run_in_runtime(cli, &target, progress, threads);
    if let Some(prev) = previous_affinity {
        let _ = sys::pin_current_thread(&prev);
    }

    let log_problems = target.log_problems(20);
    let alive = target.check_alive();
    let outcome = result.and_then(|r| alive.map(|()| r));
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let tail = target.log_tail();
            let _ = target.stop();
            return Err(anyhow::anyhow!("{e:#}{tail}"));
        }
    };
    let info = target.info.clone();
    let stop = target.stop();

    let mut report = match outcome {
        Outcome::Pubsub(r) => pubsub_report(scenario, common, r, &info),
        Outcome::Churn(r) => churn_report(scenario, common, r, &info),
        Outcome::Soak(r) => soak_report(scenario, common, r, &info),
    };
    report.target = info;
    report.client_cpus = common.client_cpus.clone();
    report.client_threads = threads;
    report.server_log_problems = log_problems;
    if let Some(bot) = &report.bot {
        let capacity = 100.0 * threads as f64;
        if bot.cpu_percent > 0.9 * capacity {
            report.notes.push(format!(
                "the bot used {:.0}% of its {threads} core(s): it may have been the bottleneck, so \
                 latency and throughput may understate the server",
                bot.cpu_percent
            ));
        }
    }
    if let Err(e) = stop {
        report.notes.push(format!("stopping the server: {e:#}"));
        report.passed = false;
    }
    Ok(report)
}

enum Outcome {
    Pubsub(PubsubResult),
    Churn(ChurnResult),
    Soak(SoakResult),
}

fn run_in_runtime(
    cli: &Cli,
    target: &Target,
    progress: Arc<progress::Progress>,
    threads: usize,
) -> anyhow::Result<Outcome> {
    let scenario = &cli.scenario;
    let common = scenario.common();
    // One thread: a current-thread runtime on this (pinned) thread, with no work stealing and no
    // cross-thread wake-ups. More: a multi-thread runtime with that many workers.
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .context("start the tokio runtime")?;
    let ctx = RunCtx {
        shared: Arc::new(Shared::new(Instant::now())),
        endpoints: target.endpoints.clone(),
        common: common.clone(),
        tag: format!("lt{:06x}", fastrand::u32(..) & 0xff_ffff),
        progress,
        server_pids: target.info.pids(),
        redis: target.redis_probe.clone(),
    };
    let outcome = rt.block_on(async {
        let mut storm = None;
        let plan = match scenario {
            Scenario::Storm { args, .. } => {
                let (plan, s) = scenario::storm::plan(&ctx, args);
                storm = Some(s);
                plan
            }
            Scenario::Fanout { args, .. } => scenario::fanout_plan(&ctx, args),
            Scenario::Chat { args, .. } => scenario::chat_plan(&ctx, args),
            Scenario::Dm { args, .. } => scenario::dm_plan(&ctx, args),
            Scenario::Idle { args, .. } => scenario::idle_plan(&ctx, args),
            Scenario::Churn { args, .. } => {
                return scenario::churn::run(&ctx, args).await.map(Outcome::Churn);
            }
            Scenario::Soak { args, load, .. } => {
                return scenario::soak::run(&ctx, args, load)
                    .await
                    .map(Outcome::Soak);
            }
        };
        scenario::pubsub::run(&ctx, plan, scenario.load(), storm)
            .await
            .map(Outcome::Pubsub)
    });
    ctx.progress.finish();
    rt.shutdown_timeout(Duration::from_secs(2));
    outcome
}

fn validate(scenario: &Scenario) -> anyhow::Result<()> {
    let c = scenario.common();
    if !(c.duration > 0.0 && c.duration.is_finite()) {
        bail!("--duration must be positive");
    }
    if !(c.warmup >= 0.0 && c.warmup.is_finite()) {
        bail!("--warmup must not be negative");
    }
    let positive = |rate: f64| {
        if rate > 0.0 && rate.is_finite() {
            Ok(())
        } else {
            bail!("--rate must be positive")
        }
    };
    match scenario {
        Scenario::Fanout { args, .. } => {
            positive(args.rate)?;
            if args.publishers == 0 {
                bail!("fanout needs at least one publisher");
            }
        }
        Scenario::Chat { args, .. } => {
            positive(args.rate)?;
            if args.users == 0 || args.room_size == 0 {
                bail!("chat needs users and rooms of at least 1");
            }
        }
        Scenario::Dm { args, .. } => {
            positive(args.rate)?;
            if args.users == 0 || !args.users.is_multiple_of(2) {
                bail!("dm needs an even, non-zero number of users (they are paired)");
            }
        }
        Scenario::Idle { .. } => {}
        Scenario::Storm { args, load, .. } => {
            positive(args.rate)?;
            if args.clients == 0 || args.room_size < 2 {
                bail!("storm needs clients and rooms of at least 2 (a publisher and a listener)");
            }
            if load.max {
                bail!("storm is open loop: --max does not apply");
            }
            if !(args.after >= 0.0 && args.after.is_finite()) {
                bail!("--after must not be negative");
            }
        }
        Scenario::Churn { args, .. } => positive(args.rate)?,
        Scenario::Soak { args, .. } => {
            if c.url.len() > 1 || c.spawn_cluster.is_some() {
                bail!("soak samples one server's memory: give one --url or --spawn-server");
            }
            positive(args.rate)?;
            if args.users == 0 || args.room_size == 0 || !args.dm_users.is_multiple_of(2) {
                bail!("soak needs chat users, rooms of at least 1 and an even --dm-users");
            }
        }
    }
    Ok(())
}

/// Connections open at once.
fn connections_needed(scenario: &Scenario) -> u64 {
    match scenario {
        Scenario::Fanout { args, .. } => (args.subscribers + args.publishers) as u64,
        Scenario::Chat { args, .. } => args.users as u64,
        Scenario::Dm { args, .. } => args.users as u64,
        Scenario::Idle { args, .. } => args.connections as u64,
        // A dropped client's socket is closed before its new one opens.
        Scenario::Storm { args, .. } => args.clients as u64,
        Scenario::Churn { args, .. } => args.max_concurrent as u64,
        // The churn cycles in progress are at most 64.
        Scenario::Soak { args, .. } => (args.users + args.dm_users + 64) as u64,
    }
}

fn params(scenario: &Scenario) -> serde_json::Map<String, serde_json::Value> {
    let v = match scenario {
        Scenario::Fanout { args, .. } => json!({
            "subscribers": args.subscribers, "publishers": args.publishers, "rate": args.rate,
        }),
        Scenario::Chat { args, .. } => json!({
            "users": args.users, "room_size": args.room_size, "rate": args.rate,
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

fn empty_report(scenario: &Scenario, common: &CommonArgs) -> Report {
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
        server_log_problems: Vec::new(),
        notes: Vec::new(),
        passed: false,
    }
}

fn pubsub_report(
    scenario: &Scenario,
    common: &CommonArgs,
    r: PubsubResult,
    target: &TargetInfo,
) -> Report {
    let mut rep = empty_report(scenario, common);
    let wall = r
        .window_end
        .at
        .saturating_duration_since(r.window_start.at)
        .as_secs_f64();
    rep.connections = r.connections;
    rep.connect_seconds = r.connect_seconds;
    rep.window_seconds = wall;
    rep.deliveries_in_window = r.delivered_in_window;
    if wall > 0.0 {
        rep.deliveries_per_sec = r.delivered_in_window as f64 / wall;
        rep.publishes_per_sec = r.sent_in_window as f64 / wall;
        rep.acks_per_sec = r.acked_in_window as f64 / wall;
    }
    let work = WindowWork {
        deliveries: r.delivered_in_window,
        publishes: r.acked_in_window,
        connections: r.connections,
    };
    if let (Some(b), Some(c), Some(w0), Some(w1)) = (
        r.baseline.server_total(),
        r.connected.server_total(),
        r.window_start.server_total(),
        r.window_end.server_total(),
    ) {
        let pids = target.nodes.iter().filter_map(|n| n.pid).collect();
        rep.server = Some(ServerCost::compute(pids, &b, &c, (&w0, &w1), work));
    }
    rep.nodes = node_costs(target, &r.window_start, &r.window_end);
    if let (Some(w0), Some(w1)) = (&r.window_start.redis, &r.window_end.redis) {
        rep.redis = Some(RedisCost::compute(w0, w1, work));
    }
    if let (Some(b0), Some(b1)) = (r.window_start.bot, r.window_end.bot) {
        rep.bot = Some(BotCost::compute(&b0, &b1));
    }
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
    (w0, w1): (&scenario::Samples, &scenario::Samples),
    s: &scenario::storm::StormSamples,
    ctl: &scenario::storm::StormCtl,
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
    let span = |a: &scenario::Samples, b: &scenario::Samples| {
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

/// Each node's CPU in the window, when there are several and their pids are known.
fn node_costs(
    target: &TargetInfo,
    w0: &scenario::Samples,
    w1: &scenario::Samples,
) -> Vec<NodeCost> {
    if target.nodes.len() < 2 {
        return Vec::new();
    }
    target
        .nodes
        .iter()
        .zip(w0.servers.iter().zip(&w1.servers))
        .filter_map(|(n, (a, b))| Some(NodeCost::compute(&n.url, n.pid?, a.as_ref()?, b.as_ref()?)))
        .collect()
}

fn churn_report(
    scenario: &Scenario,
    common: &CommonArgs,
    r: ChurnResult,
    target: &TargetInfo,
) -> Report {
    let mut rep = empty_report(scenario, common);
    let wall = r
        .window_end
        .at
        .saturating_duration_since(r.window_start.at)
        .as_secs_f64();
    rep.connections = r.attempted;
    rep.window_seconds = wall;
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
    rep.nodes = node_costs(target, &r.window_start, &r.window_end);
    if let (Some(b0), Some(b1)) = (r.window_start.bot, r.window_end.bot) {
        rep.bot = Some(BotCost::compute(&b0, &b1));
    }
    rep.passed = r.failed == 0 && r.completed == r.attempted;
    rep.notes = r.problems.into_iter().chain(r.notes).collect();
    rep.churn = Some(churn);
    rep
}

fn soak_report(
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
