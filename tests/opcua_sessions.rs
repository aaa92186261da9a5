//! OPC UA sessions seen from the gateway's side (async-opcua's client): listed in the
//! Diagnostics view, kept across a reload, refused when anonymous and `anonymous` is off.
#![cfg(feature = "opcua")]

mod common;

use std::sync::Arc;

use common::wsclient::users_and_push;
use common::*;
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::Gateway;
use serde_json::Value as Json;

/// Issue #32: the Diagnostics view lists the OPC UA sessions: user, client (admins only),
/// security policy, monitored items; a closed session leaves the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::too_many_lines,
    reason = "two sessions made, listed, one closed: read top to bottom"
)]
async fn diagnostics_list_each_session_with_its_user_security_and_items() {
    use ua::client::{DataChangeCallback, IdentityToken};
    use ua::types::{MonitoredItemCreateRequest, NodeId, TimestampsToReturn};
    let (_sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = format!(
        "{}{}[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
         security = [\"basic256sha256\", \"none\"]\nanonymous = true\ntrust_client_certs = true\n{BOILER_AND_PUMP}",
        users_and_push(""),
        tcp_bus(&sim_addr.to_string()),
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("online", || online(&gw, "boiler")).await;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let pki = dir.path().join("client-pki");
    let (anon, ns) = common::opcua::anonymous(&url, &pki).await;
    let admin = common::opcua::session(
        &url,
        &pki,
        true,
        IdentityToken::new_user_name("admin", "admin"),
    )
    .await
    .expect("admin's session");
    let sub = anon
        .create_subscription(
            std::time::Duration::from_millis(500),
            30,
            10,
            0,
            0,
            true,
            DataChangeCallback::new(|_, _| {}),
        )
        .await
        .unwrap();
    let items: Vec<MonitoredItemCreateRequest> = ["boiler.temperature", "boiler.setpoint"]
        .iter()
        .map(|n| NodeId::new(ns, *n).into())
        .collect();
    anon.create_monitored_items(sub, TimestampsToReturn::Both, items)
        .await
        .unwrap();
    let temperature = ua::types::ReadValueId::from(NodeId::new(ns, "boiler.temperature"));
    admin
        .read(&[temperature], TimestampsToReturn::Both, 0.0)
        .await
        .unwrap();

    let mut ws_admin = common::ws::connect(&gw, "admin").await;
    let mut ws_viewer = common::ws::connect(&gw, "viewer").await;
    let sessions = |r: Json| r["data"]["opcua"]["sessions"].clone();
    let mut seen = Json::Null;
    for _ in 0..100 {
        let r = common::ws::call(&mut ws_admin, "system.diagnostics", serde_json::json!({})).await;
        seen = sessions(r);
        if seen.as_array().is_some_and(|s| s.len() == 2) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        seen,
        serde_json::json!([
            {"user": "anonymous", "security": "None", "monitoredItems": 2, "client": "urn:edge-gateway:tests"},
            {"user": "admin", "security": "Basic256Sha256", "monitoredItems": 0, "client": "urn:edge-gateway:tests"},
        ])
    );
    let r = common::ws::call(&mut ws_viewer, "system.diagnostics", serde_json::json!({})).await;
    assert!(
        sessions(r)
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("client").is_none()),
        "a viewer sees no client addresses"
    );
    admin.disconnect().await.unwrap();
    let mut left = 0;
    for _ in 0..300 {
        let r = common::ws::call(&mut ws_admin, "system.diagnostics", serde_json::json!({})).await;
        left = sessions(r).as_array().map_or(0, Vec::len);
        if left == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 1, "the closed session leaves the list");
    gw.shutdown().await;
}

/// Issue #32: a reload rebuilds the address space without dropping the sessions: the same
/// session (the same id on the server) goes on receiving data changes of a point that stays,
/// reads a device the reload added, and gets `Bad_NodeIdUnknown` for one it removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::too_many_lines,
    reason = "one session across a reload, read top to bottom"
)]
async fn a_reload_keeps_the_sessions_and_rebuilds_the_nodes() {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    use ua::client::DataChangeCallback;
    use ua::types::{MonitoredItemCreateRequest, NodeId, ReadValueId, TimestampsToReturn};
    let (sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let head = format!(
        "{}{}[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nsecurity = [\"none\"]\nanonymous = true\n",
        users_and_push(""),
        tcp_bus(&sim_addr.to_string()),
    );
    let gw = Gateway::start(config(dir.path(), &format!("{head}{BOILER_AND_PUMP}")))
        .await
        .unwrap();
    wait_for("online", || online(&gw, "boiler")).await;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let (s, ns) = common::opcua::anonymous(&url, &dir.path().join("pki")).await;
    let id_before = s.server_session_id();
    let changes = Arc::new(AtomicU64::new(0));
    let seen = changes.clone();
    let sub = s
        .create_subscription(
            std::time::Duration::from_millis(100),
            30,
            10,
            0,
            0,
            true,
            DataChangeCallback::new(move |_, _| {
                seen.fetch_add(1, Relaxed);
            }),
        )
        .await
        .unwrap();
    let item: MonitoredItemCreateRequest = NodeId::new(ns, "boiler.setpoint").into();
    s.create_monitored_items(sub, TimestampsToReturn::Both, vec![item])
        .await
        .unwrap();

    // The pump goes, a tank comes (unit 3, which the simulator answers too).
    let tank = "[[devices]]\nid = \"tank\"\nbus = \"b\"\nunit = 3\npoll_interval_ms = 100\n\
                points = [{ id = \"level\", table = \"holding\", address = 0, type = \"u16\" }]\n";
    let boiler = &BOILER_AND_PUMP[..BOILER_AND_PUMP.find("[[devices]]\nid = \"pump\"").unwrap()];
    let (gw, _) = gw
        .reload(config(dir.path(), &format!("{head}{boiler}{tank}")))
        .await
        .unwrap();
    wait_for("online", || online(&gw, "boiler")).await;
    let before = changes.load(Relaxed);
    sim.with_memory(1, |m| m.holding[2] = 777);
    wait_for("a data change after the reload", || {
        changes.load(Relaxed) > before
    })
    .await;
    assert_eq!(s.server_session_id(), id_before, "the same session");
    wait_for("the tank online", || online(&gw, "tank")).await;
    let read = |node: &str| ReadValueId::from(NodeId::new(ns, node));
    let mut values = Vec::new();
    // The tank's points turn Good once the server has seen it online (every half second).
    for _ in 0..100 {
        values = s
            .read(
                &[
                    read("boiler.setpoint"),
                    read("tank.level"),
                    read("pump.speed"),
                ],
                TimestampsToReturn::Both,
                0.0,
            )
            .await
            .unwrap();
        if values[1].status().is_good() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        values[0].value,
        Some(ua::types::Variant::Double(77.7)),
        "{values:?}"
    );
    assert_eq!(
        (&values[1].value, values[1].status()),
        (
            &Some(ua::types::Variant::UInt16(0)),
            ua::types::StatusCode::Good
        ),
        "{values:?}"
    );
    assert_eq!(
        values[2].status(),
        ua::types::StatusCode::BadNodeIdUnknown,
        "{values:?}"
    );
    gw.shutdown().await;
}

/// SPEC: anonymous sessions only with `anonymous = true`; a user name and password otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_session_is_refused_unless_anonymous_is_on() {
    use ua::client::IdentityToken;
    let (_sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = format!(
        "{}{}[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nsecurity = [\"none\"]\n{BOILER_AND_PUMP}",
        users_and_push(""),
        tcp_bus(&sim_addr.to_string()),
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let pki = dir.path().join("pki");
    let anonymous = common::opcua::session(&url, &pki, false, IdentityToken::Anonymous).await;
    assert!(anonymous.is_err(), "an anonymous session was let in");
    let viewer = common::opcua::session(
        &url,
        &pki,
        false,
        IdentityToken::new_user_name("viewer", "viewer"),
    )
    .await;
    assert!(viewer.is_ok(), "{:?}", viewer.err());
    gw.shutdown().await;
}
