//! What a WebSocket client receives and how: slow clients under each overflow policy,
//! heartbeats, batches and emergencies, pushes only once stored, no leaks over many
//! connections, and the dashboard's files as a browser fetches them.

mod common;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::wsclient::*;
use common::*;
use edge_gateway::metrics::PushKind;
use edge_gateway::modbus::simulator::{Fault, Profile, PUMP};
use edge_gateway::Gateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection whose TCP receive window is tiny and which never reads: the server's writes
/// to it block almost at once.
async fn stalled_client(addr: SocketAddr) -> Stream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(2048).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let (s, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    s
}

/// The stalled client reads at last, as a client that caught up does: its receive buffer grows
/// back to a normal size. Kept at 2 KB, every 2 KB it drained cost a round trip through both
/// kernels (its window is all the server may send), so the megabytes of snapshots queued in
/// the server's socket took 400 ms to drain on a quiet machine and over 30 s on a loaded one.
fn reads_at_last(s: &Stream) {
    use std::os::fd::AsRawFd;
    let MaybeTlsStream::Plain(tcp) = s.get_ref() else {
        unreachable!("a stalled client is plain TCP")
    };
    let size: libc::c_int = 1 << 20;
    // SAFETY: setsockopt on a socket this stream owns, with a c_int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            tcp.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
}

async fn login_stalled(s: &mut Stream) {
    s.send(Message::Text(json!({"requestId": "1", "service": "auth.login", "params": {"username": "viewer", "password": "viewer"}}).to_string().into()))
        .await
        .unwrap();
    // Read only the login reply, then never again.
    loop {
        if let Some(Ok(Message::Text(t))) = s.next().await {
            if t.contains("auth.login") {
                break;
            }
        }
    }
}

/// Fifty devices of thirty points: snapshots of ~150 KB fill a stalled client's socket fast.
async fn big_gateway(push: &str) -> (Gateway, tempfile::TempDir) {
    big_gateway_of(push, 50).await
}

