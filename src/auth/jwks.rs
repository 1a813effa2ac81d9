//! The JWKS behind `jwks_url`: RS256 and ES256 keys by `kid`, fetched over HTTP or HTTPS on a
//! background thread and refreshed every `jwks_refresh_secs`, or sooner when a token names an
//! unknown `kid` (key rotation). HTTPS checks the key server's certificate against the public
//! web roots and `jwks_ca_file`.
//!
//! Owns the key map and its fetcher thread. It must not verify tokens (`auth` does) or touch
//! shards: a handshake reads the current map through one `RwLock` read, off the message path.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::outbound::OutboundError;

/// Most bytes of a JWKS document; a bigger one is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Longest one fetch may take, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two fetches, so tokens with made-up `kid`s cannot make the server hammer
/// the key server.
const MIN_REFETCH: Duration = Duration::from_secs(1);

/// A verifying key and the one algorithm it may verify.
pub type Key = (Algorithm, DecodingKey);

/// Why a JWKS could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("{url} is not a JWKS: {message}")]
    Parse { url: String, message: String },
    #[error("jwks_ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("cannot set up TLS for jwks_url: {0}")]
    Tls(rustls::Error),
    #[error("cannot start the JWKS fetcher thread: {0}")]
    Thread(std::io::Error),
}

/// The TLS client for an https `jwks_url` (`outbound::tls_connector`), its errors named for
/// `jwks_ca_file`.
fn tls_client(ca_file: Option<&Path>) -> Result<TlsConnector, JwksError> {
    crate::outbound::tls_connector(ca_file).map_err(|e| match e {
        OutboundError::CaFile { path, message } => JwksError::CaFile { path, message },
        OutboundError::Tls(e) => JwksError::Tls(e),
        OutboundError::Url { url } => JwksError::Fetch {
            url,
            message: "not a URL".into(),
        },
    })
}

struct Shared {
    keys: RwLock<Arc<HashMap<String, Key>>>,
    /// Asks the fetcher for an early refresh; full means one is already asked for.
    wake: SyncSender<()>,
}

/// A handle on the key set; cheap to clone. The fetcher thread stops once every handle is gone.
#[derive(Clone)]
pub struct Jwks {
    shared: Arc<Shared>,
}

impl Jwks {
    /// Starts the fetcher and waits up to `FETCH_TIMEOUT` for the first fetch. If it fails the
    /// server starts anyway (the key server may be down for a moment) with no keys, and the
    /// fetcher retries at every refresh and on every unknown `kid`. A `ca_file` that cannot be
    /// used is an error now, not at the first fetch.
    pub fn start(
        url: String,
        refresh: Duration,
        ca_file: Option<&Path>,
    ) -> Result<Jwks, JwksError> {
        let tls = tls_client(ca_file)?;
        let (wake, woken) = mpsc::sync_channel(1);
        let shared = Arc::new(Shared {
            keys: RwLock::default(),
            wake,
        });
        let (first_tx, first_rx) = mpsc::channel();
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("jwks".into())
            .spawn(move || fetcher(url, tls, refresh, weak, woken, first_tx))
            .map_err(JwksError::Thread)?;
        if first_rx.recv_timeout(FETCH_TIMEOUT * 2).is_err() {
            tracing::warn!("the first JWKS fetch did not finish; starting without keys");
        }
        Ok(Jwks { shared })
    }

    /// The key named `kid`. An unknown `kid` asks the fetcher for an early refresh, so a key the
    /// issuer just added works on a retry.
    pub fn get(&self, kid: &str) -> Option<Key> {
        let keys = self
            .shared
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let found = keys.get(kid).cloned();
        if found.is_none() {
            let _ = self.shared.wake.try_send(());
        }
        found
    }
}

fn fetcher(
    url: String,
    tls: TlsConnector,
    refresh: Duration,
    shared: Weak<Shared>,
    woken: mpsc::Receiver<()>,
    first: mpsc::Sender<()>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the JWKS fetcher; no JWKS keys");
            return;
        }
    };
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match rt
            .block_on(fetch(&url, &tls))
            .and_then(|body| parse(&url, &body))
        {
            Ok(keys) => {
                tracing::debug!(keys = keys.len(), "JWKS fetched");
                *shared.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            }
            Err(e) => tracing::warn!(error = %e, "JWKS refresh failed; keeping the old keys"),
        }
        drop(shared);
        let _ = first.send(());
        std::thread::sleep(MIN_REFETCH);
        match woken.recv_timeout(refresh.saturating_sub(MIN_REFETCH)) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// GETs `url` (http:// or https://) and returns the body of a 200 answer.
async fn fetch(url: &str, tls: &TlsConnector) -> Result<Bytes, JwksError> {
    let err = |message: String| JwksError::Fetch {
        url: url.to_owned(),
        message,
    };
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(err("not an http:// or https:// URL".into())),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let (host, port) = split_authority(authority);
    let port = port.unwrap_or(if https { 443 } else { 80 });
    let get = async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| err(e.to_string()))?;
        if !https {
            return get(stream, authority, path).await.map_err(err);
        }
        let name = ServerName::try_from(host.to_owned()).map_err(|e| err(e.to_string()))?;
        let stream = tls
            .connect(name, stream)
            .await
            .map_err(|e| err(format!("TLS: {e}")))?;
        get(stream, authority, path).await.map_err(err)
    };
    tokio::time::timeout(FETCH_TIMEOUT, get)
        .await
        .map_err(|_| err(format!("no answer within {FETCH_TIMEOUT:?}")))?
}

/// The host (without brackets for IPv6) and the port, if given, of a URL's authority.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':')),
            None => (authority, None),
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    (host, port.and_then(|p| p.parse().ok()))
}

/// One GET of `path` over `io`; the body of a 200 answer, at most `MAX_JWKS_BYTES`.
async fn get<S>(io: S, authority: &str, path: &str) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("status {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(body.to_bytes())
}

/// The RS256 and ES256 (P-256) keys of a JWKS, by `kid`. Keys without a `kid`, of another type,
/// or whose `alg` says another algorithm are left out: a token can only name a key by `kid`.
fn parse(url: &str, body: &[u8]) -> Result<HashMap<String, Key>, JwksError> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| JwksError::Parse {
        url: url.to_owned(),
        message: e.to_string(),
    })?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => continue,
        };
        let stated = jwk.common.key_algorithm;
        let agrees = match stated {
            None => true,
            Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
            Some(_) => false,
        };
        if let (Some(kid), true) = (&jwk.common.key_id, agrees)
            && let Ok(key) = DecodingKey::from_jwk(jwk)
        {
            keys.insert(kid.clone(), (alg, key));
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_rsa_and_p256_keys_with_a_kid_are_kept() {
        let set = json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "says-hs", "alg": "HS256", "n": "AQAB", "e": "AQAB"},
        ]});
        let keys = parse("u", set.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["r"]);
        assert_eq!(keys["r"].0, Algorithm::RS256);
        assert!(parse("u", b"not json").is_err());
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("idp.example"), ("idp.example", None));
        assert_eq!(
            split_authority("idp.example:8443"),
            ("idp.example", Some(8443))
        );
        assert_eq!(split_authority("127.0.0.1:9"), ("127.0.0.1", Some(9)));
        assert_eq!(split_authority("[::1]:8443"), ("::1", Some(8443)));
        assert_eq!(split_authority("[::1]"), ("::1", None));
    }
}
