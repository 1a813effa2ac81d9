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

use super::Req;
use super::keys::{Channel, Keys};
use super::link::{Cmds, Subs, Target, slot};
use super::wire::Wire;
use crate::config::{Config, PresenceMode, Rule, SessionPolicy};
use crate::core::Stream;
use crate::core::counters::RedisCounters;
use crate::core::error::{CloseCode, ErrorCode, HandshakeError, ReplyError};
use crate::core::health::Health;
use crate::core::now_ms;
use crate::core::{ConnId, JoinGen, NodeId, ShardId};
use crate::core::{MsgKey, Name};
use crate::engine::Joined;
use crate::engine::NodesCall;
use crate::msg::{LocalMsg, NodeMsg, Own, PresencePage, Replay, ReplayTo, ReplyTo};
use crate::persist::{Op, Persist, Read};
use crate::protocol::encode::{self, Target as To};
use crate::router::Router;
use crate::ws;

mod batch;
mod chat;
mod dispatch;
mod events;
mod failover;
mod feed;
mod listen;
mod messages;
mod order;
mod replicas;
mod rooms;
mod scripts;
mod sessions;
mod subscription;
mod sweep;
mod upkeep;

use failover::Track;
use order::Lanes;
use replicas::Waits;
use scripts::{Scripts, load_scripts};
use upkeep::Live;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

/// The heartbeat a node publishes to itself; its subscription is dead after `SILENT`.
const BEAT: Duration = Duration::from_secs(1);
const SILENT: Duration = Duration::from_secs(3);
/// On a Redis Cluster the heartbeat's master may be failing over: the subscription is replaced
/// only after this long.
const SILENT_CLUSTER: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What `connect` found: the node id, its lease, which leases are live, and the first command
/// connection.
pub struct Boot {
    pub node: NodeId,
    lease: u64,
    live: Live,
    cmds: Cmds,
}

impl Boot {
    pub async fn connect(
        url: &str,
        timeout: Duration,
        keys: &Keys,
        node: Option<NodeId>,
        root_cert: Option<Vec<u8>>,
        ttl_secs: u64,
    ) -> RedisResult<(Target, Boot)> {
        let target = Target::find(url, timeout, root_cert).await?;
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
        load_scripts(&mut cmds).await?;
        // Before any entry is written: a lease whose figures others have not read is live to
        // them only while it is above the counter they read.
        let prefix = upkeep::figures(now_ms(), 0, 0);
        let script = Scripts::new().lease;
        let lease = upkeep::take_lease(&mut cmds, &script, keys, node, &prefix, 0).await?;
        let live = upkeep::read_live(&mut cmds, keys, ttl_secs, lease).await?;
        let boot = Boot {
            node,
            lease,
            live,
            cmds,
        };
        Ok((target, boot))
    }
}

/// This node's members of one room.
#[derive(Default)]
struct Room {
    /// Local connections in the room, with their user and join generation.
    members: AHashMap<ConnId, (Name, JoinGen)>,
    /// Local connections per user: this node's count of the room's users is its length.
    users: AHashMap<Name, u32>,
    /// The presence info of local users that have one, for a rewrite of this node's entries
    /// (`upkeep::write_entries`): Redis may have dropped them with a purge.
    info: AHashMap<Name, Bytes>,
    /// The room's users across the cluster as last heard (a join's answer, an `o` message).
    total: u64,
    /// The count the last `occupancy` event to local members said (`None`: none sent).
    told: Option<u64>,
    /// Members per shard.
    shards: Vec<u32>,
    /// The newest seq this node knows the room has (from pub/sub or a join); `None` before
    /// its first join is answered.
    last: Option<u64>,
    /// The room's epoch as this node knows it (0: not yet).
    epoch: u64,
    /// The seqs and epoch that tell a rollback (see `failover`).
    track: Track,
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
    /// The inbox's newest seq this node knows; `None` before a connection came online.
    last: Option<u64>,
    epoch: u64,
    track: Track,
    subscribed: bool,
}

