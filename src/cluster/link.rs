//! The connections to Redis: finding out whether it is one server or a Redis Cluster, the
//! command connection (scripts and commands, pipelined by the multiplexer), the subscription
//! connection (our own `pubsub` on one server over plain TCP; else the library's, RESP3
//! pushes: SUBSCRIBE on one server, SSUBSCRIBE on a Cluster) and a blocking
//! connection for the store thread's reads. Owns connecting and naming connections; it must
//! not decide what a command means (`engine`) nor keep any stream state.

use std::rc::Rc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionLike, FromRedisValue,
    IntoConnectionInfo, ProtocolVersion, PushInfo, RedisResult, ScriptInvocation, TlsCertificates,
};
use tokio::sync::mpsc::UnboundedSender;

use super::pubsub::{Outbox, Plain};

/// Commands queued for the connection's writer before a caller waits. Past the client
/// library's 50, waiting callers could be let in out of order, and a burst of one
/// connection's publishes sequenced out of order; its queue allocates as it fills.
const PIPELINE_BUFFER: usize = 1 << 20;

/// Where Redis is, as configured.
#[derive(Clone, Debug)]
pub struct Target {
    urls: Vec<String>,
    pub cluster: bool,
    timeout: Duration,
    /// The CA that signs the servers' certificates (`rediss://`), PEM; `None`: the web's roots.
    root_cert: Option<Vec<u8>>,
}

impl Target {
    /// Parses `redis_url` (comma-separated seeds) and asks the first reachable seed whether it
    /// is part of a Redis Cluster.
    pub async fn find(
        redis_url: &str,
        timeout: Duration,
        root_cert: Option<Vec<u8>>,
    ) -> RedisResult<Target> {
        let urls: Vec<String> = redis_url.split(',').map(|u| u.trim().to_owned()).collect();
        for url in &urls {
            url.as_str().into_connection_info()?;
        }
        let mut target = Target {
            urls,
            cluster: false,
            timeout,
            root_cert,
        };
        let mut last = None;
        for url in &target.urls {
            let client = target.client(url.as_str())?;
            match client
                .get_multiplexed_async_connection_with_config(&target.config())
                .await
            {
                Ok(mut c) => {
                    let info: String = redis::cmd("INFO")
                        .arg("cluster")
                        .query_async(&mut c)
                        .await?;
                    target.cluster = info.contains("cluster_enabled:1");
                    return Ok(target);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one url"))
    }

    fn client(&self, info: impl IntoConnectionInfo) -> RedisResult<Client> {
        match &self.root_cert {
            Some(pem) => {
                let certs = TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                };
                Client::build_with_tls(info, certs)
            }
            None => Client::open(info),
        }
    }

    fn single(&self) -> RedisResult<Client> {
        self.client(self.urls[0].as_str())
    }

    fn cluster_client(
        &self,
        push: Option<UnboundedSender<PushInfo>>,
    ) -> RedisResult<ClusterClient> {
        let mut b = ClusterClient::builder(self.urls.iter().map(String::as_str))
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(1);
        if let Some(pem) = &self.root_cert {
            b = b.certs(TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.clone()),
            });
        }
        if let Some(tx) = push {
            b = b.use_protocol(ProtocolVersion::RESP3).push_sender(tx);
        }
        b.build()
    }

