//! What the store keeps, and when: seqs, history and inboxes across a restart; every
//! acknowledged message across a `kill -9` of the server binary, and across ten in a row (the
//! crash loop); the `async` and `memory` durability modes; refusals: a `--data` that cannot be
//! a directory, and a full disk at run time (`unavailable`, nothing stored or delivered, the
//! connection still usable).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use shardcast::config::Durability;
use tempfile::TempDir;
use tokio::task::JoinSet;

const QUIET: Duration = Duration::from_millis(300);

/// With `async`, how long the tests wait for acknowledged messages to reach disk: many times
/// the `flush_interval_ms` they set (50).
const FLUSHED: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Restarts in process
// ---------------------------------------------------------------------------------------------

/// A graceful restart on the same data dir (with another shard count): room and inbox seqs go
/// on, history and replay are there, undelivered direct messages arrive at connect, delivered
/// ones do not.
#[tokio::test(flavor = "multi_thread")]
async fn seqs_history_and_inboxes_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(data.path(), |c| {
        fast(c);
        c.shards = 3;
    });
    let mut a = dev(server.addr(), "a").await;
    a.join("r").await;
    publish_numbered(&mut a, "r", 1..=5).await;
    dm_numbered(&mut a, "bob", 1..=2).await;
    dm_numbered(&mut a, "carol", 1..=1).await;
    let mut carol = dev(server.addr(), "carol").await;
    assert_dms(&carol.recv_n(1).await, "carol", "a", 1..=1);
    drop(server);

    let server = TestServer::start_in(data.path(), |c| {
        fast(c);
        c.shards = 2;
    });
    let addr = server.addr();
    let mut a = dev(addr, "a").await;
    assert_eq!(a.welcome["inbox_seq"], 0, "{}", a.welcome);
    assert_eq!(a.join("r").await, 5, "the room's last seq after a restart");
    assert_room_msgs(&a.history_all("r").await, "r", "a", (1..=5).rev());
    let mut c = dev(addr, "c").await;
    assert_recovery(&c.join_since("r", 2).await, 5, true, 3, false);
    assert_room_msgs(&c.recv_n(3).await, "r", "a", 3..=5);
    publish_numbered(&mut a, "r", 6..=6).await;
    assert_room_msgs(&c.recv_n(1).await, "r", "a", 6..=6);
    dm_numbered(&mut a, "bob", 3..=3).await;

    let mut bob = dev(addr, "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 3, "{}", bob.welcome);
    assert_dms(&bob.recv_n(3).await, "bob", "a", 1..=3);
    bob.assert_silent(QUIET).await;
    let mut carol = dev(addr, "carol").await;
    assert_eq!(carol.welcome["inbox_seq"], 1, "{}", carol.welcome);
    carol.assert_silent(QUIET).await;
    let (page, more) = carol.sync(0).await;
    assert_dms(&page, "carol", "a", 1..=1);
    assert!(!more);
}

/// History, replay and offline direct messages within one run, whatever the durability:
/// room "r" ends with messages 1..=5 from b, carol's inbox with 1..=2 from alice (delivered).
async fn serves_history_replay_and_offline_dms(addr: std::net::SocketAddr) {
    let (mut a, mut b) = miss_messages(addr, "r", 2, 5).await;
    assert_recovery(&a.join_since("r", 2).await, 5, true, 3, false);
    assert_room_msgs(&a.recv_n(3).await, "r", "b", 3..=5);
    assert_room_msgs(&b.history_all("r").await, "r", "b", (1..=5).rev());

    let mut alice = dev(addr, "alice").await;
    dm_numbered(&mut alice, "carol", 1..=2).await;
    let mut carol = dev(addr, "carol").await;
    assert_eq!(carol.welcome["inbox_seq"], 2, "{}", carol.welcome);
    assert_dms(&carol.recv_n(2).await, "carol", "alice", 1..=2);
    carol.assert_silent(QUIET).await;
    let (page, more) = carol.sync(0).await;
    assert_dms(&page, "carol", "alice", 1..=2);
    assert!(!more);
}

