//! What the benches share: this process's figures from /proc.
#![allow(dead_code)]

pub mod load;
pub mod process;

/// A bench setting from the environment (`BENCH_SECS` and the like), else `default`.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
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
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            sock.set_recv_buffer_size(size).unwrap();
        }
        let tcp = sock.connect(addr).await.unwrap();
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(8 * 1024);
        match tokio_tungstenite::client_async_with_config(
            url,
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
            Some(config),
        )
        .await
        {
            Ok((ws, _)) => return ws,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    panic!("websocket connect: refused 10,000 times");
}
