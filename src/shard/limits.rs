//! The client side's rate policy: what a request costs (`publish_rate`), what a read costs
//! (`read_rate`, charged for what it returned), and the error a refusal gets. The meter itself
//! is `core::bucket`, kept in each `Conn`.

use super::Shard;
use crate::conn::Conn;
use crate::core::ConnId;
use crate::core::bucket::{Buckets, Rates};
use crate::core::error::{ErrorCode, ReplyError};

impl Shard {
    /// Applies `f` to the connection's rate limits.
    fn buckets<R>(&self, conn: &Conn, f: impl FnOnce(&mut Buckets, &Rates) -> R) -> R {
        let mut buckets = conn.rate.get();
        let r = f(&mut buckets, &self.config.rates());
        conn.rate.set(buckets);
        r
    }

    pub(super) fn take_token(&self, conn: &Conn) -> Result<(), ReplyError> {
        if self.buckets(conn, Buckets::take_request) {
            return Ok(());
        }
        Err(ReplyError::new(
            ErrorCode::RateLimited,
            format!(
                "over {} requests per second (publish, send, history, sync, presence, \
                 refresh); this one was dropped",
                self.config.publish_rate
            ),
        ))
    }

    /// A read (`join` with `since`, `history`, `sync`) may start unless the connection's read
    /// budget is in debt; it is charged when its answer comes (`charge_reads`).
    pub(super) fn may_read(&self, conn: &Conn) -> Result<(), ReplyError> {
        if self.buckets(conn, Buckets::may_read) {
            return Ok(());
        }
        Err(ReplyError::new(
            ErrorCode::RateLimited,
            format!(
                "over {} stored messages read per second (join with since, history, sync); \
                 this read was dropped: wait, then ask again",
                self.config.read_rate
            ),
        ))
    }

    /// A read's answer reached connection `conn` with `messages` stored messages.
    pub(super) fn charge_reads(&self, conn: ConnId, messages: usize) {
        if let Some(c) = self.conns.get(&conn).filter(|_| messages > 0) {
            self.buckets(c, |b, rates| b.charge_reads(rates, messages));
        }
    }
}
