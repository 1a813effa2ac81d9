//! Redis key and channel names. Every key of one stream carries the same hash tag (`{r:ROOM}`
//! or `{u:USER}`), so one script can touch them all on a Redis Cluster, and the stream's
//! channel hashes to the same slot (sharded pub/sub). Owns naming only.

use crate::core::Name;
use crate::core::NodeId;
use crate::core::Stream;

#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// What a channel a node subscribes to carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Channel {
    Stream(Stream),
    /// Every node's: broadcasts from the API.
    Control,
    /// One node's own: its heartbeat, which proves its subscription is alive.
    Node(NodeId),
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn tag(&self, stream: &Stream) -> String {
        match stream {
            Stream::Room(r) => format!("{}:{{r:{}}}", self.prefix, r.as_str()),
            Stream::Inbox(u) => format!("{}:{{u:{}}}", self.prefix, u.as_str()),
        }
    }

    /// The stream's hash: `seq`, `epoch`, and an inbox's delivered `cursor`.
    pub fn meta(&self, stream: &Stream) -> String {
        self.tag(stream) + ":meta"
    }

    /// The stream's history: a Redis stream whose entry ids are `SEQ-0`.
    pub fn log(&self, stream: &Stream) -> String {
        self.tag(stream) + ":log"
    }

    /// A room's folded states of changed messages: a hash (seq → `core::event::Folded` JSON).
    pub fn fold(&self, stream: &Stream) -> String {
        self.tag(stream) + ":fold"
    }

    /// The stream's idempotency keys: a hash ("SENDER KEY" → seq) and a sorted set of the
    /// same keys scored by when they were written, to forget the oldest.
    pub fn idempotency(&self, stream: &Stream) -> (String, String) {
        let tag = self.tag(stream);
        (tag.clone() + ":keys", tag + ":keyz")
    }

    /// A room's presence entries ("USER CONNID", scored by expiry) and per-user counts.
    pub fn presence(&self, room: &Name) -> (String, String) {
        let tag = self.tag(&Stream::Room(room.clone()));
        (tag.clone() + ":pz", tag + ":pu")
    }

    /// A count (or off) room's occupancy: one field per node, "USERS EXPIRY" (no entry per
    /// connection), and `t`, the total last published.
    pub fn occupancy(&self, room: &Name) -> String {
        self.tag(&Stream::Room(room.clone())) + ":occ"
    }

    /// A user's sessions and attached connections, scored by expiry.
    pub fn sessions(&self, user: &Name) -> (String, String) {
        let tag = self.tag(&Stream::Inbox(user.clone()));
        (tag.clone() + ":conns", tag + ":online")
    }

    /// A user's read positions: a hash, field `r:ROOM` or `i` (the inbox) → seq.
    pub fn reads(&self, user: &Name) -> String {
        self.tag(&Stream::Inbox(user.clone())) + ":reads"
    }

    pub fn channel(&self, stream: &Stream) -> String {
        self.tag(stream)
    }

    pub fn control(&self) -> String {
        format!("{}:{{ctl}}", self.prefix)
    }

    pub fn node(&self, node: NodeId) -> String {
        format!("{}:{{n:{node}}}", self.prefix)
    }

    /// Each node's latest figures, for the cluster totals of `/api/stats`.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// The event feed (docs/hooks.md): its stream (entry ids `CURSOR-0`, see `lua/common.lua`),
    /// its meta hash (`last`: the highest cursor written; `mark`: delivered up to) and the
    /// delivering node's lease (a string with a TTL). One hash tag for the three.
    pub fn feed(&self) -> (String, String, String) {
        let tag = format!("{}:{{feed}}", self.prefix);
        (tag.clone() + ":log", tag.clone() + ":meta", tag + ":lease")
    }

    /// A feed partition on a Redis Cluster (docs/hooks.md, "The feed on a Redis Cluster"):
    /// the stream and meta hash of the same layout as `feed`'s, with a hash tag (`fpN`, from
    /// `cluster::parts`) in `slot`, so the scripts of that slot's rooms and users write it.
    pub fn feed_part(&self, slot: u16) -> (String, String) {
        let tag = format!("{}:{{fp{}}}", self.prefix, super::parts::tag(slot));
        (tag.clone() + ":log", tag + ":meta")
    }

    /// The sweep of dead nodes' sessions (`engine/sweep.rs`): its lease (a string with a TTL,
    /// the sweeping node's name) and the leases the last finished sweep left live (a string,
    /// `Live::record`). One hash tag for both.
    pub fn sweep(&self) -> (String, String) {
        let tag = format!("{}:{{sweep}}", self.prefix);
        (tag.clone() + ":lease", tag + ":done")
    }

    /// The pattern (`SCAN MATCH`) of every user's sessions key, and the user of one.
    pub fn sessions_pattern(&self) -> String {
        format!("{}:{{u:*}}:conns", glob_escaped(&self.prefix))
    }

    pub fn user_of_sessions(&self, key: &str) -> Option<Name> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let name = rest.strip_prefix(":{u:")?.strip_suffix("}:conns")?;
        Name::new(name).ok()
    }

    /// The counter that hands out node ids.
    pub fn node_ids(&self) -> String {
        format!("{}:node-ids", self.prefix)
    }

    /// What a channel name is, if it is one of ours.
    pub fn parse(&self, channel: &str) -> Option<Channel> {
        let rest = channel
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(":{")?;
        let inner = rest.strip_suffix('}')?;
        if inner == "ctl" {
            return Some(Channel::Control);
        }
        let (kind, name) = inner.split_once(':')?;
        match kind {
            "r" => Some(Channel::Stream(Stream::Room(Name::new(name).ok()?))),
            "u" => Some(Channel::Stream(Stream::Inbox(Name::new(name).ok()?))),
            "n" => name.parse().ok().map(Channel::Node),
            _ => None,
        }
    }
}

/// `s` matched literally by a Redis glob pattern.
fn glob_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streams_keys_share_its_hash_tag_and_channels_parse_back() {
        let k = Keys::new("sc");
        let room = Stream::Room(Name::new("lob:by").unwrap());
        assert_eq!(k.meta(&room), "sc:{r:lob:by}:meta");
        assert_eq!(k.log(&room), "sc:{r:lob:by}:log");
        let Stream::Room(name) = &room else {
            unreachable!()
        };
        assert_eq!(k.occupancy(name), "sc:{r:lob:by}:occ");
        assert_eq!(k.channel(&room), "sc:{r:lob:by}");
        assert_eq!(k.parse(&k.channel(&room)), Some(Channel::Stream(room)));
        let user = Stream::Inbox(Name::new("bob").unwrap());
        assert_eq!(k.parse(&k.channel(&user)), Some(Channel::Stream(user)));
        assert_eq!(k.parse(&k.control()), Some(Channel::Control));
        assert_eq!(k.parse(&k.node(7)), Some(Channel::Node(7)));
        assert_eq!(k.parse("other:{r:x}"), None);
        assert_eq!(k.parse("sc:{r:bad name}"), None);
    }

    #[test]
    fn the_sweep_finds_users_by_their_sessions_key() {
        let k = Keys::new("s*c");
        assert_eq!(k.sessions_pattern(), "s\\*c:{u:*}:conns");
        let (conns, _) = k.sessions(&Name::new("a:b").unwrap());
        assert_eq!(k.user_of_sessions(&conns), Some(Name::new("a:b").unwrap()));
        assert_eq!(k.user_of_sessions("s*c:{u:a}:online"), None);
        assert_eq!(k.user_of_sessions("sc:{u:a}:conns"), None);
    }
}
