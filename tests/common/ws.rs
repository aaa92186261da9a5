//! A WebSocket client for tests: log in, call a service, read the next frame.

use std::time::Duration;

use edge_gateway::Gateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::Message;

pub type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn connect(gw: &Gateway, user: &str) -> Stream {
    let (mut s, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr))
        .await
        .unwrap();
    let r = call(
        &mut s,
        "auth.login",
        json!({"username": user, "password": user}),
    )
    .await;
    assert_eq!(r["code"], 0);
    s
}

pub async fn next(s: &mut Stream) -> Json {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("a frame within 30 s")
        {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).unwrap(),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

pub async fn call(s: &mut Stream, service: &str, params: Json) -> Json {
    call_seeing(s, service, params, |_| true).await.0
}

/// Calls `service` and reads on until a frame `wanted` takes has come too (the reply itself,
/// for `call`); returns the reply and that frame. A push the call itself set off (a write's read-back raising an alarm) may come before the
/// reply, where `call` would pass over it.
pub async fn call_seeing(
    s: &mut Stream,
    service: &str,
    params: Json,
    wanted: impl Fn(&Json) -> bool,
) -> (Json, Json) {
    let id = send(s, service, params).await;
    // Pushes keep coming, so `next` alone never times out: a reply (or frame) that never
    // comes fails here instead of hanging the test.
    let read = async {
        let (mut reply, mut seen) = (None, None);
        loop {
            let m = next(s).await;
            if seen.is_none() && wanted(&m) {
                seen = Some(m.clone());
            }
            if m["requestId"] == id {
                reply = Some(m);
            }
            if let (Some(r), Some(w)) = (&reply, &seen) {
                return (r.clone(), w.clone());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("{id}: no reply, or not the frame waited for, within 60 s"))
}

/// Sends a request; returns its id.
async fn send(s: &mut Stream, service: &str, params: Json) -> String {
    let id = format!("{service}-{}", rand_id());
    s.send(Message::Text(
        json!({"requestId": id, "service": service, "params": params})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    id
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
