//! A cluster of shardcast nodes for the cluster tests: N `shardcast serve --engine redis`
//! child processes (the test build's binary, as [`BinaryServer`]) sharing one Redis URL, each
//! with its own temp data dir, on `127.0.0.1:0`. A test can SIGKILL a node and start it again.
//!
//! It starts no Redis (`super::redis` does) and keeps no client state.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tempfile::TempDir;

use super::{BinaryServer, Http};

/// One node: its process (None once killed), address and data dir.
struct Node {
    server: Option<BinaryServer>,
    addr: SocketAddr,
    data: TempDir,
}

/// N nodes `--engine redis --redis-url URL --node-id i --shards 2`, with no publish rate limit
/// that a test would reach, plus a test's own arguments.
pub struct Cluster {
    nodes: Vec<Node>,
    args: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes on `redis_url` with `extra` arguments; returns once each is listening.
    pub async fn start(n: usize, redis_url: &str, extra: &[&str]) -> Cluster {
        let mut args: Vec<String> = [
            "--engine",
            "redis",
            "--redis-url",
            redis_url,
            "--bind",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--publish-rate",
            "1000000",
            "--publish-burst",
            "1000000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cluster = Cluster {
            nodes: Vec::with_capacity(n),
            args,
        };
        for i in 0..n {
            let data = tempfile::tempdir().expect("temp dir for a node");
            let (server, addr) = cluster.spawn(i, data.path()).await;
            cluster.nodes.push(Node {
                server: Some(server),
                addr,
                data,
            });
        }
        cluster
    }

    async fn spawn(&self, i: usize, data: &Path) -> (BinaryServer, SocketAddr) {
        let id = i.to_string();
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend(["--node-id", &id]);
        let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
        let mut server = BinaryServer::spawn_in(bin, data, &args);
        let addr = server.listening_addr().await;
        (server, addr)
    }

    /// Node `i`'s address (its new one after [`Cluster::restart`]).
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// What node `i` printed so far (empty once killed).
    pub fn output(&self, i: usize) -> String {
        self.nodes[i]
            .server
            .as_ref()
            .map(BinaryServer::output)
            .unwrap_or_default()
    }

    /// SIGKILLs node `i` and waits until it is gone.
    pub async fn kill(&mut self, i: usize) {
        let mut server = self.nodes[i].server.take().expect("node already killed");
        server.signal("KILL");
        server.wait_exit(Duration::from_secs(5)).await;
    }

    /// Starts node `i` again (same id and data dir, a new port) after [`Cluster::kill`].
    pub async fn restart(&mut self, i: usize) -> SocketAddr {
        assert!(self.nodes[i].server.is_none(), "node {i} is still running");
        let (server, addr) = self.spawn(i, self.nodes[i].data.path()).await;
        self.nodes[i].server = Some(server);
        self.nodes[i].addr = addr;
        addr
    }

    /// A kept-alive HTTP connection to node `i`.
    pub async fn http(&self, i: usize) -> Http {
        Http::connect(self.addr(i)).await
    }
}
