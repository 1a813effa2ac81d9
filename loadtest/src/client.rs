//! One bot client on the wire: TCP connect from a chosen 127.0.0.x, the WebSocket handshake,
//! frame reads and writes, the client frames the bot sends, and cheap extraction of what it needs
//! from server frames.
//!
//! Owns the byte formats the bot speaks, including the body it publishes (scheduled send time,
//! publisher, counter, padding). It must not keep delivery statistics or decide what to send
//! when: that is `scenario`'s and `stats`' job.
//!
//! Why fastwebsockets and not tokio-tungstenite: at the fanout target the bot reads ~200,000
//! frames/s on one core. fastwebsockets' read half parses frames straight out of one reusable
//! `BytesMut` (a whole socket read of many frames, then one `split_to` per frame, no copy and no
//! per-frame allocation), and writes mask in place in the caller's buffer. tungstenite allocates a
//! `Vec`/`Bytes` per message and goes through a `Sink`/`Stream` layer with its own buffering. Its
//! HTTP handshake needs hyper, so the bot does the small client handshake itself (below), which
//! also keeps the `TcpStream` concrete so it can be split into owned halves: a connection's reader
//! task and its publisher task then run independently, which matters because fastwebsockets'
//! `read_frame` is not cancel-safe and so cannot sit in a `select!` next to a send timer.

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use fastwebsockets::{Frame, Payload, Role, WebSocketError, WebSocketRead, WebSocketWrite};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha1::{Digest, Sha1};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub type WsRead = WebSocketRead<OwnedReadHalf>;
pub type WsWrite = WebSocketWrite<OwnedWriteHalf>;
/// The write half, shared by a connection's reader (for pongs and the close reply) and its
/// publisher. The lock is uncontended almost always.
pub type SharedWriter = Arc<tokio::sync::Mutex<WsWrite>>;

/// The largest server frame the bot accepts.
const MAX_FRAME: usize = 16 << 20;
/// How long a TCP connect plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the server is: `ws://127.x.y.z:PORT[/path]`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub path: String,
}

impl Endpoint {
    /// Parses a `ws://` URL. Only IPv4 loopback hosts (127.0.0.0/8, or `localhost`) are accepted:
    /// the bot never sends load anywhere else.
    pub fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("--url must start with ws:// (got {url:?})"))?;
        let (hostport, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let addr = loopback_addr(hostport, "--url", url)?;
        let path = path.split('?').next().unwrap_or("");
        let path = if path.is_empty() || path == "/" {
            "/ws"
        } else {
            path
        };
        Ok(Endpoint {
            addr,
            path: path.to_string(),
        })
    }

    pub fn from_addr(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            path: "/ws".to_string(),
        }
    }
}

/// Parses the `host:port` of `flag`'s `url`; the host must be an IPv4 loopback address or
/// `localhost`: the bot never sends load, or reads counters, anywhere else.
pub fn loopback_addr(hostport: &str, flag: &str, url: &str) -> anyhow::Result<SocketAddr> {
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{flag} needs an explicit port (got {url:?})"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("bad port in {flag} {url:?}"))?;
    let ip: Ipv4Addr = if host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        host.parse()
            .with_context(|| format!("{flag} host must be an IPv4 address (got {host:?})"))?
    };
    if !ip.is_loopback() {
        bail!("{flag} host {ip} is not loopback: the bot only targets 127.0.0.0/8");
    }
    Ok(SocketAddr::V4(SocketAddrV4::new(ip, port)))
}

/// The source address for client number `i`: 127.0.0.1 … 127.0.0.`spread`, round robin, so the
/// ephemeral ports of one source address never run out.
pub fn source_ip(i: usize, spread: u8) -> Ipv4Addr {
    let spread = spread.max(1) as usize;
    Ipv4Addr::new(127, 0, 0, 1 + (i % spread) as u8)
}

/// An open WebSocket connection: the read half (owned by one task) and the shared write half.
pub struct Ws {
    pub read: WsRead,
    pub write: SharedWriter,
}

