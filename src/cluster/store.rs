//! History reads from Redis, behind the `Store` trait, so the store thread serves `join`
//! replays, gaps, `history` and `sync` in cluster mode with the same code (and limits) as on
//! one node. Writes never come here: the engine's scripts sequence and append. Owns the
//! blocking connection of the store thread; it must not write messages. The event feed's
//! reads, trimming, lease and mark go through it too (`feed`).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redis::Value;

use super::feed::{self, FeedKeys};
use super::keys::Keys;
use super::link::{SyncConn, Target};
use super::parts;
use crate::config::Config;
use crate::core::Stream;
use crate::core::event::Folded;
use crate::store::{Append, FeedRecord, FeedState, Store, StoreError, StoredMessage, StreamInfo};

pub struct RedisStore {
    target: Target,
    keys: Keys,
    /// Each stream's retention: reads hide what the publish script has not trimmed yet.
    config: Arc<Config>,
    feed: FeedKeys,
    /// Reconnected on the next read after a failure.
    conn: Mutex<Option<SyncConn>>,
    /// On a Redis Cluster with the feed on: moves the partitions into the feed (`parts`);
    /// stops with the store.
    _collector: Option<parts::Collector>,
}

impl RedisStore {
    pub fn new(target: Target, keys: Keys, config: Arc<Config>) -> RedisStore {
        let feed = FeedKeys::new(keys.feed());
        let collector = match target.cluster && config.feed_on() {
            true => parts::start(
                target.clone(),
                keys.clone(),
                feed.clone(),
                config.presence_ttl_secs.saturating_mul(1000),
            ),
            false => None,
        };
        RedisStore {
            target,
            feed,
            keys,
            config,
            conn: Mutex::new(None),
            _collector: collector,
        }
    }

    /// One command on the store thread's connection (reconnected after a failure).
    fn query(&self, c: &redis::Cmd) -> Result<Value, StoreError> {
        let read = |e: redis::RedisError| StoreError::Read(format!("redis: {e}"));
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if !guard.as_ref().is_some_and(SyncConn::is_open) {
            *guard = Some(self.target.blocking().map_err(read)?);
        }
        let conn = guard.as_mut().expect("connected above");
        conn.query(c).inspect_err(|_| *guard = None).map_err(read)
    }

    /// XRANGE or XREVRANGE over the stream's log between seqs `lo` and `hi` (or `-`, `+`),
    /// parsed; never an entry past the stream's `history_messages` (`lua/range.lua`).
    fn range(
        &self,
        cmd: &str,
        stream: &Stream,
        lo: String,
        hi: String,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let mut c = redis::cmd("EVAL");
        c.arg(RANGE)
            .arg(1)
            .arg(self.keys.log(stream))
            .arg(cmd)
            .arg(lo)
            .arg(hi)
            .arg(limit)
            .arg(retention(&self.config, stream).0);
        parse_entries(self.query(&c)?)
            .ok_or_else(|| StoreError::Read("redis: unexpected stream entry".into()))
    }
}

/// The read script: sent whole with `EVAL` (Redis caches it by its hash), so the store
/// thread's connection needs no script loaded.
const RANGE: &str = include_str!("lua/range.lua");

/// A stream's retention: (most messages, seconds), 0 for no limit.
pub(super) fn retention(config: &Config, stream: &Stream) -> (u64, u64) {
    match stream {
        Stream::Room(room) => {
            let rule = config.rule(room);
            (rule.history_messages, rule.history_secs)
        }
        Stream::Inbox(_) => (config.inbox_retention_messages, config.inbox_retention_secs),
    }
}

/// `[[id, [field, value, ...]], ...]` with ids `SEQ-0` and fields `t` (ts) and `d` (JSON).
fn parse_entries(value: Value) -> Option<Vec<StoredMessage>> {
    let Value::Array(entries) = value else {
        return None;
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(parts) = e else { return None };
        let [id, Value::Array(fields)] = &parts[..] else {
            return None;
        };
        let id = String::from_utf8(text(id)?).ok()?;
        let seq = id.split('-').next()?.parse().ok()?;
        let (mut ts, mut payload) = (0, None);
        for pair in fields.chunks(2) {
            match (text(&pair[0])?.as_slice(), pair.get(1)) {
                (b"t", Some(v)) => ts = String::from_utf8(text(v)?).ok()?.parse().ok()?,
                (b"d", Some(v)) => payload = Some(Bytes::from(text(v)?)),
                _ => {}
            }
        }
        out.push(StoredMessage {
            seq,
            ts,
            payload: payload?,
        });
    }
    Some(out)
}

