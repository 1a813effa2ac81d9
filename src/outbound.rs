//! Outbound HTTP/1.1 to the application's backend (`hook_url`, `webhook_url`) and an identity
//! provider (`jwks_url`): a URL taken apart once, and a new connection to it, plain or over TLS,
//! as a byte stream (`open`) or a hyper client connection (`connect`).
//!
//! TLS is rustls through tokio-rustls with the ring provider, trusting the public web roots of
//! webpki-roots plus the certificates of an operator's CA file (a backend behind a private CA).
//! webpki-roots rather than the OS store: the same roots in every container, none of which
//! ships a CA bundle by default, and the crates are already in the build (redis, jwks).
//!
//! Owns URL parsing and connecting. It must not pool connections or read answers (the callers
//! do: `hooks::client`, `persist::deliver`, `auth::jwks`).

use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Why an outbound endpoint cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("{url} is not an http:// or https:// URL with a host")]
    Url { url: String },
    #[error("{path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot set up TLS: {0}")]
    Tls(rustls::Error),
}

/// The TLS client: the public web roots (webpki-roots) plus the certificates in `ca_file`.
pub fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector, OutboundError> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let err = |message: String| OutboundError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| err(e.to_string()))?;
            roots.add(cert).map_err(|e| err(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(err("no PEM certificate in it".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(OutboundError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Where requests go: an http:// or https:// URL taken apart.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `host[:port]`: the `Host` header.
    pub authority: String,
    /// The path and query: the request's target.
    pub path: String,
    /// Set for https.
    tls: Option<TlsConnector>,
}

impl Endpoint {
    /// `url`, trusting `ca_file` besides the web roots if it is https.
    pub fn parse(url: &str, ca_file: Option<&Path>) -> Result<Endpoint, OutboundError> {
        let bad = || OutboundError::Url {
            url: url.to_owned(),
        };
        let uri: hyper::Uri = url.parse().map_err(|_| bad())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let authority = uri.authority().ok_or_else(bad)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: authority.as_str().to_owned(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
            tls: if https {
                Some(tls_connector(ca_file)?)
            } else {
                None
            },
        })
    }

    /// A new connection (TCP_NODELAY; TLS for https, the certificate checked against `host`),
    /// its HTTP/1.1 driver spawned on the current runtime. The error says what failed.
    pub async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        match self.open().await? {
            Stream::Plain(s) => handshake(s).await,
            Stream::Tls(s) => handshake(s).await,
        }
    }

    /// A new connection's byte stream (TCP_NODELAY; TLS for https, the certificate checked
    /// against `host`), for a caller that speaks HTTP itself. The error says what failed.
    pub async fn open(&self) -> Result<Stream, String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect to {}: {e}", self.authority))?;
        let _ = stream.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(stream));
        };
        let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
        let stream = (tls.connect(name, stream).await)
            .map_err(|e| format!("TLS with {}: {e}", self.authority))?;
        Ok(Stream::Tls(Box::new(stream)))
    }
}

/// An open connection to an endpoint, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "an outbound connection ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        let e = Endpoint::parse("http://127.0.0.1:9000/hooks/feed?x=1", None).unwrap();
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.authority.as_str(),
                e.path.as_str()
            ),
            ("127.0.0.1", 9000, "127.0.0.1:9000", "/hooks/feed?x=1")
        );
        assert!(e.tls.is_none());
        let e = Endpoint::parse("https://backend", None).unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("backend", 443, "/")
        );
        assert!(e.tls.is_some());
        let e = Endpoint::parse("http://[::1]:8080/h", None).unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8080));
        for bad in ["ftp://x/", "backend:80", "http:///path", "not a url"] {
            assert!(Endpoint::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "no certificates here\n").unwrap();
        let e = tls_connector(Some(&path)).err().expect("refused");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        assert!(tls_connector(Some(&dir.path().join("missing.pem"))).is_err());
        assert!(tls_connector(None).is_ok());
    }
}
