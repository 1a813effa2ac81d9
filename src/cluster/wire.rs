//! What nodes publish to each other over Redis pub/sub: a one-line header, a newline, and
//! (for frames) the frame's JSON. The message scripts build the same format in Lua.
//!
//! - `m SEQ EXCL EPOCH [SENDER KEY]` + JSON: a stream's message at SEQ of EPOCH; EXCL is the
//!   publishing connection or empty; a keyed message adds its sender and key, for the
//!   sender's other connections.
//! - `e EXCL` + JSON: a presence event (outside the seq order); EXCL is the joining connection.
//! - `o USERS`: a room's users across the cluster (a count room's, or a list room's past its
//!   `presence_list_max`); nodes pass it on to members as coalesced `occupancy` events.
//! - `f EXCL` + JSON: the copy of a direct message for the sender's other connections.
//! - `c CONN`: close the user's connections but CONN (kick_old).
//! - `k` + reason: close the user's connections (the API's disconnect).
//! - `b NODE` + JSON: a broadcast to every connection, sent by NODE.
//! - `h`: a node's heartbeat to itself.
//! - `s EXCL` + JSON: a signal or receipt for a room's members (no seq, never stored).
//! - `r SEQ EXCL [ROOM]`: the user's read position of ROOM (or of the inbox) moved to SEQ.
//!
//! Owns the format only; it must not touch Redis or shard state.

use bytes::Bytes;

use crate::core::{ConnId, MsgKey, Name, NodeId};

#[derive(Debug, PartialEq, Eq)]
pub enum Wire {
    Message {
        seq: u64,
        exclude: Option<ConnId>,
        /// The stream's epoch (absent when read back from the log).
        epoch: Option<u64>,
        json: Bytes,
        /// A keyed message's sender and key (absent when read back from the log).
        own: Option<(Name, MsgKey)>,
    },
    Event {
        exclude: Option<ConnId>,
        json: Bytes,
    },
    Occupancy(u64),
    Forward {
        exclude: Option<ConnId>,
        json: Bytes,
    },
    CloseOthers(ConnId),
    Kick(String),
    Broadcast {
        from: NodeId,
        json: Bytes,
    },
    Heartbeat,
    Signal {
        exclude: Option<ConnId>,
        json: Bytes,
    },
    ReadMoved {
        seq: u64,
        exclude: Option<ConnId>,
        room: Option<Name>,
    },
}

