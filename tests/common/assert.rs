//! Assertions on the frames a test reads ([`assert_error`], [`assert_room_msg`], [`assert_dm`],
//! [`assert_recovery`], [`seqs`]), and [`eventually`] for a condition that must come true.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::now_millis;

pub(super) fn assert_ack_room(reply: &Value, room: &str, who: &str) -> u64 {
    assert_eq!(reply["type"], "ack", "{who}: expected an ack, got {reply}");
    assert_eq!(
        reply["room"], room,
        "{who}: ack for the wrong room: {reply}"
    );
    reply["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("{who}: ack without a numeric seq: {reply}"))
}

/// The `messages` and `more` of a `history` or `sync` reply.
pub(super) fn page_of(reply: &Value, who: &str) -> (Vec<Value>, bool) {
    let messages = reply["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{who}: reply without a messages array: {reply}"))
        .clone();
    let more = reply["more"]
        .as_bool()
        .unwrap_or_else(|| panic!("{who}: reply without a boolean more: {reply}"));
    (messages, more)
}

/// The `seq`s of `messages`, in order.
pub fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            m["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("message without a numeric seq: {m}"))
        })
        .collect()
}

/// Calls `probe` every 50 ms until it returns `Some`, for up to `within`; then fails, saying
/// what was awaited.
pub async fn eventually<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `error` frame with `code` and a non-empty message. `id`: `Some(id)` the id must be echoed;
/// `None` no valid id was sent, so the id must be absent or null.
pub fn assert_error(frame: &Value, code: &str, id: Option<&Value>) {
    assert_eq!(
        frame["type"], "error",
        "expected an error frame, got {frame}"
    );
    assert_eq!(frame["code"], code, "error code in {frame}");
    assert!(
        frame["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error frame needs a non-empty message: {frame}"
    );
    match id {
        Some(id) => assert_eq!(&frame["id"], id, "error must echo the id: {frame}"),
        None => assert!(
            frame.get("id").is_none_or(Value::is_null),
            "no valid id was sent, yet the error carries one: {frame}"
        ),
    }
}

fn assert_ts(frame: &Value) {
    let ts = frame["ts"]
        .as_u64()
        .unwrap_or_else(|| panic!("message without a numeric ts: {frame}"));
    let now = now_millis();
    assert!(
        ts.abs_diff(now) < 60_000,
        "ts {ts} is not unix milliseconds near now ({now}): {frame}"
    );
}

/// A room message in `room` from `from` with `body`; returns its seq.
pub fn assert_room_msg(frame: &Value, room: &str, from: &str, body: &Value) -> u64 {
    assert_eq!(frame["type"], "message", "expected a message, got {frame}");
    assert_eq!(frame["room"], room, "message room in {frame}");
    assert!(
        frame.get("to").is_none(),
        "room message with a `to`: {frame}"
    );
    assert_eq!(frame["from"], from, "message sender in {frame}");
    assert_eq!(&frame["body"], body, "message body in {frame}");
    assert_ts(frame);
    frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("message without a numeric seq: {frame}"))
}

/// A direct message to `to` from `from` with `body`; returns its seq.
pub fn assert_dm(frame: &Value, to: &str, from: &str, body: &Value) -> u64 {
    assert_eq!(frame["type"], "message", "expected a message, got {frame}");
    assert_eq!(frame["to"], to, "direct message recipient in {frame}");
    assert!(
        frame.get("room").is_none(),
        "direct message with a `room`: {frame}"
    );
    assert_eq!(frame["from"], from, "message sender in {frame}");
    assert_eq!(&frame["body"], body, "message body in {frame}");
    assert_ts(frame);
    frame["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("message without a numeric seq: {frame}"))
}

/// A `join` ack with `since`: the room's last `seq` and the recovery fields.
pub fn assert_recovery(ack: &Value, seq: u64, recovered: bool, replayed: u64, truncated: bool) {
    assert_eq!(ack["type"], "ack", "expected a join ack, got {ack}");
    let got = [
        &ack["seq"],
        &ack["recovered"],
        &ack["replayed"],
        &ack["truncated"],
    ];
    let expected = [
        &json!(seq),
        &json!(recovered),
        &json!(replayed),
        &json!(truncated),
    ];
    assert_eq!(
        got, expected,
        "join ack [seq, recovered, replayed, truncated] in {ack}"
    );
}
