//! Rooms: joins (presence entry, seq and epoch, replay), leaves, the presence query, and this
//! node's own members of each room.

use super::*;

impl Node {
    // ----- rooms ------------------------------------------------------------------------------

    /// A local connection joins: counted at once (the join's script is told this node's
    /// users). A count room's new user is written to Redis at the next occupancy tick.
    pub(super) fn add_member(
        self: &Rc<Self>,
        room: &Name,
        user: &Name,
        conn: ConnId,
        jgen: JoinGen,
    ) {
        let shards = self.router.shards();
        let counted = self.config.rule(room).presence != PresenceMode::List;
        let new = {
            let mut guard = self.state.borrow_mut();
            let st = &mut *guard;
            let r = st.rooms.entry(room.clone()).or_default();
            if r.shards.is_empty() {
                r.shards = vec![0; shards];
            }
            if r.members.insert(conn, (user.clone(), jgen)).is_none() {
                r.shards[conn.shard()] += 1;
                let n = r.users.entry(user.clone()).or_insert(0);
                *n += 1;
                if *n == 1 && counted {
                    st.counted.insert(room.clone());
                }
            }
            r.pending += 1;
            !r.subscribed
        };
        if new {
            self.ensure_sub(Stream::Room(room.clone()));
        }
    }

    pub(super) fn remove_member(self: &Rc<Self>, room: &Name, conn: ConnId) {
        let counted = self.config.rule(room).presence != PresenceMode::List;
        let gone = {
            let mut guard = self.state.borrow_mut();
            let st = &mut *guard;
            let Some(r) = st.rooms.get_mut(room) else {
                return;
            };
            if let Some((user, _)) = r.members.remove(&conn) {
                r.shards[conn.shard()] -= 1;
                if let Some(n) = r.users.get_mut(&user) {
                    *n -= 1;
                    if *n == 0 {
                        r.users.remove(&user);
                        r.info.remove(&user);
                        if counted {
                            st.counted.insert(room.clone());
                        }
                    }
                }
            }
            r.members.is_empty() && r.pending == 0 && st.rooms.remove(room).is_some()
        };
        if gone {
            self.unsubscribe(Stream::Room(room.clone()));
        }
    }

