//! The subscription connection's life: opened (our own `pubsub` connection where it fits,
//! else the client library's), everything subscribed, what each read brings taken in batches
//! of at most `READ_BATCH` and handed to `on_message`, the node's heartbeat each `BEAT`, and
//! the connection replaced (with a backoff) when it drops or goes silent; then the gap is read
//! back (`subscription`). It must not decide what a message means.

use super::*;
use crate::cluster::pubsub::{Conn, Plain};

/// Why a subscription connection's session ended: what to wait before the next.
enum Ended {
    NotConnected,
    NotSubscribed,
    Dropped,
}

/// Pub/sub messages taken in one pass (one batch per shard): bounds a pass's length when
/// Redis sends faster than the node takes them.
const READ_BATCH: usize = 512;

impl Node {
    /// The subscription task: connects, subscribes to everything this node needs, fills what
    /// was missed while it was down, then hands on what arrives. A connection that drops, or
    /// stays up but stops delivering this node's own heartbeat, is replaced.
    pub(super) async fn subscriber(self: Rc<Self>) {
        // Our own connection where it fits (one server, plain TCP); else the library's.
        let plain = self.target.plain();
        let mut wait = Duration::from_millis(100);
        let mut first = true;
        loop {
            let ended = match &plain {
                Some(to) => self.own_session(to, &mut first).await,
                None => self.library_session(&mut first).await,
            };
            *self.subs.borrow_mut() = None;
            {
                let mut st = self.state.borrow_mut();
                st.rooms.values_mut().for_each(|r| r.subscribed = false);
                st.users.values_mut().for_each(|u| u.subscribed = false);
            }
            match ended {
                Ended::NotConnected => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
                Ended::NotSubscribed => tokio::time::sleep(wait).await,
                Ended::Dropped => wait = Duration::from_millis(100),
            }
        }
    }

    fn sub_name(&self) -> String {
        format!("{}-sub-{}", self.keys.prefix(), self.node)
    }

    /// Everything is subscribed on a new connection: after a drop, the gap is read back.
    fn on_subscribed(self: &Rc<Self>, first: &mut bool) {
        self.beat.set(Instant::now());
        if !*first {
            self.counters.pubsub_reconnects.fetch_add(1, Relaxed);
            tracing::info!("resubscribed to Redis; filling what was missed");
            self.fill_all(true);
        }
        *first = false;
    }

    /// Each `BEAT`: this node's heartbeat and due reads; true when the connection went silent
    /// and must be replaced.
    fn on_tick(self: &Rc<Self>) -> bool {
        self.heartbeat();
        self.fill_due();
        let silent = self.beat.get().elapsed();
        if self.target.cluster && silent > SILENT && silent < SILENT_CLUSTER {
            // The heartbeat's master may be failing over.
            self.fill_soon();
        } else if silent > SILENT && self.cmds.borrow().is_some() {
            tracing::warn!("the subscription connection went silent; replacing it");
            return true;
        }
        false
    }

