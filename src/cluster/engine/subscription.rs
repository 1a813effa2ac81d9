//! The subscription: the channels this node listens on, the gap read back from the logs after
//! the connection was replaced (the connection itself: `listen`), and what arrives: encoded
//! into a frame once and handed to the shards with receivers.

use super::failover::{Track, tracked};
use super::*;

impl Node {
    // ----- the subscription ---------------------------------------------------------------------

    /// Subscribes to a stream's channel in the background (the subscription task covers it
    /// if the connection is down).
    pub(super) fn ensure_sub(self: &Rc<Self>, stream: Stream) {
        let me = self.clone();
        self.spawn(async move { me.subscribed(stream).await });
    }

    /// Returns once the stream's channel is subscribed, or the subscription is down (then the
    /// subscription task subscribes it and fills the gap when it is back).
    pub(super) async fn subscribed(self: &Rc<Self>, stream: Stream) {
        if self.is_subscribed(&stream) {
            return;
        }
        let Some(mut subs) = self.subs.borrow().clone() else {
            return;
        };
        if subs.subscribe(&self.keys.channel(&stream)).await.is_ok() {
            let mut st = self.state.borrow_mut();
            match &stream {
                Stream::Room(r) => st.rooms.get_mut(r).map(|r| r.subscribed = true),
                Stream::Inbox(u) => st.users.get_mut(u).map(|u| u.subscribed = true),
            };
        }
    }

    pub(super) fn is_subscribed(&self, stream: &Stream) -> bool {
        let st = self.state.borrow();
        match stream {
            Stream::Room(r) => st.rooms.get(r).is_none_or(|r| r.subscribed),
            Stream::Inbox(u) => st.users.get(u).is_none_or(|u| u.subscribed),
        }
    }

    pub(super) fn unsubscribe(self: &Rc<Self>, stream: Stream) {
        let Some(mut subs) = self.subs.borrow().clone() else {
            return;
        };
        let channel = self.keys.channel(&stream);
        self.spawn(async move {
            let _ = subs.unsubscribe(&channel).await;
        });
    }

    pub(super) async fn subscribe_all(&self, mut subs: Subs) -> RedisResult<()> {
        subs.subscribe(&self.keys.node(self.node)).await?;
        subs.subscribe(&self.keys.control()).await?;
        let streams: Vec<Stream> = {
            let st = self.state.borrow();
            let rooms = st.rooms.keys().cloned().map(Stream::Room);
            rooms
                .chain(st.users.keys().cloned().map(Stream::Inbox))
                .collect()
        };
        for stream in streams {
            subs.subscribe(&self.keys.channel(&stream)).await?;
            let mut st = self.state.borrow_mut();
            match &stream {
                Stream::Room(r) => st.rooms.get_mut(r).map(|r| r.subscribed = true),
                Stream::Inbox(u) => st.users.get_mut(u).map(|u| u.subscribed = true),
            };
        }
        Ok(())
    }

    /// After a resubscription: every stream's messages after the last one this node knows,
    /// read from Redis and handed on as if they had arrived (the hubs drop repeats). `retry`:
    /// each read is tried again with backoff (else once: `failover` reads every second).
    pub(super) fn fill_all(self: &Rc<Self>, retry: bool) {
        let streams: Vec<(Stream, u64)> = {
            let st = self.state.borrow();
            let rooms = st
                .rooms
                .iter()
                .map(|(r, s)| (Stream::Room(r.clone()), s.last));
            let users = (st.users.iter()).map(|(u, s)| (Stream::Inbox(u.clone()), s.last));
            // A stream whose position is not known yet is caught up by its join or connect.
            rooms
                .chain(users)
                .filter_map(|(stream, last)| Some((stream, last?)))
                .collect()
        };
        for (stream, last) in streams {
            let me = self.clone();
            self.spawn(async move { me.fill(stream, last, retry).await });
        }
    }

    /// Reads what the stream had after `last` and hands it on; a stream that began a new epoch
    /// meanwhile, or whose seq went below `last` (`failover`), has its receivers closed
    /// instead. Retried (the command connection may be reconnecting too) while the stream
    /// still has receivers here.
    async fn fill(self: Rc<Self>, stream: Stream, last: u64, retry: bool) {
        let mut wait = Duration::from_millis(100);
        let (epoch, seq, entries) = loop {
            let mut inv = self.scripts.tail.prepare_invoke();
            inv.key(self.keys.meta(&stream))
                .key(self.keys.log(&stream))
                .arg(last)
                .arg(self.config.replay_limit);
            if let Some(tail) = self.script::<(u64, u64, Value)>(&inv).await {
                break tail;
            }
            if !retry {
                return;
            }
            if wait > BACKOFF_MAX || !self.serves(&stream) {
                tracing::error!(?stream, "could not read what the subscription missed");
                return;
            }
            tokio::time::sleep(wait).await;
            wait *= 2;
        };
        if self.epoch_changed(&stream, epoch) {
            return;
        }
        if seq < last && self.known_epoch(&stream) == Some(epoch) {
            return self.rolled_back(&stream);
        }
        self.begin_batch();
        for (seq, json) in log_entries(entries) {
            self.counters.gap_fills.fetch_add(1, Relaxed);
            let wire = Wire::Message {
                seq,
                exclude: None,
                epoch: None,
                json,
                own: None,
            };
            self.hand_on(&stream, wire);
        }
        self.end_batch();
    }

