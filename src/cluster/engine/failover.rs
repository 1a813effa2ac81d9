//! Failover: a Redis Cluster master that fails, and a stream whose seq goes back. Owns the
//! readiness probe, the read-back of every stream after a Cluster node dropped the
//! subscription, and the rollback: a stream's seq in Redis below what this node delivered
//! starts a new epoch. It must not touch connections or hub state (a new epoch reaches them as
//! `NodeMsg::Lost`).
//!
//! - **Per master.** On a Redis Cluster the client library keeps one connection per node and
//!   reconnects each by itself, so a failing master fails the requests for its own slots only
//!   (`unavailable`, at once or within `redis_timeout_ms`); the rest go on. `/readyz` is 503 only
//!   while no master answers a PING (probed every second), so it does not flap while one
//!   master fails over.
//! - **Filling.** A Cluster node's drop (the library's `Disconnection` push) or a failing command
//!   makes the node read every stream's tail every second until 5 s after the last failure: the
//!   library resubscribes the slots at their new master by itself, and what was published
//!   before it did is handed on from the log (the hubs drop repeats).
//! - **Rollback.** A promoted replica that lacked the last writes hands their seqs out again.
//!   A node sees it as a stream's message over pub/sub at or below the last one it heard in
//!   that epoch (pub/sub delivers one master's messages in seq order), a tail read below what
//!   it knew, or a join's seq below it. It then starts a new epoch (`lua/rollback.lua`, once
//!   whichever node sees it first) and closes the stream's receivers with 1011, who rejoin
//!   with `since` and get `recovered: false` and the new epoch's messages. Frames of the old
//!   epoch still on their way are dropped.

use super::*;

/// How long after the last failure the streams are read back every second.
const FILL_FOR: Duration = Duration::from_secs(5);

/// A stream's seqs as this node heard them, for telling a rollback.
#[derive(Default)]
pub(super) struct Track {
    /// The newest seq heard over pub/sub in the current epoch (0: none).
    pub(super) heard: u64,
    /// The epoch this node left for a new one: its frames still on the way are dropped.
    pub(super) prev: u64,
}

