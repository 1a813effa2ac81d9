//! The event feed (docs/hooks.md, "The event feed"): events stored with what they tell of and
//! delivered from a cursor, at least once, in order, signed. The webhook backend is a real
//! HTTP server in Python (tests/fixtures/feed_backend.py) with its own implementation of the
//! signature check; it is down for a run of publishes and DMs, up again, and across a kill -9
//! of the server binary. Also: `direct` with `offline`, presence and connection events,
//! `GET /api/events` paging, and retention's `dropped`.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use common::feed::*;
use common::*;
use serde_json::{Value, json};

fn webhook(c: &mut shardcast::config::Config, port: u16) {
    fast(c);
    c.webhook_url = Some(format!("http://127.0.0.1:{port}/feed"));
    c.webhook_secret = Some(FEED_SECRET.into());
    c.webhook_backoff_max_ms = 200;
}

async fn publish(addr: SocketAddr, room: &str, n: u64) -> u64 {
    let body = json!({"room": room, "body": {"n": n}}).to_string();
    let r = api(addr, "POST", "/api/publish", None, &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["seq"].as_u64().unwrap()
}

async fn send(addr: SocketAddr, to: &str, n: u64) -> u64 {
    let body = json!({"to": to, "body": {"n": n}}).to_string();
    let r = api(addr, "POST", "/api/send", None, &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body["seq"].as_u64().unwrap()
}

/// The backend is down while 30 room messages and 10 DMs are stored, then comes up (and
/// answers 500 twice first): every event arrives once, in order, each batch signed (the
/// backend refuses a bad signature, checked by a forged POST), at most `webhook_batch` a POST.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_down_then_up_gets_every_event_once_in_order() {
    let port = free_port();
    let server = TestServer::start(|c| {
        webhook(c, port);
        c.webhook_batch = 7;
    });
    let addr = server.addr();
    for n in 1..=30 {
        assert_eq!(publish(addr, "lobby", n).await, n);
    }
    for n in 1..=10 {
        assert_eq!(send(addr, "bob", n).await, n);
    }
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = Backend::start(port, &dir.path().join("b.jsonl"), 2).await;
    let events = eventually(WAIT, "all 40 events reach the backend", async || {
        let events = unique_events(&backend.batches());
        (events.len() >= 40).then_some(events)
    })
    .await;
    let batches = backend.batches();
    assert!(
        batches
            .iter()
            .all(|b| b["events"].as_array().unwrap().len() <= 7)
    );
    assert_eq!(
        batches
            .iter()
            .map(|b| b["events"].as_array().unwrap().len())
            .sum::<usize>(),
        events.len(),
        "no event twice without a crash"
    );
    let messages = of_kind(&events, "message");
    assert_eq!(event_seqs(&messages), (1..=30).collect::<Vec<_>>());
    assert!(
        messages
            .iter()
            .all(|e| e["room"] == "lobby" && e["data"]["room"] == "lobby")
    );
    assert_eq!(messages[4]["data"]["body"]["n"], 5);
    let directs = of_kind(&events, "direct");
    assert_eq!(event_seqs(&directs), (1..=10).collect::<Vec<_>>());
    assert!(
        directs
            .iter()
            .all(|e| e["to"] == "bob" && e["offline"] == true)
    );

    // The backend's check is real: a forged signature is refused.
    let forged = Http::connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .request(
            "POST",
            "/feed",
            &[("Shardcast-Signature", "t=1,v1=00")],
            "{\"dropped\":0,\"events\":[]}",
        )
        .await;
    assert_eq!(forged.status, 400);
    // The mark (and the counters) move once the answer is in: just after the backend wrote.
    let metrics = eventually(WAIT, "the metrics count the delivery", async || {
        let m = Http::connect(addr).await.get("/metrics", &[]).await.body;
        (m.contains("shardcast_feed_delivered_total 40") && m.contains("shardcast_feed_backlog 0"))
            .then_some(m)
    })
    .await;
    let failed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shardcast_feed_failed_total "))
        .unwrap();
    assert!(failed.parse::<u64>().unwrap() >= 2, "{metrics}");
    backend.stop().await;
}

/// `direct` says `offline: true` only when the recipient had no connection.
#[tokio::test(flavor = "multi_thread")]
async fn direct_is_offline_only_without_a_connection() {
    let server = TestServer::start(|c| {
        fast(c);
        c.event_feed = true;
    });
    let addr = server.addr();
    send(addr, "bob", 1).await;
    let mut bob = dev(addr, "bob").await;
    bob.recv_type("message").await;
    send(addr, "bob", 2).await;
    bob.recv_type("message").await;
    let events = pull_all(addr).await;
    let directs = of_kind(&events, "direct");
    assert_eq!(event_seqs(&directs), [1, 2]);
    assert_eq!(directs[0]["offline"], true);
    assert_eq!(directs[1]["offline"], false);
}

/// Every event after cursor 0, through `GET /api/events` pages of 3.
async fn pull_all(addr: SocketAddr) -> Vec<Value> {
    let mut after = "0".to_owned();
    let mut out = Vec::new();
    loop {
        let path = format!("/api/events?after={after}&limit=3");
        let r = api(addr, "GET", &path, None, "").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body["dropped"], 0);
        let events = r.body["events"].as_array().unwrap().clone();
        assert!(events.len() <= 3);
        if events.is_empty() {
            assert_eq!(r.body["next"], after.as_str(), "nothing new: same cursor");
            return out;
        }
        after = r.body["next"].as_str().unwrap().to_owned();
        assert_eq!(events.last().unwrap()["cursor"], after.as_str());
        out.extend(events);
    }
}

