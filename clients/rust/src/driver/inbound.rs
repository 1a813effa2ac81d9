//! What the server sends, turned into state and [`Event`]s: replies matched to their requests
//! (joins, outbox publishes, inbox `sync` pages), live messages deduplicated against a room's
//! seq and our own publishes, and the other server frames.
//!
//! Part of the connection task ([`super::Driver`]); it writes frames only to answer (the next
//! `sync` page, the outbox's next entries), never on its own.

use tokio::time::Instant;

use super::socket::dropped;
use super::{Driver, End, Pending, Room, Target, Ws};
use crate::Error;
use crate::codec::Frame;
use crate::event::{Event, JoinAck, Message, RoomRecovery};

impl Driver {
    pub(super) async fn on_frame(&mut self, ws: &mut Ws, f: Frame<'_>) -> Result<(), End> {
        if let Some(id) = f.id
            && f.ty != "message"
        {
            let Some(p) = self.pending.remove(&id) else {
                return Ok(());
            };
            return self.reply(ws, id, p, f).await;
        }
        let s =
            |v: Option<std::borrow::Cow<'_, str>>| v.map(|v| v.into_owned()).unwrap_or_default();
        let event = match &*f.ty {
            "message" => {
                self.on_message(Message::from_frame(f));
                return Ok(());
            }
            "joined" => Event::Joined {
                room: s(f.room),
                user: s(f.user),
            },
            "left" => Event::Left {
                room: s(f.room),
                user: s(f.user),
            },
            "occupancy" => Event::Occupancy {
                room: s(f.room),
                members: f.members.unwrap_or(0),
            },
            "signal" => Event::Signal {
                room: s(f.room),
                from: s(f.from),
                body: f
                    .body
                    .map(crate::Body::from_wire)
                    .unwrap_or_else(|| crate::Body::bytes(Vec::new())),
            },
            "read" => Event::Read {
                room: f.room.map(|r| r.into_owned()),
                seq: f.seq.unwrap_or(0),
            },
            "receipt" => Event::Receipt {
                room: s(f.room),
                user: s(f.user),
                seq: f.seq.unwrap_or(0),
            },
            "removed" => {
                let room = s(f.room);
                self.rooms.remove(&room);
                Event::Removed {
                    room,
                    reason: s(f.reason),
                }
            }
            "error" => Event::ServerError {
                code: s(f.code),
                message: s(f.message),
            },
            _ => return Ok(()),
        };
        self.emit(event);
        Ok(())
    }

    fn on_message(&mut self, m: Message) {
        if let Some(room) = &m.room {
            if let Some(r) = self.rooms.get_mut(room) {
                let seen = r.seq.unwrap_or(0);
                if m.seq <= seen || r.own.remove(&m.seq) {
                    return;
                }
                r.seq = Some(m.seq);
                advance(r);
            }
        } else if m.to.as_deref() == Some(self.user.as_str()) {
            if let Some(held) = &mut self.held {
                held.push(m);
                return;
            }
            let seen = self.inbox_seq.unwrap_or(0);
            if m.seq <= seen {
                return;
            }
            self.inbox_seq = Some(m.seq);
        }
        self.emit(Event::Message(m));
    }

