//! The event feed on a Redis Cluster (docs/hooks.md, "The feed on a Redis Cluster"). A
//! script can touch only its own slot's keys, so it writes its event to the feed partition of
//! that slot (`Keys::feed_part`: a stream and meta hash of the feed's own layout, its hash tag
//! `fpN` found here to land in the slot). The collector, a thread on every node of which only
//! the holder of the feed's lease works, moves each partition's events into the feed
//! (`lua/feed_collect.lua`), which is then read, delivered, pulled and trimmed as on one
//! server. Owns the tag table and the collector; it must not hold room, user or connection
//! state, and never writes a partition but to trim what was moved.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::{Cmd, Value};

use super::feed::{FeedKeys, held};
use super::keys::Keys;
use super::link::{SyncConn, Target, slot};

const SLOTS: usize = 16384;
const COLLECT: &str = include_str!("lua/feed_collect.lua");
/// How often the partitions written lately are looked at while nothing moves.
const HOT_POLL: Duration = Duration::from_millis(50);
/// How often every partition is looked at (a quiet one's first event waits up to this long).
const SWEEP: Duration = Duration::from_secs(1);
/// A partition with no event for this long is looked at only by the sweep.
const HOT_FOR: Duration = Duration::from_secs(10);
/// How often a node without the lease tries to take it (as the webhook thread).
const LEASE_POLL: Duration = Duration::from_millis(250);
/// Most events of one partition moved per round.
const CHUNK: usize = 100;
/// Most partitions moved per script call.
const GROUP: usize = 16;

/// The hash tag number `N` of slot `s`'s partition (`{fpN}` hashes to `s`): the smallest.
/// Computed once, about 170,000 CRC16s of a few bytes.
pub fn tag(s: u16) -> u32 {
    static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = vec![u32::MAX; SLOTS];
        let (mut left, mut n) = (SLOTS, 0u32);
        while left > 0 {
            let t = &mut table[slot(format!("fp{n}").as_bytes()) as usize];
            if *t == u32::MAX {
                (*t, left) = (n, left - 1);
            }
            n += 1;
        }
        table
    });
    table[s as usize]
}

/// The running collector; dropping it stops the thread (at its next wait).
pub struct Collector {
    _stop: Sender<()>,
}

/// Starts the collector thread; `feed` is the store's (the same lease holder as the webhook
/// thread of this process, so one node both moves and delivers).
pub fn start(target: Target, keys: Keys, feed: FeedKeys, lease_ms: u64) -> Option<Collector> {
    let (stop, stopped) = crossbeam_channel::bounded(1);
    let mut c = Collect {
        target,
        keys,
        feed,
        lease_ms,
        conn: None,
        held: false,
        pos: HashMap::new(),
        hot: HashMap::new(),
        swept: None,
    };
    let spawned = std::thread::Builder::new()
        .name("feed-collector".into())
        .spawn(move || c.run(&stopped));
    match spawned {
        Ok(_) => Some(Collector { _stop: stop }),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the feed collector; no feed on this node");
            None
        }
    }
}

struct Collect {
    target: Target,
    keys: Keys,
    feed: FeedKeys,
    lease_ms: u64,
    conn: Option<SyncConn>,
    held: bool,
    /// Each partition's position (last partition cursor moved), as of the lease's gain.
    pos: HashMap<u16, u64>,
    /// Partitions with an event lately, and when.
    hot: HashMap<u16, Instant>,
    swept: Option<Instant>,
}

fn wait(stop: &Receiver<()>, d: Duration) -> bool {
    matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Disconnected))
}

impl Collect {
    fn run(&mut self, stop: &Receiver<()>) {
        loop {
            let pause = match self.round() {
                Ok(true) => Duration::ZERO,
                Ok(false) if self.held => HOT_POLL,
                Ok(false) => LEASE_POLL,
                Err(e) => {
                    tracing::warn!(error = %e, "the feed collector cannot reach Redis");
                    (self.conn, self.held) = (None, false);
                    LEASE_POLL
                }
            };
            if wait(stop, pause) {
                return;
            }
        }
    }

    fn conn(&mut self) -> redis::RedisResult<&mut SyncConn> {
        if !self.conn.as_ref().is_some_and(SyncConn::is_open) {
            self.conn = Some(self.target.blocking()?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    fn query(&mut self, c: &Cmd) -> redis::RedisResult<Value> {
        self.conn()?.query(c)
    }

    /// One round: the lease, then the partitions due, each moved on. Whether any event moved.
    fn round(&mut self) -> redis::RedisResult<bool> {
        let lease = self.feed.lease_cmd(self.lease_ms);
        if !held(&self.query(&lease)?) {
            self.held = false;
            return Ok(false);
        }
        if !self.held {
            self.pos = self.positions()?;
            (self.held, self.swept) = (true, None);
            tracing::info!(
                partitions = self.pos.len(),
                "this node collects the event feed's partitions"
            );
        }
        let now = Instant::now();
        let due: Vec<u16> = match self.swept.is_none_or(|t| now - t >= SWEEP) {
            true => {
                self.swept = Some(now);
                (0..SLOTS as u16).collect()
            }
            false => self.hot.keys().copied().collect(),
        };
        let lasts = self.lasts(&due)?;
        let mut changed = Vec::new();
        for (s, last) in due.into_iter().zip(lasts) {
            let at = self.pos.get(&s).copied().unwrap_or(0);
            // Unknown (a slot moving between masters): looked at again next round.
            if let Some(last) = last.filter(|&l| l != at) {
                self.hot.insert(s, now);
                changed.push((s, at, last));
            }
        }
        self.hot.retain(|_, t| now - *t < HOT_FOR);
        for group in changed.chunks(GROUP) {
            if !self.move_parts(group)? {
                self.held = false;
                return Ok(false);
            }
        }
        Ok(!changed.is_empty())
    }

    /// The positions kept in the feed's meta hash (fields `pSLOT`).
    fn positions(&mut self) -> redis::RedisResult<HashMap<u16, u64>> {
        let (_, meta, _) = self.keys.feed();
        let all: Vec<(String, String)> =
            redis::FromRedisValue::from_redis_value(self.query(redis::cmd("HGETALL").arg(meta))?)?;
        Ok(all
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix('p')?.parse().ok()?, v.parse().ok()?)))
            .collect())
    }

