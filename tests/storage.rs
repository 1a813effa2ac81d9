//! What one user can make the server store, and what happens when the disk runs low
//! (docs/security.md, "Storage"): the per-user budget for stored bytes
//! (`user_store_rate_bytes`, `user_store_burst_bytes`) over several connections on a 2-shard
//! server and on the redis engine, and the free-disk floor (`min_free_disk_bytes`) with the writer's reading of free
//! space overridden by the `fault-injection` hook (`TestServer::inject_disk_free`).

mod common;

use std::time::Instant;

use common::*;
use serde_json::{Value, json};

/// What the server charges a message: body, the two names, and 100 (src/config/mod.rs,
/// `STORE_COST_OVERHEAD`).
fn cost(body: &Value, target: &str, from: &str) -> u64 {
    (body.to_string().len() + target.len() + from.len()) as u64 + 100
}

/// Sends `frames` (each with an `id`) at once, then reads one reply per frame: the frames
/// acknowledged and the `rate_limited` errors' messages. Messages (what the user's other
/// connections sent) are skipped.
async fn flood(c: &mut Client, frames: &[Value]) -> (Vec<Value>, Vec<String>) {
    for f in frames {
        c.send_json(f).await;
    }
    let (mut acked, mut limited) = (Vec::new(), Vec::new());
    while acked.len() + limited.len() < frames.len() {
        let reply = c.recv_json().await;
        if reply["type"] == "message" {
            continue;
        }
        let sent = frames
            .iter()
            .find(|f| f["id"] == reply["id"])
            .unwrap_or_else(|| panic!("{}: a reply to nothing sent: {reply}", c.name));
        match reply["type"].as_str() {
            Some("ack") => acked.push(sent.clone()),
            _ => {
                assert_error(&reply, "rate_limited", Some(&sent["id"]));
                limited.push(reply["message"].as_str().unwrap().to_owned());
            }
        }
    }
    (acked, limited)
}

/// One user with four connections on a 2-shard server floods a room and the inboxes of users
/// never seen before. Past its budget it gets `rate_limited` saying the message was not stored;
/// what was stored stays within two shards' budgets (its connections share one bucket per
/// shard); each refused direct message left no inbox behind. Another user is unaffected.
#[tokio::test(flavor = "multi_thread")]
async fn one_user_over_its_store_budget_is_rate_limited_on_every_connection() {
    const RATE: u64 = 8 * 1024;
    const BURST: u64 = 32 * 1024;
    const SHARDS: u64 = 2;
    const EACH: usize = 40;
    let server = TestServer::start(|c| {
        fast(c);
        c.shards = SHARDS as usize;
        c.max_message_size = 8 * 1024;
        c.user_store_rate_bytes = RATE;
        c.user_store_burst_bytes = BURST;
    });
    let addr = server.addr();
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(dev(addr, "mallory").await);
    }
    for c in &mut conns[..2] {
        c.join("flood").await;
    }
    let body = json!("x".repeat(2000));
    let frames: Vec<Vec<Value>> = (0..4)
        .map(|k| {
            (0..EACH)
                .map(|i| match k {
                    0 | 1 => json!({"type": "publish", "room": "flood", "id": i, "body": body}),
                    _ => {
                        json!({"type": "send", "to": format!("new-{k}-{i}"), "id": i, "body": body})
                    }
                })
                .collect()
        })
        .collect();

    let start = Instant::now();
    let floods = conns.iter_mut().zip(&frames).map(|(c, f)| flood(c, f));
    let results = futures_util::future::join_all(floods).await;
    let elapsed = start.elapsed().as_secs_f64();

    let mut stored = 0;
    let mut room_acks = 0;
    let mut dms = Vec::new(); // (recipient, acked)
    for (k, (acked, limited)) in results.iter().enumerate() {
        let ids: Vec<&Value> = acked.iter().map(|f| &f["id"]).collect();
        for f in &frames[k] {
            let target = f["room"].as_str().or(f["to"].as_str()).unwrap();
            if k >= 2 {
                dms.push((target.to_owned(), ids.contains(&&f["id"])));
            }
        }
        for f in acked {
            let target = f["room"].as_str().or(f["to"].as_str()).unwrap();
            stored += cost(&f["body"], target, "mallory");
        }
        if k < 2 {
            room_acks += acked.len();
        }
        for m in limited {
            assert!(
                m.contains("not stored") && m.contains(&RATE.to_string()),
                "the refusal says the limit and that nothing was stored: {m}"
            );
        }
    }
    let limited: usize = results.iter().map(|r| r.1.len()).sum();
    let dm_limited: usize = results[2..].iter().map(|r| r.1.len()).sum();
    assert!(
        dm_limited > 0 && limited > dm_limited,
        "publishes and direct messages both meet the budget ({limited} refused, {dm_limited} \
         of them direct)"
    );
    let budget = SHARDS as f64 * (BURST as f64 + RATE as f64 * elapsed);
    assert!(
        stored as f64 <= budget,
        "{stored} bytes stored in {elapsed:.2}s; two shards' budgets allow {budget:.0}"
    );

    // The store agrees: the room holds exactly the acknowledged publishes, and an inbox exists
    // only for the acknowledged direct messages.
    let mut bystander = dev(addr, "bystander").await;
    bystander.join("flood").await;
    let history = bystander.history_all("flood").await;
    assert_eq!(
        history.len(),
        room_acks,
        "history holds the acked publishes only"
    );
    for (to, acked) in &dms {
        let c = dev(addr, to).await;
        assert_eq!(
            c.welcome["inbox_seq"],
            u64::from(*acked),
            "{to}'s inbox after an {} direct message",
            if *acked { "acked" } else { "refused" }
        );
        c.close().await;
    }

    // Another user's budget is its own, on either shard.
    for _ in 0..2 {
        let mut other = dev(addr, "alice").await;
        other.join("flood").await;
        other.publish("flood", body.clone()).await;
        other.dm("bob", body.clone()).await;
        other.close().await;
    }
}

