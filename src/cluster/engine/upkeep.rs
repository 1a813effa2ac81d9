//! Upkeep: this node's lease and heartbeat, which nodes are live, the purge of a dead node's
//! presence entries (with `left` events), the periodic count of count rooms, and the figures
//! behind the cluster's totals.
//!
//! A node's presence entries and sessions are scored by its lease, not by an expiry: a lease
//! is live while its node's figures in the `nodes` hash are fresher than `presence_ttl_secs`,
//! so keeping a node's entries alive costs one `HSET` a second whatever its connections.
//! Scripts cannot read the `nodes` hash on a Redis Cluster (another slot), so each node passes
//! them the dead leases it last read (`Live::dead`).

use std::fmt::Write;

use super::*;

/// Scores from here up are entries written by versions that scored them by expiry (ms since
/// 1970); leases, one per node start, stay far below.
const LEGACY: u64 = 1_000_000_000_000;

/// Which leases are live, as this node last read the `nodes` hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Live {
    /// The lease counter: every lease up to it was handed out and written with its node's
    /// figures in one step, so a lease above it is a node this reading has not seen yet (live).
    max: u64,
    /// The leases whose node's figures are fresh, ascending.
    leases: Vec<u64>,
    /// The scripts' `dead` argument.
    dead: String,
}

