//! One connection of the engine: connect, `welcome`, join, then the read loop that records
//! every frame until the run tells it to stop; a storm client drops and rejoins in between.
//!
//! Owns the per-message path (`read_loop`): one parse, one `RecvState` update, one histogram
//! record, no allocation. It must not write publishes (that is `publish`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::anyhow;
use fastwebsockets::OpCode;
use tokio::sync::{Semaphore, mpsc, watch};

use super::publish::PubShared;
use super::resend;
use crate::client::{self, BodyStamp, RequestBuf, ServerFrame, SharedWriter, Ws};
use crate::scenario::catchup::{CatchUp, StormCtl};
use crate::scenario::membership::{self, Member, RoomCtl};
use crate::stats::{ConnOutcome, Shared};
use shardcast_client::codec::{self, Format};

/// How long a new connection may take to get its `welcome` and join ack.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Connect attempts per connection.
const CONNECT_ATTEMPTS: u32 = 3;

/// Fixed inputs of one connection task.
pub(super) struct ConnEnv {
    pub(super) index: u32,
    pub(super) user: String,
    pub(super) join: Option<Arc<str>>,
    pub(super) recv_stream: u32,
    pub(super) pub_stream: Option<u32>,
    pub(super) publisher: Option<Arc<PubShared>>,
    /// Drops and reconnects in the storm.
    pub(super) drops: bool,
    /// Joins, leaves and rejoins while connected (bigroom).
    pub(super) member: Option<Arc<Member>>,
}

/// Inputs every connection task shares.
pub(super) struct Common {
    pub(super) shared: Arc<Shared>,
    pub(super) endpoints: Vec<client::Endpoint>,
    pub(super) source_ips: u8,
    pub(super) connect_gate: Semaphore,
    pub(super) storm: Option<Arc<StormCtl>>,
    /// The room's membership counters, when connections have a `Member`.
    pub(super) room: Option<Arc<RoomCtl>>,
    /// `--resend`: a dropped connection comes back and sends its unacked messages again.
    pub(super) resend: bool,
}

pub(super) type Ready = Result<(u32, SharedWriter), (u32, anyhow::Error)>;

/// One connection: connect, welcome, join, then read until told to stop.
pub(super) async fn conn_task(
    common: Arc<Common>,
    env: ConnEnv,
    ready: mpsc::UnboundedSender<Ready>,
    mut stop: watch::Receiver<bool>,
) -> ConnOutcome {
    let mut out = ConnOutcome {
        index: env.index,
        recv_stream: env.recv_stream,
        pub_stream: env.pub_stream,
        ..Default::default()
    };
    let setup = async {
        let _permit = common.connect_gate.acquire().await?;
        let src = client::source_ip(env.index as usize, common.source_ips);
        let endpoint = &common.endpoints[env.index as usize % common.endpoints.len()];
        let mut attempt = 0;
        let mut ws = loop {
            attempt += 1;
            match Ws::connect(endpoint, src, &env.user).await {
                Ok(ws) => break ws,
                Err(e) if attempt >= CONNECT_ATTEMPTS => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await,
            }
        };
        let start_seq = tokio::time::timeout(
            SETUP_TIMEOUT,
            welcome_and_join(&mut ws, env.join.as_deref()),
        )
        .await
        .map_err(|_| anyhow!("no welcome or join ack within {SETUP_TIMEOUT:?}"))??;
        anyhow::Ok((ws, start_seq))
    };
    let mut ws = match setup.await {
        Ok((ws, start_seq)) => {
            out.start_seq = start_seq;
            ws
        }
        Err(e) => {
            out.ended = Some(format!("{e:#}"));
            let _ = ready.send(Err((env.index, e)));
            return out;
        }
    };
    // The writer the publisher holds; a reconnect (`--resend`) puts the new socket behind it.
    let writer = ws.write.clone();
    if ready.send(Ok((env.index, ws.write.clone()))).is_err() {
        return out;
    }
    drop(ready);

    let shared = common.shared.clone();
    let storm = common.storm.as_deref().filter(|_| env.drops);
    let member = env.member.as_deref().zip(common.room.as_deref());
    let mut catch_up: Option<CatchUp> = None;
    let mut dropped = false;
    let ended = loop {
        let drop_signal = async {
            match storm {
                Some(s) if !dropped => s.drop_signal().await,
                _ => std::future::pending().await,
            }
        };
        let mut reader = Reader {
            shared: &shared,
            publisher: env.publisher.as_deref(),
            storm,
            catch_up: &mut catch_up,
            // After a reconnect, replayed messages would count the time away as latency.
            latency: !dropped,
            member,
            resend: common.resend,
        };
        let read_ended = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break None,
            why = read_loop(&mut ws, &mut out, &mut reader) => Some(why),
            () = drop_signal => None,
        };
        if let Some(why) = read_ended {
            if !common.resend {
                break Some(why);
            }
            // Replayed messages would count the time away as latency.
            dropped = true;
            drop(ws);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {
                    // A failure even though the run is ending: its unacked messages are lost.
                    let why = format!("{why}; the run ended before it was back");
                    shared.problem(format!("connection {}: {why}", env.index));
                    out.ended = Some(why);
                    break None;
                }
                r = resend::recover(&common, &env, &mut out, &writer) => match r {
                    Ok(w) => {
                        ws = w;
                        continue;
                    }
                    Err(e) => break Some(format!("{why}; {e:#}")),
                },
            }
        }
        // The storm: drop the socket, wait, then reconnect and join with the last seq seen.
        dropped = true;
        drop(ws);
        let Some(s) = storm else { break None };
        let since = out.recv.last_seq.max(out.start_seq.unwrap_or(0));
        let src = client::source_ip(env.index as usize, common.source_ips);
        let endpoint = &common.endpoints[env.index as usize % common.endpoints.len()];
        let room = env.join.as_deref().unwrap_or_default();
        let rejoin = s.rejoin(&shared, endpoint, src, &env.user, room, since, env.index);
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break Some("the run ended before it was back".into()),
            r = rejoin => match r {
                Ok((w, c)) => (ws, catch_up) = (w, c),
                Err(e) => break Some(format!("reconnect failed: {e:#}")),
            },
        }
    };
    if let Some(why) = ended
        && !*stop.borrow()
    {
        if let Some((m, room)) = member {
            m.fail(room, shared.now_ns());
        }
        shared.disconnects.fetch_add(1, Relaxed);
        shared.problem(format!(
            "connection {} ended during the run: {why}",
            env.index
        ));
        out.ended = Some(why);
    }
    out
}