/// The redis engine applies the same budget: it is charged on the node's client side, before
/// the request goes to Redis. One user on two nodes floods a room: some publishes are refused,
/// what was stored stays within the two nodes' budgets, and the room's history in Redis holds
/// exactly the acknowledged ones.
#[tokio::test(flavor = "multi_thread")]
async fn the_store_budget_applies_on_the_redis_engine_too() {
    let redis = common::redis::RedisServer::start().await;
    let (rate, burst) = ("8192", "32768");
    let args = [
        "--presence-events",
        "false",
        "--max-message-size",
        "8192",
        "--user-store-rate-bytes",
        rate,
        "--user-store-burst-bytes",
        burst,
    ];
    let cluster = common::cluster::Cluster::start(2, &redis.url(), &args).await;
    let mut conns = Vec::new();
    for node in 0..2 {
        let mut c = dev(cluster.addr(node), "mallory").await;
        c.join("flood").await;
        conns.push(c);
    }
    let body = json!("x".repeat(2000));
    let frames: Vec<Value> = (0..40)
        .map(|i| json!({"type": "publish", "room": "flood", "id": i, "body": body}))
        .collect();
    let start = Instant::now();
    let results = futures_util::future::join_all(conns.iter_mut().map(|c| flood(c, &frames))).await;
    let elapsed = start.elapsed().as_secs_f64();
    let acked: usize = results.iter().map(|r| r.0.len()).sum();
    assert!(
        results.iter().all(|r| !r.1.is_empty()),
        "both nodes refuse past the budget"
    );
    let stored = acked as u64 * cost(&body, "flood", "mallory");
    let budget = 2.0 * (32768.0 + 8192.0 * elapsed);
    assert!(
        stored as f64 <= budget,
        "{stored} bytes stored in {elapsed:.2}s; two nodes' budgets allow {budget:.0}"
    );
    let mut reader = dev(cluster.addr(1), "reader").await;
    reader.join("flood").await;
    assert_eq!(reader.history_all("flood").await.len(), acked);
}

