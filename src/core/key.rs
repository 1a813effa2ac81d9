//! `MsgKey`: a `publish` or `send` request's idempotency key, chosen by the client. Only its
//! shape is checked here; what a repeat means is the engines'.

use std::fmt;

use super::error::{ErrorCode, ReplyError};

/// Longest key, in bytes (the contract's limit, not a tunable).
pub const MAX_KEY_LEN: usize = 64;

/// 1–64 printable ASCII characters (0x21–0x7E): no space, so "SENDER KEY" on disk and in
/// Redis splits at the one space.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MsgKey(Box<str>);

impl MsgKey {
    pub fn new(s: &str) -> Result<MsgKey, ReplyError> {
        let printable = s.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if s.is_empty() || s.len() > MAX_KEY_LEN || !printable {
            return Err(MsgKey::refusal());
        }
        Ok(MsgKey(s.into()))
    }

    /// The error for a key of another shape.
    pub fn refusal() -> ReplyError {
        ReplyError::new(
            ErrorCode::BadRequest,
            format!(
                "`key` must be 1 to {MAX_KEY_LEN} printable ASCII characters (0x21-0x7E: no \
                 spaces, no control or non-ASCII characters), unique per sender; a ULID or \
                 UUID fits"
            ),
        )
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MsgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_printable_ascii_within_the_limit() {
        for ok in ["a", "01J9ZQ-x_y.z~!", &"k".repeat(64)] {
            assert_eq!(MsgKey::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", &"k".repeat(65), "a b", "é", "a\tb", "\u{7f}"] {
            let e = MsgKey::new(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad:?}");
            assert!(e.message.contains("printable ASCII"), "{}", e.message);
        }
    }
}
