//! The sweep after a node died: every session of a dead node gets its `disconnected` event
//! (docs/hooks.md) within `presence_ttl_secs` and the sweep's time, not only when its user
//! next connects. Owns the sweep's lease and record; the per-user purge is `lua/reap.lua`,
//! the same purge as a connect's (`purge_sessions` in `lua/common.lua`), so a session is told
//! once whichever comes first, and a second sweep over the same users writes nothing.
//!
//! Cost: nothing while no lease dies (each node compares its reading of the live leases with
//! the record it last read). After a death, one node (the holder of `{sweep}:lease`) `SCAN`s
//! each master for the users' sessions keys, `SCAN_COUNT` keys looked at per step, reads each
//! key found (`IN_FLIGHT` at a time) and runs `reap.lua` on those with a dead session; then it
//! records the leases it swept against. A sweeper that dies leaves the record as it was:
//! another node takes the lease once it lapses and sweeps again from the start. Measured
//! figures: docs/cluster.md, "After a node dies".

use super::*;

/// Keys looked at per `SCAN` step.
const SCAN_COUNT: usize = 1000;
/// Users read (and `reap.lua` calls) out at once.
const IN_FLIGHT: usize = 64;

impl Node {
    /// At each beat, with the feed on: a sweep if a lease died since the last one this node
    /// knows of (none while no node died: no Redis command).
    pub(super) fn sweep_if_due(self: &Rc<Self>) {
        if !self.config.feed_on() {
            return;
        }
        let due = match &*self.swept.borrow() {
            Some(swept) => swept.lost_in(&self.live.borrow()),
            None => true,
        };
        if due && !self.sweeping.replace(true) {
            let me = self.clone();
            self.spawn(async move {
                if let Err(f) = me.sweep().await {
                    // Again from the start, not at once: a sweep may have cost much already.
                    let ttl = me.config.presence_ttl_secs;
                    tracing::warn!(
                        ?f,
                        "the sweep of dead nodes' sessions failed; again in {ttl} s"
                    );
                    tokio::time::sleep(Duration::from_secs(ttl)).await;
                }
                me.sweeping.set(false);
            });
        }
    }

    /// Reads the record; if a lease died since, and this node takes the sweep's lease, purges
    /// every user's sessions of the dead leases, then records the leases it swept against.
    async fn sweep(self: &Rc<Self>) -> Result<(), Failure> {
        let live = self.live.borrow().clone();
        let (lease, done) = self.keys.sweep();
        let mut cmds = self.cmds.borrow().clone().ok_or(Failure::Down)?;
        let r = cmds
            .query::<Option<String>>(redis::cmd("GET").arg(&done))
            .await;
        let swept = Live::from_record(self.outcome(r)?.as_deref());
        let due = swept.lost_in(&live);
        *self.swept.borrow_mut() = Some(swept);
        if !due || !self.hold(&lease).await? {
            return Ok(());
        }
        tracing::info!(dead = %live.dead(), "a node died: sweeping its sessions");
        let shared = Rc::new(live.clone());
        let pattern = self.keys.sessions_pattern();
        let (mut users, mut reaped, mut told) = (0, 0, 0);
        let r = cmds.masters().await;
        for at in self.outcome(r)? {
            let mut cursor = 0;
            loop {
                let r = cmds.scan(at, cursor, &pattern, SCAN_COUNT).await;
                let (next, keys) = self.outcome(r)?;
                for chunk in keys.chunks(IN_FLIGHT) {
                    // Spawned together, so the multiplexer pipelines them.
                    let calls: Vec<_> = (chunk.iter())
                        .map(|k| {
                            tokio::task::spawn_local(self.clone().reap(k.clone(), shared.clone()))
                        })
                        .collect();
                    for call in calls {
                        if let Some(n) = call.await.map_err(|_| Failure::Down)?? {
                            (reaped, told) = (reaped + 1, told + n);
                        }
                    }
                    users += chunk.len();
                }
                if !self.hold(&lease).await? {
                    return Ok(());
                }
                match next {
                    0 => break,
                    n => cursor = n,
                }
            }
        }
        let mut inv = self.scripts.sweep_done.prepare_invoke();
        inv.key(lease)
            .key(done)
            .arg(&self.holder)
            .arg(live.record());
        self.script_or::<i64>(&inv).await?;
        tracing::info!(
            users,
            reaped,
            disconnected = told,
            "dead nodes' sessions swept"
        );
        *self.swept.borrow_mut() = Some(live);
        Ok(())
    }

    /// Takes or renews the sweep's lease (it lapses after `presence_ttl_secs`).
    async fn hold(self: &Rc<Self>, lease: &str) -> Result<bool, Failure> {
        let mut inv = self.scripts.hold.prepare_invoke();
        inv.key(lease)
            .arg(&self.holder)
            .arg(self.config.presence_ttl_secs * 1000);
        Ok(self.script_or::<i64>(&inv).await? == 1)
    }

    /// One user's sessions read (`ZRANGE`, a few entries) and, if any is of a dead lease,
    /// purged (`lua/reap.lua`): how many were told (`None`: none was dead). The read spares
    /// the users with no dead session, most of them, the script (about 1 µs of Redis CPU
    /// against 16 µs).
    async fn reap(self: Rc<Self>, conns: String, live: Rc<Live>) -> Result<Option<u64>, Failure> {
        let Some(user) = self.keys.user_of_sessions(&conns) else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(&conns).arg(0).arg(-1).arg("WITHSCORES");
        let mut c = self.cmds.borrow().clone().ok_or(Failure::Down)?;
        let r = c.query::<Vec<(String, f64)>>(&cmd).await;
        if (self.outcome(r)?.iter()).all(|(_, score)| live.alive(*score as u64)) {
            return Ok(None);
        }
        let (_, online) = self.keys.sessions(&user);
        let mut inv = self.scripts.reap.prepare_invoke();
        self.feed_keys(inv.key(&conns).key(online), &conns);
        inv.arg(live.dead()).arg(user.as_str());
        self.script_or(&inv).await.map(Some)
    }
}
