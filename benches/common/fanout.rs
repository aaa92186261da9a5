//! The WebSocket benches' client side: a thousand clients in one process, each resuming a
//! session and timing every push until the server's "stop", over `ws://` or `wss://`; one JSON
//! line of results.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{ws_client, ws_client_tls};

/// Microseconds since the epoch: what a push carries as `sentUs`, and what a client compares.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

/// Client side: connects (over TLS when `BENCH_CERT` names the gateway's certificate),
/// resumes the session with the token, then records the latency of every push until told to
/// stop; prints one JSON line of results.
pub async fn clients(addr: String, token: String, healthy: usize, stalled: usize, secs: u64) {
    let cert = std::env::var_os("BENCH_CERT").map(std::path::PathBuf::from);
    let mut tasks = Vec::new();
    for i in 0..healthy + stalled {
        let (token, cert, addr) = (token.clone(), cert.clone(), addr.clone());
        let is_stalled = i >= healthy;
        let window = is_stalled.then_some(2048);
        tasks.push(tokio::spawn(async move {
            match cert {
                None => {
                    let s = ws_client(&format!("ws://{addr}/ws"), window).await;
                    measure(s, &token, is_stalled, secs).await
                }
                Some(c) => {
                    let s = ws_client_tls(&format!("wss://{addr}/ws"), &c, window).await;
                    measure(s, &token, is_stalled, secs).await
                }
            }
        }));
    }
    let (mut all, mut ems) = (Vec::new(), Vec::new());
    for t in tasks {
        let (lat, em) = t.await.unwrap();
        all.extend(lat);
        ems.extend(em);
    }
    all.sort_unstable();
    ems.sort_unstable();
    println!(
        "{}",
        json!({"count": all.len(), "p50_ms": pct(&all, 0.5), "p99_ms": pct(&all, 0.99), "max_ms": pct(&all, 1.0),
               "em_count": ems.len(), "em_p50_ms": pct(&ems, 0.5), "em_p99_ms": pct(&ems, 0.99)})
    );
}

/// One client: resumes, then (stalled) stops reading or (healthy) times every push until the
/// server's "stop" (no timer in the receive loop; only the number is read out of each frame).
async fn measure<S>(
    mut s: tokio_tungstenite::WebSocketStream<S>,
    token: &str,
    is_stalled: bool,
    secs: u64,
) -> (Vec<u64>, Vec<u64>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = json!({"requestId": "r", "service": "auth.resume", "params": {"token": token}});
    s.send(Message::Text(req.to_string().into())).await.unwrap();
    let (mut lat, mut em) = (Vec::new(), Vec::new());
    while let Some(Ok(m)) = s.next().await {
        if let Message::Text(t) = m {
            if t.contains("\"requestId\":\"r\"") {
                break;
            }
        }
    }
    if is_stalled {
        tokio::time::sleep(Duration::from_secs(secs + 5)).await;
        return (lat, em);
    }
    while let Some(Ok(m)) = s.next().await {
        let Message::Text(t) = m else { continue };
        if t.contains("\"stop\"") {
            break;
        }
        if let Some(i) = t.find("\"sentUs\":") {
            let digits: String = t[i + 9..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(sent) = digits.parse::<u64>() {
                let took = now_us().saturating_sub(sent);
                if t.contains("\"emergency\"") {
                    em.push(took);
                } else {
                    lat.push(took);
                }
            }
        }
    }
    (lat, em)
}
