//! TLS as a client (rustls with the ring provider): the system's trusted roots, which
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` override (a plant's own CA), for every upstream we dial.

use std::sync::Arc;

/// Modern protocol versions only, the system's roots; an error says where it looked.
pub fn client_config(what: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted CA certificates found for {what} ({:?})",
            found.errors
        ));
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
