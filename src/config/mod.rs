//! Configuration: every limit and default in one struct. This file is the documented field
//! table (each field's doc comment is also its `--help` text and says its default); `load.rs`
//! layers defaults ← TOML file (`--config`) ← `SHARDCAST_*` environment variables ←
//! command-line flags, `validate.rs` refuses what the types cannot, and `derived.rs` holds the
//! values the rest of the server reads.
//!
//! It must not touch sockets or shard state.

mod derived;
mod hooks;
mod load;
mod rooms;
#[cfg(test)]
mod tests;
mod validate;

pub use hooks::{HookOnError, RoomHook, RoomHooks};
pub use load::ConfigError;
pub use rooms::{PRESENCE_LIST_MAX, PresenceMode, PublishMode, RoomRule, Rule};

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What a stored message costs against `user_store_rate_bytes` beyond its body and names:
/// about its JSON envelope and its key in the store.
pub const STORE_COST_OVERHEAD: u64 = 100;

/// The most a message costs beyond its body: the overhead and two names of the longest.
const MAX_STORE_OVERHEAD: u64 = STORE_COST_OVERHEAD + 2 * crate::core::name::MAX_NAME_LEN as u64;

/// What happens when a user who is already connected opens another connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SessionPolicy {
    /// Many connections per user, up to `max_connections_per_user`.
    #[default]
    #[value(name = "multi")]
    Multi,
    /// A new connection closes the user's older ones with 4500 (replaced).
    #[value(name = "kick_old")]
    KickOld,
    /// A new connection is refused (HTTP 409) while the user is connected.
    #[value(name = "reject_new")]
    RejectNew,
}

/// How a message is stored before it is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledge and deliver only once the message is on disk (fsync, shared by every message
    /// in one group commit).
    #[default]
    #[value(name = "sync")]
    Sync,
    /// Acknowledge and deliver at once; the message reaches disk within flush_interval_ms.
    #[value(name = "async")]
    Async,
    /// Keep history in memory only; nothing is written to disk.
    #[value(name = "memory")]
    Memory,
}

/// Retention for the rooms whose names start with `prefix` (a `[[room_retention]]` table in the
/// config file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Rooms whose name starts with this.
    pub prefix: String,
    /// Messages kept per room; 0 = no limit.
    pub messages: u64,
    /// Age after which messages are trimmed, in seconds; 0 = no limit.
    pub secs: u64,
}

/// Where streams are sequenced and stored, and presence and sessions counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    /// This process alone: its shards sequence, the embedded store (`data`) keeps history.
    #[default]
    #[value(name = "embedded")]
    Embedded,
    /// A cluster of nodes sharing one Redis (or Redis Cluster) at `redis_url`.
    #[value(name = "redis")]
    Redis,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    #[value(name = "text")]
    Text,
    /// One JSON object per line.
    #[value(name = "json")]
    Json,
}

