//! The frames the bot speaks: the client frames it sends (join, publish, send), the fields it
//! reads out of server frames (with a fast path for the message frame it receives most), and the
//! body it publishes (scheduled send time, publisher, counter, padding).
//!
//! Owns these byte formats. It must not touch sockets (that is the parent, `client`).

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use shardcast_client::BodyRef;
use shardcast_client::codec::{Frame, Request};

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

/// The fields of a server frame the bot looks at, borrowed from the frame's bytes: no `Value`
/// tree and no allocation per message. Other fields (`from`, `ts`, `room`, `to`, …) are skipped.
#[derive(Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default, borrow)]
    pub body: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub code: Option<&'a str>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    /// A join with `since`: whether every missed message was still retained, how many were
    /// replayed, and whether the replay was cut short.
    #[serde(default)]
    pub recovered: Option<bool>,
    #[serde(default)]
    pub replayed: Option<u64>,
    #[serde(default)]
    pub truncated: Option<bool>,
    /// An ack of a key already stored: `seq` is the first message's.
    #[serde(default)]
    pub dup: Option<bool>,
    /// A join ack: the room's member count once this member was in (its place in the server's
    /// order of joins), and the room's presence mode (`list`, `count`, `off`).
    #[serde(default)]
    pub members: Option<u64>,
    #[serde(default, borrow)]
    pub presence: Option<&'a str>,
}

impl<'a> ServerFrame<'a> {
    pub fn parse(bytes: &'a [u8]) -> serde_json::Result<ServerFrame<'a>> {
        serde_json::from_slice(bytes)
    }

    /// The same fields of a frame the client crate's codec decoded (a binary one), borrowed
    /// from it. `body` is left out: the read loop takes a decoded message's body itself.
    pub fn from_codec(f: &'a Frame<'_>) -> ServerFrame<'a> {
        ServerFrame {
            kind: &f.ty,
            id: f.id,
            seq: f.seq,
            body: None,
            code: f.code.as_deref(),
            message: f.message.as_deref().map(Cow::Borrowed),
            recovered: f.recovered,
            replayed: f.replayed,
            truncated: f.truncated,
            dup: f.dup.then_some(true),
            members: f.members,
            presence: f.presence.as_deref(),
        }
    }
}

/// A decoded message's bot body, if it is one.
pub fn stamp_of(f: &Frame<'_>) -> Option<BodyStamp> {
    let body = f.body.as_ref().filter(|b| b.json)?;
    decode_body(std::str::from_utf8(&body.bytes).ok()?)
}

// ---------------------------------------------------------------------------------------------
// The body the bot publishes
// ---------------------------------------------------------------------------------------------

/// What a bot message's body carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyStamp {
    /// The send time it was scheduled for (open loop) or sent at (closed loop), in nanoseconds
    /// since the run's epoch (monotonic).
    pub sched_ns: u64,
    /// The publishing connection's index in the run.
    pub publisher: u32,
    /// The publisher's message counter, from 0.
    pub counter: u64,
}

/// Appends the body: a JSON string `"SCHED,PUB,COUNTER,xxxx…"` padded with `x` to `size` bytes
/// (quotes included) when `size` is larger than the stamp itself.
pub fn encode_body(out: &mut Vec<u8>, stamp: BodyStamp, size: usize) {
    let start = out.len();
    let mut itoa = itoa::Buffer::new();
    out.push(b'"');
    out.extend_from_slice(itoa.format(stamp.sched_ns).as_bytes());
    out.push(b',');
    out.extend_from_slice(itoa.format(stamp.publisher).as_bytes());
    out.push(b',');
    out.extend_from_slice(itoa.format(stamp.counter).as_bytes());
    out.push(b',');
    let used = out.len() - start + 1;
    if size > used {
        out.resize(out.len() + (size - used), b'x');
    }
    out.push(b'"');
}

/// Reads a body written by [`encode_body`], given its raw JSON text.
pub fn decode_body(raw: &str) -> Option<BodyStamp> {
    let inner = raw.as_bytes().strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let (sched_ns, rest) = digits(inner)?;
    let (publisher, rest) = digits(rest.strip_prefix(b",")?)?;
    let (counter, rest) = digits(rest.strip_prefix(b",")?)?;
    rest.strip_prefix(b",")?;
    Some(BodyStamp {
        sched_ns,
        publisher: u32::try_from(publisher).ok()?,
        counter,
    })
}

