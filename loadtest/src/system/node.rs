//! One shardcast server process the bot spawns: its command line, its temp dir (data and log),
//! waiting until it is ready, and stopping it.
//!
//! Owns the flags a spawned node is started with. It must not open WebSocket connections (that
//! is `client`) or sample costs (that is `procfs`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::process::Process;
use crate::cli::CommonArgs;

/// Publish rate and burst given to a spawned server: far above any scenario, so the server's
/// per-connection limiter never drops bot messages.
const SPAWN_PUBLISH_RATE: &str = "1000000";

/// The per-user budget of stored bytes given to a spawned server: 0, none, for the same reason
/// (a fanout publisher stores far more than a chat user).
const SPAWN_STORE_RATE: &str = "0";

const LIFTED_LIMIT: &str = "the bot sets it far above any scenario's rate, so that the server \
     never drops bot messages; for a lower limit, start the server yourself and give --url";

/// The `shardcast serve` flags a spawned server gets from the bot, and what to do instead of
/// repeating one with `--server-arg` (the server refuses a flag given twice, and the report must
/// say what the server ran with).
const BOT_SET_FLAGS: &[(&str, &str)] = &[
    ("--bind", "the bot binds a free loopback port"),
    ("--data", "the bot gives it a temp dir"),
    ("--publish-rate", LIFTED_LIMIT),
    ("--publish-burst", LIFTED_LIMIT),
    ("--user-store-rate-bytes", LIFTED_LIMIT),
    ("--presence-events", "use the bot's --presence-events"),
    ("--max-queue-bytes", "use the bot's --max-queue-bytes"),
    ("--shards", "use the bot's --shards"),
    ("--durability", "use the bot's --durability"),
    ("--engine", "use --spawn-cluster for the redis engine"),
    (
        "--redis-url",
        "--spawn-cluster starts its own Redis; for another, give --url",
    ),
    ("--node-id", "--spawn-cluster numbers its nodes 0 to N-1"),
];

/// A spawned node's place in a cluster.
pub struct ClusterRole<'a> {
    pub redis_url: &'a str,
    pub node_id: u16,
}

/// A node the bot started.
pub struct SpawnedNode {
    pub process: Process,
    pub addr: SocketAddr,
    pub args: Vec<String>,
    pub bin: PathBuf,
}

/// Starts `shardcast serve` on a free port with a temp data dir, with the options in `common`;
/// `cluster` makes it a redis-engine node. Returns once it answers `/readyz` with 200.
pub fn spawn(
    common: &CommonArgs,
    max_mode: bool,
    cluster: Option<ClusterRole<'_>>,
) -> anyhow::Result<SpawnedNode> {
    check_server_args(&common.server_args)?;
    let bin = server_binary(common.server_bin.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("shardcast-loadtest-")
        .tempdir()
        .context("create a temp dir for the server")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()?));
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--bind".into(),
        addr.to_string(),
        "--data".into(),
        dir.path().join("data").display().to_string(),
        "--publish-rate".into(),
        SPAWN_PUBLISH_RATE.into(),
        "--publish-burst".into(),
        SPAWN_PUBLISH_RATE.into(),
        "--user-store-rate-bytes".into(),
        SPAWN_STORE_RATE.into(),
        "--presence-events".into(),
        common.presence_events.to_string(),
    ];
    match &cluster {
        Some(role) => args.extend([
            "--engine".into(),
            "redis".into(),
            "--redis-url".into(),
            role.redis_url.into(),
            "--node-id".into(),
            role.node_id.to_string(),
        ]),
        // Always passed, so a SHARDCAST_DURABILITY in the bot's environment cannot change it
        // behind the report's back.
        None => args.extend([
            "--durability".into(),
            common.durability.unwrap_or_default().as_str().into(),
        ]),
    }
    let queue = common
        .max_queue_bytes
        .or(if max_mode { Some(64 << 20) } else { None });
    if let Some(q) = queue {
        args.extend(["--max-queue-bytes".into(), q.to_string()]);
    }
    if let Some(s) = common.shards {
        args.extend(["--shards".into(), s.to_string()]);
    }
    args.extend(common.server_args.iter().cloned());
    let name = match &cluster {
        Some(role) => format!("node {}", role.node_id),
        None => "server".to_string(),
    };
    let mut p = Process::start(
        &name,
        &bin,
        &args,
        &[("RUST_LOG", common.server_log.as_str()), ("NO_COLOR", "1")],
        common.server_cpus.as_deref(),
        dir,
    )?;
    p.wait_ready(|| super::http_status(addr, "/readyz").is_ok_and(|s| s == 200))?;
    Ok(SpawnedNode {
        process: p,
        addr,
        args,
        bin,
    })
}

/// Refuses a `--server-arg` that repeats a flag the bot sets itself.
fn check_server_args(args: &[String]) -> anyhow::Result<()> {
    for arg in args {
        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
        if let Some((_, instead)) = BOT_SET_FLAGS.iter().find(|(f, _)| *f == flag) {
            bail!("--server-arg {arg}: the bot already passes {flag} to the server; {instead}");
        }
    }
    Ok(())
}

/// `--server-bin`, else `shardcast` next to the running binary (target/release when run with
/// `cargo run --release`), else ./target/release/shardcast.
fn server_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--server-bin {} does not exist", p.display());
    }
    let mut looked = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        looked.push(dir.join("shardcast"));
    }
    looked.push(PathBuf::from("target/release/shardcast"));
    looked.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/shardcast"));
    for p in &looked {
        if p.is_file() {
            return Ok(p.clone());
        }
    }
    let list: Vec<String> = looked.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "the shardcast server binary was not found (looked at {}). Build it first with \
         `cargo build --release` in the workspace root, or pass --server-bin PATH",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_args_may_not_repeat_the_bots_flags() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(
            check_server_args(&args(&["--flush-interval-ms=50", "--replay-limit", "9"])).is_ok()
        );
        let e = check_server_args(&args(&["--durability=memory"])).unwrap_err();
        assert!(e.to_string().contains("use the bot's --durability"), "{e}");
        assert!(check_server_args(&args(&["--publish-rate", "10"])).is_err());
        assert!(check_server_args(&args(&["--shards=2"])).is_err());
    }
}
