//! Signals (issue 23): `signal` frames reach the room's other members, in both engines, and are
//! never stored (no seq, not in history, not replayed by `join` with `since`); the room's rule
//! can turn them off; bad input is refused; and a slow consumer loses signals before messages
//! (a reader that stops reading its socket keeps its messages, and its connection, while the
//! signals sent meanwhile are dropped and counted in /metrics).

mod common;

use std::time::Duration;

use common::chat::Engine;
use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// relayed, never stored
// ---------------------------------------------------------------------------------------------

async fn relayed_never_stored(e: Engine) {
    let mut alice = dev(e.addr(0), "alice").await;
    let mut bob = dev(e.addr(1), "bob").await;
    alice.join("chat").await;
    bob.join("chat").await;

    // Without an id: no ack, and the other member gets it.
    let typing = json!({"type": "signal", "room": "chat", "body": {"typing": true}});
    alice.send_json(&typing).await;
    let got = bob.recv_json().await;
    assert_eq!(
        got,
        json!({"type": "signal", "room": "chat", "from": "alice", "body": {"typing": true}}),
        "{}",
        e.name()
    );
    // With an id: an ack without a seq. The sender never gets its own signal (`call` reads
    // the next frame, which must be the ack).
    let ack = alice
        .call(json!({"type": "signal", "room": "chat", "body": "stop"}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["room"], "chat", "{ack}");
    assert!(ack.get("seq").is_none(), "a signal has no seq: {ack}");
    assert_eq!(bob.recv_type("signal").await["body"], "stop");

    // The next message is seq 1: signals took none.
    assert_eq!(alice.publish("chat", json!("hello")).await, 1);
    assert_eq!(bob.recv_type("message").await["seq"], 1);
    let history = bob.history_all("chat").await;
    assert_eq!(history.len(), 1, "only the message is stored: {history:?}");
    assert_eq!(history[0]["type"], "message");

    // A reconnecting member recovers the message, and no signal.
    let mut again = dev(e.addr(1), "bob").await;
    let ack = again.join_since("chat", 0).await;
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(again.recv_type("message").await["seq"], 1);
    again.assert_silent(Duration::from_millis(300)).await;
}

on_both_engines!(
    signals_are_relayed_and_never_stored_embedded,
    signals_are_relayed_and_never_stored_redis,
    relayed_never_stored,
    &[]
);

// ---------------------------------------------------------------------------------------------
// the room's rule, bad input, the rate limit
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_room_rule_turns_signals_off() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, "[[rooms]]\nprefix = \"quiet:\"\nsignals = false\n").unwrap();
    let e = Engine::embedded(&[("--config", file.to_str().unwrap())]).await;
    let mut alice = dev(e.addr(0), "alice").await;
    alice.join("quiet:lobby").await;
    let reply = alice
        .call(json!({"type": "signal", "room": "quiet:lobby", "body": 1}))
        .await;
    assert_error(&reply, "forbidden", Some(&reply["id"]));
    let message = reply["message"].as_str().unwrap();
    assert!(
        message.contains("quiet:") && message.contains("signals = false"),
        "the refusal names the rule: {message}"
    );
    // Other rooms keep them.
    alice.join("open").await;
    let ack = alice
        .call(json!({"type": "signal", "room": "open", "body": 1}))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signals_get_clear_errors() {
    let e = Engine::embedded(&[
        ("--max-signal-bytes", "64"),
        ("--signal-rate", "1"),
        ("--signal-burst", "3"),
    ])
    .await;
    let mut alice = dev(e.addr(0), "alice").await;
    let mut check = async |frame: Value, code: &str| {
        let reply = alice.call(frame.clone()).await;
        assert_error(&reply, code, Some(&reply["id"]));
        reply["message"].as_str().unwrap().to_owned()
    };
    let m = check(
        json!({"type": "signal", "room": "chat", "body": 1}),
        "not_member",
    )
    .await;
    assert!(m.contains("join room chat"), "{m}");
    check(
        json!({"type": "signal", "room": 5, "body": 1}),
        "bad_request",
    )
    .await;
    check(json!({"type": "signal", "room": "chat"}), "bad_request").await;
    check(json!({"type": "signal", "body": 1}), "bad_request").await;

    alice.join("chat").await;
    let big = json!({"type": "signal", "room": "chat", "body": "x".repeat(100)});
    let reply = alice.call(big).await;
    assert_error(&reply, "too_large", Some(&reply["id"]));
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("max_signal_bytes")
    );

    // The burst (3; the too-large one above was refused before the meter), then rate_limited.
    for _ in 0..3 {
        let ack = alice
            .call(json!({"type": "signal", "room": "chat", "body": 1}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let reply = alice
        .call(json!({"type": "signal", "room": "chat", "body": 1}))
        .await;
    assert_error(&reply, "rate_limited", Some(&reply["id"]));
    assert!(reply["message"].as_str().unwrap().contains("signal_rate"));
    // The signal budget is not the publish budget: publishing still works.
    assert_eq!(alice.publish("chat", json!("still here")).await, 1);
}

// ---------------------------------------------------------------------------------------------
// a slow consumer loses signals, not messages
// ---------------------------------------------------------------------------------------------

/// Messages of ~60 KB each: a few hundred fill any socket buffer.
fn big(n: u64) -> Value {
    json!({"n": n, "pad": "p".repeat(60_000)})
}

async fn slow_consumer_drops_signals_first(e: Engine) {
    let addr = e.addr(0);
    // A reader that does not read its socket.
    let join = client_frame(0x81, br#"{"type":"join","room":"chat"}"#);
    let mut slow = RawWs::open(addr, "/ws?user=slow", &join).await;
    let mut writer = dev(e.addr(1), "writer").await;
    let mut typer = dev(e.addr(1), "typer").await;
    let mut bob = dev(addr, "bob").await;
    writer.join("chat").await;
    typer.join("chat").await;
    bob.join("chat").await;

    // Publish until the slow reader's queue on its node is past signal_queue_bytes.
    let mut n = 0;
    loop {
        n += 1;
        let (before, ack) = writer
            .request(json!({"type": "publish", "room": "chat", "body": big(n)}))
            .await;
        let types: Vec<&Value> = before.iter().map(|f| &f["type"]).collect();
        assert!(
            before.is_empty(),
            "writer got {types:?} {:?}",
            before.first().map(|f| f.get("code"))
        );
        assert_eq!(ack["seq"], n, "{ack}");
        assert_eq!(bob.recv_type("message").await["seq"], n);
        if n % 10 == 0 && e.metric(0, "shardcast_outbound_queue_bytes").await > 100_000.0 {
            break;
        }
        assert!(n < 2_000, "the slow reader's queue never grew");
    }
    // Signals now: bob (reading) gets each; the slow reader's are dropped.
    let dropped_before = e.metric(0, "shardcast_signals_dropped_total").await;
    for i in 0..5 {
        // The typer's own copies of the messages come first.
        let (_, ack) = typer
            .request(json!({"type": "signal", "room": "chat", "body": {"i": i}}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(bob.recv_type("signal").await["body"]["i"], i);
    }
    let dropped = e.metric(0, "shardcast_signals_dropped_total").await - dropped_before;
    assert_eq!(
        dropped,
        5.0,
        "{}: every signal to the slow reader dropped",
        e.name()
    );
    // One more message after the signals, then the slow reader reads everything.
    n += 1;
    // (The writer got the signals too.)
    let (_, ack) = writer
        .request(json!({"type": "publish", "room": "chat", "body": big(n)}))
        .await;
    assert_eq!(ack["seq"], n, "{ack}");
    let mut seqs = Vec::new();
    loop {
        let got = slow.recv_json().await;
        match got["type"].as_str() {
            Some("welcome" | "ack") => {}
            Some("message") => {
                seqs.push(got["seq"].as_u64().unwrap());
                if seqs.len() as u64 == n {
                    break;
                }
            }
            _ => panic!("{}: the slow reader got {got}", e.name()),
        }
    }
    assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "every message, in order");
}

/// A queue that may grow far (256 MiB), and signals dropped past 64 KiB of it.
const SLOW: &[(&str, &str)] = &[
    ("--max-queue-bytes", "268435456"),
    ("--signal-queue-bytes", "65536"),
];
on_both_engines!(
    a_slow_consumer_loses_signals_not_messages_embedded,
    a_slow_consumer_loses_signals_not_messages_redis,
    slow_consumer_drops_signals_first,
    SLOW
);
