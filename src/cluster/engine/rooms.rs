//! Rooms: joins (presence entry, seq and epoch, replay), leaves, the presence query, and this
//! node's own members of each room.

use super::*;

impl Node {
    // ----- rooms ------------------------------------------------------------------------------

    pub(super) fn add_member(
        self: &Rc<Self>,
        room: &Name,
        user: &Name,
        conn: ConnId,
        jgen: JoinGen,
    ) {
        let shards = self.router.shards();
        let new = {
            let mut st = self.state.borrow_mut();
            let r = st.rooms.entry(room.clone()).or_default();
            if r.shards.is_empty() {
                r.shards = vec![0; shards];
            }
            if r.members.insert(conn, (user.clone(), jgen)).is_none() {
                r.shards[conn.shard()] += 1;
            }
            r.pending += 1;
            !r.subscribed
        };
        if new {
            self.ensure_sub(Stream::Room(room.clone()));
        }
    }

    pub(super) fn remove_member(self: &Rc<Self>, room: &Name, conn: ConnId) {
        let gone = {
            let mut st = self.state.borrow_mut();
            let Some(r) = st.rooms.get_mut(room) else {
                return;
            };
            if r.members.remove(&conn).is_some() {
                r.shards[conn.shard()] -= 1;
            }
            r.members.is_empty() && r.pending == 0 && st.rooms.remove(room).is_some()
        };
        if gone {
            self.unsubscribe(Stream::Room(room.clone()));
        }
    }

    /// A join: the presence entry and the room's seq and epoch from Redis, then the answer
    /// (`Joined::answer`). `epoch` is the client's, for its `since`.
    pub(super) async fn join(self: Rc<Self>, user: Name, mut joined: Joined, epoch: Option<u64>) {
        let (room, conn, jgen) = (joined.room.clone(), joined.conn, joined.jgen);
        let stream = Stream::Room(room.clone());
        self.subscribed(stream.clone()).await;
        let current = |me: &Self| {
            me.state
                .borrow()
                .rooms
                .get(&room)
                .and_then(|r| r.members.get(&conn))
                .map(|m| m.1)
                == Some(jgen)
        };
        let result = if current(&self) {
            let (pz, pu) = self.keys.presence(&room);
            let mut inv = self.scripts.join.prepare_invoke();
            inv.key(self.keys.meta(&stream))
                .key(pz)
                .key(pu)
                .key(self.keys.log(&stream))
                .arg(format!("{user} {}", conn.raw()))
                .arg(user.as_str())
                .arg(self.expiry())
                .arg(now_ms())
                .arg(self.keys.channel(&stream))
                .arg(self.publish_cmd())
                .arg(room.as_str())
                .arg(self.events())
                .arg(Self::new_epoch())
                .arg(conn.raw());
            self.script::<(u64, u64)>(&inv).await
        } else {
            None // left meanwhile: the client side has answered this join already
        };
        let Some((seq, now_epoch)) = result else {
            self.join_ended(&room, None);
            if current(&self) {
                self.remove_member(&room, conn);
                let error = unavailable();
                self.send(
                    conn.shard(),
                    NodeMsg::JoinFailed {
                        room,
                        conn,
                        jgen,
                        error,
                    },
                );
            }
            return;
        };
        let lost_here = (self.state.borrow_mut().rooms.get_mut(&room))
            .and_then(|r| new_epoch_seen(&mut r.epoch, now_epoch).then(|| r.shards.clone()));
        if let Some(shards) = lost_here {
            self.lost(&shards, &stream);
        }
        // A `since` from another epoch is history this room no longer has.
        joined.lost = epoch.is_some_and(|e| e != now_epoch);
        joined.epoch = Some(now_epoch);
        let rule = self.config.rule(&joined.room);
        let (done, read) = joined.answer(seq, &rule, None);
        self.send(conn.shard(), done);
        if let Some(read) = read {
            self.persist.send(vec![Op::Read(read)]);
        }
        self.join_ended(&room, Some((conn.shard(), seq)));
    }

    /// A join's script answered: frames handed on while it was out, after its seq, go to its
    /// shard again (the hub may have had no room to hand them to yet; it drops repeats).
    pub(super) fn join_ended(self: &Rc<Self>, room: &Name, done: Option<(ShardId, u64)>) {
        let mut st = self.state.borrow_mut();
        let Some(r) = st.rooms.get_mut(room) else {
            return;
        };
        if let Some((shard, seq)) = done {
            r.last = r.last.max(Some(seq));
            for (s, frame, exclude) in r.recent.iter().filter(|f| f.0 > seq) {
                let msg = NodeMsg::Deliver {
                    stream: Stream::Room(room.clone()),
                    seq: Some(*s),
                    frame: frame.clone(),
                    exclude: *exclude,
                };
                self.router.send(shard, msg);
            }
        }
        r.pending -= 1;
        if r.pending == 0 {
            r.recent.clear();
            // Every member left while the join was out.
            if r.members.is_empty() {
                st.rooms.remove(room);
                drop(st);
                self.unsubscribe(Stream::Room(room.clone()));
            }
        }
    }

    /// Who is in the room. The script returns every member (HKEYS): a page is cut here, so
    /// Redis's work per page is O(members) and the reply to the client is bounded.
    pub(super) async fn presence(
        self: Rc<Self>,
        room: Name,
        reply: ReplyTo,
        page: Option<PresencePage>,
    ) {
        let (pz, pu) = self.keys.presence(&room);
        let mut inv = self.scripts.presence.prepare_invoke();
        inv.key(pz)
            .key(pu)
            .arg(now_ms())
            .arg(self.keys.channel(&Stream::Room(room.clone())))
            .arg(self.publish_cmd())
            .arg(room.as_str())
            .arg(self.events());
        let Some(users) = self.script::<Vec<String>>(&inv).await else {
            return self.answer(reply.fail(unavailable()));
        };
        let users: Vec<Name> = users.iter().filter_map(|u| Name::new(u).ok()).collect();
        let max_bytes = self.config.max_queue_bytes / 2;
        self.answer(reply.presence(&room, users.iter(), page.as_ref(), max_bytes));
    }
}
