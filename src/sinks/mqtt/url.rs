//! The broker's address and TLS: `mqtt[s]://[user[:password]@]host[:port]`, and rustls with
//! the ring provider and the system's roots.

use std::sync::Arc;

use rumqttc::TlsConfiguration;

/// Where and how to connect, from `mqtt[s]://[user[:password]@]host[:port]`.
#[derive(Debug, PartialEq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub credentials: Option<(String, String)>,
}

pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err("must start with mqtt:// or mqtts://".into());
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (credentials, hostport) = match authority.rsplit_once('@') {
        Some((user, hp)) => {
            let (u, p) = user.split_once(':').unwrap_or((user, ""));
            (Some((u.to_string(), p.to_string())), hp)
        }
        None => (None, authority),
    };
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        match after.strip_prefix(':') {
            Some(p) => (h, p),
            None => (h, ""),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (hostport, ""),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = if port.is_empty() {
        default_port
    } else {
        port.parse().map_err(|_| format!("bad port `{port}`"))?
    };
    Ok(Target {
        host: host.to_string(),
        port,
        tls,
        credentials,
    })
}

/// TLS with the ring provider and the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` override
/// them, e.g. for a plant CA).
pub(crate) fn tls_config() -> Result<TlsConfiguration, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted CA certificates found for mqtts:// ({:?})",
            found.errors
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}
