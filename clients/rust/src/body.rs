//! A message body, the same value whichever format the connection speaks.
//!
//! Owns the crossing rules of docs/protocol.md ("Bodies across formats") on the client side: a
//! body is either JSON text or opaque bytes; on a JSON connection opaque bytes travel as
//! `{"$b64":"…"}`, and such an object coming in is read back as the bytes, so a JSON client and
//! a proto client of one room see equal [`Body`] values.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Error;

/// A message body: JSON text, or opaque bytes. Cloning it is cheap (shared bytes).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Body {
    bytes: Bytes,
    json: bool,
}

impl Body {
    /// The JSON text of `value`.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Body, Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Body(e.to_string()))?;
        Ok(Body {
            bytes: bytes.into(),
            json: true,
        })
    }

    /// A JSON string body (`"text"`, with its quotes): what a chat message usually is.
    pub fn text(text: &str) -> Body {
        Body::json(text).expect("a string always serializes")
    }

    /// `text` as it is, checked to be one JSON value.
    pub fn raw_json(text: impl Into<Bytes>) -> Result<Body, Error> {
        let bytes = text.into();
        serde_json::from_slice::<&RawValue>(&bytes)
            .map_err(|e| Error::Body(format!("not one JSON value: {e}")))?;
        Ok(Body { bytes, json: true })
    }

    /// Opaque bytes (an image, a serialized message). JSON members of the room read them as
    /// `{"$b64":"…"}`.
    pub fn bytes(bytes: impl Into<Bytes>) -> Body {
        Body {
            bytes: bytes.into(),
            json: false,
        }
    }

    /// The bytes: the JSON text, or the opaque bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether the bytes are JSON text.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// The JSON text, if the body is JSON.
    pub fn as_json(&self) -> Option<&str> {
        // Bodies marked JSON were checked (or came from the server, which checks every body).
        self.json
            .then(|| std::str::from_utf8(&self.bytes).ok())
            .flatten()
    }

    /// The JSON body read as a `T`; `None` for opaque bytes.
    pub fn decode<T: DeserializeOwned>(&self) -> Option<Result<T, Error>> {
        self.json
            .then(|| serde_json::from_slice(&self.bytes).map_err(|e| Error::Body(e.to_string())))
    }

    /// A borrowed view, for [`crate::codec::encode`].
    pub fn as_ref(&self) -> BodyRef<'_> {
        BodyRef {
            bytes: &self.bytes,
            json: self.json,
        }
    }

    pub(crate) fn from_wire(b: RawBody<'_>) -> Body {
        Body {
            bytes: Bytes::from(b.bytes.into_owned()),
            json: b.json,
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_json() {
            Some(text) => write!(f, "Body::json({text})"),
            None => write!(f, "Body::bytes({} bytes)", self.bytes.len()),
        }
    }
}

/// A body to send, borrowed: the bytes and whether they are JSON text. Lets a caller that keeps
/// its own buffers (the load-test bot) encode without building a [`Body`].
#[derive(Clone, Copy, Debug)]
pub struct BodyRef<'a> {
    pub bytes: &'a [u8],
    pub json: bool,
}

/// A body as decoded from a server frame, borrowed from the frame where it can be (a JSON
/// frame's body is a slice of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawBody<'a> {
    pub bytes: Cow<'a, [u8]>,
    pub json: bool,
}

impl<'a> RawBody<'a> {
    /// A JSON frame's `body`: the text as it is, or the bytes of a `{"$b64":"…"}` object.
    pub(crate) fn from_json(raw: &'a RawValue) -> RawBody<'a> {
        let text = raw.get();
        if let Some(bytes) = b64_object(text) {
            return RawBody {
                bytes: Cow::Owned(bytes),
                json: false,
            };
        }
        RawBody {
            bytes: Cow::Borrowed(text.as_bytes()),
            json: true,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawBody<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        Ok(RawBody::from_json(raw))
    }
}

/// The bytes of `{"$b64":"<standard base64>"}` (exactly that one member), else `None`. Most
/// bodies fail the first check, so the usual cost is one byte compared.
fn b64_object(text: &str) -> Option<Vec<u8>> {
    if !text.starts_with('{') || !text.contains("\"$b64\"") {
        return None;
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct B64<'a> {
        #[serde(rename = "$b64", borrow)]
        b: Cow<'a, str>,
    }
    let v: B64<'_> = serde_json::from_str(text).ok()?;
    base64::engine::general_purpose::STANDARD.decode(&*v.b).ok()
}

/// Appends `body` as a JSON value: its text, or `{"$b64":"…"}` for opaque bytes.
pub(crate) fn write_json(out: &mut Vec<u8>, body: BodyRef<'_>) {
    if body.json {
        out.extend_from_slice(body.bytes);
    } else {
        out.extend_from_slice(br#"{"$b64":""#);
        let b64 = base64::engine::general_purpose::STANDARD.encode(body.bytes);
        out.extend_from_slice(b64.as_bytes());
        out.extend_from_slice(br#""}"#);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64_objects_read_back_as_bytes() {
        let mut out = Vec::new();
        write_json(&mut out, Body::bytes(vec![0xff, 0, 1]).as_ref());
        assert_eq!(out, br#"{"$b64":"/wAB"}"#);
        let raw: &RawValue = serde_json::from_slice(&out).unwrap();
        let b = RawBody::from_json(raw);
        assert_eq!((&*b.bytes, b.json), (&[0xff, 0, 1][..], false));
        // Another member, or bad base64: a JSON object like any other.
        for text in [r#"{"$b64":"/wAB","x":1}"#, r#"{"$b64":"%%"}"#, r#"{"a":1}"#] {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            assert!(RawBody::from_json(raw).json, "{text}");
        }
    }
}
