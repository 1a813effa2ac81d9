//! A TCP proxy for fault tests: it forwards to a target (a server, a Redis) and can refuse new
//! connections, or freeze, mute or cut exactly one open connection, found by the local port of its
//! upstream socket (what a Redis shows as `addr=` in `CLIENT LIST`).
//!
//! It knows nothing of the protocols it carries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One proxied connection: its upstream socket's local port (what Redis sees as `addr=`).
struct Link {
    upstream_port: u16,
    /// Holds what the client sends.
    frozen: watch::Sender<bool>,
    /// Holds what the target answers.
    muted: watch::Sender<bool>,
    task: tokio::task::AbortHandle,
}

/// A TCP proxy from a loopback port to `target`. Each accepted connection gets its own
/// upstream connection; [`Proxy::freeze`] stops one forwarding both ways with both sockets
/// left open (a silent peer), [`Proxy::cut`] closes both sockets, and while
/// [`Proxy::refuse`] is on new connections are closed at once.
pub struct Proxy {
    addr: SocketAddr,
    refuse: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<Link>>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let refuse = Arc::new(AtomicBool::new(false));
        let links: Arc<Mutex<Vec<Link>>> = Arc::default();
        let tasks: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let (r, l, t) = (refuse.clone(), links.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if r.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees a failed connection
                }
                // Target down: the client sees its connection closed, as it would directly.
                let Ok(upstream) = TcpStream::connect(target).await else {
                    continue;
                };
                let upstream_port = upstream.local_addr().unwrap().port();
                let (frozen, requests) = watch::channel(false);
                let (muted, replies) = watch::channel(false);
                let task = (t.lock().unwrap()).spawn(forward(client, upstream, requests, replies));
                l.lock().unwrap().push(Link {
                    upstream_port,
                    frozen,
                    muted,
                    task,
                });
            }
        });
        Proxy {
            addr,
            refuse,
            links,
            tasks,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// While `on`, new connections are closed as soon as accepted.
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, Ordering::SeqCst);
    }

    /// The upstream local ports of the connections made so far, oldest first.
    pub fn upstream_ports(&self) -> Vec<u16> {
        let links = self.links.lock().unwrap();
        links.iter().map(|l| l.upstream_port).collect()
    }

    fn with_link(&self, upstream_port: u16, f: impl FnOnce(&Link)) {
        let links = self.links.lock().unwrap();
        let link = links
            .iter()
            .find(|l| l.upstream_port == upstream_port)
            .unwrap_or_else(|| panic!("the proxy has no connection from port {upstream_port}"));
        f(link);
    }

    /// Stops forwarding on the connection whose upstream local port is `upstream_port`, both
    /// ways; its sockets stay open.
    pub fn freeze(&self, upstream_port: u16) {
        self.with_link(upstream_port, |l| {
            l.frozen.send_replace(true);
            l.muted.send_replace(true);
        });
    }

    /// Stops forwarding the target's answers on that connection; what the client sends still
    /// reaches the target (a request carried out whose reply is lost).
    pub fn mute(&self, upstream_port: u16) {
        self.with_link(upstream_port, |l| {
            l.muted.send_replace(true);
        });
    }

    /// Closes both sockets of the connection whose upstream local port is `upstream_port`.
    pub fn cut(&self, upstream_port: u16) {
        self.with_link(upstream_port, |l| l.task.abort());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.tasks.lock().unwrap().abort_all();
    }
}

/// Copies both ways until either side closes; while `requests` (or `replies`) holds, bytes
/// read from the client (or the target) are held back (and TCP backpressure stops the peer),
/// nothing is written.
async fn forward(
    client: TcpStream,
    upstream: TcpStream,
    requests: watch::Receiver<bool>,
    replies: watch::Receiver<bool>,
) {
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    tokio::select! {
        _ = pipe(cr, uw, requests) => {}
        _ = pipe(ur, cw, replies) => {}
    }
}

async fn pipe(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
