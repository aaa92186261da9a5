//! The WebSocket plumbing over real sockets with a real client: the upgrade's Origin check and
//! no compression, the cap on clients, and a connection that never logs in closed. The API
//! over it is `api.rs`'s.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::wsclient::*;
use common::*;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused_at_the_upgrade_and_the_own_host_is_allowed() {
    let (gw, _sim, _dir) = gateway("").await;
    let url = format!("ws://{}/ws", gw.http_addr);
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Origin",
        format!("http://{}", gw.http_addr).parse().unwrap(),
    );
    // Compression is never negotiated (memory per client, and CRIME-style leaks).
    req.headers_mut().insert(
        "Sec-WebSocket-Extensions",
        "permessage-deflate".parse().unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert!(resp.headers().get("Sec-WebSocket-Extensions").is_none());
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_clients_get_503() {
    let (gw, _sim, _dir) = gateway("max_clients = 2").await;
    let _a = Ws::connect(gw.http_addr).await;
    let _b = Ws::connect(gw.http_addr).await;
    match tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    drop(_a);
    wait_for_async("a place frees up", || async {
        tokio_tungstenite::connect_async(format!("ws://{}/ws", gw.http_addr))
            .await
            .is_ok()
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_logs_in_is_closed_after_10_s() {
    let (gw, _sim, _dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    let frame = tokio::time::timeout(Duration::from_secs(30), ws.s.next())
        .await
        .unwrap();
    match frame {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Policy),
        other => panic!("expected a close frame, got {other:?}"),
    }
    wait_for("freed", || gw.metrics.push.clients.load(Relaxed) == 0).await;
    gw.shutdown().await;
}
