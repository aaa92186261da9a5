//! The dashboard's API over real sockets with a real client: the envelope and every code,
//! roles, logins and their limits, the interval, subscriptions and sessions. The socket's own
//! rules (origins, caps, the login deadline) are `ws.rs`'s; what a client receives and how,
//! `ws_push.rs`'s.

mod common;

use std::time::Duration;

use common::wsclient::*;
use common::*;
use edge_gateway::modbus::simulator::{Fault, BOILER, PUMP};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

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

/// SPEC: a token unused for `session_idle_s` ends its session on every socket with
/// `push.session` `{"reason":"expired"}`; each request is a use; the socket stays open and may
/// log in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_by_itself_once_its_token_is_unused_for_the_idle_time() {
    let (gw, _sim, _dir) = gateway("").await;
    gw.shared.auth.set_ttl(std::time::Duration::from_secs(3));
    let mut a = Ws::connect(gw.http_addr).await;
    let r = a.login("viewer", "viewer").await;
    assert_eq!(r["data"]["expiresInS"].as_u64(), Some(2), "{r}");
    // In use for longer than the idle time: alive.
    for _ in 0..8 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(code(&a.call("devices.list", json!({})).await), 0);
    }
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
