//! One bot client on the wire: TCP connect from a chosen 127.0.0.x, the WebSocket handshake, and
//! frame reads and writes. The frames themselves (what the bot sends, what it reads out of the
//! server's, and the body it publishes) are `frames`.
//!
//! Owns the connection. It must not keep delivery statistics or decide what to send when: that
//! is `scenario`'s and `stats`' job.
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

mod frames;
mod proto;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError, WebSocketRead, WebSocketWrite};
use sha1::{Digest, Sha1};

use crate::cli::Protocol;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub use frames::{
    BodyStamp, Dest, Outgoing, RequestBuf, ServerFrame, decode_body, encode_body, event_kind,
    parse_message_fast, stamp_of,
};
use shardcast_client::codec::{self, Format};

pub type WsRead = WebSocketRead<OwnedReadHalf>;
pub type WsWrite = WebSocketWrite<OwnedWriteHalf>;
/// The write half, shared by a connection's reader (for pongs and the close reply) and its
/// publisher. The lock is uncontended almost always.
pub type SharedWriter = Arc<tokio::sync::Mutex<Writer>>;

/// A connection's write half, the form it speaks, and the buffer its requests are encoded in
/// (reused: sending costs no allocation in either form).
pub struct Writer {
    ws: WsWrite,
    /// `shardcast.proto`: requests go out as binary `ClientFrame`s.
    format: Format,
    buf: Vec<u8>,
}

/// The largest server frame the bot accepts.
const MAX_FRAME: usize = 16 << 20;
/// How long a TCP connect plus handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the server is: `ws://127.x.y.z:PORT[/path]`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub path: String,
    /// The form its connections speak (`--protocol`).
    pub protocol: Protocol,
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
            protocol: Protocol::Json,
        })
    }

    pub fn from_addr(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            path: "/ws".to_string(),
            protocol: Protocol::Json,
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
    /// `shardcast.proto`: binary server frames are read back as their JSON layout.
    proto: bool,
}

/// Whether `user`'s connection speaks `shardcast.proto` under `protocol` (`mixed`: by a hash of
/// the name, so about half, the same ones each run).
pub fn speaks_proto(protocol: Protocol, user: &str) -> bool {
    match protocol {
        Protocol::Json => false,
        Protocol::Proto => true,
        Protocol::Mixed => {
            let h = user.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            h & 1 == 1
        }
    }
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
        let proto = speaks_proto(ep.protocol, user);
        handshake(&mut stream, ep, user, proto).await?;
        let (r, w) = stream.into_split();
        let (mut read, write) = fastwebsockets::after_handshake_split(r, w, Role::Client);
        read.set_max_message_size(MAX_FRAME);
        Ok(Ws {
            read,
            write: Arc::new(tokio::sync::Mutex::new(Writer {
                ws: write,
                format: if proto { Format::Proto } else { Format::Json },
                buf: Vec::new(),
            })),
            proto,
        })
    }

    /// Reads the next data or close frame. Pings are answered with pongs on the way. On a
    /// `shardcast.proto` connection a binary frame comes back as the text frame of its JSON
    /// layout (one decode and one JSON write, the bot's cost); the pub/sub read loop uses
    /// [`Ws::recv_raw`] and the decoded frame instead.
    pub async fn recv(&mut self) -> Result<Frame<'_>, WebSocketError> {
        let proto = self.proto;
        let frame = self.recv_raw().await?;
        if proto && frame.opcode == OpCode::Binary {
            let f = codec::decode(Format::Proto, &frame.payload)
                .map_err(|_| WebSocketError::InvalidValue)?;
            let json = proto::json_view(&f).ok_or(WebSocketError::InvalidValue)?;
            return Ok(Frame::text(Payload::Owned(json)));
        }
        Ok(frame)
    }

    /// [`Ws::recv`] without the translation: binary frames as they came.
    pub async fn recv_raw(&mut self) -> Result<Frame<'_>, WebSocketError> {
        let write = &self.write;
        self.read
            .read_frame(&mut |frame: Frame<'static>| {
                let write = write.clone();
                async move { write.lock().await.ws.write_frame(frame).await }
            })
            .await
    }

    /// The form this connection speaks.
    pub fn format(&self) -> Format {
        if self.proto {
            Format::Proto
        } else {
            Format::Json
        }
    }
}

/// Writes one request, encoded by the client crate's codec in the connection's form.
pub async fn send(write: &SharedWriter, out: Outgoing<'_>) -> Result<(), WebSocketError> {
    let mut w = write.lock().await;
    let Writer { ws, format, buf } = &mut *w;
    buf.clear();
    codec::encode(*format, Some(out.id), &out.req, buf);
    let payload = Payload::BorrowedMut(buf);
    match format {
        Format::Json => ws.write_frame(Frame::text(payload)).await,
        Format::Proto => ws.write_frame(Frame::binary(payload)).await,
    }
}

/// Writes one request a scenario built as JSON text in `payload` (masked in place, so it is
/// scrambled after): a text frame, or on a `shardcast.proto` connection the binary
/// `ClientFrame` it stands for.
pub async fn send_text(write: &SharedWriter, payload: &mut [u8]) -> Result<(), WebSocketError> {
    let mut w = write.lock().await;
    let Writer { ws, format, buf } = &mut *w;
    if *format == Format::Proto {
        buf.clear();
        proto::request(payload, buf).map_err(|_| WebSocketError::InvalidValue)?;
        return ws
            .write_frame(Frame::binary(Payload::BorrowedMut(buf)))
            .await;
    }
    ws.write_frame(Frame::text(Payload::BorrowedMut(payload)))
        .await
}

/// Starts the closing handshake with 1000.
pub async fn send_close(write: &SharedWriter) -> Result<(), WebSocketError> {
    write
        .lock()
        .await
        .ws
        .write_frame(Frame::close(1000, b""))
        .await
}

/// Reads frames until `want` accepts one; an `error` frame or a close fails.
pub async fn expect_frame<T>(
    ws: &mut Ws,
    want: impl Fn(&ServerFrame) -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        let frame = ws.recv().await.map_err(|e| anyhow!("read: {e}"))?;
        match frame.opcode {
            OpCode::Text => {}
            OpCode::Close => bail!(
                "server closed the connection: {}",
                close_reason(&frame.payload)
            ),
            _ => continue,
        }
        let f = ServerFrame::parse(&frame.payload)
            .with_context(|| format!("bad frame {:?}", String::from_utf8_lossy(&frame.payload)))?;
        if f.kind == "error" {
            bail!(
                "server error {}: {}",
                f.code.unwrap_or("?"),
                f.message.as_deref().unwrap_or("")
            );
        }
        if let Some(t) = want(&f) {
            return Ok(t);
        }
    }
}

pub fn close_reason(payload: &[u8]) -> String {
    if payload.len() >= 2 {
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        format!("close {code} {}", String::from_utf8_lossy(&payload[2..]))
    } else {
        "close without a code".to_string()
    }
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
async fn handshake(
    stream: &mut TcpStream,
    ep: &Endpoint,
    user: &str,
    proto: bool,
) -> anyhow::Result<()> {
    let key_bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.encode(key_bytes);
    let subprotocol = if proto {
        "Sec-WebSocket-Protocol: shardcast.proto\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET {}?user={user} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{subprotocol}\r\n",
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

#[cfg(test)]
mod tests {
    use super::*;

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
