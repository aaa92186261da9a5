//! The WebSocket service over real sockets with a real client: the envelope and every code,
//! roles, limits, pushes, slow clients, heartbeats, and no leaks over many connections.

mod common;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use common::*;
use edge_gateway::metrics::PushKind;
use edge_gateway::modbus::simulator::{Fault, Profile, BOILER, PUMP};
use edge_gateway::Gateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Ws {
    s: Stream,
    next_id: u64,
    pushes: VecDeque<Json>,
}

impl Ws {
    async fn connect(addr: SocketAddr) -> Ws {
        let (s, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("ws connect");
        Ws {
            s,
            next_id: 1,
            pushes: VecDeque::new(),
        }
    }

    async fn send_text(&mut self, t: String) {
        self.s.send(Message::Text(t.into())).await.unwrap();
    }

    /// The next text frame as JSON; `None` when the server closed.
    async fn recv(&mut self) -> Option<Json> {
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.s.next())
                .await
                .expect("no frame within 30 s");
            match m {
                Some(Ok(Message::Text(t))) => return Some(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    }

    /// [`Ws::call`], or `None` when the server closes before the reply.
    async fn try_call(&mut self, service: &str, params: Json) -> Option<Json> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send_text(json!({"requestId": id, "service": service, "params": params}).to_string())
            .await;
        loop {
            let m = self.recv().await?;
            if m.get("requestId") == Some(&Json::String(id.clone())) {
                return Some(m);
            }
            self.pushes.push_back(m);
        }
    }

    /// Sends a request and returns its reply (pushes on the way are kept for later).
    async fn call(&mut self, service: &str, params: Json) -> Json {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send_text(json!({"requestId": id, "service": service, "params": params}).to_string())
            .await;
        loop {
            let m = self
                .recv()
                .await
                .expect("connection closed before the reply");
            if m.get("requestId") == Some(&Json::String(id.clone())) {
                assert_eq!(m["service"], service);
                return m;
            }
            self.pushes.push_back(m);
        }
    }

    async fn login(&mut self, user: &str, pw: &str) -> Json {
        self.call("auth.login", json!({"username": user, "password": pw}))
            .await
    }

    /// The next push, whatever its service.
    async fn next_push_any(&mut self) -> Json {
        if let Some(p) = self.pushes.pop_front() {
            return p;
        }
        loop {
            let m = self.recv().await.expect("closed while waiting for a push");
            if m.get("requestId").is_none() {
                return m;
            }
        }
    }

    async fn next_push(&mut self, service: &str) -> Json {
        if let Some(i) = self.pushes.iter().position(|p| p["service"] == service) {
            return self.pushes.remove(i).unwrap();
        }
        loop {
            let m = self.recv().await.expect("closed while waiting for a push");
            if m["service"] == service && m.get("requestId").is_none() {
                return m;
            }
        }
    }
}

fn code(reply: &Json) -> u64 {
    reply["code"].as_u64().unwrap()
}

/// A gateway process's config up to its devices: its data in `dir`, HTTP on port 0, the two
/// users, the simulator's bus.
fn process_head(dir: &std::path::Path, sim: SocketAddr) -> String {
    format!(
        "[gateway]\nid = \"g\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{}{}",
        dir.display().to_string(),
        users_and_push(""),
        tcp_bus(&sim.to_string()),
    )
}

/// Users admin/admin and viewer/viewer, and the push settings given.
fn users_and_push(push: &str) -> String {
    let admin = edge_gateway::cli::hash_password("admin").unwrap();
    let viewer = edge_gateway::cli::hash_password("viewer").unwrap();
    format!(
        "[[users]]\nname = \"admin\"\nrole = \"admin\"\npassword_hash = \"{admin}\"\n\
         [[users]]\nname = \"viewer\"\nrole = \"viewer\"\npassword_hash = \"{viewer}\"\n[push]\n{push}\n"
    )
}

async fn gateway(
    push: &str,
) -> (
    Gateway,
    edge_gateway::modbus::simulator::Simulator,
    tempfile::TempDir,
) {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    std::mem::forget(_c);
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "{}{}{}",
        users_and_push(push),
        tcp_bus(&addr.to_string()),
        BOILER_AND_PUMP
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    (gw, sim, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn every_code_of_the_contract_is_reached_and_the_connection_lives_on() {
    let (gw, sim, _dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;

    // 400: malformed JSON, not an object, missing service, missing and mistyped params.
    ws.send_text("{not json".into()).await;
    let r = ws.recv().await.unwrap();
    assert_eq!((code(&r), r["requestId"].clone()), (400, Json::Null));
    assert!(r["msg"].as_str().unwrap().starts_with("malformed JSON"));
    ws.send_text("[1,2]".into()).await;
    assert_eq!(code(&ws.recv().await.unwrap()), 400);
    ws.send_text(r#"{"requestId":"x"}"#.into()).await;
    let r = ws.recv().await.unwrap();
    assert_eq!((code(&r), r["requestId"].as_str()), (400, Some("x")));
    let r = ws.call("auth.login", json!({"username": "admin"})).await;
    assert_eq!(
        (code(&r), r["msg"].as_str().unwrap()),
        (400, "missing param `password`")
    );
    let r = ws
        .call("auth.login", json!({"username": 7, "password": "x"}))
        .await;
    assert_eq!(
        (code(&r), r["msg"].as_str().unwrap()),
        (400, "param `username` must be a string, not a number")
    );
    // SPEC: an empty required string is 400, not a failed login.
    let r = ws
        .call("auth.login", json!({"username": "", "password": "x"}))
        .await;
    assert_eq!(
        (code(&r), r["msg"].as_str().unwrap()),
        (400, "param `username` must not be empty")
    );

    // 401: not logged in, and wrong password.
    let r = ws.call("devices.list", json!({})).await;
    assert_eq!(
        (code(&r), r["msg"].as_str().unwrap()),
        (401, "not logged in")
    );
    assert_eq!(code(&ws.login("admin", "wrong").await), 401);
    // 404: unknown service (also before login).
    let r = ws.call("no.such", json!({})).await;
    assert_eq!(
        (code(&r), r["msg"].as_str().unwrap()),
        (404, "unknown service `no.such`")
    );

    // 0: login, then the services.
    let r = ws.login("admin", "admin").await;
    assert_eq!(
        (
            code(&r),
            r["msg"].as_str().unwrap(),
            r["data"]["role"].as_str().unwrap()
        ),
        (0, "ok", "admin")
    );
    assert_eq!(r["data"]["token"].as_str().unwrap().len(), 64);
    wait_for("polled", || {
        quality(&gw, "boiler", "setpoint") == edge_gateway::model::Quality::Good
    })
    .await;
    let r = ws.call("devices.list", json!({})).await;
    assert_eq!(code(&r), 0);
    let boiler = &r["data"]["devices"][0];
    assert_eq!(boiler["id"], "boiler");
    assert_eq!(boiler["online"], true);
    assert!(boiler["lastSeen"].as_str().unwrap().ends_with('Z'));
    let sp = &boiler["points"][1];
    assert_eq!(
        (
            sp["id"].as_str(),
            sp["value"].as_f64(),
            sp["quality"].as_str()
        ),
        (Some("setpoint"), Some(80.0), Some("good"))
    );

    // 404: unknown device and point.
    let r = ws
        .call(
            "points.history",
            json!({"deviceId": "nope", "pointId": "x"}),
        )
        .await;
    assert_eq!(
        (code(&r), r["msg"].as_str().unwrap()),
        (404, "unknown device `nope`")
    );
    let r = ws
        .call(
            "device.write",
            json!({"deviceId": "boiler", "pointId": "x", "value": 1}),
        )
        .await;
    assert_eq!(code(&r), 404);
    // 405 for a point that is not writable (403 is for a role); 503 for a device that does not
    // answer.
    let r = ws
        .call(
            "device.write",
            json!({"deviceId": "pump", "pointId": "speed", "value": 1}),
        )
        .await;
    assert_eq!(
        (code(&r), r["msg"].as_str().unwrap()),
        (405, "point is not writable")
    );
    sim.set_fault(PUMP, Some(Fault::Silent));
    let r = ws
        .call(
            "device.write",
            json!({"deviceId": "pump", "pointId": "speed_setpoint", "value": 900}),
        )
        .await;
    assert_eq!(code(&r), 503, "{r}");
    sim.set_fault(PUMP, None);
    // 0: a write the device confirms, with the old value.
    let r = ws
        .call(
            "device.write",
            json!({"deviceId": "boiler", "pointId": "setpoint", "value": 65.5}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(
        (r["data"]["old"].as_f64(), r["data"]["value"].as_f64()),
        (Some(80.0), Some(65.5))
    );
    assert_eq!(sim.with_memory(BOILER, |m| m.holding[2]), Some(655));
    // 400: a value the point cannot take, and nothing written: not "NaN" as 0 to a setpoint,
    // not "maybe" as off to a burner.
    for value in [
        json!("hot"),
        json!("NaN"),
        json!("nan"),
        json!("inf"),
        json!(1e99),
        json!(true),
    ] {
        let r = ws
            .call(
                "device.write",
                json!({"deviceId": "boiler", "pointId": "setpoint", "value": value}),
            )
            .await;
        assert_eq!(code(&r), 400, "{value}: {r}");
    }
    sim.with_memory(BOILER, |m| m.coils[0] = true);
    for value in [json!("maybe"), json!("yes"), json!(2), json!("NaN")] {
        let r = ws
            .call(
                "device.write",
                json!({"deviceId": "boiler", "pointId": "burner", "value": value}),
            )
            .await;
        assert_eq!(code(&r), 400, "{value}: {r}");
    }
    assert_eq!(
        sim.with_memory(BOILER, |m| (m.holding[2], m.coils[0])),
        Some((655, true))
    );

    // points.history from SQLite.
    let r = ws
        .call(
            "points.history",
            json!({"deviceId": "boiler", "pointId": "setpoint", "limit": 10}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    assert!(!r["data"]["rows"].as_array().unwrap().is_empty());
    let r = ws
        .call(
            "points.history",
            json!({"deviceId": "boiler", "pointId": "setpoint", "since": "yesterday"}),
        )
        .await;
    assert_eq!(code(&r), 400);
    // system.stats.
    let r = ws.call("system.stats", json!({})).await;
    assert_eq!(
        (code(&r), r["data"]["devices"]["total"].as_u64()),
        (0, Some(2))
    );

    // SPEC: a frame over 64 KiB gets a 413 reply, with its requestId when the frame's start
    // names one (a 100 KB frame), else null (one of 300 KB, refused unread), then close 1009.
    for (size, id) in [(100_000, json!("big-1")), (300_000, Json::Null)] {
        let mut big = Ws::connect(gw.http_addr).await;
        big.send_text(format!(
            r#"{{"requestId":"big-1","service":"system.stats","pad":"{}"}}"#,
            "x".repeat(size)
        ))
        .await;
        let mut replied = None;
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(30), big.s.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Close(f))) => break f.map(|f| f.code),
                Some(Ok(Message::Text(t))) => {
                    let j: Json = serde_json::from_str(&t).unwrap();
                    assert_eq!(code(&j), 413);
                    replied = Some(j["requestId"].clone());
                }
                Some(Ok(_)) => {}
                _ => break None,
            }
        };
        assert_eq!(
            replied,
            Some(id),
            "the 413 reply before the close ({size} bytes)"
        );
        assert_eq!(closed, Some(CloseCode::Size));
    }

    // 500: the history store has gone away under the gateway.
    std::fs::remove_file(gw.config.gateway.data_dir.join("gateway.db")).unwrap();
    let r = ws
        .call(
            "points.history",
            json!({"deviceId": "boiler", "pointId": "setpoint"}),
        )
        .await;
    assert_eq!(code(&r), 500, "{r}");

    // And after all that, the first connection still works.
    assert_eq!(code(&ws.call("system.stats", json!({})).await), 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_audit_records_who_what_and_how_it_went() {
    let (gw, _sim, dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    wait_for("online", || online(&gw, "boiler")).await;
    assert_eq!(
        code(
            &ws.call(
                "device.write",
                json!({"deviceId": "boiler", "pointId": "burner", "value": false})
            )
            .await
        ),
        0
    );
    gw.store.flush().await;
    let conn = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
    let row: (String, String, String, String, String) = conn
        .query_row(
            "SELECT user, source, device_id, point_id, result FROM write_audit",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(
        row,
        (
            "admin".into(),
            "ws".into(),
            "boiler".into(),
            "burner".into(),
            "ok".into()
        )
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_read_but_do_not_write_ack_or_change_the_interval() {
    let (gw, sim, _dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    let r = ws.login("viewer", "viewer").await;
    assert_eq!(r["data"]["role"], "viewer");
    assert_eq!(code(&ws.call("devices.list", json!({})).await), 0);
    let r = ws
        .call(
            "device.write",
            json!({"deviceId": "boiler", "pointId": "setpoint", "value": 1}),
        )
        .await;
    assert_eq!(
        (code(&r), r["msg"].as_str().unwrap()),
        (403, "admin role required")
    );
    assert_eq!(
        code(
            &ws.call("push.setInterval", json!({"intervalMs": 1000}))
                .await
        ),
        403
    );
    assert_eq!(
        sim.with_memory(BOILER, |m| m.holding[2]),
        Some(800),
        "nothing written"
    );
    // Logout revokes the token; resume on a new connection then fails.
    let mut admin = Ws::connect(gw.http_addr).await;
    let token = admin.login("admin", "admin").await["data"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let mut again = Ws::connect(gw.http_addr).await;
    let r = again.call("auth.resume", json!({"token": token})).await;
    assert_eq!((code(&r), r["data"]["role"].as_str()), (0, Some("admin")));
    assert_eq!(code(&admin.call("auth.logout", json!({})).await), 0);
    assert_eq!(code(&admin.call("devices.list", json!({})).await), 401);
    let mut third = Ws::connect(gw.http_addr).await;
    assert_eq!(
        code(&third.call("auth.resume", json!({"token": token})).await),
        401
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_limited_per_address_and_requests_per_connection() {
    let (gw, _sim, _dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    for _ in 0..5 {
        assert_eq!(code(&ws.login("admin", "nope").await), 401);
    }
    let r = ws.login("admin", "admin").await;
    assert_eq!(code(&r), 429, "{r}");
    // A flood of requests on one connection: the excess gets 429, the connection lives.
    let mut flood = Ws::connect(gw.http_addr).await;
    for i in 0..200 {
        flood
            .send_text(json!({"requestId": i, "service": "no.such"}).to_string())
            .await;
    }
    let mut codes = Vec::new();
    for _ in 0..200 {
        codes.push(code(&flood.recv().await.unwrap()));
    }
    assert!(codes.contains(&429) && codes.contains(&404), "{codes:?}");
    let limited = codes.iter().filter(|c| **c == 429).count() as u64;
    let counted = gw
        .shared
        .admission
        .rejected()
        .find(|(r, _)| r.label() == "rate")
        .map(|(_, n)| n);
    assert_eq!(
        counted,
        Some(limited),
        "edge_ws_rejected_total{{reason=\"rate\"}}"
    );
    gw.shutdown().await;
}

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
async fn set_interval_takes_effect_within_the_new_interval_without_a_restart() {
    // An hour between snapshots: one arriving at all proves the new interval took over.
    let (gw, _sim, _dir) = gateway("interval_ms = 3600000").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    let r = ws
        .call("push.setInterval", json!({"intervalMs": 500}))
        .await;
    assert_eq!(code(&r), 0);
    assert_eq!(
        code(
            &ws.call("push.setInterval", json!({"intervalMs": 499}))
                .await
        ),
        400
    );
    let snap = ws.next_push("push.snapshot").await;
    assert!(snap.get("requestId").is_none());
    assert_eq!(snap["data"]["devices"].as_array().unwrap().len(), 2);
    assert!(snap["data"]["ts"].as_str().unwrap().ends_with('Z'));
    ws.next_push("push.snapshot").await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_pushes_follow_the_subscription_and_unauthenticated_sessions_get_none() {
    let (gw, sim, _dir) = gateway("").await;
    let mut anon = Ws::connect(gw.http_addr).await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("viewer", "viewer").await;
    let r = ws
        .call(
            "subscribe",
            json!({"deviceIds": ["pump"], "telemetry": true}),
        )
        .await;
    assert_eq!(code(&r), 0);
    assert_eq!(
        code(&ws.call("subscribe", json!({"deviceIds": ["nope"]})).await),
        404
    );
    assert_eq!(
        code(&ws.call("subscribe", json!({"minPriority": "urgent"})).await),
        400
    );
    // The anonymous connection gets nothing pushed: its first frame is the reply to this call.
    let r = anon.call("system.stats", json!({})).await;
    assert_eq!(code(&r), 401);
    assert!(anon.pushes.is_empty());
    sim.with_memory(PUMP, |m| m.holding[0] = 1234);
    sim.with_memory(BOILER, |m| m.holding[2] = 555);
    loop {
        let t = ws.next_push("push.telemetry").await;
        assert_eq!(
            t["data"]["deviceId"], "pump",
            "only the subscribed device: {t}"
        );
        if t["data"]["points"]["speed_setpoint"]["v"] == 1234 {
            assert_eq!(t["data"]["points"]["speed_setpoint"]["q"], "good");
            break;
        }
    }
    let r = anon.call("system.stats", json!({})).await;
    assert_eq!(code(&r), 401);
    assert!(anon.pushes.is_empty(), "{:?}", anon.pushes);
    gw.shutdown().await;
}

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

/// The dashboard's two services beyond SPEC.md: the configuration beside live values, and raw
/// reads for the register inspector (admin only, in the bus's turn, errors as codes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_describe_and_registers_read_serve_the_dashboard() {
    let (gw, sim, _dir) = gateway("").await;
    sim.with_memory(BOILER, |m| {
        m.holding[10] = 0x4148;
        m.holding[11] = 0x0000;
    });
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("viewer", "viewer").await;
    let r = ws.call("devices.describe", json!({})).await;
    assert_eq!(code(&r), 0, "{r}");
    let boiler = &r["data"]["devices"][0];
    assert_eq!(
        (
            boiler["id"].as_str(),
            boiler["bus"].as_str(),
            boiler["unit"].as_u64()
        ),
        (Some("boiler"), Some("b"), Some(1))
    );
    let sp = &boiler["points"][1];
    assert_eq!(
        (
            sp["id"].as_str(),
            sp["type"].as_str(),
            sp["table"].as_str(),
            sp["address"].as_u64(),
            sp["writable"].as_bool()
        ),
        (
            Some("setpoint"),
            Some("u16"),
            Some("holding"),
            Some(2),
            Some(true)
        )
    );
    let read = json!({"deviceId": "boiler", "table": "holding", "address": 10, "count": 2});
    assert_eq!(
        code(&ws.call("registers.read", read.clone()).await),
        403,
        "viewers cannot read raw"
    );

    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    let r = ws.call("registers.read", read).await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(r["data"]["registers"], json!([0x4148, 0]));
    let r = ws
        .call(
            "registers.read",
            json!({"deviceId": "boiler", "table": "coil", "address": 0, "count": 1}),
        )
        .await;
    assert!(r["data"]["bits"].is_array(), "{r}");
    for (params, want) in [
        (
            json!({"deviceId": "boiler", "table": "holding", "address": 0, "count": 126}),
            400,
        ),
        (
            json!({"deviceId": "boiler", "table": "fifo", "address": 0}),
            400,
        ),
        (
            json!({"deviceId": "boiler", "table": "holding", "address": 65535, "count": 2}),
            400,
        ),
        (json!({"deviceId": "nope", "table": "holding"}), 404),
        // The simulator has no register 60000: the device's exception, named.
        (
            json!({"deviceId": "boiler", "table": "holding", "address": 60000, "count": 1}),
            503,
        ),
    ] {
        let r = ws.call("registers.read", params.clone()).await;
        assert_eq!(code(&r), want, "{params} → {r}");
    }
    gw.shutdown().await;
}

/// SPEC `bus.scan` on a live bus: each unit probed is pushed as `push.scan`, the reply lists the
/// units that answered; polling goes on meanwhile; `bus.scanCancel` ends it; `registers.read`
/// takes `bus` + `unit`, so a unit the config does not know can be inspected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_scan_finds_the_units_of_a_live_bus_and_the_inspector_reads_any_of_them() {
    let (gw, _sim, _dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    let r = ws
        .call(
            "bus.scan",
            json!({"bus": "b", "fromUnit": 1, "toUnit": 6, "timeoutMs": 50}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    // The demo simulator has units 1-3; the config knows 1 and 2.
    assert_eq!(r["data"]["units"], json!([1, 2, 3]), "{r}");
    let mut seen = Vec::new();
    for _ in 1..=6 {
        let p = ws.next_push("push.scan").await;
        seen.push((
            p["data"]["unit"].as_u64().unwrap(),
            p["data"]["found"] == true,
        ));
    }
    assert_eq!(
        seen,
        [
            (1, true),
            (2, true),
            (3, true),
            (4, false),
            (5, false),
            (6, false)
        ]
    );
    let r = ws
        .call(
            "registers.read",
            json!({"bus": "b", "unit": 3, "table": "holding", "address": 0, "count": 2}),
        )
        .await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(
        (
            r["data"]["unit"].as_u64(),
            r["data"]["registers"].as_array().map(Vec::len)
        ),
        (Some(3), Some(2))
    );

    // A long scan, cancelled from another connection; the configured devices polled meanwhile.
    let mut scanner = Ws::connect(gw.http_addr).await;
    scanner.login("admin", "admin").await;
    scanner
        .send_text(
            json!({"requestId": "long", "service": "bus.scan", "params": {"bus": "b", "timeoutMs": 100}})
                .to_string(),
        )
        .await;
    scanner.next_push("push.scan").await;
    let ok = requests(&gw, "boiler", "ok");
    wait_for("boiler polled during the scan", || {
        requests(&gw, "boiler", "ok") >= ok + 5
    })
    .await;
    let again = ws.call("bus.scan", json!({"bus": "b"})).await;
    assert_eq!(code(&again), 429, "one scan per bus at a time: {again}");
    assert_eq!(
        code(&ws.call("bus.scanCancel", json!({"bus": "b"})).await),
        0
    );
    let reply = loop {
        let m = scanner.recv().await.expect("reply");
        if m["requestId"] == "long" {
            break m;
        }
    };
    assert_eq!(code(&reply), 0, "{reply}");
    assert_eq!(reply["data"]["cancelled"], true, "{reply}");
    assert_eq!(reply["data"]["units"], json!([1, 2, 3]), "{reply}");
    for (params, want) in [
        (json!({"bus": "nope"}), 404),
        (json!({"bus": "b", "fromUnit": 0}), 400),
        (json!({"bus": "b", "fromUnit": 9, "toUnit": 3}), 400),
        (json!({"bus": "b", "timeoutMs": 1}), 400),
    ] {
        let r = ws.call("bus.scan", params.clone()).await;
        assert_eq!(code(&r), want, "{params} → {r}");
    }
    let mut viewer = Ws::connect(gw.http_addr).await;
    viewer.login("viewer", "viewer").await;
    assert_eq!(
        code(&viewer.call("bus.scan", json!({"bus": "b"})).await),
        403
    );
    gw.shutdown().await;
}

/// SPEC `config.*`: the technician's file (comments and all) read, checked, changed, applied
/// as a reload and rolled back from the WebSocket, with no file edited by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn the_config_is_edited_applied_and_rolled_back_from_the_websocket() {
    let (_sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let pump_at = BOILER_AND_PUMP.find("[[devices]]\nid = \"pump\"").unwrap();
    let original = format!(
        "# The boiler room's gateway. Keep this comment.\n[gateway]\nid = \"g\"\ndata_dir = {:?}\n\
         [http]\nlisten = \"127.0.0.1:0\"\n{}{}{}",
        dir.path().display().to_string(),
        users_and_push(""),
        tcp_bus(&sim_addr.to_string()),
        &BOILER_AND_PUMP[..pump_at]
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &original).unwrap();
    let (_gw, addr) = spawn_gateway(gateway_command(&path), None);
    let admin = || async move {
        let mut ws = Ws::connect(addr).await;
        assert_eq!(code(&ws.login("admin", "admin").await), 0);
        ws
    };
    let mut ws = admin().await;
    let r = ws.call("config.get", json!({})).await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(r["data"]["text"], original.as_str());
    assert_eq!(r["data"]["config"]["devices"][0]["id"], "boiler");

    // Checked as check-config checks: every problem, by key path and line.
    let broken = format!("{original}[store]\nmax_db_mb = 0\ncolour = 1\n");
    let r = ws.call("config.validate", json!({ "text": broken })).await;
    let problems = r["data"]["problems"].as_array().unwrap();
    let paths: Vec<&str> = problems
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"store.colour") && paths.contains(&"store.max_db_mb"),
        "{r}"
    );
    assert!(problems.iter().all(|p| p["line"].as_u64().is_some()), "{r}");
    let r = ws.call("config.apply", json!({ "text": broken })).await;
    assert_eq!(code(&r), 400, "{r}");
    assert_eq!(
        r["data"]["problems"].as_array().map(Vec::len),
        Some(problems.len())
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        original,
        "nothing written"
    );

    // A viewer watching while the admin applies (SPEC "Reload", #31 item 1): neither socket
    // closes, and the viewer's pushes go on, now with the added device's.
    let mut viewer = Ws::connect(addr).await;
    viewer.login("viewer", "viewer").await;
    // Applied: the file as given, a version, a reload; this socket stays open.
    let edited = format!(
        "{original}\n# Added from the dashboard.\n{}",
        &BOILER_AND_PUMP[pump_at..]
    );
    let r = ws.call("config.apply", json!({ "text": edited })).await;
    assert_eq!(code(&r), 0, "{r}");
    assert!(
        r["data"]["summary"]
            .as_str()
            .unwrap()
            .contains("devices +pump"),
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        edited,
        "comments kept"
    );
    loop {
        let p = viewer.next_push("push.telemetry").await;
        if p["data"]["deviceId"] == "pump" {
            break;
        }
    }
    let devices = |ws: Ws| async move {
        let mut ws = ws;
        let r = ws.call("devices.list", json!({})).await;
        let ids: Vec<String> = r["data"]["devices"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}"))
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        ids
    };
    let ws_ids = |r: Json| -> Vec<String> {
        r["data"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ws_ids(ws.call("devices.list", json!({})).await),
        ["boiler", "pump"],
        "the admin's socket, logged in still, in the new gateway"
    );
    // An info event of the gateway says who applied what.
    let r = ws
        .call("events.query", json!({"type": "config_applied"}))
        .await;
    let e = &r["data"]["events"][0];
    assert_eq!(
        (e["deviceId"].as_str(), e["state"].as_str()),
        (Some("g"), Some("info")),
        "{r}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("config applied by admin: devices +pump"),
        "{r}"
    );
    let r = ws.call("config.history", json!({})).await;
    let versions = r["data"]["versions"].as_array().unwrap().clone();
    assert_eq!(versions.len(), 2, "{r}");
    assert_eq!(
        (versions[0]["user"].as_str(), versions[1]["user"].as_str()),
        (Some("admin"), Some("startup"))
    );

    // Rolled back to the file it started with.
    let first = versions[1]["id"].clone();
    let r = ws.call("config.rollback", json!({ "id": first })).await;
    assert_eq!(code(&r), 0, "{r}");
    assert!(
        r["data"]["summary"].as_str().unwrap().contains("-pump"),
        "{r}"
    );
    wait_for_async("the pump gone", || async {
        devices(admin().await).await == ["boiler"]
    })
    .await;
    assert_eq!(ws_ids(ws.call("devices.list", json!({})).await), ["boiler"]);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    let mut ws = admin().await;
    assert_eq!(
        code(&ws.call("config.rollback", json!({ "id": 99 })).await),
        404
    );
    // Each attempt is in the audit, newest first: the rollback, the edit, the refused text.
    let r = ws.call("audit.query", json!({})).await;
    let entries = r["data"]["entries"].as_array().unwrap().clone();
    let seen: Vec<(&str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e["pointId"].as_str().unwrap(),
                e["value"].as_str().unwrap(),
                e["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(seen.len(), 3, "{r}");
    assert!(
        seen[0].1.starts_with("version 3: ") && seen[0].2 == "ok",
        "{r}"
    );
    assert!(seen[1].1.starts_with("version 2: devices +pump"), "{r}");
    assert_eq!(seen[2].1, "not applied", "{r}");
    assert!(seen[2].2.contains("problem(s)"), "{r}");
    assert!(seen.iter().all(|s| s.0 == "config"), "{r}");
    assert_eq!(entries[0]["user"], "admin");
    assert_eq!(code(&viewer.call("config.get", json!({})).await), 403);
    assert_eq!(code(&viewer.call("audit.query", json!({})).await), 403);
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

/// Hostile test, attack 7: 60 viewers subscribing with one id repeated 5,800 times held the
/// hub's lock for 22 s, and each push went out once per copy. Now such a list is refused, and
/// a repeated id counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_with_repeated_ids_is_refused_or_counted_once() {
    let (gw, _sim, _dir) = gateway("").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    assert_eq!(code(&ws.login("viewer", "viewer").await), 0);
    let r = ws
        .call("subscribe", json!({"deviceIds": vec!["boiler"; 5800]}))
        .await;
    assert_eq!(code(&r), 400, "{r}");
    let r = ws
        .call("subscribe", json!({"deviceIds": ["boiler", "boiler"]}))
        .await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(gw.shared.hub.index_sizes(), (1, 1, 0));
    gw.shutdown().await;
}

/// SPEC: `auth.logout` ends the session on every socket using that token. Found: a socket that
/// resumed the token stayed logged in and kept receiving pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session_on_every_socket_with_that_token() {
    let (gw, _sim, _dir) = gateway("").await;
    let mut a = Ws::connect(gw.http_addr).await;
    let r = a.login("viewer", "viewer").await;
    let token = r["data"]["token"].as_str().unwrap().to_string();
    let mut b = Ws::connect(gw.http_addr).await;
    assert_eq!(
        code(&b.call("auth.resume", json!({"token": token})).await),
        0
    );
    assert_eq!(code(&b.call("devices.list", json!({})).await), 0);
    assert_eq!(code(&a.call("auth.logout", json!({})).await), 0);
    let p = b.next_push("push.session").await;
    assert_eq!(p["data"]["reason"], "logout", "{p}");
    assert_eq!(code(&b.call("devices.list", json!({})).await), 401);
    assert_eq!(code(&a.call("devices.list", json!({})).await), 401);
    // Not closed: it may log in again.
    assert_eq!(code(&b.login("viewer", "viewer").await), 0);
    assert_eq!(code(&b.call("devices.list", json!({})).await), 0);
    gw.shutdown().await;
}

/// SPEC: a token that expires ends its session on every socket with `push.session`
/// `{"reason":"expired"}`; the socket stays open and may log in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_by_itself_when_its_token_expires() {
    let (gw, _sim, _dir) = gateway("").await;
    gw.shared.auth.set_ttl(std::time::Duration::from_secs(2));
    let mut a = Ws::connect(gw.http_addr).await;
    let r = a.login("viewer", "viewer").await;
    assert_eq!(r["data"]["expiresInS"].as_u64(), Some(1), "{r}");
    let p = a.next_push("push.session").await;
    assert_eq!(p["data"]["reason"], "expired", "{p}");
    assert_eq!(code(&a.call("devices.list", json!({})).await), 401);
    let token = r["data"]["token"].as_str().unwrap();
    assert_eq!(
        code(&a.call("auth.resume", json!({"token": token})).await),
        401
    );
    assert_eq!(code(&a.login("viewer", "viewer").await), 0);
    gw.shutdown().await;
}

/// SPEC: a reload that removes a user ends that user's sessions with `"user changed"` before
/// the sockets close; another user's session carries over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_user_ends_their_sessions() {
    let (gw, _sim, _dir) = gateway("").await;
    let mut viewer = Ws::connect(gw.http_addr).await;
    assert_eq!(code(&viewer.login("viewer", "viewer").await), 0);
    let mut admin = Ws::connect(gw.http_addr).await;
    let r = admin.login("admin", "admin").await;
    let admin_token = r["data"]["token"].as_str().unwrap().to_string();
    let mut new = (*gw.config).clone();
    new.users.retain(|u| u.name != "viewer");
    let (gw, _) = gw.reload(new).await.unwrap();
    let p = viewer.next_push("push.session").await;
    assert_eq!(p["data"]["reason"], "user changed", "{p}");
    // The admin's socket closed with the old gateway; the token resumes on the new one.
    let mut again = Ws::connect(gw.http_addr).await;
    assert_eq!(
        code(
            &again
                .call("auth.resume", json!({"token": admin_token}))
                .await
        ),
        0
    );
    drop(admin);
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

/// #13: `push.setInterval` survives a reload and a restart, until the config's own
/// `push.interval_ms` changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_interval_survives_reload_and_restart_until_the_config_changes_it() {
    let (gw, _sim, dir) = gateway("interval_ms = 6000").await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    let r = ws
        .call("push.setInterval", json!({"intervalMs": 1500}))
        .await;
    assert_eq!(code(&r), 0);
    let same = (*gw.config).clone();
    let (gw, _) = gw.reload(same.clone()).await.unwrap();
    assert_eq!(
        *gw.shared.push_interval.borrow(),
        Duration::from_millis(1500)
    );
    gw.shutdown().await;
    let gw = Gateway::start(same.clone()).await.unwrap();
    assert_eq!(
        *gw.shared.push_interval.borrow(),
        Duration::from_millis(1500)
    );
    // The config's interval changed: it wins.
    let mut changed = same;
    changed.push.interval = Duration::from_secs(2);
    let (gw, _) = gw.reload(changed).await.unwrap();
    assert_eq!(*gw.shared.push_interval.borrow(), Duration::from_secs(2));
    gw.shutdown().await;
    drop(dir);
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

/// Hostile test #30, item 9: a config that validates but cannot start (port taken, unwritable
/// `data_dir`) was answered ok, the new file stayed and the next start exited 1; two applies at
/// once were both "version 19". Now such a config is a 400 naming the key, nothing written,
/// and applies go one at a time, each its own version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_cannot_start_is_refused_and_applies_are_one_at_a_time() {
    let (_sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let original = format!("{}{BOILER_AND_PUMP}", process_head(dir.path(), sim_addr));
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, &original).unwrap();
    let (_gw, addr) = spawn_gateway(gateway_command(&path), None);
    let admin = || async move {
        let mut ws = Ws::connect(addr).await;
        assert_eq!(code(&ws.login("admin", "admin").await), 0);
        ws
    };
    let mut ws = admin().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port_taken = original.replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"{}\"", taken.local_addr().unwrap()),
    );
    let dir_unwritable = original.replace(
        &format!("data_dir = {:?}", dir.path().display().to_string()),
        "data_dir = \"/proc/edge-gateway-nope\"",
    );
    for (text, key) in [
        (&port_taken, "http.listen"),
        (&dir_unwritable, "gateway.data_dir"),
    ] {
        let r = ws.call("config.apply", json!({ "text": text })).await;
        assert_eq!(code(&r), 400, "{r}");
        assert_eq!(r["data"]["problems"][0]["path"], key, "{r}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), original);
    }
    // Two applies at once, of two texts: each one answered ok has its own version holding its
    // own text. (The reload still closes every socket, #31, so the second reply may not come.)
    let (mut a, mut b) = (admin().await, admin().await);
    let text_a = format!("{original}\n# A\n");
    let text_b = format!("{original}\n# B\n");
    let (ra, rb) = tokio::join!(
        a.try_call("config.apply", json!({ "text": text_a })),
        b.try_call("config.apply", json!({ "text": text_b })),
    );
    let answered: Vec<(u64, &String)> = [(&ra, &text_a), (&rb, &text_b)]
        .into_iter()
        .filter_map(|(r, text)| r.as_ref().map(|r| (r, text)))
        .map(|(r, text)| {
            assert_eq!(code(r), 0, "{r}");
            (r["data"]["id"].as_u64().unwrap(), text)
        })
        .collect();
    assert!(!answered.is_empty());
    if let [(x, _), (y, _)] = answered[..] {
        assert_ne!(x, y, "two applies answered with one version");
    }
    let versions = dir.path().join("config-versions");
    for (id, text) in answered {
        assert_eq!(
            &std::fs::read_to_string(versions.join(format!("{id}.toml"))).unwrap(),
            text
        );
    }
}

/// #31, item 4: `registers.read` aimed at a silent unit stopped all polling on its bus (4/s →
/// 0/s): operator requests went ahead of every poll. Now one operator request, then a due
/// poll: the boiler on the same bus goes on being polled through a flood of reads that each
/// time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_aimed_at_a_silent_unit_leave_the_bus_polling() {
    let (gw, _sim, _dir) = gateway("").await;
    wait_for("online", || online(&gw, "boiler")).await;
    let mut ws = Ws::connect(gw.http_addr).await;
    ws.login("admin", "admin").await;
    let polls = || requests(&gw, "boiler", "ok") + requests(&gw, "pump", "ok");
    let before = polls();
    // 16 reads of unit 9, which the simulator does not have: each one waits out the 200 ms
    // timeout (3.2 s of the bus in all).
    let n: u64 = 16;
    for i in 0..n {
        ws.send_text(
            json!({"requestId": format!("r{i}"), "service": "registers.read",
                "params": {"bus": "b", "unit": 9, "table": "holding", "address": 0, "count": 1}})
            .to_string(),
        )
        .await;
    }
    let mut replies = 0;
    while replies < n {
        let m = ws.recv().await.expect("open");
        if m["service"] == "registers.read" {
            assert_eq!(code(&m), 503, "{m}");
            replies += 1;
        }
    }
    let polled = polls() - before;
    // One poll (of two requests) at least between two reads; before, none at all.
    assert!(
        polled >= 2 * (n - 2),
        "{polled} poll requests during {n} timed-out reads"
    );
    gw.shutdown().await;
}

/// SPEC "Reload", #31 item 1: every reload (`config.apply` or SIGHUP) closed every dashboard
/// with 1001. Now a SIGHUP that adds a device leaves an admin's and a viewer's sockets open,
/// logged in and subscribed: the viewer's pushes go on, now with the new device's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_keeps_every_dashboard_connected() {
    let (_sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let pump_at = BOILER_AND_PUMP.find("[[devices]]\nid = \"pump\"").unwrap();
    let head = process_head(dir.path(), sim_addr);
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, format!("{head}{}", &BOILER_AND_PUMP[..pump_at])).unwrap();
    let (gw, addr) = spawn_gateway(gateway_command(&path), None);
    let mut admin = Ws::connect(addr).await;
    assert_eq!(code(&admin.login("admin", "admin").await), 0);
    let mut viewer = Ws::connect(addr).await;
    assert_eq!(code(&viewer.login("viewer", "viewer").await), 0);
    std::fs::write(&path, format!("{head}{BOILER_AND_PUMP}")).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &gw.0.id().to_string()])
        .status();
    // The viewer, on the same socket, gets the added device's values from the new gateway.
    loop {
        let p = viewer.next_push("push.telemetry").await;
        if p["data"]["deviceId"] == "pump" {
            break;
        }
    }
    let r = admin.call("devices.list", json!({})).await;
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(
        r["data"]["devices"].as_array().map(Vec::len),
        Some(2),
        "{r}"
    );
    let r = viewer.call("system.stats", json!({})).await;
    assert_eq!(code(&r), 0, "still logged in: {r}");
}
