//! Connection lifecycle: JSON ping/pong (ids echoed byte for byte), the server's WebSocket
//! heartbeat, the idle timeout (1008) and what counts as activity, the answer to a client's
//! close (1000), slow consumers (4000) while other members keep receiving, graceful shutdown
//! (1001) in-process, and the binary on SIGTERM/SIGINT.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread")]
async fn json_ping_gets_pong_echoing_the_id() {
    let server = TestServer::default_config();
    let mut a = dev(server.addr(), "a").await;

    for id in [json!(1), json!("p-1"), json!(-7), json!("")] {
        let reply = a.call(json!({"type": "ping", "id": id})).await;
        assert_eq!(reply["type"], "pong", "{reply}");
    }
    // Unknown fields are ignored.
    let reply = a
        .call(json!({"type": "ping", "id": 3, "extra": {"x": [1, 2]}}))
        .await;
    assert_eq!(reply["type"], "pong", "{reply}");

    // Without an id: a pong without one.
    a.send_text(r#"{"type":"ping"}"#).await;
    let reply = a.recv_type("pong").await;
    assert!(reply.get("id").is_none_or(Value::is_null), "{reply}");

    // Byte for byte: the id's JSON text comes back unchanged, not re-serialized.
    for (id_text, equal_to) in [
        ("1.50", json!(1.5)),
        (r#""a\u0041""#, json!("aA")),
        ("1e2", json!(100.0)),
    ] {
        a.send_text(format!(r#"{{"type":"ping","id":{id_text}}}"#))
            .await;
        let raw = a.recv_text().await;
        let reply: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(reply["type"], "pong", "{raw}");
        assert!(
            raw.contains(id_text),
            "the id must be echoed byte for byte: sent {id_text}, got {raw}"
        );
        assert_eq!(reply["id"], equal_to, "{raw}");
    }
    // The same for other replies: a join's ack.
    a.send_text(r#"{"type":"join","room":"r","id":2.0}"#).await;
    let raw = a.recv_text().await;
    assert!(raw.contains("2.0") && raw.contains("ack"), "{raw}");
}

/// With a short `heartbeat_ms`, WebSocket pings arrive, and a client that keeps reading (so
/// tungstenite answers them) stays connected for many heartbeat periods.
#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_pings_keep_a_reading_client_connected() {
    // An idle timeout of 5 heartbeats leaves room for a loaded test machine.
    let server = TestServer::start(|c| {
        c.heartbeat_ms = 100;
        c.idle_timeout_ms = 500;
    });
    let mut a = dev(server.addr(), "a").await;
    assert_eq!(a.welcome["heartbeat_ms"], 100, "{}", a.welcome);

    // 20 heartbeat periods (4 idle timeouts) of reading and answering pings only.
    a.assert_silent(Duration::from_millis(2000)).await;
    assert!(
        a.pings >= 5,
        "expected a WebSocket ping about every 100 ms, got {} in 2 s",
        a.pings
    );
    a.ping().await;
}

/// A client that neither reads (so it sends no pongs) nor sends is closed with 1008.
#[tokio::test(flavor = "multi_thread")]
async fn idle_client_is_closed_with_1008() {
    let server = TestServer::start(|c| {
        c.heartbeat_ms = 100;
        c.idle_timeout_ms = 300;
    });
    let mut a = dev(server.addr(), "a").await;
    let mut b = dev(server.addr(), "b").await;
    tokio::time::sleep(Duration::from_millis(1200)).await; // silent on purpose: not polled
    a.expect_close(1008).await;
    b.expect_close(1008).await;
}

/// The idle timeout defaults to twice `heartbeat_ms`.
#[tokio::test(flavor = "multi_thread")]
async fn idle_timeout_defaults_to_twice_the_heartbeat() {
    let server = TestServer::start(|c| {
        c.heartbeat_ms = 100;
        c.idle_timeout_ms = 0;
    });
    let mut a = dev(server.addr(), "a").await;
    tokio::time::sleep(Duration::from_millis(1000)).await; // not polled: no pongs go out
    a.expect_close(1008).await;
}

/// Any client frame counts as activity: a client that sends JSON pings but does not read (and
/// so answers no WebSocket ping) is not closed.
#[tokio::test(flavor = "multi_thread")]
async fn json_frames_count_as_activity() {
    let server = TestServer::start(|c| {
        c.heartbeat_ms = 100;
        c.idle_timeout_ms = 600;
    });
    let mut a = dev(server.addr(), "a").await;
    const PINGS: u64 = 20;
    for i in 0..PINGS {
        a.send_json(&json!({"type": "ping", "id": i})).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 2 s, over three idle timeouts, later: every pong is there, and no close.
    for i in 0..PINGS {
        let reply = a.recv_type("pong").await;
        assert_eq!(reply["id"], i);
    }
    a.ping().await;
}

/// WebSocket pings from the client count as activity too.
#[tokio::test(flavor = "multi_thread")]
async fn websocket_pings_from_the_client_count_as_activity() {
    let server = TestServer::start(|c| {
        c.heartbeat_ms = 100;
        c.idle_timeout_ms = 600;
    });
    let mut a = dev(server.addr(), "a").await;
    for _ in 0..20 {
        a.send_msg(Message::Ping(b"hi".to_vec().into())).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing but pings and pongs is waiting, and the connection is open.
    a.ping().await;
}

/// The answer to the client's own close is a close with 1000.
#[tokio::test(flavor = "multi_thread")]
async fn client_close_is_answered_with_1000() {
    let server = TestServer::default_config();
    let mut a = dev(server.addr(), "a").await;
    a.join("r").await;
    match a.close_with(1000).await {
        Incoming::Close(Some((code, _))) => assert_eq!(code, 1000),
        other => panic!("expected a close frame with 1000, got {other}"),
    }
    // The server forgot the connection: the room is empty for the next member.
    let mut b = dev(server.addr(), "b").await;
    b.join("r").await;
    assert_eq!(b.presence("r").await, ["b"]);
}

/// A member that stops reading is closed with 4000 once more than `max_queue_bytes` wait for it;
/// a member that keeps reading gets every message, in order.
#[tokio::test(flavor = "multi_thread")]
async fn slow_consumer_is_closed_while_others_keep_receiving() {
    const PAD: usize = 60 * 1024;
    // 20 MiB: far more than the loopback socket buffers plus the 64 KiB queue can hold.
    const MESSAGES: u64 = 340;
    let server = TestServer::start(|c| {
        // The server requires max_queue_bytes >= max_message_size (64 KiB by default).
        c.max_queue_bytes = 64 * 1024;
        c.publish_rate = 1_000_000;
        c.publish_burst = 1_000_000;
        // One publisher stores 20-30 MB here: no budget of stored bytes.
        c.user_store_rate_bytes = 0;
        c.presence_events = false;
        // Give the server time to get the close frame out while the test is still publishing.
        c.close_timeout_ms = 30_000;
    });
    let addr = server.addr();
    let mut slow = dev(addr, "slow").await;
    let mut fast = dev(addr, "fast").await;
    let mut publisher = dev(addr, "publisher").await;
    for c in [&mut slow, &mut fast, &mut publisher] {
        c.join("room").await;
    }

    // From here on `slow` is not polled. Publish in lockstep with `fast`, so that only `slow`
    // falls behind.
    let pad = "x".repeat(PAD);
    for i in 1..=MESSAGES {
        let seq = publisher.publish("room", json!({"i": i, "pad": pad})).await;
        assert_eq!(seq, i, "seq");
        let got = fast.recv_json().await;
        assert_eq!(got["type"], "message", "fast: {}", got["type"]);
        assert_eq!(got["seq"], i, "fast must get every message, in order");
        assert_eq!(got["from"], "publisher");
        assert_eq!(got["body"]["i"], i, "fast: body of seq {i}");
        assert_eq!(got["body"]["pad"].as_str().map(str::len), Some(PAD));
    }
    fast.ping().await;
    publisher.ping().await;

    // Now drain `slow`: some messages, in order, then the close frame.
    let mut received = 0;
    loop {
        match slow.next_within(Duration::from_secs(10)).await {
            Some(Incoming::Text(t)) => {
                let m: Value = serde_json::from_str(&t).expect("JSON frame");
                assert_eq!(m["type"], "message", "slow: {}", m["type"]);
                received += 1;
                assert_eq!(m["seq"], received, "slow: messages in order, no gaps");
            }
            Some(Incoming::Close(Some((code, reason)))) => {
                assert_eq!(code, 4000, "slow consumer close code ({reason:?})");
                break;
            }
            Some(Incoming::Close(None)) => panic!("slow consumer closed without a code"),
            Some(Incoming::Binary(b)) => panic!("binary frame of {} bytes", b.len()),
            Some(Incoming::Ended(e)) => {
                // The server could not get its close frame out; the connection was cut.
                eprintln!("note: slow consumer saw no close frame, the stream ended: {e}");
                break;
            }
            None => panic!(
                "the slow consumer was never disconnected: it got {received} of {MESSAGES} \
                 messages and then nothing for 10 s"
            ),
        }
    }
    assert!(
        received < MESSAGES,
        "a consumer that got every message was not dropped for being slow"
    );

    // The others are unaffected.
    fast.ping().await;
    let seq = publisher.publish("room", json!("after")).await;
    let got = fast.recv_json().await;
    assert_eq!(
        assert_room_msg(&got, "room", "publisher", &json!("after")),
        seq
    );
}

/// `shutdown()` closes every connection with 1001, and `join()` returns.
#[tokio::test(flavor = "multi_thread")]
async fn graceful_shutdown_sends_1001() {
    let mut server = TestServer::start(|c| c.presence_events = false);
    let addr = server.addr();
    let mut a = dev(addr, "a").await;
    let mut b = dev(addr, "b").await;
    let mut b2 = dev(addr, "b").await;
    let mut c = dev(addr, "c").await;
    a.join("r").await;
    b.join("r").await;
    let seq = a.dm("c", json!("before shutdown")).await;
    let got = c.recv_json().await;
    assert_eq!(assert_dm(&got, "c", "a", &json!("before shutdown")), seq);

    server.shutdown();
    for who in [&mut a, &mut b, &mut b2, &mut c] {
        who.expect_close(1001).await;
    }
    server.join();
}

async fn binary_exits_cleanly_on(signal: &str) {
    let mut bin = BinaryServer::spawn(&["--bind", "127.0.0.1:0", "--shards", "2"]);
    let addr = bin.listening_addr().await;
    let mut a = dev(addr, "a").await;
    let mut b = dev(addr, "b").await;
    let seq = a.dm("b", json!("hello")).await;
    let got = b.recv_json().await;
    assert_eq!(assert_dm(&got, "b", "a", &json!("hello")), seq);

    bin.signal(signal);
    a.expect_close(1001).await;
    b.expect_close(1001).await;
    let status = bin.wait_exit(Duration::from_secs(10)).await;
    bin.finish_output().await;
    assert!(
        status.success(),
        "SIG{signal} must exit 0, got {status}; output:\n{}",
        bin.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_sigterm_closes_1001_and_exits_0() {
    binary_exits_cleanly_on("TERM").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_sigint_closes_1001_and_exits_0() {
    binary_exits_cleanly_on("INT").await;
}

/// Over the bound on all connections' unsent bytes, the largest queues are closed first (4000,
/// with a reason naming the bound), before any of them reaches its own `max_queue_bytes`; a
/// member that keeps reading gets every message.
#[tokio::test(flavor = "multi_thread")]
async fn the_largest_queues_are_closed_when_all_unsent_bytes_are_over_the_bound() {
    const PAD: usize = 60 * 1024;
    const MESSAGES: u64 = 500;
    let server = TestServer::start(|c| {
        c.shards = 1;
        c.max_queue_bytes = 1 << 20;
        c.max_total_queue_bytes = 1 << 20;
        c.publish_rate = 1_000_000;
        c.publish_burst = 1_000_000;
        // One publisher stores 20-30 MB here: no budget of stored bytes.
        c.user_store_rate_bytes = 0;
        c.presence_events = false;
        c.close_timeout_ms = 30_000;
    });
    let addr = server.addr();
    let mut slow = Vec::new();
    for i in 0..3 {
        let mut c = dev(addr, &format!("slow{i}")).await;
        c.join("room").await;
        slow.push(c);
    }
    let mut fast = dev(addr, "fast").await;
    let mut publisher = dev(addr, "publisher").await;
    fast.join("room").await;
    publisher.join("room").await;

    let pad = "x".repeat(PAD);
    for i in 1..=MESSAGES {
        publisher.publish("room", json!({"i": i, "pad": pad})).await;
        let got = fast.recv_json().await;
        assert_eq!(got["seq"], i, "fast must get every message, in order");
    }

    let mut by_the_bound = 0;
    for c in &mut slow {
        loop {
            match c.next_within(Duration::from_secs(10)).await {
                Some(Incoming::Text(_)) => {}
                Some(Incoming::Close(Some((code, reason)))) => {
                    assert_eq!(code, 4000, "{}: {reason:?}", c.name);
                    by_the_bound += usize::from(reason.contains("bound"));
                    break;
                }
                other => panic!(
                    "{}: expected messages then a 4000 close, got {other:?}",
                    c.name
                ),
            }
        }
    }
    assert!(
        by_the_bound >= 2,
        "at least two slow consumers are closed by the total bound, not their own ({by_the_bound})"
    );
}