/// A non-empty run of ASCII digits at the start of `b` (at most 19, so it fits a u64), and what
/// follows it.
fn digits(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take(20).take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = b[..n]
        .iter()
        .fold(0u64, |v, &c| v * 10 + u64::from(c - b'0'));
    Some((v, &b[n..]))
}

/// `"NAME"` followed by `next`: a room or user name (never escaped: names are
/// `[A-Za-z0-9_.:@-]`). Returns what follows `next`.
fn skip_name<'a>(b: &'a [u8], next: &[u8]) -> Option<&'a [u8]> {
    let b = b.strip_prefix(b"\"")?;
    let end = memchr_quote(b)?;
    b[end + 1..].strip_prefix(next)
}

fn memchr_quote(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'"')
}

/// The fast path for the frame the bot receives most: a room or direct message in the exact
/// layout the protocol documents, `{"type":"message","room":R|"to":U,"from":F,"seq":N,"ts":T,
/// "body":B}`, with a bot body. Anything else returns `None` and goes through serde
/// ([`ServerFrame`]), which accepts any field order.
pub fn parse_message_fast(frame: &[u8]) -> Option<(u64, BodyStamp)> {
    let rest = frame.strip_prefix(br#"{"type":"message","#)?;
    let rest = match rest.strip_prefix(br#""room":"#) {
        Some(r) => r,
        None => rest.strip_prefix(br#""to":"#)?,
    };
    let rest = skip_name(rest, b",")?;
    let rest = skip_name(rest.strip_prefix(br#""from":"#)?, br#","seq":"#)?;
    let (seq, rest) = digits(rest)?;
    let (_ts, rest) = digits(rest.strip_prefix(br#","ts":"#)?)?;
    let body = rest.strip_prefix(br#","body":"#)?.strip_suffix(b"}")?;
    // The body is the bot's own ASCII string; decode_body rejects anything else.
    let stamp = decode_body(std::str::from_utf8(body).ok()?)?;
    Some((seq, stamp))
}

/// The `type` of a server frame that is neither a message nor a reply to a request (`ack`,
/// `error`), read from the frame's start (`{"type":"joined",…`) without parsing the rest: how
/// the bot counts presence events, which can outnumber messages (filling a room of n sends n²/2
/// `joined`). `None` for messages, replies, and frames in another layout (serde reads those).
#[inline]
pub fn event_kind(frame: &[u8]) -> Option<&str> {
    let rest = frame.strip_prefix(br#"{"type":""#)?;
    let end = memchr_quote(rest)?;
    let kind = std::str::from_utf8(&rest[..end]).ok()?;
    (rest[end + 1..].starts_with(b",") && !matches!(kind, "message" | "ack" | "error"))
        .then_some(kind)
}

// ---------------------------------------------------------------------------------------------
// Client frames
// ---------------------------------------------------------------------------------------------

/// Where a publisher's messages go.
#[derive(Clone, Debug)]
pub enum Dest {
    /// `publish` to a room.
    Room(Arc<str>),
    /// `send` to a user.
    User(Arc<str>),
}

/// A request with its id, ready for [`super::send`] to encode in the connection's form with
/// the client crate's codec (`shardcast_client::codec`, what an application's client sends).
#[derive(Clone, Copy, Debug)]
pub struct Outgoing<'a> {
    pub id: u64,
    pub req: Request<'a>,
}

/// Reusable buffers for the parts of client frames the bot builds (a message's body and key),
/// so building a request costs no allocation.
#[derive(Default)]
pub struct RequestBuf {
    body: Vec<u8>,
    key: String,
}

impl RequestBuf {
    /// `join` `room`.
    pub fn join<'a>(&'a mut self, room: &'a str, id: u64) -> Outgoing<'a> {
        Self::join_at(room, None, id)
    }

    /// `join` `room`, with `since` when it is `Some`.
    pub fn join_since<'a>(
        &'a mut self,
        room: &'a str,
        since: Option<u64>,
        id: u64,
    ) -> Outgoing<'a> {
        Self::join_at(room, since, id)
    }

    fn join_at(room: &str, since: Option<u64>, id: u64) -> Outgoing<'_> {
        Outgoing {
            id,
            req: Request::Join {
                room,
                since,
                epoch: None,
            },
        }
    }

    /// `leave` `room`.
    pub fn leave<'a>(&'a mut self, room: &'a str, id: u64) -> Outgoing<'a> {
        Outgoing {
            id,
            req: Request::Leave { room },
        }
    }

    /// A `publish` to a room or a `send` to a user with a bot body; `keyed` adds the key
    /// `pPUBLISHER-COUNTER`.
    pub fn message<'a>(
        &'a mut self,
        dest: &'a Dest,
        id: u64,
        stamp: BodyStamp,
        body_size: usize,
        keyed: bool,
    ) -> Outgoing<'a> {
        self.body.clear();
        encode_body(&mut self.body, stamp, body_size);
        let key = if keyed {
            use std::fmt::Write as _;
            self.key.clear();
            let _ = write!(self.key, "p{}-{}", stamp.publisher, stamp.counter);
            Some(self.key.as_str())
        } else {
            None
        };
        let body = BodyRef {
            bytes: &self.body,
            json: true,
        };
        let req = match dest {
            Dest::Room(room) => Request::Publish { room, body, key },
            Dest::User(to) => Request::Send { to, body, key },
        };
        Outgoing { id, req }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardcast_client::codec::{self, Format};

    #[test]
    fn body_round_trip_and_size() {
        let stamp = BodyStamp {
            sched_ns: 12_345_678_901,
            publisher: 7,
            counter: 42,
        };
        let mut out = Vec::new();
        encode_body(&mut out, stamp, 64);
        assert_eq!(out.len(), 64);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(serde_json::from_str::<String>(text).is_ok());
        assert_eq!(decode_body(text), Some(stamp));

        let mut short = Vec::new();
        encode_body(&mut short, stamp, 4);
        assert_eq!(
            decode_body(std::str::from_utf8(&short).unwrap()),
            Some(stamp)
        );
        assert_eq!(decode_body("\"hello\""), None);
        assert_eq!(decode_body("17"), None);
    }

    /// `r`'s JSON text, as the codec writes it.
    fn json(r: Outgoing<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        codec::encode(Format::Json, Some(r.id), &r.req, &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn frames_are_json() {
        let mut rb = RequestBuf::default();
        let v = json(rb.join("r-1", 0));
        assert_eq!(v["type"], "join");
        assert_eq!(v["room"], "r-1");
        assert_eq!(v["id"], 0);
        assert!(v.get("since").is_none());
        let v = json(rb.join_since("r-1", Some(41), 5));
        assert_eq!((v["since"].as_u64(), v["id"].as_u64()), (Some(41), Some(5)));
        let v = json(rb.leave("r-1", 6));
        assert_eq!(
            (v["type"].as_str(), v["room"].as_str()),
            (Some("leave"), Some("r-1"))
        );
        assert_eq!(v["id"], 6);
        let stamp = BodyStamp {
            sched_ns: 5,
            publisher: 1,
            counter: 2,
        };
        let room = Dest::Room("r".into());
        let v = json(rb.message(&room, 3, stamp, 40, false));
        assert_eq!(v["type"], "publish");
        assert_eq!(v["id"], 3);
        assert_eq!(v["body"].as_str().unwrap().len(), 38);
        assert!(v.get("key").is_none());
        let bob = Dest::User("bob".into());
        let v = json(rb.message(&bob, 4, stamp, 0, true));
        assert_eq!(v["type"], "send");
        assert_eq!(v["to"], "bob");
        assert_eq!(v["key"], "p1-2", "keyed: publisher and counter");
        assert!(v["body"].is_string());
    }

    #[test]
    fn parses_server_frames() {
        let f = ServerFrame::parse(
            br#"{"type":"message","room":"r","from":"u","seq":9,"ts":1,"body":"1,2,3,xx"}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "message");
        assert_eq!(f.seq, Some(9));
        assert_eq!(
            decode_body(f.body.unwrap().get()),
            Some(BodyStamp {
                sched_ns: 1,
                publisher: 2,
                counter: 3
            })
        );
        let f = ServerFrame::parse(br#"{"type":"ack","id":4,"room":"r","seq":10}"#).unwrap();
        assert_eq!((f.kind, f.id, f.seq), ("ack", Some(4), Some(10)));
        assert_eq!((f.recovered, f.replayed, f.truncated), (None, None, None));
        assert_eq!((f.members, f.presence), (None, None));
        let f = ServerFrame::parse(
            br#"{"type":"ack","id":4,"room":"r","seq":0,"publish":"members","presence":"list","rights":["join"],"members":7}"#,
        )
        .unwrap();
        assert_eq!((f.members, f.presence), (Some(7), Some("list")));
        let f = ServerFrame::parse(
            br#"{"type":"ack","id":5,"room":"r","seq":44,"recovered":true,"replayed":3,"truncated":false}"#,
        )
        .unwrap();
        assert_eq!(
            (f.recovered, f.replayed, f.truncated),
            (Some(true), Some(3), Some(false))
        );
        let f = ServerFrame::parse(
            br#"{"type":"error","id":1,"code":"rate_limited","message":"slow \"down\""}"#,
        )
        .unwrap();
        assert_eq!(f.code, Some("rate_limited"));
        assert_eq!(f.message.as_deref(), Some("slow \"down\""));
        let f = ServerFrame::parse(
            br#"{"type":"welcome","user":"a","rooms":["x"],"heartbeat_ms":25000}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "welcome");
    }

    #[test]
    fn event_kinds_are_read_from_the_frame_start() {
        let joined = br#"{"type":"joined","room":"r","user":"u"}"#;
        assert_eq!(event_kind(joined), Some("joined"));
        assert_eq!(
            event_kind(br#"{"type":"occupancy","room":"r","members":3}"#),
            Some("occupancy")
        );
        for frame in [
            &br#"{"type":"message","room":"r","from":"a","seq":1,"ts":0,"body":1}"#[..],
            br#"{"type":"ack","id":1,"room":"r","seq":1}"#,
            br#"{"type":"error","code":"x","message":"y"}"#,
            br#"{"room":"r","type":"joined","user":"u"}"#,
            br#"{"type":"joined"#,
        ] {
            assert_eq!(
                event_kind(frame),
                None,
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
    }

    #[test]
    fn fast_path_agrees_with_serde() {
        let stamp = BodyStamp {
            sched_ns: 123,
            publisher: 4,
            counter: 5,
        };
        let room = br#"{"type":"message","room":"lt1-r","from":"lt1-u3","seq":77,"ts":1732200000123,"body":"123,4,5,xxxx"}"#;
        let dm =
            br#"{"type":"message","to":"b@x","from":"a.b:c","seq":1,"ts":0,"body":"123,4,5,"}"#;
        for frame in [&room[..], &dm[..]] {
            let fast = parse_message_fast(frame).unwrap();
            let slow = ServerFrame::parse(frame).unwrap();
            assert_eq!(fast, (slow.seq.unwrap(), stamp));
            assert_eq!(decode_body(slow.body.unwrap().get()), Some(stamp));
        }
        // Other layouts, other frames and foreign bodies take the slow path.
        for frame in [
            &br#"{"type":"message","from":"a","room":"r","seq":1,"ts":0,"body":"1,2,3,"}"#[..],
            br#"{"type":"message","room":"r","from":"a","seq":1,"ts":0,"body":{"x":1}}"#,
            br#"{"type":"message","room":"r","from":"a","seq":,"ts":0,"body":"1,2,3,"}"#,
            br#"{"type":"message","room":"r","from":"a","seq":1,"ts":0,"body":"1,2,3,""#,
            br#"{"type":"ack","id":1,"room":"r","seq":1}"#,
            br#"{"type":"message","room":"r","from":"a","seq":99999999999999999999,"ts":0,"body":"1,2,3,"}"#,
        ] {
            assert_eq!(parse_message_fast(frame), None, "{}", String::from_utf8_lossy(frame));
        }
        assert_eq!(decode_body(r#""1,2,3""#), None);
        assert_eq!(decode_body(r#""1,99999999999,3,""#), None);
    }
}
