//! The Redis engine's requests and subscription, on the engine thread.
//!
//! Requests (`Req`) are taken in order: each first updates this node's own bookkeeping (which
//! local connections are in which room, which users have sessions here), then runs its script
//! as a task, so commands leave in request order and the multiplexer pipelines those issued
//! together (one round trip for a pass of publishes). Pub/sub messages arrive on the
//! subscription task, are encoded into a frame once, and go to the shards with members as
//! `NodeMsg::Deliver`. It must not touch connections or hub state.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use ahash::{AHashMap, AHashSet};
use bytes::Bytes;
use redis::{PushInfo, PushKind, RedisError, RedisResult, Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::keys::{Channel, Keys};
use super::link::{Cmds, Subs, Target};
use super::wire::Wire;
use super::{RedisCounters, Req};
use crate::config::{Config, SessionPolicy};
use crate::error::{CloseCode, ErrorCode, HandshakeError, ReplyError};
use crate::health::Health;
use crate::msg::{
    ConnId, EngineMsg, JoinGen, LocalMsg, NodeId, NodeMsg, ReplayTo, ReplyTo, ShardId,
};
use crate::persist::{Op, Persist, Read};
use crate::protocol::encode::{self, Recovery, Target as To};
use crate::protocol::{Name, ReqId};
use crate::store::Stream;
use crate::ws;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// The heartbeat a node publishes to itself; its subscription is dead after `SILENT`.
const BEAT: Duration = Duration::from_secs(1);
const SILENT: Duration = Duration::from_secs(3);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What `connect` found: the node id and the first command connection.
pub struct Boot {
    pub node: NodeId,
    cmds: Cmds,
}

impl Boot {
    pub async fn connect(
        url: &str,
        timeout: Duration,
        keys: &Keys,
        node: Option<NodeId>,
    ) -> RedisResult<(Target, Boot)> {
        let target = Target::find(url, timeout).await?;
        let mut cmds = target.commands().await?;
        let node = match node {
            Some(n) => n,
            None => {
                let n: u64 = cmds.query(redis::cmd("INCR").arg(keys.node_ids())).await?;
                ((n - 1) % ConnId::MAX_NODES as u64) as NodeId
            }
        };
        cmds.set_name(&format!("{}-cmd-{node}", keys.prefix()))
            .await?;
        Ok((target, Boot { node, cmds }))
    }
}

struct Scripts {
    publish: Script,
    join: Script,
    leave: Script,
    refresh: Script,
    presence: Script,
    register: Script,
    online: Script,
    cursor: Script,
    sessions: Script,
    unregister: Script,
}

macro_rules! presence_script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/common.lua"), include_str!($file)))
    };
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            publish: presence_script!("lua/publish.lua"),
            join: presence_script!("lua/join.lua"),
            leave: presence_script!("lua/leave.lua"),
            refresh: presence_script!("lua/refresh.lua"),
            presence: presence_script!("lua/presence.lua"),
            register: Script::new(include_str!("lua/register.lua")),
            online: Script::new(include_str!("lua/online.lua")),
            cursor: Script::new(include_str!("lua/cursor.lua")),
            sessions: Script::new(include_str!("lua/sessions.lua")),
            unregister: Script::new(
                "redis.call('ZREM', KEYS[1], ARGV[1]) redis.call('ZREM', KEYS[2], ARGV[1]) return 1",
            ),
        }
    }
}

/// This node's members of one room.
#[derive(Default)]
struct Room {
    /// Local connections in the room, with their user and join generation.
    members: AHashMap<ConnId, (Name, JoinGen)>,
    /// Members per shard.
    shards: Vec<u32>,
    /// The newest seq this node knows the room has (from pub/sub or a join).
    last: u64,
    subscribed: bool,
    /// Joins whose script has not answered yet; while any is out, frames handed on are kept
    /// in `recent`, and sent again after the join's `JoinDone` (see `joined`).
    pending: u32,
    recent: Vec<(u64, Bytes, Option<ConnId>)>,
}

/// This node's connections of one user.
#[derive(Default)]
struct User {
    sessions: AHashSet<ConnId>,
    online: AHashSet<ConnId>,
    /// Sessions per shard.
    shards: Vec<u32>,
    last: u64,
    subscribed: bool,
}