    pub(super) async fn reply(
        &mut self,
        ws: &mut Ws,
        id: u64,
        p: Pending,
        f: Frame<'_>,
    ) -> Result<(), End> {
        let err = (f.ty == "error").then(|| Error::Server {
            code: f.code.as_deref().unwrap_or_default().to_string(),
            message: f.message.as_deref().unwrap_or_default().to_string(),
        });
        match p {
            Pending::Request(done) => done(err.map_or(Ok(f), Err)),
            Pending::Join {
                room,
                since,
                rejoin,
                counted,
            } => {
                // Only the session's own joins: a join the application asked for meanwhile
                // must not end the recovery early (nor, counted off, underflow it).
                if counted {
                    self.recovering -= 1;
                }
                self.join_answered(room, since, rejoin, err, &f);
            }
            Pending::Outbox => {
                let answer = err.map_or_else(|| Ok(crate::Ack::from_frame(&f)), Err);
                let backoff = |tries| self.opts.backoff.delay(tries);
                if let Some((Target::Room(room), Some(seq))) =
                    self.outbox.answered(id, answer, Instant::now(), backoff)
                    && let Some(r) = self.rooms.get_mut(&room)
                    && seq > r.seq.unwrap_or(0)
                {
                    r.own.insert(seq);
                    advance(r);
                }
                self.flush(ws).await?;
            }
            Pending::Sync => {
                self.recovering -= 1;
                if err.is_some() {
                    return Err(dropped(None, "the inbox sync was refused".into()));
                }
                let mut last = None;
                for m in f.messages.into_iter().flatten() {
                    last = m.seq.or(last);
                    if let Some(held) = &mut self.held {
                        held.push(Message::from_frame(m));
                    }
                }
                match last {
                    Some(after) if f.more => self.sync_page(ws, after).await?,
                    _ => {
                        let mut held = self.held.take().unwrap_or_default();
                        held.sort_by_key(|m| m.seq);
                        for m in held {
                            self.on_message(m);
                        }
                        let floor = std::mem::take(&mut self.inbox_floor);
                        self.inbox_seq = Some(self.inbox_seq.unwrap_or(0).max(floor));
                    }
                }
            }
        }
        Ok(())
    }

    fn join_answered(
        &mut self,
        room: String,
        since: Option<u64>,
        rejoin: bool,
        err: Option<Error>,
        f: &Frame<'_>,
    ) {
        if let Some(err) = err {
            if let Some(r) = self.rooms.remove(&room) {
                for w in r.waiters {
                    let _ = w.send(Err(err.clone()));
                }
            }
            if rejoin {
                self.recovery.push(RoomRecovery {
                    room,
                    since: since.unwrap_or(0),
                    seq: 0,
                    recovered: false,
                    replayed: 0,
                    truncated: false,
                    error: err.code().map(str::to_string),
                });
            }
            return;
        }
        let Some(r) = self.rooms.get_mut(&room) else {
            return; // left meanwhile
        };
        let seq = f.seq.unwrap_or(0);
        if let Some(epoch) = f.epoch {
            // A cluster room that began a new epoch restarts its seqs from what is replayed.
            if r.epoch.is_some_and(|e| e != epoch) {
                r.seq = Some(0);
            }
            r.epoch = Some(epoch);
        }
        if let Some(rights) = &f.rights {
            r.history = rights.iter().any(|x| x == "history");
        }
        let replayed = f.replayed.unwrap_or(0);
        // With a replay, the replayed messages move `seq`; without one, the ack's seq is where
        // live delivery starts.
        if replayed == 0 && seq > r.seq.unwrap_or(0) || r.seq.is_none() {
            r.seq = Some(seq);
        }
        advance(r);
        r.live = true;
        let ack = JoinAck {
            room: room.clone(),
            seq,
            publish: f.publish.as_ref().map(|s| s.to_string()),
            presence: f.presence.as_ref().map(|s| s.to_string()),
            rights: f
                .rights
                .as_ref()
                .map(|v| v.iter().map(|s| s.to_string()).collect()),
            members: f.members,
            epoch: f.epoch,
        };
        for w in r.waiters.drain(..) {
            let _ = w.send(Ok(ack.clone()));
        }
        if rejoin {
            let since = since.unwrap_or(0);
            self.recovery.push(RoomRecovery {
                room,
                since,
                seq,
                recovered: f.recovered.unwrap_or(seq == since),
                replayed,
                truncated: f.truncated.unwrap_or(false),
                error: None,
            });
        }
    }
}

/// Moves a room's seq over our own publishes that directly follow it.
fn advance(r: &mut Room) {
    let seq = r.seq.unwrap_or(0);
    r.own.retain(|&s| s > seq);
    let mut seq = seq;
    while r.own.remove(&(seq + 1)) {
        seq += 1;
    }
    if r.seq.is_some() {
        r.seq = Some(seq);
    }
}
