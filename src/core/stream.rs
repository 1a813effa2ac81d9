//! The stream key: a room's history or a user's inbox, the unit that is sequenced and stored.
//!
//! A plain value; how a store lays out its keys is the store's business.

use super::name::Name;

/// A sequence of messages: a room's history or a user's inbox.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Room(Name),
    Inbox(Name),
}

impl Stream {
    /// The room's or the user's name.
    pub fn name(&self) -> &Name {
        match self {
            Stream::Room(n) | Stream::Inbox(n) => n,
        }
    }
}