/// `devices` devices of thirty points.
async fn big_gateway_of(push: &str, devices: u8) -> (Gateway, tempfile::TempDir) {
    let (_sim, addr, c) = start_sim(Profile::Bench(devices)).await;
    std::mem::forget(c);
    let dir = tempfile::tempdir().unwrap();
    let mut body = format!("{}{}", users_and_push(push), tcp_bus(&addr.to_string()));
    let pts: Vec<String> = (0..30)
        .map(|i| format!(r#"{{ id = "p{i}", table = "holding", address = {i}, type = "u16" }}"#))
        .collect();
    let _ = write!(body, "[templates.t]\npoints = [{}]\n", pts.join(", "));
    for u in 1..=devices {
        let _ = write!(body, "[[devices]]\nid = \"d{u}\"\nbus = \"b\"\nunit = {u}\ntemplate = \"t\"\npoll_interval_ms = 500\n");
    }
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    (gw, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_pushes_by_its_policy_and_never_delays_the_others() {
    let (gw, _dir) = big_gateway("interval_ms = 500\nqueue_capacity = 4\noverflow = \"drop_oldest\"\nheartbeat_timeout_s = 600").await;
    let mut slow = stalled_client(gw.http_addr).await;
    login_stalled(&mut slow).await;
    let mut fast = Ws::connect(gw.http_addr).await;
    fast.login("viewer", "viewer").await;
    let m = &gw.metrics.push;
    // The healthy client keeps getting snapshots while the stalled one's drops pile up.
    let mut snapshots = 0;
    while m.count(PushKind::Snapshot, true) < 5 || snapshots < 10 {
        fast.next_push("push.snapshot").await;
        snapshots += 1;
        assert!(snapshots < 200, "the stalled client never overflowed");
    }
    assert_eq!(
        gw.shared.hub.len(),
        2,
        "drop_oldest keeps the slow client connected"
    );
    let sent = m.count(PushKind::Snapshot, false);
    let dropped = m.count(PushKind::Snapshot, true);
    assert!(sent >= 10 && dropped >= 5, "sent {sent} dropped {dropped}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disconnect_policy_drops_a_slow_client_and_frees_it() {
    // A queue of 10: deep enough for a healthy client on a busy machine to fall behind by a few
    // reports without being dropped (a queue of 2 was not), shallow enough that the stalled
    // client overflows it within seconds.
    let (gw, _dir) = big_gateway("interval_ms = 500\nqueue_capacity = 10\noverflow = \"disconnect\"\nheartbeat_timeout_s = 600").await;
    let mut slow = stalled_client(gw.http_addr).await;
    login_stalled(&mut slow).await;
    let mut fast = Ws::connect(gw.http_addr).await;
    fast.login("viewer", "viewer").await;
    wait_for("slow client dropped", || gw.shared.hub.len() == 1).await;
    // The push that overflowed it (a snapshot or a first telemetry report) is counted.
    let dropped: u64 = PushKind::ALL
        .iter()
        .map(|&k| gw.metrics.push.count(k, true))
        .sum();
    assert!(dropped >= 1);
    // The healthy one is unaffected.
    fast.next_push("push.snapshot").await;
    wait_for("its connection freed", || {
        gw.metrics.push.clients.load(Relaxed) == 1
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_pongs_is_dropped_after_the_heartbeat_timeout_and_freed() {
    let (gw, _sim, _dir) = gateway("heartbeat_interval_s = 1\nheartbeat_timeout_s = 2").await;
    let mut silent = Ws::connect(gw.http_addr).await;
    silent.login("viewer", "viewer").await;
    // A client that keeps reading answers pings automatically and stays.
    let mut alive = Ws::connect(gw.http_addr).await;
    alive.login("viewer", "viewer").await;
    let keep_reading = tokio::spawn(async move { while alive.s.next().await.is_some() {} });
    assert_eq!(gw.shared.hub.len(), 2);
    wait_for("silent client dropped", || gw.shared.hub.len() == 1).await;
    wait_for("its connection freed", || {
        gw.metrics.push.clients.load(Relaxed) == 1
    })
    .await;
    keep_reading.abort();
    drop(silent);
    gw.shutdown().await;
}

/// RFC 6455 §5.5: a client's ping gets its pong, and its close a close back, so a browser sees
/// a clean close rather than 1006 (tungstenite reads; the connection's writer sends what it
/// answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_ping_gets_a_pong_and_its_close_a_close() {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let (gw, _sim, _dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    let payload = tokio_tungstenite::tungstenite::Bytes::from_static(b"are you there");
    ws.s.send(Message::Ping(payload.clone())).await.unwrap();
    let pong = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.s.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Pong(p))) => break p,
            Some(Ok(_)) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    };
    assert_eq!(pong, payload);
    ws.s.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    let answer = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.s.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame back, got {other:?}"),
        }
    };
    assert_eq!(answer, Some(CloseCode::Normal));
    wait_for("freed", || gw.metrics.push.clients.load(Relaxed) == 0).await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connect_disconnect_cycles_leave_no_task_or_registry_entry_behind() {
    let (gw, _sim, _dir) = gateway("max_clients = 50").await;
    let handle = tokio::runtime::Handle::current();
    // Warm up once so lazily started tasks exist before the baseline.
    {
        let mut ws = Ws::connect(gw.http_addr).await;
        ws.login("viewer", "viewer").await;
    }
    wait_for("idle", || gw.metrics.push.clients.load(Relaxed) == 0).await;
    let baseline = handle.metrics().num_alive_tasks();
    for i in 0..10_000 {
        let mut ws = Ws::connect(gw.http_addr).await;
        if i % 200 == 0 {
            assert_eq!(code(&ws.login("viewer", "viewer").await), 0);
            ws.call("subscribe", json!({"deviceIds": ["pump"]})).await;
        }
        if i % 2 == 0 {
            let _ = ws.s.close(None).await;
        } // else: dropped without a close handshake.
    }
    wait_for("every connection gone", || {
        gw.metrics.push.clients.load(Relaxed) == 0
    })
    .await;
    wait_for("tasks back to the baseline", || {
        handle.metrics().num_alive_tasks() <= baseline
    })
    .await;
    assert_eq!(gw.shared.hub.index_sizes(), (0, 0, 0));
    assert_eq!(
        (gw.shared.admission.free(), gw.shared.admission.pending()),
        (50, 0),
        "every connection slot returned"
    );
    gw.shutdown().await;
}

/// A big installation's `devices.list` (and so its snapshot) is far larger than a request may
/// be: it is sent whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_installation_is_listed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut body = format!("{}{}", users_and_push(""), tcp_bus("127.0.0.1:1"));
    for d in 0..100 {
        let points: Vec<String> = (0..30)
            .map(|p| format!("{{ id = \"a-rather-long-descriptive-point-name-{p}\", table = \"holding\", address = {p}, type = \"u16\", unit = \"units\" }}"))
            .collect();
        let _ = write!(
            body,
            "[[devices]]\nid = \"device-{d}\"\nbus = \"b\"\nunit = 1\npoints = [{}]\n",
            points.join(", ")
        );
    }
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("viewer", "viewer").await;
    let r = ws.call("devices.list", json!({})).await;
    assert_eq!(code(&r), 0);
    assert!(r.to_string().len() > 300_000, "{}", r.to_string().len());
    assert_eq!(r["data"]["devices"].as_array().unwrap().len(), 100);
    gw.shutdown().await;
}

/// Hostile test, attack 13: with the store unable to write (a full disk), events were pushed to
/// clients and never stored, and after a restart their ids went to other events. Now an event
/// is pushed only once committed: held while the store refuses it, pushed when it takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_store_cannot_take_is_pushed_only_once_it_is_committed() {
    let (gw, sim, dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    assert_eq!(code(&ws.login("viewer", "viewer").await), 0);
    wait_for("the pump online", || online(&gw, "pump")).await;
    // Event writes refused the way ENOSPC refuses them.
    let db = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    db.execute_batch(
        "CREATE TRIGGER full_e BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'full'); END;",
    )
    .unwrap();
    sim.set_fault(PUMP, Some(Fault::Silent));
    wait_for_async("503 while the event cannot be stored", || async {
        healthz(gw.http_addr).await.starts_with("HTTP/1.0 503")
    })
    .await;
    let early = tokio::time::timeout(Duration::from_secs(2), ws.next_push("push.event")).await;
    assert!(early.is_err(), "pushed before it was stored: {early:?}");
    db.execute_batch("DROP TRIGGER full_e;").unwrap();
    let p = ws.next_push("push.event").await;
    assert_eq!(p["data"]["deviceId"], "pump", "{p}");
    let id = p["data"]["id"].as_str().unwrap().to_string();
    let seq: i64 = db
        .query_row(
            "SELECT device_seq FROM events WHERE event_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .expect("the pushed event is in the store");
    assert_eq!(Some(seq), p["data"]["deviceSeq"].as_i64());
    gw.shutdown().await;
}

/// #13: a client that cannot keep up gets snapshots less often, up to 8× the period, while a
/// healthy one keeps the configured period; `system.stats` shows every connection (admins only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_clients_snapshot_period_grows_to_eight_times_and_stats_show_each_connection() {
    let (gw, _dir) = big_gateway("interval_ms = 500\nqueue_capacity = 4\noverflow = \"drop_oldest\"\nheartbeat_timeout_s = 600").await;
    let mut slow = stalled_client(gw.http_addr).await;
    login_stalled(&mut slow).await;
    let mut admin = Ws::connect(gw.http_addr).await;
    admin.login("admin", "admin").await;
    let mut conns = Vec::new();
    for _ in 0..600 {
        let r = admin.call("system.stats", json!({})).await;
        conns = r["data"]["connections"].as_array().unwrap().clone();
        let by = |user: Option<&str>| {
            conns
                .iter()
                .find(|c| c["user"].as_str() == user)
                .cloned()
                .unwrap_or(Json::Null)
        };
        if by(Some("viewer"))["snapshotMs"] == 4000 {
            // (It slowed down before its queue overflowed: it may have dropped nothing yet.)
            assert!(by(Some("viewer"))["dropped"].is_u64());
            assert_eq!(by(Some("viewer"))["capacity"], 4);
            assert!(by(Some("admin"))["sent"].as_u64().unwrap() > 0);
            assert!(
                by(Some("admin"))["snapshotMs"].as_u64().unwrap() <= 1000,
                "{conns:#?}"
            );
            admin.pushes.clear();
            // A connection not logged in (yet): listed with a null user.
            // (The handshake ends before the server has registered the socket: ask until it has.)
            let _pending = Ws::connect(gw.http_addr).await;
            let mut r = Json::Null;
            let mut pending = None;
            for _ in 0..200 {
                r = admin.call("system.stats", json!({})).await;
                pending = r["data"]["connections"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["user"].is_null())
                    .cloned();
                if pending.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let pending = pending.unwrap_or_else(|| panic!("no pending connection in {r}"));
            assert!(pending["addr"].as_str().unwrap().starts_with("127.0.0.1:"));
            let mut viewer = Ws::connect(gw.http_addr).await;
            viewer.login("viewer", "viewer").await;
            let r = viewer.call("system.stats", json!({})).await;
            assert!(r["data"].get("connections").is_none(), "admins only: {r}");
            gw.shutdown().await;
            return;
        }
        admin.pushes.clear();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the slow client's period never reached 8×: {conns:#?}");
}

/// #13: with `batchMs` normal events come merged in `push.events` frames, in order, a few a
/// second; an emergency in the middle comes alone as `push.event`, ahead of the normal events
/// still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ms_merges_normal_events_and_an_emergency_goes_alone_at_once() {
    use edge_gateway::config::Priority;
    let (gw, _sim, _dir) =
        gateway("interval_ms = 3600000\n[events]\nmax_per_device_per_s = 100000").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("viewer", "viewer").await;
    let bad = ws.call("subscribe", json!({"batchMs": 20})).await;
    assert_eq!(code(&bad), 400, "{bad}");
    let sub = ws
        .call(
            "subscribe",
            json!({"batchMs": 500, "telemetry": false, "eventTypes": ["device_abnormal"]}),
        )
        .await;
    assert_eq!(code(&sub), 0);
    let started = std::time::Instant::now();
    for i in 0..1000 {
        let ts = edge_gateway::model::now_ms();
        gw.inject_draft(info_draft(0, Priority::Normal, &format!("storm {i}"), ts))
            .await;
        if i == 599 {
            gw.inject_draft(info_draft(0, Priority::Emergency, "emergency", ts))
                .await;
        }
    }
    // Frames in arrival order until every storm event and the emergency are in.
    let mut frames: Vec<Json> = Vec::new();
    let mut storm: Vec<String> = Vec::new();
    let mut emergency_at = None;
    while storm.len() < 1000 || emergency_at.is_none() {
        let f = ws.next_push_any().await;
        match f["service"].as_str() {
            Some("push.events") => {
                for e in f["data"]["events"].as_array().unwrap() {
                    storm.push(e["message"].as_str().unwrap().to_string());
                }
            }
            Some("push.event") => {
                assert_eq!(
                    f["data"]["message"], "emergency",
                    "only the emergency alone: {f}"
                );
                emergency_at = Some(storm.len());
            }
            _ => continue,
        }
        frames.push(f);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let expected: Vec<String> = (0..1000).map(|i| format!("storm {i}")).collect();
    assert_eq!(storm, expected, "every event, in order");
    // Ahead of the normal events injected just before it, which were still waiting.
    assert!(
        emergency_at.unwrap() < 600,
        "emergency after {emergency_at:?} storm events"
    );
    let batches = frames.len() - 1;
    assert!(
        (batches as f64) <= 3.0 * elapsed.ceil() + 1.0,
        "{batches} push.events frames in {elapsed:.1} s"
    );
    gw.shutdown().await;
}

/// #13: a slow client (a tiny receive window, not reading) under `drop_oldest` and `drop_new`,
/// a snapshot of 200 devices every 500 ms, and 20 emergency alarms: once it reads, it has every
/// emergency in order, or it was disconnected (1008) — never a silent loss; a healthy client
/// beside it has them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_every_emergency_in_order_or_is_disconnected() {
    use edge_gateway::config::Priority;
    for policy in ["drop_oldest", "drop_new"] {
        let push = format!(
            "interval_ms = 500\nqueue_capacity = 100\noverflow = \"{policy}\"\nheartbeat_timeout_s = 600"
        );
        let (gw, _dir) = big_gateway_of(&push, 200).await;
        let mut slow = stalled_client(gw.http_addr).await;
        login_stalled(&mut slow).await;
        let mut fast = Ws::connect(gw.http_addr).await;
        fast.login("viewer", "viewer").await;
        // The stalled client's socket is full of snapshots before the alarms come.
        fast.next_push("push.snapshot").await;
        fast.next_push("push.snapshot").await;
        for i in 0..20 {
            let ts = edge_gateway::model::now_ms();
            gw.inject_draft(info_draft(
                0,
                Priority::Emergency,
                &format!("alarm {i}"),
                ts,
            ))
            .await;
        }
        let expected: Vec<String> = (0..20).map(|i| format!("alarm {i}")).collect();
        // The healthy client: all of them, in order.
        let mut got = Vec::new();
        while got.len() < 20 {
            let e = fast.next_push("push.event").await;
            if let Some(m) = e["data"]["message"]
                .as_str()
                .filter(|m| m.starts_with("alarm "))
            {
                got.push(m.to_string());
            }
        }
        assert_eq!(got, expected, "{policy}: the healthy client");
        // The slow one, reading at last: every emergency in order, or closed with 1008.
        reads_at_last(&slow);
        let mut slow_got = Vec::new();
        let mut closed = None;
        while slow_got.len() < 20 {
            match tokio::time::timeout(Duration::from_secs(30), slow.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Json = serde_json::from_str(&t).unwrap();
                    if v["service"] == "push.event" {
                        if let Some(m) = v["data"]["message"]
                            .as_str()
                            .filter(|m| m.starts_with("alarm "))
                        {
                            slow_got.push(m.to_string());
                        }
                    }
                }
                Ok(Some(Ok(Message::Close(f)))) => {
                    closed = Some(f.map(|f| u16::from(f.code)));
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) => {
                    closed = Some(None);
                    break;
                }
                Err(e) => {
                    panic!("{policy}: the slow client got {slow_got:?} and then nothing ({e})")
                }
            }
        }
        match closed {
            None => assert_eq!(slow_got, expected, "{policy}: the slow client"),
            Some(code) => {
                assert!(
                    code.is_none_or(|c| c == 1008),
                    "{policy}: closed with {code:?}"
                );
                assert_eq!(
                    slow_got[..],
                    expected[..slow_got.len()],
                    "{policy}: what came before the close came in order"
                );
            }
        }
        gw.shutdown().await;
    }
}

/// The dashboard's files: embedded, gzipped for clients that take it, revalidated by ETag.
#[tokio::test]
async fn the_dashboard_files_are_served_with_gzip_and_etags() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, _sim, _dir) = gateway("").await;
    let get = |path: &'static str, headers: String| async move {
        let mut s = TcpStream::connect(gw.http_addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{headers}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&out[..split]).to_lowercase(),
            out[split + 4..].to_vec(),
        )
    };
    let (head, body) = get("/", String::new()).await;
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("/app/main.js"));
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .to_string();
    let (head, _) = get("/", format!("If-None-Match: {etag}\r\n")).await;
    assert!(head.starts_with("http/1.0 304"), "{head}");
    let (head, body) = get("/app/main.js", "Accept-Encoding: gzip, br\r\n".into()).await;
    assert!(
        head.contains("content-encoding: gzip") && head.contains("text/javascript"),
        "{head}"
    );
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzip stream");
    let (head, _) = get("/app/nope.js", String::new()).await;
    assert!(head.starts_with("http/1.0 404"), "{head}");
    gw.shutdown().await;
}