    /// One connection of our own (`pubsub`), read on this task: its messages go from the read
    /// buffer to the shards' batches with no channel or other task between.
    async fn own_session(self: &Rc<Self>, to: &Plain, first: &mut bool) -> Ended {
        let mut conn = match Conn::connect(to, &self.sub_name(), self.timeout()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the subscription connection");
                return Ended::NotConnected;
            }
        };
        let subs = Subs::Own(conn.outbox());
        *self.subs.borrow_mut() = Some(subs.clone());
        // The confirmations come through `conn.ready` below: subscribing runs alongside it.
        self.beat.set(Instant::now());
        let mut subscribing = std::pin::pin!(self.subscribe_all(subs));
        let mut done = false;
        // A connection that drops before it was ever subscribed is retried after a wait.
        let ended = |done| match done {
            true => Ended::Dropped,
            false => Ended::NotSubscribed,
        };
        let mut tick = tokio::time::interval(BEAT);
        loop {
            tokio::select! {
                r = &mut subscribing, if !done => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "cannot subscribe");
                        return Ended::NotSubscribed;
                    }
                    done = true;
                    self.on_subscribed(first);
                }
                r = conn.ready() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "the subscription connection dropped");
                        return ended(done);
                    }
                    if !self.on_own_read(&mut conn) {
                        return ended(done);
                    }
                }
                _ = tick.tick() => if self.on_tick() { return ended(done) },
            }
        }
    }

    /// What one read brought, handed to the shards in batches of at most `READ_BATCH`. False
    /// when the bytes are not RESP (the connection is replaced).
    fn on_own_read(self: &Rc<Self>, conn: &mut Conn) -> bool {
        loop {
            self.begin_batch();
            let mut taken = 0;
            let more = loop {
                match conn.next() {
                    Ok(Some((channel, payload))) => {
                        self.on_message(&channel, payload);
                        taken += 1;
                        if taken == READ_BATCH {
                            break Ok(true);
                        }
                    }
                    Ok(None) => break Ok(false),
                    Err(e) => break Err(e),
                }
            };
            self.end_batch();
            match more {
                Ok(true) => {}
                Ok(false) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable subscription connection; replacing it");
                    return false;
                }
            }
        }
    }

    /// The client library's connection (TLS, a Unix socket, a Redis Cluster): its driver is a
    /// task of the runtime and its pushes arrive on a channel.
    async fn library_session(self: &Rc<Self>, first: &mut bool) -> Ended {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let subs = match self.target.subscriber(&self.sub_name(), tx).await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the subscription connection");
                return Ended::NotConnected;
            }
        };
        *self.subs.borrow_mut() = Some(subs.clone());
        if self.subscribe_all(subs).await.is_err() {
            return Ended::NotSubscribed;
        }
        self.on_subscribed(first);
        let mut tick = tokio::time::interval(BEAT);
        loop {
            tokio::select! {
                push = rx.recv() => match push {
                    // One Cluster node dropped: the library resubscribes its slots by
                    // itself; the streams are read back meanwhile (`failover`).
                    Some(p) if p.kind == PushKind::Disconnection && self.target.cluster => {
                        self.fill_soon();
                    }
                    Some(p) if p.kind == PushKind::Disconnection => return Ended::Dropped,
                    Some(p) => if !self.on_read(p, &mut rx) { return Ended::Dropped },
                    None => return Ended::Dropped,
                },
                _ = tick.tick() => if self.on_tick() { return Ended::Dropped },
            }
        }
    }

    /// One read's worth of pub/sub messages: `first` and what the connection queued with it
    /// (at most `READ_BATCH`), handed to the shards as one batch each. False when the
    /// connection dropped.
    fn on_read(
        self: &Rc<Self>,
        first: PushInfo,
        rx: &mut mpsc::UnboundedReceiver<PushInfo>,
    ) -> bool {
        self.begin_batch();
        self.on_push(first);
        let mut up = true;
        for _ in 1..READ_BATCH {
            match rx.try_recv() {
                // As in the loop above: a Cluster node's drop is read back, not a break.
                Ok(p) if p.kind == PushKind::Disconnection && self.target.cluster => {
                    self.fill_soon();
                }
                Ok(p) if p.kind == PushKind::Disconnection => {
                    up = false;
                    break;
                }
                Ok(p) => self.on_push(p),
                Err(_) => break,
            }
        }
        self.end_batch();
        up
    }

    pub(super) fn on_push(self: &Rc<Self>, p: PushInfo) {
        if !matches!(p.kind, PushKind::Message | PushKind::SMessage) {
            return;
        }
        let mut data = p.data.into_iter();
        let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
            return;
        };
        let (Some(channel), Some(payload)) = (bytes_of(channel), bytes_of(payload)) else {
            return;
        };
        self.on_message(&channel, Bytes::from(payload));
    }
}
