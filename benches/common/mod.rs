//! What the benches share: this process's figures from /proc.
#![allow(dead_code)]

pub mod fanout;
pub mod load;
pub mod peer;
pub mod process;

/// A bench setting from the environment (`BENCH_SECS` and the like), else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One statement on the MySQL server of `url`; the first column of its first row, when it has
/// one and that is a number (a count).
pub fn mysql(url: &str, sql: &str) -> Option<u64> {
    use mysql_async::prelude::Queryable;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = mysql_async::Pool::new(url);
        let mut c = pool.get_conn().await.unwrap();
        let first: Option<u64> = c.query_first(sql).await.unwrap();
        drop(c);
        pool.disconnect().await.unwrap();
        first
    })
}

/// A `VmRSS`/`VmHWM`-style field of /proc/self/status, in kB (0 where there is no /proc).
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// A benchmark's WebSocket client, as light as a browser tab: tungstenite's default read
/// buffer (128 KiB) is zeroed before every read, which made the client process, not the
/// gateway, the bottleneck (44 % of its CPU in `memset` in the fan-out profile). `recv_buffer`
/// shrinks the TCP receive window (a client that stalls).
pub async fn ws_client(
    url: &str,
    recv_buffer: Option<u32>,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap();
    // Connections not logged in have a per-address share (16), and so do HTTP connections not
    // upgraded yet (128): the clients all come from one address, so a refused or closed one
    // retries, as a tablet behind a NAT does.
    for _ in 0..10_000 {
        let tcp = socket(addr, recv_buffer).await;
        match tokio_tungstenite::client_async_with_config(
            url,
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
            Some(client_config()),
        )
        .await
        {
            Ok((ws, _)) => return ws,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    panic!("websocket connect: refused 10,000 times");
}

async fn socket(addr: std::net::SocketAddr, recv_buffer: Option<u32>) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size).unwrap();
    }
    sock.connect(addr).await.unwrap()
}

fn client_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// [`ws_client`] over TLS (`wss://ADDR/ws`), trusting only the certificate in `cert` (the
/// gateway's self-signed one).
pub async fn ws_client_tls(
    url: &str,
    cert: &std::path::Path,
    recv_buffer: Option<u32>,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls::pki_types::pem::PemObject as _;
    let addr = url
        .trim_start_matches("wss://")
        .split('/')
        .next()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    for _ in 0..10_000 {
        let tcp = socket(addr, recv_buffer).await;
        let Ok(stream) = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(rustls::pki_types::ServerName::from(addr.ip()), tcp)
            .await
        else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        match tokio_tungstenite::client_async_with_config(url, stream, Some(client_config())).await
        {
            Ok((ws, _)) => return ws,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    panic!("websocket connect: refused 10,000 times");
}