/// The shortest `jwt_secret` accepted: HS256's hash size (RFC 7518 §3.2).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The server's configuration. The doc comment of each field is also its `--help` text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on for WebSocket and HTTP. Default 127.0.0.1:8080.
    #[arg(long, env = "SHARDCAST_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Number of shards (threads, one per core is best). Default 0 = one per available core.
    #[arg(long, env = "SHARDCAST_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Directory for durable data (used by the message store). Default ./data.
    #[arg(long, env = "SHARDCAST_DATA", default_value = "./data")]
    pub data: PathBuf,

    /// Memory for the store's block cache, in bytes. Default 16777216 (16 MiB).
    #[arg(long, env = "SHARDCAST_STORE_CACHE_BYTES", default_value_t = 16 << 20)]
    pub store_cache_bytes: u64,

    /// Unflushed messages the store keeps in memory before writing a table to disk, in bytes;
    /// at least 1 MiB. Its two small keyspaces (last seqs, cursors) take at most 1 MiB each.
    /// It applies to a data directory created with it (the store keeps the size it was
    /// created with). It is freed at every flush, so the server's RSS rises and falls by about
    /// this much. Default 2097152 (2 MiB).
    #[arg(long, env = "SHARDCAST_STORE_MEMTABLE_BYTES", default_value_t = 2 << 20)]
    pub store_memtable_bytes: u64,

    /// Free space the data directory's filesystem must keep, in bytes. Below it, `publish` and
    /// `send` answer `unavailable` (reads go on) and /readyz is 503, until free space is back
    /// above it plus an eighth (no restart needed). The store writer reads it at most every
    /// 100 ms while writing and every second while idle. Only for the embedded engine with
    /// durability sync or async. Default 268435456 (256 MiB); 0 = off.
    #[arg(long, env = "SHARDCAST_MIN_FREE_DISK_BYTES", default_value_t = 256 << 20)]
    pub min_free_disk_bytes: u64,

    /// How messages are stored before they are acknowledged: sync (on disk first, group
    /// commit), async (acknowledged at once, on disk within flush_interval_ms) or memory (not on
    /// disk). Default sync.
    #[arg(long, env = "SHARDCAST_DURABILITY", value_enum, default_value = "sync")]
    pub durability: Durability,

    /// With async durability, the longest an acknowledged message waits to reach disk, in
    /// milliseconds. Default 100.
    #[arg(long, env = "SHARDCAST_FLUSH_INTERVAL_MS", default_value_t = 100)]
    pub flush_interval_ms: u64,

    /// With sync durability, the shortest time between two group commits (each one fsync), in
    /// microseconds. Under load the messages that arrive meanwhile wait and share the next
    /// commit (fewer fsyncs, less CPU per message); a commit after a quiet spell of this long
    /// is not delayed. Default 500; 0 = commit as soon as the previous one is done.
    #[arg(long, env = "SHARDCAST_COMMIT_INTERVAL_US", default_value_t = 500)]
    pub commit_interval_us: u64,

    /// Most messages one recovery replays: a `join` with `since`, the offline direct messages at
    /// connect, one `sync` reply. Default 1000.
    #[arg(long, env = "SHARDCAST_REPLAY_LIMIT", default_value_t = 1_000)]
    pub replay_limit: usize,

    /// Messages kept per room; older ones are trimmed. Default 10000; 0 = no limit.
    #[arg(
        long,
        env = "SHARDCAST_ROOM_RETENTION_MESSAGES",
        default_value_t = 10_000
    )]
    pub room_retention_messages: u64,

    /// Age after which room messages are trimmed, in seconds. Default 604800 (7 days); 0 = no
    /// limit.
    #[arg(long, env = "SHARDCAST_ROOM_RETENTION_SECS", default_value_t = 604_800)]
    pub room_retention_secs: u64,

    /// Messages kept per user inbox; older ones are trimmed. Default 10000; 0 = no limit.
    #[arg(
        long,
        env = "SHARDCAST_INBOX_RETENTION_MESSAGES",
        default_value_t = 10_000
    )]
    pub inbox_retention_messages: u64,

    /// Age after which inbox messages are trimmed, in seconds. Default 2592000 (30 days); 0 =
    /// no limit.
    #[arg(
        long,
        env = "SHARDCAST_INBOX_RETENTION_SECS",
        default_value_t = 2_592_000
    )]
    pub inbox_retention_secs: u64,

    /// How often the background trimmer applies retention, in milliseconds. Default 60000.
    #[arg(
        long,
        env = "SHARDCAST_RETENTION_INTERVAL_MS",
        default_value_t = 60_000
    )]
    pub retention_interval_ms: u64,

    /// Idempotency keys (`key` of `publish` and `send`) remembered per room or inbox: past it
    /// the oldest are forgotten first, even while their messages are kept, and a repeat of a
    /// forgotten key is stored again. About 30 bytes of memory each (embedded engine). Default
    /// 1000; at least 1.
    #[arg(long, env = "SHARDCAST_IDEMPOTENCY_MAX_KEYS", default_value_t = 1_000)]
    pub idempotency_max_keys: usize,

    /// How long a key outlives its message, in seconds: a key is forgotten only once its message
    /// is trimmed and the key is this old (within `idempotency_max_keys`). Default 86400 (24
    /// hours); 0 = as long as the message is kept.
    #[arg(
        long,
        env = "SHARDCAST_IDEMPOTENCY_WINDOW_SECS",
        default_value_t = 86_400
    )]
    pub idempotency_window_secs: u64,

    /// HS256 secret for client JWTs, at least 32 bytes (`openssl rand -base64 32`). Default none:
    /// dev mode, where `?user=ID` is trusted and only a loopback bind is allowed.
    #[arg(long, env = "SHARDCAST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file with the RSA or EC (P-256) public key that verifies RS256 or ES256 client JWTs.
    /// Default none. Any of jwt_secret, jwt_public_key and jwks_url turns dev mode off.
    #[arg(long, env = "SHARDCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// http:// or https:// URL of a JWKS (RS256 and ES256 keys), fetched at start and every
    /// jwks_refresh_secs; a token's `kid` picks its key. Default none.
    #[arg(long, env = "SHARDCAST_JWKS_URL")]
    pub jwks_url: Option<String>,

    /// PEM file of CA certificates trusted for an https jwks_url besides the public web roots
    /// (an identity provider behind a private CA). Default none.
    #[arg(long, env = "SHARDCAST_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,

    /// Seconds between background refreshes of jwks_url; a token with an unknown `kid` also
    /// triggers one (at most one a second). Default 300.
    #[arg(long, env = "SHARDCAST_JWKS_REFRESH_SECS", default_value_t = 300)]
    pub jwks_refresh_secs: u64,

    /// The `aud` a client JWT must carry (one of, if it is a list). Default none: `aud` is not
    /// checked.
    #[arg(long, env = "SHARDCAST_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// The `iss` a client JWT must carry. Default none: `iss` is not checked.
    #[arg(long, env = "SHARDCAST_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// How long a connection stays open after its token's `exp` before it is closed with 4001,
    /// in seconds: the time a client has to send `refresh` with a new token. Checked at each
    /// heartbeat. Default 30.
    #[arg(long, env = "SHARDCAST_TOKEN_GRACE_SECS", default_value_t = 30)]
    pub token_grace_secs: u64,

    /// Refuse tokens without an `exp` claim, at connect and in `refresh`: a token that never
    /// expires keeps its connections open for good once leaked or revoked. Only meaningful with
    /// jwt_secret, jwt_public_key or jwks_url. With false such tokens are accepted, but a
    /// `refresh` without `exp` is still refused on a connection that has an expiry (it cannot
    /// take it off). Default true.
    #[arg(long, env = "SHARDCAST_REQUIRE_EXP", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_exp: bool,

    /// Let clients authenticate with a first frame `{"type":"connect","token":..}` instead of a
    /// token in the URL (which proxies log): an upgrade without credentials is accepted and
    /// must send that frame within first_frame_timeout_ms. Ignored in dev mode. Default false.
    #[arg(long, env = "SHARDCAST_FIRST_FRAME_AUTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub first_frame_auth: bool,

    /// With first_frame_auth, how long an upgraded connection may take to send its `connect`
    /// frame before it is closed with 4002, in milliseconds. Default 5000.
    #[arg(
        long,
        env = "SHARDCAST_FIRST_FRAME_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub first_frame_timeout_ms: u64,

    /// Browser origins allowed to open a WebSocket, comma-separated; `*.` in a host matches any
    /// subdomain (`https://*.example.com`), and `*` alone any origin. Default none: only the
    /// server's own host (Origin host = Host header), or in dev mode a loopback page
    /// (http(s)://localhost, 127.0.0.1 or [::1], any port). Requests
    /// without an Origin header (non-browser clients) are always allowed.
    #[arg(long, env = "SHARDCAST_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Serve the HTTP server API under /api/. Default true.
    #[arg(long, env = "SHARDCAST_API", default_value_t = true, action = clap::ArgAction::Set)]
    pub api: bool,

    /// Key for the HTTP server API (`Authorization: apikey KEY`). Default none: the API is open
    /// in loopback dev mode only; outside dev mode the server will not start with the API on
    /// and no key.
    #[arg(long, env = "SHARDCAST_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// How long the API waits for a request's body once its headers are in, in milliseconds; a
    /// body not complete by then (a Content-Length that promises more than is sent) gets 408
    /// and the connection is closed. Default 10000.
    #[arg(long, env = "SHARDCAST_API_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub api_body_timeout_ms: u64,

    /// Key that /metrics requires (`Authorization: Bearer KEY`). Default none: /metrics answers
    /// whoever reaches it.
    #[arg(long, env = "SHARDCAST_METRICS_KEY", hide_env_values = true)]
    pub metrics_key: Option<String>,

    /// Address of a second listener that serves /metrics, /healthz and /readyz only, for a
    /// scraper on a private network; the public listener then answers 404 for /metrics. Its
    /// connections take no handshake slot, so a flood of the public listener does not stop
    /// scrapes. Default none: /metrics is served on bind.
    #[arg(long, env = "SHARDCAST_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,

    /// Record the event feed (docs/hooks.md): room messages, direct messages, presence,
    /// occupied/vacated and connections, stored with what they tell of and served by
    /// `GET /api/events`. webhook_url turns it on too. With --redis-url the feed lives in
    /// Redis. Default false.
    #[arg(long, env = "SHARDCAST_EVENT_FEED", default_value_t = false, action = clap::ArgAction::Set)]
    pub event_feed: bool,

    /// http:// or https:// URL the event feed is POSTed to, in batches, from a cursor kept in
    /// the store (at least once, in order; docs/hooks.md). Needs webhook_secret. Default none: no push.
    #[arg(long, env = "SHARDCAST_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Secret that signs each webhook batch (`Shardcast-Signature: t=..,v1=..`, HMAC-SHA256),
    /// at least 16 bytes. Default none.
    #[arg(long, env = "SHARDCAST_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,

    /// Most events in one webhook POST, 1 to 10000. Default 100.
    #[arg(long, env = "SHARDCAST_WEBHOOK_BATCH", default_value_t = 100)]
    pub webhook_batch: usize,

    /// How long a webhook POST may take, connect to answer, before it counts as failed, in
    /// milliseconds. Default 5000.
    #[arg(long, env = "SHARDCAST_WEBHOOK_TIMEOUT_MS", default_value_t = 5_000)]
    pub webhook_timeout_ms: u64,

    /// Longest wait between two tries of a failed webhook POST, in milliseconds: the first
    /// retry is after 100 ms (or this, if less), each next one twice as late up to this.
    /// Default 30000.
    #[arg(
        long,
        env = "SHARDCAST_WEBHOOK_BACKOFF_MAX_MS",
        default_value_t = 30_000
    )]
    pub webhook_backoff_max_ms: u64,

    /// Events the feed keeps: past it the oldest are dropped, delivered or not, and the next
    /// batch says how many were never delivered (`dropped`). 0 = no limit. Default 1000000.
    #[arg(
        long,
        env = "SHARDCAST_WEBHOOK_RETENTION_EVENTS",
        default_value_t = 1_000_000
    )]
    pub webhook_retention_events: u64,

    /// Age after which feed events are dropped, delivered or not, in seconds (counted in
    /// `dropped` like the above). 0 = no limit. Default 604800 (7 days).
    #[arg(
        long,
        env = "SHARDCAST_WEBHOOK_RETENTION_SECS",
        default_value_t = 604_800
    )]
    pub webhook_retention_secs: u64,

    /// Serve the web pages: the chat page at /, the operator page at /admin and the client
    /// library at /shardcast.js. Default true.
    #[arg(long, env = "SHARDCAST_WEB", default_value_t = true, action = clap::ArgAction::Set)]
    pub web: bool,

    /// Log format: text or json. Default text. The level comes from RUST_LOG (default: the
    /// server's lines at info, other crates' at warn).
    #[arg(long, env = "SHARDCAST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Interval between server pings, in milliseconds. Default 25000.
    #[arg(long, env = "SHARDCAST_HEARTBEAT_MS", default_value_t = 25_000)]
    pub heartbeat_ms: u64,

    /// A connection with no inbound traffic for this long is closed with 1008, in milliseconds.
    /// Checked at each heartbeat. Default 0 = twice heartbeat_ms.
    #[arg(long, env = "SHARDCAST_IDLE_TIMEOUT_MS", default_value_t = 0)]
    pub idle_timeout_ms: u64,

    /// What a second connection of the same user does: multi, kick_old or reject_new.
    /// Default multi.
    #[arg(
        long,
        env = "SHARDCAST_SESSION_POLICY",
        value_enum,
        default_value = "multi"
    )]
    pub session_policy: SessionPolicy,

    /// Most connections one user may hold under the multi policy. Default 16.
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    pub max_connections_per_user: u32,

    /// Largest client message, in bytes; bigger ones get `too_large` and a frame over 16 times
    /// this closes the connection with 1009. Default 65536.
    #[arg(long, env = "SHARDCAST_MAX_MESSAGE_SIZE", default_value_t = 65_536)]
    pub max_message_size: usize,

    /// Deepest nesting of arrays and objects in a `publish` or `send` body (and the server
    /// API's publish, send and broadcast bodies); deeper ones get `bad_request`. Bodies are
    /// relayed as they are, and parsers that bound depth fail on deep ones. Default 64.
    #[arg(long, env = "SHARDCAST_MAX_BODY_DEPTH", default_value_t = 64)]
    pub max_body_depth: usize,

    /// Largest `emoji` of a `react` or `unreact`, in bytes (UTF-8; one emoji with modifiers is
    /// up to ~35); longer ones get `bad_request`. Each reaction is kept per message with its
    /// users, so this bounds what one costs. Default 64.
    #[arg(long, env = "SHARDCAST_MAX_EMOJI_BYTES", default_value_t = 64)]
    pub max_emoji_bytes: usize,

    /// Most different emoji on one message; a `react` with another one gets `too_large`
    /// (reacting with one already there still works). Bounds a message's folded state, which
    /// every later edit, delete or reaction of it reads and rewrites. Default 32.
    #[arg(long, env = "SHARDCAST_MAX_REACTION_EMOJIS", default_value_t = 32)]
    pub max_reaction_emojis: usize,

    /// permessage-deflate (RFC 7692): when set, connections whose client offers it negotiate it
    /// (with no context takeover either way), and data frames with at least this many payload
    /// bytes go out compressed, each once per shard for all its members. Default none: not
    /// negotiated, because most chat messages are too small to gain (docs/performance.md).
    #[arg(long, env = "SHARDCAST_COMPRESSION_MIN_BYTES")]
    pub compression_min_bytes: Option<usize>,

    /// Most rooms one connection may be in. Default 256.
    #[arg(
        long,
        env = "SHARDCAST_MAX_ROOMS_PER_CONNECTION",
        default_value_t = 256
    )]
    pub max_rooms_per_connection: usize,

    /// Sustained requests per second per connection that write or read the store, or ask who is
    /// in a room (publish, send, history, sync, presence, refresh). Default 50.
    #[arg(long, env = "SHARDCAST_PUBLISH_RATE", default_value_t = 50)]
    pub publish_rate: u32,

    /// Publishes a connection may make in a burst above the rate. Default 100.
    #[arg(long, env = "SHARDCAST_PUBLISH_BURST", default_value_t = 100)]
    pub publish_burst: u32,

    /// Sustained bytes one user may store per second with `publish` and `send` together, over
    /// its connections on one shard (a user spread over S shards may store S times as much; the
    /// server API is not charged). A message costs its body, its room or recipient and sender
    /// names and 100 bytes (about its size in the store); past the budget it gets `rate_limited`
    /// and is not stored. The default is over 100 times a fast typist's chat (a message of ~200
    /// bytes a second) and bounds one user to ~2.8 GB a day per shard. Default 32768; 0 = no
    /// limit.
    #[arg(
        long,
        env = "SHARDCAST_USER_STORE_RATE_BYTES",
        default_value_t = 32_768
    )]
    pub user_store_rate_bytes: u64,

    /// Bytes a user may store in a burst above user_store_rate_bytes, per shard (15 messages of
    /// 64 KiB: a few pasted blocks in a row pass); at least max_message_size + 356, so the
    /// largest message fits. Default 1048576 (1 MiB).
    #[arg(long, env = "SHARDCAST_USER_STORE_BURST_BYTES", default_value_t = 1 << 20)]
    pub user_store_burst_bytes: u64,

    /// Stored messages per second a connection may read, sustained: what `join` with `since`,
    /// `history` and `sync` return and the offline messages at connect. A read is charged when
    /// its answer comes; while the connection is in debt, the next one gets `rate_limited`.
    /// Default 1000.
    #[arg(long, env = "SHARDCAST_READ_RATE", default_value_t = 1_000)]
    pub read_rate: u32,

    /// Stored messages a connection may read in a burst above read_rate. Reads sent together
    /// are all served before any is charged, so a reconnect that rejoins all its rooms with
    /// `since` at once is never refused, however many rooms; the burst is what it may read
    /// after that before the rate applies (ten full replays of 1000). Default 10000.
    #[arg(long, env = "SHARDCAST_READ_BURST", default_value_t = 10_000)]
    pub read_burst: u32,

    /// Unsent bytes a connection may have queued before it is closed as a slow consumer (4000).
    /// Default 1048576 (1 MiB).
    #[arg(long, env = "SHARDCAST_MAX_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub max_queue_bytes: usize,

    /// Unsent bytes all connections together may have queued. Each shard holds its equal share:
    /// over it, its connections with the largest queues are closed as slow consumers (4000)
    /// until it is back under 90% of the share. Default 1073741824 (1 GiB); 0 = no bound.
    #[arg(long, env = "SHARDCAST_MAX_TOTAL_QUEUE_BYTES", default_value_t = 1 << 30)]
    pub max_total_queue_bytes: usize,

    /// Signals (`signal` frames: typing indicators) a connection may send per second,
    /// sustained; `read` frames count here too. Over it, `rate_limited`. Default 20.
    #[arg(long, env = "SHARDCAST_SIGNAL_RATE", default_value_t = 20)]
    pub signal_rate: u32,

    /// Signals and reads a connection may send in a burst above signal_rate. Default 40.
    #[arg(long, env = "SHARDCAST_SIGNAL_BURST", default_value_t = 40)]
    pub signal_burst: u32,

    /// Largest `body` of a `signal`, in bytes of JSON: a typing indicator needs a few. Over
    /// it, `too_large`. Default 1024.
    #[arg(long, env = "SHARDCAST_MAX_SIGNAL_BYTES", default_value_t = 1_024)]
    pub max_signal_bytes: usize,

    /// A connection with more unsent bytes than this gets no signals or receipts (they are
    /// dropped and counted), so a slow consumer loses signals before messages. Default 65536.
    #[arg(long, env = "SHARDCAST_SIGNAL_QUEUE_BYTES", default_value_t = 65_536)]
    pub signal_queue_bytes: usize,

    /// Read positions: at most one store write and one `receipt` per user and stream per this
    /// many milliseconds (positions moved in between are coalesced; a position acknowledged
    /// less than this before a crash may be lost). Default 1000.
    #[arg(long, env = "SHARDCAST_READ_INTERVAL_MS", default_value_t = 1_000)]
    pub read_interval_ms: u64,

    /// Send `joined` / `left` events to the members of `list` rooms (see `[[rooms]]`). Default
    /// true.
    #[arg(long, env = "SHARDCAST_PRESENCE_EVENTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub presence_events: bool,

    /// How often a `count` room (or a `list` room past its presence_list_max) may send its
    /// members an `occupancy` event, in milliseconds: joins and leaves in between are
    /// coalesced into one event, sent only if the count changed. Default 1000.
    #[arg(long, env = "SHARDCAST_OCCUPANCY_INTERVAL_MS", default_value_t = 1_000)]
    pub occupancy_interval_ms: u64,

    /// How long shutdown waits for connections to take their 1001 close, in milliseconds.
    /// Default 3000.
    #[arg(long, env = "SHARDCAST_SHUTDOWN_TIMEOUT_MS", default_value_t = 3_000)]
    pub shutdown_timeout_ms: u64,

    /// How long a closing connection may take to flush its close frame, in milliseconds.
    /// Default 2000.
    #[arg(long, env = "SHARDCAST_CLOSE_TIMEOUT_MS", default_value_t = 2_000)]
    pub close_timeout_ms: u64,

    /// Most a shard waits after an expensive flush pass before the next, so that frames pile up
    /// and leave several per write; the wait is half the last pass's time, so cheap passes add
    /// none. In milliseconds. Default 4; 0 writes as soon as frames are queued.
    #[arg(long, env = "SHARDCAST_MAX_BATCH_DELAY_MS", default_value_t = 4)]
    pub max_batch_delay_ms: u64,

    /// The shortest time between two flush passes of a shard, in microseconds: under load a
    /// socket's frames wait up to this long and leave in one write (fewer writes, less CPU per
    /// delivery); a flush after a quiet spell of this long is not delayed. tokio's timer counts
    /// whole milliseconds, so a wait is rounded up to one. At most 100000. Default 0 (write as
    /// soon as frames are queued): 5000 took 15% off fan-out's CPU per delivery but added 4 ms
    /// to chat's median latency, and 1000 saved nothing (docs/performance-log.md).
    #[arg(long, env = "SHARDCAST_WRITE_DELAY_US", default_value_t = 0)]
    pub write_delay_us: u64,

    /// Time a new TCP connection has to send its complete HTTP request headers (the WebSocket
    /// upgrade or an API call), and a keep-alive connection, from its last response, its next
    /// request's headers, in milliseconds; then it is closed. A response whose write makes no
    /// progress for this long (a client that does not read) closes its connection too.
    /// Default 10000.
    #[arg(long, env = "SHARDCAST_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Most handshakes each shard serves at once: new connections until their first response,
    /// keep-alive connections from the first byte of a request until its response is written,
    /// upgrades until they are admitted, and with `first_frame_auth` until their `connect`
    /// frame is read. Idle keep-alive connections do not count (max_keepalive_connections).
    /// While the accepting shard is at it, new connections wait in the listen backlog; one
    /// handed to another shard over it is closed at once. Default 1024.
    #[arg(long, env = "SHARDCAST_MAX_HANDSHAKES", default_value_t = 1_024)]
    pub max_handshakes: usize,

    /// Most idle keep-alive HTTP connections (between two requests) each shard keeps. At the
    /// cap, responses carry `Connection: close` and the server closes the connection after
    /// them. Default 1024; 0 = no keep-alive.
    #[arg(
        long,
        env = "SHARDCAST_MAX_KEEPALIVE_CONNECTIONS",
        default_value_t = 1_024
    )]
    pub max_keepalive_connections: usize,

    /// How long an idle keep-alive HTTP connection may wait for the first byte of its next
    /// request before the server closes it, in milliseconds (handshake_timeout_ms, which runs
    /// from a response to the end of the next request's headers, closes it sooner if it is
    /// shorter). Default 5000.
    #[arg(long, env = "SHARDCAST_KEEPALIVE_TIMEOUT_MS", default_value_t = 5_000)]
    pub keepalive_timeout_ms: u64,

    /// Connections the kernel queues before they are accepted (listen backlog; the kernel caps
    /// it at net.core.somaxconn). A reconnect storm overflowing it costs clients a 1 s SYN
    /// retry. Default 4096.
    #[arg(long, env = "SHARDCAST_LISTEN_BACKLOG", default_value_t = 4_096)]
    pub listen_backlog: u32,

    /// Largest HTTP request head (request line and headers), in bytes; a bigger one gets 431.
    /// Default 16384.
    #[arg(long, env = "SHARDCAST_MAX_HEADER_BYTES", default_value_t = 16_384)]
    pub max_header_bytes: usize,

    /// Let the kernel back the heap with 2 MiB transparent huge pages (THP). Default false: the
    /// server turns THP off for its process (`PR_SET_THP_DISABLE`, Linux). The allocator
    /// (mimalloc) asks for huge pages, so memory is then committed 2 MiB at a time, which
    /// measured ~45% more RSS per idle connection (1.9 KB against 1.3 KB) for no CPU gain
    /// (docs/performance.md).
    #[arg(long, env = "SHARDCAST_TRANSPARENT_HUGE_PAGES", default_value_t = false, action = clap::ArgAction::Set)]
    pub transparent_huge_pages: bool,

    /// Serve /echo, a WebSocket endpoint that echoes text and binary messages through the
    /// server's own frame layer, for conformance suites. Dev mode only: the server refuses to
    /// start with it and a jwt_secret. Default false.
    #[arg(long, env = "SHARDCAST_ECHO", default_value_t = false, action = clap::ArgAction::Set)]
    pub echo: bool,

    /// Where rooms and inboxes are sequenced and stored: embedded (this process and its data
    /// directory) or redis (a cluster of nodes sharing redis_url). Default embedded.
    #[arg(long, env = "SHARDCAST_ENGINE", value_enum, default_value = "embedded")]
    pub engine: Engine,

    /// The Redis of the redis engine: redis://[:password@]host:port[/db], rediss:// (TLS) or
    /// redis+unix:///path. A Redis Cluster is found by itself; give one node, or several
    /// separated by commas. Default none.
    #[arg(long, env = "SHARDCAST_REDIS_URL")]
    pub redis_url: Option<String>,

    /// PEM file of the CA that signs the Redis servers' certificates, for rediss:// with a
    /// private CA. Default none: the public web roots.
    #[arg(long, env = "SHARDCAST_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Prefix of every Redis key and channel, so deployments can share a Redis. Default sc.
    #[arg(long, env = "SHARDCAST_REDIS_PREFIX", default_value = "sc")]
    pub redis_prefix: String,

    /// A Redis command not answered within this many milliseconds fails; publish and send
    /// then answer `unavailable`. Default 2000.
    #[arg(long, env = "SHARDCAST_REDIS_TIMEOUT_MS", default_value_t = 2_000)]
    pub redis_timeout_ms: u64,

    /// With the redis engine: after a publish or send is stored, wait (Redis `WAIT`, at most
    /// redis_timeout_ms) until this many replicas of its master have it before acking, so an
    /// acked message survives a failover. Fewer in time: the answer is `unavailable` (the
    /// message is stored; a resend with the same key is answered `dup`). Default 0: no wait.
    #[arg(long, env = "SHARDCAST_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// This node's id in a cluster, 0 to 16383, unique among the nodes. Default: none, Redis
    /// hands out the next free one at start.
    #[arg(long, env = "SHARDCAST_NODE_ID")]
    pub node_id: Option<u16>,

    /// With the redis engine: seconds after which a node whose heartbeat stopped (killed, cut
    /// off) is dead. Nodes beat and read each other's heartbeats every second, so a dead node's
    /// users are `left` and its sessions stop counting within this and a second; its members of
    /// `count` rooms are subtracted within it. With the event feed, its connections are
    /// `disconnected` then, by a sweep of one live node. Also the event feed's delivery lease:
    /// another node delivers within it when the delivering node dies. Default 10.
    #[arg(long, env = "SHARDCAST_PRESENCE_TTL_SECS", default_value_t = 10)]
    pub presence_ttl_secs: u64,

    /// http:// or https:// URL the hooks POST their JSON to (docs/hooks.md). The connect and send
    /// hooks run when hook_connect and hook_send say so, the join and publish hooks where a
    /// `[[rooms]]` rule lists them in `hooks`. Default none: no hooks.
    #[arg(long, env = "SHARDCAST_HOOK_URL")]
    pub hook_url: Option<String>,

    /// Run the connect hook for every WebSocket connection before it is admitted: the backend
    /// may refuse it, or set its user id, rooms, rights and presence info. Needs hook_url.
    /// Default false.
    #[arg(long, env = "SHARDCAST_HOOK_CONNECT", default_value_t = false, action = clap::ArgAction::Set)]
    pub hook_connect: bool,

    /// Run the send hook for every direct message: the backend may refuse it or replace its
    /// body. Needs hook_url. Default false.
    #[arg(long, env = "SHARDCAST_HOOK_SEND", default_value_t = false, action = clap::ArgAction::Set)]
    pub hook_send: bool,

    /// How long a hook may take, queueing for a slot included, before it counts as failed, in
    /// milliseconds; a `[[rooms]]` rule's `hook_timeout_ms` overrides it for its rooms.
    /// Default 1000.
    #[arg(long, env = "SHARDCAST_HOOK_TIMEOUT_MS", default_value_t = 1_000)]
    pub hook_timeout_ms: u64,

    /// What a failed hook (timeout, connection error, non-2xx status, an answer that is not the
    /// expected JSON) decides: deny (the request is refused with `unavailable`, a connect with
    /// 503) or allow (it goes on unchanged). A `[[rooms]]` rule's `hook_on_error` overrides it
    /// for its rooms. Default deny.
    #[arg(
        long,
        env = "SHARDCAST_HOOK_ON_ERROR",
        value_enum,
        default_value = "deny"
    )]
    pub hook_on_error: HookOnError,

    /// Hook calls in flight at once, for the whole process, split evenly between the shards
    /// (each at least one); more wait for a slot (within their timeout). Each shard keeps its
    /// own keep-alive connections to hook_url. Default 256.
    #[arg(long, env = "SHARDCAST_HOOK_MAX_CONCURRENCY", default_value_t = 256)]
    pub hook_max_concurrency: usize,

    /// Requests of one connection held behind its request whose hook is out (they keep their
    /// order); past it a request is refused with `rate_limited`. Default 64.
    #[arg(long, env = "SHARDCAST_HOOK_MAX_WAITING", default_value_t = 64)]
    pub hook_max_waiting: usize,

    /// Most bytes of a hook's answer; a bigger one is a failed hook. Default 65536.
    #[arg(
        long,
        env = "SHARDCAST_HOOK_MAX_ANSWER_BYTES",
        default_value_t = 65_536
    )]
    pub hook_max_answer_bytes: usize,

    /// With hook_connect, the query parameters of an upgrade without a token that the connect
    /// hook is sent (a session id, say), comma-separated; the hook then says who the user is.
    /// Default none.
    #[arg(long, env = "SHARDCAST_HOOK_CONNECT_QUERY", value_delimiter = ',')]
    pub hook_connect_query: Vec<String>,

    /// With hook_connect, the request headers of an upgrade without a token that the connect
    /// hook is sent (`cookie`, say), comma-separated, case-insensitive. Default none.
    #[arg(long, env = "SHARDCAST_HOOK_CONNECT_HEADERS", value_delimiter = ',')]
    pub hook_connect_headers: Vec<String>,

    /// Most bytes of the `info` object a connect hook's answer gives a connection (shown to
    /// other members in presence and `joined`); a bigger one, or one that is not a JSON
    /// object, fails the hook. Default 1024.
    #[arg(
        long,
        env = "SHARDCAST_MAX_PRESENCE_INFO_BYTES",
        default_value_t = 1_024
    )]
    pub max_presence_info_bytes: usize,

    /// PEM file of CA certificates trusted for an https hook_url or webhook_url besides the
    /// public web roots (a backend behind a private CA). Default none.
    #[arg(long, env = "SHARDCAST_HOOK_CA_FILE")]
    pub hook_ca_file: Option<PathBuf>,

    /// Hook calls in flight on one connection to hook_url (HTTP/1.1 pipelining). Default 1:
    /// one call at a time per connection, so a slow answer delays no other call (most backends
    /// answer a connection's requests one after another). Above 1, calls made in the same
    /// scheduler pass leave in one write on one connection, for a fast backend.
    #[arg(long, env = "SHARDCAST_HOOK_PIPELINE", default_value_t = 1)]
    pub hook_pipeline: usize,

    /// Room rules by name prefix, in the config file only: `[[rooms]]` tables with `prefix` and
    /// any of `publish` (members, granted, api), `presence` (list, count, off),
    /// `presence_list_max`, `history_messages`, `history_secs`, `recover`, `max_members`,
    /// `hooks`, `hook_timeout_ms`, `hook_on_error`, `signals` and `receipts`.
    /// The longest matching prefix wins; `prefix = ""` is the default rule. Default none.
    /// (Last: TOML writes tables after plain keys.)
    #[arg(skip)]
    pub rooms: Vec<RoomRule>,

    /// Deprecated: `[[room_retention]]` tables with `prefix`, `messages` and `secs`, the older
    /// form of a `[[rooms]]` rule's `history_messages` and `history_secs`; they still apply
    /// where their prefix is longer than a room's `[[rooms]]` rule. Default none.
    #[arg(skip)]
    pub room_retention: Vec<RetentionRule>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: 0,
            data: PathBuf::from("./data"),
            store_cache_bytes: 16 << 20,
            store_memtable_bytes: 2 << 20,
            min_free_disk_bytes: 256 << 20,
            durability: Durability::Sync,
            flush_interval_ms: 100,
            commit_interval_us: 500,
            replay_limit: 1_000,
            room_retention_messages: 10_000,
            room_retention_secs: 604_800,
            inbox_retention_messages: 10_000,
            inbox_retention_secs: 2_592_000,
            retention_interval_ms: 60_000,
            idempotency_max_keys: 1_000,
            idempotency_window_secs: 86_400,
            jwt_secret: None,
            jwt_public_key: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_secs: 300,
            jwt_audience: None,
            jwt_issuer: None,
            token_grace_secs: 30,
            require_exp: true,
            first_frame_auth: false,
            first_frame_timeout_ms: 5_000,
            allowed_origins: Vec::new(),
            api: true,
            api_key: None,
            api_body_timeout_ms: 10_000,
            metrics_key: None,
            metrics_bind: None,
            event_feed: false,
            webhook_url: None,
            webhook_secret: None,
            webhook_batch: 100,
            webhook_timeout_ms: 5_000,
            webhook_backoff_max_ms: 30_000,
            webhook_retention_events: 1_000_000,
            webhook_retention_secs: 604_800,
            web: true,
            log_format: LogFormat::Text,
            heartbeat_ms: 25_000,
            idle_timeout_ms: 0,
            session_policy: SessionPolicy::Multi,
            max_connections_per_user: 16,
            max_message_size: 65_536,
            max_body_depth: 64,
            max_emoji_bytes: 64,
            max_reaction_emojis: 32,
            compression_min_bytes: None,
            max_rooms_per_connection: 256,
            publish_rate: 50,
            publish_burst: 100,
            user_store_rate_bytes: 32_768,
            user_store_burst_bytes: 1 << 20,
            read_rate: 1_000,
            read_burst: 10_000,
            max_queue_bytes: 1 << 20,
            max_total_queue_bytes: 1 << 30,
            signal_rate: 20,
            signal_burst: 40,
            max_signal_bytes: 1_024,
            signal_queue_bytes: 65_536,
            read_interval_ms: 1_000,
            presence_events: true,
            occupancy_interval_ms: 1_000,
            shutdown_timeout_ms: 3_000,
            close_timeout_ms: 2_000,
            max_batch_delay_ms: 4,
            write_delay_us: 0,
            handshake_timeout_ms: 10_000,
            max_handshakes: 1_024,
            max_keepalive_connections: 1_024,
            keepalive_timeout_ms: 5_000,
            listen_backlog: 4_096,
            max_header_bytes: 16_384,
            transparent_huge_pages: false,
            echo: false,
            engine: Engine::Embedded,
            redis_url: None,
            redis_ca_file: None,
            redis_prefix: "sc".to_owned(),
            redis_timeout_ms: 2_000,
            redis_wait_replicas: 0,
            node_id: None,
            presence_ttl_secs: 10,
            hook_url: None,
            hook_connect: false,
            hook_send: false,
            hook_timeout_ms: 1_000,
            hook_on_error: HookOnError::Deny,
            hook_max_concurrency: 256,
            hook_max_waiting: 64,
            hook_max_answer_bytes: 65_536,
            hook_connect_query: Vec::new(),
            hook_connect_headers: Vec::new(),
            max_presence_info_bytes: 1_024,
            hook_ca_file: None,
            hook_pipeline: 1,
            rooms: Vec::new(),
            room_retention: Vec::new(),
        }
    }
}
