//! The socket while hyper serves HTTP on it (`HandshakeIo`), and the shard's tallies of
//! connections in their HTTP phase: handshake slots (`max_handshakes`) and idle keep-alive
//! connections (`max_keepalive_connections`).

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::thread::LocalKey;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::config::Config;

thread_local! {
    /// This shard's handshake slots in use (`max_handshakes`). Each shard is one thread, so a
    /// thread-local is a per-shard count with no atomics.
    static IN_HTTP: Cell<usize> = const { Cell::new(0) };
    /// This shard's idle keep-alive connections (`max_keepalive_connections`).
    static IDLE_HTTP: Cell<usize> = const { Cell::new(0) };
}

/// One connection counted in one of this shard's tallies (`IN_HTTP` or `IDLE_HTTP`) until
/// dropped.
pub struct HttpSlot(&'static LocalKey<Cell<usize>>);

impl HttpSlot {
    /// Takes a handshake slot, whether or not the shard is full: the caller has checked, holds
    /// a slot it is about to give back, or is a connection already let in.
    pub fn take() -> Self {
        HttpSlot::count(&IN_HTTP)
    }

    /// Counts an idle keep-alive connection; the caller has checked the cap.
    fn idle() -> Self {
        HttpSlot::count(&IDLE_HTTP)
    }

    fn count(tally: &'static LocalKey<Cell<usize>>) -> Self {
        tally.set(tally.get() + 1);
        HttpSlot(tally)
    }
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Whether this shard is at `max_handshakes`: its accept loop then waits, leaving new
/// connections in the listen backlog rather than closing them.
pub fn handshakes_full(config: &Config) -> bool {
    IN_HTTP.get() >= config.max_handshakes
}

/// Whether this shard is at `max_keepalive_connections` (`max`): responses then say
/// `Connection: close`.
pub fn keepalive_full(max: usize) -> bool {
    IDLE_HTTP.get() >= max
}

/// The TCP stream while hyper serves HTTP on it. A `101 Switching Protocols` response is held
/// back instead of written: whoever takes the stream after the upgrade sends it, so for `/ws`
/// it leaves in the same write as `welcome` (a `sendmsg` and a TCP segment fewer for every
/// connection). Every other response is written as it comes.
///
/// It also keeps the connection's place in the shard's counts, from what hyper reads and
/// writes: a handshake slot from the first byte of a request (or the accept) until its response
/// has been written, then an idle keep-alive slot until the next request's first byte. hyper
/// calls `poll_flush` with its buffer empty only, so a flush after response bytes means the
/// response is out (every response body is one `Full` chunk, written with its head).
pub struct HandshakeIo {
    stream: TcpStream,
    /// The 101 and anything hyper wrote after it (nothing, in practice).
    held: Vec<u8>,
    phase: Phase,
    /// Response bytes were written since the last flush.
    answering: bool,
    limits: Limits,
    /// While idle: when the keep-alive ends. While busy and a write is blocked: when that
    /// write gives up.
    timer: Option<Pin<Box<Sleep>>>,
}

/// Where a connection is between requests. The slots are held for their `Drop`.
#[allow(dead_code)]
enum Phase {
    /// Reading a request or writing its response: holds a handshake slot.
    Busy(HttpSlot),
    /// Between requests: holds a keep-alive slot.
    Idle(HttpSlot),
    /// Answered while the shard had its fill of idle connections: reads end (EOF), so hyper
    /// closes it.
    Closing,
}

/// `HandshakeIo`'s part of the config.
#[derive(Clone, Copy)]
struct Limits {
    max_idle: usize,
    idle: Duration,
    stall: Duration,
}

impl HandshakeIo {
    /// The stream and the held 101 (empty if none was written), once hyper lets go.
    pub fn into_parts(self) -> (TcpStream, Vec<u8>) {
        (self.stream, self.held)
    }

    /// `slot` is the handshake slot the accept took.
    pub fn new(stream: TcpStream, slot: HttpSlot, config: &Config) -> HandshakeIo {
        HandshakeIo {
            stream,
            held: Vec::new(),
            phase: Phase::Busy(slot),
            answering: false,
            limits: Limits {
                max_idle: config.max_keepalive_connections,
                idle: Duration::from_millis(config.keepalive_timeout_ms),
                stall: Duration::from_millis(config.handshake_timeout_ms),
            },
            timer: None,
        }
    }

    /// Whether a write that starts with `first` is held.
    fn holds(&self, first: &[u8]) -> bool {
        !self.held.is_empty() || first.starts_with(b"HTTP/1.1 101 ")
    }

    /// A request starts (its first byte, or a pipelined one's response): the connection takes
    /// a handshake slot again, even at the cap, since it was let in already; the accept loop
    /// waits for the count to fall back.
    fn busy(&mut self) {
        if !matches!(self.phase, Phase::Busy(_)) {
            self.timer = None;
            self.phase = Phase::Busy(HttpSlot::take());
        }
    }

    /// A response is out: the handshake slot is given back, and the connection idles for its
    /// next request, or closes if the shard keeps as many idle connections as it may.
    fn answered(&mut self) {
        self.phase = Phase::Closing;
        self.timer = None;
        // The same test `handle` made for `Connection: close`; a response that raced past it
        // closes here.
        if IDLE_HTTP.get() < self.limits.max_idle {
            self.phase = Phase::Idle(HttpSlot::idle());
            self.timer = Some(Box::pin(tokio::time::sleep(self.limits.idle)));
        }
    }

    /// Whether `timer` is set and has fired (registering `cx` if not).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }

    /// Accounts for a write of `first` and the bytes after it; a write that stays blocked
    /// for `stall` fails, so a client that does not read cannot keep its slot.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        first: &[u8],
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                // `100 Continue` is not the answer: the request's body comes after it.
                self.answering |= !first.starts_with(b"HTTP/1.1 1");
                self.timer = None;
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let stall = self.limits.stall;
                self.timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(stall)));
                if self.expired(cx) {
                    let why = "the client did not read its response";
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncRead for HandshakeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Phase::Closing = this.phase {
            // EOF between requests: hyper ends the connection quietly.
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Phase::Idle(_) = this.phase {
            match read {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.busy(),
                Poll::Pending if this.expired(cx) => {
                    this.phase = Phase::Closing;
                    return Poll::Ready(Ok(()));
                }
                _ => {}
            }
        }
        read
    }
}

impl tokio::io::AsyncWrite for HandshakeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.holds(buf) {
            this.held.extend_from_slice(buf);
            return Poll::Ready(Ok(buf.len()));
        }
        this.busy();
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.wrote(cx, buf, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.first().map_or(&[][..], |b| &b[..]);
        if this.holds(first) {
            bufs.iter().for_each(|b| this.held.extend_from_slice(b));
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        this.busy();
        let result = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.wrote(cx, first, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(Pin::new(&mut this.stream).poll_flush(cx))?;
        if std::mem::take(&mut this.answering) {
            this.answered();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{HandshakeIo, HttpSlot};
    use crate::config::Config;

    #[tokio::test]
    async fn a_101_is_held_and_other_responses_are_written() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (mut client, (server, _)) = tokio::try_join!(client, listener.accept()).unwrap();
        let mut io = HandshakeIo::new(server, HttpSlot::take(), &Config::default());

        io.write_all(b"HTTP/1.1 200 OK\r\n\r\nfirst").await.unwrap();
        io.flush().await.unwrap();
        let mut got = [0u8; 24];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"HTTP/1.1 200 OK\r\n\r\nfirst");

        let switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
        io.write_all(switching).await.unwrap();
        io.flush().await.unwrap();
        assert_eq!(io.held, switching, "the 101 is held for its taker");
        // Nothing reached the client: closing the server side gives it EOF at once.
        drop(io);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the 101 was written: {rest:?}");
    }
}