impl Ws {
    /// Connects from `src` to `ep` as dev-mode user `user`, and completes the handshake.
    pub async fn connect(ep: &Endpoint, src: Ipv4Addr, user: &str) -> anyhow::Result<Ws> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(ep, src, user))
            .await
            .map_err(|_| anyhow!("connect + handshake took over {CONNECT_TIMEOUT:?}"))?
    }

    async fn connect_inner(ep: &Endpoint, src: Ipv4Addr, user: &str) -> anyhow::Result<Ws> {
        let socket = tokio::net::TcpSocket::new_v4().context("socket")?;
        // Let connect() pick the port for the full 4-tuple instead of bind() reserving one per
        // source address: that is what makes one source address good for ~28k connections to the
        // server, and lets TIME_WAIT ports be reused.
        set_bind_address_no_port(&socket);
        socket
            .bind(SocketAddr::V4(SocketAddrV4::new(src, 0)))
            .with_context(|| format!("bind {src}"))?;
        let mut stream = socket
            .connect(ep.addr)
            .await
            .with_context(|| format!("connect {src} -> {}", ep.addr))?;
        stream.set_nodelay(true).context("TCP_NODELAY")?;
        handshake(&mut stream, ep, user).await?;
        let (r, w) = stream.into_split();
        let (mut read, write) = fastwebsockets::after_handshake_split(r, w, Role::Client);
        read.set_max_message_size(MAX_FRAME);
        Ok(Ws {
            read,
            write: Arc::new(tokio::sync::Mutex::new(write)),
        })
    }

    /// Reads the next data or close frame. Pings are answered with pongs on the way.
    pub async fn recv(&mut self) -> Result<Frame<'_>, WebSocketError> {
        let write = &self.write;
        self.read
            .read_frame(&mut |frame: Frame<'static>| {
                let write = write.clone();
                async move { write.lock().await.write_frame(frame).await }
            })
            .await
    }
}

/// Writes one text frame whose payload is `payload` (masked in place, so it is scrambled after).
pub async fn send_text(write: &SharedWriter, payload: &mut [u8]) -> Result<(), WebSocketError> {
    write
        .lock()
        .await
        .write_frame(Frame::text(Payload::BorrowedMut(payload)))
        .await
}

/// Starts the closing handshake with 1000.
pub async fn send_close(write: &SharedWriter) -> Result<(), WebSocketError> {
    write
        .lock()
        .await
        .write_frame(Frame::close(1000, b""))
        .await
}

#[cfg(target_os = "linux")]
fn set_bind_address_no_port(socket: &tokio::net::TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a socket we own; failure only loses the optimisation.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn set_bind_address_no_port(_socket: &tokio::net::TcpSocket) {}

const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The RFC 6455 client handshake. The response is consumed exactly up to its blank line (found
/// with `peek`), so a frame the server sends right behind the 101 stays in the socket for the
/// WebSocket reader.
async fn handshake(stream: &mut TcpStream, ep: &Endpoint, user: &str) -> anyhow::Result<()> {
    let key_bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.encode(key_bytes);
    let request = format!(
        "GET {}?user={user} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        ep.path, ep.addr
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("send handshake")?;

    let mut buf = [0u8; 4096];
    let head_len = loop {
        let n = stream.peek(&mut buf).await.context("read handshake")?;
        if n == 0 {
            bail!("server closed the connection during the handshake");
        }
        if let Some(i) = find(&buf[..n], b"\r\n\r\n") {
            break i + 4;
        }
        if n == buf.len() {
            bail!("handshake response headers over {} bytes", buf.len());
        }
        // Only part of the response has arrived; give the rest a moment.
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let mut head = vec![0u8; head_len];
    stream
        .read_exact(&mut head)
        .await
        .context("read handshake")?;
    let head = String::from_utf8_lossy(&head);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    if status_line.split_ascii_whitespace().nth(1) != Some("101") {
        // A refusal carries a small JSON body; show it if it is already here.
        let mut body = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut body))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        bail!(
            "handshake refused: {status_line} {}",
            String::from_utf8_lossy(&body[..n]).trim()
        );
    }
    let accept = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|(_, v)| v.trim().to_string())
        .ok_or_else(|| anyhow!("101 response without Sec-WebSocket-Accept"))?;
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    if accept != b64.encode(sha.finalize()) {
        bail!("wrong Sec-WebSocket-Accept {accept:?}");
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Server frames
// ---------------------------------------------------------------------------------------------

/// The fields of a server frame the bot looks at, borrowed from the frame's bytes: no `Value`
/// tree and no allocation per message. Other fields (`from`, `ts`, `room`, `to`, …) are skipped.
#[derive(Deserialize)]
pub struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    #[serde(default)]
    pub id: Option<u64>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default, borrow)]
    pub body: Option<&'a RawValue>,
    #[serde(default, borrow)]
    pub code: Option<&'a str>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    /// A join with `since`: whether every missed message was still retained, how many were
    /// replayed, and whether the replay was cut short.
    #[serde(default)]
    pub recovered: Option<bool>,
    #[serde(default)]
    pub replayed: Option<u64>,
    #[serde(default)]
    pub truncated: Option<bool>,
}

