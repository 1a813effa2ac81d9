//! How an answer is addressed and built: `ReplyTo` (a client connection and its request id,
//! or an HTTP API call waiting on a shard) and the answers made for it, each as the `NodeMsg`
//! to send and the shard to send it to; `PresencePage`, one page of a presence answer.
//!
//! Plain data and pure functions, like the rest of `msg`: no state, no I/O.

use bytes::Bytes;

use super::NodeMsg;
use crate::core::error::ReplyError;
use crate::core::{ConnId, Name, NodeId, ReqId, ShardId};

/// Where the answer to a request goes: a client connection (a frame echoing the request's id),
/// or an HTTP API call waiting on the shard that took it (the JSON body of its response). An
/// address, not a channel, so it can travel with a request to another node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyTo {
    Conn {
        conn: ConnId,
        id: Option<ReqId>,
    },
    Api {
        node: NodeId,
        shard: ShardId,
        call: u64,
    },
}

impl ReplyTo {
    /// The connection that made the request, if a client did.
    pub fn conn(&self) -> Option<ConnId> {
        match self {
            ReplyTo::Conn { conn, .. } => Some(*conn),
            ReplyTo::Api { .. } => None,
        }
    }

    /// The shard the answer goes to.
    pub fn shard(&self) -> ShardId {
        match self {
            ReplyTo::Conn { conn, .. } => conn.shard(),
            ReplyTo::Api { shard, .. } => *shard,
        }
    }

    /// The answer: `frame(id)` for a connection, `json()` for an API call, as the message to
    /// send and the shard to send it to.
    pub fn answer(
        self,
        frame: impl FnOnce(Option<&ReqId>) -> Bytes,
        json: impl FnOnce() -> Bytes,
    ) -> (ShardId, NodeMsg) {
        self.answer_read(0, frame, json)
    }

    /// `answer`, for a read that returns `messages` stored messages (a `history` or `sync`
    /// page): the asking connection's read budget is charged for them.
    pub fn answer_read(
        self,
        messages: usize,
        frame: impl FnOnce(Option<&ReqId>) -> Bytes,
        json: impl FnOnce() -> Bytes,
    ) -> (ShardId, NodeMsg) {
        let body = match &self {
            ReplyTo::Conn { id, .. } => frame(id.as_ref()),
            ReplyTo::Api { .. } => json(),
        };
        let read = u32::try_from(messages).unwrap_or(u32::MAX);
        (
            self.shard(),
            NodeMsg::Reply {
                to: self,
                result: Ok(body),
                read,
            },
        )
    }

    /// The answer to a `presence` query: the room's `users` (in any order), or the `page` of
    /// them a client asked for, within `max_bytes` of names (the API asks for all of them).
    /// Each user's presence `info` (from the connect hook), if any, comes from `info`; it
    /// counts toward `max_bytes`.
    pub fn presence<'a>(
        self,
        room: &Name,
        users: impl Iterator<Item = &'a Name>,
        page: Option<&PresencePage>,
        max_bytes: usize,
        info: impl Fn(&Name) -> Option<Bytes>,
    ) -> (ShardId, NodeMsg) {
        let weight = |u: &Name| info(u).map_or(0, |i| i.len() + u.len() + 4);
        let (users, more) = match page {
            Some(page) => page.cut_weighted(users, max_bytes, weight),
            None => PresencePage::ALL.cut(users, usize::MAX),
        };
        let infos: Vec<(&Name, Bytes)> =
            (users.iter()).filter_map(|u| Some((u, info(u)?))).collect();
        self.answer(
            |id| {
                let more = page.map(|_| more);
                crate::protocol::encode::presence(id, room, users.iter(), more, &infos)
            },
            || {
                let users: Vec<&str> = users.iter().map(|u| &**u).collect();
                let mut body =
                    serde_json::json!({ "room": &**room, "mode": "list", "users": users });
                if !infos.is_empty() {
                    let map: serde_json::Map<String, serde_json::Value> = (infos.iter())
                        .filter_map(|(u, i)| Some((u.to_string(), serde_json::from_slice(i).ok()?)))
                        .collect();
                    body["info"] = map.into();
                }
                body.to_string().into()
            },
        )
    }

    /// The answer to a `presence` query on a room whose presence is a count (`mode`: `count`,
    /// or `off` for the API, which may ask anyway).
    pub fn presence_count(
        self,
        room: &Name,
        mode: &'static str,
        members: u64,
    ) -> (ShardId, NodeMsg) {
        self.answer(
            |id| crate::protocol::encode::presence_count(id, room, mode, members),
            || {
                let body = serde_json::json!({ "room": &**room, "mode": mode, "members": members });
                body.to_string().into()
            },
        )
    }

    /// The API's answer about a user with `n` connections.
    pub fn user_info(self, user: &Name, n: u64) -> (ShardId, NodeMsg) {
        self.answer(
            |_| Bytes::new(),
            || {
                let body = serde_json::json!({
                    "user": &**user, "online": n > 0, "connections": n
                });
                body.to_string().into()
            },
        )
    }

    /// The error answer; the receiving shard encodes it for a connection.
    pub fn fail(self, err: ReplyError) -> (ShardId, NodeMsg) {
        self.with(Err(err))
    }

    fn with(self, result: Result<Bytes, ReplyError>) -> (ShardId, NodeMsg) {
        let reply = NodeMsg::Reply {
            to: self.clone(),
            result,
            read: 0,
        };
        (self.shard(), reply)
    }
}

/// One page of a `presence` query: the users after `after` in byte order, at most `limit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresencePage {
    pub after: Option<Name>,
    pub limit: usize,
}

impl PresencePage {
    /// Every user, in one answer.
    const ALL: PresencePage = PresencePage {
        after: None,
        limit: usize::MAX,
    };

    /// This page of `users` (in any order), sorted, cut to `max_bytes` of names (at least one
    /// user), and whether more follow. Cost: O(users) to filter, plus sorting the page; the
    /// room's members are not sorted as a whole.
    pub fn cut<'a>(
        &self,
        users: impl Iterator<Item = &'a Name>,
        max_bytes: usize,
    ) -> (Vec<Name>, bool) {
        self.cut_weighted(users, max_bytes, |_| 0)
    }

    /// `cut`, with `extra` bytes of each user's (its presence info) counted toward `max_bytes`.
    pub fn cut_weighted<'a>(
        &self,
        users: impl Iterator<Item = &'a Name>,
        max_bytes: usize,
        extra: impl Fn(&Name) -> usize,
    ) -> (Vec<Name>, bool) {
        let after = self.after.as_ref();
        let mut page: Vec<&Name> = users.filter(|u| after.is_none_or(|a| *u > a)).collect();
        let mut more = page.len() > self.limit;
        if more {
            page.select_nth_unstable(self.limit);
            page.truncate(self.limit);
        }
        page.sort_unstable();
        let mut bytes = 0;
        let fit = (page.iter())
            .take_while(|u| {
                bytes += u.len() + 3 + extra(u);
                bytes <= max_bytes
            })
            .count()
            .max(page.len().min(1));
        if fit < page.len() {
            page.truncate(fit);
            more = true;
        }
        (page.into_iter().cloned().collect(), more)
    }
}

impl ReplyTo {
    /// The ack of a `read`: the position `at` now held in `room` (`None`: the inbox).
    pub fn read_ack(self, room: Option<&Name>, at: u64) -> (ShardId, NodeMsg) {
        self.answer(
            |id| crate::protocol::encode::read_ack(id, room, at),
            || Bytes::from(format!("{{\"read\":{at}}}")),
        )
    }
}
