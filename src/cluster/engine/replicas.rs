//! `redis_wait_replicas`: a message is acked only once that many replicas of its master have
//! it. Owns the rounds of `WAIT`; it must not touch the messages (`messages`).
//!
//! `WAIT` blocks the connection it is sent on until the replicas confirm (or its timeout), and
//! covers every write sent on that connection before it. So the node sends one `WAIT` per
//! Redis Cluster slot (one, on one server) per round, for every message whose script answered
//! before the round began; those that answer during a round wait for the next one. Cost per
//! message: a wait for the next round and the replicas' lag; per round, one `WAIT` per slot.

use super::messages::unreplicated;
use super::*;

/// The messages waiting for the next round: each one's meta key (its slot) and its answer.
#[derive(Default)]
pub(super) struct Waits {
    running: bool,
    pending: Vec<(String, oneshot::Sender<u64>)>,
}

impl Node {
    /// Waits (at most `redis_timeout_ms`) until `redis_wait_replicas` replicas of the master of
    /// `meta` have what this node wrote there.
    pub(super) async fn replicated(self: &Rc<Self>, meta: &str) -> Result<(), ReplyError> {
        let want = self.config.redis_wait_replicas;
        if want == 0 {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut w = self.waits.borrow_mut();
            w.pending.push((meta.to_owned(), tx));
            !std::mem::replace(&mut w.running, true)
        };
        if start {
            let me = self.clone();
            self.spawn(async move { me.wait_rounds().await });
        }
        match rx.await.unwrap_or(0) {
            n if n >= u64::from(want) => Ok(()),
            n => Err(unreplicated(n, want)),
        }
    }

    /// Rounds of `WAIT` until no message waits.
    async fn wait_rounds(self: Rc<Self>) {
        loop {
            let batch = std::mem::take(&mut self.waits.borrow_mut().pending);
            if batch.is_empty() {
                self.waits.borrow_mut().running = false;
                return;
            }
            let mut slots: AHashMap<u16, (String, Vec<oneshot::Sender<u64>>)> = AHashMap::new();
            for (meta, tx) in batch {
                let slot = if self.target.cluster {
                    slot(meta.as_bytes())
                } else {
                    0
                };
                slots
                    .entry(slot)
                    .or_insert_with(|| (meta, Vec::new()))
                    .1
                    .push(tx);
            }
            let rounds: Vec<_> = (slots.into_values())
                .map(|(meta, txs)| {
                    let me = self.clone();
                    tokio::task::spawn_local(async move {
                        let n = me.wait_one(&meta).await;
                        for tx in txs {
                            let _ = tx.send(n);
                        }
                    })
                })
                .collect();
            for r in rounds {
                let _ = r.await;
            }
        }
    }

    /// One `WAIT` on the master of `meta`: how many replicas confirmed (0 on a failure).
    async fn wait_one(self: &Rc<Self>, meta: &str) -> u64 {
        let Some(mut c) = self.cmds.borrow().clone() else {
            return 0;
        };
        // Redis's own timeout, under ours, so a shortfall is answered rather than lost.
        let timeout = self.timeout() * 3 / 4;
        let want = self.config.redis_wait_replicas;
        self.outcome(c.wait(meta, want, timeout).await).unwrap_or(0)
    }
}
