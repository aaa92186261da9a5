//! An MQTT broker's address and TLS: `mqtt[s]://[user[:password]@]host[:port]` read once for
//! the MQTT sink, the fleet client and the dashboard's connection test, and
//! rustls with the ring provider and the system's roots.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};

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
pub fn tls_config(
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<TlsConfiguration, String> {
    let config = crate::tls::client_config("mqtts://", identity)?;
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// A client's options for the broker at `url` (no client certificate), `keep_alive` as given:
/// the fleet's client and the connection test.
pub fn options(url: &str, client_id: String, keep_alive: Duration) -> Result<MqttOptions, String> {
    let t = parse_url(url)?;
    let mut o = MqttOptions::new(client_id, t.host, t.port);
    o.set_keep_alive(keep_alive);
    if let Some((u, p)) = t.credentials {
        o.set_credentials(u, p);
    }
    if t.tls {
        o.set_transport(Transport::tls_with_config(tls_config(None)?));
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("mqtt://broker.plant:1883").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("broker.plant", 1883, false)
        );
        let t = parse_url("mqtts://u:p%w@host").unwrap();
        assert_eq!((t.port, t.tls), (8883, true));
        assert_eq!(t.credentials, Some(("u".into(), "p%w".into())));
        let t = parse_url("mqtt://[::1]:1884/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 1884));
        assert!(parse_url("mqtt://:1883").is_err());
        assert!(parse_url("mqtt://h:99999").is_err());
        assert!(parse_url("http://h").is_err());
    }
}
