//! Validated names (rooms, users) and request ids: the two strings every message carries.
//!
//! Owns what a valid name is. No state, no I/O.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::{ErrorCode, ReplyError};

/// Most bytes a room name or user id may have.
pub const MAX_NAME_LEN: usize = 128;
/// Most bytes the JSON text of a frame's `id` may have.
pub const MAX_ID_LEN: usize = 64;
/// A validated room name or user id: 1–128 bytes of `[A-Za-z0-9_.:@-]`. Because the alphabet
/// needs no JSON escaping, encoders splice names into frames as they are.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    pub fn new(s: &str) -> Result<Name, ReplyError> {
        if is_valid_name(s.as_bytes()) {
            Ok(Name(Arc::from(s)))
        } else {
            Err(ReplyError::new(
                ErrorCode::InvalidName,
                "names are 1-128 bytes of A-Z a-z 0-9 _ . : @ -",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Validated on the way in, as from a client.
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        Name::new(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

impl std::ops::Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

pub fn is_valid_name(s: &[u8]) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// A client frame's `id`, kept as its JSON text so replies echo it byte for byte.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReqId(Box<str>);

impl ReqId {
    /// A frame's `id` as the parser found it: a JSON number or string of at most 64 bytes.
    pub fn parse(raw: &RawValue) -> Result<ReqId, ReplyError> {
        let text = raw.get();
        let scalar = matches!(text.as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'));
        if !scalar {
            return Err(ReplyError::new(
                ErrorCode::BadRequest,
                "id must be a JSON number or string",
            ));
        }
        if text.len() > MAX_ID_LEN {
            return Err(ReplyError::new(
                ErrorCode::BadRequest,
                "id must be at most 64 bytes of JSON",
            ));
        }
        Ok(ReqId(text.into()))
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name(b"a"));
        assert!(is_valid_name(b"room:1.x@y_z-2"));
        assert!(is_valid_name(&[b'a'; 128]));
        assert!(!is_valid_name(&[b'a'; 129]));
        assert!(!is_valid_name(b""));
        assert!(!is_valid_name(b"a b"));
        assert!(!is_valid_name("é".as_bytes()));
    }
}
