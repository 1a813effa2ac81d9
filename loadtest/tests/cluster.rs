//! The bot against a real three-node cluster: a redis-server started here in a temp dir on a free
//! port, and three shardcast nodes of the redis engine started in this process. The bot gets the
//! three URLs and the Redis URL, spreads its clients over the nodes and must see exact delivery
//! across them, and read Redis's counters. No timing assertions: it keeps the bot's cluster
//! mode from rotting, it is not a benchmark.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use shardcast::config::{Config, Engine};
use shardcast::server::Server;
use shardcast_loadtest::{Cli, Report, run};

/// A redis-server in a temp dir, killed on drop.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server on a free port. The port is found by binding and releasing it, so
    /// another process may take it first (tests run in parallel): then redis-server exits, and
    /// this tries another port. Ready means it answers PING, not merely that the port accepts.
    fn start() -> Redis {
        for _ in 0..5 {
            if let Some(redis) = Redis::try_start() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    fn try_start() -> Option<Redis> {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect(
                "cannot run redis-server: install Debian's redis-server package \
                 (.ci/run installs it)",
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !answers_ping(port) {
            if child.try_wait().expect("wait on redis-server").is_some() {
                return None;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Redis {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a Redis on `port` answers `PING` with `+PONG`.
fn answers_ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    c.write_all(b"PING\r\n").is_ok() && c.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Starts Redis and three nodes, runs the bot with `args` against them, stops everything.
fn run_against_cluster(args: &[&str]) -> Report {
    let redis = Redis::start();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Server> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            Server::start(Config {
                bind: "127.0.0.1:0".parse().unwrap(),
                data: d.path().to_path_buf(),
                engine: Engine::Redis,
                redis_url: Some(redis.url()),
                node_id: Some(i as u16),
                publish_rate: 1_000_000,
                publish_burst: 1_000_000,
                user_store_rate_bytes: 0,
                ..Default::default()
            })
            .expect("start a node")
        })
        .collect();
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("ws://{}", n.local_addr()))
        .collect();
    let urls = urls.join(",");
    let redis_url = redis.url();
    let mut argv = vec!["shardcast-loadtest"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--url", &urls, "--redis-url", &redis_url]);
    argv.extend_from_slice(&["--no-progress", "--threads", "2"]);
    let cli = Cli::try_parse_from(argv).expect("valid arguments");
    let report = run(&cli).expect("the run completes");
    for n in nodes {
        n.shutdown();
        n.join();
    }
    report
}

fn assert_exact(report: &Report) {
    let d = report.delivery.as_ref().expect("a delivery report");
    assert!(d.published > 0 && d.delivered > 0, "{d:#?}");
    assert_eq!(
        (d.lost, d.duplicates, d.out_of_order, d.unexpected),
        (0, 0, 0, 0),
        "{d:#?}"
    );
    assert_eq!(d.delivered, d.expected, "{d:#?}");
    assert_eq!(d.acked, d.published, "{d:#?}");
    assert!(report.passed, "{}", report.human());
    assert_eq!(report.target.nodes.len(), 3);
}

/// Redis saw the publishes: its counters moved, and at least one command per publish.
fn assert_redis_read(report: &Report) {
    let r = report.redis.as_ref().expect("Redis's INFO was read");
    assert!(r.commands > 0, "{r:#?}");
    assert!(r.commands_per_publish.is_some_and(|c| c >= 1.0), "{r:#?}");
    assert!(!r.by_command.is_empty(), "{r:#?}");
}

#[test]
fn chat_across_three_nodes_delivers_exactly() {
    // Rooms of 6: members 0..6 land on nodes 0, 1, 2, 0, 1, 2, so every room spans every node.
    let report = run_against_cluster(&[
        "chat",
        "--users",
        "120",
        "--room-size",
        "6",
        "--rate",
        "5",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ]);
    assert_exact(&report);
    let d = report.delivery.as_ref().unwrap();
    assert_eq!(d.expected, d.published * 5, "{d:#?}");
    assert_redis_read(&report);
}

#[test]
fn fanout_and_dm_across_three_nodes_deliver_exactly() {
    let report = run_against_cluster(&[
        "fanout",
        "--subscribers",
        "60",
        "--publishers",
        "3",
        "--rate",
        "10",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
    ]);
    assert_exact(&report);
    assert_redis_read(&report);
    // Pairs 2i, 2i+1 sit on different nodes (i mod 3), so every DM crosses nodes.
    let report = run_against_cluster(&[
        "dm",
        "--users",
        "60",
        "--rate",
        "5",
        "--duration",
        "1.5",
        "--warmup",
        "0.5",
    ]);
    assert_exact(&report);
}