/// Every file below `dir` (none if it does not exist).
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// `memory`: everything works within a run, nothing is written to disk, so a restart starts
/// from nothing: no history, seqs from 1, empty inboxes.
#[tokio::test(flavor = "multi_thread")]
async fn memory_durability_keeps_history_for_one_run_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let memory = |c: &mut shardcast::config::Config| {
        fast(c);
        c.durability = Durability::Memory;
    };
    let server = TestServer::start_in(&data, memory);
    serves_history_replay_and_offline_dms(server.addr()).await;
    drop(server);
    let written = files_below(&data);
    assert!(written.is_empty(), "memory durability wrote {written:?}");

    let server = TestServer::start_in(&data, memory);
    let mut a = dev(server.addr(), "a").await;
    assert_eq!(
        a.join("r").await,
        0,
        "nothing survives a restart in memory mode"
    );
    let (page, more) = a.history("r", None, None).await;
    assert!(page.is_empty() && !more, "{page:?}");
    publish_numbered(&mut a, "r", 1..=1).await;
    let mut carol = dev(server.addr(), "carol").await;
    assert_eq!(carol.welcome["inbox_seq"], 0, "{}", carol.welcome);
    carol.assert_silent(QUIET).await;
}

/// `async`: everything works within a run, and what was acknowledged a flush interval before
/// a graceful restart is there after it.
#[tokio::test(flavor = "multi_thread")]
async fn async_durability_serves_history_and_keeps_it_across_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let durable_async = |c: &mut shardcast::config::Config| {
        fast(c);
        c.durability = Durability::Async;
        c.flush_interval_ms = 50;
    };
    let server = TestServer::start_in(data.path(), durable_async);
    serves_history_replay_and_offline_dms(server.addr()).await;
    tokio::time::sleep(FLUSHED).await;
    drop(server);

    let server = TestServer::start_in(data.path(), durable_async);
    let mut a = dev(server.addr(), "a").await;
    assert_eq!(a.join("r").await, 5);
    assert_room_msgs(&a.history_all("r").await, "r", "b", (1..=5).rev());
    publish_numbered(&mut a, "r", 6..=6).await;
    let mut carol = dev(server.addr(), "carol").await;
    assert_eq!(carol.welcome["inbox_seq"], 2, "{}", carol.welcome);
    carol.assert_silent(QUIET).await;
}

// ---------------------------------------------------------------------------------------------
// kill -9 of the server binary
// ---------------------------------------------------------------------------------------------

/// The server binary cargo built for these tests, on `data`, with `args` and no publish rate limit to speak of; returns
/// it and its address.
async fn spawn_binary(data: &Path, args: &[&str]) -> (BinaryServer, std::net::SocketAddr) {
    let mut all = vec![
        "--bind",
        "127.0.0.1:0",
        "--shards",
        "2",
        "--presence-events",
        "false",
    ];
    all.extend_from_slice(&NO_RATE_LIMIT);
    all.extend_from_slice(args);
    let mut server = BinaryServer::spawn_in(Path::new(env!("CARGO_BIN_EXE_shardcast")), data, &all);
    let addr = server.listening_addr().await;
    (server, addr)
}

/// `kill -9` and wait for the exit.
async fn kill_9(server: &mut BinaryServer) {
    server.child.start_kill().expect("SIGKILL the server");
    let status = server.wait_exit(TIMEOUT).await;
    assert!(!status.success(), "a killed server exits with {status}");
}

/// What one writer had acknowledged when the server died: seq -> body, for the room and for
/// bob's inbox; and the room messages delivered to it: seq -> message.
#[derive(Default)]
struct Acked {
    room: BTreeMap<u64, Value>,
    inbox: BTreeMap<u64, Value>,
    delivered: BTreeMap<u64, Value>,
}

