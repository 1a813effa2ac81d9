//! Faults in a cluster of three shardcast nodes on a real `redis-server`: a node SIGKILLed
//! mid-traffic, a node's subscription connection killed or silently frozen, Redis killed
//! (with and without durable AOF). Clients must see no gap, no duplicate and no acknowledged
//! message lost; waits are bounded by the documented bounds, never measured.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Cluster, metric_sum, read_room, read_until};
use common::proxy::Proxy;
use common::redis::RedisServer;
use common::*;
use serde_json::{Value, json};

/// What a node may take to notice a silent subscription (its heartbeat: about 3 s), resubscribe
/// and fill the gap: the longest a member waits for the next message here.
const RECOVERY: Duration = Duration::from_secs(10);

/// Joins `room` on each client (fresh room: ack seq 0); presence events must be off.
async fn join_all(clients: &mut [&mut Client], room: &str) {
    for c in clients {
        assert_eq!(c.join(room).await, 0, "{}: a fresh room", c.name);
    }
}

/// Spawns `a` publishing `numbered(n)` to `room` for n in `from..=to`, one at a time, a few
/// milliseconds apart so that a fault lands mid-traffic; each ack's seq must be n. `sent`
/// counts the acks. Returns `a` when done.
fn publish_in_background(
    mut a: Client,
    room: &'static str,
    from: u64,
    to: u64,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        for n in from..=to {
            let (_, ack) = a
                .request(json!({"type": "publish", "room": room, "body": numbered(n)}))
                .await;
            assert_eq!(
                (&ack["type"], &ack["seq"]),
                (&json!("ack"), &json!(n)),
                "{ack}"
            );
            sent.store(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        a
    })
}

/// No presence events, and a Redis command fails after 1 s rather than 2 while Redis is down.
const SHORT_REDIS_TIMEOUT: [&str; 4] = ["--presence-events", "false", "--redis-timeout-ms", "1000"];

