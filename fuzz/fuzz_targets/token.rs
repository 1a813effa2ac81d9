//! The handshake's credential parser (`auth::Authenticator::authenticate`) in JWT mode.
//!
//! Random bytes almost never carry a valid HS256 signature, so most inputs would stop at the
//! signature check. The first byte picks a mode:
//! - even: the rest is split at the first 0xFF into the query string and the bearer token,
//!   both as sent by a client;
//! - odd: the rest is split at the first 0xFF into a JWT header and payload (JSON, as the
//!   fuzzer likes), which are encoded and signed with the server's secret, so the claim
//!   parsing and checks behind the signature are reached.
#![no_main]

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use shardcast::auth::Authenticator;
use shardcast::config::Config;

const SECRET: &str = "fuzz-secret-0123456789abcdef012345";

static AUTH: LazyLock<Authenticator> = LazyLock::new(|| {
    let config = Config {
        jwt_secret: Some(SECRET.into()),
        ..Config::default()
    };
    Authenticator::new(&config).expect("an HS256 secret needs no key file")
});
static KEY: LazyLock<EncodingKey> = LazyLock::new(|| EncodingKey::from_secret(SECRET.as_bytes()));

fn halves(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (a, b) = halves(rest);
    if mode % 2 == 0 {
        let query = String::from_utf8_lossy(a);
        let bearer = String::from_utf8_lossy(b);
        let _ = AUTH.authenticate(Some(&query), Some(&bearer), 8);
    } else {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(a),
            URL_SAFE_NO_PAD.encode(b)
        );
        let Ok(signature) = jsonwebtoken::crypto::sign(message.as_bytes(), &KEY, Algorithm::HS256)
        else {
            return;
        };
        let query = format!("token={message}.{signature}");
        let _ = AUTH.authenticate(Some(&query), None, 8);
    }
});