/// Publishes to room "crash" and sends to "bob" in turn, up to 8 requests in flight, until
/// the connection dies; counts every ack in `count`, and keeps the room messages it gets.
async fn write_until_killed(mut w: Client, count: Arc<AtomicU64>) -> (String, Acked) {
    let mut acked = Acked::default();
    let mut in_flight = BTreeMap::new(); // id -> (to the room?, body)
    for i in 1u64.. {
        if in_flight.len() < 8 {
            let body = json!({"w": w.name, "i": i});
            let frame = if i % 2 == 0 {
                json!({"type": "publish", "room": "crash", "id": i, "body": body})
            } else {
                json!({"type": "send", "to": "bob", "id": i, "body": body})
            };
            match tokio::time::timeout(TIMEOUT, w.try_send_json(&frame)).await {
                Ok(Ok(())) => in_flight.insert(i, (i % 2 == 0, body)),
                _ => break,
            };
            continue;
        }
        let Some(Incoming::Text(text)) = w.next_within(TIMEOUT).await else {
            break;
        };
        let f: Value = serde_json::from_str(&text).expect("JSON");
        match f["type"].as_str() {
            Some("ack") => {
                let (to_room, body) = in_flight
                    .remove(&f["id"].as_u64().expect("id"))
                    .expect("one ack per request");
                let seq = f["seq"].as_u64().expect("seq");
                let into = if to_room {
                    &mut acked.room
                } else {
                    &mut acked.inbox
                };
                assert!(
                    into.insert(seq, body).is_none(),
                    "seq {seq} acked twice: {f}"
                );
                count.fetch_add(1, SeqCst);
            }
            Some("message") => {
                acked.delivered.insert(f["seq"].as_u64().expect("seq"), f);
            }
            _ => panic!("{}: unexpected frame {f}", w.name),
        }
    }
    (w.name.clone(), acked)
}

/// `sync` pages from 0 until `more:false`; returns seq -> message. Frames other than the
/// replies (the offline replay) are skipped.
async fn whole_inbox(c: &mut Client) -> BTreeMap<u64, Value> {
    let mut all = BTreeMap::new();
    let mut since = 0;
    loop {
        let (_, reply) = c.request(json!({"type": "sync", "since": since})).await;
        assert_eq!(reply["type"], "sync", "{reply}");
        let page = reply["messages"].as_array().expect("messages");
        all.extend(page.iter().map(|m| (m["seq"].as_u64().unwrap(), m.clone())));
        if reply["more"] != true {
            return all;
        }
        since = page.last().expect("an empty page with more:true")["seq"]
            .as_u64()
            .unwrap();
    }
}

/// `sync` durability: kill -9 in the middle of a stream of publishes and direct messages;
/// after a restart every acknowledged message, and every delivered one, is there with its
/// body, and new ones get seqs above every acknowledged and every stored one.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_acknowledged_message() {
    const WRITERS: usize = 4;
    let data = tempfile::tempdir().unwrap();
    let (mut server, addr) = spawn_binary(data.path(), &[]).await;
    let count = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    for k in 0..WRITERS {
        let mut w = dev(addr, &format!("w{k}")).await;
        w.join("crash").await;
        writers.spawn(write_until_killed(w, count.clone()));
    }
    eventually(Duration::from_secs(30), "2,000 acks", async || {
        (count.load(SeqCst) >= 2_000).then_some(())
    })
    .await;
    kill_9(&mut server).await;
    let mut room = BTreeMap::new(); // seq -> (from, body)
    let mut inbox = BTreeMap::new();
    let mut delivered = BTreeMap::new(); // seq -> message
    while let Some(r) = writers.join_next().await {
        let (from, acked) = r.expect("writer task");
        delivered.extend(acked.delivered);
        for (into, acked) in [(&mut room, acked.room), (&mut inbox, acked.inbox)] {
            for (seq, body) in acked {
                assert!(
                    into.insert(seq, (json!(from), body)).is_none(),
                    "seq {seq} twice"
                );
            }
        }
    }

    let (_server, addr) = spawn_binary(data.path(), &[]).await;
    let mut checker = dev(addr, "checker").await;
    let last = checker.join("crash").await;
    let stored: BTreeMap<u64, Value> = checker
        .history_all("crash")
        .await
        .into_iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m))
        .collect();
    for (seq, (from, body)) in &room {
        let m = stored
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged room seq {seq} is not in history"));
        assert_room_msg(m, "crash", from.as_str().unwrap(), body);
    }
    for (seq, m) in &delivered {
        assert_eq!(
            stored.get(seq),
            Some(m),
            "room seq {seq} was delivered before the kill, so it was on disk"
        );
    }
    let highest = room.keys().chain(stored.keys()).max().copied().unwrap();
    assert!(
        last >= highest,
        "the join ack's seq {last} is below seq {highest}"
    );
    let next = checker.publish("crash", json!("after")).await;
    assert_eq!(next, last + 1, "the first seq after the restart");

    let mut bob = dev(addr, "bob").await;
    let inbox_seq = bob.welcome["inbox_seq"].as_u64().expect("inbox_seq");
    let stored = whole_inbox(&mut bob).await;
    for (seq, (from, body)) in &inbox {
        let m = stored
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged inbox seq {seq} is not stored"));
        assert_dm(m, "bob", from.as_str().unwrap(), body);
    }
    let highest = inbox.keys().chain(stored.keys()).max().copied().unwrap();
    assert!(
        inbox_seq >= highest,
        "welcome inbox_seq {inbox_seq} < {highest}"
    );
    let next = checker.dm("bob", json!("after")).await;
    assert_eq!(next, inbox_seq + 1, "the first inbox seq after the restart");
}

