//! Room messages and direct messages: one script checks the key, assigns the seq, appends to
//! the stream's log (and the key beside it) and publishes, then the sender is answered.

use super::order::Pending;
use super::*;

impl Node {
    /// Sequences, stores and publishes a room message or a direct message, and acks it. False
    /// when Redis failed (the sender's later requests to the stream must not overtake it).
    pub(super) async fn message(self: Rc<Self>, p: Pending) -> bool {
        let Pending {
            stream,
            from,
            body,
            key,
            reply,
        } = p;
        let ts = now_ms();
        let target = match &stream {
            Stream::Room(room) => To::Room(room),
            Stream::Inbox(to) => To::User(to),
        };
        let (head, tail) = encode::message_parts(target, &from, ts, &body);
        let (messages, secs) = super::super::store::retention(&self.config, &stream);
        let oldest = match secs {
            0 => 0,
            s => ts.saturating_sub(s * 1000).max(1),
        };
        let meta = self.keys.meta(&stream);
        let publisher = reply.conn();
        // Keys and arguments past the first nine only where needed (`lua/publish.lua`).
        let mut inv =
            self.message_invocation(&self.scripts.publish, (&meta, &stream), (&head, &tail), ts);
        inv.arg(publisher.map(|c| c.raw().to_string()).unwrap_or_default())
            .arg(messages)
            .arg(oldest)
            .arg(Self::new_epoch());
        // With the event feed the script is passed every key and argument, and the stream's
        // name (`lua/publish.lua`).
        let feed = self.config.feed_on();
        let inbox = match &stream {
            Stream::Inbox(user) => Some(self.keys.sessions(user).1),
            Stream::Room(_) => None,
        };
        if inbox.is_some() || key.is_some() || feed {
            inv.key(inbox.as_ref().unwrap_or(&meta))
                .arg(if inbox.is_some() {
                    self.dead()
                } else {
                    String::new()
                });
        }
        if key.is_some() || feed {
            let window = self.config.idempotency_window_secs.saturating_mul(1000);
            let (keys, keyz) = self.keys.idempotency(&stream);
            let key_text =
                (key.as_ref()).map_or_else(String::new, |k| format!("{from} {}", k.as_str()));
            inv.key(keys)
                .key(keyz)
                .arg(key_text)
                .arg(self.config.idempotency_max_keys)
                .arg(ts.saturating_sub(window));
        }
        if feed {
            inv.arg(stream.name().as_str());
            self.feed_keys(&mut inv, &meta);
        }
        let (seq, _epoch, dup) = match self.script_or::<(u64, u64, u8)>(&inv).await {
            Ok(done) => done,
            Err(f) => {
                self.answer(reply.fail(failed(f)));
                return false;
            }
        };
        if dup == 1 {
            let ack = reply.answer(
                |id| encode::dup_ack(id, target_of(&stream), seq),
                || Bytes::from(format!("{{\"seq\":{seq},\"dup\":true}}")),
            );
            self.answer(ack);
            return true;
        }
        if let Err(error) = self.replicated(&meta).await {
            // Stored and published; only its survival of a failover is in doubt.
            self.answer(reply.fail(error));
            return true;
        }
        let seq_json = || Bytes::from(format!("{{\"seq\":{seq}}}"));
        let ack = reply.answer(
            |id| encode::ack(id, target_of(&stream), Some(seq)),
            seq_json,
        );
        self.answer(ack);
        if let Stream::Inbox(to) = &stream
            && *to != from
        {
            // The sender's other connections get a copy, outside their own inbox's order.
            let mut json = Vec::with_capacity(head.len() + 20 + tail.len());
            json.extend_from_slice(&head);
            json.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
            json.extend_from_slice(&tail);
            let json = match &key {
                // With the key: the copy lets the sender's other devices match their sends.
                Some(k) => ws::payload_of(&encode::with_key(&json, k.as_str())),
                None => json.into(),
            };
            let wire = Wire::Forward {
                exclude: publisher,
                json,
            };
            let cmd = self.publish(self.keys.channel(&Stream::Inbox(from)), &wire);
            self.query::<u64>(cmd).await;
        }
        true
    }
}

impl Node {
    /// The start both per-message scripts share (`lua/publish.lua`, `lua/event.lua`): KEYS
    /// `meta` (the stream's, passed in: a caller needs it again) and log; ARGV 1 the channel, 2 the publish command, 3 and 4 the JSON up to and after
    /// the seq, 5 the ts.
    pub(super) fn message_invocation<'a>(
        &self,
        script: &'a redis::Script,
        (meta, stream): (&str, &Stream),
        (head, tail): (&[u8], &[u8]),
        ts: u64,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(meta)
            .key(self.keys.log(stream))
            .arg(self.keys.channel(stream))
            .arg(self.publish_cmd())
            .arg(head)
            .arg(tail)
            .arg(ts);
        inv
    }
}

pub(super) fn unreplicated(got: u64, want: u32) -> ReplyError {
    ReplyError::new(
        ErrorCode::Unavailable,
        format!(
            "the message was stored, but only {got} of the {want} replicas required \
             (redis_wait_replicas) confirmed it in time, so a failover may lose it: send it \
             again with the same `key` (it is answered `dup` if it survived)"
        ),
    )
}