#[derive(Default)]
struct State {
    rooms: AHashMap<Name, Room>,
    users: AHashMap<Name, User>,
    /// Count (and off) rooms whose local user count changed since the last occupancy tick:
    /// written to the room's occupancy hash then, once however many joins.
    counted: AHashSet<Name>,
    /// Rooms whose total changed since their last `occupancy` event to local members.
    occupancy_due: AHashSet<Name>,
    /// Receipts by (room, user): when the last left this node, and the newest seq waiting.
    receipts: AHashMap<(Name, Name), (Instant, Option<u64>)>,
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
    /// The score of this node's presence entries and sessions (see `upkeep`).
    lease: Cell<u64>,
    /// Which leases are live, as last read.
    live: RefCell<Live>,
    /// When (ms) this node's figures were last written: silent for a TTL, it takes a new lease.
    beat_ts: Cell<u64>,
    /// A new lease is due (the last attempt failed).
    renew: Cell<bool>,
    /// This node's entries are to be written again (new lease, or an upkeep script failed).
    rewrite: Cell<bool>,
    /// When a command last succeeded.
    last_ok: Cell<Instant>,
    /// Sends to shards kept while one read of pub/sub messages is handed on.
    batch: RefCell<batch::Batch>,
    /// Each sender's order per stream (`order`).
    lanes: RefCell<Lanes>,
    /// Until when the streams are read back every second after a Redis Cluster node dropped
    /// the subscription (`failover`).
    fill_until: Cell<Option<Instant>>,
    /// Messages waiting for their replicas (`replicas`).
    waits: RefCell<Waits>,
    /// The leases the last finished sweep of dead nodes' sessions left live, as last read
    /// (`None`: not read yet), and whether this node's sweep task runs (`sweep`).
    swept: RefCell<Option<Live>>,
    sweeping: Cell<bool>,
    /// This process's name as the sweep's lease holder.
    holder: String,
}

/// Why a Redis call gave no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// Not connected, or Redis refused the command: the request was not carried out.
    Down,
    /// The connection dropped before the answer: Redis may have run the command already.
    Dropped,
    /// No answer within `redis_timeout_ms`: the request may still have been carried out.
    Timeout,
}

fn unavailable() -> ReplyError {
    failed(Failure::Down)
}