    /// Whether this node still has receivers of the stream.
    fn serves(&self, stream: &Stream) -> bool {
        let st = self.state.borrow();
        match stream {
            Stream::Room(r) => st.rooms.contains_key(r),
            Stream::Inbox(u) => st.users.contains_key(u),
        }
    }

    /// Records the stream's epoch as Redis has it now (0: its meta is gone); a change closes
    /// the stream's local receivers (`lost`).
    fn epoch_changed(&self, stream: &Stream, epoch: u64) -> bool {
        let mut st = self.state.borrow_mut();
        let Some((known, last, track, shards)) = tracked(&mut st, stream) else {
            return false;
        };
        // The epoch this node just left (`failover`) is not news.
        let changed = *known != 0 && *known != epoch && epoch != track.prev;
        if changed {
            // Its receivers start again from their joins and connects.
            (*known, *last, *track) = (epoch, None, Track::default());
            let shards = shards.to_vec();
            drop(st);
            self.lost(&shards, stream);
        }
        changed
    }

    /// The stream's epoch as this node knows it.
    pub(super) fn known_epoch(&self, stream: &Stream) -> Option<u64> {
        let mut st = self.state.borrow_mut();
        tracked(&mut st, stream).map(|(epoch, ..)| *epoch)
    }

    pub(super) fn heartbeat(self: &Rc<Self>) {
        let me = self.clone();
        self.spawn(async move {
            let cmd = me.publish(me.keys.node(me.node), &Wire::Heartbeat);
            me.query::<u64>(cmd).await;
        });
    }

    /// A pub/sub message on `channel`: decoded once and handed on.
    pub(super) fn on_message(self: &Rc<Self>, channel: &[u8], payload: Bytes) {
        let Some(channel) = std::str::from_utf8(channel)
            .ok()
            .and_then(|c| self.keys.parse(c))
        else {
            return;
        };
        let Some(wire) = Wire::parse(payload) else {
            tracing::warn!(?channel, "unreadable pub/sub message; dropped");
            return;
        };
        self.counters.received.fetch_add(1, Relaxed);
        match channel {
            Channel::Node(_) => self.beat.set(Instant::now()),
            Channel::Control => {
                if let Wire::Broadcast { from, json } = wire
                    && from != self.node
                {
                    let frame = ws::text_frames(std::iter::once(&json[..]));
                    for shard in 0..self.router.shards() {
                        let msg = LocalMsg::Broadcast {
                            frame: frame.clone(),
                            reply: oneshot::channel().0,
                        };
                        self.send(shard, msg);
                    }
                }
            }
            Channel::Stream(stream) => self.hand_on(&stream, wire),
        }
    }

