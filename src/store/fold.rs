//! The rules of edits, deletes and reactions over what is stored, for the embedded engine's
//! store writer (the Redis engine's `lua/event.lua` keeps the same rules), and the rendering of
//! a folded `history` page.
//!
//! Pure functions of the stored target, its folded state and the event. It must not do I/O.

use bytes::Bytes;

use crate::core::error::{ErrorCode, ReplyError};
use crate::core::event::{Event, EventKind, EventWrite, Folded};
use crate::store::StoredMessage;

/// What an event does, once checked against its target.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to change (a repeated react, an unreact of nothing, a delete of a deleted
    /// message): acked with `noop`, no event.
    Noop,
    Write(Box<EventWrite>),
}

/// Where a stored entry's `,"body":` starts: events and messages alike end with their body.
fn body_at(payload: &[u8]) -> Option<usize> {
    let marker = br#","body":"#;
    payload.windows(marker.len()).position(|w| w == marker)
}

/// Whether a stored entry is an event (an edit, delete or reaction) rather than a message: its
/// fields before the body name a `kind`.
pub fn is_event(payload: &[u8]) -> bool {
    let head = &payload[..body_at(payload).unwrap_or(payload.len())];
    head.windows(8).any(|w| w == br#""kind":""#)
}

/// The `from` of a stored entry (names need no escaping, so it is the text between quotes).
fn from_of(payload: &[u8]) -> Option<&str> {
    let marker = br#","from":""#;
    let at = payload.windows(marker.len()).position(|w| w == marker)? + marker.len();
    let len = payload[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&payload[at..at + len]).ok()
}

/// The entry without its body: `"body":null` and `"erased":true` in its place.
pub fn erased(payload: &[u8]) -> Bytes {
    let at = body_at(payload).unwrap_or(payload.len().saturating_sub(1));
    let mut out = Vec::with_capacity(at + 32);
    out.extend_from_slice(&payload[..at]);
    out.extend_from_slice(br#","body":null,"erased":true}"#);
    out.into()
}

fn no_such(target: u64, why: &str) -> ReplyError {
    ReplyError::new(
        ErrorCode::NoSuchMessage,
        format!("message {target} {why}; an edit, delete or reaction names a stored message's seq"),
    )
}

/// Checks `event` by `from` (`api`: the server API, which may edit or delete anyone's message)
/// against its stored `target` and folded `state`, and says what to write. `edits` reads the
/// stored entries of the target's edits (for a hard delete, which rewrites them). A message
/// holds at most `max_emojis` different emoji (`max_reaction_emojis`).
pub fn decide(
    event: &Event,
    (from, api): (&str, bool),
    (target, state): (Option<&StoredMessage>, Option<Folded>),
    max_emojis: usize,
    edits: impl FnOnce(&[u64]) -> Vec<StoredMessage>,
) -> Result<Verdict, ReplyError> {
    let n = event.target;
    let Some(target) = target else {
        return Err(no_such(
            n,
            "is not in this room's history (never sent, or trimmed by retention)",
        ));
    };
    if is_event(&target.payload) {
        return Err(no_such(n, "is an edit, delete or reaction, not a message"));
    }
    let mut state = match state {
        Some(s) => s,
        None => Folded {
            from: from_of(&target.payload).unwrap_or_default().to_owned(),
            ts: target.ts,
            ..Folded::default()
        },
    };
    if state.erased {
        return Err(no_such(n, "was erased by a hard delete"));
    }
    let own = state.from == from;
    let mut rewrites = Vec::new();
    match &event.kind {
        EventKind::Edit(body) => {
            if !own && !api {
                return Err(ReplyError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "only {} (the author of message {n}) may edit it; you may react to it",
                        state.from
                    ),
                ));
            }
            if state.deleted {
                return Err(no_such(n, "was deleted; it cannot be edited"));
            }
            state.body = Some(String::from_utf8_lossy(body).into_owned());
        }
        EventKind::Delete { hard } => {
            if !own && !api {
                return Err(ReplyError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "only {} (the author of message {n}) or the server API may delete it",
                        state.from
                    ),
                ));
            }
            if state.deleted && !hard {
                return Ok(Verdict::Noop);
            }
            state.deleted = true;
            state.body = None;
            if *hard {
                state.erased = true;
                state.reactions.clear();
                rewrites.push((target.seq, target.ts, erased(&target.payload)));
                for e in edits(&state.edits) {
                    rewrites.push((e.seq, e.ts, erased(&e.payload)));
                }
            }
        }
        EventKind::React(emoji) => {
            if state.deleted {
                return Err(no_such(n, "was deleted; it cannot be reacted to"));
            }
            if !state.reactions.contains_key(emoji) && state.reactions.len() >= max_emojis {
                return Err(ReplyError::new(
                    ErrorCode::TooLarge,
                    format!(
                        "message {n} already has {max_emojis} different reactions \
                         (max_reaction_emojis); react with one of them"
                    ),
                ));
            }
            let users = state.reactions.entry(emoji.clone()).or_default();
            if users.iter().any(|u| u == from) {
                return Ok(Verdict::Noop);
            }
            users.push(from.to_owned());
        }
        EventKind::Unreact(emoji) => {
            let Some(users) = state.reactions.get_mut(emoji) else {
                return Ok(Verdict::Noop);
            };
            let Some(i) = users.iter().position(|u| u == from) else {
                return Ok(Verdict::Noop);
            };
            users.remove(i);
            if users.is_empty() {
                state.reactions.remove(emoji);
            }
        }
    }
    Ok(Verdict::Write(Box::new(EventWrite {
        target: n,
        state,
        rewrites,
    })))
}