/// Connections, a `list` room's members and every room's occupancy, in the order they
/// happened; paged by `GET /api/events` with no event twice or missed.
#[tokio::test(flavor = "multi_thread")]
async fn presence_occupancy_and_connections_are_events() {
    // One shard: events of different homes reach the writer in the order they happen.
    let server = TestServer::start(|c| {
        fast(c);
        c.event_feed = true;
        c.shards = 1;
    });
    let addr = server.addr();
    let mut a = dev(addr, "alice").await;
    a.join("r").await;
    let mut b = dev(addr, "bob").await;
    b.join("r").await;
    a.leave("r").await;
    b.leave("r").await;
    b.close().await;
    let wanted = [
        ("connected", "alice", ""),
        ("occupied", "", "r"),
        ("joined", "alice", "r"),
        ("connected", "bob", ""),
        ("joined", "bob", "r"),
        ("left", "alice", "r"),
        ("left", "bob", "r"),
        ("vacated", "", "r"),
        ("disconnected", "bob", ""),
    ];
    let events = eventually(WAIT, "bob's disconnect is an event", async || {
        let events = pull_all(addr).await;
        (events.len() >= wanted.len()).then_some(events)
    })
    .await;
    assert_eq!(summary(&events), owned(&wanted));
    let ids: HashSet<_> = events.iter().map(|e| e["id"].clone()).collect();
    assert_eq!(ids.len(), events.len(), "ids are unique");
    assert!(events.iter().all(|e| e["time"].as_u64().unwrap() > 0));
}

/// Past `webhook_retention_events` the oldest undelivered events are dropped, and the next
/// batch says how many; the pull API says the same to a reader behind them.
#[tokio::test(flavor = "multi_thread")]
async fn retention_drops_the_oldest_and_the_next_batch_says_how_many() {
    let port = free_port();
    let server = TestServer::start(|c| {
        webhook(c, port);
        c.webhook_retention_events = 10;
    });
    let addr = server.addr();
    for n in 1..=30 {
        publish(addr, "r", n).await;
    }
    let page = eventually(WAIT, "retention applies", async || {
        let r = api(addr, "GET", "/api/events?after=0&limit=100", None, "").await;
        (r.body["dropped"] == 20).then_some(r.body)
    })
    .await;
    assert_eq!(
        event_seqs(&of_kind(page["events"].as_array().unwrap(), "message")),
        (21..=30).collect::<Vec<_>>()
    );
    let dir = tempfile::tempdir().unwrap();
    let (backend, _) = Backend::start(port, &dir.path().join("b.jsonl"), 0).await;
    let batches = eventually(WAIT, "the last 10 arrive", async || {
        let b = backend.batches();
        (unique_events(&b).len() >= 10).then_some(b)
    })
    .await;
    assert_eq!(batches[0]["dropped"], 20, "{batches:?}");
    let dropped: u64 = batches.iter().map(|b| b["dropped"].as_u64().unwrap()).sum();
    assert_eq!(dropped, 20);
    let events = unique_events(&batches);
    assert_eq!(
        event_seqs(&of_kind(&events, "message")),
        (21..=30).collect::<Vec<_>>()
    );
    eventually(WAIT, "the metrics count the drop", async || {
        let m = Http::connect(addr).await.get("/metrics", &[]).await.body;
        m.contains("shardcast_feed_dropped_total 20").then_some(())
    })
    .await;
    backend.stop().await;
}

