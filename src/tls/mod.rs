//! TLS (rustls with the ring provider): as a client, the system's trusted roots, which
//! `SSL_CERT_FILE` / `SSL_CERT_DIR` override (a plant's own CA), for every upstream we dial;
//! as the dashboard's server, in `server`.

pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Pem { path: PathBuf, why: String },
    #[error("cannot make a self-signed certificate: {0}")]
    Make(String),
    #[error("the certificate and key do not go together: {0}")]
    Config(String),
}

/// Modern protocol versions only, the system's roots; with `identity` (a PEM certificate chain
/// and its key), the client authenticates itself with it. An error says where it looked.
pub fn client_config(
    what: &str,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, String> {
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
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = read_chain(cert).map_err(|e| e.to_string())?;
            let key = read_key(key).map_err(|e| e.to_string())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
    }
}

/// The certificates of a PEM file, at least one.
pub(crate) fn read_chain(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let chain: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            why: "no CERTIFICATE in it".into(),
        });
    }
    Ok(chain)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    use rustls::pki_types::pem::PemObject as _;
    let pem = std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.to_owned(),
        source,
    })?;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        why: format!("no private key: {e}"),
    })
}
