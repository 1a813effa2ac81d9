//! The event feed in Redis (docs/hooks.md, "The feed in cluster mode"): the commands the
//! store thread and the delivery thread run on it, and its entries read back into the
//! embedded feed's records, so both engines deliver the same JSON. The scripts write it
//! (`lua/common.lua`); this module only reads it, trims it, and keeps the lease and the mark.
//! It must not hold room, user or connection state.

use redis::{Cmd, Value};

use crate::core::{ConnId, Name, Stream};
use crate::persist::FeedEvent;
use crate::store::{FeedRecord, FeedState, StoreError};

const LEASE: &str = include_str!("lua/feed_lease.lua");
const MARK: &str = include_str!("lua/feed_mark.lua");
/// Entries looked at per step of trimming by age.
const AGE_STEP: usize = 256;
/// Steps of trimming by age per pass (the rest at the next pass, a second later).
const AGE_STEPS: usize = 64;

/// The feed's keys and this process's name as a lease holder.
#[derive(Clone)]
pub struct FeedKeys {
    log: String,
    meta: String,
    lease: String,
    holder: String,
}

impl FeedKeys {
    pub fn new((log, meta, lease): (String, String, String)) -> FeedKeys {
        // Unique per process: a restarted node is a new holder, and waits for its old lease.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        FeedKeys {
            log,
            meta,
            lease,
            holder: format!("{}-{nanos}", std::process::id()),
        }
    }

    /// This process's name as the lease's holder (the collector's too, `cluster::parts`).
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn state_cmds(&self) -> (Cmd, Cmd) {
        let mut meta = redis::cmd("HMGET");
        meta.arg(&self.meta).arg("last").arg("mark");
        let mut first = redis::cmd("XRANGE");
        first.arg(&self.log).arg("-").arg("+").arg("COUNT").arg(1);
        (meta, first)
    }

    pub fn after_cmd(&self, after: u64, limit: usize) -> Cmd {
        let mut c = redis::cmd("XRANGE");
        c.arg(&self.log)
            .arg(format!("{}-0", after.saturating_add(1)))
            .arg("+")
            .arg("COUNT")
            .arg(limit);
        c
    }

    pub fn lease_cmd(&self, ttl_ms: u64) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(LEASE)
            .arg(1)
            .arg(&self.lease)
            .arg(&self.holder)
            .arg(ttl_ms.max(1));
        c
    }

    pub fn mark_cmd(&self, mark: u64) -> Cmd {
        let mut c = redis::cmd("EVAL");
        c.arg(MARK)
            .arg(2)
            .arg(&self.lease)
            .arg(&self.meta)
            .arg(&self.holder)
            .arg(mark);
        c
    }

    pub fn trim_cmd(&self, min_id: u64) -> Cmd {
        let mut c = redis::cmd("XTRIM");
        c.arg(&self.log).arg("MINID").arg(format!("{min_id}-0"));
        c
    }

    /// The first `AGE_STEP` entries, to find where age cuts.
    pub fn head_cmd(&self) -> Cmd {
        let mut c = redis::cmd("XRANGE");
        c.arg(&self.log)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(AGE_STEP);
        c
    }

    /// Trims by count, then by age in steps: `query` runs one command.
    pub fn trim(
        &self,
        keep_from: u64,
        min_ts: u64,
        query: &dyn Fn(&Cmd) -> Result<Value, StoreError>,
    ) -> Result<usize, StoreError> {
        let mut trimmed = 0;
        if keep_from > 0 {
            trimmed += count(&query(&self.trim_cmd(keep_from))?);
        }
        if min_ts == 0 {
            return Ok(trimmed);
        }
        for _ in 0..AGE_STEPS {
            let head = parse(query(&self.head_cmd())?)?;
            let old = head.iter().take_while(|r| r.ts < min_ts).count();
            let Some(last_old) = old.checked_sub(1).map(|i| head[i].cursor) else {
                break;
            };
            trimmed += count(&query(&self.trim_cmd(last_old + 1))?);
            if old < AGE_STEP {
                break;
            }
        }
        Ok(trimmed)
    }
}

fn count(v: &Value) -> usize {
    match v {
        Value::Int(n) => *n as usize,
        _ => 0,
    }
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Int(n) => u64::try_from(*n).ok(),
        v => std::str::from_utf8(text(v)?).ok()?.parse().ok(),
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Read(format!("redis: the event feed holds {what}"))
}

