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
    let id = format!("{service}-{}", rand_id());
    s.send(Message::Text(
        json!({"requestId": id, "service": service, "params": params})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    loop {
        let m = next(s).await;
        if m["requestId"] == id {
            return m;
        }
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