    /// A join: the presence entry and the room's seq and epoch from Redis, then the answer
    /// (`Joined::answer`). `epoch` is the client's, for its `since`; `info` the connection's
    /// presence info, kept with the user's presence entry.
    pub(super) async fn join(
        self: Rc<Self>,
        user: Name,
        mut joined: Joined,
        epoch: Option<u64>,
        info: Option<Bytes>,
    ) {
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
        let rule = self.config.rule(&room);
        // What this node knew before the script: a seq below it in the same epoch is a
        // rollback (`failover`).
        let (before, known) =
            (self.state.borrow().rooms.get(&room)).map_or((None, 0), |r| (r.last, r.epoch));
        let result = if current(&self) {
            let (here, new_user) = {
                let mut st = self.state.borrow_mut();
                let mut r = st.rooms.get_mut(&room);
                if let (Some(r), Some(info)) = (r.as_mut(), &info) {
                    r.info.insert(user.clone(), info.clone());
                }
                let r = r.map(|r| &*r);
                let users = r.map_or(0, |r| r.users.len() as u64);
                let conns_of_user = r.and_then(|r| r.users.get(&user)).copied();
                (users, conns_of_user == Some(1))
            };
            let (pz, pu) = self.keys.presence(&room);
            let mut inv = self.scripts.join.prepare_invoke();
            inv.key(self.keys.meta(&stream))
                .key(pz)
                .key(pu)
                .key(self.keys.log(&stream))
                .key(self.keys.occupancy(&room))
                .arg(format!("{user} {}", conn.raw()))
                .arg(user.as_str())
                .arg(self.lease.get())
                .arg(now_ms())
                .arg(self.keys.channel(&stream))
                .arg(self.publish_cmd())
                .arg(room.as_str())
                .arg(self.list(&rule))
                .arg(Self::new_epoch())
                .arg(conn.raw())
                .arg(listed(&rule))
                .arg(self.node)
                .arg(here)
                .arg(rule.max_members)
                .arg(u8::from(new_user))
                .arg(self.dead())
                .arg(info.as_deref().unwrap_or_default());
            self.feed_keys(&mut inv, &self.keys.channel(&Stream::Room(room.clone())));
            self.script::<(i64, u64, u64)>(&inv).await
        } else {
            None // left meanwhile: the client side has answered this join already
        };
        if let Some((-1, _, _)) = result {
            self.join_ended(&room, None);
            if current(&self) {
                self.remove_member(&room, conn);
                self.send(conn.shard(), joined.full(&rule));
            }
            return;
        }
        let Some((seq, now_epoch, members)) = result else {
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
        let seq = seq as u64;
        let mut now_epoch = now_epoch;
        if known != 0 && known == now_epoch && before.is_some_and(|b| b > seq) {
            self.rolled_back(&stream);
            now_epoch = self.known_epoch(&stream).unwrap_or(now_epoch);
        }
        let lost_here = (self.state.borrow_mut().rooms.get_mut(&room)).and_then(|r| {
            r.total = members;
            new_epoch_seen(&mut r.epoch, now_epoch).then(|| r.shards.clone())
        });
        if let Some(shards) = lost_here {
            self.lost(&shards, &stream);
        }
        // A `since` from another epoch is history this room no longer has.
        joined.lost = epoch.is_some_and(|e| e != now_epoch);
        joined.epoch = Some(now_epoch);
        let (done, read) = joined.answer(seq, &rule, Some(members));
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
                    own: None,
                };
                self.send(shard, msg);
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

    /// A local connection left. A list room's entry goes at once (with `left`); a count
    /// room's count is written at the next occupancy tick.
    pub(super) async fn leave(self: Rc<Self>, room: Name, user: Name, conn: ConnId) {
        let rule = self.config.rule(&room);
        if rule.presence != PresenceMode::List {
            return;
        }
        let (pz, pu) = self.keys.presence(&room);
        let mut inv = self.scripts.leave.prepare_invoke();
        inv.key(pz)
            .key(pu)
            .arg(format!("{user} {}", conn.raw()))
            .arg(user.as_str())
            .arg(self.dead())
            .arg(self.keys.channel(&Stream::Room(room.clone())))
            .arg(self.publish_cmd())
            .arg(room.as_str())
            .arg(self.list(&rule));
        self.feed_keys(&mut inv, &self.keys.channel(&Stream::Room(room.clone())));
        if let Some(users) = self.script::<u64>(&inv).await
            && let Some(r) = self.state.borrow_mut().rooms.get_mut(&room)
        {
            r.total = users;
        }
    }

    /// Who is in the room. A list room's script returns every member (HKEYS): a page is cut
    /// here, so Redis's work per page is O(members) and the reply to the client is bounded. A
    /// list room past its `presence_list_max` answers its count, as a count room does.
    pub(super) async fn presence(
        self: Rc<Self>,
        room: Name,
        reply: ReplyTo,
        page: Option<PresencePage>,
    ) {
        let rule = self.config.rule(&room);
        if rule.presence != PresenceMode::List {
            let answer = match self.occupancy(&room).await {
                Some(n) => reply.presence_count(&room, rule.presence.as_str(), n),
                None => reply.fail(unavailable()),
            };
            return self.answer(answer);
        }
        let (pz, pu) = self.keys.presence(&room);
        let mut inv = self.scripts.presence.prepare_invoke();
        inv.key(pz)
            .key(pu)
            .arg(self.dead())
            .arg(self.keys.channel(&Stream::Room(room.clone())))
            .arg(self.publish_cmd())
            .arg(room.as_str())
            .arg(self.list(&rule));
        self.feed_keys(&mut inv, &self.keys.channel(&Stream::Room(room.clone())));
        let Some((users, info)) = self
            .script::<(Vec<String>, Vec<(String, String)>)>(&inv)
            .await
        else {
            return self.answer(reply.fail(unavailable()));
        };
        let users: Vec<Name> = users.iter().filter_map(|u| Name::new(u).ok()).collect();
        let info: ahash::AHashMap<String, Bytes> = (info.into_iter())
            .map(|(u, i)| (u, Bytes::from(i)))
            .collect();
        let answer = match rule.presence_at(users.len()) {
            PresenceMode::List => {
                let max_bytes = self.config.max_queue_bytes / 2;
                let info = |u: &Name| info.get(u.as_str()).cloned();
                reply.presence(&room, users.iter(), page.as_ref(), max_bytes, info)
            }
            mode => reply.presence_count(&room, mode.as_str(), users.len() as u64),
        };
        self.answer(answer);
    }

    // ----- occupancy --------------------------------------------------------------------------

    /// Writes this node's count of a count (or off) room's users and returns the room's total
    /// (which the script also publishes to the room's nodes when it changed).
    pub(super) async fn occupancy(self: &Rc<Self>, room: &Name) -> Option<u64> {
        let here = (self.state.borrow().rooms.get(room)).map_or(0, |r| r.users.len());
        let mut inv = self.scripts.occupancy.prepare_invoke();
        inv.key(self.keys.occupancy(room))
            .arg(self.node)
            .arg(here)
            .arg(now_ms() + self.config.presence_ttl_secs * 2000 / 3)
            .arg(now_ms())
            .arg(self.keys.channel(&Stream::Room(room.clone())))
            .arg(self.publish_cmd())
            .arg(room.as_str());
        self.feed_keys(&mut inv, &self.keys.channel(&Stream::Room(room.clone())));
        let total = self.script::<u64>(&inv).await?;
        self.heard(room, total);
        Some(total)
    }

    /// A room's total users as Redis says (an `o` message, or the occupancy script's answer):
    /// its local members hear it at the next tick if it changed.
    pub(super) fn heard(&self, room: &Name, total: u64) {
        let mut st = self.state.borrow_mut();
        if let Some(r) = st.rooms.get_mut(room) {
            r.total = total;
            if r.told != Some(total) {
                st.occupancy_due.insert(room.clone());
            }
        }
    }

    /// Every `occupancy_interval_ms`: the count rooms whose users here changed are written to
    /// Redis (one script per room however many joins), then each room whose total changed
    /// tells its local members with one `occupancy` event.
    pub(super) async fn occupier(self: Rc<Self>) {
        let every = Duration::from_millis(self.config.occupancy_interval_ms.max(1));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let counted = std::mem::take(&mut self.state.borrow_mut().counted);
            for room in counted {
                let me = self.clone();
                self.spawn(async move {
                    me.occupancy(&room).await;
                });
            }
            let due = std::mem::take(&mut self.state.borrow_mut().occupancy_due);
            for room in due {
                if self.config.rule(&room).presence == PresenceMode::Off {
                    continue;
                }
                let mut st = self.state.borrow_mut();
                let Some(r) = st.rooms.get_mut(&room) else {
                    continue;
                };
                r.told = Some(r.total);
                let frame = encode::occupancy(&room, r.total);
                let shards = r.shards.clone();
                drop(st);
                self.deliver(&shards, &Stream::Room(room), None, frame, None, None);
            }
        }
    }