/// Reads `welcome`, then joins `room` and returns the join ack's seq.
async fn welcome_and_join(ws: &mut Ws, room: Option<&str>) -> anyhow::Result<Option<u64>> {
    client::expect_frame(ws, |f| (f.kind == "welcome").then_some(())).await?;
    let Some(room) = room else { return Ok(None) };
    let mut rb = RequestBuf::default();
    client::send(&ws.write, rb.join(room, 0)).await?;
    let seq = client::expect_frame(ws, |f| {
        (f.kind == "ack" && f.id == Some(0)).then(|| f.seq.unwrap_or(0))
    })
    .await?;
    Ok(Some(seq))
}

/// What the read loop of one connection needs besides its socket.
struct Reader<'a> {
    shared: &'a Shared,
    publisher: Option<&'a PubShared>,
    /// Set for a client that drops in the storm.
    storm: Option<&'a StormCtl>,
    /// A reconnected client's replay still owed.
    catch_up: &'a mut Option<CatchUp>,
    /// Whether deliveries go into the latency histogram.
    latency: bool,
    /// This connection's membership and the room's counters (bigroom).
    member: Option<(&'a Member, &'a RoomCtl)>,
    /// `--resend`: a rejoin's replay brings the connection's own messages; a resend's ack may
    /// be a dup.
    resend: bool,
}

impl Reader<'_> {
    /// A bot message in this connection's stream, received at `now`.
    #[inline]
    fn on_message(&mut self, out: &mut ConnOutcome, seq: u64, stamp: BodyStamp, now: u64) {
        if self.resend && stamp.publisher == out.index {
            out.recv.on_own(seq);
            return;
        }
        out.recv.on_message(seq, stamp);
        self.shared.delivered.fetch_add(1, Relaxed);
        let conn = out.index as usize;
        let live = match self.member {
            Some((m, room)) => m.on_message(room, seq, now, conn),
            None => true,
        };
        if live && self.latency && self.shared.in_window(stamp.sched_ns) {
            let ns = now.saturating_sub(stamp.sched_ns);
            self.shared.latency.record(conn, ns);
            if let Some((_, room)) = self.member {
                room.record_phase(stamp.sched_ns, conn, ns);
            }
        }
        if let (Some(s), Some(c)) = (self.storm, self.catch_up.as_ref())
            && out.recv.last_seq >= c.seq
        {
            s.caught_up(out.index, now);
            *self.catch_up = None;
        }
    }
}

impl Reader<'_> {
    /// A message that is not the bot's (`what` shows it).
    fn foreign_message(&mut self, out: &mut ConnOutcome, what: &str) {
        out.recv.count += 1;
        out.recv.foreign += 1;
        self.shared.delivered.fetch_add(1, Relaxed);
        self.shared.problem(format!(
            "connection {}: message that is not the bot's: {what:.200}",
            out.index
        ));
    }

    /// A frame that is neither a message nor a reply (a presence event, say).
    #[inline]
    fn on_event(&mut self, out: &mut ConnOutcome, kind: &str) {
        out.count_other(kind);
        self.shared.other_frames.fetch_add(1, Relaxed);
    }
}

