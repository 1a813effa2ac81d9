//! Sessions: a user's connections across the cluster (admission under the session policy,
//! attachment and the inbox replay at connect), and this node's own list of them.

use super::*;

impl Node {
    // ----- sessions ---------------------------------------------------------------------------

    pub(super) fn add_session(self: &Rc<Self>, user: &Name, conn: ConnId) {
        let shards = self.router.shards();
        let new = {
            let mut st = self.state.borrow_mut();
            let u = st.users.entry(user.clone()).or_default();
            if u.shards.is_empty() {
                u.shards = vec![0; shards];
            }
            if u.sessions.insert(conn) {
                u.shards[conn.shard()] += 1;
            }
            !u.subscribed
        };
        if new {
            self.ensure_sub(Stream::Inbox(user.clone()));
        }
    }

    pub(super) fn remove_session(self: &Rc<Self>, user: &Name, conn: ConnId) {
        let gone = {
            let mut st = self.state.borrow_mut();
            let Some(u) = st.users.get_mut(user) else {
                return;
            };
            if u.sessions.remove(&conn) {
                u.shards[conn.shard()] -= 1;
            }
            u.online.remove(&conn);
            u.sessions.is_empty() && st.users.remove(user).is_some()
        };
        if gone {
            self.unsubscribe(Stream::Inbox(user.clone()));
        }
    }

    pub(super) async fn register(self: Rc<Self>, user: Name, conn: ConnId) {
        let (conns, online) = self.keys.sessions(&user);
        let stream = Stream::Inbox(user.clone());
        let policy = match self.config.session_policy {
            SessionPolicy::Multi => "multi",
            SessionPolicy::KickOld => "kick_old",
            SessionPolicy::RejectNew => "reject_new",
        };
        let mut inv = self.scripts.register.prepare_invoke();
        inv.key(conns)
            .key(online)
            .key(self.keys.meta(&stream))
            .arg(conn.raw())
            .arg(self.lease.get())
            .arg(self.dead())
            .arg(policy)
            .arg(self.config.max_connections_per_user)
            .arg(self.keys.channel(&stream))
            .arg(self.publish_cmd())
            .arg(user.as_str());
        self.feed_keys(&mut inv, &self.keys.channel(&stream));
        let verdict = match self.script::<Vec<i64>>(&inv).await.as_deref() {
            Some([0, seq]) => Ok(*seq as u64),
            Some([-1]) => Err(HandshakeError::ConnectionLimit(
                self.config.max_connections_per_user,
            )),
            Some([-2]) => Err(HandshakeError::SessionExists),
            _ => Err(HandshakeError::RedisUnreachable),
        };
        if verdict.is_err() {
            self.remove_session(&user, conn);
        } else {
            let reads = self.reads_of(&user).await;
            self.send(conn.shard(), NodeMsg::Reads { user, reads });
        }
        self.send(conn.shard(), NodeMsg::Admitted { conn, verdict });
    }

    pub(super) async fn online(self: Rc<Self>, user: Name, conn: ConnId) {
        let stream = Stream::Inbox(user.clone());
        self.subscribed(stream.clone()).await;
        let (_, online) = self.keys.sessions(&user);
        let mut inv = self.scripts.online.prepare_invoke();
        inv.key(online)
            .key(self.keys.meta(&stream))
            .key(self.keys.log(&stream))
            .arg(conn.raw())
            .arg(self.lease.get())
            .arg(Self::new_epoch());
        let to = ReplayTo::Conn { conn, jgen: 0 };
        let Some((seq, cursor, epoch)) = self.script::<(u64, u64, u64)>(&inv).await else {
            // The hub closes the connection (1011): it cannot be caught up.
            let msg = replay(stream, to, 0, 0, false);
            return self.send(conn.shard(), msg);
        };
        let lost = match self.state.borrow_mut().users.get_mut(&user) {
            Some(u) => {
                u.last = u.last.max(Some(seq));
                new_epoch_seen(&mut u.epoch, epoch).then(|| u.shards.clone())
            }
            None => None,
        };
        if let Some(shards) = lost {
            self.lost(&shards, &stream);
        }
        if cursor < seq {
            let read = Read::Inbox {
                user,
                to,
                after: cursor,
                upto: seq,
            };
            self.persist.send(vec![Op::Read(read)]);
        } else {
            self.send(conn.shard(), replay(stream, to, seq, seq, true));
        }
    }
}
