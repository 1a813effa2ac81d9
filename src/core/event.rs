//! Edits, deletes and reactions: the events that change a stored room message (`Event`), and
//! the message's current state (`Folded`) that the stores keep beside it for `history` with
//! `fold` and for the checks (author, deleted, who reacted).
//!
//! Plain data, shared by the protocol, the engines and the stores. It must not decide policy
//! (who may do what is `store::fold`'s and the Lua script's) nor do I/O.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A change to message `target` of a room, sequenced in the room's stream like a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub target: u64,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The new body (JSON, as sent).
    Edit(Bytes),
    /// `hard` (the API's only): the body is erased from the store too.
    Delete {
        hard: bool,
    },
    React(String),
    Unreact(String),
}

impl EventKind {
    /// The `kind` field of the delivered event.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Edit(_) => "edit",
            EventKind::Delete { .. } => "delete",
            EventKind::React(_) => "react",
            EventKind::Unreact(_) => "unreact",
        }
    }
}

/// A message's current state, kept per changed message (never for one that was not changed).
/// The same JSON is written by the Lua script in the Redis engine (`lua/event.lua`): fields
/// absent when empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folded {
    /// The author, from the original message.
    pub from: String,
    /// The original message's time (a tombstone of an erased entry still has it).
    #[serde(default)]
    pub ts: u64,
    /// The latest body as JSON text; absent: the original one (or none, once deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The seq of the latest edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Erased by a hard delete: no body is kept anywhere.
    #[serde(default, skip_serializing_if = "is_false")]
    pub erased: bool,
    /// Seqs of the edits of this message (a hard delete erases their bodies too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<u64>,
    /// Per emoji, the users who reacted with it, in the order they did.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, Vec<String>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What an event writes beside its own entry, in the same commit: the target's new state and,
/// for a hard delete, the entries rewritten without their bodies (the target and its edits).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventWrite {
    pub target: u64,
    pub state: Folded,
    /// (seq, ts, payload) of each entry to overwrite.
    pub rewrites: Vec<(u64, u64, Bytes)>,
}

impl EventWrite {
    /// The event got `seq`: an edit is the latest one.
    pub fn sequenced(&mut self, seq: u64, edit: bool) {
        if edit {
            self.state.edited = Some(seq);
            self.state.edits.push(seq);
        }
    }

    /// The state as stored.
    pub fn state_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.state).unwrap_or_default()
    }
}