impl<'a> ServerFrame<'a> {
    pub fn parse(bytes: &'a [u8]) -> serde_json::Result<ServerFrame<'a>> {
        serde_json::from_slice(bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// The body the bot publishes
// ---------------------------------------------------------------------------------------------

/// What a bot message's body carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyStamp {
    /// The send time it was scheduled for (open loop) or sent at (closed loop), in nanoseconds
    /// since the run's epoch (monotonic).
    pub sched_ns: u64,
    /// The publishing connection's index in the run.
    pub publisher: u32,
    /// The publisher's message counter, from 0.
    pub counter: u64,
}

/// Appends the body: a JSON string `"SCHED,PUB,COUNTER,xxxx…"` padded with `x` to `size` bytes
/// (quotes included) when `size` is larger than the stamp itself.
pub fn encode_body(out: &mut Vec<u8>, stamp: BodyStamp, size: usize) {
    let start = out.len();
    let mut itoa = itoa::Buffer::new();
    out.push(b'"');
    out.extend_from_slice(itoa.format(stamp.sched_ns).as_bytes());
    out.push(b',');
    out.extend_from_slice(itoa.format(stamp.publisher).as_bytes());
    out.push(b',');
    out.extend_from_slice(itoa.format(stamp.counter).as_bytes());
    out.push(b',');
    let used = out.len() - start + 1;
    if size > used {
        out.resize(out.len() + (size - used), b'x');
    }
    out.push(b'"');
}

/// Reads a body written by [`encode_body`], given its raw JSON text.
pub fn decode_body(raw: &str) -> Option<BodyStamp> {
    let inner = raw.as_bytes().strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    let (sched_ns, rest) = digits(inner)?;
    let (publisher, rest) = digits(rest.strip_prefix(b",")?)?;
    let (counter, rest) = digits(rest.strip_prefix(b",")?)?;
    rest.strip_prefix(b",")?;
    Some(BodyStamp {
        sched_ns,
        publisher: u32::try_from(publisher).ok()?,
        counter,
    })
}

/// A non-empty run of ASCII digits at the start of `b` (at most 19, so it fits a u64), and what
/// follows it.
fn digits(b: &[u8]) -> Option<(u64, &[u8])> {
    let n = b.iter().take(20).take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || n > 19 {
        return None;
    }
    let v = b[..n]
        .iter()
        .fold(0u64, |v, &c| v * 10 + u64::from(c - b'0'));
    Some((v, &b[n..]))
}

/// `"NAME"` followed by `next`: a room or user name (never escaped: names are
/// `[A-Za-z0-9_.:@-]`). Returns what follows `next`.
fn skip_name<'a>(b: &'a [u8], next: &[u8]) -> Option<&'a [u8]> {
    let b = b.strip_prefix(b"\"")?;
    let end = memchr_quote(b)?;
    b[end + 1..].strip_prefix(next)
}

fn memchr_quote(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'"')
}

