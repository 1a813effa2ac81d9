//! The command line: scenarios as subcommands, and the options shared by all of them.
//!
//! Owns option names, defaults and help text. These structs are also the library's options
//! (`crate::run` takes a [`Cli`]), so a test builds them with `Cli::try_parse_from` and gets the
//! same defaults as a person. It must not act on the options.

use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

/// Load-test bot for shardcast: real WebSocket clients, exact delivery checks, latency and the
/// server's CPU and memory cost.
#[derive(Parser, Debug, Clone)]
#[command(name = "shardcast-loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// S subscribers and P publishers in one room; every publisher sends R msg/s.
    Fanout {
        #[command(flatten)]
        args: FanoutArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// N users in rooms of K members; every user publishes r msg/s to its room.
    Chat {
        #[command(flatten)]
        args: ChatArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Users in pairs, each sending direct messages to the other at r msg/s.
    Dm {
        #[command(flatten)]
        args: DmArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// N connections, each joined to a room, held for --duration; reports the server's RSS per
    /// connection and idle CPU.
    Idle {
        #[command(flatten)]
        args: IdleArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// C connect-join-close cycles per second for --duration.
    Churn {
        #[command(flatten)]
        args: ChurnArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Clients in rooms of K, one publisher per room; after --warmup and --duration every
    /// client but the publishers (and the --steady-rooms) drops at once, then all reconnect at
    /// once and join with `since`. Reports the time until all are back and caught up, server
    /// CPU per reconnect, connect→welcome, and the steady connections' latency during the storm.
    Storm {
        #[command(flatten)]
        args: StormArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// One big room: --members clients join it at --join-rate while --publishers publish; once
    /// it is full, it is measured at rest for --duration, then while half of the members leave
    /// and rejoin with `since` (at --churn-rate), then at rest again for --duration. --warmup is
    /// the pause after the fill and after the churn; --drain-timeout is how long past the last
    /// scheduled join (or rejoin) the bot waits for the acks. Reports the time to fill, server
    /// CPU per join and per delivery, latency by phase, exactness across the rejoins, and the
    /// frames that were not messages. A spawned server gets the bot's --presence-events (off by
    /// default): give --presence-events true to measure the server's own default.
    Bigroom {
        #[command(flatten)]
        args: BigroomArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// The CPU cost of a join: --clients connections open (not measured), then client i joins
    /// room i ÷ --room-size at i ÷ --join-rate after the phase starts (open loop), and the bot
    /// waits for every ack. Reports server CPU per join over the phase (its start until the
    /// last ack plus --settle-ms), raw and net of the idle rate measured for --warmup before it,
    /// join latency from the due time to the ack, and the frames that were not acks, by type.
    /// Fails (exit 1) on a refused or unanswered join, and, where the server sends `joined`,
    /// unless each client got exactly one for every member that joined its room after it. One
    /// bot process: keep --clients at 18,000 or fewer. A spawned server gets the bot's
    /// --presence-events (off by default); with --url, give --presence-events as the server
    /// runs, since the `joined` check relies on it.
    Joins {
        #[command(flatten)]
        args: JoinsArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Chat rooms, direct-message pairs, and churn cycles that read history, for --duration;
    /// samples the server's RSS, open descriptors and queued bytes, and fails on RSS growth
    /// after the warm-up or any inexact delivery.
    Soak {
        #[command(flatten)]
        args: SoakArgs,
        #[command(flatten)]
        load: LoadArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout { .. } => "fanout",
            Scenario::Chat { .. } => "chat",
            Scenario::Dm { .. } => "dm",
            Scenario::Idle { .. } => "idle",
            Scenario::Churn { .. } => "churn",
            Scenario::Soak { .. } => "soak",
            Scenario::Storm { .. } => "storm",
            Scenario::Bigroom { .. } => "bigroom",
            Scenario::Joins { .. } => "joins",
        }
    }

    pub fn common(&self) -> &CommonArgs {
        match self {
            Scenario::Fanout { common, .. }
            | Scenario::Chat { common, .. }
            | Scenario::Dm { common, .. }
            | Scenario::Idle { common, .. }
            | Scenario::Churn { common, .. }
            | Scenario::Soak { common, .. }
            | Scenario::Storm { common, .. }
            | Scenario::Bigroom { common, .. }
            | Scenario::Joins { common, .. } => common,
        }
    }

    pub fn load(&self) -> Option<&LoadArgs> {
        match self {
            Scenario::Fanout { load, .. }
            | Scenario::Chat { load, .. }
            | Scenario::Dm { load, .. }
            | Scenario::Soak { load, .. }
            | Scenario::Storm { load, .. }
            | Scenario::Bigroom { load, .. } => Some(load),
            _ => None,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    /// Subscribers (connections that only receive).
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Publishers (they are room members too, so they also receive each other's messages).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Messages per second per publisher (open loop).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// Users (one connection each).
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Members per room; the last room takes the remainder. 1 leaves every user alone in its
    /// room: each publish is stored and acked but delivered to nobody, so the server's store
    /// path, not its socket writes, is what the run measures.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages per second per user (open loop).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// What each user is: `bot` (the bot's own connection: pipelined frames on fastwebsockets,
    /// cheap to run) or `full` (a `shardcast_client::Client`: its transport, reconnect,
    /// recovery and outbox, as an application would run it; the bot's CPU is then what an
    /// application pays per message).
    #[arg(long, value_enum, default_value_t = ClientKind::Bot)]
    pub client: ClientKind,
}

/// Who a chat user is (`chat --client`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    #[default]
    Bot,
    Full,
}

#[derive(Args, Debug, Clone)]
pub struct DmArgs {
    /// Users (one connection each), paired 0-1, 2-3, …; must be even.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Direct messages per second per user (open loop).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
}

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    /// Members per room; every connection joins one room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
}

#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    /// Connect-join-close cycles started per second (open loop).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long each connection stays open after its join is acked, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub hold_ms: u64,
    /// Rooms the cycles join, round robin.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Most cycles in progress at once; a cycle past it waits (and its latency shows it).
    #[arg(long, default_value_t = 2000)]
    pub max_concurrent: usize,
}

#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Clients (one connection each), in rooms of --room-size.
    #[arg(long, default_value_t = 2000)]
    pub clients: usize,
    /// Members per room; the last room takes the remainder. Each room's first member publishes
    /// and stays connected through the storm.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Messages per second per publisher (open loop), before, during and after the storm.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Rooms whose members all stay connected: their deliveries give the established
    /// connections' latency during the storm.
    #[arg(long, default_value_t = 20)]
    pub steady_rooms: usize,
    /// How long the dropped clients stay away before they all reconnect, in milliseconds; what
    /// is published meanwhile comes back as replay.
    #[arg(long, default_value_t = 1000)]
    pub down_ms: u64,
    /// Seconds the publishers go on after the reconnect signal.
    #[arg(long, default_value_t = 3.0)]
    pub after: f64,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct BigroomArgs {
    /// Clients that join the room during the fill, one connection each.
    #[arg(long, default_value_t = 5000)]
    pub members: usize,
    /// Connections that join the room before the fill and publish through every phase. They
    /// are members too (each receives the others' messages), but are not counted in --members
    /// and do not churn.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second per publisher (open loop).
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Joins per second in the fill (open loop: member m's join is due m ÷ rate after the fill
    /// starts, whatever happened to the others).
    #[arg(long, default_value_t = 1000.0)]
    pub join_rate: f64,
    /// Leaves per second in the churn phase. Half of the members (every other round of the
    /// nodes, so the churners are spread over nodes and bot processes) each send `leave`, stay
    /// out --away-ms, and join again with `since` = the last seq they saw, on the same
    /// connection.
    #[arg(long, default_value_t = 1000.0)]
    pub churn_rate: f64,
    /// How long a churning member stays out of the room, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub away_ms: u64,
    /// Bot processes. Above 1, this process starts that many children (this binary, or
    /// --bot-bin), gives each a slice of the members (the first also the publishers), keeps
    /// them in step, samples the servers itself and merges what they report into one report: a
    /// way past the open-files limit of one process (about 20,000 on a default Linux).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// With --processes: the bot binary the children run (default: the running one).
    #[arg(long)]
    pub bot_bin: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct JoinsArgs {
    /// Clients, one connection each (one bot process: at most about 18,000 under a default
    /// open-files limit).
    #[arg(long, default_value_t = 15_000)]
    pub clients: usize,
    /// Members per room: client i joins room i ÷ K; the last room takes the remainder.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Joins per second (open loop: client i's join is due i ÷ rate after the phase starts,
    /// whatever happened to the others).
    #[arg(long, default_value_t = 1000.0)]
    pub join_rate: f64,
    /// How long the phase goes on after the last ack, in milliseconds, so the events the joins
    /// cause (an `occupancy` comes at most once per the server's occupancy_interval_ms, default
    /// 1000) are sent inside it.
    #[arg(long, default_value_t = 1000)]
    pub settle_ms: u64,
    /// The server's presence_list_max for these rooms (its default: 1,000). The `joined` check
    /// owes no event for a join that made a room bigger than this.
    #[arg(long, default_value_t = 1000)]
    pub presence_list_max: u64,
}

#[derive(Args, Debug, Clone)]
pub struct SoakArgs {
    /// Chat users (one connection each), in rooms of --room-size.
    #[arg(long, default_value_t = 400)]
    pub users: usize,
    /// Members per chat room.
    #[arg(long, default_value_t = 10)]
    pub room_size: usize,
    /// Users sending direct messages, paired 0-1, 2-3, …; must be even.
    #[arg(long, default_value_t = 200)]
    pub dm_users: usize,
    /// Messages per second per chat and DM user (open loop).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Churn cycles per second: connect, join a chat room, read a history page, close.
    #[arg(long, default_value_t = 10.0)]
    pub churn_rate: f64,
    /// Seconds between samples of the server's RSS, descriptors and queued bytes.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    /// Most RSS growth allowed from the end of the warm-up to the end of the run, in percent.
    #[arg(long, default_value_t = 5.0)]
    pub max_rss_growth: f64,
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn needs_a_target() {
        assert!(Cli::try_parse_from(["lt", "fanout"]).is_err());
        assert!(Cli::try_parse_from(["lt", "fanout", "--spawn-server"]).is_ok());
        assert!(
            Cli::try_parse_from(["lt", "idle", "--url", "ws://127.0.0.1:1", "--spawn-server"])
                .is_err()
        );
        let cli =
            Cli::try_parse_from(["lt", "chat", "--url", "ws://127.0.0.1:1", "--max"]).unwrap();
        assert!(cli.scenario.load().unwrap().max);
        assert_eq!(cli.scenario.common().duration, 10.0);
    }

    #[test]
    fn durability_is_optional_and_named_like_the_server() {
        let cli = Cli::try_parse_from(["lt", "fanout", "--spawn-server"]).unwrap();
        assert_eq!(cli.scenario.common().durability, None);
        for d in Durability::value_variants() {
            let cli =
                Cli::try_parse_from(["lt", "chat", "--spawn-server", "--durability", d.as_str()])
                    .unwrap();
            assert_eq!(cli.scenario.common().durability, Some(*d));
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
    }

    #[test]
    fn cluster_targets() {
        let cli = Cli::try_parse_from([
            "lt",
            "chat",
            "--url",
            "ws://127.0.0.1:1,ws://127.0.0.1:2",
            "--url",
            "ws://127.0.0.1:3",
            "--server-pid",
            "7,8,9",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ])
        .unwrap();
        let c = cli.scenario.common();
        assert_eq!(c.url.len(), 3);
        assert_eq!(c.server_pid, vec![7, 8, 9]);
        let cli = Cli::try_parse_from(["lt", "fanout", "--spawn-cluster", "3"]).unwrap();
        assert_eq!(cli.scenario.common().spawn_cluster, Some(3));
        assert_eq!(
            cli.scenario.common().redis_persistence,
            RedisPersistence::None
        );
        assert!(Cli::try_parse_from(["lt", "fanout", "--spawn-cluster", "0"]).is_err());
        assert!(
            Cli::try_parse_from(["lt", "fanout", "--spawn-cluster", "2", "--spawn-server"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from([
                "lt",
                "fanout",
                "--spawn-cluster",
                "2",
                "--durability",
                "sync"
            ])
            .is_err(),
            "a cluster's durability is its Redis's"
        );
    }
}
