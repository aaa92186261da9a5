//! Hostile OPC UA clients against a real gateway process: malformed, oversized and half-sent
//! chunks, 1,000 connections, sessions past the limit, subscription floods and requests for
//! 100,000 nodes. None stalls polling or the dashboard; each refusal is counted.
#![cfg(feature = "opcua")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::target::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ua::client::{DataChangeCallback, IdentityToken, Session};
use ua::types::{
    BrowseDescription, MonitoredItemCreateRequest, NodeId, ObjectId, ReadValueId, StatusCode,
    TimestampsToReturn,
};

/// A hang guard for one step, not a timing.
const GUARD: Duration = Duration::from_secs(30);

/// An OPC UA TCP message: type, chunk type and body, its size in the header.
fn message(kind: [u8; 3], chunk: u8, body: &[u8]) -> Vec<u8> {
    let mut m = kind.to_vec();
    m.push(chunk);
    m.extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
    m.extend_from_slice(body);
    m
}

/// A Hello with the given buffer sizes and message limit.
fn hello(url: &str, buffer: u32, max_message: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [0, buffer, buffer, max_message, 0] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.extend_from_slice(&(url.len() as i32).to_le_bytes());
    b.extend_from_slice(url.as_bytes());
    message(*b"HEL", b'F', &b)
}

/// Sends `bytes` on a new connection and reads until the server closes it; what it sent back.
async fn answer_to(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut out))
        .await
        .expect("the server closes a connection that sent garbage")
        .ok();
    out
}

/// An anonymous session over the unsecured endpoint, or the status it was refused with.
async fn session(url: &str, pki: &std::path::Path) -> Result<Arc<Session>, StatusCode> {
    common::opcua::session(url, pki, false, IdentityToken::Anonymous).await
}

/// Polling and the dashboard, watched while the attacks run: healthz answers counted,
/// Modbus requests seen ok.
struct Watch {
    stop: AtomicBool,
    healthz_ok: AtomicU64,
    healthz_failed: AtomicU64,
}