impl Node {
    /// Every second, on a Redis Cluster: whether any master answers (`/readyz`).
    pub(super) async fn prober(self: Rc<Self>) {
        let mut tick = tokio::time::interval(BEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up = true;
        loop {
            tick.tick().await;
            let Some(mut c) = self.cmds.borrow().clone() else {
                continue;
            };
            let now = c.probe().await.is_ok();
            if now != up {
                up = now;
                self.health.redis_reachable(up);
                if up {
                    tracing::info!("the Redis Cluster answers again");
                } else {
                    tracing::error!("no Redis Cluster master answers");
                }
            }
        }
    }

    /// At start, on a Redis Cluster: warns when every master refuses every command while one
    /// slot range has no master (`cluster-require-full-coverage yes`, Redis's default), which
    /// fails every room during any failover. Managed Redis may refuse `CONFIG`: then nothing.
    pub(super) async fn check_coverage(self: Rc<Self>) {
        let Some(mut c) = self.cmds.borrow().clone() else {
            return;
        };
        if let Ok(Some(v)) = c.setting("cluster-require-full-coverage").await
            && v == "yes"
        {
            tracing::warn!(
                "the Redis Cluster has cluster-require-full-coverage yes: while one master \
                 fails over, every master refuses every command (CLUSTERDOWN), so every room \
                 fails, not only that master's; set it to no (docs/cluster.md, Failover)"
            );
        }
    }

    /// A Cluster command failed or a node dropped the subscription: the streams are read back
    /// every second until `FILL_FOR` after now.
    pub(super) fn fill_soon(&self) {
        self.fill_until.set(Some(Instant::now() + FILL_FOR));
    }

    /// At the subscription's tick: one read-back of every stream, while one is due.
    pub(super) fn fill_due(self: &Rc<Self>) {
        match self.fill_until.get() {
            Some(until) if Instant::now() < until => self.fill_all(false),
            Some(_) => self.fill_until.set(None),
            None => {}
        }
    }

    /// Whether a pub/sub message of the stream's current epoch (`epoch`, as known) at `seq`
    /// shows a rollback; records it as heard. `None`: a frame of an epoch left behind, dropped.
    pub(super) fn rollback_seen(
        track: &mut Track,
        known: u64,
        epoch: u64,
        seq: u64,
    ) -> Option<bool> {
        if track.prev != 0 && epoch == track.prev {
            return None;
        }
        if epoch != known {
            // A new epoch (the caller closes the receivers): counting starts again.
            track.heard = seq;
            return Some(false);
        }
        let back = seq <= track.heard;
        track.heard = track.heard.max(seq);
        Some(back)
    }

    /// The stream's seq went back in Redis: a new epoch at once here (its receivers closed),
    /// then in Redis. Another node may have started one already: that one is kept.
    pub(super) fn rolled_back(self: &Rc<Self>, stream: &Stream) {
        let fresh = Self::new_epoch();
        let (old, shards) = {
            let mut st = self.state.borrow_mut();
            let Some((epoch, last, track, shards)) = tracked(&mut st, stream) else {
                return;
            };
            if *epoch == 0 {
                return;
            }
            let old = *epoch;
            (*epoch, *last) = (fresh, None);
            *track = Track {
                heard: 0,
                prev: old,
            };
            (old, shards.to_vec())
        };
        self.counters.rollbacks.fetch_add(1, Relaxed);
        tracing::error!(
            ?stream,
            "a stream's seq went back in Redis (a failover lost acked writes): new epoch"
        );
        self.lost(&shards, stream);
        let me = self.clone();
        let stream = stream.clone();
        self.spawn(async move {
            let now = me.new_epoch_in_redis(&stream, old, fresh).await;
            let mut st = me.state.borrow_mut();
            if let (Some(now), Some((epoch, ..))) = (now, tracked(&mut st, &stream))
                && *epoch == fresh
            {
                *epoch = now;
            }
        });
    }

    /// Runs the rollback script until it answers (or the stream has no receivers here): the
    /// stream's epoch now.
    pub(super) async fn new_epoch_in_redis(
        self: &Rc<Self>,
        stream: &Stream,
        old: u64,
        fresh: u64,
    ) -> Option<u64> {
        let mut wait = Duration::from_millis(100);
        loop {
            let mut inv = self.scripts.rollback.prepare_invoke();
            inv.key(self.keys.meta(stream))
                .key(self.keys.idempotency(stream).0)
                .arg(old)
                .arg(fresh);
            if let Some(now) = self.script::<u64>(&inv).await {
                return Some(now);
            }
            if wait > BACKOFF_MAX {
                tracing::error!(?stream, "could not start a new epoch in Redis");
                return None;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }
}

/// A stream's epoch, last seq, track and receivers per shard, if this node has any.
pub(super) fn tracked<'a>(
    st: &'a mut State,
    stream: &Stream,
) -> Option<(&'a mut u64, &'a mut Option<u64>, &'a mut Track, &'a [u32])> {
    match stream {
        Stream::Room(r) => st
            .rooms
            .get_mut(r)
            .map(|r| (&mut r.epoch, &mut r.last, &mut r.track, &r.shards[..])),
        Stream::Inbox(u) => st
            .users
            .get_mut(u)
            .map(|u| (&mut u.epoch, &mut u.last, &mut u.track, &u.shards[..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_heard_again_in_the_same_epoch_is_a_rollback() {
        let mut t = Track::default();
        assert_eq!(Node::rollback_seen(&mut t, 7, 7, 1), Some(false));
        assert_eq!(Node::rollback_seen(&mut t, 7, 7, 2), Some(false));
        assert_eq!(
            Node::rollback_seen(&mut t, 7, 7, 2),
            Some(true),
            "seq 2 again"
        );
        assert_eq!(
            Node::rollback_seen(&mut t, 7, 9, 1),
            Some(false),
            "a new epoch starts over"
        );
        t.prev = 7;
        assert_eq!(
            Node::rollback_seen(&mut t, 9, 7, 3),
            None,
            "the old epoch's frames are dropped"
        );
    }
}