/// The disk floor: below `min_free_disk_bytes` a publish, a direct message and an API publish
/// get `unavailable` saying the disk is almost full; history, `join` with `since` and `sync`
/// still answer; `/readyz` is 503 and `/metrics` shows the reading. Once free space is back,
/// all of it recovers without a restart, and the refused messages were never stored.
#[tokio::test(flavor = "multi_thread")]
async fn below_the_disk_floor_writes_are_refused_and_reads_go_on() {
    const FLOOR: u64 = 256 << 20;
    let server = TestServer::start(|c| {
        fast(c);
        c.shards = 2;
        assert_eq!(c.min_free_disk_bytes, FLOOR, "the documented default");
    });
    let addr = server.addr();
    let mut http = Http::connect(addr).await;
    let mut a = dev(addr, "a").await;
    a.join("r").await;
    assert_eq!(a.publish("r", json!("before")).await, 1);
    a.dm("b", json!("before")).await;
    let m = metrics(&mut http).await;
    assert_eq!(m.get("shardcast_store_disk_low"), Some(&0.0), "{m:?}");
    assert!(
        m.get("shardcast_store_disk_free_bytes")
            .is_some_and(|&free| free > FLOOR as f64),
        "the real disk's free space: {m:?}"
    );

    server.inject_disk_free(Some(1 << 20));
    let why = readyz_becomes(&mut http, 503).await;
    assert!(why.contains("min_free_disk_bytes"), "{why}");
    let m = metrics(&mut http).await;
    assert_eq!(m.get("shardcast_store_disk_low"), Some(&1.0), "{m:?}");
    assert_eq!(
        m.get("shardcast_store_disk_free_bytes").copied(),
        Some((1u64 << 20) as f64),
        "{m:?}"
    );

    for frame in [
        json!({"type": "publish", "room": "r", "body": "refused"}),
        json!({"type": "send", "to": "b", "body": "refused"}),
    ] {
        let reply = a.call(frame).await;
        assert_error(&reply, "unavailable", reply.get("id"));
        let message = reply["message"].as_str().unwrap();
        for part in [
            "disk is almost full",
            "1048576",
            &FLOOR.to_string(),
            "history",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
    }
    let api = http
        .request(
            "POST",
            "/api/publish",
            &[("Content-Type", "application/json")],
            r#"{"room":"r","body":"refused"}"#,
        )
        .await;
    assert_eq!(api.status, 503, "{}", api.body);
    assert!(api.body.contains("disk is almost full"), "{}", api.body);

    // Reads go on.
    let (page, _) = a.history("r", None, None).await;
    assert_eq!(seqs(&page), [1]);
    let mut late = dev(addr, "late").await;
    assert_recovery(&late.join_since("r", 0).await, 1, true, 1, false);
    assert_eq!(late.recv_json().await["body"], "before");
    let mut b = dev(addr, "b").await;
    assert_eq!(b.welcome["inbox_seq"], 1);
    assert_eq!(b.recv_json().await["body"], "before", "the inbox replay");
    let (inbox, _) = b.sync(0).await;
    assert_eq!(seqs(&inbox), [1]);

    // Space comes back: no restart.
    server.inject_disk_free(Some(10 << 30));
    readyz_becomes(&mut http, 200).await;
    let m = metrics(&mut http).await;
    assert_eq!(m.get("shardcast_store_disk_low"), Some(&0.0), "{m:?}");
    assert_eq!(
        a.publish("r", json!("after")).await,
        2,
        "no seq was used up"
    );
    assert_eq!(a.dm("b", json!("after")).await, 2);
    let history = a.history_all("r").await;
    let bodies: Vec<&Value> = history.iter().map(|m| &m["body"]).collect();
    assert_eq!(bodies, [&json!("after"), &json!("before")]);
}

/// The disk floor keeps a margin once hit: free space just above the floor is not enough to
/// resume, an eighth above it is. A floor of 0 turns the reading off.
#[tokio::test(flavor = "multi_thread")]
async fn the_disk_floor_recovers_an_eighth_above_it_and_0_turns_it_off() {
    const FLOOR: u64 = 8 << 20;
    let server = TestServer::start(|c| {
        fast(c);
        c.min_free_disk_bytes = FLOOR;
    });
    let addr = server.addr();
    let mut http = Http::connect(addr).await;
    let mut a = dev(addr, "a").await;
    a.join("r").await;
    server.inject_disk_free(Some(FLOOR - 1));
    readyz_becomes(&mut http, 503).await;
    server.inject_disk_free(Some(FLOOR + FLOOR / 8 - 1));
    // The writer has read it once the scrape shows it (a scrape is answered in order).
    let free = (FLOOR + FLOOR / 8 - 1) as f64;
    eventually(TIMEOUT, "the new reading", async || {
        let m = metrics(&mut http).await;
        (m.get("shardcast_store_disk_free_bytes") == Some(&free)).then_some(())
    })
    .await;
    assert_eq!(http.get("/readyz", &[]).await.status, 503);
    let reply = a
        .call(json!({"type": "publish", "room": "r", "body": 1}))
        .await;
    assert_error(&reply, "unavailable", reply.get("id"));
    server.inject_disk_free(Some(FLOOR + FLOOR / 8));
    readyz_becomes(&mut http, 200).await;
    assert_eq!(a.publish("r", json!(2)).await, 1);

    let off = TestServer::start(|c| c.min_free_disk_bytes = 0);
    off.inject_disk_free(Some(0));
    let mut http = Http::connect(off.addr()).await;
    let m = metrics(&mut http).await;
    assert!(!m.contains_key("shardcast_store_disk_low"), "{m:?}");
    let mut a = dev(off.addr(), "a").await;
    a.join("r").await;
    assert_eq!(a.publish("r", json!(1)).await, 1);
    assert_eq!(http.get("/readyz", &[]).await.status, 200);
}

/// The unlabelled samples of `/metrics`, by name.
async fn metrics(http: &mut Http) -> std::collections::HashMap<String, f64> {
    let reply = http.get("/metrics", &[]).await;
    assert_eq!(reply.status, 200);
    reply
        .body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}
