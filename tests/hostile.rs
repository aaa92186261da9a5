//! Hostile input against a real gateway process: each attack of the hostile test, reproduced
//! as it was found, and what it gets now (RELIABILITY.md has the table).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::target::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket to `/ws` from a chosen loopback source address (all of 127/8 is local).
async fn ws_from(src: IpAddr, addr: SocketAddr) -> Ws {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src, 0)).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .expect("ws handshake");
    ws
}

/// Replies on `ws` until `n` have come (pushes skipped), or the socket closes.
async fn replies(ws: &mut Ws, n: usize) -> Vec<Json> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let j: Json = serde_json::from_str(&t).unwrap();
                if j.get("requestId").is_some() {
                    out.push(j);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
    }
    out
}

/// A request on `ws` and its reply.
async fn call(ws: &mut Ws, service: &str, params: Json) -> Json {
    let frame = json!({"requestId": service, "service": service, "params": params});
    ws.send(Message::Text(frame.to_string().into()))
        .await
        .unwrap();
    replies(ws, 1).await.remove(0)
}

/// A socket from `src` logged in as `user` (password "pw"); panics if the login is refused.
async fn logged_in(src: IpAddr, http: SocketAddr, user: &str) -> Ws {
    let mut ws = ws_from(src, http).await;
    let r = call(
        &mut ws,
        "auth.login",
        json!({"username": user, "password": "pw"}),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    ws
}

/// Attack 3: logins sent at once, from many addresses, each ran argon2id (19 MiB): RSS went
/// from 10 MB to 1.1 GB. Now at most two checks run at a time, and each address gets no more
/// guesses than its limit however many it sends at once.
///
/// The line, 64 MB, is the box's (release) binary's. This runs the debug binary, whose
/// own start-up peak grows with the code (22 MB when this test was written, 24-25 MB now, which
/// left the absolute figure at 63.6-64.2 MB: a coin toss). What is asserted is what the design
/// guarantees: the flood adds no more than the two checks' 19 MiB each and a little, nothing
/// per login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_from_many_addresses_adds_no_more_than_two_checks_of_memory() {
    let t = Target::start("").await;
    let before = t.peak_rss_mb();
    println!("peak RSS before: {before:.1} MB");
    let mut socks = Vec::new();
    for i in 0..50u8 {
        socks.push(ws_from(IpAddr::from([127, 0, 3, i + 1]), t.http).await);
    }
    // 50 addresses × 4 frames = 200 logins in flight at once.
    let all = futures_util::future::join_all(socks.iter_mut().map(|ws| async move {
        for i in 0..4 {
            let frame = json!({"requestId": i.to_string(), "service": "auth.login",
                               "params": {"username": "admin", "password": format!("guess{i}")}});
            ws.send(Message::Text(frame.to_string().into()))
                .await
                .unwrap();
        }
        replies(ws, 4).await
    }))
    .await;
    let codes: Vec<i64> = all
        .iter()
        .flatten()
        .map(|r| r["code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes.len(), 200, "every login answered");
    assert!(codes.iter().all(|c| *c == 401 || *c == 429), "{codes:?}");
    let peak = t.peak_rss_mb();
    println!("peak RSS after 200 logins at once: {peak:.1} MB");
    // Two argon2id checks at 19 MiB each, and 4 MiB for everything else the flood touches
    // (50 sockets, their requests and replies).
    let grew = peak - before;
    assert!(
        grew < 2.0 * 19.0 + 4.0,
        "the flood took RSS from {before:.1} to {peak:.1} MB (+{grew:.1})"
    );
    // The right password still gets in afterwards.
    logged_in(IpAddr::from([127, 0, 4, 1]), t.http, "admin").await;
}

/// A raw HTTP request's status line.
async fn status_of(addr: SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    // The status line only: a refused upgrade may leave the connection open.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.contains(&b'\n') {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

fn upgrade_request(host: &str, origin: Option<&str>) -> String {
    let origin = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\n{origin}Connection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Attacks 5 and 6: a DNS-rebinding page (`Host: evil.example`, matching Origin) reached `/ws`,
/// an Origin without a scheme passed, and a foreign Origin wrote 12,966 log lines a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_host_or_a_foreign_origin_is_refused_and_logged_once() {
    let t = Target::start("").await;
    let host = t.http.to_string();
    let evil = "evil.example:18080";
    let s = status_of(
        t.http,
        &upgrade_request(evil, Some("http://evil.example:18080")),
    )
    .await;
    assert!(s.contains(" 403 "), "{s}");
    let s = status_of(
        t.http,
        &format!("GET / HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(s.contains(" 403 "), "the dashboard too: {s}");
    let s = status_of(t.http, &upgrade_request(&host, Some(&host))).await;
    assert!(s.contains(" 403 "), "an Origin without a scheme: {s}");
    // The page's own origin, by IP, still works.
    let s = status_of(
        t.http,
        &upgrade_request(&host, Some(&format!("http://{host}"))),
    )
    .await;
    assert!(s.contains(" 101 "), "{s}");
    // A flood of foreign Origins: every one refused, one log line.
    for _ in 0..300 {
        let s = status_of(t.http, &upgrade_request(&host, Some("http://evil.example"))).await;
        assert!(s.contains(" 403 "), "{s}");
    }
    let refused = t.metric("edge_ws_rejected_total{reason=\"origin\"}").await;
    assert_eq!(refused, 301.0);
    assert_eq!(
        t.log_lines("websocket refused"),
        1,
        "one line per address per minute"
    );
}

/// Attack 4: 1,000 sockets that never log in kept every technician at 503. Now those not
/// logged in have their own cap and one address only its share of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_log_in_cannot_keep_a_technician_out() {
    let t = Target::start("").await;
    let from = IpAddr::from([127, 0, 5, 1]);
    let mut held = Vec::new();
    let mut refused = 0;
    // 300 of them (the finding used 1,000): enough to pass the cap many times over, and done
    // well inside the 10 s login deadline that would start to free the held ones.
    for _ in 0..300 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        let tcp = sock.connect(t.http).await.unwrap();
        match tokio_tungstenite::client_async(format!("ws://{}/ws", t.http), tcp).await {
            Ok((ws, _)) => held.push(ws),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        held.len(),
        16,
        "one address's share of the sockets not logged in"
    );
    assert_eq!(refused, 284);
    logged_in(IpAddr::from([127, 0, 6, 1]), t.http, "admin").await;
    assert_eq!(
        t.metric("edge_ws_rejected_total{reason=\"pending_per_address\"}")
            .await,
        284.0
    );
    assert_eq!(t.metric("edge_ws_clients{state=\"pending\"}").await, 16.0);
    assert_eq!(t.log_lines("websocket refused"), 1);
}

/// Attack 8: one half-sent request (`GET /healthz HTTP/1.1\r\nHost: x\r\n`, never finished)
/// blocked a reload (no telemetry stored, `/healthz` refused for 30 s) and a stop (still
/// running 100 s after SIGTERM), and a byte-a-second client held its connection for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_holds_neither_a_reload_nor_a_stop_nor_its_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut t = Target::start("").await;
    // The header timeout (10 s) closes a half-sent request and a byte-a-second one (hang
    // guards, not timings).
    let mut half = TcpStream::connect(t.http).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut drip = TcpStream::connect(t.http).await.unwrap();
    let dripping = tokio::spawn(async move {
        let bytes = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: ";
        for b in bytes.iter().chain([b'x'; 60].iter()) {
            if drip.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        false
    });
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(30), half.read(&mut buf))
        .await
        .expect("the half-sent request's connection still open after 30 s");
    assert!(
        matches!(n, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).contains(" 408 "),
        "{n:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(40), dripping)
            .await
            .expect("a byte-a-second client still connected after 40 s")
            .unwrap(),
        "the dripping client was cut off"
    );
    // A reload goes through while a half-sent request hangs: /healthz answers throughout (the
    // socket stays open across it, a client waits in its backlog).
    let mut hanging = TcpStream::connect(t.http).await.unwrap();
    hanging
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    signal(&t, "-HUP");
    for _ in 0..20 {
        assert!(
            healthz_json(t.http).await.is_some(),
            "/healthz refused during a reload"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("the reload in the log", || {
        t.log_lines("config reloaded") > 0
    })
    .await;
    // A stop with a half-sent request pending: exits at once, cleanly.
    let mut again = TcpStream::connect(t.http).await.unwrap();
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    stops_cleanly(&mut t);
}

/// Attack 9: at 1,024 descriptors (1,100 idle TCP connections) `/healthz` was unreachable,
/// `events.query` and `points.history` answered 500 ("move it aside"), and Modbus could not
/// reconnect. Now one address holds at most its share of connections (the rest are closed at
/// once), queries use connections the store opened at start, and the links keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_descriptor_limit_leave_healthz_queries_and_devices_working() {
    // A limit of 512 and 600 connections: past the limit, with few descriptors in this test.
    let t = Target::start_with("", Some(512)).await;
    let mut ws = logged_in(IpAddr::from([127, 0, 9, 1]), t.http, "viewer").await;
    let from = IpAddr::from([127, 0, 8, 1]);
    let mut idle = Vec::new();
    for _ in 0..600 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from, 0)).unwrap();
        if let Ok(c) = sock.connect(t.http).await {
            idle.push(c);
        }
    }
    let h = healthz_json(t.http).await.expect("/healthz answers");
    assert_eq!(h["devices"]["online"], 2, "{h}");
    for (service, params) in [
        ("events.query", json!({})),
        ("devices.list", json!({})),
        (
            "points.history",
            json!({"deviceId": "boiler", "pointId": "setpoint"}),
        ),
    ] {
        let r = call(&mut ws, service, params).await;
        assert_eq!(r["code"], 0, "{service}: {r}");
    }
    assert!(t.log_lines("too many open") <= 1);
    drop(idle);
}

/// Attack 14: `rm gateway.db*` under a running gateway: `/healthz` stayed 200 "ok", nothing
/// was logged, and everything after was lost at the restart. Now the probe notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_file_removed_under_the_gateway_turns_healthz_503_with_a_clear_line() {
    let t = Target::start("").await;
    let data = t._dir.path().join("data");
    for f in ["gateway.db", "gateway.db-wal", "gateway.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    wait_for_async("503", || async {
        healthz(t.http).await.starts_with("HTTP/1.0 503")
    })
    .await;
    wait_for("the log line", || {
        t.log_lines("was removed or replaced") == 1
    })
    .await;
}

