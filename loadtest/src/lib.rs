//! shardcast-loadtest: a bot that opens thousands of real WebSocket clients against a shardcast
//! server or a cluster of nodes, drives one of nine scenarios (fanout, chat, dm, idle, churn,
//! soak, storm, bigroom, joins), checks delivery exactly, measures latency with HDR histograms,
//! reads the servers' CPU and RSS from `/proc` and a cluster's Redis cost from its `INFO`.
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
//! cargo run --release -p shardcast-loadtest -- bigroom --members 5000 --rate 5 --spawn-server --presence-events true
//! cargo run --release -p shardcast-loadtest -- bigroom --members 30000 --processes 2 --url ws://127.0.0.1:8080
//! cargo run --release -p shardcast-loadtest -- fanout --spawn-cluster 3
//! cargo run --release -p shardcast-loadtest -- chat --users 5000 --resend --kill-server 2 --spawn-server
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
//! ## Layers
//!
//! The modules, bottom to top, one layer a line. A module imports only modules on the lines
//! above its own, never one on its own line or below; `tests/layers.rs` checks every `crate::`
//! and `super::` path against this list and the one in `scenario`:
//! 1. `cli`: the options (also the library's input).
//! 2. `sys`, `procfs`, `progress`: rlimits and CPU affinity; CPU and RSS samples from `/proc`
//!    (the server's own parser, `shardcast::core::procfs`); the progress bar.
//! 3. `client`: one WebSocket client and the frames it speaks (the wire).
//! 4. `redis_info`: a cluster's Redis counters, read with `INFO`.
//! 5. `stats`: counters, latency histograms and the exact delivery check.
//! 6. `system`: the servers under test and the cluster's Redis, given or spawned.
//! 7. `scenario`: what the scenarios share (the run's context, the pacer, the plans, the storm's
//!    catch-up, the `pubsub` engine), then the scenarios; its doc lists its own layers.
//! 8. `report`: the results: the model, the cost figures, the summary table, and building a
//!    report from a scenario's result.
//! 9. This file: [`run`], which checks the options, starts the target and the runtime, runs the
//!    scenario and builds the report.
//!
//! `bigroom --processes K` runs as K child processes of this binary, each holding a slice of the
//! clients; [`run_worker`] is a child's whole life (its job comes on stdin, its results go to
//! stdout, see `scenario::bigroom::procs`), and `main` calls it when [`WORKER_ENV`] is set.
//!
//! Public: [`run`], its input [`Cli`] (module `cli`) and its output [`Report`] (module `report`,
//! which also names every type a report holds), and [`run_worker`]. The rest is private to the
//! crate.

pub mod cli;
mod client;
use shardcast::core::procfs;
mod progress;
mod redis_info;
pub mod report;
mod scenario;
mod stats;
pub mod sys;
mod system;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use cli::Cli;
use cli::Scenario;
pub use report::Report;
use report::bigroom::bigroom_report;
use report::build::{churn_report, pubsub_report, soak_report};
use report::joins::joins_report;
use scenario::bigroom::BigroomResult;
use scenario::bigroom::procs::Job;
pub use scenario::bigroom::procs::WORKER_ENV;
use scenario::churn::ChurnResult;
use scenario::joins::JoinsResult;
use scenario::pubsub::PubsubResult;
use scenario::run::RunCtx;
use scenario::soak::SoakResult;
use stats::Shared;
use system::Target;

/// File descriptors the bot keeps for itself besides one per connection.
const SPARE_FDS: u64 = 64;