    /// Each partition's highest cursor written (0: none; `None`: its answer was an error).
    fn lasts(&mut self, slots: &[u16]) -> redis::RedisResult<Vec<Option<u64>>> {
        let cmds = (slots.iter())
            .map(|&s| {
                let mut c = redis::cmd("HGET");
                c.arg(self.keys.feed_part(s).1).arg("last");
                c
            })
            .collect();
        let answers = self.conn()?.pipeline(cmds)?;
        Ok(answers
            .into_iter()
            .map(|v| redis::FromRedisValue::from_redis_value(v).ok())
            .map(|v: Option<Option<u64>>| v.map(|l| l.unwrap_or(0)))
            .collect())
    }

    /// Moves the events of partitions `(slot, position, last)` written after their position
    /// into the feed (up to `CHUNK` each; the rest next round), in one script call, then trims
    /// what moved from the partitions. Reads and trims are pipelined. False when the lease was
    /// lost meanwhile.
    fn move_parts(&mut self, parts: &[(u16, u64, u64)]) -> redis::RedisResult<bool> {
        let ranges = (parts.iter())
            .map(|&(s, at, last)| {
                let mut range = redis::cmd("XRANGE");
                range
                    .arg(self.keys.feed_part(s).0)
                    .arg(format!("{}-0", at.min(last) + 1))
                    .arg("+")
                    .arg("COUNT")
                    .arg(CHUNK);
                range
            })
            .collect();
        let ranges = self.conn()?.pipeline(ranges)?;
        let (log, meta, lease) = self.keys.feed();
        let mut c = redis::cmd("EVAL");
        c.arg(COLLECT)
            .arg(3)
            .arg(&lease)
            .arg(&meta)
            .arg(&log)
            .arg(self.feed.holder());
        for (&(s, at, last), entries) in parts.iter().zip(ranges) {
            let Value::Array(entries) = entries else {
                return Err(corrupt("an unexpected range"));
            };
            let restart = match last < at {
                true => {
                    tracing::warn!(
                        slot = s,
                        at,
                        last,
                        "a feed partition went back (Redis lost writes); from its end"
                    );
                    last.to_string()
                }
                false => String::new(),
            };
            c.arg(format!("p{s}")).arg(restart).arg(entries.len());
            for e in &entries {
                let (cursor, fields) = entry(e).ok_or_else(|| corrupt("a malformed entry"))?;
                c.arg(cursor).arg(fields.len());
                for f in fields {
                    match f {
                        Value::BulkString(b) => c.arg(&b[..]),
                        Value::SimpleString(t) => c.arg(t),
                        _ => return Err(corrupt("a field that is not a string")),
                    };
                }
            }
        }
        let done: Vec<i64> = redis::FromRedisValue::from_redis_value(self.query(&c)?)?;
        let mut trims = Vec::new();
        for (&(s, _, _), now) in parts.iter().zip(done) {
            let Ok(now) = u64::try_from(now) else {
                return Ok(false);
            };
            self.pos.insert(s, now);
            if now > 0 {
                let mut trim = redis::cmd("XTRIM");
                trim.arg(self.keys.feed_part(s).0)
                    .arg("MINID")
                    .arg(format!("{}-0", now + 1));
                trims.push(trim);
            }
        }
        self.conn()?.pipeline(trims)?;
        Ok(true)
    }
}

fn corrupt(what: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "a feed partition holds",
        what.to_owned(),
    ))
}

/// `[id, [field, value, ...]]`: the partition cursor and the fields, as written.
fn entry(e: &Value) -> Option<(u64, &[Value])> {
    let Value::Array(parts) = e else { return None };
    let [id, Value::Array(fields)] = &parts[..] else {
        return None;
    };
    let id = match id {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?,
        Value::SimpleString(s) => s.as_str(),
        _ => return None,
    };
    Some((id.split('-').next()?.parse().ok()?, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for s in 0..SLOTS as u16 {
            assert_eq!(slot(format!("fp{}", tag(s)).as_bytes()), s);
        }
        let keys = Keys::new("sc");
        let (log, meta) = keys.feed_part(slot(b"r:lobby"));
        assert_eq!(slot(log.as_bytes()), slot(b"sc:{r:lobby}:meta"));
        assert_eq!(slot(meta.as_bytes()), slot(b"r:lobby"));
    }
}
