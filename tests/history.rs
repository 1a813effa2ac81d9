//! Room history: recovery after a reconnect (`join` with `since`), also while others publish
//! during the join; `recovered:false` once retention trimmed what was missed; the replay caps
//! (`replay_limit` and half of `max_queue_bytes`) and paging back past them; `history` paging
//! and its errors; retention by count and by age.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::task::JoinSet;

const QUIET: Duration = Duration::from_millis(300);

/// How long background retention may take to show in `history`.
const TRIMMED: Duration = Duration::from_secs(10);

/// A member that missed messages rejoins with `since`: the ack, then exactly what it missed in
/// order, then live messages from the ack's seq + 1.
#[tokio::test(flavor = "multi_thread")]
async fn join_since_replays_what_was_missed_then_goes_live() {
    let server = TestServer::start(fast);
    let addr = server.addr();
    let (mut a, mut b) = miss_messages(addr, "r", 3, 7).await;
    let ack = a.join_since("r", 3).await;
    assert_recovery(&ack, 7, true, 4, false);
    assert_room_msgs(&a.recv_n(4).await, "r", "b", 4..=7);
    a.assert_silent(QUIET).await;

    publish_numbered(&mut b, "r", 8..=8).await;
    assert_room_msgs(&a.recv_n(1).await, "r", "b", 8..=8);

    // `since` equal to the room's last seq replays nothing.
    let mut c = dev(addr, "c").await;
    assert_recovery(&c.join_since("r", 8).await, 8, true, 0, false);
    c.assert_silent(QUIET).await;

    // A connection already in the room ignores `since`: acked with the current seq, no replay.
    let again = a.join_since("r", 0).await;
    assert_eq!(
        again["seq"], 8,
        "a rejoin is acked with the current seq: {again}"
    );
    a.assert_silent(QUIET).await;
    b.assert_silent(QUIET).await;
}