/// `async` durability: what was acknowledged a flush interval before a kill -9 is there after
/// a restart.
#[tokio::test(flavor = "multi_thread")]
async fn async_durability_keeps_what_was_flushed_across_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let args = ["--durability", "async", "--flush-interval-ms", "50"];
    let (mut server, addr) = spawn_binary(data.path(), &args).await;
    let mut w = dev(addr, "w").await;
    w.join("r").await;
    publish_numbered(&mut w, "r", 1..=20).await;
    dm_numbered(&mut w, "bob", 1..=5).await;
    tokio::time::sleep(FLUSHED).await;
    kill_9(&mut server).await;

    let (_server, addr) = spawn_binary(data.path(), &args).await;
    let mut w = dev(addr, "w").await;
    assert_eq!(w.join("r").await, 20);
    assert_room_msgs(&w.history_all("r").await, "r", "w", (1..=20).rev());
    publish_numbered(&mut w, "r", 21..=21).await;
    let mut bob = dev(addr, "bob").await;
    assert_eq!(bob.welcome["inbox_seq"], 5, "{}", bob.welcome);
    assert_dms(&bob.recv_n(5).await, "bob", "w", 1..=5);
}

/// Direct messages that reached a connection before a kill -9 are not replayed at the next
/// connect: offline delivery is exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_does_not_replay_delivered_direct_messages() {
    let data = tempfile::tempdir().unwrap();
    let (mut server, addr) = spawn_binary(data.path(), &[]).await;
    let mut alice = dev(addr, "alice").await;
    let mut bob = dev(addr, "bob").await;
    dm_numbered(&mut alice, "bob", 1..=5).await;
    assert_dms(&bob.recv_n(5).await, "bob", "alice", 1..=5);
    dm_numbered(&mut alice, "carol", 1..=2).await;
    let mut carol = dev(addr, "carol").await;
    assert_dms(&carol.recv_n(2).await, "carol", "alice", 1..=2);
    // Time for any bookkeeping of the deliveries to reach the store.
    tokio::time::sleep(FLUSHED).await;
    kill_9(&mut server).await;

    let (_server, addr) = spawn_binary(data.path(), &[]).await;
    for (user, inbox_seq) in [("bob", 5), ("carol", 2)] {
        let mut c = dev(addr, user).await;
        assert_eq!(c.welcome["inbox_seq"], inbox_seq, "{}", c.welcome);
        c.assert_silent(QUIET).await;
    }
}

