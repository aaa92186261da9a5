//! The fleet's view of a gateway over the broker (SPEC "Fleet over the broker"), against a real
//! Mosquitto (`EDGE_TEST_MQTT_ADDR`): the retained `state` message, whatever the MQTT format,
//! renewed at once when devices go offline.

mod common;

use common::mqtt::*;
use common::*;
use edge_gateway::modbus::simulator::{Fault, Profile};
use serde_json::Value as Json;

/// Every key SPEC lists in a `state`, with its kind.
fn check_shape(s: &Json) {
    assert!(s["ts"].is_string(), "{s}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert!(s["git"].is_string() && s["uptimeS"].is_u64(), "{s}");
    // Started from a Config, not a file: no version, no text to hash.
    assert!(
        s["config"]["version"].is_null() && s["config"]["sha256"].is_null(),
        "{s}"
    );
    assert_eq!(s["devices"]["total"], 2, "{s}");
    for k in ["active", "unacked", "emergency"] {
        assert!(s["alarms"][k].is_u64(), "alarms.{k}: {s}");
    }
    assert!(s["sinks"]["mqtt"]["backlog"].is_i64(), "{s}");
    assert!(
        s["sinks"]["mysql"].is_null(),
        "no MySQL sink configured: {s}"
    );
    for k in ["dbBytes", "walBytes", "capBytes"] {
        assert!(s["store"][k].is_u64(), "store.{k}: {s}");
    }
    assert!(s["diskFreeBytes"].as_u64().is_some_and(|b| b > 0), "{s}");
    assert!(
        s["clockSynced"].is_boolean() || s["clockSynced"].is_null(),
        "{s}"
    );
}

async fn state_follows_the_devices(sparkplug: bool) {
    let Some(broker) = broker() else { return };
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let id = unique_id("fleet");
    let mut w = Watcher::start(&broker, &id).await;
    let format = if sparkplug {
        format!("format = \"sparkplug_b\"\ngroup_id = \"fleet-test\"\nedge_node_id = \"{id}\"\n")
    } else {
        String::new()
    };
    let (gw, _dir) = start_gateway(&id, &broker, addr, &format, "").await;
    let (topic, first, _) = w.next("/state", |s| s["devices"]["online"] == 2).await;
    assert_eq!(topic, format!("edge/{id}/state"));
    check_shape(&first);

    // The pump stops answering: once it is offline a new state goes out at once (the periodic
    // one comes every 60 s; the watcher gives up after 20).
    sim.set_fault(2, Some(Fault::Silent));
    wait_for("the pump offline", || !online(&gw, "pump")).await;
    // (Later than the first: while the gateway starts, one device may be online before both.)
    let after = |s: &Json| s["ts"].as_str() > first["ts"].as_str();
    let (_, now, _) = w
        .next("/state", |s| s["devices"]["online"] == 1 && after(s))
        .await;
    check_shape(&now);

    // A client that subscribes later is handed the newest, retained.
    let mut late = Watcher::start(&broker, &id).await;
    let (_, kept, retained) = late.next("/state", |_| true).await;
    assert!(retained, "the state is retained: {kept}");
    assert_eq!(kept["devices"]["online"], 1, "{kept}");
    gw.shutdown().await;
    clear_retained(&mut w, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_state_follows_the_devices_with_json_topics() {
    state_follows_the_devices(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_state_follows_the_devices_with_sparkplug() {
    state_follows_the_devices(true).await;
}

/// `system.log`: the last lines kept in memory, for admins only, within its bounds.
#[tokio::test]
async fn system_log_gives_an_admin_the_last_lines() {
    use common::wsclient::{code, gateway, Ws};
    let (gw, _sim, _dir) = gateway("").await;
    // The daemon's log writer copies each line there; a test has no such writer.
    edge_gateway::logs::push("INFO edge_gateway: first of the fleet test's lines");
    edge_gateway::logs::push("WARN edge_gateway: last of the fleet test's lines");
    let mut admin = Ws::connect(gw.http_addr).await;
    admin.login("admin", "admin").await;
    let r = admin
        .call("system.log", serde_json::json!({"lines": 2}))
        .await;
    assert_eq!(code(&r), 0, "{r}");
    let lines = r["data"]["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 2, "{r}");
    assert!(
        lines[1].as_str().unwrap().contains("last of the fleet"),
        "{r}"
    );
    for bad in [0, 501] {
        let r = admin
            .call("system.log", serde_json::json!({"lines": bad}))
            .await;
        assert_eq!(code(&r), 400, "{r}");
    }
    let mut viewer = Ws::connect(gw.http_addr).await;
    viewer.login("viewer", "viewer").await;
    let r = viewer.call("system.log", serde_json::json!({})).await;
    assert_eq!(code(&r), 403, "{r}");
    gw.shutdown().await;
}

/// `fleet keygen`, then `fleet rpc` and `fleet ls` against a gateway that lists the key; a
/// forged, a replayed, an expired and a not read-only request refused, each with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    clippy::too_many_lines,
    reason = "one fleet's session, read top to bottom"
)]
async fn signed_rpc_answers_the_fleet_and_refuses_forgeries_and_replays() {
    use edge_gateway::fleet::signed::{rpc_message, Signer};
    let Some(broker) = broker() else { return };
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("fleet.key");
    let (ok, line, err) = cli(&["fleet", "keygen", "--out", key.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(line.starts_with("public_keys = [\"ed25519:"), "{line}");
    let (_, sim_addr, _c) = start_sim(Profile::Demo).await;
    let id = unique_id("fleet-rpc");
    let mut w = Watcher::start(&broker, &id).await;
    let (gw, _dir) = start_gateway(&id, &broker, sim_addr, "", &format!("[fleet]\n{line}")).await;
    w.next("/state", |s| s["devices"]["online"] == 2).await;
    let url = format!("mqtt://{broker}");

    let (ok, out, err) = cli(&[
        "fleet",
        "rpc",
        "--broker",
        &url,
        "--key",
        key.to_str().unwrap(),
        "--gateway",
        &id,
        "system.stats",
    ]);
    assert!(ok, "{out}{err}");
    let reply: Json = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["data"]["gatewayId"], id.as_str(), "{reply}");

    let (ok, table, err) = cli(&["fleet", "ls", "--broker", &url]);
    assert!(ok, "{err}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains(" yes ") && row.contains("2/2"), "{row}");
    let (ok, listed, _) = cli(&["fleet", "ls", "--broker", &url, "--json"]);
    let listed: Json = serde_json::from_str(&listed).unwrap();
    assert!(ok && listed[&id]["online"] == true, "{listed}");

    // By hand: a good request, the same again (a replay), one signed by another key, one
    // expired, one for a service that writes.
    let signer = Signer::load(&key).unwrap();
    let stranger_file = keys.path().join("stranger.key");
    cli(&["fleet", "keygen", "--out", stranger_file.to_str().unwrap()]);
    let stranger = Signer::load(&stranger_file).unwrap();
    let later = edge_gateway::model::rfc3339(edge_gateway::model::now_ms() + 60_000);
    let past = edge_gateway::model::rfc3339(edge_gateway::model::now_ms() - 1_000);
    let request = |rid: &str, expires: &str, service: &str, by: &Signer, key_id: &str| {
        let sig = by.sign(&rpc_message(rid, &id, expires, service, "{}"));
        serde_json::json!({"id": rid, "target": id, "expires": expires, "service": service,
            "params": "{}", "keyId": key_id, "sig": sig})
    };
    let sends = [
        request("r1", &later, "alarms.active", &signer, &signer.key_id),
        request("r1", &later, "alarms.active", &signer, &signer.key_id),
        request("r2", &later, "alarms.active", &stranger, &signer.key_id),
        request("r3", &past, "alarms.active", &signer, &signer.key_id),
        request("r4", &later, "device.write", &signer, &signer.key_id),
    ];
    let mut answers = Vec::new();
    for r in &sends {
        w.client
            .publish(
                format!("edge/{id}/rpc/request"),
                rumqttc::QoS::AtLeastOnce,
                false,
                r.to_string(),
            )
            .await
            .unwrap();
        let (_, a, _) = w.next("/rpc/response", |a| a["id"] == r["id"]).await;
        answers.push(a);
    }
    assert_eq!(answers[0]["code"], 0, "{answers:?}");
    assert!(answers[0]["data"]["alarms"].is_array(), "{answers:?}");
    let why = |a: &Json| {
        (
            a["code"].as_u64(),
            a["msg"].as_str().unwrap_or_default().to_string(),
        )
    };
    assert!(why(&answers[1]).1.contains("seen before"), "{answers:?}");
    assert!(why(&answers[2]).1.contains("does not match"), "{answers:?}");
    assert!(why(&answers[3]).1.contains("expired"), "{answers:?}");
    assert!(
        why(&answers[4]).1.contains("not a read-only"),
        "{answers:?}"
    );
    for a in &answers[1..] {
        assert_eq!(a["code"], 403, "{a}");
    }
    gw.shutdown().await;
    clear_retained(&mut w, &id).await;
}
