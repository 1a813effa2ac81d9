//! Asymmetric test keys and a JWKS server: RS256 / ES256 tokens signed with the key pairs in
//! `tests/fixtures` (made for these tests with `openssl genpkey`, used nowhere else), and an
//! HTTP or HTTPS server on 127.0.0.1 that serves a JWKS the test can change.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// `tests/fixtures/{name}`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The private key of fixture pair `pair` (`rsa1`, `rsa2`, `ec1`) for `alg`.
fn private_key(pair: &str, alg: Algorithm) -> EncodingKey {
    let pem = std::fs::read(fixture(&format!("{pair}.key"))).expect("read a fixture key");
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        other => panic!("no fixture keys for {other:?}"),
    }
    .expect("fixture keys are valid PEM")
}

/// A token over `claims` signed with fixture pair `pair`, with `kid` in its header if given.
pub fn sign(alg: Algorithm, pair: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &private_key(pair, alg)).expect("sign a JWT")
}

/// A JWKS holding the public halves of `keys`: `(kid, alg, pair)`.
pub fn jwks(keys: &[(&str, Algorithm, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, alg, pair)| {
            let mut jwk = Jwk::from_encoding_key(&private_key(pair, *alg), *alg).expect("a JWK");
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).expect("serialize a JWKS")
}

/// An HTTP/1.1 server on 127.0.0.1 that answers every request with the current JWKS, one
/// request per connection, over plain HTTP or (with [`JwksServer::start_tls`]) HTTPS with the
/// certificate in `tests/fixtures/redis-tls`. Its thread ends with the test process.
pub struct JwksServer {
    pub addr: SocketAddr,
    tls: bool,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub fn start(body: String) -> JwksServer {
        JwksServer::start_on("127.0.0.1:0".parse().unwrap(), body, None)
    }

    /// [`JwksServer::start`] over HTTPS; the certificate is for 127.0.0.1 and localhost, signed
    /// by `tests/fixtures/redis-tls/ca.crt`.
    pub fn start_tls(body: String) -> JwksServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(fixture("redis-tls/server.crt"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(fixture("redis-tls/server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("the fixture certificate and key");
        let addr = "127.0.0.1:0".parse().unwrap();
        JwksServer::start_on(addr, body, Some(Arc::new(config)))
    }

    /// [`JwksServer::start`] on a given address, with TLS if `tls` is given.
    pub fn start_on(
        addr: SocketAddr,
        body: String,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> JwksServer {
        let listener = TcpListener::bind(addr).expect("bind the JWKS server");
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (shared, counter, with_tls) = (body.clone(), hits.clone(), tls.is_some());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let serve = |stream: &mut dyn ReadWrite| {
                    answer(stream, &shared.lock().unwrap().clone(), &counter)
                };
                match &tls {
                    None => serve(&mut { stream }),
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                            continue;
                        };
                        let mut tls = rustls::StreamOwned::new(conn, stream);
                        serve(&mut tls);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                }
            }
        });
        JwksServer {
            addr,
            tls: with_tls,
            body,
            hits,
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/.well-known/jwks.json", self.addr)
    }

    /// Serves `body` from now on.
    pub fn set(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    /// Requests answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Reads one request head and answers it with `body`; counts requests that got that far.
fn answer(stream: &mut dyn ReadWrite, body: &str, hits: &AtomicUsize) {
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}