/// The crash loop: `kills` times in a row, the server binary is killed with SIGKILL under
/// publish and direct-message load and restarted on the same data. Afterwards every
/// acknowledged message is stored with its body, history has no duplicate seq, and each
/// writer's messages are in the order it sent them (rounds included).
async fn crash_loop(kills: usize) {
    const WRITERS: usize = 3;
    const ACKS_PER_ROUND: u64 = 300;
    let data = tempfile::tempdir().unwrap();
    let mut room = BTreeMap::new(); // seq -> (from, body), over every round
    let mut inbox = BTreeMap::new();
    for round in 0..kills {
        let (mut server, addr) = spawn_binary(data.path(), &[]).await;
        let count = Arc::new(AtomicU64::new(0));
        let mut writers = JoinSet::new();
        for k in 0..WRITERS {
            let mut w = dev(addr, &format!("r{round}w{k}")).await;
            w.join("crash").await;
            writers.spawn(write_until_killed(w, count.clone()));
        }
        eventually(
            Duration::from_secs(30),
            "acks before the kill",
            async || (count.load(SeqCst) >= ACKS_PER_ROUND).then_some(()),
        )
        .await;
        kill_9(&mut server).await;
        while let Some(r) = writers.join_next().await {
            let (from, acked) = r.expect("writer task");
            for (into, acked) in [(&mut room, acked.room), (&mut inbox, acked.inbox)] {
                for (seq, body) in acked {
                    assert!(
                        into.insert(seq, (from.clone(), body)).is_none(),
                        "round {round}: seq {seq} was acknowledged in an earlier round too"
                    );
                }
            }
        }
    }

    let (_server, addr) = spawn_binary(data.path(), &[]).await;
    let mut checker = dev(addr, "checker").await;
    checker.join("crash").await;
    let mut history = checker.history_all("crash").await;
    history.reverse();
    let mut seqs = seqs(&history);
    let stored = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), stored, "history has a duplicate seq");
    assert!(seqs.is_sorted(), "history is not in seq order: {seqs:?}");
    let by_seq: BTreeMap<u64, &Value> = history
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m))
        .collect();
    for (seq, (from, body)) in &room {
        let m = by_seq
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged room seq {seq} is not in history"));
        assert_room_msg(m, "crash", from, body);
    }
    // In seq order, each writer's `i` goes up, and the rounds follow each other.
    let mut last_i: BTreeMap<&str, u64> = BTreeMap::new();
    let mut last_round = 0;
    for m in &history {
        let from = m["from"].as_str().unwrap();
        let round: usize = from[1..from.find('w').unwrap()].parse().unwrap();
        assert!(
            round >= last_round,
            "a round-{round} message after round {last_round}'s"
        );
        last_round = round;
        let i = m["body"]["i"].as_u64().unwrap();
        let prev = last_i.insert(from, i);
        assert!(prev < Some(i), "{from}'s message {i} after its {prev:?}");
    }

    let mut bob = dev(addr, "bob").await;
    let stored = whole_inbox(&mut bob).await;
    for (seq, (from, body)) in &inbox {
        let m = stored
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged inbox seq {seq} is not stored"));
        assert_dm(m, "bob", from, body);
    }
    eprintln!(
        "crash loop: {kills} kills, {} room and {} direct messages acknowledged, all stored",
        room.len(),
        inbox.len()
    );
}

/// The crash loop of issue 12: 10 kills in a row. It takes a few seconds, so every `cargo test`
/// runs it.
#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_of_10_kills_loses_and_reorders_nothing() {
    crash_loop(10).await;
}

// ---------------------------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------------------------

/// `--data` below a regular file: the binary exits non-zero, naming the path and `--data`.
#[tokio::test(flavor = "multi_thread")]
async fn data_dir_below_a_regular_file_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("file");
    std::fs::write(&file, "not a directory").unwrap();
    let data = file.join("data");
    let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
    let mut server = BinaryServer::spawn_in(bin, &data, &["--bind", "127.0.0.1:0"]);
    let status = server.wait_exit(Duration::from_secs(20)).await;
    server.finish_output().await;
    let stderr = server.stderr();
    assert!(!status.success(), "exit status {status}; output:\n{stderr}");
    assert!(
        stderr.contains(&data.display().to_string()) && stderr.contains("--data"),
        "the error must name {} and --data:\n{stderr}",
        data.display()
    );
    assert!(
        parse_listening(&server.output()).is_none(),
        "{}",
        server.output()
    );
}

/// A tmpfs mounted on a temp dir for one test, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs { dir },
            Ok(o) => panic!(
                "cannot mount a tmpfs on {} ({}): this test needs root and mount(8):\n{}",
                dir.path().display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => panic!("cannot run mount(8): {e}; this test needs root and mount"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The free-disk floor on a real file system: a 64 MiB tmpfs with a floor of 24 MiB. Filling
/// it to under the floor turns `/readyz` 503 and refuses a publish with the disk's figures while
/// history answers; deleting the filler brings both back, with no restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_below_its_floor_refuses_messages_until_space_is_freed() {
    const FLOOR: u64 = 24 << 20;
    let disk = Tmpfs::mount("64m");
    let server = TestServer::start_in(&disk.path().join("data"), |c| {
        fast(c);
        c.min_free_disk_bytes = FLOOR;
    });
    let addr = server.addr();
    let mut http = Http::connect(addr).await;
    let mut a = dev(addr, "a").await;
    a.join("r").await;
    assert_eq!(a.publish("r", json!("before")).await, 1);

    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0xa5u8; 48 << 20]).unwrap();
    readyz_becomes(&mut http, 503).await;
    let reply = a
        .call(json!({"type": "publish", "room": "r", "body": "refused", "id": "p"}))
        .await;
    assert_error(&reply, "unavailable", Some(&json!("p")));
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("disk is almost full") && message.contains(&FLOOR.to_string()),
        "{message}"
    );
    let (page, _) = a.history("r", None, None).await;
    assert_eq!(seqs(&page), [1]);

    std::fs::remove_file(&filler).unwrap();
    readyz_becomes(&mut http, 200).await;
    assert_eq!(a.publish("r", json!("after")).await, 2);
}

