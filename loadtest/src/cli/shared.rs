//! The options several scenarios share: the load (`LoadArgs`: rates, bodies, protocol) and
//! everything about the target, pinning, timing and output (`CommonArgs`), with the server's
//! and Redis's settings the bot passes on.

use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args, ValueEnum};
use serde::{Deserialize, Serialize};

/// The form a bot connection speaks (`--protocol`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Protocol {
    #[default]
    Json,
    Proto,
    Mixed,
}

/// Options of the scenarios that publish (fanout, chat, dm).
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct LoadArgs {
    /// Message body size in bytes (a JSON string holding the send stamp, padded with `x`).
    #[arg(long, default_value_t = 64)]
    pub body_size: usize,
    /// Closed loop: every publisher sends as fast as its acks return (at most --window unacked),
    /// to find the peak throughput; delivery is still checked exactly. Latency is then measured
    /// from the actual send time.
    #[arg(long = "max", default_value_t = false)]
    pub max: bool,
    /// With --max: unacked messages per publisher.
    #[arg(long, default_value_t = 32)]
    pub window: u64,
    /// With --max: deliveries owed but not yet received (all connections) before publishers
    /// pause; bounds the queues so the server is not closing slow consumers.
    #[arg(long, default_value_t = 100_000)]
    pub max_in_flight: u64,
    /// Every publish and send carries an idempotency `key` (`p<publisher>-<counter>`), unique
    /// per sender: what keyed publishing costs the server.
    #[arg(long, default_value_t = false)]
    pub keyed: bool,
    /// Keyed as --keyed, and a connection that drops reconnects (rooms rejoined with `since`)
    /// and sends again, with the same key, every publish not yet acked; a `dup` ack counts as
    /// the ack, with the first seq. The exact check then proves once-only delivery. Open loop
    /// only. With --kill-server, the server is killed under it.
    #[arg(long, default_value_t = false)]
    pub resend: bool,
    /// Chat extras (issue 23): `signal` frames (`{"typing":true}`) per second per publishing
    /// connection, to its room; not stored, not acked, counted by receivers as `signal`
    /// frames. With --durability memory, compare the server's CPU per delivery with a run of
    /// messages only.
    #[arg(long, default_value_t = 0.0)]
    pub signal_rate: f64,
    /// Chat extras: `read` frames per second per publishing connection, for its room, at a
    /// growing seq (clamped by the server): what read positions cost, and how the server
    /// coalesces their store writes (`shardcast_read_position_writes_total`).
    #[arg(long, default_value_t = 0.0)]
    pub read_rate: f64,
}