    /// A stream's message or event: encoded into a frame once, and handed to the shards with
    /// members (a room's) or sessions (a user's).
    pub(super) fn hand_on(self: &Rc<Self>, stream: &Stream, wire: Wire) {
        if let Wire::Message {
            seq,
            epoch: Some(e),
            ..
        } = &wire
        {
            let verdict = {
                let mut st = self.state.borrow_mut();
                match tracked(&mut st, stream) {
                    Some((known, _, track, _)) => {
                        let known = if *known == 0 { *e } else { *known };
                        Node::rollback_seen(track, known, *e, *seq)
                    }
                    None => Some(false),
                }
            };
            match verdict {
                None => return,
                Some(true) => return self.rolled_back(stream),
                Some(false) => {}
            }
        }
        let mut st = self.state.borrow_mut();
        let (shards, seq, json, exclude) = match (stream, wire) {
            (Stream::Room(room), wire) => {
                let Some(r) = st.rooms.get_mut(room) else {
                    return;
                };
                let (seq, json, exclude, own) = match wire {
                    Wire::Message {
                        seq,
                        epoch: Some(e),
                        ..
                    } if new_epoch_seen(&mut r.epoch, e) => {
                        r.last = Some(seq);
                        let shards = r.shards.clone();
                        drop(st);
                        return self.lost(&shards, stream);
                    }
                    Wire::Message {
                        seq,
                        exclude,
                        json,
                        own,
                        ..
                    } => (Some(seq), json, exclude, own),
                    Wire::Event { exclude, json } => (None, json, exclude, None),
                    Wire::Signal { exclude, json } => {
                        let shards = r.shards.clone();
                        drop(st);
                        return self.signal_heard(&shards, room, &json, exclude);
                    }
                    Wire::Occupancy(total) => {
                        drop(st);
                        return self.heard(room, total);
                    }
                    _ => return,
                };
                if let Some(seq) = seq {
                    r.last = r.last.max(Some(seq));
                }
                let frame = ws::text_frames(std::iter::once(&json[..]));
                if let (Some(seq), true) = (seq, r.pending > 0) {
                    r.recent.push((seq, frame.clone(), exclude));
                }
                // A keyed message: its copy with the key, for its sender's connections.
                let own = own.map(|(user, key)| {
                    let frame = encode::with_key(&json, key.as_str());
                    Box::new(Own { user, frame })
                });
                return self.deliver(&r.shards, stream, seq, frame, exclude, own);
            }
            (Stream::Inbox(user), wire) => {
                let Some(u) = st.users.get_mut(user) else {
                    return;
                };
                match wire {
                    Wire::Message {
                        seq,
                        epoch: Some(e),
                        ..
                    } if new_epoch_seen(&mut u.epoch, e) => {
                        u.last = Some(seq);
                        let shards = u.shards.clone();
                        drop(st);
                        return self.lost(&shards, stream);
                    }
                    Wire::Message {
                        seq, exclude, json, ..
                    } => {
                        u.last = u.last.max(Some(seq));
                        (u.shards.clone(), Some(seq), json, exclude)
                    }
                    Wire::Forward { exclude, json } => (u.shards.clone(), None, json, exclude),
                    Wire::ReadMoved { seq, exclude, room } => {
                        let shards = u.shards.clone();
                        drop(st);
                        return self.read_heard(&shards, user, room, seq, exclude);
                    }
                    Wire::CloseOthers(except) => {
                        for shard in shards_with(&u.shards) {
                            let msg = NodeMsg::CloseUser {
                                user: user.clone(),
                                except,
                                code: CloseCode::Replaced,
                            };
                            self.send(shard, msg);
                        }
                        return;
                    }
                    Wire::Kick(reason) => {
                        for shard in shards_with(&u.shards) {
                            let msg = LocalMsg::Kick {
                                user: user.clone(),
                                reason: Some(reason.clone()).filter(|r| !r.is_empty()),
                                reply: oneshot::channel().0,
                            };
                            self.send(shard, msg);
                        }
                        return;
                    }
                    _ => return,
                }
            }
        };
        drop(st);
        let frame = ws::text_frames(std::iter::once(&json[..]));
        self.deliver(&shards, stream, seq, frame, exclude, None);
    }

    /// The stream began a new epoch: its local receivers must reconnect and recover.
    pub(super) fn lost(&self, shards: &[u32], stream: &Stream) {
        tracing::warn!(?stream, "a stream's history was lost in Redis (new epoch)");
        for shard in shards_with(shards) {
            let msg = NodeMsg::Lost {
                stream: stream.clone(),
            };
            self.send(shard, msg);
        }
    }

    /// Hands a live frame to the shards with receivers; `own`: a keyed room message's copy
    /// for its sender's connections.
    pub(super) fn deliver(
        &self,
        shards: &[u32],
        stream: &Stream,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
        own: Option<Box<Own>>,
    ) {
        for shard in shards_with(shards) {
            let msg = NodeMsg::Deliver {
                stream: stream.clone(),
                seq,
                frame: frame.clone(),
                exclude,
                own: own.clone(),
            };
            self.send(shard, msg);
        }
    }
}

/// The (seq, JSON) of each entry of an XRANGE reply; malformed entries are skipped.
fn log_entries(v: Value) -> Vec<(u64, Bytes)> {
    let Value::Array(entries) = v else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let Value::Array(parts) = e else { continue };
        let mut parts = parts.into_iter();
        let (Some(id), Some(Value::Array(fields))) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(seq) = bytes_of(id)
            .and_then(|id| String::from_utf8(id).ok())
            .and_then(|id| id.split('-').next()?.parse().ok())
        else {
            continue;
        };
        let mut fields = fields.into_iter();
        while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
            if bytes_of(k).as_deref() == Some(b"d")
                && let Some(json) = bytes_of(v)
            {
                out.push((seq, Bytes::from(json)));
            }
        }
    }
    out
}

/// The shards with at least one receiver, from per-shard counts.
fn shards_with(counts: &[u32]) -> impl Iterator<Item = ShardId> + '_ {
    (counts.iter().enumerate()).filter_map(|(shard, &n)| (n > 0).then_some(shard))
}