/// The feed's state from the answers of `state_cmds`.
pub fn state(meta: Value, first: Value) -> Result<FeedState, StoreError> {
    let Value::Array(m) = meta else {
        return Err(corrupt("an unexpected meta hash"));
    };
    let first = parse(first)?.first().map_or(0, |r| r.cursor);
    Ok(FeedState {
        first,
        last: number(m.first()).unwrap_or(0),
        mark: number(m.get(1)).unwrap_or(0),
    })
}

/// Whether the lease (or the mark's move) was held: the scripts answer 1.
pub fn held(v: &Value) -> bool {
    matches!(v, Value::Int(1))
}

/// XRANGE's answer, as the records the embedded feed would have stored.
pub fn parse(value: Value) -> Result<Vec<FeedRecord>, StoreError> {
    let Value::Array(entries) = value else {
        return Err(corrupt("an unexpected range"));
    };
    entries
        .iter()
        .map(|e| entry(e).ok_or_else(|| corrupt(&format!("a malformed entry: {e:?}"))))
        .collect()
}

/// One entry: `[id, [field, value, ...]]` (fields in `lua/common.lua`).
fn entry(e: &Value) -> Option<FeedRecord> {
    let Value::Array(parts) = e else { return None };
    let [id, Value::Array(fields)] = &parts[..] else {
        return None;
    };
    let id = std::str::from_utf8(text(id)?).ok()?;
    let cursor: u64 = id.split('-').next()?.parse().ok()?;
    let field = |k: &[u8]| {
        fields
            .chunks(2)
            .find(|p| text(&p[0]) == Some(k))
            .and_then(|p| p.get(1))
    };
    let name = |k: &[u8]| Name::new(std::str::from_utf8(text(field(k)?)?).ok()?).ok();
    let ts = number(field(b"t"))?;
    let kind = text(field(b"e")?)?;
    let event = match kind {
        b"m" | b"d" => {
            let n = name(b"n")?;
            FeedEvent::Stream {
                stream: match kind {
                    b"m" => Stream::Room(n),
                    _ => Stream::Inbox(n),
                },
                seq: number(field(b"s"))?,
                ts,
                offline: field(b"o").and_then(text) == Some(b"1"),
                payload: bytes::Bytes::copy_from_slice(text(field(b"d")?)?),
            }
        }
        b"j" | b"l" => FeedEvent::Member {
            joined: kind == b"j",
            room: name(b"n")?,
            user: name(b"u")?,
        },
        b"o" | b"v" => FeedEvent::Room {
            occupied: kind == b"o",
            room: name(b"n")?,
        },
        b"c" | b"x" => FeedEvent::Conn {
            connected: kind == b"c",
            user: name(b"u")?,
            conn: ConnId::from_raw(number(field(b"c"))?),
        },
        _ => return None,
    };
    Some(event.record_at(cursor, ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry_of(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn entries_read_back_as_the_embedded_feeds_records() {
        let data = r#"{"type":"message","to":"bob","seq":3}"#;
        let got = parse(Value::Array(vec![
            entry_of(
                "7-0",
                &[
                    "t", "99", "e", "d", "n", "bob", "s", "3", "o", "1", "d", data,
                ],
            ),
            entry_of("8-0", &["t", "100", "e", "x", "u", "amy", "c", "42"]),
        ]))
        .unwrap();
        let dm = FeedEvent::Stream {
            stream: Stream::Inbox(Name::new("bob").unwrap()),
            seq: 3,
            ts: 99,
            offline: true,
            payload: bytes::Bytes::from_static(data.as_bytes()),
        };
        assert_eq!(got[0].payload, dm.record(7).payload, "the same bytes");
        assert_eq!((got[1].cursor, got[1].ts), (8, 100));
        let v: serde_json::Value = serde_json::from_slice(&got[1].payload).unwrap();
        assert_eq!(
            (v["event"].as_str(), v["conn"].as_u64()),
            (Some("disconnected"), Some(42))
        );
        assert!(parse(Value::Array(vec![entry_of("9-0", &["t", "1", "e", "?"])])).is_err());
        assert!(parse(Value::Array(vec![entry_of("9-0", &["e", "v", "n", "r"])])).is_err());
        assert!(parse(Value::Nil).is_err());
    }
}
