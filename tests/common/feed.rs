//! The event feed's test backend and checks, shared by tests/feed.rs (embedded engine) and
//! tests/feed_redis.rs (the redis engine): [`Backend`], the Python webhook receiver
//! (tests/fixtures/feed_backend.py, its own signature check), the batches it accepted, and
//! [`unique_events`], which checks that a repeated `id` repeats the same event.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const FEED_SECRET: &str = "feed-test-secret-0123456789";
/// Generous: the machine these run on may be loaded; nothing waits this long when it passes.
pub const WAIT: Duration = Duration::from_secs(60);

/// The Python backend, killed on drop.
pub struct Backend {
    child: tokio::process::Child,
    out: PathBuf,
}

impl Backend {
    /// Starts the backend on `port` (0: any), writing batches to `out`; `fail`: answer 500 to
    /// that many batches first.
    pub async fn start(port: u16, out: &Path, fail: u32) -> (Backend, u16) {
        Backend::start_with(port, out, fail, &[]).await
    }

    /// [`Backend::start`] with more of the script's options (`--tls DIR`).
    pub async fn start_with(port: u16, out: &Path, fail: u32, extra: &[&str]) -> (Backend, u16) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/feed_backend.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string(), "--secret", FEED_SECRET])
            .args(["--fail", &fail.to_string()])
            .arg("--out")
            .arg(out)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the backend");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the backend starts")
            .unwrap()
            .expect("the backend prints its port");
        let port = line.strip_prefix("listening ").unwrap().parse().unwrap();
        (
            Backend {
                child,
                out: out.to_owned(),
            },
            port,
        )
    }

    /// Every batch accepted so far.
    pub fn batches(&self) -> Vec<Value> {
        batches_in(&self.out)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

pub fn batches_in(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A free port, for a backend that starts later.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The events of `batches`, each id once (the first time), checking that a repeated id
/// repeats the same event, and that cursors rise.
pub fn unique_events(batches: &[Value]) -> Vec<Value> {
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let mut out = Vec::new();
    for e in batches.iter().flat_map(|b| b["events"].as_array().unwrap()) {
        let id = e["id"].as_str().unwrap().to_owned();
        match seen.get(&id) {
            Some(first) => assert_eq!(first, e, "a repeated id is the same event"),
            None => {
                seen.insert(id, e.clone());
                out.push(e.clone());
            }
        }
    }
    let cursors: Vec<u64> = out
        .iter()
        .map(|e| e["cursor"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "events arrive in cursor order: {cursors:?}"
    );
    out
}

pub fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == kind).collect()
}

pub fn event_seqs(events: &[&Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// Each event as (`event`, its `user` or `to`, its `room`), "" where it has none: what an
/// order-of-events check compares.
pub fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            (s("event"), s("user") + &s("to"), s("room"))
        })
        .collect()
}

/// `wanted` as [`summary`] gives it.
pub fn owned(wanted: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    (wanted.iter())
        .map(|(e, u, r)| (e.to_string(), u.to_string(), r.to_string()))
        .collect()
}