impl Live {
    /// From the `nodes` hash: a node's lease is live if its figures were written at `fresh`
    /// (ms) or later. This node's own lease is live whatever the hash says.
    pub(super) fn read(all: &[(String, String)], fresh: u64, own: u64) -> Live {
        let (mut max, mut leases) = (own, vec![own]);
        for (field, value) in all {
            if field == "lease" {
                max = max.max(value.parse().unwrap_or(0));
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(value) else {
                continue;
            };
            if let Some(lease) = v["lease"].as_u64() {
                max = max.max(lease);
                if v["ts"].as_u64().unwrap_or(0) >= fresh {
                    leases.push(lease);
                }
            }
        }
        Live::of(max, leases)
    }

    /// The leases up to `max` that are not in `leases` are dead.
    fn of(max: u64, mut leases: Vec<u64>) -> Live {
        leases.sort_unstable();
        leases.dedup();
        // The gaps between live leases up to the counter (leases start at 1; an empty gap is
        // left out, so live leases in a row cost the scripts no range), and entries scored by
        // expiry.
        let mut dead = String::new();
        let mut last = 0;
        for &l in &leases {
            if l > last + 1 {
                let from = if last == 0 {
                    "-inf".to_owned()
                } else {
                    format!("({last}")
                };
                let _ = write!(dead, "{from} ({l} ");
            }
            last = l;
        }
        if max > last {
            let _ = write!(dead, "({last} {max} ");
        }
        let _ = write!(dead, "{LEGACY} +inf");
        Live { max, leases, dead }
    }

    pub(super) fn alive(&self, lease: u64) -> bool {
        lease < LEGACY && (lease > self.max || self.leases.binary_search(&lease).is_ok())
    }

    /// The `dead` argument of the scripts: "MIN MAX ..." score ranges of dead nodes' entries.
    pub(super) fn dead(&self) -> String {
        self.dead.clone()
    }

    /// As the sweep records what it swept against: "MAX LEASE LEASE ...".
    pub(super) fn record(&self) -> String {
        let mut out = self.max.to_string();
        for l in &self.leases {
            let _ = write!(out, " {l}");
        }
        out
    }

    /// A `record` read back; none recorded (or unreadable): before any lease.
    pub(super) fn from_record(record: Option<&str>) -> Live {
        let mut words = record.unwrap_or("").split(' ').map(str::parse::<u64>);
        match (words.next(), words.collect::<Result<Vec<u64>, _>>()) {
            (Some(Ok(max)), Ok(leases)) => Live::of(max, leases),
            _ => Live::of(0, Vec::new()),
        }
    }

    /// Whether a lease live in `self`, or handed out since, is dead in `now`: a node died.
    pub(super) fn lost_in(&self, now: &Live) -> bool {
        let new = now.max.saturating_sub(self.max);
        let new_live = (now.leases.iter()).filter(|l| **l > self.max).count() as u64;
        self.leases.iter().any(|l| !now.alive(*l)) || new_live < new
    }
}

/// This node's figures in the `nodes` hash up to its lease: `{..,"lease":`.
pub(super) fn figures(ts: u64, connections: usize, rooms: usize) -> String {
    format!(r#"{{"ts":{ts},"connections":{connections},"rooms":{rooms},"lease":"#)
}

/// Takes a new lease (above `seen`) and writes it with this node's figures (no connections yet).
pub(super) async fn take_lease(
    cmds: &mut Cmds,
    script: &Script,
    keys: &Keys,
    node: NodeId,
    prefix: &str,
    seen: u64,
) -> RedisResult<u64> {
    let mut inv = script.prepare_invoke();
    inv.key(keys.nodes()).arg(node).arg(prefix).arg(seen);
    cmds.run(&inv).await
}

/// Which leases are live now.
pub(super) async fn read_live(
    cmds: &mut Cmds,
    keys: &Keys,
    ttl_secs: u64,
    own: u64,
) -> RedisResult<Live> {
    let all: Vec<(String, String)> = cmds.query(redis::cmd("HGETALL").arg(keys.nodes())).await?;
    let fresh = now_ms().saturating_sub(ttl_secs * 1000);
    Ok(Live::read(&all, fresh, own))
}

impl Node {
    /// Every second: this node's heartbeat (its figures, which keep its lease live) and which
    /// leases are live; a dead node's entries are purged from this node's list rooms then, so
    /// its users are `left` within `presence_ttl_secs` and a second. Every third of the TTL:
    /// this node's count of each count room.
    pub(super) async fn refresher(self: Rc<Self>) {
        let every = Duration::from_millis(self.config.presence_ttl_secs * 1000 / 3);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_count = Instant::now();
        loop {
            tick.tick().await;
            self.beat().await;
            if last_count.elapsed() >= every {
                last_count = Instant::now();
                self.count_rooms();
            }
        }
    }

    async fn beat(self: &Rc<Self>) {
        let ttl = self.config.presence_ttl_secs * 1000;
        let ts = now_ms();
        let (connections, rooms) = {
            let st = self.state.borrow();
            let conns: usize = st.users.values().map(|u| u.sessions.len()).sum();
            (conns, st.rooms.len())
        };
        let prefix = figures(ts, connections, rooms);
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.nodes())
            .arg(self.node)
            .arg(format!("{prefix}{}}}", self.lease.get()));
        let Some(added) = self.query::<u64>(cmd).await else {
            return;
        };
        // Silent for a TTL, or its figures lost with Redis's data: others may have purged this
        // node's entries, and may still purge what it writes under that lease. A new one.
        if added == 1 || now_ms().saturating_sub(self.beat_ts.get()) >= ttl {
            self.renew.set(true);
        }
        self.beat_ts.set(ts);
        if self.renew.get() {
            let Some(mut c) = self.cmds.borrow().clone() else {
                return;
            };
            let seen = self.live.borrow().max;
            let r = take_lease(
                &mut c,
                &self.scripts.lease,
                &self.keys,
                self.node,
                &prefix,
                seen,
            );
            let Ok(lease) = self.outcome(r.await) else {
                return;
            };
            tracing::warn!(lease, "this node's lease may have lapsed: a new one");
            self.lease.set(lease);
            self.renew.set(false);
            self.rewrite.set(true);
        }
        let Some(mut c) = self.cmds.borrow().clone() else {
            return;
        };
        let r = read_live(
            &mut c,
            &self.keys,
            self.config.presence_ttl_secs,
            self.lease.get(),
        );
        let Ok(live) = self.outcome(r.await) else {
            return;
        };
        let lost = self.live.borrow().lost_in(&live);
        *self.live.borrow_mut() = live;
        self.sweep_if_due();
        if self.rewrite.take() {
            self.write_entries(true);
        } else if lost {
            self.write_entries(false);
        }
    }

    /// Purges dead nodes' entries from this node's list rooms; with `mine`, after writing this
    /// node's entries and sessions under its lease first (after a new lease, or a failure).
    /// A script that fails brings the whole rewrite back at the next beat.
    pub(super) fn write_entries(self: &Rc<Self>, mine: bool) {
        let lease = self.lease.get().to_string();
        let dead = self.live.borrow().dead();
        let st = self.state.borrow();
        for (room, r) in &st.rooms {
            let rule = self.config.rule(room);
            if rule.presence != PresenceMode::List {
                continue;
            }
            let (pz, pu) = self.keys.presence(room);
            let mut args = vec![
                lease.clone(),
                dead.clone(),
                self.keys.channel(&Stream::Room(room.clone())),
                self.publish_cmd().to_owned(),
                room.to_string(),
                self.list(&rule),
            ];
            if mine {
                args.extend((r.members.iter()).map(|(conn, (user, _))| {
                    let info = r.info.get(user).map(|i| String::from_utf8_lossy(i));
                    match info {
                        Some(info) => format!("{user} {}\t{info}", conn.raw()),
                        None => format!("{user} {}", conn.raw()),
                    }
                }));
            }
            self.run_later(|s| &s.refresh, self.with_feed_keys(vec![pz, pu]), args);
        }
        if !mine {
            return;
        }
        for (user, u) in &st.users {
            let (conns, online) = self.keys.sessions(user);
            let mut args = vec![
                lease.clone(),
                user.to_string(),
                u.sessions.len().to_string(),
            ];
            args.extend(
                u.sessions
                    .iter()
                    .chain(u.online.iter())
                    .map(|c| c.raw().to_string()),
            );
            self.run_later(
                |s| &s.sessions,
                self.with_feed_keys(vec![conns, online]),
                args,
            );
        }
    }

    /// One count per node and count room, whatever its members.
    fn count_rooms(self: &Rc<Self>) {
        let st = self.state.borrow();
        for room in st.rooms.keys() {
            if self.config.rule(room).presence == PresenceMode::List {
                continue;
            }
            let (me, room) = (self.clone(), room.clone());
            self.spawn(async move {
                me.occupancy(&room).await;
            });
        }
    }

    /// Runs an upkeep script in the background, on owned keys and arguments; if it fails,
    /// this node's entries are written again at the next beat.
    pub(super) fn run_later(
        self: &Rc<Self>,
        which: fn(&Scripts) -> &Script,
        keys: Vec<String>,
        args: Vec<String>,
    ) {
        let me = self.clone();
        self.spawn(async move {
            let mut inv = which(&me.scripts).prepare_invoke();
            for k in keys {
                inv.key(k);
            }
            for a in args {
                inv.arg(a);
            }
            if me.script::<i64>(&inv).await.is_none() {
                me.rewrite.set(true);
            }
        });
    }

    /// The live nodes' latest figures, summed (a node silent for a presence TTL is gone).
    pub(super) async fn totals(self: &Rc<Self>) -> Option<serde_json::Value> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.nodes());
        let all: Vec<(String, String)> = self.query(cmd).await?;
        let fresh = now_ms().saturating_sub(self.config.presence_ttl_secs * 1000);
        let (mut nodes, mut connections) = (Vec::new(), 0);
        for (node, figures) in all {
            let (Ok(node), Ok(v)) = (
                node.parse::<u64>(),
                serde_json::from_str::<serde_json::Value>(&figures),
            ) else {
                continue;
            };
            if v["ts"].as_u64().unwrap_or(0) < fresh {
                continue;
            }
            nodes.push(node);
            connections += v["connections"].as_u64().unwrap_or(0);
        }
        nodes.sort_unstable();
        Some(serde_json::json!({
            "node": self.node,
            "nodes": nodes.len(),
            "node_ids": nodes,
            "connections": connections,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        (entries.iter())
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn leases_between_live_ones_and_up_to_the_counter_are_dead() {
        let all = nodes(&[
            ("lease", "9"),
            ("0", r#"{"ts":100,"connections":1,"rooms":1,"lease":4}"#),
            ("1", r#"{"ts":50,"connections":1,"rooms":1,"lease":7}"#),
            ("2", r#"{"ts":100,"connections":1,"rooms":1,"lease":8}"#),
            ("3", r#"{"ts":100}"#),
            ("junk", "not json"),
        ]);
        let live = Live::read(&all, 90, 8);
        assert_eq!((live.max, &live.leases[..]), (9, &[4, 8][..]));
        assert_eq!(live.dead(), "-inf (4 (4 (8 (8 9 1000000000000 +inf");
        // Live leases in a row up to the counter: no gap to scan.
        let all = nodes(&[("lease", "2"), ("0", r#"{"ts":100,"lease":2}"#)]);
        assert_eq!(Live::read(&all, 90, 1).dead(), "1000000000000 +inf");
        let alive: Vec<u64> = (1..=11).filter(|l| live.alive(*l)).collect();
        assert_eq!(alive, [4, 8, 10, 11]);
        assert!(!live.alive(LEGACY + 5), "an entry scored by expiry is dead");
        // This node's own lease is live before its figures are read back.
        assert_eq!(Live::read(&[], 90, 3).dead(), "-inf (3 1000000000000 +inf");
    }

    #[test]
    fn a_lease_that_goes_dead_is_a_loss_and_a_new_live_one_is_not() {
        let read = |entries: &[(&str, &str)]| Live::read(&nodes(entries), 90, 1);
        let before = read(&[("lease", "2"), ("0", r#"{"ts":100,"lease":2}"#)]);
        let joined = read(&[
            ("lease", "3"),
            ("0", r#"{"ts":100,"lease":2}"#),
            ("1", r#"{"ts":100,"lease":3}"#),
        ]);
        assert!(!before.lost_in(&joined));
        let stale = read(&[
            ("lease", "3"),
            ("0", r#"{"ts":50,"lease":2}"#),
            ("1", r#"{"ts":100,"lease":3}"#),
        ]);
        assert!(joined.lost_in(&stale));
        // A lease handed out and dead between two readings.
        let restarted = read(&[
            ("lease", "4"),
            ("0", r#"{"ts":100,"lease":2}"#),
            ("1", r#"{"ts":100,"lease":4}"#),
        ]);
        assert!(before.lost_in(&restarted));
        assert!(!restarted.lost_in(&restarted));
    }

    #[test]
    fn a_sweeps_record_reads_back_as_the_leases_it_swept_against() {
        let live = Live::read(
            &nodes(&[("lease", "9"), ("0", r#"{"ts":100,"lease":4}"#)]),
            90,
            8,
        );
        assert_eq!(live.record(), "9 4 8");
        assert_eq!(Live::from_record(Some(&live.record())), live);
        // Nothing swept yet: every dead lease is a loss, none while every lease lives.
        let none = Live::from_record(None);
        assert!(none.lost_in(&live));
        assert_eq!(Live::from_record(Some("junk")), none);
        let all = Live::read(
            &nodes(&[("lease", "2"), ("0", r#"{"ts":100,"lease":2}"#)]),
            90,
            1,
        );
        assert!(!none.lost_in(&all));
    }
}
