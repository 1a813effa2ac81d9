//! The client side of a shard, connections from handshake to close: admission, attach, close
//! and detach, the session policy's closes and kicks, and the replies a connection or an API
//! call gets. The requests themselves are `requests.rs`; the rate limits `limits.rs`.
//!
//! Owns `conns`, the handshakes in progress (`pending`) and the API calls waiting for an
//! answer. It must not sequence, store or fan out (the engine and the hub do).

use std::rc::Rc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::{Shard, Verdict};
use crate::auth::Identity;
use crate::conn::Conn;
use crate::core::ConnId;
use crate::core::counters::Disconnect;
use crate::core::error::{CloseCode, ReplyError};
use crate::core::{Name, ReqId};
use crate::msg::{EngineMsg, ReplyTo};
use crate::protocol::encode::{self};

/// A handshake in progress.
pub(super) struct Pending {
    user: Name,
    /// Where the home's verdict goes, until it has come.
    verdict: Option<oneshot::Sender<Verdict>>,
    /// A close that arrived before the upgrade, applied at attach.
    close: Option<CloseCode>,
    /// The handshake ended before its verdict came.
    abandoned: bool,
}

impl Shard {
    // ----- connection lifecycle ---------------------------------------------------------------

    /// Reserves an id for a handshake in progress and asks the engine to admit it.
    pub fn register(&mut self, user: Name, verdict: oneshot::Sender<Verdict>) -> ConnId {
        self.next_conn += 1;
        let conn = ConnId::new(self.router.node(), self.id, self.next_conn);
        let pending = Pending {
            user: user.clone(),
            verdict: Some(verdict),
            close: None,
            abandoned: false,
        };
        self.pending.insert(conn, pending);
        self.to_engine(EngineMsg::Register { user, conn });
        conn
    }

    /// The engine's verdict on a handshake. One that was abandoned meanwhile and admitted
    /// anyway is unregistered, or the user would stay counted.
    pub(super) fn admitted(&mut self, conn: ConnId, verdict: Verdict) {
        let Some(p) = self.pending.get_mut(&conn) else {
            return;
        };
        if !p.abandoned {
            if let Some(tx) = p.verdict.take() {
                let _ = tx.send(verdict);
            }
            return;
        }
        let user = p.user.clone();
        self.pending.remove(&conn);
        if verdict.is_ok() {
            self.to_engine(EngineMsg::Unregister { user, conn });
        }
    }

    /// A handshake that will not become a connection. If the engine had `admitted` it, it is
    /// told to forget it; if the verdict has not come yet, `admitted` does that when it comes.
    pub fn abandon(&mut self, conn: ConnId, admitted: bool) {
        let Some(p) = self.pending.get_mut(&conn) else {
            return;
        };
        if p.verdict.is_some() {
            p.abandoned = true;
            return;
        }
        let user = p.user.clone();
        self.pending.remove(&conn);
        if admitted {
            self.to_engine(EngineMsg::Unregister { user, conn });
        }
    }

    /// A new connection after its upgrade: queues `welcome`, starts catching up on the inbox,
    /// and joins the token's rooms. Nothing is written until the undelivered direct messages
    /// (placed right behind `welcome`) and the joins are in.
    /// `head` is the handshake's 101, still to be sent: it leaves in front of `welcome`.
    pub fn attach(&mut self, conn: &Rc<Conn>, identity: &Identity, inbox_seq: u64, head: Bytes) {
        let early_close = self.pending.remove(&conn.id).and_then(|p| p.close);
        self.conns.insert(conn.id, conn.clone());
        if let Some(info) = &identity.info {
            self.presence_info.insert(conn.id, info.clone());
        }
        let rooms: Vec<Name> = (identity.rooms.iter())
            .flat_map(|g| g.joined_at_connect().cloned())
            .collect();
        self.stats.frames_out += 1;
        let welcome = self.welcome(conn, &rooms, inbox_seq);
        conn.push_behind(head, Rc::new(welcome));
        conn.hold.set(conn.hold.get() + 1);
        self.hub_attach(conn);
        let msg = EngineMsg::Online {
            user: conn.user.clone(),
            conn: conn.id,
        };
        self.to_engine(msg);
        for room in rooms {
            self.start_join(conn, room.clone(), None, (None, None));
        }
        self.mark_dirty(conn);
        if let Some(code) = early_close.or(self.shutting_down.then_some(CloseCode::GoingAway)) {
            self.close_conn(conn, code);
        }
    }

    /// Closes a connection: it leaves everything at once, then its task flushes the close frame.
    pub fn close_conn(&mut self, conn: &Rc<Conn>, code: CloseCode) {
        self.close_conn_with(conn, code, None);
    }