async fn watch(t: std::net::SocketAddr, w: Arc<Watch>) {
    while !w.stop.load(Relaxed) {
        match tokio::time::timeout(GUARD, healthz_json(t)).await {
            Ok(Some(_)) => w.healthz_ok.fetch_add(1, Relaxed),
            _ => w.healthz_failed.fetch_add(1, Relaxed),
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn polls_ok(t: &Target) -> f64 {
    t.metric("edge_modbus_requests_total{device=\"boiler\",result=\"ok\"}")
        .await
}

/// Polling went on since `before`: more ok reads of the boiler.
async fn polling_goes_on(t: &Target, before: f64, during: &str) -> f64 {
    let mut now = polls_ok(t).await;
    for _ in 0..100 {
        if now > before {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = polls_ok(t).await;
    }
    panic!("polling stalled during {during}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::too_many_lines,
    reason = "one attack after another on one gateway, read top to bottom"
)]
async fn hostile_opcua_clients_stall_neither_polling_nor_the_dashboard() {
    let port = free_port();
    let t = Target::start(&format!(
        "[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nsecurity = [\"none\"]\nanonymous = true\n"
    ))
    .await;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let w = Arc::new(Watch {
        stop: AtomicBool::new(false),
        healthz_ok: AtomicU64::new(0),
        healthz_failed: AtomicU64::new(0),
    });
    let watcher = tokio::spawn(watch(t.http, w.clone()));
    let mut polled = polls_ok(&t).await;
    let rss0 = t.peak_rss_mb();

    eprintln!("opcua hostile: Malformed and oversized chunks");
    // Malformed and oversized chunks: each connection is answered with an error or closed.
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("a Hello claiming 4 GB", {
            let mut h = hello(&url, 65536, 0);
            h[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
            h
        }),
        ("a Hello with 1-byte buffers", hello(&url, 1, 0)),
        ("random bytes after a Hello", {
            let mut h = hello(&url, 65536, 0);
            h.extend(message(*b"MSG", b'F', &[0xA5; 200]));
            h
        }),
        ("an OpenSecureChannel of garbage", {
            let mut h = hello(&url, 65536, 0);
            h.extend(message(*b"OPN", b'F', &[0xFF; 64]));
            h
        }),
        ("a chunk larger than the buffers", {
            let mut h = hello(&url, 8192, 0);
            h.extend(message(*b"MSG", b'F', &vec![0; 100_000]));
            h
        }),
    ];
    for (what, bytes) in &garbage {
        eprintln!("  {what}");
        let back = answer_to(port, bytes).await;
        assert!(
            back.is_empty() || back.starts_with(b"ERRF") || back.starts_with(b"ACKF"),
            "{what}: {back:?}"
        );
    }
    // Half a chunk, then silence: held open costs nothing to others.
    let mut half = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    half.write_all(&hello(&url, 65536, 0)[..10]).await.unwrap();
    polled = polling_goes_on(&t, polled, "malformed chunks").await;

    eprintln!("opcua hostile: 1,000 connections");
    // 1,000 connections that say Hello and nothing more.
    let mut held = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(&hello(&url, 65536, 0)).await.unwrap();
        held.push(s);
    }
    polled = polling_goes_on(&t, polled, "1,000 connections").await;
    let good = session(&url, &t._dir.path().join("pki-good"))
        .await
        .expect("a client connects while 1,000 connections are held");
    let rss_held = t.peak_rss_mb();
    // The server closes a connection that goes no further than Hello (its hello timeout, 5 s):
    // a flood of them holds memory for seconds, not for good.
    for mut s in held.into_iter().chain([half]) {
        let mut rest = Vec::new();
        tokio::time::timeout(GUARD, s.read_to_end(&mut rest))
            .await
            .expect("a connection that never opens a channel is closed")
            .ok();
    }

    eprintln!("opcua hostile: Sessions past max_sessions");
    // Sessions past max_sessions (20): the rest refused, nothing else disturbed.
    let mut sessions = vec![good];
    let mut refused = Vec::new();
    for i in 0..30 {
        match session(&url, &t._dir.path().join(format!("pki-{i}"))).await {
            Ok(s) => sessions.push(s),
            Err(e) => refused.push(e),
        }
    }
    assert_eq!(sessions.len(), 20, "refused: {refused:?}");
    assert!(
        refused.iter().all(|e| *e == StatusCode::BadTooManySessions),
        "{refused:?}"
    );
    polled = polling_goes_on(&t, polled, "sessions past the limit").await;

    eprintln!("opcua hostile: Requests for 100,000 nodes");
    // Requests for 100,000 nodes: refused whole, the session lives on.
    let s = &sessions[0];
    let browse: Vec<BrowseDescription> = (0..100_000)
        .map(|_| BrowseDescription {
            node_id: ObjectId::ObjectsFolder.into(),
            ..Default::default()
        })
        .collect();
    let r = tokio::time::timeout(GUARD, s.browse(&browse, 0, None))
        .await
        .unwrap();
    assert!(r.is_err(), "a browse of 100,000 nodes is refused");
    let read: Vec<ReadValueId> = (0..100_000)
        .map(|_| ReadValueId::from(NodeId::from(ObjectId::Server)))
        .collect();
    let r = tokio::time::timeout(GUARD, s.read(&read, TimestampsToReturn::Both, 0.0))
        .await
        .unwrap();
    assert!(r.is_err(), "a read of 100,000 nodes is refused");

    eprintln!("opcua hostile: Subscription floods");
    // Subscription floods: subscriptions past the session's limit, monitored items past the
    // subscription's.
    let flood = &sessions[1];
    let mut subs = Vec::new();
    let mut sub_refused = 0;
    for _ in 0..50 {
        let r = flood
            .create_subscription(
                Duration::from_millis(100),
                30,
                10,
                0,
                0,
                true,
                DataChangeCallback::new(|_, _| {}),
            )
            .await;
        match r {
            Ok(id) => subs.push(id),
            Err(_) => sub_refused += 1,
        }
    }
    assert!(sub_refused > 0, "subscriptions are limited per session");
    let mut items_refused = 0;
    for _ in 0..20 {
        let items: Vec<MonitoredItemCreateRequest> = (0..1000)
            .map(|_| NodeId::from(ua::types::VariableId::Server_ServerStatus_CurrentTime).into())
            .collect();
        match flood
            .create_monitored_items(subs[0], TimestampsToReturn::Both, items)
            .await
        {
            Ok(made) => {
                items_refused += made
                    .iter()
                    .filter(|m| m.result.status_code.is_bad())
                    .count();
            }
            Err(_) => items_refused += 1000,
        }
    }
    assert!(
        items_refused > 0,
        "monitored items are limited per subscription"
    );
    polling_goes_on(&t, polled, "subscription floods").await;

    eprintln!("opcua hostile: The first session still reads");
    // The first session still reads, and the dashboard answered throughout.
    let dv = s
        .read(
            &[ReadValueId::from(NodeId::from(
                ua::types::VariableId::Server_ServerStatus_State,
            ))],
            TimestampsToReturn::Both,
            0.0,
        )
        .await
        .expect("a session outlives the attacks");
    assert!(dv[0].value.is_some());
    w.stop.store(true, Relaxed);
    watcher.await.unwrap();
    assert_eq!(w.healthz_failed.load(Relaxed), 0);
    assert!(w.healthz_ok.load(Relaxed) > 0);
    // Refused requests are counted (sessions past the limit, the two requests for 100,000
    // nodes, the subscriptions past the session's limit).
    let refused = "edge_opcua_rejected_requests_total{kind=\"all\"}";
    wait_for_async("refusals counted", || async {
        t.metric(refused).await >= f64::from(10 + 2 + sub_refused)
    })
    .await;
    let metrics = http_get(t.http, "/metrics").await;
    let counted: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("edge_opcua_"))
        .collect();
    eprintln!(
        "RSS {rss0:.1} MB before, {rss_held:.1} MB peak with 1,000 connections held; {sub_refused} subscriptions and {items_refused} monitored items refused\n{}",
        counted.join("\n")
    );
}