/// The fast path for the frame the bot receives most: a room or direct message in the exact
/// layout the protocol documents, `{"type":"message","room":R|"to":U,"from":F,"seq":N,"ts":T,
/// "body":B}`, with a bot body. Anything else returns `None` and goes through serde
/// ([`ServerFrame`]), which accepts any field order.
pub fn parse_message_fast(frame: &[u8]) -> Option<(u64, BodyStamp)> {
    let rest = frame.strip_prefix(br#"{"type":"message","#)?;
    let rest = match rest.strip_prefix(br#""room":"#) {
        Some(r) => r,
        None => rest.strip_prefix(br#""to":"#)?,
    };
    let rest = skip_name(rest, b",")?;
    let rest = skip_name(rest.strip_prefix(br#""from":"#)?, br#","seq":"#)?;
    let (seq, rest) = digits(rest)?;
    let (_ts, rest) = digits(rest.strip_prefix(br#","ts":"#)?)?;
    let body = rest.strip_prefix(br#","body":"#)?.strip_suffix(b"}")?;
    // The body is the bot's own ASCII string; decode_body rejects anything else.
    let stamp = decode_body(std::str::from_utf8(body).ok()?)?;
    Some((seq, stamp))
}

// ---------------------------------------------------------------------------------------------
// Client frames
// ---------------------------------------------------------------------------------------------

/// Where a publisher's messages go.
#[derive(Clone, Debug)]
pub enum Dest {
    /// `publish` to a room.
    Room(Arc<str>),
    /// `send` to a user.
    User(Arc<str>),
}

/// A reusable buffer for client frames, so sending costs no allocation.
#[derive(Default)]
pub struct RequestBuf {
    buf: Vec<u8>,
}

impl RequestBuf {
    /// `{"type":"join","room":R,"id":ID}`.
    pub fn join(&mut self, room: &str, id: u64) -> &mut [u8] {
        self.join_since(room, None, id)
    }

    /// `{"type":"join","room":R,"since":S,"id":ID}`, without `since` when it is `None`.
    pub fn join_since(&mut self, room: &str, since: Option<u64>, id: u64) -> &mut [u8] {
        self.buf.clear();
        self.buf.extend_from_slice(br#"{"type":"join","room":""#);
        self.buf.extend_from_slice(room.as_bytes());
        self.buf.push(b'"');
        if let Some(since) = since {
            self.buf.extend_from_slice(br#","since":"#);
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(since).as_bytes());
        }
        self.buf.extend_from_slice(br#","id":"#);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        self.buf.push(b'}');
        &mut self.buf
    }

    /// `{"type":"publish","room":R,"id":ID,"body":B}` or `{"type":"send","to":U,"id":ID,"body":B}`.
    pub fn message(
        &mut self,
        dest: &Dest,
        id: u64,
        stamp: BodyStamp,
        body_size: usize,
    ) -> &mut [u8] {
        self.buf.clear();
        match dest {
            Dest::Room(room) => {
                self.buf.extend_from_slice(br#"{"type":"publish","room":""#);
                self.buf.extend_from_slice(room.as_bytes());
            }
            Dest::User(user) => {
                self.buf.extend_from_slice(br#"{"type":"send","to":""#);
                self.buf.extend_from_slice(user.as_bytes());
            }
        }
        self.buf.extend_from_slice(br#"","id":"#);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        self.buf.extend_from_slice(br#","body":"#);
        encode_body(&mut self.buf, stamp, body_size);
        self.buf.push(b'}');
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trip_and_size() {
        let stamp = BodyStamp {
            sched_ns: 12_345_678_901,
            publisher: 7,
            counter: 42,
        };
        let mut out = Vec::new();
        encode_body(&mut out, stamp, 64);
        assert_eq!(out.len(), 64);
        let text = std::str::from_utf8(&out).unwrap();
        assert!(serde_json::from_str::<String>(text).is_ok());
        assert_eq!(decode_body(text), Some(stamp));

        let mut short = Vec::new();
        encode_body(&mut short, stamp, 4);
        assert_eq!(
            decode_body(std::str::from_utf8(&short).unwrap()),
            Some(stamp)
        );
        assert_eq!(decode_body("\"hello\""), None);
        assert_eq!(decode_body("17"), None);
    }

    #[test]
    fn frames_are_json() {
        let mut rb = RequestBuf::default();
        let v: serde_json::Value = serde_json::from_slice(rb.join("r-1", 0)).unwrap();
        assert_eq!(v["type"], "join");
        assert_eq!(v["room"], "r-1");
        assert_eq!(v["id"], 0);
        assert!(v.get("since").is_none());
        let v: serde_json::Value =
            serde_json::from_slice(rb.join_since("r-1", Some(41), 5)).unwrap();
        assert_eq!((v["since"].as_u64(), v["id"].as_u64()), (Some(41), Some(5)));
        let stamp = BodyStamp {
            sched_ns: 5,
            publisher: 1,
            counter: 2,
        };
        let v: serde_json::Value =
            serde_json::from_slice(rb.message(&Dest::Room("r".into()), 3, stamp, 40)).unwrap();
        assert_eq!(v["type"], "publish");
        assert_eq!(v["id"], 3);
        assert_eq!(v["body"].as_str().unwrap().len(), 38);
        let v: serde_json::Value =
            serde_json::from_slice(rb.message(&Dest::User("bob".into()), 4, stamp, 0)).unwrap();
        assert_eq!(v["type"], "send");
        assert_eq!(v["to"], "bob");
    }

    #[test]
    fn parses_server_frames() {
        let f = ServerFrame::parse(
            br#"{"type":"message","room":"r","from":"u","seq":9,"ts":1,"body":"1,2,3,xx"}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "message");
        assert_eq!(f.seq, Some(9));
        assert_eq!(
            decode_body(f.body.unwrap().get()),
            Some(BodyStamp {
                sched_ns: 1,
                publisher: 2,
                counter: 3
            })
        );
        let f = ServerFrame::parse(br#"{"type":"ack","id":4,"room":"r","seq":10}"#).unwrap();
        assert_eq!((f.kind, f.id, f.seq), ("ack", Some(4), Some(10)));
        assert_eq!((f.recovered, f.replayed, f.truncated), (None, None, None));
        let f = ServerFrame::parse(
            br#"{"type":"ack","id":5,"room":"r","seq":44,"recovered":true,"replayed":3,"truncated":false}"#,
        )
        .unwrap();
        assert_eq!(
            (f.recovered, f.replayed, f.truncated),
            (Some(true), Some(3), Some(false))
        );
        let f = ServerFrame::parse(
            br#"{"type":"error","id":1,"code":"rate_limited","message":"slow \"down\""}"#,
        )
        .unwrap();
        assert_eq!(f.code, Some("rate_limited"));
        assert_eq!(f.message.as_deref(), Some("slow \"down\""));
        let f = ServerFrame::parse(
            br#"{"type":"welcome","user":"a","rooms":["x"],"heartbeat_ms":25000}"#,
        )
        .unwrap();
        assert_eq!(f.kind, "welcome");
    }

    #[test]
    fn fast_path_agrees_with_serde() {
        let stamp = BodyStamp {
            sched_ns: 123,
            publisher: 4,
            counter: 5,
        };
        let room = br#"{"type":"message","room":"lt1-r","from":"lt1-u3","seq":77,"ts":1732200000123,"body":"123,4,5,xxxx"}"#;
        let dm =
            br#"{"type":"message","to":"b@x","from":"a.b:c","seq":1,"ts":0,"body":"123,4,5,"}"#;
        for frame in [&room[..], &dm[..]] {
            let fast = parse_message_fast(frame).unwrap();
            let slow = ServerFrame::parse(frame).unwrap();
            assert_eq!(fast, (slow.seq.unwrap(), stamp));
            assert_eq!(decode_body(slow.body.unwrap().get()), Some(stamp));
        }
        // Other layouts, other frames and foreign bodies take the slow path.
        for frame in [
            &br#"{"type":"message","from":"a","room":"r","seq":1,"ts":0,"body":"1,2,3,"}"#[..],
            br#"{"type":"message","room":"r","from":"a","seq":1,"ts":0,"body":{"x":1}}"#,
            br#"{"type":"message","room":"r","from":"a","seq":,"ts":0,"body":"1,2,3,"}"#,
            br#"{"type":"message","room":"r","from":"a","seq":1,"ts":0,"body":"1,2,3,""#,
            br#"{"type":"ack","id":1,"room":"r","seq":1}"#,
            br#"{"type":"message","room":"r","from":"a","seq":99999999999999999999,"ts":0,"body":"1,2,3,"}"#,
        ] {
            assert_eq!(parse_message_fast(frame), None, "{}", String::from_utf8_lossy(frame));
        }
        assert_eq!(decode_body(r#""1,2,3""#), None);
        assert_eq!(decode_body(r#""1,99999999999,3,""#), None);
    }

    #[test]
    fn endpoints() {
        let ep = Endpoint::parse("ws://127.0.0.1:8080").unwrap();
        assert_eq!(ep.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(ep.path, "/ws");
        let ep = Endpoint::parse("ws://localhost:9/ws?user=x").unwrap();
        assert_eq!(ep.addr.to_string(), "127.0.0.1:9");
        assert_eq!(ep.path, "/ws");
        assert!(Endpoint::parse("ws://10.0.0.1:80").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:80").is_err());
        assert!(Endpoint::parse("ws://127.0.0.1").is_err());
        assert_eq!(source_ip(0, 16), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(17, 16), Ipv4Addr::new(127, 0, 0, 2));
    }
}
