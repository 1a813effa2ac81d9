//! Tokens and time: HS256 tokens for JWT mode ([`mint`], [`token_for`] with [`SECRET`]), and the
//! wall clock in the units the protocol uses ([`now_secs`], [`now_millis`]). RS256 / ES256
//! tokens are in [`super::keys`].

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// The secret used by tests that run in JWT mode (an HS256 secret needs at least 32 bytes).
pub const SECRET: &str = "integration-test-secret-of-32-bytes";

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An HS256 token over `claims`, signed with `secret`.
pub fn mint(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("encode a JWT")
}

/// A token for `sub` valid for an hour, signed with [`SECRET`].
pub fn token_for(sub: &str) -> String {
    mint(SECRET, &json!({"sub": sub, "exp": now_secs() + 3600}))
}
