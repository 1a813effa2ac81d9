//! [`TestServer`]: a real shardcast server started in the test's own process, and the config
//! tweaks the tests start it with ([`fast`], [`small_queue`]).

use std::net::SocketAddr;
use std::path::Path;

use shardcast::config::Config;
use shardcast::server::Server;
use tempfile::TempDir;

/// A shardcast server started in this process for one test. Dropping it shuts it down.
pub struct TestServer {
    server: Option<Server>,
    addr: SocketAddr,
    /// The temp dir behind `data`, when the server made its own (see [`TestServer::start_in`]).
    _data: Option<TempDir>,
}

impl TestServer {
    /// Starts a server with the documented defaults, changed by `tweak`. The bind address is
    /// always `127.0.0.1:0` and `data` a fresh temp dir, whatever `tweak` sets.
    pub fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data = tempfile::tempdir().expect("create a temp dir for the server's data");
        let mut server = TestServer::start_in(data.path(), tweak);
        server._data = Some(data);
        server
    }

    /// [`TestServer::start`] with `data` at `dir`, which the caller keeps: a test restarts a
    /// server on the same data by calling this again once the first one has been joined.
    pub fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_at(dir, "127.0.0.1:0".parse().unwrap(), tweak)
    }

    /// [`TestServer::start_in`] bound to `bind`.
    fn start_at(dir: &Path, bind: SocketAddr, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = Config::default();
        tweak(&mut config);
        config.bind = bind;
        config.data = dir.to_path_buf();
        let server = tokio::task::block_in_place(|| Server::start(config))
            .unwrap_or_else(|e| panic!("the server failed to start: {e}"));
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback(), "server bound {addr}, not loopback");
        assert_ne!(addr.port(), 0, "server reports port 0 after binding");
        TestServer {
            server: Some(server),
            addr,
            _data: None,
        }
    }

    /// Shuts this server down (connections get 1001) and starts it again on the same port and
    /// data, with `tweak` applied to the defaults: what clients see of a restart.
    pub fn restart(mut self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let data = self
            ._data
            .take()
            .expect("restart needs a server started by `start`");
        let addr = self.addr;
        self.shutdown();
        self.join();
        let mut server = TestServer::start_at(data.path(), addr, tweak);
        server._data = Some(data);
        server
    }

    /// A server with every default.
    pub fn default_config() -> TestServer {
        TestServer::start(|_| {})
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics listener's address, when `metrics_bind` was set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().and_then(Server::metrics_addr)
    }

    /// Starts graceful shutdown (returns at once).
    pub fn shutdown(&mut self) {
        self.server
            .as_mut()
            .expect("server already joined")
            .shutdown();
    }

    /// Makes shard `shard` panic in a home's handler (the `fault-injection` feature).
    pub fn inject_panic(&self, shard: usize) {
        self.server
            .as_ref()
            .expect("server already joined")
            .inject_panic(shard);
    }

    /// Makes the store's next inbox or range read fail (the `fault-injection` feature).
    pub fn inject_read_failure(&self) {
        self.server
            .as_ref()
            .expect("server already joined")
            .inject_read_failure();
    }

    /// Makes the store writer's readings of the free disk space give `free` (`None`: what the
    /// filesystem says) from its next one on, within a second (the `fault-injection` feature).
    pub fn inject_disk_free(&self, free: Option<u64>) {
        self.server
            .as_ref()
            .expect("server already joined")
            .inject_disk_free(free);
    }

    /// Blocks until every server thread has exited.
    pub fn join(mut self) {
        let server = self.server.take().expect("server already joined");
        tokio::task::block_in_place(move || { server }.join());
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            tokio::task::block_in_place(move || drop(server));
        }
    }
}

/// The `max_queue_bytes` of [`small_queue`].
pub const SMALL_QUEUE: usize = 64 * 1024;

/// [`fast`], with a queue of [`SMALL_QUEUE`] bytes and messages up to 4 KiB: a few dozen
/// [`padded`](super::padded) messages fill half the queue.
pub fn small_queue(c: &mut Config) {
    fast(c);
    c.max_message_size = 4096;
    c.max_queue_bytes = SMALL_QUEUE;
}

/// No presence events (they would interleave with messages), and a publish rate and a budget
/// of stored bytes no test reaches.
pub fn fast(c: &mut Config) {
    c.presence_events = false;
    c.publish_rate = 1_000_000;
    c.publish_burst = 1_000_000;
    c.user_store_rate_bytes = 0;
}