/// A raw WebSocket after the upgrade: `frame` sent, the close code answered (0 if none).
async fn close_code_for(addr: SocketAddr, frame: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let host = addr.to_string();
    tcp.write_all(upgrade_request(&host, None).as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed during the upgrade");
        buf.extend_from_slice(&chunk[..n]);
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(String::from_utf8_lossy(&buf[..head_end]).contains(" 101 "));
    let mut rest = buf[head_end..].to_vec();
    tcp.write_all(frame).await.unwrap();
    loop {
        // Server frames: unmasked, short lengths here.
        while rest.len() >= 2 && rest.len() >= 2 + (rest[1] & 0x7f) as usize {
            let len = (rest[1] & 0x7f) as usize;
            if rest[0] & 0x0f == 0x8 {
                return if len >= 2 {
                    u16::from_be_bytes([rest[2], rest[3]])
                } else {
                    0
                };
            }
            rest.drain(..2 + len);
        }
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => rest.extend_from_slice(&chunk[..n]),
            _ => return 0,
        }
    }
}

/// Attack 17: protocol errors closed the connection without a status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_close_with_the_right_status_code() {
    let t = Target::start("").await;
    // A masked text frame (mask 0) whose payload is not UTF-8.
    assert_eq!(
        close_code_for(t.http, &[0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28]).await,
        1007
    );
    // An unmasked frame from a client.
    assert_eq!(
        close_code_for(t.http, &[0x81, 0x02, b'h', b'i']).await,
        1002
    );
    // RSV1 set with no extension negotiated.
    assert_eq!(
        close_code_for(t.http, &[0xC1, 0x82, 0, 0, 0, 0, b'h', b'i']).await,
        1002
    );
}