/// A message in its current state: its stored JSON with the latest body, `"edited":SEQ`,
/// `"deleted":true` (body `null`) and `"reactions":{EMOJI:{"count":N,"me":B}}` (`me`: whether
/// `reader` reacted). Without a state, the entry as stored.
pub fn render(payload: &[u8], state: Option<&Folded>, reader: Option<&str>) -> Vec<u8> {
    let Some(state) = state else {
        return payload.to_vec();
    };
    let at = body_at(payload).unwrap_or(payload.len().saturating_sub(1));
    let mut out = Vec::with_capacity(payload.len() + 64);
    out.extend_from_slice(&payload[..at]);
    out.extend_from_slice(br#","body":"#);
    match (&state.body, state.deleted) {
        (_, true) => out.extend_from_slice(b"null"),
        (Some(body), false) => out.extend_from_slice(body.as_bytes()),
        (None, false) => {
            let tail = &payload[at + 8..];
            out.extend_from_slice(&tail[..tail.len().saturating_sub(1)]);
        }
    }
    tail_fields(&mut out, state, reader);
    out
}

/// The tombstone of a message whose entry is gone (erased in the Redis engine).
pub fn tombstone(room: &str, seq: u64, state: &Folded) -> Vec<u8> {
    let mut out = format!(
        r#"{{"type":"message","room":"{room}","from":"{}","seq":{seq},"ts":{},"body":null"#,
        state.from, state.ts
    )
    .into_bytes();
    tail_fields(&mut out, state, None);
    out
}

fn tail_fields(out: &mut Vec<u8>, state: &Folded, reader: Option<&str>) {
    if let Some(seq) = state.edited {
        out.extend_from_slice(format!(r#","edited":{seq}"#).as_bytes());
    }
    if state.deleted {
        out.extend_from_slice(br#","deleted":true"#);
    }
    if state.erased {
        out.extend_from_slice(br#","erased":true"#);
    }
    if !state.reactions.is_empty() {
        let reactions: serde_json::Map<String, serde_json::Value> = (state.reactions.iter())
            .map(|(emoji, users)| {
                let me = reader.is_some_and(|r| users.iter().any(|u| u == r));
                let v = serde_json::json!({"count": users.len(), "me": me});
                (emoji.clone(), v)
            })
            .collect();
        out.extend_from_slice(br#","reactions":"#);
        out.extend_from_slice(serde_json::Value::Object(reactions).to_string().as_bytes());
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, payload: &str) -> StoredMessage {
        StoredMessage {
            seq,
            ts: 5,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    const M: &str = r#"{"type":"message","room":"r","from":"a","seq":1,"ts":5,"body":{"t":"hi"}}"#;

    fn ev(kind: EventKind) -> Event {
        Event { target: 1, kind }
    }

    fn write(v: Result<Verdict, ReplyError>) -> EventWrite {
        match v {
            Ok(Verdict::Write(w)) => *w,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    #[test]
    fn only_the_author_or_the_api_edits_and_reactions_are_one_per_user_and_emoji() {
        let m = msg(1, M);
        let edit = ev(EventKind::Edit(Bytes::from_static(b"\"new\"")));
        let none = |_: &[u64]| Vec::new();
        let err = decide(&edit, ("b", false), (Some(&m), None), 32, none).unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert!(err.message.contains("only a"), "{}", err.message);
        let w = write(decide(&edit, ("b", true), (Some(&m), None), 32, none));
        assert_eq!(w.state.body.as_deref(), Some("\"new\""));
        let react = ev(EventKind::React("+1".into()));
        let w = write(decide(&react, ("b", false), (Some(&m), None), 32, none));
        let again = decide(
            &react,
            ("b", false),
            (Some(&m), Some(w.state.clone())),
            32,
            none,
        );
        assert_eq!(again.unwrap(), Verdict::Noop);
        let un = ev(EventKind::Unreact("+1".into()));
        let w = write(decide(
            &un,
            ("b", false),
            (Some(&m), Some(w.state)),
            32,
            none,
        ));
        assert!(w.state.reactions.is_empty());
        let err = decide(&edit, ("a", false), (None, None), 32, none).unwrap_err();
        assert_eq!(err.code, ErrorCode::NoSuchMessage);
    }

    #[test]
    fn a_hard_delete_rewrites_the_message_and_its_edits_without_bodies() {
        let m = msg(1, M);
        let e = msg(
            2,
            r#"{"type":"message","room":"r","from":"a","seq":2,"ts":6,"kind":"edit","target":1,"body":"secret"}"#,
        );
        assert!(is_event(&e.payload) && !is_event(&m.payload));
        let state = Folded {
            from: "a".into(),
            edits: vec![2],
            body: Some("\"secret\"".into()),
            ..Folded::default()
        };
        let del = ev(EventKind::Delete { hard: true });
        let w = write(decide(
            &del,
            ("x", true),
            (Some(&m), Some(state)),
            32,
            |_| vec![e.clone()],
        ));
        assert!(w.state.erased && w.state.body.is_none());
        assert_eq!(w.rewrites.len(), 2);
        for (_, _, p) in &w.rewrites {
            let text = std::str::from_utf8(p).unwrap();
            assert!(!text.contains("secret") && !text.contains("hi"), "{text}");
            serde_json::from_str::<serde_json::Value>(text).unwrap();
        }
    }

    #[test]
    fn render_splices_the_latest_body_and_the_marks() {
        let mut s = Folded {
            from: "a".into(),
            body: Some("\"v2\"".into()),
            edited: Some(3),
            ..Folded::default()
        };
        s.reactions.insert("+1".into(), vec!["b".into()]);
        let out = render(M.as_bytes(), Some(&s), Some("b"));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["body"], "v2");
        assert_eq!(v["edited"], 3);
        assert_eq!(
            v["reactions"]["+1"],
            serde_json::json!({"count":1,"me":true})
        );
        s.body = None;
        let out = render(M.as_bytes(), Some(&s), None);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["body"], serde_json::json!({"t":"hi"}));
        assert_eq!(render(M.as_bytes(), None, None), M.as_bytes());
    }
}
