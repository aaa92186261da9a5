//! TLS in the tests: a CA of the test's own with a server and a client certificate (openssl),
//! and a client that trusts only a given certificate, for the gateway's HTTPS.

use std::net::SocketAddr;
use std::sync::Arc;

/// A CA made for the test (`ca.pem`, `ca.key`), a server certificate it signed for localhost
/// and 127.0.0.1 (`server.pem`, `server.key`) and a client certificate (`client.pem`,
/// `client.key`), in `dir`, by openssl; false when openssl could not.
pub fn make_test_ca(dir: &std::path::Path) -> bool {
    let run = |args: &[&str]| {
        std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // A v3 certificate (rustls takes no other) signed by the CA, with `ext` as its extensions.
    let leaf = |name: &str, subject: &str, ext: &str| {
        let (key, csr, cnf, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.cnf"),
            format!("{name}.pem"),
        );
        std::fs::write(dir.join(&cnf), ext).is_ok()
            && run(&[
                "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out",
                &csr,
            ])
            && run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &cnf,
                "-out",
                &pem,
            ])
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=edge test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]) && leaf(
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    ) && leaf(
        "client",
        "/CN=edge-gateway test client",
        "extendedKeyUsage=clientAuth\n",
    )
}

/// A TLS connection to `addr` trusting only the certificates in `cert` (the gateway's own
/// self-signed one, or a CA), checked for the address itself.
pub async fn tls_connect(
    addr: SocketAddr,
    cert: &std::path::Path,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(rustls::pki_types::ServerName::from(addr.ip()), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// `GET path` over https (see [`tls_connect`]): the whole answer, headers and body.
pub async fn https_get(
    addr: SocketAddr,
    path: &str,
    cert: &std::path::Path,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tls_connect(addr, cert).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