/// Runs the scenario `cli` describes against its target and returns what it measured. Blocks;
/// must not be called from inside a tokio runtime (it builds its own, with one worker per
/// `--client-cpus` CPU).
pub fn run(cli: &Cli) -> anyhow::Result<Report> {
    let scenario = &cli.scenario;
    let common = scenario.common();
    validate(scenario)?;

    check_open_files(connections_needed(scenario))?;
    let (client_cpus, threads) = bot_cpus(common)?;

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
    let shared = Arc::new(Shared::new(Instant::now()));
    let killer = target.start_kills(common, shared.clone());
    let result = run_in_runtime(cli, &target, shared, progress, threads);
    let kills = killer.map(|k| target.end_kills(k));
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
    let (kill_notes, kill_err) = match kills {
        Some(Ok(notes)) => (notes, None),
        Some(Err(e)) => (Vec::new(), Some(e)),
        None => (Vec::new(), None),
    };

    let mut report = match outcome {
        Outcome::Pubsub(r) => pubsub_report(scenario, common, r, &info),
        Outcome::Churn(r) => churn_report(scenario, common, r, &info),
        Outcome::Soak(r) => soak_report(scenario, common, r, &info),
        Outcome::Bigroom(r) => bigroom_report(scenario, common, r, &info),
        Outcome::Joins(r, a) => joins_report(scenario, &a, common, r, &info),
    };
    report.target = info;
    report.client_cpus = common.client_cpus.clone();
    report.client_threads = threads;
    report.server_log_problems = log_problems;
    // The window, and each phase of a bigroom (whose bot CPU is all its processes').
    let phases = report.bigroom.iter().flat_map(|b| &b.phases);
    let busy: Vec<(String, f64)> = report
        .bot
        .iter()
        .map(|b| ("the window".to_string(), b.cpu_percent))
        .chain(phases.filter_map(|p| Some((format!("the {} phase", p.name), p.bot_cpu_percent?))))
        .collect();
    let capacity = 100.0 * threads as f64;
    for (when, percent) in busy {
        if percent > 0.9 * capacity {
            report.notes.push(format!(
                "the bot used {percent:.0}% of its {threads} core(s) in {when}: it may have been \
                 the bottleneck, so latency and throughput may understate the server"
            ));
        }
    }
    report.notes.extend(kill_notes);
    if let Some(e) = kill_err {
        report
            .notes
            .push(format!("killing and restarting the server: {e:#}"));
        report.passed = false;
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
    Bigroom(BigroomResult),
    Joins(JoinsResult, cli::JoinsArgs),
}

/// A child process of `bigroom --processes`: reads its job from stdin, runs its slice of the
/// clients in step with the others and writes its results to stdout. Blocks, like [`run`].
pub fn run_worker() -> anyhow::Result<()> {
    let job = Job::read()?;
    check_open_files(job.layout.slice(job.worker, job.workers).len() as u64)?;
    let (client_cpus, threads) = bot_cpus(&job.common)?;
    if let Some(cpus) = &client_cpus {
        sys::pin_current_thread(cpus).context("pin the bot to --client-cpus")?;
    }
    let rt = scenario::run::runtime(threads)?;
    let ctx = RunCtx {
        shared: Arc::new(Shared::new(job.epoch())),
        endpoints: job
            .common
            .url
            .iter()
            .map(|u| {
                client::Endpoint::parse(u).map(|mut e| {
                    e.protocol = job.common.protocol;
                    e
                })
            })
            .collect::<anyhow::Result<_>>()?,
        common: job.common.clone(),
        tag: job.tag.clone(),
        progress: Arc::new(progress::Progress::new(false)),
        server_pids: Vec::new(),
        redis: None,
    };
    let result = rt.block_on(scenario::bigroom::procs::child(&ctx, &job));
    rt.shutdown_timeout(Duration::from_secs(2));
    result
}

/// Raises the open-files limit and checks that `conns` connections fit under it.
fn check_open_files(conns: u64) -> anyhow::Result<()> {
    let nofile = sys::raise_nofile_limit().context("raise RLIMIT_NOFILE")?;
    if conns + SPARE_FDS > nofile {
        bail!(
            "{conns} connections need about {} open files, but this process may open {nofile} \
             (RLIMIT_NOFILE). Use fewer connections per bot process (bigroom: --processes).",
            conns + SPARE_FDS
        );
    }
    Ok(())
}

/// The CPUs the bot is pinned to (`--client-cpus`), and its worker threads.
fn bot_cpus(common: &cli::CommonArgs) -> anyhow::Result<(Option<Vec<usize>>, usize)> {
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
    Ok((client_cpus, threads))
}

fn run_in_runtime(
    cli: &Cli,
    target: &Target,
    shared: Arc<Shared>,
    progress: Arc<progress::Progress>,
    threads: usize,
) -> anyhow::Result<Outcome> {
    let scenario = &cli.scenario;
    let common = scenario.common();
    let rt = scenario::run::runtime(threads)?;
    let ctx = RunCtx {
        shared,
        endpoints: (target.endpoints.iter().cloned())
            .map(|mut e| {
                e.protocol = common.protocol;
                e
            })
            .collect(),
        common: common.clone(),
        tag: (common.tag.clone())
            .unwrap_or_else(|| format!("lt{:06x}", fastrand::u32(..) & 0xff_ffff)),
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
            Scenario::Fanout { args, .. } => scenario::plan::fanout_plan(&ctx, args),
            Scenario::Chat { args, load, .. } if args.client == cli::ClientKind::Full => {
                let plan = scenario::plan::chat_plan(&ctx, args);
                return scenario::app::run(&ctx, plan, load)
                    .await
                    .map(Outcome::Pubsub);
            }
            Scenario::Chat { args, .. } => scenario::plan::chat_plan(&ctx, args),
            Scenario::Dm { args, .. } => scenario::plan::dm_plan(&ctx, args),
            Scenario::Idle { args, .. } => scenario::plan::idle_plan(&ctx, args),
            Scenario::Churn { args, .. } => {
                return scenario::churn::run(&ctx, args).await.map(Outcome::Churn);
            }
            Scenario::Soak { args, load, .. } => {
                return scenario::soak::run(&ctx, args, load)
                    .await
                    .map(Outcome::Soak);
            }
            Scenario::Bigroom { args, load, .. } => {
                return scenario::bigroom::run(&ctx, args, load)
                    .await
                    .map(Outcome::Bigroom);
            }
            Scenario::Joins { args, .. } => {
                return scenario::joins::run(&ctx, args)
                    .await
                    .map(|r| Outcome::Joins(r, args.clone()));
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
        Scenario::Bigroom { args, load, .. } => {
            for (flag, rate) in [
                ("--rate", args.rate),
                ("--join-rate", args.join_rate),
                ("--churn-rate", args.churn_rate),
            ] {
                if !(rate > 0.0 && rate.is_finite()) {
                    bail!("{flag} must be positive");
                }
            }
            if args.members == 0 || args.publishers == 0 {
                bail!("bigroom needs at least one member and one publisher");
            }
            if args.processes == 0 || args.processes > args.members {
                bail!("--processes must be between 1 and --members");
            }
            if load.max {
                bail!("bigroom is open loop: --max does not apply");
            }
        }
        Scenario::Joins { args, .. } => {
            if !(args.join_rate > 0.0 && args.join_rate.is_finite()) {
                bail!("--join-rate must be positive");
            }
            if args.clients == 0 || args.room_size == 0 {
                bail!("joins needs clients and rooms of at least 1");
            }
        }
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
    let resend = scenario.load().is_some_and(|l| l.resend);
    if resend && !matches!(scenario, Scenario::Chat { .. } | Scenario::Fanout { .. }) {
        bail!("--resend applies to chat and fanout (rooms, rejoined with since)");
    }
    if resend && scenario.load().is_some_and(|l| l.max) {
        bail!("--resend is open loop: --max does not apply");
    }
    // The full client reconnects and sends again by itself (its outbox keys every publish).
    let full =
        matches!(scenario, Scenario::Chat { args, .. } if args.client == cli::ClientKind::Full);
    if c.kill_server > 0 && !(c.spawn_server && (resend || full)) {
        bail!(
            "--kill-server needs --spawn-server (a server the bot can start again) and --resend \
             (or chat --client full)"
        );
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
        // With --processes, the children hold the connections (the first one the most).
        Scenario::Bigroom { args, .. } if args.processes > 1 => 0,
        Scenario::Bigroom { args, .. } => (args.members + args.publishers) as u64,
        Scenario::Joins { args, .. } => args.clients as u64,
    }
}