impl Store for RedisStore {
    fn write_with_feed(
        &self,
        appends: &[Append],
        _: &[(Stream, u64)],
        feed: &[FeedRecord],
        _: bool,
    ) -> Result<(), StoreError> {
        if !feed.is_empty() {
            return Err(StoreError::Write("this store keeps no event feed".into()));
        }
        match appends.is_empty() {
            true => Ok(()),
            false => Err(StoreError::Write(
                "the redis engine appends in its scripts".into(),
            )),
        }
    }

    fn feed_state(&self) -> Result<FeedState, StoreError> {
        let (meta, first) = self.feed.state_cmds();
        feed::state(self.query(&meta)?, self.query(&first)?)
    }

    fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<FeedRecord>, StoreError> {
        feed::parse(self.query(&self.feed.after_cmd(after, limit))?)
    }

    fn feed_trim(&self, keep_from: u64, min_ts: u64) -> Result<usize, StoreError> {
        self.feed.trim(keep_from, min_ts, &|c| self.query(c))
    }

    fn set_feed_mark(&self, mark: u64) -> Result<(), StoreError> {
        match feed::held(&self.query(&self.feed.mark_cmd(mark))?) {
            true => Ok(()),
            false => Err(StoreError::Write(
                "the event feed's lease passed to another node; it delivers from here".into(),
            )),
        }
    }

    fn feed_shared(&self) -> bool {
        true
    }

    fn feed_lease(&self, ttl_ms: u64) -> Result<bool, StoreError> {
        Ok(feed::held(&self.query(&self.feed.lease_cmd(ttl_ms))?))
    }

    /// Redis keeps each stream's seq; a node starts with none of them.
    fn streams(&self) -> Result<Vec<StreamInfo>, StoreError> {
        Ok(Vec::new())
    }

    fn after(
        &self,
        stream: &Stream,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let from = after.saturating_add(1).to_string();
        self.range("XRANGE", stream, from, "+".into(), limit)
    }

    fn before(
        &self,
        stream: &Stream,
        before: u64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if before <= 1 {
            return Ok(Vec::new());
        }
        let to = match before {
            u64::MAX => "+".to_owned(),
            b => (b - 1).to_string(),
        };
        self.range("XREVRANGE", stream, "-".into(), to, limit)
    }

    /// Retention is applied by the publish script.
    fn trim(&self, _: &Stream, _: u64, _: u64) -> Result<usize, StoreError> {
        Ok(0)
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// From the room's fold hash, written by `lua/event.lua`.
    fn folded(&self, stream: &Stream, seqs: &[u64]) -> Result<Vec<Option<Folded>>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut c = redis::cmd("HMGET");
        c.arg(self.keys.fold(stream));
        for seq in seqs {
            c.arg(seq);
        }
        let Value::Array(values) = self.query(&c)? else {
            return Err(StoreError::Read("redis: unexpected HMGET answer".into()));
        };
        let parse = |v: &Value| match v {
            Value::BulkString(b) => serde_json::from_slice(b)
                .map(Some)
                .map_err(|e| StoreError::Read(format!("corrupt folded state: {e}"))),
            _ => Ok(None),
        };
        values.iter().map(parse).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_parse_into_messages_and_junk_is_an_error() {
        let entry = |id: &str, ts: &str, d: &str| {
            Value::Array(vec![
                bulk(id),
                Value::Array(vec![bulk("t"), bulk(ts), bulk("d"), bulk(d)]),
            ])
        };
        let got = parse_entries(Value::Array(vec![
            entry("4-0", "99", "{}"),
            entry("5-0", "100", "[]"),
        ]))
        .unwrap();
        assert_eq!(
            got.iter().map(|m| (m.seq, m.ts)).collect::<Vec<_>>(),
            [(4, 99), (5, 100)]
        );
        assert_eq!(&got[1].payload[..], b"[]");
        assert!(parse_entries(Value::Array(vec![bulk("4-0")])).is_none());
        assert!(parse_entries(Value::Array(vec![entry("x-0", "1", "{}")])).is_none());
        assert!(parse_entries(Value::Nil).is_none());
    }
}