/// The per-message path. Returns why the connection ended. A JSON frame takes the bot's fast
/// paths (no allocation); a binary one is decoded by the client crate's codec, as an
/// application's would be (prost's owned strings and body: the form's own cost).
async fn read_loop(ws: &mut Ws, out: &mut ConnOutcome, r: &mut Reader<'_>) -> String {
    let (shared, publisher) = (r.shared, r.publisher);
    let index = out.index as usize;
    let proto = ws.format() == Format::Proto;
    loop {
        let frame = match ws.recv_raw().await {
            Ok(f) => f,
            Err(e) => return format!("read error: {e}"),
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {}
            OpCode::Close => {
                return format!("server sent {}", client::close_reason(&frame.payload));
            }
            _ => continue,
        }
        let len = frame.payload.len();
        let header = match len {
            0..126 => 2,
            126..65536 => 4,
            _ => 10,
        };
        shared.bytes_in.fetch_add((header + len) as u64, Relaxed);
        let now = shared.now_ns();
        let decoded;
        let f = if proto {
            decoded = match codec::decode(Format::Proto, &frame.payload) {
                Ok(f) => f,
                Err(e) => {
                    out.recv.foreign += 1;
                    shared.problem(format!("connection {index}: {e}"));
                    continue;
                }
            };
            if decoded.ty == "message" {
                match (decoded.seq, client::stamp_of(&decoded)) {
                    (Some(seq), Some(stamp)) => r.on_message(out, seq, stamp, now),
                    _ => r.foreign_message(out, &format!("{decoded:.200?}")),
                }
                continue;
            }
            if !matches!(&*decoded.ty, "ack" | "error") {
                r.on_event(out, &decoded.ty);
                continue;
            }
            ServerFrame::from_codec(&decoded)
        } else {
            if let Some((seq, stamp)) = client::parse_message_fast(&frame.payload) {
                r.on_message(out, seq, stamp, now);
                continue;
            }
            if let Some(kind) = client::event_kind(&frame.payload) {
                r.on_event(out, kind);
                continue;
            }
            match ServerFrame::parse(&frame.payload) {
                Ok(f) => f,
                Err(e) => {
                    out.recv.foreign += 1;
                    shared.problem(format!(
                        "connection {index}: unparsable frame ({e}): {:.200}",
                        String::from_utf8_lossy(&frame.payload)
                    ));
                    continue;
                }
            }
        };
        match f.kind {
            "message" => {
                let stamp = f.body.and_then(|b| client::decode_body(b.get()));
                match (f.seq, stamp) {
                    (Some(seq), Some(stamp)) => r.on_message(out, seq, stamp, now),
                    _ => r.foreign_message(out, &String::from_utf8_lossy(&frame.payload)),
                }
            }
            "ack" => match (f.id, f.seq, publisher) {
                (Some(0), _, _) => {} // a join ack again
                (Some(id), _, _) if membership::is_member_request(id) && r.member.is_some() => {
                    if let Some((m, room)) = r.member {
                        m.on_ack(room, shared, &f, &mut out.start_seq, (now, index));
                    }
                }
                (Some(id), Some(seq), Some(p)) => {
                    let counter = id - 1;
                    let k = counter as usize;
                    if k >= out.acks.len() {
                        out.acks.resize(k + 1, 0);
                    }
                    let dup = r.resend && f.dup == Some(true);
                    out.dup_acks += u64::from(dup);
                    if dup && out.acks[k] == seq {
                        // Sent again (on a reconnect) after its first ack had come: no news.
                        continue;
                    }
                    if out.acks[k] != 0 || seq == 0 {
                        out.bad_acks += 1;
                        shared.problem(format!(
                            "connection {index}: ack for message {counter} again (seq {seq})"
                        ));
                    } else {
                        out.acks[k] = seq;
                    }
                    if let Some((m, room)) = r.member {
                        m.on_own_publish(room, seq);
                    }
                    let stamp = p.stamp_of(counter);
                    if shared.in_window(stamp) {
                        shared.ack_latency.record(index, now.saturating_sub(stamp));
                    }
                    shared.acked.fetch_add(1, Relaxed);
                    p.answer();
                }
                _ => {
                    out.bad_acks += 1;
                    shared.problem(format!(
                        "connection {index}: unexpected ack {}",
                        String::from_utf8_lossy(&frame.payload)
                    ));
                }
            },
            "error" => {
                out.server_errors += 1;
                shared.server_errors.fetch_add(1, Relaxed);
                match (f.id, publisher, r.member) {
                    // A refused join or leave: the member is out of the run.
                    (Some(id), _, Some((m, room))) if membership::is_member_request(id) => {
                        m.fail(room, now);
                    }
                    // A refused publish is answered too: the drain and the window must not wait
                    // for its ack.
                    (Some(1..), Some(p), _) => {
                        shared.rejected.fetch_add(1, Relaxed);
                        shared.owed.fetch_sub(p.recipients, Relaxed);
                        p.answer();
                    }
                    _ => {}
                }
                shared.problem(format!(
                    "connection {index}: server error frame: {}",
                    String::from_utf8_lossy(&frame.payload)
                ));
            }
            // Presence events and anything new in the protocol: counted, not checked.
            kind => r.on_event(out, kind),
        }
    }
}
