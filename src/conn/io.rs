//! Where a connection's bytes go and come from: a TCP socket, or a `MemorySink` that benches
//! and unit tests drive the real shard path through.
//!
//! Owns the system calls (one `sendmsg` per write, one `recv` per read event). It must not
//! decide what to write or interpret what is read.

use std::cell::{Cell, RefCell};
use std::io::{self, IoSlice, Read};

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Where a connection's bytes go: a TCP socket, or memory (benchmarks and unit tests drive the
/// shard's real fan-out and coalescing path through it).
pub(super) enum Io {
    Tcp(TcpStream),
    Memory(Box<MemorySink>),
}

/// Counts what a connection would have written, and keeps the bytes if asked to.
#[derive(Default)]
pub struct MemorySink {
    pub writes: Cell<usize>,
    pub bytes: Cell<usize>,
    pub kept: Option<RefCell<Vec<u8>>>,
    /// Test-only: the next write panics (a bug inside a flush).
    #[cfg(test)]
    pub panic_next: Cell<bool>,
}

impl MemorySink {
    /// A copy of the bytes written, for a sink made with `kept`.
    pub fn written(&self) -> Vec<u8> {
        self.kept
            .as_ref()
            .map(|k| k.borrow().clone())
            .unwrap_or_default()
    }

    fn write_vectored(&self, iov: &[IoSlice<'_>]) -> usize {
        #[cfg(test)]
        if self.panic_next.replace(false) {
            panic!("injected: a write panics");
        }
        let n: usize = iov.iter().map(|s| s.len()).sum();
        self.writes.set(self.writes.get() + 1);
        self.bytes.set(self.bytes.get() + n);
        if let Some(kept) = &self.kept {
            let mut kept = kept.borrow_mut();
            iov.iter().for_each(|s| kept.extend_from_slice(s));
        }
        n
    }
}

impl Io {
    /// `sendmsg`, not `writev`: the socket call skips the VFS layer (~5% of a loopback write).
    pub(super) fn try_write_vectored(&self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => s.try_io(Interest::WRITABLE, || SockRef::from(s).send_vectored(iov)),
            Io::Memory(m) => Ok(m.write_vectored(iov)),
        }
    }

    /// Reads once. A short read means the socket is drained, so it also clears tokio's
    /// readiness: the task then sleeps until new data instead of making a second `recv` only to
    /// be told `WouldBlock`. (tokio clears readiness only if no new event arrived meanwhile.)
    pub(super) fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Tcp(s) => {
                let mut got = 0;
                let r = s.try_io(Interest::READABLE, || {
                    got = (&*SockRef::from(s)).read(buf)?;
                    if got > 0 && got < buf.len() {
                        Err(io::ErrorKind::WouldBlock.into())
                    } else {
                        Ok(got)
                    }
                });
                match r {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
                    r => r,
                }
            }
            Io::Memory(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}
