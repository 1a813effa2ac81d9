//! Real Redis for the cluster tests: Debian's `redis-server` and `redis-cli`, never a mock.
//!
//! - [`RedisServer`]: one `redis-server` on a free loopback port in its own temp dir, which a
//!   test can kill -9 and restart on the same port and dir (so AOF data comes back).
//! - [`RedisCluster`]: three (or N) masters joined with `redis-cli --cluster create`; with
//!   [`RedisCluster::start_with_replicas`], a replica for each (AOF `always`,
//!   `cluster-node-timeout` 2000), for failovers: which node holds a key's slot, which is its
//!   replica, SIGSTOP/SIGCONT of one, and waiting for a promotion.
//! - [`RedisServer::client_port`]: the port of a named connection in `CLIENT LIST`, for
//!   [`super::proxy::Proxy`] to freeze or cut exactly that one.
//!
//! A missing `redis-server` fails the test saying what to install; nothing here skips.
//! It must not touch the shardcast nodes: `super::cluster` starts those.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// How long Redis may take to answer PING after a start, or a cluster to be `ok`.
const START_WAIT: Duration = Duration::from_secs(15);

fn missing(binary: &str) -> ! {
    panic!(
        "{binary} is not installed: the cluster tests need Debian's redis-server package \
         (Redis 7 and redis-cli); scripts/test.sh installs it, or run \
         `apt-get install -y redis-server`"
    )
}

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/redis-tls")
}

/// A free port on 127.0.0.1 (bound, read, released: Redis binds it right after).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap().port()
}

/// `redis-cli -p port ARGS`: its stdout, or a panic with its stderr.
async fn cli_at(port: u16, args: &[&str]) -> String {
    let out = Command::new(REDIS_CLI)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap_or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => missing(REDIS_CLI),
            _ => panic!("run {REDIS_CLI}: {e}"),
        });
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `redis-server` child process; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// Options after the fixed ones (e.g. AOF), reused by [`RedisServer::restart`].
    options: Vec<String>,
    /// The TLS port of [`RedisServer::start_tls`].
    tls_port: Option<u16>,
}

impl RedisServer {
    /// A Redis without persistence (`--save '' --appendonly no`).
    pub async fn start() -> RedisServer {
        RedisServer::start_with(&[]).await
    }

    /// A Redis that writes every command to its AOF before answering
    /// (`--appendonly yes --appendfsync always`): an acknowledged write survives kill -9.
    pub async fn start_aof() -> RedisServer {
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await
    }

    /// A Redis that also serves TLS on a second port, with the certificate in
    /// `tests/fixtures/redis-tls` (for 127.0.0.1, signed by [`RedisServer::tls_ca`], valid
    /// 2000–2126; the CA's key was thrown away). Clients need no certificate of their own.
    pub async fn start_tls() -> RedisServer {
        let tls_port = free_port().to_string();
        let file = |name: &str| tls_dir().join(name).to_string_lossy().into_owned();
        let (cert, key, ca) = (
            file("server.crt"),
            file("server.key"),
            RedisServer::tls_ca(),
        );
        let options = [
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ];
        let mut server = RedisServer::start_with(&options).await;
        server.tls_port = Some(tls_port.parse().unwrap());
        server
    }

    /// The CA of [`RedisServer::start_tls`]'s certificate (PEM file path).
    pub fn tls_ca() -> String {
        tls_dir().join("ca.crt").to_string_lossy().into_owned()
    }

