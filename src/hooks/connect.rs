//! The connect hook: asked before a WebSocket connection is admitted, with the user and token
//! claims (or, without a token, the query parameters and headers the operator lists); its answer
//! refuses the connection or sets its user, rooms and rights.
//!
//! Owns the connect hook's request and what its answer makes of the identity. It must not
//! admit the connection (`http::admit` does, after it).

use hyper::HeaderMap;

use super::{HookEvent, Hooks, push_str};
use crate::auth::{self, Identity};
use crate::config::{Config, HookOnError};
use crate::core::Name;
use crate::core::error::HandshakeError;

/// The close code of a refused first-frame connection whose hook gave none.
const REFUSED_CLOSE: u16 = 4403;

/// Runs the connect hook for a connection with `identity` (`None`: no credentials) and the
/// request's `query` and `headers`. Returns the identity to admit.
pub async fn connect(
    hooks: &Hooks,
    config: &Config,
    identity: Option<Identity>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Identity, HandshakeError> {
    let body = request(config, identity.as_ref(), query, headers);
    let timeout = std::time::Duration::from_millis(config.hook_timeout_ms);
    let answer = match hooks.ask(HookEvent::Connect, body, timeout).await {
        Ok(answer) => answer,
        Err(e) => {
            return match (config.hook_on_error, identity) {
                (HookOnError::Allow, Some(identity)) => Ok(identity),
                _ => Err(HandshakeError::HookFailed(e.to_string())),
            };
        }
    };
    if !answer.allow {
        let code = (answer.code)
            .filter(|c| (4000..5000).contains(c))
            .unwrap_or(REFUSED_CLOSE);
        let reason = (answer.reason.or(answer.message))
            .unwrap_or_else(|| "the connect hook refused this connection".into());
        return Err(HandshakeError::HookRefused { code, reason });
    }
    let bad = |m: String| HandshakeError::HookFailed(format!("the connect hook's answer: {m}"));
    let user = match (answer.user, identity.as_ref()) {
        (Some(user), _) => {
            Name::new(&user).map_err(|_| bad(format!("{user:?} is not a user id")))?
        }
        (None, Some(identity)) => identity.user.clone(),
        (None, None) => {
            return Err(HandshakeError::Unauthorized(
                "no token, and the connect hook named no user: pass ?token= or Authorization: \
                 Bearer"
                    .into(),
            ));
        }
    };
    let rooms = match answer.rooms {
        Some(rooms) => {
            Some(auth::grants_of_json(rooms.get(), config.max_rooms_per_connection).map_err(bad)?)
        }
        None => identity.as_ref().and_then(|i| i.rooms.clone()),
    };
    let info = match answer.info {
        Some(info) => Some(presence_info(info.get(), config.max_presence_info_bytes).map_err(bad)?),
        None => None,
    };
    Ok(Identity {
        user,
        rooms,
        exp: identity.and_then(|i| i.exp),
        info,
    })
}

/// An answer's `info`: a JSON object within `max` bytes, kept as its text (already checked
/// JSON: serde read it as a `RawValue`). `null` is no info.
fn presence_info(info: &str, max: usize) -> Result<bytes::Bytes, String> {
    if !info.starts_with('{') {
        return Err("info is not a JSON object".into());
    }
    if info.len() > max {
        return Err(format!(
            "info is {} bytes, over max_presence_info_bytes ({max})",
            info.len()
        ));
    }
    Ok(bytes::Bytes::copy_from_slice(info.as_bytes()))
}

/// `{"event":"connect","user":..,"rooms":..,"exp":..,"query":{..},"headers":{..}}`.
fn request(
    config: &Config,
    identity: Option<&Identity>,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(br#"{"event":"connect","user":"#);
    match identity {
        Some(i) => {
            push_str(&mut out, i.user.as_str());
            out.extend_from_slice(br#","rooms":"#);
            out.extend_from_slice(auth::rooms_json(i).as_bytes());
            out.extend_from_slice(br#","exp":"#);
            out.extend_from_slice(i.exp.map_or("null".into(), |e| e.to_string()).as_bytes());
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","query":{"#);
    let params = (config.hook_connect_query.iter())
        .filter_map(|name| Some((name, auth::query_param(query?, name)?)));
    push_map(&mut out, params);
    out.extend_from_slice(br#"},"headers":{"#);
    let listed = (config.hook_connect_headers.iter()).filter_map(|name| {
        let value = headers.get(name.as_str())?.to_str().ok()?;
        Some((name, value.to_owned()))
    });
    push_map(&mut out, listed);
    out.extend_from_slice(b"}}");
    out
}

fn push_map<'a>(out: &mut Vec<u8>, pairs: impl Iterator<Item = (&'a String, String)>) {
    for (i, (name, value)) in pairs.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, &name.to_ascii_lowercase());
        out.push(b':');
        push_str(out, &value);
    }
}
