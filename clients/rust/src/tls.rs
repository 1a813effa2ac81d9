//! TLS for `wss://` URLs: rustls (ring) with the public web roots (webpki-roots) and the
//! application's extra CA certificates. Owns nothing else; the driver makes the config once per
//! client.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::Error;

/// The client config: webpki-roots plus each PEM certificate in `extra_ca` (at least one when
/// given: a file without one is a mistake worth saying).
pub(crate) fn client_config(extra_ca: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| Error::Tls(format!("extra_ca_pem: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("extra_ca_pem: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::Tls("extra_ca_pem holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