    /// `rediss://127.0.0.1:TLS_PORT` of [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started without TLS");
        format!("rediss://127.0.0.1:{port}")
    }

    /// A Redis with `options` after the defaults (later options win).
    pub async fn start_with(options: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            options: options.iter().map(|s| s.to_string()).collect(),
            tls_port: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis on {} still running", self.port);
        let log = std::fs::File::create(self.log_path()).expect("create redis.log");
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--unixsocket")
            .arg(self.unix_socket())
            .args(["--unixsocketperm", "700"])
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => missing(REDIS_SERVER),
                _ => panic!("spawn {REDIS_SERVER}: {e}"),
            });
        self.child = Some(child);
        self.wait_ping().await;
    }

    /// Waits until PING answers PONG (a loading AOF answers LOADING until it is done).
    async fn wait_ping(&mut self) {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if ping(self.port).await {
                return;
            }
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                panic!("redis-server exited with {status}; log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis on {} did not answer PING within {START_WAIT:?}; log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// What redis-server printed, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The server's Unix socket (`redis+unix://` URLs).
    pub fn unix_socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and waits until the process is gone (its port is free then).
    pub async fn kill_9(&mut self) {
        let mut child = self.child.take().expect("redis is not running");
        child.kill().await.expect("kill -9 redis-server");
    }

    /// Starts it again on the same port, dir and options, after [`RedisServer::kill_9`] or
    /// [`RedisServer::stop`]; returns once PING answers.
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    /// A graceful stop (SIGTERM: Redis flushes its AOF), waiting for the exit.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("redis is not running");
        let pid = child.id().expect("redis pid") as i32;
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("redis-server did not stop within 10 s of SIGTERM")
            .expect("wait for redis-server");
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`, `libc::SIGCONT`) to the running server.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("redis is not running").id();
        let pid = pid.expect("redis pid") as i32;
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// Whether it runs (not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis-cli` against this server; returns its output.
    pub async fn cli(&self, args: &[&str]) -> String {
        cli_at(self.port, args).await
    }

    /// The client port (`addr=127.0.0.1:PORT` in `CLIENT LIST`) of the connection named
    /// `name` (`CLIENT SETNAME`), if there is one.
    pub async fn client_port(&self, name: &str) -> Option<u16> {
        client_fields(&self.cli(&["CLIENT", "LIST"]).await)
            .into_iter()
            .find(|c| c.get("name").map(String::as_str) == Some(name))
            .and_then(|c| c.get("addr")?.rsplit(':').next()?.parse().ok())
    }

    /// Kills the connection named `name` with `CLIENT KILL ID`; panics if there is none.
    pub async fn kill_client(&self, name: &str) {
        let list = self.cli(&["CLIENT", "LIST"]).await;
        let id = client_fields(&list)
            .into_iter()
            .find(|c| c.get("name").map(String::as_str) == Some(name))
            .and_then(|c| c.get("id").cloned())
            .unwrap_or_else(|| panic!("no Redis connection named {name}; CLIENT LIST:\n{list}"));
        let killed = self.cli(&["CLIENT", "KILL", "ID", &id]).await;
        assert_eq!(killed.trim(), "1", "CLIENT KILL ID {id} ({name}): {killed}");
    }
}

/// The `key=value` fields of each line of `CLIENT LIST`.
fn client_fields(list: &str) -> Vec<HashMap<String, String>> {
    list.lines()
        .map(|line| {
            line.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// Whether `PING` (inline command) on `port` answers within a second: `+PONG`, or `-NOAUTH`
/// from a server with a password.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG") || buf[..n].starts_with(b"-NOAUTH"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
}

/// What a replicated Redis runs with here: AOF `always`, and a replica's first sync at once
/// (Redis waits 5 s for more replicas by default).
pub const REPLICATED: [&str; 6] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--repl-diskless-sync-delay",
    "0",
];

/// A Redis Cluster of masters (with replicas, [`RedisCluster::start_with_replicas`]), each
/// node a [`RedisServer`].
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` servers with `--cluster-enabled yes`, joined with `redis-cli --cluster
    /// create`; returns once every node says `cluster_state:ok`.
    pub async fn start(masters: usize) -> RedisCluster {
        RedisCluster::create(masters, 0, &[]).await
    }

    /// `masters` masters, each with one replica (`--cluster-replicas 1`), every node with
    /// [`REPLICATED`] and `cluster-node-timeout` 2000 (a killed master's replica is promoted in
    /// about 3 to 5 s); returns once every node says `cluster_state:ok` and every replica is in
    /// sync.
    pub async fn start_with_replicas(masters: usize) -> RedisCluster {
        let mut options = REPLICATED.to_vec();
        options.extend([
            "--cluster-node-timeout",
            "2000",
            // The healthy masters keep serving their slots while one range has no master (by
            // default every master refuses every command then: CLUSTERDOWN).
            "--cluster-require-full-coverage",
            "no",
        ]);
        RedisCluster::create(masters, 1, &options).await
    }

    /// `masters * (1 + replicas)` cluster nodes with `options`, joined; returns once every node
    /// is in an ok cluster of all of them and every replica is in sync.
    async fn create(masters: usize, replicas: usize, options: &[&str]) -> RedisCluster {
        let mut all = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ];
        all.extend(options);
        let n = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(RedisServer::start_with(&all).await);
        }
        let hosts: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(hosts.iter().map(String::as_str));
        let per_master = replicas.to_string();
        args.extend(["--cluster-replicas", &per_master, "--cluster-yes"]);
        nodes[0].cli(&args).await;
        for node in &nodes {
            let deadline = Instant::now() + START_WAIT;
            loop {
                let info = node.cli(&["CLUSTER", "INFO"]).await;
                let known = format!("cluster_known_nodes:{n}");
                // Every node knows of all replicas, and this one, if a replica, is in sync.
                let synced = replicas == 0 || {
                    let replication = node.cli(&["INFO", "replication"]).await;
                    let nodes = node.cli(&["CLUSTER", "NODES"]).await;
                    let seen = nodes.lines().filter(|l| l.contains("slave")).count();
                    seen == masters * replicas
                        && (replication.contains("connected_slaves:")
                            && !replication.contains("connected_slaves:0")
                            || replication.contains("master_link_status:up"))
                };
                if info.contains("cluster_state:ok") && info.contains(&known) && synced {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "redis {} not in an ok cluster within {START_WAIT:?}:\n{info}",
                    node.port()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        RedisCluster { nodes }
    }

    /// `CLUSTER NODES` as some running node sees it: per node, its port, whether it is a
    /// master, its master's id (a replica's), its id and its slot ranges.
    async fn topology(&self) -> Vec<(u16, bool, String, String, Vec<(u16, u16)>)> {
        let seen = self
            .nodes
            .iter()
            .find(|n| n.running())
            .expect("a running node");
        let text = seen.cli(&["CLUSTER", "NODES"]).await;
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[2].contains("fail") && !f[2].contains("fail?") {
                continue;
            }
            let port = f[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok());
            let Some(port) = port else { continue };
            let ranges = (f[8..].iter())
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => r.parse().ok().map(|s| (s, s)),
                })
                .collect();
            out.push((
                port,
                f[2].contains("master"),
                f[3].to_string(),
                f[0].to_string(),
                ranges,
            ));
        }
        out
    }

    fn index_of(&self, port: u16) -> usize {
        (self.nodes.iter().position(|n| n.port() == port)).expect("a node of this cluster")
    }

    /// The index in `nodes` of the master that holds `tag`'s slot (a key `{tag}...`).
    pub async fn master_of(&self, tag: &str) -> usize {
        let seen = self
            .nodes
            .iter()
            .find(|n| n.running())
            .expect("a running node");
        let slot: u16 = (seen
            .cli(&["CLUSTER", "KEYSLOT", &format!("{{{tag}}}")])
            .await)
            .trim()
            .parse()
            .expect("a slot number");
        let nodes = self.topology().await;
        let (port, ..) = (nodes.iter())
            .find(|n| n.1 && n.4.iter().any(|&(a, b)| a <= slot && slot <= b))
            .unwrap_or_else(|| panic!("no master holds slot {slot}: {nodes:?}"));
        self.index_of(*port)
    }

    /// The index in `nodes` of master `master`'s replica.
    pub async fn replica_of(&self, master: usize) -> usize {
        let nodes = self.topology().await;
        let port = self.nodes[master].port();
        let master = nodes.iter().find(|n| n.0 == port);
        let id = &master
            .unwrap_or_else(|| panic!("no node {port}: {nodes:?}"))
            .3;
        let (port, ..) = (nodes.iter())
            .find(|n| !n.1 && &n.2 == id)
            .unwrap_or_else(|| panic!("no replica of {id}: {nodes:?}"));
        self.index_of(*port)
    }

    /// Waits until node `i` says it is a master (a replica promoted after its master died).
    pub async fn wait_master(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let role = self.nodes[i].cli(&["ROLE"]).await;
            let ok = self.nodes[i].cli(&["CLUSTER", "INFO"]).await;
            if role.starts_with("master") && ok.contains("cluster_state:ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis {} not promoted within {within:?}: {role}",
                self.nodes[i].port()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `replica` has every write its master `master` has made.
    pub async fn wait_synced(&self, master: usize, replica: usize) {
        let offset = |info: String, field: &str| -> Option<u64> {
            let line = info.lines().find(|l| l.starts_with(field))?;
            line.split(':').nth(1)?.trim().parse().ok()
        };
        let deadline = Instant::now() + START_WAIT;
        loop {
            let m = offset(
                self.nodes[master].cli(&["INFO", "replication"]).await,
                "master_repl_offset",
            );
            let r = offset(
                self.nodes[replica].cli(&["INFO", "replication"]).await,
                "slave_repl_offset",
            );
            if m.is_some() && m == r {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica not in sync: {m:?} {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every node as a seed: `redis://h:p,redis://h:p,...`.
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }
}