#[derive(Default)]
struct State {
    rooms: AHashMap<Name, Room>,
    users: AHashMap<Name, User>,
}

pub struct Node {
    node: NodeId,
    keys: Keys,
    target: Target,
    config: Arc<Config>,
    router: Router,
    persist: Persist,
    health: Arc<Health>,
    counters: Arc<RedisCounters>,
    scripts: Scripts,
    cmds: RefCell<Option<Cmds>>,
    reconnecting: Cell<bool>,
    subs: RefCell<Option<Subs>>,
    state: RefCell<State>,
    /// When this node's own heartbeat last came back over pub/sub.
    beat: Cell<Instant>,
}

use crate::router::Router;

fn now_ms() -> u64 {
    crate::shard::now_ms()
}

fn unavailable() -> ReplyError {
    ReplyError::new(
        ErrorCode::Unavailable,
        "Redis did not answer; the message was not stored or delivered",
    )
}

impl Node {
    pub fn new(
        boot: Boot,
        target: Target,
        config: Arc<Config>,
        router: Router,
        persist: Persist,
        health: Arc<Health>,
        counters: Arc<RedisCounters>,
    ) -> Node {
        Node {
            node: boot.node,
            keys: Keys::new(&config.redis_prefix),
            target,
            config,
            router,
            persist,
            health,
            counters,
            scripts: Scripts::new(),
            cmds: RefCell::new(Some(boot.cmds)),
            reconnecting: Cell::new(false),
            subs: RefCell::new(None),
            state: RefCell::default(),
            beat: Cell::new(Instant::now()),
        }
    }

    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Req>) {
        let me = Rc::new(self);
        tokio::task::spawn_local(me.clone().subscriber());
        tokio::task::spawn_local(me.clone().refresher());
        while let Some(req) = rx.recv().await {
            me.take(req);
        }
    }

    fn spawn(self: &Rc<Self>, f: impl std::future::Future<Output = ()> + 'static) {
        tokio::task::spawn_local(f);
    }

    // ----- Redis calls ------------------------------------------------------------------------

    fn publish_cmd(&self) -> &'static str {
        if self.target.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Runs a script; `None` (counted, and logged once per outage) when Redis failed.
    async fn script<T: redis::FromRedisValue>(
        self: &Rc<Self>,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut c = self.cmds.borrow().clone()?;
        let r = c.run(inv).await;
        self.outcome(r)
    }

    async fn query<T: redis::FromRedisValue>(self: &Rc<Self>, cmd: redis::Cmd) -> Option<T> {
        let mut c = self.cmds.borrow().clone()?;
        let r = c.query(&cmd).await;
        self.outcome(r)
    }

    fn outcome<T>(self: &Rc<Self>, r: RedisResult<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.counters.round_trips.fetch_add(1, Relaxed);
                Some(v)
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Relaxed);
                if lost_link(&e) {
                    self.link_lost(&e);
                } else {
                    tracing::warn!(error = %e, "redis command failed");
                }
                None
            }
        }
    }

    /// The command connection failed: Redis is unreachable until a reconnect succeeds.
    fn link_lost(self: &Rc<Self>, e: &RedisError) {
        if self.cmds.borrow_mut().take().is_some() {
            tracing::error!(error = %e, "lost the connection to Redis; reconnecting");
            self.health.redis_reachable(false);
        }
        if !self.reconnecting.replace(true) {
            let me = self.clone();
            self.spawn(async move {
                let mut wait = Duration::from_millis(100);
                loop {
                    tokio::time::sleep(wait).await;
                    match me.target.commands().await {
                        Ok(mut c) => {
                            let name = format!("{}-cmd-{}", me.keys.prefix(), me.node);
                            if c.set_name(&name).await.is_ok() {
                                *me.cmds.borrow_mut() = Some(c);
                                break;
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "Redis still unreachable"),
                    }
                    wait = (wait * 2).min(BACKOFF_MAX);
                }
                me.reconnecting.set(false);
                me.health.redis_reachable(true);
                tracing::info!("reconnected to Redis");
            });
        }
    }

    fn send(&self, shard: ShardId, msg: impl Into<crate::msg::ShardMsg>) {
        self.router.send(shard, msg);
    }

    fn answer(&self, (shard, msg): (ShardId, NodeMsg)) {
        self.send(shard, msg);
    }

    fn expiry(&self) -> u64 {
        now_ms() + self.config.presence_ttl_secs * 1000
    }

    fn events(&self) -> &'static str {
        if self.config.presence_events {
            "1"
        } else {
            "0"
        }
    }

    /// A new epoch for a stream that starts one: random, and exact in a JavaScript number.
    fn new_epoch() -> u64 {
        let r = ahash::RandomState::new().hash_one(Instant::now());
        (r & ((1 << 52) - 1)).max(1)
    }

    // ----- requests ---------------------------------------------------------------------------

    fn take(self: &Rc<Self>, req: Req) {
        match req {
            Req::Engine(m) => self.serve(m),
            Req::Broadcast { json, reply } => {
                let me = self.clone();
                self.spawn(async move {
                    let wire = Wire::Broadcast {
                        from: me.node,
                        json,
                    };
                    let cmd = me.publish(me.keys.control(), &wire);
                    let _ = reply.send(me.query::<u64>(cmd).await);
                });
            }
            Req::Kick {
                user,
                reason,
                reply,
            } => {
                let me = self.clone();
                self.spawn(async move {
                    let cmd =
                        me.publish(me.keys.channel(&Stream::Inbox(user)), &Wire::Kick(reason));
                    let _ = reply.send(me.query::<u64>(cmd).await);
                });
            }
            Req::Totals { reply } => {
                let me = self.clone();
                self.spawn(async move {
                    let _ = reply.send(me.totals().await);
                });
            }
        }
    }

    fn publish(&self, channel: String, wire: &Wire) -> redis::Cmd {
        let mut cmd = redis::cmd(self.publish_cmd());
        cmd.arg(channel).arg(wire.encode());
        cmd
    }

    fn serve(self: &Rc<Self>, msg: EngineMsg) {
        let me = self.clone();
        match msg {
            EngineMsg::Register { user, conn } => {
                self.add_session(&user, conn);
                self.spawn(async move { me.register(user, conn).await });
            }
            EngineMsg::Unregister { user, conn } => {
                self.remove_session(&user, conn);
                self.spawn(async move {
                    let (conns, online) = me.keys.sessions(&user);
                    let mut inv = me.scripts.unregister.prepare_invoke();
                    inv.key(conns).key(online).arg(conn.raw());
                    me.script::<i64>(&inv).await;
                });
            }
            EngineMsg::Online { user, conn } => {
                if let Some(u) = self.state.borrow_mut().users.get_mut(&user) {
                    u.online.insert(conn);
                }
                self.spawn(async move { me.online(user, conn).await });
            }
            EngineMsg::InboxHanded {
                user,
                after,
                upto,
                ok,
            } => {
                if ok && upto > after {
                    self.spawn(async move {
                        let meta = me.keys.meta(&Stream::Inbox(user));
                        let mut inv = me.scripts.cursor.prepare_invoke();
                        inv.key(meta).arg(upto);
                        me.script::<i64>(&inv).await;
                    });
                }
            }
            EngineMsg::Join {
                room,
                user,
                conn,
                jgen,
                id,
                ack,
                since,
                epoch,
            } => {
                self.add_member(&room, &user, conn, jgen);
                self.spawn(
                    async move { me.join(room, user, conn, jgen, id, ack, since, epoch).await },
                );
            }
            EngineMsg::Leave { room, user, conn } => {
                self.remove_member(&room, conn);
                self.spawn(async move {
                    let (pz, pu) = me.keys.presence(&room);
                    let stream = Stream::Room(room.clone());
                    let mut inv = me.scripts.leave.prepare_invoke();
                    inv.key(pz)
                        .key(pu)
                        .arg(format!("{user} {}", conn.raw()))
                        .arg(user.as_str())
                        .arg(now_ms())
                        .arg(me.keys.channel(&stream))
                        .arg(me.publish_cmd())
                        .arg(room.as_str())
                        .arg(me.events());
                    me.script::<i64>(&inv).await;
                });
            }
            EngineMsg::Publish {
                room,
                from,
                body,
                reply,
            } => self.spawn(async move { me.message(Stream::Room(room), from, body, reply).await }),
            EngineMsg::Direct {
                to,
                from,
                body,
                reply,
            } => self.spawn(async move { me.message(Stream::Inbox(to), from, body, reply).await }),
            EngineMsg::Forward {
                user,
                frame,
                exclude,
            } => self.spawn(async move {
                let wire = Wire::Forward {
                    exclude,
                    json: ws::payload_of(&frame),
                };
                let cmd = me.publish(me.keys.channel(&Stream::Inbox(user)), &wire);
                me.query::<u64>(cmd).await;
            }),
            EngineMsg::Presence { room, reply } => {
                self.spawn(async move { me.presence(room, reply).await })
            }
            EngineMsg::UserInfo { user, reply } => self.spawn(async move {
                let (conns, _) = me.keys.sessions(&user);
                let mut cmd = redis::cmd("ZCOUNT");
                cmd.arg(conns).arg(now_ms()).arg("+inf");
                let answer = match me.query::<u64>(cmd).await {
                    Some(n) => reply.answer(
                        |_| Bytes::new(),
                        || {
                            let body = serde_json::json!({
                                "user": &*user, "online": n > 0, "connections": n
                            });
                            body.to_string().into()
                        },
                    ),
                    None => reply.fail(unavailable()),
                };
                me.answer(answer);
            }),
            EngineMsg::Fetch {
                stream,
                after,
                upto,
                to,
            } => self.persist.send(vec![Op::Read(Read::Range {
                stream,
                after,
                upto,
                to,
            })]),
        }
    }

    // ----- sessions ---------------------------------------------------------------------------

    fn add_session(self: &Rc<Self>, user: &Name, conn: ConnId) {
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

    fn remove_session(self: &Rc<Self>, user: &Name, conn: ConnId) {
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

    async fn register(self: Rc<Self>, user: Name, conn: ConnId) {
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
            .arg(self.expiry())
            .arg(now_ms())
            .arg(policy)
            .arg(self.config.max_connections_per_user)
            .arg(self.keys.channel(&stream))
            .arg(self.publish_cmd());
        let verdict = match self.script::<Vec<i64>>(&inv).await.as_deref() {
            Some([0, seq]) => Ok(*seq as u64),
            Some([-1]) => Err(HandshakeError::ConnectionLimit(
                self.config.max_connections_per_user,
            )),
            Some([-2]) => Err(HandshakeError::SessionExists),
            _ => Err(HandshakeError::Unavailable),
        };
        if verdict.is_err() {
            self.remove_session(&user, conn);
        }
        self.send(conn.shard(), NodeMsg::Admitted { conn, verdict });
    }

    async fn online(self: Rc<Self>, user: Name, conn: ConnId) {
        let stream = Stream::Inbox(user.clone());
        self.subscribed(stream.clone()).await;
        let (_, online) = self.keys.sessions(&user);
        let mut inv = self.scripts.online.prepare_invoke();
        inv.key(online)
            .key(self.keys.meta(&stream))
            .arg(conn.raw())
            .arg(self.expiry());
        let to = ReplayTo::Conn { conn, jgen: 0 };
        let Some([seq, cursor]) = self.script::<Vec<u64>>(&inv).await.as_deref().map(pair) else {
            // The hub closes the connection (1011): it cannot be caught up.
            let msg = replay(stream, to, 0, 0, false);
            return self.send(conn.shard(), msg);
        };
        if let Some(u) = self.state.borrow_mut().users.get_mut(&user) {
            u.last = u.last.max(seq);
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

    // ----- rooms ------------------------------------------------------------------------------

    fn add_member(self: &Rc<Self>, room: &Name, user: &Name, conn: ConnId, jgen: JoinGen) {
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

    fn remove_member(self: &Rc<Self>, room: &Name, conn: ConnId) {
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

    #[allow(clippy::too_many_arguments)]
    async fn join(
        self: Rc<Self>,
        room: Name,
        user: Name,
        conn: ConnId,
        jgen: JoinGen,
        id: Option<ReqId>,
        ack: bool,
        since: Option<u64>,
        epoch: Option<u64>,
    ) {
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
        // A `since` from another epoch is history this room no longer has: replay all of it.
        let lost = epoch.is_some_and(|e| e != now_epoch);
        let since = if lost { Some(0) } else { since };
        let replay = since.is_some_and(|s| s < seq);
        let ack = (ack && !replay).then(|| {
            let frame = match since {
                Some(since) => {
                    let recovery = Recovery {
                        recovered: since == seq && !lost,
                        ..Recovery::default()
                    };
                    encode::join_ack(id.as_ref(), &room, seq, recovery)
                }
                None => encode::ack(id.as_ref(), To::Room(&room), Some(seq)),
            };
            encode::with_epoch(&frame, now_epoch)
        });
        let done = NodeMsg::JoinDone {
            room: room.clone(),
            conn,
            jgen,
            seq,
            ack,
            replay,
        };
        self.send(conn.shard(), done);
        if let (true, Some(since)) = (replay, since) {
            let read = Read::Join {
                room: room.clone(),
                to: ReplayTo::Conn { conn, jgen },
                id,
                since,
                upto: seq,
                epoch: Some(now_epoch),
                lost,
            };
            self.persist.send(vec![Op::Read(read)]);
        }
        self.join_ended(&room, Some((conn.shard(), seq)));
    }

    /// A join's script answered: frames handed on while it was out, after its seq, go to its
    /// shard again (the hub may have had no room to hand them to yet; it drops repeats).
    fn join_ended(&self, room: &Name, done: Option<(ShardId, u64)>) {
        let mut st = self.state.borrow_mut();
        let Some(r) = st.rooms.get_mut(room) else {
            return;
        };
        if let Some((shard, seq)) = done {
            r.last = r.last.max(seq);
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
        }
    }

    async fn presence(self: Rc<Self>, room: Name, reply: ReplyTo) {
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
        let mut users: Vec<Name> = users.iter().filter_map(|u| Name::new(u).ok()).collect();
        users.sort();
        let answer = reply.answer(
            |id| encode::presence(id, &room, users.iter()),
            || {
                let users: Vec<&str> = users.iter().map(|u| &**u).collect();
                let body = serde_json::json!({ "room": &*room, "users": users });
                body.to_string().into()
            },
        );
        self.answer(answer);
    }

    // ----- messages ---------------------------------------------------------------------------

    /// Sequences, stores and publishes a room message or a direct message, and acks it.
    async fn message(self: Rc<Self>, stream: Stream, from: Name, body: Bytes, reply: ReplyTo) {
        let ts = now_ms();
        let target = match &stream {
            Stream::Room(room) => To::Room(room),
            Stream::Inbox(to) => To::User(to),
        };
        let (head, tail) = encode::message_parts(target, &from, ts, &body);
        let (messages, secs) = match &stream {
            Stream::Room(room) => self.config.room_retention_of(room),
            Stream::Inbox(_) => (
                self.config.inbox_retention_messages,
                self.config.inbox_retention_secs,
            ),
        };
        let oldest = match secs {
            0 => 0,
            s => ts.saturating_sub(s * 1000).max(1),
        };
        let inbox = matches!(stream, Stream::Inbox(_));
        let meta = self.keys.meta(&stream);
        let online = match &stream {
            Stream::Inbox(user) => self.keys.sessions(user).1,
            Stream::Room(_) => meta.clone(),
        };
        let publisher = reply.conn();
        let mut inv = self.scripts.publish.prepare_invoke();
        inv.key(&meta)
            .key(self.keys.log(&stream))
            .key(online)
            .arg(self.keys.channel(&stream))
            .arg(self.publish_cmd())
            .arg(&head[..])
            .arg(&tail[..])
            .arg(ts)
            .arg(publisher.map(|c| c.raw().to_string()).unwrap_or_default())
            .arg(messages)
            .arg(oldest)
            .arg(if inbox { "1" } else { "0" })
            .arg(now_ms())
            .arg(Self::new_epoch());
        let Some((seq, _epoch)) = self.script::<(u64, u64)>(&inv).await else {
            return self.answer(reply.fail(unavailable()));
        };
        let seq_json = || Bytes::from(format!("{{\"seq\":{seq}}}"));
        let ack = reply.answer(
            |id| encode::ack(id, target_of(&stream), Some(seq)),
            seq_json,
        );
        self.answer(ack);
        if let Stream::Inbox(to) = &stream
            && *to != from
        {
            // The sender's other connections get a copy, outside their own inbox's order.
            let mut json = Vec::with_capacity(head.len() + 20 + tail.len());
            json.extend_from_slice(&head);
            json.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
            json.extend_from_slice(&tail);
            let wire = Wire::Forward {
                exclude: publisher,
                json: json.into(),
            };
            let cmd = self.publish(self.keys.channel(&Stream::Inbox(from)), &wire);
            self.query::<u64>(cmd).await;
        }
    }

    // ----- the subscription ---------------------------------------------------------------------

    /// Subscribes to a stream's channel in the background (the subscription task covers it
    /// if the connection is down).
    fn ensure_sub(self: &Rc<Self>, stream: Stream) {
        let me = self.clone();
        self.spawn(async move { me.subscribed(stream).await });
    }

    /// Returns once the stream's channel is subscribed, or the subscription is down (then the
    /// subscription task subscribes it and fills the gap when it is back).
    async fn subscribed(self: &Rc<Self>, stream: Stream) {
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

    fn is_subscribed(&self, stream: &Stream) -> bool {
        let st = self.state.borrow();
        match stream {
            Stream::Room(r) => st.rooms.get(r).is_none_or(|r| r.subscribed),
            Stream::Inbox(u) => st.users.get(u).is_none_or(|u| u.subscribed),
        }
    }

    fn unsubscribe(self: &Rc<Self>, stream: Stream) {
        let Some(mut subs) = self.subs.borrow().clone() else {
            return;
        };
        let channel = self.keys.channel(&stream);
        self.spawn(async move {
            let _ = subs.unsubscribe(&channel).await;
        });
    }

    /// The subscription task: connects, subscribes to everything this node needs, fills what
    /// was missed while it was down, then hands on what arrives. A connection that drops, or
    /// stays up but stops delivering this node's own heartbeat, is replaced.
    async fn subscriber(self: Rc<Self>) {
        let mut wait = Duration::from_millis(100);
        let mut first = true;
        loop {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let name = format!("{}-sub-{}", self.keys.prefix(), self.node);
            let subs = match self.target.subscriber(&name, tx).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open the subscription connection");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            *self.subs.borrow_mut() = Some(subs.clone());
            if self.subscribe_all(subs).await.is_err() {
                *self.subs.borrow_mut() = None;
                tokio::time::sleep(wait).await;
                continue;
            }
            wait = Duration::from_millis(100);
            self.beat.set(Instant::now());
            if !first {
                self.counters.pubsub_reconnects.fetch_add(1, Relaxed);
                tracing::info!("resubscribed to Redis; filling what was missed");
                self.fill_all();
            }
            first = false;
            let mut tick = tokio::time::interval(BEAT);
            loop {
                tokio::select! {
                    push = rx.recv() => match push {
                        Some(p) if p.kind == PushKind::Disconnection => break,
                        Some(p) => self.on_push(p),
                        None => break,
                    },
                    _ = tick.tick() => {
                        self.heartbeat();
                        if self.beat.get().elapsed() > SILENT && self.cmds.borrow().is_some() {
                            tracing::warn!("the subscription connection went silent; replacing it");
                            break;
                        }
                    }
                }
            }
            *self.subs.borrow_mut() = None;
            let mut st = self.state.borrow_mut();
            st.rooms.values_mut().for_each(|r| r.subscribed = false);
            st.users.values_mut().for_each(|u| u.subscribed = false);
        }
    }

    async fn subscribe_all(&self, mut subs: Subs) -> RedisResult<()> {
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
    /// read from Redis and handed on as if they had arrived (the hubs drop repeats).
    fn fill_all(self: &Rc<Self>) {
        let streams: Vec<(Stream, u64)> = {
            let st = self.state.borrow();
            let rooms = st
                .rooms
                .iter()
                .map(|(r, s)| (Stream::Room(r.clone()), s.last));
            let users = (st.users.iter()).map(|(u, s)| (Stream::Inbox(u.clone()), s.last));
            rooms.chain(users).filter(|(_, last)| *last > 0).collect()
        };
        for (stream, last) in streams {
            let me = self.clone();
            self.spawn(async move {
                let mut cmd = redis::cmd("XRANGE");
                cmd.arg(me.keys.log(&stream))
                    .arg(format!("{}-0", last + 1))
                    .arg("+")
                    .arg("COUNT")
                    .arg(me.config.replay_limit);
                let Some(entries) = me.query::<Value>(cmd).await else {
                    return;
                };
                for (seq, json) in log_entries(entries) {
                    me.counters.gap_fills.fetch_add(1, Relaxed);
                    me.hand_on(
                        &stream,
                        Wire::Message {
                            seq,
                            exclude: None,
                            json,
                        },
                    );
                }
            });
        }
    }

    fn heartbeat(self: &Rc<Self>) {
        let me = self.clone();
        self.spawn(async move {
            let cmd = me.publish(me.keys.node(me.node), &Wire::Heartbeat);
            me.query::<u64>(cmd).await;
        });
    }

    fn on_push(self: &Rc<Self>, p: PushInfo) {
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
        let Some(channel) = std::str::from_utf8(&channel)
            .ok()
            .and_then(|c| self.keys.parse(c))
        else {
            return;
        };
        let Some(wire) = Wire::parse(Bytes::from(payload)) else {
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
                    self.router.broadcast(|| LocalMsg::Broadcast {
                        frame: frame.clone(),
                        reply: oneshot::channel().0,
                    });
                }
            }
            Channel::Stream(stream) => self.hand_on(&stream, wire),
        }
    }

    /// A stream's message or event: encoded into a frame once, and handed to the shards with
    /// members (a room's) or sessions (a user's).
    fn hand_on(&self, stream: &Stream, wire: Wire) {
        let mut st = self.state.borrow_mut();
        let (shards, seq, json, exclude) = match (stream, wire) {
            (Stream::Room(room), wire) => {
                let Some(r) = st.rooms.get_mut(room) else {
                    return;
                };
                let (seq, json, exclude) = match wire {
                    Wire::Message { seq, exclude, json } => (Some(seq), json, exclude),
                    Wire::Event { exclude, json } => (None, json, exclude),
                    _ => return,
                };
                if let Some(seq) = seq {
                    r.last = r.last.max(seq);
                }
                let frame = ws::text_frames(std::iter::once(&json[..]));
                if let (Some(seq), true) = (seq, r.pending > 0) {
                    r.recent.push((seq, frame.clone(), exclude));
                }
                return self.deliver(&r.shards, stream, seq, frame, exclude);
            }
            (Stream::Inbox(user), wire) => {
                let Some(u) = st.users.get_mut(user) else {
                    return;
                };
                match wire {
                    Wire::Message { seq, exclude, json } => {
                        u.last = u.last.max(seq);
                        (u.shards.clone(), Some(seq), json, exclude)
                    }
                    Wire::Forward { exclude, json } => (u.shards.clone(), None, json, exclude),
                    Wire::CloseOthers(except) => {
                        for (shard, _) in u.shards.iter().enumerate().filter(|s| *s.1 > 0) {
                            let msg = NodeMsg::CloseUser {
                                user: user.clone(),
                                except,
                                code: CloseCode::Replaced,
                            };
                            self.router.send(shard, msg);
                        }
                        return;
                    }
                    Wire::Kick(reason) => {
                        for (shard, _) in u.shards.iter().enumerate().filter(|s| *s.1 > 0) {
                            let msg = LocalMsg::Kick {
                                user: user.clone(),
                                reason: Some(reason.clone()).filter(|r| !r.is_empty()),
                                reply: oneshot::channel().0,
                            };
                            self.router.send(shard, msg);
                        }
                        return;
                    }
                    _ => return,
                }
            }
        };
        drop(st);
        let frame = ws::text_frames(std::iter::once(&json[..]));
        self.deliver(&shards, stream, seq, frame, exclude);
    }

    fn deliver(
        &self,
        shards: &[u32],
        stream: &Stream,
        seq: Option<u64>,
        frame: Bytes,
        exclude: Option<ConnId>,
    ) {
        for (shard, _) in shards.iter().enumerate().filter(|s| *s.1 > 0) {
            let msg = NodeMsg::Deliver {
                stream: stream.clone(),
                seq,
                frame: frame.clone(),
                exclude,
            };
            self.router.send(shard, msg);
        }
    }

    // ----- refresh and totals -----------------------------------------------------------------

    /// Every third of the presence TTL: this node's presence entries and sessions are
    /// refreshed (and expired ones of dead nodes purged, with `left` events); every second its
    /// figures for the cluster's totals.
    async fn refresher(self: Rc<Self>) {
        let every = Duration::from_millis(self.config.presence_ttl_secs * 1000 / 3);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_refresh = Instant::now();
        loop {
            tick.tick().await;
            self.report();
            if last_refresh.elapsed() >= every {
                last_refresh = Instant::now();
                self.refresh();
            }
        }
    }

    fn refresh(self: &Rc<Self>) {
        let expiry = self.expiry().to_string();
        let now = now_ms().to_string();
        let st = self.state.borrow();
        for (room, r) in &st.rooms {
            let (pz, pu) = self.keys.presence(room);
            let mut args = vec![
                expiry.clone(),
                now.clone(),
                self.keys.channel(&Stream::Room(room.clone())),
                self.publish_cmd().to_owned(),
                room.to_string(),
                self.events().to_owned(),
            ];
            args.extend(
                (r.members.iter()).map(|(conn, (user, _))| format!("{user} {}", conn.raw())),
            );
            self.run_later(|s| &s.refresh, vec![pz, pu], args);
        }
        for (user, u) in &st.users {
            let (conns, online) = self.keys.sessions(user);
            let mut args = vec![expiry.clone(), u.sessions.len().to_string()];
            args.extend(
                u.sessions
                    .iter()
                    .chain(u.online.iter())
                    .map(|c| c.raw().to_string()),
            );
            self.run_later(|s| &s.sessions, vec![conns, online], args);
        }
    }

    /// Runs one of the scripts in the background, on owned keys and arguments.
    fn run_later(
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
            me.script::<i64>(&inv).await;
        });
    }

    /// Writes this node's figures for the cluster totals.
    fn report(self: &Rc<Self>) {
        let (connections, rooms) = {
            let st = self.state.borrow();
            let conns: usize = st.users.values().map(|u| u.sessions.len()).sum();
            (conns, st.rooms.len())
        };
        let figures = serde_json::json!({
            "ts": now_ms(), "connections": connections, "rooms": rooms,
        });
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.nodes())
            .arg(self.node)
            .arg(figures.to_string());
        let me = self.clone();
        self.spawn(async move {
            me.query::<u64>(cmd).await;
        });
    }

    /// The live nodes' latest figures, summed (a node silent for a presence TTL is gone).
    async fn totals(self: &Rc<Self>) -> Option<serde_json::Value> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.nodes());
        let all: Vec<(u64, String)> = self.query(cmd).await?;
        let fresh = now_ms().saturating_sub(self.config.presence_ttl_secs * 1000);
        let (mut nodes, mut connections) = (Vec::new(), 0);
        for (node, figures) in all {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&figures) else {
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

fn target_of(stream: &Stream) -> To<'_> {
    match stream {
        Stream::Room(r) => To::Room(r),
        Stream::Inbox(u) => To::User(u),
    }
}

fn pair(v: &[u64]) -> [u64; 2] {
    [
        v.first().copied().unwrap_or(0),
        v.get(1).copied().unwrap_or(0),
    ]
}

fn replay(stream: Stream, to: ReplayTo, after: u64, upto: u64, ok: bool) -> NodeMsg {
    NodeMsg::Replay {
        stream,
        to,
        after,
        upto,
        ack: None,
        frames: Bytes::new(),
        ok,
    }
}

/// Whether an error means the connection itself is gone (rather than one command failing).
fn lost_link(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
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
