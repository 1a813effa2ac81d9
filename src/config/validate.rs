//! The checks of a configuration that its types cannot express, each refusal saying what to do.

use super::load::ConfigError;
use super::*;

/// The longest `write_delay_us`: a longer hold would let a busy shard's heartbeats and replies
/// wait long enough for clients to notice.
const MAX_WRITE_DELAY_US: u64 = 100_000;

impl Config {
    /// Checks the values that cannot be expressed in types.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.dev_mode() && !self.bind.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "no jwt_secret, jwt_public_key or jwks_url is configured, so the server would run \
                 in dev mode (trusting ?user=ID), which is only allowed on a loopback address, \
                 not {}; set --jwt-secret (or SHARDCAST_JWT_SECRET), or bind to 127.0.0.1",
                self.bind
            )));
        }
        if matches!(&self.jwt_secret, Some(s) if s.is_empty()) {
            return invalid(
                "jwt_secret is empty; give a real secret or leave it unset for dev mode",
            );
        }
        if let Some(secret) = &self.jwt_secret
            && secret.len() < MIN_JWT_SECRET_BYTES
        {
            return Err(ConfigError::Invalid(format!(
                "jwt_secret is {} bytes; an HS256 secret must be at least {MIN_JWT_SECRET_BYTES} \
                 bytes (256 bits, the size of the hash: RFC 7518 section 3.2), or it can be found \
                 by trying secrets against any token; make one with `openssl rand -base64 32`",
                secret.len()
            )));
        }
        if matches!(&self.api_key, Some(k) if k.is_empty()) {
            return invalid("api_key is empty; give a real key or leave it unset");
        }
        if self.api_body_timeout_ms == 0 {
            return invalid("api_body_timeout_ms must be greater than 0");
        }
        if matches!(&self.metrics_key, Some(k) if k.is_empty()) {
            return invalid("metrics_key is empty; give a real key or leave it unset");
        }
        if self
            .metrics_bind
            .is_some_and(|m| m == self.bind && m.port() != 0)
        {
            return invalid("metrics_bind must differ from bind: it is a second listener");
        }
        if self.api && self.api_key.is_none() && !self.dev_mode() {
            return invalid(
                "the HTTP API is on but has no api_key; set --api-key (or SHARDCAST_API_KEY), or \
                 turn the API off with --api false",
            );
        }
        if let Some(url) = &self.jwks_url
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            return Err(ConfigError::Invalid(format!(
                "jwks_url {url} is not an http:// or https:// URL"
            )));
        }
        if self.jwks_ca_file.is_some() && self.jwks_url.is_none() {
            return invalid("jwks_ca_file is set but jwks_url is not");
        }
        self.validate_feed()?;
        if self.jwks_refresh_secs == 0 {
            return invalid("jwks_refresh_secs must be greater than 0");
        }
        if self.allowed_origins.iter().any(|o| o.is_empty()) {
            return invalid("allowed_origins has an empty entry");
        }
        match (self.engine, &self.redis_url) {
            (Engine::Redis, None) => return invalid("the redis engine needs --redis-url"),
            (Engine::Embedded, Some(_)) => {
                return invalid("redis_url is set but the engine is embedded; add --engine redis");
            }
            _ => {}
        }
        if self
            .node_id
            .is_some_and(|n| n as usize >= crate::core::ConnId::MAX_NODES)
        {
            return invalid("node_id must be below 16384");
        }
        if self.presence_ttl_secs < 3 {
            return invalid("presence_ttl_secs must be at least 3");
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}']) {
            return invalid("redis_prefix must be non-empty, without { or }");
        }
        if self.echo && !self.dev_mode() {
            return invalid(
                "echo is a dev-mode endpoint for conformance tests and cannot be turned on with a \
                 JWT key; remove --echo (or SHARDCAST_ECHO), or run without jwt_secret, \
                 jwt_public_key and jwks_url on loopback",
            );
        }
        if self.handshake_timeout_ms == 0 || self.max_handshakes == 0 {
            return invalid("handshake_timeout_ms and max_handshakes must be greater than 0");
        }
        if self.keepalive_timeout_ms == 0 {
            return invalid(
                "keepalive_timeout_ms must be greater than 0; to turn keep-alive off, set \
                 max_keepalive_connections to 0",
            );
        }
        if self.max_header_bytes < 1024 {
            return invalid("max_header_bytes must be at least 1024");
        }
        if self.heartbeat_ms == 0 {
            return invalid("heartbeat_ms must be greater than 0");
        }
        if self.max_message_size < 128 {
            return invalid("max_message_size must be at least 128 bytes");
        }
        if self.idempotency_max_keys == 0 {
            return invalid("idempotency_max_keys must be at least 1");
        }
        if self.max_body_depth == 0 {
            return invalid("max_body_depth must be at least 1");
        }
        if self.max_emoji_bytes == 0 || self.max_reaction_emojis == 0 {
            return invalid("max_emoji_bytes and max_reaction_emojis must be at least 1");
        }
        if self.max_queue_bytes < self.max_message_size {
            return invalid("max_queue_bytes must be at least max_message_size");
        }
        if self.signal_rate == 0 || self.signal_burst == 0 {
            return invalid("signal_rate and signal_burst must be greater than 0");
        }
        if self.read_interval_ms == 0 {
            return invalid("read_interval_ms must be greater than 0");
        }
        if self.publish_rate == 0 || self.publish_burst == 0 {
            return invalid("publish_rate and publish_burst must be greater than 0");
        }
        if self.user_store_rate_bytes != 0
            && self.user_store_burst_bytes < self.max_message_size as u64 + MAX_STORE_OVERHEAD
        {
            return Err(ConfigError::Invalid(format!(
                "user_store_burst_bytes must be at least max_message_size + {MAX_STORE_OVERHEAD} \
                 ({}), or the largest message could never be stored",
                self.max_message_size as u64 + MAX_STORE_OVERHEAD
            )));
        }
        if self.read_rate == 0 || self.read_burst == 0 {
            return invalid("read_rate and read_burst must be greater than 0");
        }
        if self.max_connections_per_user == 0 || self.max_rooms_per_connection == 0 {
            return invalid("max_connections_per_user and max_rooms_per_connection must be > 0");
        }
        if self.replay_limit == 0 {
            return invalid("replay_limit must be greater than 0");
        }
        if self.flush_interval_ms == 0 || self.retention_interval_ms == 0 {
            return invalid("flush_interval_ms and retention_interval_ms must be greater than 0");
        }
        if self.write_delay_us > MAX_WRITE_DELAY_US {
            return Err(ConfigError::Invalid(format!(
                "write_delay_us is {}; set it to at most {MAX_WRITE_DELAY_US} (100 ms): under \
                 load every frame may wait this long before it is written",
                self.write_delay_us
            )));
        }
        if self.room_retention.iter().any(|r| r.prefix.is_empty()) {
            return invalid("a room_retention rule needs a non-empty prefix");
        }
        for (i, rule) in self.rooms.iter().enumerate() {
            if self.rooms[..i].iter().any(|r| r.prefix == rule.prefix) {
                return Err(ConfigError::Invalid(format!(
                    "two [[rooms]] rules have the prefix \"{}\"; give each prefix one rule",
                    rule.prefix
                )));
            }
            if rule.presence_list_max == Some(0) {
                return invalid("presence_list_max must be at least 1 (use presence = \"count\")");
            }
        }
        if self.occupancy_interval_ms == 0 {
            return invalid("occupancy_interval_ms must be greater than 0");
        }
        if self.store_memtable_bytes < 1 << 20 {
            return invalid("store_memtable_bytes must be at least 1048576 (1 MiB)");
        }
        if self.shard_count() > crate::core::ConnId::MAX_SHARDS {
            return invalid("too many shards (at most 1024)");
        }
        if self.max_total_queue_bytes != 0
            && self.max_total_queue_bytes / self.shard_count() < self.max_queue_bytes
        {
            return invalid(
                "max_total_queue_bytes divided by the shards must be at least max_queue_bytes \
                 (or 0 for no bound)",
            );
        }
        self.validate_hooks()
    }

    fn validate_hooks(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if let Some(url) = &self.hook_url
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            return Err(ConfigError::Invalid(format!(
                "hook_url {url} is not an http:// or https:// URL"
            )));
        }
        if self.hook_ca_file.is_some() && self.hook_url.is_none() && self.webhook_url.is_none() {
            return invalid("hook_ca_file is set but neither hook_url nor webhook_url is");
        }
        let rule_hooks = self.rooms.iter().any(|r| r.hooks.is_some());
        if self.hook_url.is_none() && (self.hook_connect || self.hook_send || rule_hooks) {
            return invalid(
                "hook_connect, hook_send or a [[rooms]] rule's hooks is set but hook_url is not; \
                 set --hook-url",
            );
        }
        let rule_zero = self.rooms.iter().any(|r| r.hook_timeout_ms == Some(0));
        if self.hook_timeout_ms == 0 || rule_zero {
            return invalid("hook_timeout_ms must be greater than 0");
        }
        if self.hook_max_concurrency == 0 {
            return invalid("hook_max_concurrency must be at least 1");
        }
        if self.hook_max_answer_bytes < 64 {
            return invalid("hook_max_answer_bytes must be at least 64");
        }
        if self.hook_pipeline == 0 {
            return invalid("hook_pipeline must be at least 1");
        }
        Ok(())
    }
}

