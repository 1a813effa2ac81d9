//! A plain TCP connection to one Redis server that we read ourselves (`resp`), shared by the
//! subscription connection (`pubsub`) and the publish scripts' connection (`calls`): opening it
//! (AUTH, CLIENT SETNAME, within `redis_timeout_ms`), writing what others queued (every
//! command of a scheduler pass in one write), and reading into one buffer. Owns the socket and
//! its buffers only; it must not know what a command or a reply means.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use redis::{ErrorKind, RedisError, RedisResult};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::resp::{self, Answer, Reader};

/// Where and as whom to connect: a plain `redis://` URL's parts.
#[derive(Clone, Debug)]
pub struct Plain {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// Commands waiting to be written; the side of the connection others hold.
#[derive(Default)]
pub struct Queue {
    out: RefCell<BytesMut>,
    wake: Notify,
    closed: Cell<bool>,
}

impl Queue {
    /// Appends a command (`resp::command`) and wakes the writer.
    pub fn command(&self, args: &[&[u8]]) {
        resp::command(&mut self.out.borrow_mut(), args);
        self.wake.notify_one();
    }

    /// Appends what `write` writes (a command already encoded) and wakes the writer.
    pub fn write(&self, write: impl FnOnce(&mut BytesMut)) {
        write(&mut self.out.borrow_mut());
        self.wake.notify_one();
    }

    /// Ends the connection: its reader's next `ready` fails.
    pub fn close(&self) {
        self.closed.set(true);
        self.wake.notify_one();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }
}

/// The connection, owned by the task that reads it.
pub struct Socket {
    stream: TcpStream,
    pub reader: Reader,
    queue: Rc<Queue>,
}

impl Socket {
    /// Connects, authenticates and names the connection, all within `timeout`.
    pub async fn connect(to: &Plain, name: &str, timeout: Duration) -> RedisResult<Socket> {
        let timed_out = || RedisError::from((ErrorKind::Io, "Redis did not answer in time"));
        tokio::time::timeout(timeout, Self::open(to, name))
            .await
            .map_err(|_| timed_out())?
    }

    async fn open(to: &Plain, name: &str) -> RedisResult<Socket> {
        let stream = TcpStream::connect((to.host.as_str(), to.port)).await?;
        stream.set_nodelay(true)?;
        let mut sock = Socket {
            stream,
            reader: Reader::default(),
            queue: Rc::default(),
        };
        let mut hello: Vec<Vec<&[u8]>> = Vec::new();
        if let Some(pw) = &to.password {
            let mut auth: Vec<&[u8]> = vec![b"AUTH"];
            auth.extend(to.username.as_deref().map(str::as_bytes));
            auth.push(pw.as_bytes());
            hello.push(auth);
        }
        hello.push(vec![b"CLIENT", b"SETNAME", name.as_bytes()]);
        for cmd in &hello {
            sock.queue.command(cmd);
        }
        let mut answered = 0;
        while answered < hello.len() {
            sock.ready().await?;
            while let Some(reply) = sock.reader.answer().map_err(broken)? {
                if let Answer::Error(e) = reply {
                    let detail = String::from_utf8_lossy(&e).into_owned();
                    let kind = if answered == 0 && to.password.is_some() {
                        ErrorKind::AuthenticationFailed
                    } else {
                        ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    };
                    return Err((kind, "refused by Redis", detail).into());
                }
                answered += 1;
            }
        }
        Ok(sock)
    }

    pub fn queue(&self) -> Rc<Queue> {
        self.queue.clone()
    }

    /// Waits for the next read and takes it in (writing queued commands meanwhile). Cancel
    /// safe: it only waits for readiness, then reads or writes without waiting. An error: the
    /// connection is gone (or was closed through its queue).
    pub async fn ready(&mut self) -> io::Result<()> {
        loop {
            if self.queue.is_closed() {
                return Err(io::Error::other("closed"));
            }
            let pending = !self.queue.out.borrow().is_empty();
            tokio::select! {
                r = self.stream.readable() => {
                    r?;
                    match self.read() {
                        Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                        Ok(_) => return Ok(()),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                w = self.stream.writable(), if pending => {
                    w?;
                    self.flush()?;
                }
                _ = self.queue.wake.notified() => {}
            }
        }
    }

    /// One read. A short one left the socket empty: its readiness is cleared at once, which
    /// saves the `recvfrom` that would only say `EAGAIN` (one per message at low rates).
    fn read(&mut self) -> io::Result<usize> {
        let (stream, buf) = (&self.stream, self.reader.spare());
        let room = buf.capacity() - buf.len();
        let mut got = None;
        let r = stream.try_io(Interest::READABLE, || {
            let n = stream.try_read_buf(buf)?;
            got = Some(n);
            match n {
                // Readiness is cleared only if no new data came meanwhile (tokio's tick).
                n if n > 0 && n < room => Err(io::ErrorKind::WouldBlock.into()),
                n => Ok(n),
            }
        });
        match (r, got) {
            (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            (r, _) => r,
        }
    }

    fn flush(&self) -> io::Result<()> {
        let mut out = self.queue.out.borrow_mut();
        while !out.is_empty() {
            match self.stream.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Drop for Socket {
    /// Whoever queues on it afterwards learns it is gone.
    fn drop(&mut self) {
        self.queue.closed.set(true);
    }
}

pub fn broken(e: resp::RespError) -> RedisError {
    (ErrorKind::Io, "unreadable reply", e.to_string()).into()
}
