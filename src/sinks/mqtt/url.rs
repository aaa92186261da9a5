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

/// TLS with the system's roots (see [`crate::tls`]), and the client's certificate when given.
pub(crate) fn tls_config(
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<TlsConfiguration, String> {
    let config = crate::tls::client_config("mqtts://", identity)?;
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}
