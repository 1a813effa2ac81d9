//! The feed's delivery thread: POSTs the durable events after the mark to `webhook_url` in
//! batches of up to `webhook_batch`, signed, and moves the mark (kept in the store) on a 2xx;
//! retries a failure with capped exponential backoff; applies the feed's retention.
//!
//! At least once: the mark is written after the answer, so a crash between the two repeats
//! one batch, whose events the backend recognises by `id`. It runs on its own thread with its
//! own current-thread runtime, never on a shard's. It must not hold room, user or connection
//! state.
//!
//! A shared feed (the Redis engine's, `Store::feed_shared`) has such a thread on every node;
//! the one holding the lease (`Store::feed_lease`, renewed before each batch, for
//! `presence_ttl_secs`) delivers, and takes the mark from the store each time it gains it, so a
//! dead node's successor goes on from the last acknowledged batch.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, select};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{CONTENT_TYPE, HOST};
use sha2::Sha256;

use super::feed::{FeedShared, read_page};
use crate::config::Config;
use crate::outbound::{Endpoint, OutboundError};
use crate::store::Store;

/// The first retry's wait (or `webhook_backoff_max_ms`, if less).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// How often retention is applied and the backlog gauge read while nothing happens.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How often a shared feed is read for new events while it is idle (nothing wakes the thread:
/// other nodes write it too).
const SHARED_POLL: Duration = Duration::from_millis(50);
/// How often a node without the lease tries to take it.
const LEASE_POLL: Duration = Duration::from_millis(250);
/// Most bytes of a webhook's answer read (and then ignored).
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The name of the signature header.
pub const SIGNATURE_HEADER: &str = "shardcast-signature";

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`, as Stripe signs its webhooks.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = format!("t={t},v1=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What the thread needs of the config.
pub(super) struct Target {
    endpoint: Endpoint,
    secret: Vec<u8>,
    batch: usize,
    timeout: Duration,
    backoff_max: Duration,
    retention_events: u64,
    retention_ms: u64,
    /// A shared feed's lease: a node silent this long is dead (`presence_ttl_secs`).
    lease_ms: u64,
}

impl Target {
    /// `None` without a `webhook_url`; an error if it (or `hook_ca_file`) cannot be used.
    pub(super) fn from_config(config: &Config) -> Result<Option<Target>, OutboundError> {
        let Some(url) = config.webhook_url.as_deref() else {
            return Ok(None);
        };
        let Some(secret) = config.webhook_secret.clone() else {
            return Ok(None);
        };
        Ok(Some(Target {
            endpoint: Endpoint::parse(url, config.hook_ca_file.as_deref())?,
            secret: secret.into_bytes(),
            batch: config.webhook_batch,
            timeout: Duration::from_millis(config.webhook_timeout_ms),
            backoff_max: Duration::from_millis(config.webhook_backoff_max_ms),
            retention_events: config.webhook_retention_events,
            retention_ms: config.webhook_retention_secs.saturating_mul(1000),
            lease_ms: config.presence_ttl_secs.saturating_mul(1000),
        }))
    }
}

/// Drops what is past the feed's retention (by count and by age).
pub(super) fn apply_retention(store: &dyn Store, events: u64, age_ms: u64) {
    let state = match store.feed_state() {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "cannot read the event feed's state"),
    };
    let keep_from = match events {
        0 => 0,
        n => (state.last + 1).saturating_sub(n),
    };
    let min_ts = match age_ms {
        0 => 0,
        ms => crate::core::now_ms().saturating_sub(ms),
    };
    if let Err(e) = store.feed_trim(keep_from, min_ts) {
        tracing::warn!(error = %e, "cannot apply the event feed's retention");
    }
}

/// The thread's body: until `stop` is dropped.
pub(super) fn deliver_loop(
    store: Arc<dyn Store>,
    shared: Arc<FeedShared>,
    target: Target,
    stop: Receiver<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return tracing::error!(error = %e, "cannot start the webhook thread; no push");
        }
    };
    let shared_feed = store.feed_shared();
    // A shared feed's mark is read when the lease is gained.
    let mut held = !shared_feed;
    let mut mark = match shared_feed {
        true => 0,
        false => store.feed_state().map(|s| s.mark).unwrap_or(0),
    };
    let mut retained: Option<Instant> = None;
    let mut conn: Option<SendRequest<Full<Bytes>>> = None;
    let mut backoff = FIRST_BACKOFF.min(target.backoff_max);
    let c = &shared.counters;
    use std::sync::atomic::Ordering::Relaxed;
    loop {
        if shared_feed {
            match lease(&*store, &target, held) {
                Ok(Some(stored)) => {
                    (held, mark) = (true, stored);
                    tracing::info!(mark, "this node delivers the event feed");
                }
                Ok(None) => {}
                Err(pause) => {
                    held = false;
                    c.backlog.store(0, Relaxed);
                    if wait(&stop, pause) {
                        return;
                    }
                    continue;
                }
            }
        }
        // A shared feed's retention and backlog cost round trips: once a second.
        if !shared_feed || retained.is_none_or(|t| t.elapsed() >= IDLE_TICK) {
            apply_retention(&*store, target.retention_events, target.retention_ms);
            retained = Some(Instant::now());
            if shared_feed && let Ok(s) = store.feed_state() {
                if s.last < mark {
                    // Redis lost the feed (restarted without persistence): it starts again.
                    tracing::warn!(
                        mark,
                        last = s.last,
                        "the event feed went back; from its start"
                    );
                    mark = s.mark.min(s.last);
                }
                c.backlog.store(s.last.saturating_sub(mark), Relaxed);
            }
        }
        let durable = shared.durable();
        if !shared_feed {
            c.backlog.store(durable.saturating_sub(mark), Relaxed);
        }
        let page = match read_page(&*store, mark, target.batch, durable) {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event feed");
                if wait(&stop, backoff) {
                    return;
                }
                continue;
            }
        };
        if page.next == mark {
            // Nothing new: wait for the writer, or the next retention tick.
            let idle = if shared_feed { SHARED_POLL } else { IDLE_TICK };
            select! {
                recv(shared.woken) -> _ => {}
                recv(stop) -> _ => return,
                default(idle) => {}
            }
            continue;
        }
        let body = page.json();
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let sig = signature(&target.secret, t, &body);
        let sent = rt.block_on(post(&target, &mut conn, body, &sig));
        match sent {
            Ok(()) => {
                mark = page.next;
                if let Err(e) = store.set_feed_mark(mark) {
                    tracing::warn!(error = %e, "cannot store the event feed's mark");
                    // Read it again with the lease: at worst this batch is repeated.
                    held = !shared_feed;
                }
                c.delivered.fetch_add(page.events.len() as u64, Relaxed);
                c.dropped.fetch_add(page.dropped, Relaxed);
                backoff = FIRST_BACKOFF.min(target.backoff_max);
            }
            Err(e) => {
                c.failed.fetch_add(1, Relaxed);
                tracing::warn!(error = %e, retry_in = ?backoff, "webhook delivery failed");
                if wait(&stop, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(target.backoff_max);
            }
        }
    }
}

/// A shared feed's lease, taken or renewed: `Some(mark)` when it was just gained (the stored
/// mark to deliver from), `None` when it was held already; `Err(pause)` while another node
/// holds it or the store cannot be reached.
fn lease(store: &dyn Store, target: &Target, held: bool) -> Result<Option<u64>, Duration> {
    match store.feed_lease(target.lease_ms) {
        Ok(true) if held => Ok(None),
        Ok(true) => match store.feed_state() {
            Ok(s) => Ok(Some(s.mark)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event feed's mark");
                Err(LEASE_POLL)
            }
        },
        Ok(false) => Err(LEASE_POLL),
        Err(e) => {
            tracing::warn!(error = %e, "cannot take the event feed's lease");
            Err(LEASE_POLL)
        }
    }
}

/// Sleeps `d` unless stopped; returns whether stopped.
fn wait(stop: &Receiver<()>, d: Duration) -> bool {
    matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Disconnected))
}

/// One POST, on the kept-alive connection if there is one (and once more on a new one if that
/// fails: the backend may have closed it while idle). Ok on a 2xx answer.
async fn post(
    target: &Target,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    body: Bytes,
    sig: &str,
) -> Result<(), String> {
    let reused = conn.is_some();
    let timed = async |conn: &mut Option<SendRequest<Full<Bytes>>>, body| {
        let sent = tokio::time::timeout(target.timeout, post_once(target, conn, body, sig));
        let result =
            (sent.await).unwrap_or_else(|_| Err(format!("no answer within {:?}", target.timeout)));
        if result.is_err() {
            *conn = None;
        }
        result
    };
    match timed(conn, body.clone()).await {
        Err(e) if reused && !e.starts_with("status") => timed(conn, body).await,
        result => result,
    }
}

async fn post_once(
    target: &Target,
    conn: &mut Option<SendRequest<Full<Bytes>>>,
    body: Bytes,
    sig: &str,
) -> Result<(), String> {
    if conn.as_ref().is_none_or(|c| c.is_closed()) {
        *conn = Some(target.endpoint.connect().await?);
    }
    let sender = conn.as_mut().expect("set above");
    sender.ready().await.map_err(|e| e.to_string())?;
    let request = hyper::Request::post(target.endpoint.path.as_str())
        .header(HOST, target.endpoint.authority.as_str())
        .header(CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, sig)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    // Read the answer through, so the connection can carry the next batch.
    let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_t_dot_body() {
        // Known answer, from Python: hmac.new(b"key", b"1.body", hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"key", 1, b"body"),
            "t=1,v1=91b5374b153842ad05b2c4eab9349b8321b14703165bd3fb8b034dfb8be98ae5"
        );
    }
}
