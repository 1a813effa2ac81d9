//! The server under test: a running one given by `--url` (and maybe `--server-pid`), or one the
//! bot spawns (`--spawn-server`) on a free loopback port with a temp data dir, optionally pinned
//! with `taskset`, and stops at the end.
//!
//! Owns the server process's lifecycle and the flags it is started with. It must not open
//! WebSocket connections (that is `client`) or sample costs (that is `procfs`).

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use tempfile::TempDir;

use crate::cli::{CommonArgs, Durability};
use crate::client::Endpoint;

/// How long a spawned server may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a spawned server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Publish rate and burst given to a spawned server: far above any scenario, so the server's
/// per-connection limiter never drops bot messages.
const SPAWN_PUBLISH_RATE: &str = "1000000";

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
    ("--presence-events", "use the bot's --presence-events"),
    ("--max-queue-bytes", "use the bot's --max-queue-bytes"),
    ("--shards", "use the bot's --shards"),
    ("--durability", "use the bot's --durability"),
];

/// Facts about the target, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub url: String,
    pub spawned: bool,
    pub pid: Option<u32>,
    pub server_bin: Option<String>,
    pub server_cpus: Option<String>,
    pub server_args: Vec<String>,
    /// The server's durability mode: passed to a spawned server, declared with `--url`
    /// (`None`: not declared).
    pub durability: Option<Durability>,
}

impl TargetInfo {
    /// The durability mode and where it came from, for the summary table.
    pub fn durability_words(&self) -> String {
        match (self.durability, self.spawned) {
            (Some(d), true) => format!("{} (passed to the spawned server)", d.as_str()),
            (Some(d), false) => format!("{} (declared with --durability, not checked)", d.as_str()),
            (None, _) => "not declared (give --durability with --url)".to_string(),
        }
    }
}

/// The server the run talks to.
pub struct Target {
    pub endpoint: Endpoint,
    pub info: TargetInfo,
    spawned: Option<Spawned>,
}

struct Spawned {
    child: Child,
    log: PathBuf,
    // Removed (with the server's data and log) when the target is dropped.
    _dir: TempDir,
}

impl Target {
    /// Resolves `--url` or spawns the server. `max_mode` raises the spawned server's queue
    /// limit unless `--max-queue-bytes` says otherwise.
    pub fn open(common: &CommonArgs, max_mode: bool) -> anyhow::Result<Target> {
        if common.spawn_server {
            Self::spawn(common, max_mode)
        } else {
            let url = common
                .url
                .as_deref()
                .ok_or_else(|| anyhow!("give --url or --spawn-server"))?;
            let endpoint = Endpoint::parse(url)?;
            Ok(Target {
                info: TargetInfo {
                    url: url.to_string(),
                    spawned: false,
                    pid: common.server_pid,
                    server_bin: None,
                    server_cpus: None,
                    server_args: Vec::new(),
                    durability: common.durability,
                },
                endpoint,
                spawned: None,
            })
        }
    }

    fn spawn(common: &CommonArgs, max_mode: bool) -> anyhow::Result<Target> {
        check_server_args(&common.server_args)?;
        // Always passed, so a SHARDCAST_DURABILITY in the bot's environment cannot change it
        // behind the report's back.
        let durability = common.durability.unwrap_or_default();
        let bin = server_binary(common.server_bin.as_deref())?;
        let dir = tempfile::Builder::new()
            .prefix("shardcast-loadtest-")
            .tempdir()
            .context("create a temp dir for the server")?;
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
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
            "--presence-events".into(),
            common.presence_events.to_string(),
            "--durability".into(),
            durability.as_str().into(),
        ];
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

        let log = dir.path().join("server.log");
        let out = File::create(&log).context("create the server log")?;
        let err = out.try_clone().context("create the server log")?;
        let mut cmd = match &common.server_cpus {
            Some(cpus) => {
                crate::sys::parse_cpu_list(cpus).context("--server-cpus")?;
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.args(&args)
            .env("RUST_LOG", &common.server_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd.spawn().with_context(|| {
            if common.server_cpus.is_some() {
                format!(
                    "cannot run `taskset -c … {}` (is util-linux installed?)",
                    bin.display()
                )
            } else {
                format!("cannot run {}", bin.display())
            }
        })?;
        // taskset execs the server, so the child's pid is the server's.
        let pid = child.id();
        let mut target = Target {
            endpoint: Endpoint::from_addr(addr),
            info: TargetInfo {
                url: format!("ws://{addr}/ws"),
                spawned: true,
                pid: Some(pid),
                server_bin: Some(bin.display().to_string()),
                server_cpus: common.server_cpus.clone(),
                server_args: args,
                durability: Some(durability),
            },
            spawned: Some(Spawned {
                child,
                log,
                _dir: dir,
            }),
        };
        target.wait_ready(addr)?;
        Ok(target)
    }

    fn wait_ready(&mut self, addr: SocketAddr) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "the server did not accept connections on {addr} within {START_TIMEOUT:?}{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Errs if a spawned server has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let Some(s) = &mut self.spawned else {
            return Ok(());
        };
        if let Some(status) = s.child.try_wait().context("wait for the server")? {
            let tail = self.log_tail();
            bail!("the spawned server exited ({status}){tail}");
        }
        Ok(())
    }

    /// The last lines of a spawned server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let Some(s) = &self.spawned else {
            return String::new();
        };
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        if tail.is_empty() {
            String::new()
        } else {
            format!("\nserver log ({}):\n{tail}", s.log.display())
        }
    }

    /// Warnings and errors the spawned server logged (up to `max` lines).
    pub fn log_problems(&self, max: usize) -> Vec<String> {
        let Some(s) = &self.spawned else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(&s.log).unwrap_or_default();
        text.lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked"))
            .take(max)
            .map(str::to_string)
            .collect()
    }

    /// Stops a spawned server (SIGTERM, then SIGKILL after a timeout). Errs if it had already
    /// exited on its own or did not stop cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut s) = self.spawned.take() else {
            return Ok(());
        };
        if let Some(status) = s.child.try_wait()? {
            bail!("the spawned server had exited by itself during the run ({status})");
        }
        crate::sys::kill(s.child.id(), libc::SIGTERM).context("SIGTERM the server")?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = s.child.try_wait()? {
                if status.success() {
                    return Ok(());
                }
                bail!("the server exited with {status} after SIGTERM");
            }
            if Instant::now() > deadline {
                let _ = s.child.kill();
                let _ = s.child.wait();
                bail!("the server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(s) = &mut self.spawned
            && s.child.try_wait().ok().flatten().is_none()
        {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
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

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
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