/// Without `event_feed` or a `webhook_url`, `GET /api/events` says how to turn it on.
#[tokio::test(flavor = "multi_thread")]
async fn the_pull_api_needs_the_feed_on() {
    let server = TestServer::start(fast);
    let r = api(server.addr(), "GET", "/api/events", None, "").await;
    assert_eq!(r.status, 404);
    assert!(
        r.body["message"].as_str().unwrap().contains("--event-feed"),
        "{r:?}"
    );
    let server = TestServer::start(|c| {
        fast(c);
        c.event_feed = true;
    });
    let r = api(server.addr(), "GET", "/api/events?limit=0", None, "").await;
    assert_eq!(r.status, 400, "{r:?}");
}

/// The server binary, killed with -9 twice: once while the backend is down (20 messages and
/// 10 DMs stored, none delivered), once while it takes a stream of publishes. After each
/// restart on the same data dir, every acknowledged message arrives, in order; a repeat is
/// the same event (same `id`) and only from the batch in flight at the kill.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_loses_no_event() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("b.jsonl");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/feed");
    let args = [
        "--webhook-url",
        &url,
        "--webhook-secret",
        FEED_SECRET,
        "--webhook-backoff-max-ms",
        "200",
        "--webhook-batch",
        "5",
    ];
    let bin = Path::new(env!("CARGO_BIN_EXE_shardcast"));
    let spawn = async || {
        let mut all = vec!["--bind", "127.0.0.1:0", "--shards", "2"];
        all.extend_from_slice(&NO_RATE_LIMIT);
        all.extend_from_slice(&args);
        let mut server = BinaryServer::spawn_in(bin, data.path(), &all);
        let addr = server.listening_addr().await;
        (server, addr)
    };
    let kill = async |server: &mut BinaryServer| {
        server.child.start_kill().unwrap();
        server.wait_exit(TIMEOUT).await;
    };

    let (mut server, addr) = spawn().await;
    for n in 1..=20 {
        publish(addr, "crash", n).await;
    }
    for n in 1..=10 {
        send(addr, "bob", n).await;
    }
    kill(&mut server).await;
    let (backend, _) = Backend::start(port, &out, 0).await;
    let (mut server, addr) = spawn().await;
    eventually(WAIT, "the 30 stored before the kill arrive", async || {
        (unique_events(&backend.batches()).len() >= 30).then_some(())
    })
    .await;

    // A stream of publishes, killed in the middle.
    // Acknowledged seqs; the task dies with the server (its next request fails).
    let acked = Arc::new(AtomicU64::new(20));
    let publisher = tokio::spawn({
        let acked = acked.clone();
        async move {
            for n in 21..=2000 {
                acked.store(publish(addr, "crash", n).await, SeqCst);
            }
        }
    });
    eventually(WAIT, "some of the stream is delivered", async || {
        (unique_events(&backend.batches()).len() >= 60).then_some(())
    })
    .await;
    kill(&mut server).await;
    let _ = publisher.await;
    let acked = acked.load(SeqCst);
    assert!(acked > 20, "the kill came in the middle of the stream");
    let (_server, addr) = spawn().await;
    let last = publish(addr, "crash", 0).await;
    assert!(last > acked, "seqs go on after the restart");
    let events = eventually(WAIT, "every acknowledged message arrives", async || {
        let events = unique_events(&backend.batches());
        let messages = event_seqs(&of_kind(&events, "message"));
        messages.contains(&last).then_some(events)
    })
    .await;
    let messages = event_seqs(&of_kind(&events, "message"));
    assert_eq!(
        messages,
        (1..=last).collect::<Vec<_>>(),
        "none lost, in order"
    );
    assert_eq!(
        event_seqs(&of_kind(&events, "direct")),
        (1..=10).collect::<Vec<_>>()
    );
    // Repeats come only from the batch in flight at a kill: at most one batch per kill.
    let all: usize = backend
        .batches()
        .iter()
        .map(|b| b["events"].as_array().unwrap().len())
        .sum();
    assert!(
        all - events.len() <= 2 * 5,
        "{} repeats",
        all - events.len()
    );
    backend.stop().await;
}