/// Target, pinning, timing and output options, the same for every scenario. Serialized, they
/// carry a parent's options to its child processes (bigroom --processes).
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
#[command(group(ArgGroup::new("target").required(true).args(["url", "spawn_server", "spawn_cluster"])))]
pub struct CommonArgs {
    /// A running server, e.g. ws://127.0.0.1:8080 (127.0.0.0/8 only; dev mode, no jwt_secret).
    /// Repeat it, or separate URLs with commas, for the nodes of a cluster: connections are
    /// spread over them round robin.
    #[arg(long, value_delimiter = ',')]
    pub url: Vec<String>,
    /// Start the release server binary on a free port with a temp data dir; stop it at the end.
    #[arg(long)]
    pub spawn_server: bool,
    /// Start a cluster: a redis-server on a free port in a temp dir, and N server nodes
    /// (`--engine redis`, node ids 0 to N-1), each on its own free port; stop them all at the end.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub spawn_cluster: Option<u16>,
    /// With --spawn-server/--spawn-cluster: the server binary. Default: `shardcast` next to this
    /// binary, else ./target/release/shardcast.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// With --spawn-server/--spawn-cluster: pin the server (each node) to these CPUs (taskset
    /// syntax, e.g. `0` or `0-1`).
    #[arg(long)]
    pub server_cpus: Option<String>,
    /// Pin the bot to these CPUs; the bot runs one worker thread per CPU listed.
    #[arg(long)]
    pub client_cpus: Option<String>,
    /// The form the bot's connections speak: json (text frames), proto (binary frames,
    /// subprotocol shardcast.proto) or mixed (about half of each, chosen by user name).
    #[arg(long, value_enum, default_value_t = Protocol::Json)]
    pub protocol: Protocol,
    /// With --url: the server's process id, to measure its CPU and memory. With several URLs,
    /// one pid per URL, in the same order (repeat it or separate with commas).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["spawn_server", "spawn_cluster"])]
    pub server_pid: Vec<u32>,
    /// With --url: the cluster's Redis (redis://[:password@]127.0.0.1:PORT), read with INFO at
    /// the window's edges for its CPU, commands and memory per publish.
    #[arg(long, conflicts_with_all = ["spawn_server", "spawn_cluster"])]
    pub redis_url: Option<String>,
    /// With --spawn-cluster: the redis-server binary (a bare name is looked up on PATH).
    #[arg(long, default_value = "redis-server")]
    pub redis_bin: PathBuf,
    /// With --spawn-cluster: pin redis-server to these CPUs (taskset syntax).
    #[arg(long)]
    pub redis_cpus: Option<String>,
    /// With --spawn-cluster: what the spawned Redis persists (docs/cluster.md says which
    /// guarantee each gives).
    #[arg(long, value_enum, default_value_t = RedisPersistence::None)]
    pub redis_persistence: RedisPersistence,
    /// With --spawn-server/--spawn-cluster: the server's --shards (default: the server's own
    /// default).
    #[arg(long)]
    pub shards: Option<usize>,
    /// With --spawn-server/--spawn-cluster: the server's --max-queue-bytes (default: the
    /// server's, 1 MiB; 64 MiB with --max).
    #[arg(long)]
    pub max_queue_bytes: Option<usize>,
    /// With --spawn-server/--spawn-cluster: the server's --presence-events. Off by default so
    /// joins do not flood rooms with `joined` events; the bot tolerates them either way.
    #[arg(long, default_value_t = false, action = ArgAction::Set)]
    pub presence_events: bool,
    /// The server's durability mode. With --spawn-server it is passed to the server as
    /// `--durability` (default sync, the server's own default). With --url it is what you declare
    /// the server runs; the bot cannot check it. The report shows it beside every figure. A
    /// cluster's durability is its Redis's: see --redis-persistence.
    #[arg(long, value_enum, conflicts_with = "spawn_cluster")]
    pub durability: Option<Durability>,
    /// With --spawn-server/--spawn-cluster: one more argument for `shardcast serve`
    /// (repeatable). Flags the bot sets itself (--durability, --shards, --publish-rate, …) are
    /// refused here: use the bot's own option, so the report records what the server ran with.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// With --spawn-server/--spawn-cluster: RUST_LOG for the server (its log goes to a file in
    /// its temp dir).
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    /// Prefix of this run's user and room names (`TAG-chat0`, `TAG-u0`), so a `[[rooms]]` rule
    /// of the server can match them (e.g. to run a hook for them). Default `lt` and six random
    /// hex digits.
    #[arg(long)]
    pub tag: Option<String>,
    /// Length of the measured window, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Load before the measured window, in seconds (delivery is still checked, but latency,
    /// CPU and rates leave it out).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// How long to wait after the last send for outstanding acks and deliveries, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Spread client sockets over source addresses 127.0.0.1 … 127.0.0.N.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_ips: u8,
    /// Handshakes in progress at once while connecting.
    #[arg(long, default_value_t = 128)]
    pub connect_concurrency: usize,
    /// Bot worker threads when --client-cpus is not given (default: one per available CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object with the results to stdout instead of the summary table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
    /// With --spawn-server and --resend (or chat --client full, whose clients reconnect and
    /// send again by themselves): kill the server with SIGKILL this many times during the run,
    /// each time starting it again at once (same port, data dir and arguments).
    #[arg(long, default_value_t = 0)]
    pub kill_server: u32,
    /// With --kill-server: kill k is this long after the measured window starts, times k.
    #[arg(long, default_value_t = 4000)]
    pub kill_interval_ms: u64,
}

/// How the server stores a message before acking it: the values of `shardcast serve
/// --durability`. The bot's own copy, since it talks to the server only over its CLI and the
/// wire.
#[derive(ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// On disk (fsync) before the ack.
    #[default]
    Sync,
    /// Acked at once, on disk within the server's --flush-interval-ms.
    Async,
    /// Kept in memory only.
    Memory,
}

impl Durability {
    /// The name `shardcast serve --durability` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Sync => "sync",
            Durability::Async => "async",
            Durability::Memory => "memory",
        }
    }
}

/// What a spawned Redis keeps on disk: the guarantee of a cluster's history and seqs.
#[derive(ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RedisPersistence {
    /// Nothing (`save ""`, `appendonly no`): a Redis restart loses every stream.
    #[default]
    None,
    /// RDB snapshots on Redis's default schedule: a restart loses the writes since the last one.
    Rdb,
    /// AOF fsynced once a second: a crash loses up to about a second of acked messages.
    AofEverysec,
    /// AOF fsynced before every reply: no acked message is lost on a restart.
    AofAlways,
}

impl RedisPersistence {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisPersistence::None => "none",
            RedisPersistence::Rdb => "rdb",
            RedisPersistence::AofEverysec => "aof-everysec",
            RedisPersistence::AofAlways => "aof-always",
        }
    }

    /// The `redis-server` options that set it.
    pub fn redis_args(self) -> &'static [&'static str] {
        match self {
            RedisPersistence::None => &["--save", "", "--appendonly", "no"],
            RedisPersistence::Rdb => &["--save", "3600 1 300 100 60 10000", "--appendonly", "no"],
            RedisPersistence::AofEverysec => &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ],
            RedisPersistence::AofAlways => &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        }
    }
}