/// #31, item 2: one socket that never reads sent 60,000 invalid one-byte frames; their 400
/// replies filled its queue, the reader waited on the full queue, and a reload froze 42.5 s
/// and a stop 42.1 s (past systemd's 10 s: SIGKILL, no final flush). Now a client that does
/// not read its replies is closed, and a reload and a stop go through at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_reads_holds_neither_a_reload_nor_a_stop() {
    use tokio::io::AsyncWriteExt;
    let mut t = Target::start("").await;
    let mut tcp = TcpStream::connect(t.http).await.unwrap();
    tcp.write_all(upgrade_request(&t.http.to_string(), None).as_bytes())
        .await
        .unwrap();
    // Masked one-byte text frames ("x", not JSON: a 400 each), never reading a byte back.
    let frame = [0x81u8, 0x81, 1, 2, 3, 4, b'x' ^ 1];
    let flood: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 60_000)
        .collect();
    let flooding = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(20), tcp.write_all(&flood)).await;
        tcp
    });
    signal(&t, "-HUP");
    wait_for("the reload in the log", || {
        t.log_lines("config reloaded") > 0
    })
    .await;
    stops_cleanly(&mut t);
    drop(flooding.await);
}

/// #31, item 5: with a hard limit of 1,024 descriptors, six addresses' idle connections shut
/// `/healthz` out (each address's 128 within its share, together past the cap of half the
/// descriptors). Now the greediest address's oldest connection makes room for a newcomer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_six_addresses_leave_healthz_answering() {
    let t = Target::start_with("", Some(1024)).await;
    let mut idle = Vec::new();
    for a in 1..=6u8 {
        let from = IpAddr::from([127, 0, 7, a]);
        for _ in 0..100 {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind(SocketAddr::new(from, 0)).unwrap();
            if let Ok(c) = sock.connect(t.http).await {
                idle.push(c);
            }
        }
    }
    for _ in 0..5 {
        let h = healthz_json(t.http).await.expect("/healthz answers");
        assert_eq!(h["status"], "ok", "{h}");
    }
    drop(idle);
}

/// #31: "stop completes within 5 s whatever the peers do". A MySQL server and an MQTT broker
/// that accept the connection and never answer a byte (a firewall's black hole, a hung
/// server) must not hold a stop: systemd kills at 10 s, and the last flush is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_that_never_answer_hold_no_stop() {
    // Accepts, keeps every connection open, reads nothing and says nothing.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = hole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in hole.incoming().map_while(Result::ok) {
            held.push(c);
        }
    });
    let mut t = Target::start(&format!(
        "[mysql]\nurl = \"mysql://edge@{at}/plant\"\n[mqtt]\nurl = \"mqtt://{at}\"\n"
    ))
    .await;
    // Both sinks connecting (and stuck), telemetry queued for them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = std::time::Instant::now();
    stops_cleanly(&mut t);
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after SIGTERM with hung upstreams; the log:\n{}",
        std::fs::read_to_string(t._dir.path().join("gateway.log")).unwrap_or_default()
    );
}