impl Wire {
    pub fn parse(raw: Bytes) -> Option<Wire> {
        let nl = raw.iter().position(|&b| b == b'\n').unwrap_or(raw.len());
        let header = std::str::from_utf8(&raw[..nl]).ok()?;
        let body = || raw.slice((nl + 1).min(raw.len())..);
        let mut words = header.split(' ');
        let kind = words.next()?;
        let mut num = || words.next().and_then(|w| w.parse::<u64>().ok());
        Some(match kind {
            "m" => {
                let seq = num()?;
                let exclude = num().map(ConnId::from_raw);
                let epoch = num();
                let own = match (words.next(), words.next()) {
                    (Some(from), Some(key)) => Name::new(from).ok().zip(MsgKey::new(key).ok()),
                    _ => None,
                };
                Wire::Message {
                    seq,
                    exclude,
                    epoch,
                    json: body(),
                    own,
                }
            }
            "e" => Wire::Event {
                exclude: num().map(ConnId::from_raw),
                json: body(),
            },
            "o" => Wire::Occupancy(num()?),
            "f" => Wire::Forward {
                exclude: num().map(ConnId::from_raw),
                json: body(),
            },
            "c" => Wire::CloseOthers(ConnId::from_raw(num()?)),
            "k" => Wire::Kick(String::from_utf8_lossy(&body()).into_owned()),
            "b" => Wire::Broadcast {
                from: NodeId::try_from(num()?).ok()?,
                json: body(),
            },
            "h" => Wire::Heartbeat,
            "s" => Wire::Signal {
                exclude: num().map(ConnId::from_raw),
                json: body(),
            },
            "r" => {
                let seq = num()?;
                let exclude = num().map(ConnId::from_raw);
                let room = words.next().and_then(|r| Name::new(r).ok());
                Wire::ReadMoved { seq, exclude, room }
            }
            _ => return None,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let excl = |e: &Option<ConnId>| e.map(|c| c.raw().to_string()).unwrap_or_default();
        let (header, body): (String, &[u8]) = match self {
            Wire::Message {
                seq,
                exclude,
                epoch,
                json,
                own,
            } => {
                let epoch = epoch.map(|e| e.to_string()).unwrap_or_default();
                let own = (own.as_ref())
                    .map(|(from, key)| format!(" {from} {}", key.as_str()))
                    .unwrap_or_default();
                (format!("m {seq} {} {epoch}{own}", excl(exclude)), json)
            }
            Wire::Event { exclude, json } => (format!("e {}", excl(exclude)), json),
            Wire::Occupancy(users) => (format!("o {users}"), b""),
            Wire::Forward { exclude, json } => (format!("f {}", excl(exclude)), json),
            Wire::CloseOthers(c) => (format!("c {}", c.raw()), b""),
            Wire::Kick(reason) => ("k".into(), reason.as_bytes()),
            Wire::Broadcast { from, json } => (format!("b {from}"), json),
            Wire::Heartbeat => ("h".into(), b""),
            Wire::Signal { exclude, json } => (format!("s {}", excl(exclude)), json),
            Wire::ReadMoved { seq, exclude, room } => {
                let room = room.as_ref().map_or("", |r| r.as_str());
                (format!("r {seq} {} {room}", excl(exclude)), b"")
            }
        };
        let mut out = Vec::with_capacity(header.len() + 1 + body.len());
        out.extend_from_slice(header.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_garbage_is_refused() {
        let c = ConnId::new(3, 1, 77);
        let json = Bytes::from_static(br#"{"type":"message"}"#);
        for w in [
            Wire::Message {
                seq: 5,
                exclude: Some(c),
                epoch: Some(8),
                json: json.clone(),
                own: None,
            },
            Wire::Message {
                seq: 6,
                exclude: None,
                epoch: None,
                json: json.clone(),
                own: None,
            },
            Wire::Message {
                seq: 7,
                exclude: None,
                epoch: Some(8),
                json: json.clone(),
                own: Some((Name::new("a").unwrap(), MsgKey::new("k\"1").unwrap())),
            },
            Wire::Event {
                exclude: Some(c),
                json: json.clone(),
            },
            Wire::Forward {
                exclude: None,
                json: json.clone(),
            },
            Wire::Occupancy(15_000),
            Wire::CloseOthers(c),
            Wire::Kick("bye now".into()),
            Wire::Broadcast { from: 9, json },
            Wire::Heartbeat,
        ] {
            assert_eq!(Wire::parse(Bytes::from(w.encode())), Some(w));
        }
        // What publish.lua sends: "m SEQ EXCL EPOCH [SENDER KEY]\nJSON", EXCL possibly empty.
        let keyed = Bytes::from_static(b"m 12  77 a k-1\n{}");
        assert!(matches!(
            Wire::parse(keyed),
            Some(Wire::Message { seq: 12, exclude: None, epoch: Some(77), own: Some((from, key)), .. })
                if &*from == "a" && key.as_str() == "k-1"
        ));
        let lua = Bytes::from_static(b"m 12  77\n{}");
        assert!(matches!(
            Wire::parse(lua),
            Some(Wire::Message {
                seq: 12,
                exclude: None,
                epoch: Some(77),
                ..
            })
        ));
        // What occupancy.lua and the presence scripts send: "o USERS", no newline.
        assert_eq!(
            Wire::parse(Bytes::from_static(b"o 12")),
            Some(Wire::Occupancy(12))
        );
        for bad in [
            &b""[..],
            b"x 1",
            b"m",
            b"m x",
            b"c",
            b"b 99999999",
            b"o",
            b"o -1",
        ] {
            assert_eq!(Wire::parse(Bytes::copy_from_slice(bad)), None, "{bad:?}");
        }
    }
}