async fn wait_count(sent: &AtomicU64, at_least: u64) {
    eventually(
        TIMEOUT,
        &format!("{at_least} publishes acked"),
        async || (sent.load(Ordering::SeqCst) >= at_least).then_some(()),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_mid_traffic_loses_its_clients_to_other_nodes_without_a_gap() {
    const TTL: u64 = 3;
    let redis = RedisServer::start().await;
    let ttl = TTL.to_string();
    let mut cluster = Cluster::start(3, &redis.url(), &["--presence-ttl-secs", &ttl]).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    let mut c = dev(cluster.addr(2), "c").await;
    // d is only on node 2 and never comes back: its `left` is what the others see of the kill.
    let mut d = dev(cluster.addr(2), "d").await;
    for x in [&mut a, &mut b, &mut c, &mut d] {
        x.call_past_own_presence(json!({"type": "join", "room": "r"}))
            .await;
    }
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = publish_in_background(a, "r", 1, 80, sent.clone());

    let (seen, _) = read_room(&mut c, "r", 0, 10, TIMEOUT).await;
    cluster.kill(2).await;
    let killed_at = Instant::now();
    // c reconnects to node 0 and recovers from the last seq it saw.
    let mut c = dev(cluster.addr(0), "c").await;
    let (events, ack) = c
        .request(json!({"type": "join", "room": "r", "since": 10}))
        .await;
    let last = ack["seq"].as_u64().expect("join ack seq");
    assert_recovery(&ack, last, true, last - 10, false);
    let (replayed, _) = read_room(&mut c, "r", 10, last, TIMEOUT).await;
    let (live, _) = read_room(&mut c, "r", last, 80, TIMEOUT).await;
    assert_room_msgs(&seen, "r", "a", 1..=10);
    assert_room_msgs(&[replayed, live].concat(), "r", "a", 11..=80);
    assert!(events.iter().all(|e| e["type"] != "message"), "{events:?}");

    // b, on a live node, notices nothing: every message in order, then d's `left`, within
    // the presence TTL and a second of the kill (plus a second for a loaded 2-core machine).
    let (msgs, _) = read_room(&mut b, "r", 0, 80, TIMEOUT).await;
    assert_room_msgs(&msgs, "r", "a", 1..=80);
    let bound = Duration::from_secs(TTL + 1) + Duration::from_secs(1);
    let (before, _) = read_until(&mut b, "left d", killed_at + bound, |f| {
        f == &json!({"type": "left", "room": "r", "user": "d"})
    })
    .await;
    let wrong_left = |f: &Value| f["type"] == "left" && f["user"] != "d";
    assert!(!before.iter().any(wrong_left), "{before:?}");
    let mut a = publisher.await.expect("the publisher failed");
    // c is still present through node 0, d is gone.
    let presence = b
        .call_past_own_presence(json!({"type": "presence", "room": "r"}))
        .await;
    assert_eq!(presence["users"], json!(["a", "b", "c"]), "{presence}");
    let (_, pong) = a.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong", "{pong}");

    // Node 2 restarted with its id: d comes back there and catches up.
    let addr = cluster.restart(2).await;
    let mut d = dev(addr, "d").await;
    let (_, ack) = d
        .request(json!({"type": "join", "room": "r", "since": 0}))
        .await;
    assert_recovery(&ack, 80, true, 80, false);
    let (msgs, _) = read_room(&mut d, "r", 0, 80, TIMEOUT).await;
    assert_room_msgs(&msgs, "r", "a", 1..=80);
    let presence = d
        .call_past_own_presence(json!({"type": "presence", "room": "r"}))
        .await;
    assert_eq!(presence["users"], json!(["a", "b", "c", "d"]), "{presence}");
}

/// A subscription connection broken in one of two ways while `a` (node 0) publishes 1..=60:
/// members on nodes 1 and 2 still get every message once, in order.
async fn subscription_fault(redis: &RedisServer, cluster: &Cluster, fault: impl AsyncFnOnce()) {
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    let mut c = dev(cluster.addr(2), "c").await;
    join_all(&mut [&mut a, &mut b, &mut c], "r").await;
    let sent = Arc::new(AtomicU64::new(0));
    let publisher = publish_in_background(a, "r", 1, 60, sent.clone());
    let (first, _) = read_room(&mut b, "r", 0, 10, TIMEOUT).await;
    fault().await;
    // Publishing goes on, then stops: no later message would reveal a silent subscription,
    // so node 1 must notice it by itself.
    let (rest, _) = read_room(&mut b, "r", 10, 60, RECOVERY).await;
    assert_room_msgs(&[first, rest].concat(), "r", "a", 1..=60);
    let (all, _) = read_room(&mut c, "r", 0, 60, RECOVERY).await;
    assert_room_msgs(&all, "r", "a", 1..=60);
    let mut a = publisher.await.expect("publisher");
    // Live delivery again, on the new subscription.
    assert_eq!(a.publish("r", numbered(61)).await, 61);
    assert_room_msgs(&b.recv_n(1).await, "r", "a", 61..=61);
    b.assert_silent(Duration::from_millis(300)).await;
    let metrics = cluster.metrics(1).await;
    let reconnects = metric_sum(&metrics, "shardcast_redis_pubsub_reconnects_total");
    assert!(
        reconnects >= 1.0,
        "node 1 counts no pub/sub reconnect in /metrics:\n{metrics}\nredis:\n{}",
        redis.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_subscription_connection_is_resubscribed_without_a_gap() {
    let redis = RedisServer::start().await;
    let cluster = Cluster::start(3, &redis.url(), &["--presence-events", "false"]).await;
    subscription_fault(&redis, &cluster, async || {
        redis.kill_client("sc-sub-1").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_subscription_connection_is_noticed_and_replaced_without_a_gap() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    let cluster = Cluster::start(
        3,
        &format!("redis://{}", proxy.addr()),
        &["--presence-events", "false"],
    )
    .await;
    subscription_fault(&redis, &cluster, async || {
        let port = redis.client_port("sc-sub-1").await;
        let port = port.expect("no Redis connection named sc-sub-1 (CLIENT SETNAME)");
        // Up, but nothing goes through either way: Centrifugo's issue 1189.
        proxy.freeze(port);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_refuses_writes_and_with_aof_loses_no_acknowledged_message() {
    let mut redis = RedisServer::start_aof().await;
    // Node 1 reaches Redis through a proxy, which keeps it away until after Redis is back and
    // has a new message: b's node must then fill the gap from the log.
    let proxy = Proxy::start(redis.addr()).await;
    let (via_proxy, direct) = (format!("redis://{}", proxy.addr()), redis.url());
    let urls = [direct.as_str(), &via_proxy, &direct];
    let cluster = Cluster::start_with_urls(&urls, &SHORT_REDIS_TIMEOUT).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    join_all(&mut [&mut a, &mut b], "r").await;
    cluster.wait_ready(200, TIMEOUT).await;

    // a publishes until an error; Redis is killed after 20 acks. Every ack is recorded.
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let publisher = tokio::spawn(async move {
        let mut acks = Vec::new();
        for n in 1.. {
            let publish = json!({"type": "publish", "room": "r", "body": numbered(n)});
            let (_, reply) = a.request(publish).await;
            if reply["type"] == "error" {
                assert_error(&reply, "unavailable", Some(&reply["id"]));
                return (a, acks);
            }
            let seq = reply["seq"].as_u64().unwrap_or_else(|| panic!("{reply}"));
            acks.push((seq, n));
            counter.store(acks.len() as u64, Ordering::SeqCst);
        }
        unreachable!()
    });
    wait_count(&acked, 20).await;
    proxy.refuse(true);
    redis.kill_9().await;
    let (mut a, acks) = publisher.await.expect("publisher");
    // b got every acked message live before the kill.
    let last_acked = acks.last().unwrap().0;
    let (mut b_got, _) = read_room(&mut b, "r", 0, last_acked, TIMEOUT).await;

    // Down: writes answer `unavailable`, /readyz is 503, clients stay connected.
    let (_, reply) = a
        .request(json!({"type": "send", "to": "b", "body": 1}))
        .await;
    assert_error(&reply, "unavailable", Some(&reply["id"]));
    let (_, reply) = cluster
        .api(
            2,
            "POST",
            "/api/publish",
            Some(json!({"room": "r", "body": 0})),
        )
        .await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    cluster.wait_ready(503, TIMEOUT).await;
    let (more, pong) = b.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    b_got.extend(more); // a message stored as Redis died, if any

    // Back, with no node restarted: writes work, and every node is ready again.
    redis.restart().await;
    let after = eventually(Duration::from_secs(10), "a publish acked", async || {
        let publish = json!({"type": "publish", "room": "r", "body": "after"});
        let (_, reply) = a.request(publish).await;
        reply["seq"].as_u64()
    })
    .await;
    let (_, reply) = a
        .request(json!({"type": "send", "to": "b", "body": 2}))
        .await;
    assert_eq!(reply["type"], "ack", "{reply}");
    proxy.refuse(false);
    cluster.wait_ready(200, Duration::from_secs(15)).await;

    // Every acknowledged message survived the kill -9, at its seq, in one gapless stream
    // that b received whole.
    let mut c = dev(cluster.addr(2), "c").await;
    let ack = c.join_since("r", 0).await;
    assert_recovery(&ack, after, true, after, false);
    let (stream, _) = read_room(&mut c, "r", 0, after, TIMEOUT).await;
    for (seq, n) in &acks {
        assert_eq!(
            stream[*seq as usize - 1]["body"],
            numbered(*n),
            "acked seq {seq} lost or changed; stream {stream:?}"
        );
    }
    let (rest, _) = read_room(&mut b, "r", b_got.len() as u64, after, RECOVERY).await;
    b_got.extend(rest);
    assert_eq!(
        b_got, stream,
        "b's live messages and the stored stream differ"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restarted_without_persistence_gives_rooms_a_new_epoch() {
    let mut redis = RedisServer::start().await;
    // Node 0 reaches Redis through a proxy, which keeps it away until the room's new epoch has
    // messages; nodes 1 and 2 come back at once.
    let proxy = Proxy::start(redis.addr()).await;
    let (via_proxy, direct) = (format!("redis://{}", proxy.addr()), redis.url());
    let urls = [via_proxy.as_str(), &direct, &direct];
    let cluster = Cluster::start_with_urls(&urls, &SHORT_REDIS_TIMEOUT).await;
    // a (node 0) and e (node 1) stay in the room through the loss.
    let mut a = dev(cluster.addr(0), "a").await;
    let mut e = dev(cluster.addr(1), "e").await;
    let ack = a.call(json!({"type": "join", "room": "r"})).await;
    let old = ack["epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("no epoch: {ack}"));
    assert_eq!(e.join("r").await, 0);
    publish_numbered(&mut a, "r", 1..=5).await;
    assert_room_msgs(&e.recv_n(5).await, "r", "a", 1..=5);

    // A clean restart (SIGTERM), but nothing is saved: the data is gone all the same.
    proxy.refuse(true);
    redis.stop().await;
    redis.restart().await;
    eventually(
        RECOVERY,
        "node 1 subscribed to the room again",
        async || {
            let numsub = redis.cli(&["PUBSUB", "NUMSUB", "sc:{r:r}"]).await;
            (numsub.lines().last() == Some("1")).then_some(())
        },
    )
    .await;
    // The room starts over; 6 messages take it past seq 5 again. A node that has not yet
    // noticed the restart may refuse a publish (`unavailable`): retried.
    let mut last = 0;
    for n in 0..6 {
        last = eventually(RECOVERY, "an API publish after the restart", async || {
            let body = json!({"room": "r", "body": n});
            let (status, reply) = cluster.api(2, "POST", "/api/publish", Some(body)).await;
            if status != 200 {
                assert_eq!(
                    (status, &reply["code"]),
                    (503, &json!("unavailable")),
                    "{reply}"
                );
            }
            reply["seq"].as_u64()
        })
        .await;
    }
    assert!(last >= 5, "seq {last} after 6 publishes into a lost room");

    // Connections that lived through the loss are closed to recover rather than mix two
    // histories: e's node sees the new epoch live, a's node once it reaches Redis again.
    e.expect_close_within(1011, RECOVERY).await;
    proxy.refuse(false);
    a.expect_close_within(1011, RECOVERY).await;

    // A client that saw seq 5 of the old epoch must learn it cannot recover.
    // (A node that has not yet noticed the restart may refuse a connection with 503.)
    let mut b = retry_dev(cluster.addr(1), "b", RECOVERY).await.unwrap();
    let join = json!({"type": "join", "room": "r", "since": 5, "epoch": old});
    let ack = b.call(join).await;
    assert_eq!(ack["recovered"], false, "old epoch {old}: {ack}");
    let new = ack["epoch"]
        .as_u64()
        .unwrap_or_else(|| panic!("no epoch: {ack}"));
    assert_ne!(new, old, "{ack}");
    // With the current epoch, the same since recovers, on node 0 too.
    let mut c = retry_dev(cluster.addr(0), "c", RECOVERY).await.unwrap();
    let join = json!({"type": "join", "room": "r", "since": 5, "epoch": new});
    let ack = c.call(join).await;
    assert_recovery(&ack, last, true, last - 5, false);
}

/// Node 0's command connection (through a proxy) is broken by `fault` between two publishes
/// of `a`. Publishes are refused (`unavailable`) until the node has a new connection, then
/// acked. The proxy forwarded none of the refused ones, so none may show up (even one that
/// timed out, which in general "may still have been stored"): b gets 1..=3 and the acked one.
/// `timed_out_first`: the first publish after the fault must time out.
/// Redis behind a proxy, three nodes with a short `redis_timeout_ms`, a on node 0 and b on
/// node 1 in room r, and a's messages 1..=3 there.
async fn proxied_with_three_messages() -> (RedisServer, Proxy, Cluster, Client, Client) {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    let url = format!("redis://{}", proxy.addr());
    let cluster = Cluster::start(3, &url, &SHORT_REDIS_TIMEOUT).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    join_all(&mut [&mut a, &mut b], "r").await;
    publish_numbered(&mut a, "r", 1..=3).await;
    (redis, proxy, cluster, a, b)
}

async fn command_connection_fault(fault: impl FnOnce(&Proxy, u16), timed_out_first: bool) {
    let (redis, proxy, _cluster, mut a, mut b) = proxied_with_three_messages().await;
    let port = redis.client_port("sc-cmd-0").await;
    fault(
        &proxy,
        port.expect("no Redis connection named sc-cmd-0 (CLIENT SETNAME)"),
    );
    let mut attempt = 0;
    let (seq, body) = eventually(RECOVERY, "a publish acked after the fault", async || {
        attempt += 1;
        let body = json!({"attempt": attempt});
        let publish = json!({"type": "publish", "room": "r", "body": body});
        let (_, reply) = a.request(publish).await;
        if reply["type"] == "error" || (timed_out_first && attempt == 1) {
            assert_error(&reply, "unavailable", Some(&reply["id"]));
        }
        if timed_out_first && attempt == 1 {
            let says = reply["message"].as_str().unwrap();
            assert!(
                says.contains("may"),
                "a timeout must say the message may be stored: {reply}"
            );
        }
        Some((reply["seq"].as_u64()?, body))
    })
    .await;
    assert_eq!(seq, 4, "refused publishes took seqs");
    let (msgs, _) = read_room(&mut b, "r", 0, 4, RECOVERY).await;
    assert_room_msgs(&msgs[..3], "r", "a", 1..=3);
    assert_room_msg(&msgs[3], "r", "a", &body);
    b.assert_silent(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_command_connection_is_replaced_and_stores_no_refused_message() {
    command_connection_fault(|proxy, port| proxy.cut(port), false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_command_connection_times_out_as_unavailable_and_is_replaced() {
    // Up, but Redis never sees the commands nor answers: the publish must not hang.
    command_connection_fault(|proxy, port| proxy.freeze(port), true).await;
}

/// Redis runs a keyed publish but its reply is lost (the node's command connection is muted):
/// the publisher gets `unavailable` (it may have been stored), sends again with the same `key`
/// once the node has a new connection, and gets the stored seq with `dup`. The message is in
/// the room once: b (on another node) receives it once, and history holds it once.
#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_publish_whose_reply_was_lost_is_stored_once_when_resent() {
    let (redis, proxy, _cluster, mut a, mut b) = proxied_with_three_messages().await;
    let port = redis.client_port("sc-cmd-0").await;
    proxy.mute(port.expect("no Redis connection named sc-cmd-0 (CLIENT SETNAME)"));
    let publish = json!({"type": "publish", "room": "r", "key": "once", "body": "once"});
    let (_, reply) = a.request(publish.clone()).await;
    assert_error(&reply, "unavailable", Some(&reply["id"]));
    assert!(
        reply["message"].as_str().unwrap().contains("may"),
        "{reply}"
    );
    let ack = eventually(RECOVERY, "the resend acked", async || {
        let (_, reply) = a.request(publish.clone()).await;
        (reply["type"] == "ack").then_some(reply)
    })
    .await;
    assert_eq!(
        (&ack["seq"], &ack["dup"]),
        (&json!(4), &json!(true)),
        "{ack}"
    );
    let (msgs, _) = read_room(&mut b, "r", 0, 4, RECOVERY).await;
    assert_room_msgs(&msgs[..3], "r", "a", 1..=3);
    assert_room_msg(&msgs[3], "r", "a", &json!("once"));
    assert_eq!(a.publish("r", json!("next")).await, 5);
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("next"));
    assert_eq!(seqs(&b.history_all("r").await), [5, 4, 3, 2, 1]);
}

/// Redis runs a publish, but the node's command connection drops before its reply comes back
/// (muted, then cut): the publisher gets `unavailable` saying the message may have been stored
/// (it was: b, on another node, got it), not that it was not carried out. A long
/// `redis_timeout_ms`, so that only the drop can answer.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_whose_connection_dropped_after_it_ran_says_it_may_be_stored() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::start(redis.addr()).await;
    let url = format!("redis://{}", proxy.addr());
    let extra = ["--presence-events", "false", "--redis-timeout-ms", "30000"];
    let cluster = Cluster::start(2, &url, &extra).await;
    let mut a = dev(cluster.addr(0), "a").await;
    let mut b = dev(cluster.addr(1), "b").await;
    join_all(&mut [&mut a, &mut b], "r").await;
    let port = redis.client_port("sc-cmd-0").await;
    let port = port.expect("no Redis connection named sc-cmd-0 (CLIENT SETNAME)");
    proxy.mute(port);
    a.send_json(&json!({"type": "publish", "id": 1, "room": "r", "body": "ran"}))
        .await;
    assert_room_msg(&b.recv_json().await, "r", "a", &json!("ran"));
    proxy.cut(port);
    // a may get its own message (the subscription is not muted) before the answer.
    let reply = loop {
        let f = a.recv_json().await;
        if f["id"] == json!(1) {
            break f;
        }
    };
    assert_error(&reply, "unavailable", Some(&json!(1)));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("may still have been stored"),
        "a dropped connection cannot tell whether Redis ran the publish: {reply}"
    );
}

/// A killed node's sessions stop counting within `presence_ttl_secs` and a second: under
/// `reject_new` its users can connect to another node then.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_sessions_stop_counting_within_the_ttl() {
    const TTL: u64 = 3;
    let redis = RedisServer::start().await;
    let ttl = TTL.to_string();
    let args = [
        "--presence-ttl-secs",
        &ttl,
        "--session-policy",
        "reject_new",
    ];
    let mut cluster = Cluster::start(2, &redis.url(), &args).await;
    let mut u = dev(cluster.addr(1), "u").await;
    u.ping().await;
    cluster.kill(1).await;
    let killed_at = Instant::now();
    // The bound, plus a second for a loaded 2-core machine.
    let bound = Duration::from_secs(TTL + 1) + Duration::from_secs(1);
    let mut again = retry_dev(cluster.addr(0), "u", bound)
        .await
        .unwrap_or_else(|r| {
            panic!(
                "u is still refused {:?} after the kill: {r:?}",
                killed_at.elapsed()
            )
        });
    again.ping().await;
}