    /// `GET /api/rooms`: the rooms with members on this node, each with its users across the
    /// cluster (a list room's counted in Redis now, a count room's as last heard).
    pub(super) async fn rooms(self: &Rc<Self>) -> Option<Vec<(Name, u64)>> {
        let rooms: Vec<(Name, u64, bool)> = (self.state.borrow().rooms.iter())
            .map(|(name, r)| {
                let list = self.config.rule(name).presence == PresenceMode::List;
                (name.clone(), r.total, list)
            })
            .collect();
        // Issued together, so the multiplexer pipelines them.
        let counts: Vec<_> = (rooms.iter())
            .map(|(name, total, list)| {
                let (me, key, total, list) =
                    (self.clone(), self.keys.presence(name).1, *total, *list);
                tokio::task::spawn_local(async move {
                    if !list {
                        return Some(total);
                    }
                    me.query::<u64>(redis::cmd("HLEN").arg(key).clone()).await
                })
            })
            .collect();
        let mut out = Vec::with_capacity(rooms.len());
        for ((name, _, _), count) in rooms.into_iter().zip(counts) {
            out.push((name, count.await.ok().flatten()?));
        }
        Some(out)
    }
}

/// The join script's mode: a list room keeps an entry per connection, a count or off room
/// one count per node.
fn listed(rule: &Rule) -> &'static str {
    match rule.presence {
        PresenceMode::List => "list",
        _ => "count",
    }
}
