//! The system under test: one server or the nodes of a cluster, and the cluster's Redis.
//! Either given (`--url`, repeated for a cluster, with `--server-pid`s and `--redis-url` to
//! measure them) or spawned: `--spawn-server` starts one node; `--spawn-cluster N` starts a
//! redis-server and N nodes of the redis engine. Spawned processes are stopped at the end.
//!
//! Owns the processes' lifecycles and the facts the report states about them. It must not open
//! WebSocket connections (that is `client`) or sample costs (`procfs`, `redis_info`).

mod killer;
mod node;
mod process;
mod redis;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Serialize;

use crate::cli::{CommonArgs, Durability, RedisPersistence};
use crate::client::Endpoint;
use crate::redis_info::RedisProbe;
pub use killer::Killer;
use process::Process;

/// Facts about the target, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    /// The nodes the connections are spread over, round robin (one for a single server).
    pub nodes: Vec<NodeInfo>,
    pub spawned: bool,
    pub server_bin: Option<String>,
    pub server_cpus: Option<String>,
    /// A single server's durability mode: passed to a spawned server, declared with `--url`
    /// (`None`: not declared, or a cluster, whose durability is its Redis's).
    pub durability: Option<Durability>,
    /// The cluster's Redis, when spawned or given with `--redis-url`.
    pub redis: Option<RedisInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub url: String,
    pub pid: Option<u32>,
    /// A spawned node's `shardcast` arguments.
    pub args: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RedisInfo {
    pub url: String,
    pub pid: Option<u32>,
    pub cpus: Option<String>,
    /// What a spawned Redis persists (`None` with `--redis-url`: not known to the bot).
    pub persistence: Option<RedisPersistence>,
    pub args: Vec<String>,
}

impl TargetInfo {
    /// The durability mode and where it came from, for the summary table.
    pub(crate) fn durability_words(&self) -> String {
        if let Some(r) = &self.redis {
            return match r.persistence {
                Some(p) => format!("the cluster's Redis, persistence {}", p.as_str()),
                None => "the cluster's Redis (persistence not known to the bot)".to_string(),
            };
        }
        match (self.durability, self.spawned) {
            (Some(d), true) => format!("{} (passed to the spawned server)", d.as_str()),
            (Some(d), false) => format!("{} (declared with --durability, not checked)", d.as_str()),
            (None, _) => "not declared (give --durability with --url)".to_string(),
        }
    }

    /// The node pids the bot knows, by node (`None` where not known).
    pub(crate) fn pids(&self) -> Vec<Option<u32>> {
        self.nodes.iter().map(|n| n.pid).collect()
    }
}

/// The nodes and Redis the run talks to.
pub struct Target {
    /// One per node, in `info.nodes`' order.
    pub endpoints: Vec<Endpoint>,
    pub info: TargetInfo,
    /// Reads the cluster's Redis, when known.
    pub redis_probe: Option<RedisProbe>,
    /// Spawned nodes, in order; empty with `--url`.
    nodes: Vec<Process>,
    redis: Option<Process>,
}

impl Target {
    /// Resolves the `--url`s or spawns the processes. `max_mode` raises a spawned server's
    /// queue limit unless `--max-queue-bytes` says otherwise.
    pub fn open(common: &CommonArgs, max_mode: bool) -> anyhow::Result<Target> {
        if let Some(n) = common.spawn_cluster {
            Self::spawn_cluster(common, max_mode, n)
        } else if common.spawn_server {
            let node = node::spawn(common, max_mode, None)?;
            Ok(Self::spawned(common, vec![node], None))
        } else {
            Self::given(common)
        }
    }

