//! The dashboard's HTTPS: the certificate and key (`[http] tls = "files"`, or for
//! `self_signed` ones the gateway makes once in `{data_dir}/tls`, named for the box's host
//! name, `HOST.local`, `localhost` and every address), TLS 1.2 and 1.3 with rustls's modern
//! suites, and the certificate's SHA-256 fingerprint, which a technician compares before
//! accepting it in the browser.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

pub use super::TlsError;
use super::{read_chain, read_key};
use crate::config::{Config, HttpTls};

/// A self-signed certificate is made for ten years: the box outlives a one-year certificate
/// nobody renews, and the browser asks once either way.
const SELF_SIGNED_DAYS: i64 = 3650;

/// What the HTTP server accepts connections with, and what to tell about its certificate.
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub cert_path: PathBuf,
    pub fingerprint: String,
}

/// The files of `config`'s certificate and key (for `self_signed`, where they are or will be).
pub fn paths(config: &Config) -> Option<(PathBuf, PathBuf)> {
    match &config.http.tls {
        HttpTls::Off => None,
        HttpTls::SelfSigned => {
            let dir = config.gateway.data_dir.join("tls");
            Some((dir.join("cert.pem"), dir.join("key.pem")))
        }
        HttpTls::Files { cert, key } => Some((cert.clone(), key.clone())),
    }
}

/// The server's TLS for `config`, read at each start (so a reload picks up renewed files);
/// `None` with `tls = "off"`. A `self_signed` certificate is made when there is none yet.
pub fn load(config: &Config) -> Result<Option<ServerTls>, TlsError> {
    let Some((cert_path, key_path)) = paths(config) else {
        return Ok(None);
    };
    if config.http.tls == HttpTls::SelfSigned && !cert_path.exists() {
        make_self_signed(&cert_path, &key_path)?;
    }
    let chain = read_chain(&cert_path)?;
    let key = read_key(&key_path)?;
    let fingerprint = fingerprint(chain[0].as_ref());
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| TlsError::Config(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| TlsError::Config(e.to_string()))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(ServerTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        cert_path,
        fingerprint,
    }))
}

/// `AB:CD:…`: SHA-256 of the certificate's DER, as browsers show it.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let hex: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// The fingerprint of the certificate in a PEM file.
pub fn fingerprint_of(path: &Path) -> Result<String, TlsError> {
    Ok(fingerprint(read_chain(path)?[0].as_ref()))
}

/// The names a browser on the plant network may reach this box by.
fn names() -> Vec<String> {
    let mut names = vec!["localhost".to_string()];
    if let Some(h) = crate::host::name() {
        names.push(format!("{h}.local"));
        names.insert(0, h);
    }
    for ip in crate::host::addresses() {
        names.push(ip.to_string());
    }
    names.dedup();
    names
}

/// An ECDSA P-256 key (fast on a small ARM core) and a certificate for [`names`], written as
/// the key first (0600) and the certificate last, so a certificate never exists without its key.
fn make_self_signed(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let make = |e: rcgen::Error| TlsError::Make(e.to_string());
    let names = names();
    let mut params = rcgen::CertificateParams::new(names.clone()).map_err(make)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, names[0].clone());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "edge-gateway");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(SELF_SIGNED_DAYS);
    let key = rcgen::KeyPair::generate().map_err(make)?;
    let cert = params.self_signed(&key).map_err(make)?;
    if let Some(dir) = key_path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
            path: dir.to_owned(),
            source,
        })?;
    }
    write_private(key_path, key.serialize_pem().as_bytes())?;
    crate::config::versions::write_atomically(cert_path, cert.pem().as_bytes()).map_err(
        |source| TlsError::Io {
            path: cert_path.to_owned(),
            source,
        },
    )?;
    tracing::info!(
        "https: made a self-signed certificate for {} in {}",
        names.join(", "),
        cert_path.display()
    );
    Ok(())
}

/// A file only its owner reads, written whole.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
