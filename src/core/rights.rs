//! What an identity may do in a room: the rights (`join`, `publish`, `presence`, `history`) a
//! token's `rooms` claim grants, by exact room or by a `prefix*` pattern.
//!
//! Plain values. Reading them from a token is `auth`'s job; applying them, with the room's
//! rule, is the client side's.

use super::name::Name;

/// A set of rights, one bit each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights(u8);

impl Rights {
    pub const JOIN: Rights = Rights(1);
    pub const PUBLISH: Rights = Rights(2);
    pub const PRESENCE: Rights = Rights(4);
    pub const HISTORY: Rights = Rights(8);
    pub const NONE: Rights = Rights(0);
    pub const ALL: Rights = Rights(15);

    /// Each right's name, as tokens and the protocol spell it.
    pub const NAMES: [(Rights, &'static str); 4] = [
        (Rights::JOIN, "join"),
        (Rights::PUBLISH, "publish"),
        (Rights::PRESENCE, "presence"),
        (Rights::HISTORY, "history"),
    ];

    /// The right named `name`.
    pub fn named(name: &str) -> Option<Rights> {
        Rights::NAMES
            .iter()
            .find_map(|&(r, n)| (n == name).then_some(r))
    }

    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub fn without(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    /// The names of the rights held, in the order of `NAMES`.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Rights::NAMES
            .into_iter()
            .filter_map(move |(r, n)| self.contains(r).then_some(n))
    }
}

/// Which rooms a grant covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// One room.
    Room(Name),
    /// Every room whose name starts with this (a claim's `live:*`; `*` alone is every room).
    Prefix(Box<str>),
}

impl Pattern {
    pub fn matches(&self, room: &str) -> bool {
        match self {
            Pattern::Room(name) => name.as_str() == room,
            Pattern::Prefix(prefix) => room.starts_with(&**prefix),
        }
    }
}

/// One entry of a `rooms` claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub pattern: Pattern,
    pub rights: Rights,
    /// A plain room name in the claim: joined at connect.
    pub join_at_connect: bool,
}

/// A token's `rooms` claim. A room no grant matches is one the identity may not use; where
/// several match, their rights add up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grants(Box<[Grant]>);

impl Grants {
    pub fn new(grants: Vec<Grant>) -> Grants {
        Grants(grants.into_boxed_slice())
    }

    /// What the grants allow in `room`.
    pub fn rights(&self, room: &str) -> Rights {
        (self.0.iter())
            .filter(|g| g.pattern.matches(room))
            .fold(Rights::NONE, |all, g| all.with(g.rights))
    }

    /// The rooms joined at connect (the claim's plain names), in the claim's order.
    pub fn joined_at_connect(&self) -> impl Iterator<Item = &Name> {
        self.0.iter().filter_map(|g| match &g.pattern {
            Pattern::Room(name) if g.join_at_connect => Some(name),
            _ => None,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Grant> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(n: &str, rights: Rights) -> Grant {
        Grant {
            pattern: Pattern::Room(Name::new(n).unwrap()),
            rights,
            join_at_connect: true,
        }
    }

    #[test]
    fn grants_match_exact_rooms_and_prefixes_and_add_up() {
        let g = Grants::new(vec![
            room("lobby", Rights::ALL),
            Grant {
                pattern: Pattern::Prefix("live:".into()),
                rights: Rights::JOIN.with(Rights::PRESENCE),
                join_at_connect: false,
            },
            Grant {
                pattern: Pattern::Prefix("live:staff".into()),
                rights: Rights::PUBLISH,
                join_at_connect: false,
            },
        ]);
        assert_eq!(g.rights("lobby"), Rights::ALL);
        assert_eq!(g.rights("lobby2"), Rights::NONE);
        let viewer = g.rights("live:keynote");
        assert!(viewer.contains(Rights::JOIN) && !viewer.contains(Rights::PUBLISH));
        assert!(g.rights("live:staff-1").contains(Rights::PUBLISH));
        assert_eq!(
            g.joined_at_connect()
                .map(|n| n.as_str())
                .collect::<Vec<_>>(),
            ["lobby"]
        );
        let names: Vec<_> = Rights::JOIN.with(Rights::HISTORY).names().collect();
        assert_eq!(names, ["join", "history"]);
        assert_eq!(Rights::named("presence"), Some(Rights::PRESENCE));
        assert_eq!(Rights::named("admin"), None);
    }
}