    fn given(common: &CommonArgs) -> anyhow::Result<Target> {
        if common.url.is_empty() {
            bail!("give --url, --spawn-server or --spawn-cluster");
        }
        let pids = &common.server_pid;
        if !pids.is_empty() && pids.len() != common.url.len() {
            bail!(
                "{} --server-pid for {} --url: give one pid per URL, in the same order",
                pids.len(),
                common.url.len()
            );
        }
        let endpoints = common
            .url
            .iter()
            .map(|u| Endpoint::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let nodes = common
            .url
            .iter()
            .enumerate()
            .map(|(i, url)| NodeInfo {
                url: url.clone(),
                pid: pids.get(i).copied(),
                args: Vec::new(),
            })
            .collect();
        let redis_probe = common
            .redis_url
            .as_deref()
            .map(RedisProbe::parse)
            .transpose()?;
        let redis = common.redis_url.as_ref().map(|url| RedisInfo {
            url: url.clone(),
            pid: None,
            cpus: None,
            persistence: None,
            args: Vec::new(),
        });
        Ok(Target {
            endpoints,
            info: TargetInfo {
                nodes,
                spawned: false,
                server_bin: None,
                server_cpus: None,
                durability: common.durability,
                redis,
            },
            redis_probe,
            nodes: Vec::new(),
            redis: None,
        })
    }

    fn spawn_cluster(common: &CommonArgs, max_mode: bool, n: u16) -> anyhow::Result<Target> {
        let (redis, redis_addr, redis_args) = redis::spawn(common)?;
        let url = format!("redis://{redis_addr}");
        let mut nodes = Vec::with_capacity(n as usize);
        for node_id in 0..n {
            let role = node::ClusterRole {
                redis_url: &url,
                node_id,
            };
            // On an error the nodes started so far and Redis are killed as they drop.
            nodes.push(node::spawn(common, max_mode, Some(role))?);
        }
        let info = RedisInfo {
            url,
            pid: Some(redis.pid()),
            cpus: common.redis_cpus.clone(),
            persistence: Some(common.redis_persistence),
            args: redis_args,
        };
        let mut t = Self::spawned(common, nodes, Some((redis, info)));
        t.redis_probe = Some(RedisProbe::from_addr(redis_addr));
        Ok(t)
    }

    fn spawned(
        common: &CommonArgs,
        nodes: Vec<node::SpawnedNode>,
        redis: Option<(Process, RedisInfo)>,
    ) -> Target {
        let cluster = redis.is_some();
        let (redis, redis_info) = redis.unzip();
        let mut infos = Vec::new();
        let mut endpoints = Vec::new();
        let mut procs = Vec::new();
        let server_bin = nodes.first().map(|n| n.bin.display().to_string());
        for n in nodes {
            infos.push(NodeInfo {
                url: format!("ws://{}/ws", n.addr),
                pid: Some(n.process.pid()),
                args: n.args,
            });
            endpoints.push(Endpoint::from_addr(n.addr));
            procs.push(n.process);
        }
        Target {
            endpoints,
            info: TargetInfo {
                nodes: infos,
                spawned: true,
                server_bin,
                server_cpus: common.server_cpus.clone(),
                durability: (!cluster).then(|| common.durability.unwrap_or_default()),
                redis: redis_info,
            },
            redis_probe: None,
            nodes: procs,
            redis,
        }
    }

    fn processes_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        self.nodes.iter_mut().chain(self.redis.as_mut())
    }

    /// `--kill-server`: hands the spawned server to a [`Killer`] for the run;
    /// [`Target::end_kills`] takes it back.
    pub fn start_kills(
        &mut self,
        common: &CommonArgs,
        shared: std::sync::Arc<crate::stats::Shared>,
    ) -> Option<Killer> {
        if common.kill_server == 0 || self.nodes.len() != 1 || self.redis.is_some() {
            return None;
        }
        let server = self.nodes.pop()?;
        let interval = Duration::from_millis(common.kill_interval_ms);
        let addr = self.endpoints[0].addr;
        Some(Killer::start(
            server,
            addr,
            shared,
            common.kill_server,
            interval,
        ))
    }

    /// Takes the server back from the killer; returns a line per kill.
    pub fn end_kills(&mut self, killer: Killer) -> anyhow::Result<Vec<String>> {
        let (server, notes, r) = killer.finish();
        if let Some(n) = self.info.nodes.first_mut() {
            n.pid = Some(server.pid());
        }
        self.nodes.push(server);
        r.map(|()| notes)
    }

    /// Errs if a spawned process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.processes_mut().try_for_each(|p| p.check_alive())
    }

    /// The last lines of the spawned processes' logs, for error messages.
    pub fn log_tail(&self) -> String {
        self.nodes
            .iter()
            .chain(self.redis.as_ref())
            .map(Process::log_tail)
            .collect()
    }

    /// Warnings and errors the spawned nodes logged (up to `max` lines), with the node named
    /// when there are several.
    pub fn log_problems(&self, max: usize) -> Vec<String> {
        let many = self.nodes.len() > 1;
        let is_problem =
            |l: &str| l.contains("WARN") || l.contains("ERROR") || l.contains("panicked");
        self.nodes
            .iter()
            .flat_map(|p| {
                p.log_lines(max, is_problem)
                    .into_iter()
                    .map(move |l| if many { format!("{}: {l}", p.name) } else { l })
            })
            .take(max)
            .collect()
    }

    /// Stops the spawned nodes (all at once), then Redis. Errs if one had exited by itself or
    /// did not stop cleanly.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let nodes = std::mem::take(&mut self.nodes);
        let mut first_err = None;
        let mut stopping = Vec::new();
        for mut p in nodes {
            match p.terminate() {
                Ok(()) => stopping.push(p),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        for p in stopping {
            if let Err(e) = p.wait_exit() {
                first_err.get_or_insert(e);
            }
        }
        if let Some(mut r) = self.redis.take() {
            let stopped = match r.terminate() {
                Ok(()) => r.wait_exit(),
                Err(e) => Err(e),
            };
            if let Err(e) = stopped {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

/// The status code of `GET path` on a server's HTTP port.
fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bot\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12])?
        .parse()
        .map_err(|_| anyhow!("bad HTTP status line from {addr}"))
}
