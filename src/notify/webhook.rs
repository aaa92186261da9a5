//! A webhook delivery: one HTTP/1.1 POST of the JSON (over TLS for https://), signed with
//! HMAC-SHA256 of the body, bounded in time as a whole; a 2xx is delivered, anything else
//! (a redirect included: a hook that moved is a config to fix, and following one is how a
//! loop never ends) is an error to retry.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Connect, TLS, request and response headers, all of it.
pub const ATTEMPT: Duration = Duration::from_secs(10);

/// A webhook URL taken apart.
struct Target {
    tls: bool,
    host: String,
    port: u16,
    /// Path and query.
    path: String,
}

fn parse(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("not an http:// or https:// URL".into());
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default = if tls { 443 } else { 80 };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6.split_once(']').ok_or("bad IPv6 address")?;
            let port = rest.strip_prefix(':').map(str::parse).transpose();
            (
                h.to_string(),
                port.map_err(|_| "bad port")?.unwrap_or(default),
            )
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| "bad port")?),
            None => (authority.to_string(), default),
        },
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(Target {
        tls,
        host,
        port,
        path,
    })
}

/// `sha256=HEX(HMAC-SHA256(secret, body))`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let mut out = String::from("sha256=");
    for b in tag.as_ref() {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// POSTs `body`; `Ok` on a 2xx.
pub async fn post(
    url: &str,
    secret: &str,
    event_id: &str,
    body: Vec<u8>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    match tokio::time::timeout(ATTEMPT, attempt(url, secret, event_id, body, tls)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", ATTEMPT.as_secs())),
    }
}

async fn attempt(
    url: &str,
    secret: &str,
    event_id: &str,
    body: Vec<u8>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    let t = parse(url)?;
    let tcp = TcpStream::connect((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("connect to {}:{}: {e}", t.host, t.port))?;
    let _ = tcp.set_nodelay(true);
    let host_header = if t.port == if t.tls { 443 } else { 80 } {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let mut req = Request::post(t.path.as_str())
        .header("host", host_header)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("edge-gateway/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-edge-event-id", event_id);
    if !secret.is_empty() {
        req = req.header("x-edge-signature", signature(secret, &body));
    }
    let req = req
        .body(axum::body::Body::from(body))
        .map_err(|e| e.to_string())?;
    let status = if t.tls {
        let config = tls.ok_or("https:// without TLS settings")?;
        let name = rustls::pki_types::ServerName::try_from(t.host.clone())
            .map_err(|e| format!("{}: {e}", t.host))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {}: {e}", t.host))?;
        send(stream, req).await?
    } else {
        send(tcp, req).await?
    };
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        Err(format!(
            "answered {status}: redirects are not followed, set the final URL"
        ))
    } else {
        Err(format!("answered {status}"))
    }
}

async fn send<S>(stream: S, req: Request<axum::body::Body>) -> Result<StatusCode, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    // The connection is driven beside the request and ends with it (one request each).
    let driver = tokio::spawn(conn);
    let answer = sender.send_request(req).await.map_err(|e| e.to_string());
    driver.abort();
    Ok(answer?.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_taken_apart_with_their_default_ports() {
        let t = parse("https://ops.example/hooks/edge?token=x").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("ops.example", 443, "/hooks/edge?token=x")
        );
        let t = parse("http://127.0.0.1:8081").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", 8081, "/")
        );
        let t = parse("http://[::1]:9000/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert!(parse("ftp://x").is_err());
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