/// Joins with `since` while several publishers on other shards keep publishing: each joiner
/// sees since + 1, since + 2, ... with no gap and no duplicate at the replay/live boundary, and
/// the messages are the ones the publishers' acks name.
#[tokio::test(flavor = "multi_thread")]
async fn join_since_while_others_publish_has_no_gap_and_no_duplicate() {
    const PUBLISHERS: usize = 3;
    const IN_FLIGHT: usize = 8;
    // How far behind the newest acked seq each joiner starts.
    const BEHIND: [u64; 8] = [0, 1, 2, 5, 17, 60, 150, 400];
    let server = TestServer::start(|c| {
        fast(c);
        c.shards = 4;
    });
    let addr = server.addr();

    let stop = Arc::new(AtomicBool::new(false));
    let max_acked = Arc::new(AtomicU64::new(0));
    let mut publishers = JoinSet::new();
    for k in 0..PUBLISHERS {
        let mut p = dev(addr, &format!("p{k}")).await;
        p.join("race").await;
        let (stop, max_acked) = (stop.clone(), max_acked.clone());
        publishers.spawn(async move {
            let from = format!("p{k}");
            let mut acked = BTreeMap::new(); // seq -> (from, body)
            let mut in_flight = BTreeMap::new(); // id -> body
            let mut i = 0u64;
            loop {
                let stopping = stop.load(SeqCst);
                if stopping && in_flight.is_empty() {
                    break;
                }
                if !stopping && in_flight.len() < IN_FLIGHT {
                    i += 1;
                    let body = json!({"p": k, "i": i});
                    let frame = json!({"type": "publish", "room": "race", "id": i, "body": body});
                    p.send_json(&frame).await;
                    in_flight.insert(i, body);
                    continue;
                }
                let f = p.recv_json().await;
                match f["type"].as_str() {
                    Some("ack") => {
                        let id = f["id"].as_u64().expect("numeric id echoed");
                        let body = in_flight.remove(&id).expect("one ack per publish");
                        let seq = f["seq"].as_u64().expect("ack seq");
                        let dup = acked.insert(seq, (json!(from), body));
                        assert!(dup.is_none(), "{from}: seq {seq} acked twice");
                        max_acked.fetch_max(seq, SeqCst);
                    }
                    Some("message") => {}
                    _ => panic!("{from}: unexpected frame {f}"),
                }
            }
            (p, acked)
        });
    }

    let at_least = async |n: u64| {
        eventually(
            Duration::from_secs(30),
            &format!("publishers reach seq {n}"),
            async || (max_acked.load(SeqCst) >= n).then_some(()),
        )
        .await
    };
    at_least(BEHIND[BEHIND.len() - 1] + 50).await;

    let mut joiners = JoinSet::new();
    let mut last_ack = 0;
    for (j, behind) in BEHIND.into_iter().enumerate() {
        let since = max_acked.load(SeqCst).saturating_sub(behind);
        let mut c = dev(addr, &format!("j{j}")).await;
        let ack = c.join_since("race", since).await;
        let seq = ack["seq"].as_u64().unwrap();
        assert!(seq >= since, "j{j}: ack seq below since {since}: {ack}");
        assert_recovery(&ack, seq, true, seq - since, false);
        last_ack = seq;
        joiners.spawn(async move {
            let mut seen = Vec::new();
            loop {
                let m = c.recv_type("message").await;
                let expected = since + 1 + seen.len() as u64;
                assert_eq!(
                    m["seq"], expected,
                    "j{j} (since {since}, ack seq {seq}): no gap, no duplicate"
                );
                let end = m["body"] == "end";
                seen.push((m["from"].clone(), m["body"].clone()));
                if end {
                    break;
                }
            }
            c.assert_silent(QUIET).await;
            (j, since, seen)
        });
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    at_least(last_ack + 100).await;
    stop.store(true, SeqCst);

    let mut acked = BTreeMap::new();
    let mut clients = Vec::new();
    while let Some(r) = publishers.join_next().await {
        let (p, a) = r.expect("publisher task");
        clients.push(p);
        acked.extend(a);
    }
    // The last message: the joiners read up to it.
    let mut p = clients.pop().unwrap();
    let (_, ack) = p
        .request(json!({"type": "publish", "room": "race", "body": "end"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let end = ack["seq"].as_u64().unwrap();
    acked.insert(end, (json!(p.name), json!("end")));
    let all: Vec<u64> = acked.keys().copied().collect();
    assert_eq!(all, (1..=end).collect::<Vec<_>>(), "acked seqs are 1..=end");

    while let Some(r) = joiners.join_next().await {
        let (j, since, seen) = r.expect("joiner task");
        let expected: Vec<_> = acked.range(since + 1..).map(|(_, m)| m.clone()).collect();
        assert!(
            seen == expected,
            "j{j} (since {since}): the messages differ from the acked ones"
        );
    }
}

/// Once retention removed part of what a client missed, its join says `recovered:false` and
/// replays what is left; so does a `since` beyond the room's last seq.
#[tokio::test(flavor = "multi_thread")]
async fn join_since_after_trimming_is_not_recovered() {
    let server = TestServer::start(|c| {
        fast(c);
        c.room_retention_messages = 5;
        c.retention_interval_ms = 50;
    });
    let addr = server.addr();
    let mut b = dev(addr, "b").await;
    b.join("r").await;
    publish_numbered(&mut b, "r", 1..=20).await;
    let kept = eventually(TRIMMED, "history trimmed to the last 5", async || {
        let all = b.history_all("r").await;
        (seqs(&all) == [20, 19, 18, 17, 16]).then_some(all)
    })
    .await;
    assert_room_msgs(&kept, "r", "b", (16..=20).rev());

    let mut a = dev(addr, "a").await;
    assert_recovery(&a.join_since("r", 2).await, 20, false, 5, false);
    assert_room_msgs(&a.recv_n(5).await, "r", "b", 16..=20);
    a.assert_silent(QUIET).await;

    // `since` within the retained part is recovered.
    let mut c = dev(addr, "c").await;
    assert_recovery(&c.join_since("r", 17).await, 20, true, 3, false);
    assert_room_msgs(&c.recv_n(3).await, "r", "b", 18..=20);

    // History the server never had.
    let mut d = dev(addr, "d").await;
    assert_recovery(&d.join_since("r", 25).await, 20, false, 0, false);
    d.assert_silent(QUIET).await;

    // Trimming does not touch the seqs: the next message is 21, and every member gets it.
    publish_numbered(&mut b, "r", 21..=21).await;
    for who in [&mut a, &mut c, &mut d] {
        assert_room_msgs(&who.recv_n(1).await, "r", "b", 21..=21);
    }
}

/// More missed than `replay_limit`: the newest `replay_limit` are replayed (`truncated`), and
/// `history` before the first replayed seq gives the rest.
#[tokio::test(flavor = "multi_thread")]
async fn replay_is_capped_by_replay_limit_and_history_gives_the_rest() {
    let server = TestServer::start(|c| {
        fast(c);
        c.replay_limit = 10;
    });
    let (mut a, mut b) = miss_messages(server.addr(), "r", 5, 30).await;
    assert_recovery(&a.join_since("r", 5).await, 30, true, 10, true);
    assert_room_msgs(&a.recv_n(10).await, "r", "b", 21..=30);
    a.assert_silent(QUIET).await;

    let (older, more) = a.history("r", Some(21), None).await;
    assert_room_msgs(&older, "r", "b", (1..=20).rev());
    assert!(!more, "nothing is older than seq 1");

    // Live delivery follows the truncated replay.
    publish_numbered(&mut b, "r", 31..=31).await;
    assert_room_msgs(&a.recv_n(1).await, "r", "b", 31..=31);
}

/// Large messages: one replay, and one history page, stay under half of `max_queue_bytes`;
/// the replay holds the newest messages and says `truncated`, the page says `more`.
#[tokio::test(flavor = "multi_thread")]
async fn replay_and_history_stay_under_half_the_queue_limit() {
    let server = TestServer::start(small_queue);
    let addr = server.addr();
    let mut b = dev(addr, "b").await;
    b.join("big").await;
    for n in 1..=100 {
        assert_eq!(b.publish("big", padded(n)).await, n);
    }

    let mut a = dev(addr, "a").await;
    a.send_json(&json!({"type": "join", "room": "big", "since": 0, "id": 1}))
        .await;
    let ack = a.recv_type("ack").await;
    let replayed = ack["replayed"].as_u64().expect("replayed in the ack");
    assert_recovery(&ack, 100, true, replayed, true);
    assert!(replayed > 0, "a replay holds at least one message: {ack}");
    let mut bytes = 0;
    for n in 101 - replayed..=100 {
        let text = a.recv_text().await;
        bytes += text.len();
        let m: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(assert_room_msg(&m, "big", "b", &padded(n)), n);
    }
    assert!(
        bytes <= SMALL_QUEUE / 2,
        "the replay is {bytes} bytes of frames, over half of max_queue_bytes ({SMALL_QUEUE})"
    );
    a.assert_silent(QUIET).await;

    let reply = a
        .call(json!({"type": "history", "room": "big", "limit": 100}))
        .await;
    let text = reply.to_string();
    assert!(
        text.len() < SMALL_QUEUE / 2,
        "a history reply of {} bytes, over half of max_queue_bytes",
        text.len()
    );
    let page = reply["messages"].as_array().expect("messages");
    assert!(
        !page.is_empty() && page.len() < 100,
        "a page of big messages holds fewer than limit: {}",
        page.len()
    );
    assert_eq!(reply["more"], true, "older messages remain");
    for (m, n) in page.iter().zip((1..=100).rev()) {
        assert_eq!(assert_room_msg(m, "big", "b", &padded(n)), n);
    }
}

/// 250 messages paged 100 at a time, newest first, each exactly once; the default page is 50.
#[tokio::test(flavor = "multi_thread")]
async fn history_pages_newest_first() {
    let server = TestServer::start(fast);
    let mut b = dev(server.addr(), "b").await;
    assert_eq!(b.join("r").await, 0);
    let (empty, more) = b.history("r", None, None).await;
    assert!(empty.is_empty() && !more, "a new room has no history");
    publish_numbered(&mut b, "r", 1..=250).await;

    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let (page, more) = b.history("r", before, Some(100)).await;
        before = page.last().map(|m| m["seq"].as_u64().unwrap());
        pages.push(page);
        if !more {
            break;
        }
        assert!(pages.len() < 10, "more:true forever");
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 50], "pages of at most 100");
    let all: Vec<Value> = pages.concat();
    assert_room_msgs(&all, "r", "b", (1..=250).rev());

    let (page, more) = b.history("r", None, None).await;
    assert_room_msgs(&page, "r", "b", (201..=250).rev());
    assert!(more, "the default page is 50, and 200 are older");
    let (page, more) = b.history("r", Some(3), Some(100)).await;
    assert_room_msgs(&page, "r", "b", (1..=2).rev());
    assert!(!more);
    let (page, more) = b.history("r", Some(1), None).await;
    assert!(page.is_empty() && !more, "nothing before seq 1");
    let (page, _) = b.history("r", Some(1_000), Some(1)).await;
    assert_room_msgs(&page, "r", "b", 250..=250);
}

/// With `sync` durability a message is in history no later than its delivery: whatever a
/// member has received before it asks is in the reply.
#[tokio::test(flavor = "multi_thread")]
async fn history_holds_every_message_already_delivered() {
    const TOTAL: u64 = 300;
    let server = TestServer::start(|c| {
        fast(c);
        c.shards = 2;
    });
    let addr = server.addr();
    let mut p = dev(addr, "p").await;
    let mut b = dev(addr, "b").await;
    p.join("r").await;
    b.join("r").await;
    // One publish at a time, so that b's requests fall between them.
    let publisher = tokio::spawn(async move { publish_numbered(&mut p, "r", 1..=TOTAL).await });
    let mut seen = 0;
    while seen < TOTAL {
        let (delivered, reply) = b
            .request(json!({"type": "history", "room": "r", "limit": 1}))
            .await;
        assert_eq!(reply["type"], "history", "{reply}");
        let newest = seqs(reply["messages"].as_array().expect("messages"))
            .first()
            .copied()
            .unwrap_or(0);
        assert!(
            newest >= seen,
            "seq {seen} was delivered before the history request, whose newest is {newest}"
        );
        for m in delivered {
            let seq = m["seq"].as_u64().unwrap_or_else(|| panic!("{m}"));
            assert_eq!(assert_room_msg(&m, "r", "p", &numbered(seq)), seen + 1);
            seen = seq;
        }
    }
    publisher.await.expect("publisher task");
}

/// `history` needs membership and well-typed `before` / `limit`; `join` a well-typed `since`.
#[tokio::test(flavor = "multi_thread")]
async fn history_errors() {
    let server = TestServer::start(fast);
    let addr = server.addr();
    let mut b = dev(addr, "b").await;
    b.join("r").await;
    publish_numbered(&mut b, "r", 1..=3).await;

    let id = json!("h1");
    let reply = b
        .call(json!({"type": "history", "room": "r", "limit": 101, "id": id}))
        .await;
    assert_error(&reply, "bad_request", Some(&id));
    let reply = b
        .call(json!({"type": "history", "room": "r", "limit": 0, "id": id}))
        .await;
    assert_error(&reply, "bad_request", Some(&id));
    let (page, _) = b.history("r", None, Some(100)).await;
    assert_eq!(seqs(&page), [3, 2, 1], "limit 100 is allowed");

    let wrong = [
        json!("2"),
        json!(-1),
        json!(1.5),
        json!(true),
        json!([2]),
        json!({"n": 2}),
        Value::Null,
    ];
    for (i, value) in wrong.iter().enumerate() {
        for field in ["before", "limit"] {
            let id = json!(format!("{field}-{i}"));
            let mut frame = json!({"type": "history", "room": "r", "id": id});
            frame[field] = value.clone();
            let reply = b.call(frame).await;
            assert_error(&reply, "bad_request", Some(&id));
        }
        let id = json!(100 + i);
        let mut frame = json!({"type": "join", "room": "other", "id": id});
        frame["since"] = value.clone();
        let reply = b.call(frame).await;
        assert_error(&reply, "bad_request", Some(&id));
    }
    let reply = b.call(json!({"type": "history", "id": 7})).await;
    assert_error(&reply, "bad_request", Some(&json!(7)));

    let mut c = dev(addr, "c").await;
    let reply = c
        .call(json!({"type": "history", "room": "r", "id": "nm"}))
        .await;
    assert_error(&reply, "not_member", Some(&json!("nm")));
    // A refused join with `since` joined nothing.
    let reply = b
        .call(json!({"type": "presence", "room": "other", "id": "p"}))
        .await;
    assert_error(&reply, "not_member", Some(&json!("p")));
    b.ping().await;
}

/// `history` and `sync` count against the publish rate: a fast burst of them gets some
/// `rate_limited`, each request exactly one reply, and no more answers than the bucket allows.
#[tokio::test(flavor = "multi_thread")]
async fn history_and_sync_count_against_the_publish_rate() {
    const RATE: u32 = 5;
    const BURST: u32 = 10;
    const SENT: u64 = 30;
    let server = TestServer::start(|c| {
        c.presence_events = false;
        c.publish_rate = RATE;
        c.publish_burst = BURST;
    });
    let mut v = dev(server.addr(), "v").await;
    v.join("r").await;
    let start = std::time::Instant::now();
    for id in 0..SENT {
        let frame = match id % 2 {
            0 => json!({"type": "history", "room": "r", "id": id}),
            _ => json!({"type": "sync", "since": 0, "id": id}),
        };
        v.send_json(&frame).await;
    }
    let mut replied = std::collections::BTreeSet::new();
    let (mut answered, mut limited) = (0, 0);
    for _ in 0..SENT {
        let reply = v.recv_json().await;
        let id = reply["id"].as_u64().unwrap_or_else(|| panic!("{reply}"));
        assert!(id < SENT && replied.insert(id), "unexpected reply {reply}");
        match reply["type"].as_str() {
            Some("error") => {
                assert_error(&reply, "rate_limited", Some(&json!(id)));
                limited += 1;
            }
            Some(ty) => {
                assert_eq!(ty, ["history", "sync"][id as usize % 2], "{reply}");
                answered += 1;
            }
            None => panic!("{reply}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    assert!(limited > 0, "{SENT} reads at once must hit the limit");
    assert!(
        answered as f64 <= (BURST + 1) as f64 + RATE as f64 * elapsed,
        "{answered} answered in {elapsed:.2}s with burst {BURST} and rate {RATE}/s"
    );
    v.ping().await;
}

/// `room_retention_secs`: messages older than it leave history in the background; the seq
/// goes on.
#[tokio::test(flavor = "multi_thread")]
async fn room_retention_by_age() {
    let server = TestServer::start(|c| {
        fast(c);
        c.room_retention_secs = 1;
        c.retention_interval_ms = 50;
    });
    let mut b = dev(server.addr(), "b").await;
    b.join("r").await;
    publish_numbered(&mut b, "r", 1..=3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_numbered(&mut b, "r", 4..=5).await;
    // Seconds old at most: nothing trimmed yet.
    let (page, _) = b.history("r", None, None).await;
    assert!(
        seqs(&page).starts_with(&[5, 4]),
        "fresh messages are in history: {page:?}"
    );

    eventually(TRIMMED, "messages older than 1 s trimmed", async || {
        let all = seqs(&b.history_all("r").await);
        let suffix: Vec<u64> = all.last().map_or(vec![], |&k| (k..=5).rev().collect());
        assert_eq!(all, suffix, "the oldest go first; history is newest first");
        all.iter().all(|&s| s > 3).then_some(())
    })
    .await;
    eventually(TRIMMED, "every message trimmed", async || {
        b.history_all("r").await.is_empty().then_some(())
    })
    .await;
    publish_numbered(&mut b, "r", 6..=6).await;
    assert_room_msgs(&b.history_all("r").await, "r", "b", 6..=6);
}

/// A `room_retention` rule replaces the room defaults for the rooms its prefix matches, and
/// only for them.
#[tokio::test(flavor = "multi_thread")]
async fn room_retention_rules_apply_by_name_prefix() {
    let server = TestServer::start(|c| {
        fast(c);
        c.room_retention_messages = 0;
        c.retention_interval_ms = 50;
        c.room_retention = vec![shardcast::config::RetentionRule {
            prefix: "short:".into(),
            messages: 3,
            secs: 0,
        }];
    });
    let mut b = dev(server.addr(), "b").await;
    for room in ["short:a", "long:b"] {
        b.join(room).await;
        publish_numbered(&mut b, room, 1..=8).await;
    }
    eventually(TRIMMED, "short:a trimmed to its rule's 3", async || {
        let all = seqs(&b.history_all("short:a").await);
        (all == [8, 7, 6]).then_some(())
    })
    .await;
    // The trimmer has run since, and the other room keeps everything.
    assert_room_msgs(&b.history_all("long:b").await, "long:b", "b", (1..=8).rev());
}

/// Every read counts the stored messages it returns against `read_rate`/`read_burst`: a loop
/// of `join` with `since` and `leave` (each replaying 30 messages) is `rate_limited` once the
/// burst of 100 is spent, and so is `history` (charged per message, not per request). While a
/// connection is in debt its other reads are refused too; a join without `since`, which reads
/// nothing, is not.
#[tokio::test(flavor = "multi_thread")]
async fn replays_and_history_count_against_the_read_budget() {
    let server = TestServer::start(|c| {
        c.presence_events = false;
        c.read_rate = 1;
        c.read_burst = 100;
    });
    let addr = server.addr();
    let mut p = dev(addr, "p").await;
    p.join("r").await;
    publish_numbered(&mut p, "r", 1..=30).await;

    // 100 → 70 → 40 → 10 → -20: four replays of 30, then the fifth join is refused.
    let mut v = dev(addr, "v").await;
    let mut replays = 0;
    loop {
        let reply = v
            .call(json!({"type": "join", "room": "r", "since": 0}))
            .await;
        if reply["type"] == "error" {
            assert_error(&reply, "rate_limited", reply.get("id"));
            let message = reply["message"].as_str().unwrap();
            assert!(message.contains("read"), "{reply}");
            break;
        }
        assert_recovery(&reply, 30, true, 30, false);
        assert_room_msgs(&v.recv_n(30).await, "r", "p", 1..=30);
        v.leave("r").await;
        replays += 1;
        assert!(
            replays <= 4,
            "{replays} replays of 30 within a burst of 100"
        );
    }
    assert_eq!(replays, 4);
    v.join("r").await;
    for frame in [
        json!({"type": "sync", "since": 0}),
        json!({"type": "history", "room": "r"}),
    ] {
        let reply = v.call(frame).await;
        assert_error(&reply, "rate_limited", reply.get("id"));
    }
    v.publish("r", json!("not a read")).await;
    p.recv_json().await;

    // History pages are charged by their messages the same way.
    let mut w = dev(addr, "w").await;
    w.join("r").await;
    for _ in 0..4 {
        let (page, _) = w.history("r", None, Some(31)).await;
        assert_eq!(page.len(), 31);
    }
    let reply = w.call(json!({"type": "history", "room": "r"})).await;
    assert_error(&reply, "rate_limited", reply.get("id"));
}
