//! The engine's dispatch: each `EngineMsg` a shard sends, taken in order. It updates this
//! node's bookkeeping at once and hands the Redis work to the module that owns it (rooms,
//! messages, sessions, chat, events); only the shortest calls are made here.

use std::rc::Rc;

use super::order::Pending;
use super::{Node, Wire, unavailable};
use crate::core::Stream;
use crate::engine::Joined;
use crate::msg::EngineMsg;
use crate::persist::{Op, Read};
use crate::ws;

impl Node {
    pub(super) fn serve(self: &Rc<Self>, msg: EngineMsg) {
        let me = self.clone();
        match msg {
            EngineMsg::Register { user, conn } => {
                self.add_session(&user, conn);
                self.spawn(async move { me.register(user, conn).await });
            }
            EngineMsg::Unregister { user, conn } => {
                self.release(conn, None);
                self.remove_session(&user, conn);
                self.spawn(async move {
                    let (conns, online) = me.keys.sessions(&user);
                    let mut inv = me.scripts.unregister.prepare_invoke();
                    inv.key(conns)
                        .key(online)
                        .arg(conn.raw())
                        .arg(user.as_str());
                    me.feed_keys(&mut inv, &me.keys.channel(&Stream::Inbox(user.clone())));
                    me.script::<i64>(&inv).await;
                });
            }
            EngineMsg::Online { user, conn } => {
                if let Some(u) = self.state.borrow_mut().users.get_mut(&user) {
                    u.online.insert(conn);
                }
                self.spawn(async move { me.online(user, conn).await });
            }
            EngineMsg::InboxHanded {
                user,
                after,
                upto,
                ok,
            } => {
                if ok && upto > after {
                    self.spawn(async move {
                        let meta = me.keys.meta(&Stream::Inbox(user));
                        let mut inv = me.scripts.cursor.prepare_invoke();
                        inv.key(meta).arg(upto);
                        me.script::<i64>(&inv).await;
                    });
                }
            }
            EngineMsg::Join {
                room,
                user,
                conn,
                jgen,
                id,
                ack,
                since,
                epoch,
                rights,
                info,
            } => {
                self.add_member(&room, &user, conn, jgen);
                let joined = Joined::new(room, conn, jgen, id, ack, since, rights);
                self.spawn(async move { me.join(user, joined, epoch, info).await });
            }
            EngineMsg::Leave { room, user, conn } => {
                self.release(conn, Some(&Stream::Room(room.clone())));
                self.remove_member(&room, conn);
                self.spawn(async move { me.leave(room, user, conn).await });
            }
            EngineMsg::Publish {
                room,
                from,
                body,
                key,
                reply,
            } => self.enqueue(Pending {
                stream: Stream::Room(room),
                from,
                body,
                key,
                reply,
            }),
            EngineMsg::Direct {
                to,
                from,
                body,
                key,
                reply,
            } => self.enqueue(Pending {
                stream: Stream::Inbox(to),
                from,
                body,
                key,
                reply,
            }),
            EngineMsg::Forward {
                user,
                frame,
                exclude,
            } => self.spawn(async move {
                let wire = Wire::Forward {
                    exclude,
                    json: ws::payload_of(&frame),
                };
                let cmd = me.publish(me.keys.channel(&Stream::Inbox(user)), &wire);
                me.query::<u64>(cmd).await;
            }),
            EngineMsg::Presence { room, reply, page } => {
                self.spawn(async move { me.presence(room, reply, page).await })
            }
            EngineMsg::Signal {
                room,
                frame,
                exclude,
            } => self.spawn(async move { me.signal(room, frame, exclude).await }),
            EngineMsg::Read(read) => self.spawn(async move { me.read(read).await }),
            EngineMsg::Unread { user, reply } => {
                self.spawn(async move { me.unread(user, reply).await })
            }
            EngineMsg::UserInfo { user, reply } => self.spawn(async move {
                let (conns, _) = me.keys.sessions(&user);
                let mut cmd = redis::cmd("ZRANGE");
                cmd.arg(conns).arg(0).arg(-1).arg("WITHSCORES");
                let answer = match me.query::<Vec<(String, f64)>>(cmd).await {
                    Some(all) => {
                        let live = me.live.borrow();
                        let n = all.iter().filter(|(_, l)| live.alive(*l as u64)).count();
                        reply.user_info(&user, n as u64)
                    }
                    None => reply.fail(unavailable()),
                };
                me.answer(answer);
            }),
            EngineMsg::Event {
                room,
                from,
                event,
                api,
                reply,
            } => self.spawn(async move { me.event(room, (from, event, api), reply).await }),
            // The embedded engine's store writer sends these; this engine checks in its script.
            EngineMsg::Checked { reply, .. } => {
                tracing::error!("an event check reached the Redis engine's thread");
                self.answer(reply.fail(unavailable()));
            }
            // Reads the shards hand to the store thread themselves (`StoreReads`).
            EngineMsg::History { .. } | EngineMsg::Sync { .. } => {
                tracing::error!("a history or sync read reached the Redis engine's thread");
            }
            EngineMsg::Fetch {
                stream,
                after,
                upto,
                to,
            } => self.persist.send(vec![Op::Read(Read::Range {
                stream,
                after,
                upto,
                to,
            })]),
        }
    }
}
