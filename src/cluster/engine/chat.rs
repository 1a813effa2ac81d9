//! Signals and read positions in the Redis engine (issue 23). A signal is one `PUBLISH` on the
//! room's channel (`s`), never a stream entry. A read position is a field of the user's reads
//! hash, moved forward by `read.lua`, which also tells the user's other connections (`r` on the
//! user's channel). Receipts are coalesced per node: at most one per room and user per
//! `read_interval_ms` leaves this node.

use super::*;
use crate::msg::ReadMove;

impl Node {
    pub(super) async fn signal(self: Rc<Self>, room: Name, frame: Bytes, exclude: Option<ConnId>) {
        let wire = Wire::Signal {
            exclude,
            json: ws::payload_of(&frame),
        };
        let cmd = self.publish(self.keys.channel(&Stream::Room(room)), &wire);
        self.query::<u64>(cmd).await;
    }

    /// A signal (or receipt) heard on a room's channel: to the shards with members.
    pub(super) fn signal_heard(
        &self,
        shards: &[u32],
        room: &Name,
        json: &[u8],
        exclude: Option<ConnId>,
    ) {
        let frame = ws::text_frames(std::iter::once(json));
        for shard in crate::engine::shards_with(shards) {
            let msg = NodeMsg::Signal {
                room: room.clone(),
                frame: frame.clone(),
                exclude,
            };
            self.router.send(shard, msg);
        }
    }

    /// The user's read position moved (heard on the user's channel).
    pub(super) fn read_heard(
        &self,
        shards: &[u32],
        user: &Name,
        room: Option<Name>,
        seq: u64,
        exclude: Option<ConnId>,
    ) {
        let stream = room.map_or_else(|| Stream::Inbox(user.clone()), Stream::Room);
        for shard in crate::engine::shards_with(shards) {
            let msg = NodeMsg::ReadMoved {
                user: user.clone(),
                stream: stream.clone(),
                seq,
                exclude,
            };
            self.router.send(shard, msg);
        }
    }

    /// The user's positions, for a connection being admitted.
    pub(super) async fn reads_of(self: &Rc<Self>, user: &Name) -> Vec<(Stream, u64)> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.reads(user));
        let all = self
            .query::<Vec<(String, u64)>>(cmd)
            .await
            .unwrap_or_default();
        all.into_iter()
            .filter_map(|(field, seq)| Some((stream_of(user, &field)?, seq)))
            .collect()
    }

    pub(super) async fn read(self: Rc<Self>, mut read: ReadMove) {
        let room = read.room().cloned();
        let field = room
            .as_ref()
            .map_or_else(|| "i".to_owned(), |r| format!("r:{r}"));
        let inbox = Stream::Inbox(read.user.clone());
        let mut inv = self.scripts.read.prepare_invoke();
        inv.key(self.keys.reads(&read.user))
            .key(self.keys.meta(&inbox))
            .arg(&field)
            .arg(read.seq)
            .arg(if room.is_none() { "1" } else { "0" })
            .arg(self.keys.channel(&inbox))
            .arg("")
            .arg(read.conn.raw())
            .arg(room.as_ref().map_or("", |r| r.as_str()))
            .arg(self.publish_cmd());
        let held = self.script::<u64>(&inv).await;
        if let Some(reply) = read.reply.take() {
            self.answer(match held {
                Some(at) => reply.read_ack(room.as_ref(), at),
                None => reply.fail(ReplyError::new(
                    ErrorCode::Unavailable,
                    "Redis is unreachable; the read position was not kept, send it again",
                )),
            });
        }
        if let (true, Some(room), Some(at)) = (read.receipts, room, held) {
            self.receipt(room, read.user, at);
        }
    }

    /// A receipt now, or when the last one for (room, user) is `read_interval_ms` old.
    fn receipt(self: &Rc<Self>, room: Name, user: Name, seq: u64) {
        let every = Duration::from_millis(self.config.read_interval_ms);
        let wait = {
            let mut st = self.state.borrow_mut();
            let now = Instant::now();
            let entry = st
                .receipts
                .entry((room.clone(), user.clone()))
                .or_insert((now - every, None));
            let due = entry.0 + every;
            if due <= now {
                *entry = (now, None);
                None
            } else {
                let waiting = entry.1.replace(seq).is_some();
                if waiting {
                    return;
                }
                Some(due - now)
            }
        };
        let me = self.clone();
        self.spawn(async move {
            let seq = match wait {
                None => seq,
                Some(wait) => {
                    tokio::time::sleep(wait).await;
                    let mut st = me.state.borrow_mut();
                    let Some(entry) = st.receipts.get_mut(&(room.clone(), user.clone())) else {
                        return;
                    };
                    let Some(seq) = entry.1.take() else { return };
                    entry.0 = Instant::now();
                    seq
                }
            };
            let frame = encode::receipt(&room, &user, seq);
            me.signal(room, frame, None).await;
        });
    }

    /// `GET /api/users/{user}/unread`: the positions with each stream's last seq.
    pub(super) async fn unread(self: Rc<Self>, user: Name, reply: ReplyTo) {
        let reads = self.reads_of(&user).await;
        let inbox = Stream::Inbox(user.clone());
        let last = |stream: Stream| {
            let me = self.clone();
            async move {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(me.keys.meta(&stream)).arg("seq");
                me.query::<Option<u64>>(cmd).await.flatten().unwrap_or(0)
            }
        };
        let entry = |seq: u64, read: u64| serde_json::json!({"seq": seq, "read": read, "unread": seq.saturating_sub(read)});
        let mut inbox_read = 0;
        let mut rooms = serde_json::Map::new();
        for (stream, read) in reads {
            match stream {
                Stream::Inbox(_) => inbox_read = read,
                Stream::Room(room) => {
                    let seq = last(Stream::Room(room.clone())).await.max(read);
                    rooms.insert(room.to_string(), entry(seq, read));
                }
            }
        }
        let inbox_seq = last(inbox).await;
        let body = serde_json::json!({
            "user": &*user, "inbox": entry(inbox_seq, inbox_read), "rooms": rooms,
        });
        self.answer(reply.answer(|_| Bytes::new(), || body.to_string().into()));
    }
}

/// The stream of a reads-hash field.
fn stream_of(user: &Name, field: &str) -> Option<Stream> {
    match field.strip_prefix("r:") {
        Some(room) => Name::new(room).ok().map(Stream::Room),
        None => (field == "i").then(|| Stream::Inbox(user.clone())),
    }
}
