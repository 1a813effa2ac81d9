//! The connections to Redis: finding out whether it is one server or a Redis Cluster, the
//! command connection (scripts and commands, pipelined by the multiplexer), the subscription
//! connection (RESP3 pushes: SUBSCRIBE on one server, SSUBSCRIBE on a Cluster) and a blocking
//! connection for the store thread's reads. Owns connecting and naming connections; it must
//! not decide what a command means (`engine`) nor keep any stream state.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionLike, FromRedisValue, IntoConnectionInfo,
    ProtocolVersion, PushInfo, RedisResult, ScriptInvocation, TlsCertificates,
};
use tokio::sync::mpsc::UnboundedSender;

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

    /// The subscription connection, whose messages arrive on `push`.
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

    /// Names the connection (CLIENT LIST shows it) on one server; a Cluster's connections
    /// are the client library's.
    pub async fn set_name(&mut self, name: &str) -> RedisResult<()> {
        match self {
            Cmds::Single(c) => set_name(c, name).await,
            Cmds::Cluster(_) => Ok(()),
        }
    }
}

/// The subscription connection.
#[derive(Clone)]
pub enum Subs {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Subs {
    pub async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Subs::Single(c) => c.subscribe(channel).await,
            Subs::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
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

    pub fn is_open(&self) -> bool {
        match self {
            SyncConn::Single(c) => c.is_open(),
            SyncConn::Cluster(c) => c.is_open(),
        }
    }
}
