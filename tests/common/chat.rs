//! Both engines behind one face, for the chat tests (signals, read positions): an embedded
//! [`TestServer`] (every "node" is the same server) or two nodes on a real `redis-server`
//! ([`Cluster`]), started with the same settings (given as flags).

use std::net::SocketAddr;

use serde_json::Value;

use super::cluster::{Cluster, metric_sum};
use super::redis::RedisServer;
use super::{Http, TestServer};

pub enum Engine {
    Embedded(TestServer),
    Redis {
        cluster: Cluster,
        _redis: RedisServer,
    },
}

impl Engine {
    /// An embedded server with `flags` (as `--name value` pairs, applied to the config).
    pub async fn embedded(flags: &[(&str, &str)]) -> Engine {
        let flags: Vec<(String, String)> = flags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Engine::Embedded(TestServer::start(|c| {
            super::fast(c);
            c.presence_events = false;
            for (k, v) in &flags {
                set(c, k, v);
            }
        }))
    }

    /// Two nodes on a fresh redis-server with `flags`.
    pub async fn redis(flags: &[(&str, &str)]) -> Engine {
        let redis = RedisServer::start().await;
        let mut extra = vec!["--presence-events", "false", "--user-store-rate-bytes", "0"];
        for (k, v) in flags {
            extra.push(k);
            extra.push(v);
        }
        let cluster = Cluster::start(2, &redis.url(), &extra).await;
        Engine::Redis {
            cluster,
            _redis: redis,
        }
    }

    /// Node `i`'s address (the one server for the embedded engine).
    pub fn addr(&self, i: usize) -> SocketAddr {
        match self {
            Engine::Embedded(s) => s.addr(),
            Engine::Redis { cluster, .. } => cluster.addr(i % cluster.len()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Engine::Embedded(_) => "embedded",
            Engine::Redis { .. } => "redis",
        }
    }

    /// `GET path` on node `i`: status and JSON.
    pub async fn get(&self, i: usize, path: &str) -> (u16, Value) {
        let reply = Http::connect(self.addr(i)).await.get(path, &[]).await;
        let json = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
        (reply.status, json)
    }

    /// The sum of metric `name` on node `i`.
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        let reply = Http::connect(self.addr(i)).await.get("/metrics", &[]).await;
        metric_sum(&reply.body, name)
    }
}

/// Sets one config field by its flag name (the few the chat tests use).
fn set(c: &mut shardcast::config::Config, flag: &str, v: &str) {
    let n = || v.parse::<u64>().expect("a number");
    match flag {
        "--signal-rate" => c.signal_rate = n() as u32,
        "--signal-burst" => c.signal_burst = n() as u32,
        "--max-signal-bytes" => c.max_signal_bytes = n() as usize,
        "--signal-queue-bytes" => c.signal_queue_bytes = n() as usize,
        "--max-queue-bytes" => c.max_queue_bytes = n() as usize,
        "--read-interval-ms" => c.read_interval_ms = n(),
        "--jwt-secret" => c.jwt_secret = Some(v.to_owned()),
        "--api" => c.api = v == "true",
        "--config" => {
            let text = std::fs::read_to_string(v).expect("the config file");
            let file: toml::Table = toml::from_str(&text).expect("a config file");
            let rooms = file.get("rooms").cloned().expect("[[rooms]] tables");
            c.rooms = rooms.try_into().expect("[[rooms]] tables");
        }
        other => panic!("no such flag in tests/common/chat.rs: {other}"),
    }
}

/// Two tests, `$embedded` and `$redis`, each running `$scenario(Engine)` on its engine started
/// with `$flags`.
#[macro_export]
macro_rules! on_both_engines {
    ($embedded:ident, $redis:ident, $scenario:ident, $flags:expr) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $embedded() {
            $scenario(common::chat::Engine::embedded($flags).await).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $redis() {
            $scenario(common::chat::Engine::redis($flags).await).await;
        }
    };
}