/// Writes `path` until the file system has no byte left.
fn fill_disk(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 1 << 16];
    for size in [1 << 16, 4096, 512, 1] {
        loop {
            match f.write(&chunk[..size]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = f.sync_all();
}

/// `len` characters that do not compress (an engine may compress what it writes), different
/// for each `seed`.
fn incompressible(seed: u64, len: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            CHARS[(x >> 58) as usize] as char
        })
        .collect()
}

/// A full disk at run time: a publish (and a send) is refused with `unavailable`, echoing its
/// id, with no ack; it is not delivered and not stored; the connection stays usable; once
/// there is room again, publishing works and the refused message never shows up. This is the
/// failed write behind the free-disk floor, so the floor is off.
#[tokio::test(flavor = "multi_thread")]
async fn full_disk_refuses_publishes_with_unavailable() {
    let disk = Tmpfs::mount("16m");
    let server = TestServer::start_in(&disk.path().join("data"), |c| {
        fast(c);
        c.min_free_disk_bytes = 0;
    });
    let addr = server.addr();
    let mut a = dev(addr, "a").await;
    let mut b = dev(addr, "b").await;
    a.join("r").await;
    b.join("r").await;
    publish_numbered(&mut a, "r", 1..=1).await;
    assert_room_msgs(&b.recv_n(1).await, "r", "a", 1..=1);

    let filler = disk.path().join("filler");
    fill_disk(&filler);
    // An engine may have room for a few more writes; 60 KB that do not compress need the disk.
    let mut acked = vec![1];
    let refused = loop {
        let n = acked.len() as u64 + 1;
        let body = json!({"n": n, "pad": incompressible(n, 60_000)});
        let id = json!(format!("full-{n}"));
        let reply = a
            .call(json!({"type": "publish", "room": "r", "body": body, "id": id}))
            .await;
        if reply["type"] == "ack" {
            assert!(n < 64, "4 MB published to a full disk, all acknowledged");
            acked.push(reply["seq"].as_u64().unwrap());
            assert_eq!(b.recv_json().await["seq"], reply["seq"]);
            continue;
        }
        assert_error(&reply, "unavailable", Some(&id));
        break n;
    };
    a.assert_silent(QUIET).await;
    b.assert_silent(QUIET).await;
    a.ping().await;
    let reply = a
        .call(json!({"type": "send", "to": "b", "body": incompressible(0, 60_000), "id": "dm"}))
        .await;
    assert_error(&reply, "unavailable", Some(&json!("dm")));
    b.assert_silent(QUIET).await;

    std::fs::remove_file(&filler).unwrap();
    let seq = eventually(
        Duration::from_secs(10),
        "a publish succeeds once the disk has room again",
        async || {
            let reply = a
                .call(json!({"type": "publish", "room": "r", "body": "back"}))
                .await;
            match reply["type"].as_str() {
                Some("ack") => Some(reply["seq"].as_u64().unwrap()),
                _ => {
                    assert_error(&reply, "unavailable", Some(&reply["id"]));
                    None
                }
            }
        },
    )
    .await;
    assert!(seq > *acked.last().unwrap(), "seq {seq} after {acked:?}");
    let got = b.recv_json().await;
    assert_eq!(assert_room_msg(&got, "r", "a", &json!("back")), seq);
    let history = a.history_all("r").await;
    let stored: Vec<u64> = seqs(&history).into_iter().rev().collect();
    let mut expected = acked.clone();
    expected.push(seq);
    assert_eq!(
        stored, expected,
        "history holds the acknowledged messages only (publish {refused} was refused)"
    );
    assert!(
        history.iter().all(|m| m["body"]["n"] != refused),
        "the refused message is in history"
    );
}