/// The shortest `webhook_secret`: a signature is only as strong as its key.
const MIN_WEBHOOK_SECRET_BYTES: usize = 16;

impl Config {
    /// The event feed's fields (`event_feed`, `webhook_*`).
    fn validate_feed(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(url) = &self.webhook_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return invalid(format!(
                    "webhook_url {url} is not an http:// or https:// URL"
                ));
            }
            match &self.webhook_secret {
                None => {
                    return invalid(
                        "webhook_url is set but webhook_secret is not: every batch is signed; \
                         make one with `openssl rand -hex 32`"
                            .into(),
                    );
                }
                Some(s) if s.len() < MIN_WEBHOOK_SECRET_BYTES => {
                    return invalid(format!(
                        "webhook_secret is {} bytes; give at least {MIN_WEBHOOK_SECRET_BYTES} \
                         (`openssl rand -hex 32`)",
                        s.len()
                    ));
                }
                Some(_) => {}
            }
        }
        if !(1..=10_000).contains(&self.webhook_batch) {
            return invalid(format!(
                "webhook_batch is {}; give 1 to 10000",
                self.webhook_batch
            ));
        }
        if self.webhook_timeout_ms == 0 || self.webhook_backoff_max_ms == 0 {
            return invalid(
                "webhook_timeout_ms and webhook_backoff_max_ms must be greater than 0".into(),
            );
        }
        Ok(())
    }
}
