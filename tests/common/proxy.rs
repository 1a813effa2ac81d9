//! A TCP proxy for fault tests: it forwards to a target (a server, a Redis) and can refuse new
//! connections, or freeze or cut exactly one open connection, found by the local port of its
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
    frozen: watch::Sender<bool>,
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
                let (frozen, rx) = watch::channel(false);
                let task = t.lock().unwrap().spawn(forward(client, upstream, rx));
                l.lock().unwrap().push(Link {
                    upstream_port,
                    frozen,
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

/// Copies both ways until either side closes; while `frozen` holds, bytes read are held back
/// (and TCP backpressure stops the peers), nothing is written.
async fn forward(client: TcpStream, upstream: TcpStream, frozen: watch::Receiver<bool>) {
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    tokio::select! {
        _ = pipe(cr, uw, frozen.clone()) => {}
        _ = pipe(ur, cw, frozen) => {}
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