/// Issue 23 in the feed: an edit and a reaction are events of the room's stream (in the feed
/// with their seqs, as messages with a `kind`); a signal and a read position are about now and
/// never reach it.
#[tokio::test(flavor = "multi_thread")]
async fn edits_are_in_the_feed_and_signals_and_reads_are_not() {
    let server = TestServer::start(|c| {
        fast(c);
        c.event_feed = true;
    });
    let addr = server.addr();
    let mut a = dev(addr, "alice").await;
    a.join("r").await;
    let frames = [
        json!({"type": "publish", "room": "r", "body": "hi"}),
        json!({"type": "signal", "room": "r", "body": {"typing": true}}),
        json!({"type": "edit", "room": "r", "target": 1, "body": "hi!"}),
        json!({"type": "read", "room": "r", "seq": 2}),
        json!({"type": "react", "room": "r", "target": 1, "emoji": "👍"}),
    ];
    for frame in frames {
        let reply = a.call_past_own_presence(frame.clone()).await;
        assert_eq!(reply["type"], "ack", "{frame} → {reply}");
    }
    let events = eventually(WAIT, "the three stream events", async || {
        let events = pull_all(addr).await;
        (of_kind(&events, "message").len() >= 3).then_some(events)
    })
    .await;
    let messages = of_kind(&events, "message");
    assert_eq!(event_seqs(&messages), [1, 2, 3]);
    let kinds: Vec<_> = messages.iter().map(|m| m["data"]["kind"].clone()).collect();
    assert_eq!(kinds, [Value::Null, json!("edit"), json!("react")]);
    let names: HashSet<_> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    for never in ["signal", "read", "receipt"] {
        assert!(!names.contains(never), "{never} in the feed: {events:?}");
    }
}

/// An https `webhook_url` whose certificate a private CA signed (tests/fixtures/redis-tls),
/// trusted through `hook_ca_file`: the batches arrive. Without the CA file nothing does.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_webhook_trusted_through_hook_ca_file_gets_the_events() {
    let tls = common::hook_backend::TLS_DIR;
    let dir = tempfile::tempdir().unwrap();
    let (backend, port) =
        Backend::start_with(0, &dir.path().join("b.jsonl"), 0, &["--tls", tls]).await;
    let https = |c: &mut shardcast::config::Config| {
        webhook(c, port);
        c.webhook_url = Some(format!("https://127.0.0.1:{port}/feed"));
    };
    let untrusted = TestServer::start(https);
    publish(untrusted.addr(), "plain", 1).await;
    // Its POSTs fail at the TLS handshake: counted, and nothing reaches the backend.
    eventually(
        WAIT,
        "the untrusted server counts failed POSTs",
        async || {
            let m = Http::connect(untrusted.addr())
                .await
                .get("/metrics", &[])
                .await
                .body;
            let failed = (m.lines())
                .find_map(|l| l.strip_prefix("shardcast_feed_failed_total "))
                .and_then(|n| n.parse::<u64>().ok());
            (failed >= Some(1)).then_some(())
        },
    )
    .await;
    let server = TestServer::start(|c| {
        https(c);
        c.hook_ca_file = Some(Path::new(tls).join("ca.crt"));
    });
    for n in 1..=3 {
        publish(server.addr(), "tls", n).await;
    }
    let events = eventually(
        WAIT,
        "3 messages reach the backend over https",
        async || {
            let events = unique_events(&backend.batches());
            let tls: Vec<Value> = (events.into_iter())
                .filter(|e| e["event"] == "message" && e["room"] == "tls")
                .collect();
            (tls.len() >= 3).then_some(tls)
        },
    )
    .await;
    assert_eq!(events.len(), 3);
    let batches = backend.batches();
    let mut events = batches.iter().flat_map(|b| b["events"].as_array().unwrap());
    assert!(
        !events.any(|e| e["room"] == "plain"),
        "the server without the CA file delivered nothing"
    );
}