    /// `close_conn` with a reason other than the code's own.
    pub(super) fn close_conn_with(
        &mut self,
        conn: &Rc<Conn>,
        code: CloseCode,
        reason: Option<&str>,
    ) {
        if conn.closing().is_none() && !conn.detached.get() {
            self.stats.disconnect(Disconnect::Closed(code));
            self.stats.frames_out += 1;
        }
        self.detach(conn);
        conn.begin_close_with(code, reason);
        self.mark_dirty(conn);
    }

    /// A connection's task has ended: counts it as lost if nothing had closed it, and detaches it.
    pub fn conn_ended(&mut self, conn: &Rc<Conn>) {
        if conn.closing().is_none() && !conn.detached.get() {
            self.stats.disconnect(Disconnect::Lost);
        }
        self.detach(conn);
    }

    /// Removes a connection from every map and tells the engine. Idempotent.
    pub fn detach(&mut self, conn: &Rc<Conn>) {
        if conn.detached.replace(true) {
            return;
        }
        self.conns.remove(&conn.id);
        self.presence_info.remove(&conn.id);
        self.reads.forget_conn(conn.id);
        self.hub_detach(conn);
        let rooms = std::mem::take(&mut *conn.rooms.borrow_mut());
        for entry in rooms {
            if !entry.live {
                self.joins.remove(&entry.jgen);
            }
            let msg = EngineMsg::Leave {
                room: entry.room,
                user: conn.user.clone(),
                conn: conn.id,
            };
            self.to_engine(msg);
        }
        let msg = EngineMsg::Unregister {
            user: conn.user.clone(),
            conn: conn.id,
        };
        self.to_engine(msg);
    }

    /// Closes the user's connections on this shard but `except` (session policy), and those
    /// still in their handshake.
    pub(super) fn close_user(&mut self, user: &Name, except: ConnId, code: CloseCode) {
        for c in self.hub.conns_of(user) {
            if c.id != except {
                self.close_conn(&c, code);
            }
        }
        for (id, p) in &mut self.pending {
            if p.user == *user && *id != except {
                p.close = Some(code);
            }
        }
    }

    /// Closes the user's connections with 4501; returns how many.
    pub(super) fn kick(&mut self, user: &Name, reason: Option<&str>) -> usize {
        let victims = self.hub.conns_of(user);
        for c in &victims {
            self.close_conn_with(c, CloseCode::Kicked, reason);
        }
        for p in self.pending.values_mut() {
            if p.user == *user {
                p.close = Some(CloseCode::Kicked);
            }
        }
        victims.len()
    }

    /// Writes `frame` to every connection; returns how many.
    pub(super) fn broadcast(&mut self, frame: Bytes) -> usize {
        let frame = Rc::new(frame);
        let all: Vec<_> = self.conns.values().cloned().collect();
        let mut sent = 0;
        for c in &all {
            if c.closing().is_none() {
                self.enqueue(c, &frame);
                sent += 1;
            }
        }
        sent
    }

    pub(super) fn shutdown(&mut self) {
        self.shutting_down = true;
        self.engine.shutdown();
        let all: Vec<_> = self.conns.values().cloned().collect();
        for c in all {
            self.close_conn(&c, CloseCode::GoingAway);
        }
        for p in self.pending.values_mut() {
            p.close = Some(CloseCode::GoingAway);
        }
    }

    pub(super) fn reply_error(&mut self, conn: &Rc<Conn>, id: Option<&ReqId>, err: ReplyError) {
        self.stats.error(err.code);
        self.enqueue(conn, &Rc::new(encode::error(id, &err)));
    }

    /// An answer from the engine or the store: a frame for a connection, or an API call's
    /// result.
    pub(super) fn reply(&mut self, to: ReplyTo, result: Result<Bytes, ReplyError>, read: u32) {
        match to {
            ReplyTo::Conn { conn, id } => {
                self.charge_reads(conn, read as usize);
                let Some(c) = self.conns.get(&conn).cloned() else {
                    return;
                };
                match result {
                    Ok(frame) => self.enqueue(&c, &Rc::new(frame)),
                    Err(e) => self.reply_error(&c, id.as_ref(), e),
                }
            }
            ReplyTo::Api { call, .. } => {
                if let Some(tx) = self.api_calls.remove(&call) {
                    let _ = tx.send(result);
                }
            }
        }
    }

    // ----- the server API -------------------------------------------------------------------

    /// An address for an API call's answer, which will be sent on `tx`.
    pub fn api_reply(&mut self, tx: oneshot::Sender<Result<Bytes, ReplyError>>) -> ReplyTo {
        self.next_call += 1;
        self.api_calls.insert(self.next_call, tx);
        ReplyTo::Api {
            node: self.router.node(),
            shard: self.id,
            call: self.next_call,
        }
    }
}