fn failed(f: Failure) -> ReplyError {
    let message = match f {
        Failure::Down => "Redis is unreachable; the request was not carried out",
        Failure::Dropped => {
            "the connection to Redis dropped before it answered; the message may still have \
             been stored (send it again with the same `key`, or look at history before sending \
             it again)"
        }
        Failure::Timeout => {
            "Redis did not answer in time; the message may still have been stored (send it \
             again with the same `key`, or look at history before sending it again)"
        }
    };
    ReplyError::new(ErrorCode::Unavailable, message)
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
            lease: Cell::new(boot.lease),
            live: RefCell::new(boot.live),
            beat_ts: Cell::new(now_ms()),
            renew: Cell::new(false),
            rewrite: Cell::new(false),
            last_ok: Cell::new(Instant::now()),
            batch: RefCell::default(),
            lanes: RefCell::default(),
            fill_until: Cell::new(None),
            waits: RefCell::default(),
            swept: RefCell::default(),
            sweeping: Cell::new(false),
            holder: format!("{}-{}", boot.node, boot.lease),
        }
    }

    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Req>) {
        let me = Rc::new(self);
        tokio::task::spawn_local(me.clone().subscriber());
        tokio::task::spawn_local(me.clone().refresher());
        tokio::task::spawn_local(me.clone().occupier());
        if me.target.cluster {
            tokio::task::spawn_local(me.clone().check_coverage());
            tokio::task::spawn_local(me.clone().prober());
        }
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

    /// Runs a script; `None` (counted) when Redis failed.
    async fn script<T: redis::FromRedisValue>(
        self: &Rc<Self>,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        self.script_or(inv).await.ok()
    }

    /// Runs a script, saying why it failed.
    async fn script_or<T: redis::FromRedisValue>(
        self: &Rc<Self>,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Failure> {
        let mut c = self.cmds.borrow().clone().ok_or(Failure::Down)?;
        let r = c.run(inv).await;
        self.outcome(r)
    }

    async fn query<T: redis::FromRedisValue>(self: &Rc<Self>, cmd: redis::Cmd) -> Option<T> {
        let mut c = self.cmds.borrow().clone()?;
        let r = c.query(&cmd).await;
        self.outcome(r).ok()
    }

    fn outcome<T>(self: &Rc<Self>, r: RedisResult<T>) -> Result<T, Failure> {
        match r {
            Ok(v) => {
                self.counters.round_trips.fetch_add(1, Relaxed);
                self.last_ok.set(Instant::now());
                Ok(v)
            }
            Err(e) if e.is_timeout() => {
                self.counters.errors.fetch_add(1, Relaxed);
                // Other commands answered within the timeout: Redis is slow (overloaded), not
                // gone; replacing the connection would fail every command in flight.
                if self.last_ok.get().elapsed() > self.timeout() && !self.target.cluster {
                    self.link_lost(&e);
                }
                Err(Failure::Timeout)
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Relaxed);
                let dropped = lost_link(&e);
                if dropped && !self.target.cluster {
                    self.link_lost(&e);
                } else if self.target.cluster {
                    // The client library reconnects to each Cluster node by itself: a failing
                    // master fails its own slots only (`failover`).
                    self.fill_soon();
                    tracing::debug!(error = %e, "redis cluster command failed");
                } else {
                    tracing::warn!(error = %e, "redis command failed");
                }
                // A command sent on a connection that then failed may have run; one that
                // Redis refused did not.
                Err(if dropped {
                    Failure::Dropped
                } else {
                    Failure::Down
                })
            }
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.redis_timeout_ms)
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
                            if c.set_name(&name).await.is_ok() && load_scripts(&mut c).await.is_ok()
                            {
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

    fn answer(&self, (shard, msg): (ShardId, NodeMsg)) {
        self.send(shard, msg);
    }

    /// The `dead` argument of the presence and session scripts (see `upkeep::Live`).
    fn dead(&self) -> String {
        self.live.borrow().dead()
    }

    /// The `list` argument of the presence scripts for a list room: "MAX EVENTS".
    fn list(&self, rule: &Rule) -> String {
        let events = u8::from(self.config.presence_events);
        format!("{} {events}", rule.presence_list_max)
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
            Req::Batch(ms) => ms.into_iter().for_each(|m| self.serve(m)),
            Req::Nodes(NodesCall::Broadcast { json, reply }) => {
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
            Req::Nodes(NodesCall::Kick {
                user,
                reason,
                reply,
            }) => {
                let me = self.clone();
                self.spawn(async move {
                    let cmd =
                        me.publish(me.keys.channel(&Stream::Inbox(user)), &Wire::Kick(reason));
                    let _ = reply.send(me.query::<u64>(cmd).await);
                });
            }
            Req::Nodes(NodesCall::Totals { reply }) => {
                let me = self.clone();
                self.spawn(async move {
                    let _ = reply.send(me.totals().await);
                });
            }
            Req::Nodes(NodesCall::Rooms { reply }) => {
                let me = self.clone();
                self.spawn(async move {
                    let _ = reply.send(me.rooms().await);
                });
            }
        }
    }

    fn publish(&self, channel: String, wire: &Wire) -> redis::Cmd {
        let mut cmd = redis::cmd(self.publish_cmd());
        cmd.arg(channel).arg(wire.encode());
        cmd
    }
}

fn target_of(stream: &Stream) -> To<'_> {
    match stream {
        Stream::Room(r) => To::Room(r),
        Stream::Inbox(u) => To::User(u),
    }
}

fn replay(stream: Stream, to: ReplayTo, after: u64, upto: u64, ok: bool) -> NodeMsg {
    NodeMsg::Replay(Replay {
        stream,
        to,
        after,
        upto,
        ack: None,
        frames: Bytes::new(),
        ok,
    })
}

/// Whether an error means the connection itself is gone (rather than one command failing).
fn lost_link(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

fn bytes_of(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// Whether `seen` starts a new epoch over `known` (0: none known yet), recording it.
fn new_epoch_seen(known: &mut u64, seen: u64) -> bool {
    let changed = *known != 0 && *known != seen;
    *known = seen;
    changed
}