    fn config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_pipeline_buffer_size(PIPELINE_BUFFER)
    }

    /// The command connection.
    pub async fn commands(&self) -> RedisResult<Cmds> {
        if self.cluster {
            let c = self.cluster_client(None)?.get_async_connection().await?;
            return Ok(Cmds::Cluster(c));
        }
        let c = self
            .single()?
            .get_multiplexed_async_connection_with_config(&self.config())
            .await?;
        Ok(Cmds::Single(c))
    }

    /// Where our own subscription connection (`pubsub`) goes: one server over plain TCP.
    /// `None` for a Redis Cluster (sharded subscriptions follow slots and failovers), TLS
    /// (`rediss://`) and a Unix socket: the library's connection (`subscriber`) serves those.
    pub fn plain(&self) -> Option<Plain> {
        if self.cluster {
            return None;
        }
        let info = self.urls[0].as_str().into_connection_info().ok()?;
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            return None;
        };
        let redis = info.redis_settings();
        Some(Plain {
            host: host.clone(),
            port: *port,
            username: redis.username().map(str::to_owned),
            password: redis.password().map(str::to_owned),
        })
    }

    /// The library's subscription connection, whose messages arrive on `push` (RESP3).
    pub async fn subscriber(
        &self,
        name: &str,
        push: UnboundedSender<PushInfo>,
    ) -> RedisResult<Subs> {
        if self.cluster {
            let c = self
                .cluster_client(Some(push))?
                .get_async_connection()
                .await?;
            return Ok(Subs::Cluster(c));
        }
        let info = self.single()?.get_connection_info().clone();
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = self.client(info.set_redis_settings(redis))?;
        let mut c = client
            .get_multiplexed_async_connection_with_config(&self.config().set_push_sender(push))
            .await?;
        set_name(&mut c, name).await?;
        Ok(Subs::Single(c))
    }

    /// A blocking connection, for the store thread's reads.
    pub fn blocking(&self) -> RedisResult<SyncConn> {
        if self.cluster {
            let c = self.cluster_client(None)?.get_connection()?;
            return Ok(SyncConn::Cluster(Box::new(c)));
        }
        let c = self.single()?.get_connection_with_timeout(self.timeout)?;
        c.set_read_timeout(Some(self.timeout))?;
        c.set_write_timeout(Some(self.timeout))?;
        Ok(SyncConn::Single(c))
    }
}

async fn set_name(c: &mut MultiplexedConnection, name: &str) -> RedisResult<()> {
    redis::cmd("CLIENT")
        .arg("SETNAME")
        .arg(name)
        .query_async(c)
        .await
}

