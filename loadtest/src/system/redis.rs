//! The redis-server that `--spawn-cluster` starts: a free loopback port, a temp dir for its
//! files, the persistence the bot was told (`--redis-persistence`), and readiness by PING.
//!
//! Owns redis-server's command line. It must not read Redis's counters (that is `redis_info`).

use std::net::SocketAddr;

use anyhow::Context;

use super::process::Process;
use crate::cli::CommonArgs;
use crate::redis_info::RedisProbe;

/// Starts redis-server and returns it with its address once it answers PING.
pub fn spawn(common: &CommonArgs) -> anyhow::Result<(Process, SocketAddr, Vec<String>)> {
    let dir = tempfile::Builder::new()
        .prefix("shardcast-loadtest-redis-")
        .tempdir()
        .context("create a temp dir for redis-server")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()?));
    let mut args: Vec<String> = [
        "--port",
        &addr.port().to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.path().display().to_string(),
        "--daemonize",
        "no",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(
        common
            .redis_persistence
            .redis_args()
            .iter()
            .map(|s| s.to_string()),
    );
    let mut p = Process::start(
        "redis",
        &common.redis_bin,
        &args,
        &[],
        common.redis_cpus.as_deref(),
        dir,
    )
    .with_context(|| {
        format!(
            "start {} (Debian: apt-get install redis-server, or pass --redis-bin)",
            common.redis_bin.display()
        )
    })?;
    let probe = RedisProbe::from_addr(addr);
    p.wait_ready(|| probe.ping())?;
    Ok((p, addr, args))
}
