//! Numbered messages: the body of the message with seq N is [`numbered`]`(N)`, so a test can
//! publish or send a run of them and check a run it reads back; [`padded`] is the ~1 KB form.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

use serde_json::{Value, json};

use super::{Client, assert_dm, assert_room_msg, dev};

/// The body of message number `n`.
pub fn numbered(n: u64) -> Value {
    json!({"n": n})
}

/// Publishes `numbered(n)` to `room` for each n in `seqs`; each ack's seq must be n.
pub async fn publish_numbered(c: &mut Client, room: &str, seqs: RangeInclusive<u64>) {
    for n in seqs {
        assert_eq!(c.publish(room, numbered(n)).await, n, "{}: ack seq", c.name);
    }
}

/// Sends `numbered(n)` to `to` for each n in `seqs`; each ack's seq must be n.
pub async fn dm_numbered(c: &mut Client, to: &str, seqs: RangeInclusive<u64>) {
    for n in seqs {
        assert_eq!(c.dm(to, numbered(n)).await, n, "{}: ack seq", c.name);
    }
}

/// Room messages `numbered(n)` from `from`, with seq n, for each n in `seqs`, in order.
pub fn assert_room_msgs(msgs: &[Value], room: &str, from: &str, seqs: impl Iterator<Item = u64>) {
    assert_numbered(msgs, seqs, |m, body| assert_room_msg(m, room, from, body));
}

/// Direct messages `numbered(n)` to `to` from `from`, with seq n, for each n in `seqs`.
pub fn assert_dms(msgs: &[Value], to: &str, from: &str, seqs: impl Iterator<Item = u64>) {
    assert_numbered(msgs, seqs, |m, body| assert_dm(m, to, from, body));
}

/// `msgs` are `numbered(n)` with seq n for each n in `seqs`; `check(message, body)` checks
/// the rest of a message and returns its seq.
fn assert_numbered(
    msgs: &[Value],
    seqs: impl Iterator<Item = u64>,
    check: impl Fn(&Value, &Value) -> u64,
) {
    let seqs: Vec<u64> = seqs.collect();
    assert_eq!(
        msgs.len(),
        seqs.len(),
        "messages {seqs:?} expected, got {msgs:?}"
    );
    for (m, n) in msgs.iter().zip(seqs) {
        assert_eq!(check(m, &numbered(n)), n, "in {msgs:?}");
    }
}

/// A body of about 1 KB for message number `n`.
pub fn padded(n: u64) -> Value {
    json!({"n": n, "pad": "x".repeat(1000)})
}

/// "a" and "b" join `room`; b publishes 1..=`seen`, which a reads; a disconnects while b
/// publishes up to `last`, then connects again (not yet in the room). Returns (a, b).
pub async fn miss_messages(addr: SocketAddr, room: &str, seen: u64, last: u64) -> (Client, Client) {
    let mut a = dev(addr, "a").await;
    let mut b = dev(addr, "b").await;
    a.join(room).await;
    b.join(room).await;
    publish_numbered(&mut b, room, 1..=seen).await;
    assert_room_msgs(&a.recv_n(seen as usize).await, room, "b", 1..=seen);
    a.close().await;
    publish_numbered(&mut b, room, seen + 1..=last).await;
    (dev(addr, "a").await, b)
}