/// The command connection. Cheap to clone: clones share one multiplexed socket, and
/// commands issued together leave in one write (pipelined).
#[derive(Clone)]
pub enum Cmds {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Cmds {
    pub async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            Cmds::Single(c) => cmd.query_async(c).await,
            Cmds::Cluster(c) => cmd.query_async(c).await,
        }
    }

    pub async fn run<T: FromRedisValue>(
        &mut self,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match self {
            Cmds::Single(c) => script.invoke_async(c).await,
            Cmds::Cluster(c) => script.invoke_async(c).await,
        }
    }

    /// `WAIT replicas timeout` on the master that holds `key` (the writes this node sent it
    /// so far): how many replicas have them. A Cluster routes it by the key's slot.
    pub async fn wait(&mut self, key: &str, replicas: u32, timeout: Duration) -> RedisResult<u64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Cmds::Single(c) => cmd.query_async(c).await,
            Cmds::Cluster(c) => {
                let route = Route::new(slot(key.as_bytes()), SlotAddr::Master);
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                Ok(u64::from_redis_value(c.route_command(cmd, to).await?)?)
            }
        }
    }

    /// A setting of one server (a Cluster's: of one master), if `CONFIG GET` is allowed.
    pub async fn setting(&mut self, name: &str) -> RedisResult<Option<String>> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg(name);
        let v = match self {
            Cmds::Single(c) => cmd.query_async(c).await?,
            Cmds::Cluster(c) => {
                let to = RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary);
                c.route_command(cmd, to).await?
            }
        };
        let pair: Vec<String> = FromRedisValue::from_redis_value(v)?;
        Ok(pair.into_iter().nth(1))
    }

    /// Whether Redis answers at all: one server's PING, or a Cluster's PING to every master,
    /// answered when any one master answers (a failing master is only its slots).
    pub async fn probe(&mut self) -> RedisResult<()> {
        let cmd = redis::cmd("PING");
        match self {
            Cmds::Single(c) => cmd.query_async(c).await,
            Cmds::Cluster(c) => {
                let all = (
                    MultipleNodeRoutingInfo::AllMasters,
                    Some(ResponsePolicy::OneSucceeded),
                );
                c.route_command(cmd, RoutingInfo::MultiNode(all))
                    .await
                    .map(drop)
            }
        }
    }

    /// Names the connection (CLIENT LIST shows it) on one server; a Cluster's connections
    /// are the client library's.
    pub async fn set_name(&mut self, name: &str) -> RedisResult<()> {
        match self {
            Cmds::Single(c) => set_name(c, name).await,
            Cmds::Cluster(_) => Ok(()),
        }
    }
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag, modulo 16384.
pub fn slot(key: &[u8]) -> u16 {
    let tag = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &b in tag {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// The subscription connection: our own (`pubsub`) on one server over plain TCP, else the
/// client library's.
#[derive(Clone)]
pub enum Subs {
    Own(Rc<Outbox>),
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Subs {
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subs::Own(o) => o.subscribe(channel).await,
            Subs::Single(c) => c.subscribe(channel).await,
            Subs::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subs::Own(o) => o.unsubscribe(channel).await,
            Subs::Single(c) => c.unsubscribe(channel).await,
            Subs::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

/// A blocking connection (the store thread's reads).
pub enum SyncConn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl SyncConn {
    pub fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            SyncConn::Single(c) => cmd.query(c),
            SyncConn::Cluster(c) => cmd.query(c.as_mut()),
        }
    }

    /// Commands sent together, answered in order (a Cluster's: grouped by master).
    pub fn pipeline(&mut self, cmds: Vec<Cmd>) -> RedisResult<Vec<redis::Value>> {
        match self {
            SyncConn::Single(c) => {
                let mut p = redis::pipe();
                for cmd in cmds {
                    p.add_command(cmd);
                }
                p.query(c)
            }
            SyncConn::Cluster(c) => {
                let mut p = redis::cluster::cluster_pipe();
                for cmd in cmds {
                    p.add_command(cmd);
                }
                p.query(c.as_mut())
            }
        }
    }

    pub fn is_open(&self) -> bool {
        match self {
            SyncConn::Single(c) => c.is_open(),
            SyncConn::Cluster(c) => c.is_open(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Target;

    fn target(url: &str, cluster: bool) -> Target {
        Target {
            urls: vec![url.to_owned()],
            cluster,
            timeout: std::time::Duration::from_secs(1),
            root_cert: None,
        }
    }

    #[test]
    fn our_subscription_connection_is_for_one_server_over_plain_tcp() {
        let p = target("redis://u1:pw@10.0.0.1:7000/3", false)
            .plain()
            .unwrap();
        let got = (
            p.host.as_str(),
            p.port,
            p.username.as_deref(),
            p.password.as_deref(),
        );
        assert_eq!(got, ("10.0.0.1", 7000, Some("u1"), Some("pw")));
        let p = target("redis://:s3cret@h:1", false).plain().unwrap();
        assert_eq!((p.username, p.password.as_deref()), (None, Some("s3cret")));
        let p = target("redis://h:1", false).plain().unwrap();
        assert_eq!((p.username, p.password), (None, None));
        // The library's connection for TLS, a Unix socket and a Redis Cluster.
        assert!(target("rediss://h:1", false).plain().is_none());
        assert!(target("redis+unix:///tmp/r.sock", false).plain().is_none());
        assert!(target("redis://h:1", true).plain().is_none());
    }

    #[test]
    fn slots_are_redis_clusters() {
        // CLUSTER KEYSLOT's answers.
        assert_eq!(super::slot(b"123456789"), 0x31c3);
        assert_eq!(super::slot(b"foo"), 12182);
        assert_eq!(super::slot(b"sc:{r:lobby}:m"), super::slot(b"r:lobby"));
        assert_eq!(super::slot(b"a{}b"), super::slot(b"a{}b"));
    }
}
