//! When answers stop coming: a point whose polls stop arriving turns stale (and the change
//! travels like a value's), and a whole line going down is one `bus_offline` alarm for the bus
//! with the cause, its devices' offline `info` naming the bus, and their return naming it too.

mod common;

use common::*;
use edge_gateway::modbus::simulator::{Fault, Profile, BOILER, PUMP};
use edge_gateway::model::Quality;
use edge_gateway::Gateway;

/// SPEC: a point not refreshed within 3 × its poll interval (at least 3 s) is `stale` by
/// itself, no rule needed: here the boiler answers, but only after 6 s (the bus waits up to
/// 10 s), so its last good values age past 3 s and are stale, then good again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_whose_polls_stop_arriving_turns_stale_and_good_again() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let bus = format!(
        "[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"{addr}\"\ntimeout_ms = 10000\nretries = 0\n"
    );
    let gw = Gateway::start(config(dir.path(), &format!("{bus}{BOILER_AND_PUMP}")))
        .await
        .unwrap();
    wait_for("boiler good", || {
        quality(&gw, "boiler", "setpoint") == Quality::Good
    })
    .await;
    sim.set_fault(
        BOILER,
        Some(Fault::Delay(std::time::Duration::from_secs(6))),
    );
    wait_for("boiler stale", || {
        quality(&gw, "boiler", "setpoint") == Quality::Stale
    })
    .await;
    sim.set_fault(BOILER, None);
    wait_for("boiler good again", || {
        quality(&gw, "boiler", "setpoint") == Quality::Good
    })
    .await;
    // The change of quality travelled as a change of value would (#31, item 7): stored (the
    // history the sinks forward, MySQL's `quality`, MQTT's `q`), stale and then good again.
    gw.settle().await;
    let conn = edge_gateway::store::open_reader(dir.path()).unwrap();
    let device = &gw.config.devices[0];
    let rows =
        edge_gateway::store::history(&conn, device, &device.points[1], 0, i64::MAX, 1000).unwrap();
    let stale_at = rows
        .iter()
        .position(|r| r.2 == Quality::Stale)
        .expect("a stale row in the history");
    assert!(
        rows[stale_at..].iter().any(|r| r.2 == Quality::Good),
        "{rows:?}"
    );
    gw.shutdown().await;
}

/// Listed alarms (active, or cleared and not yet acknowledged), as `alarms.active` gives them.
async fn alarms(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.settle().await;
    let conn = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    edge_gateway::store::active_alarms(&conn, &gw.config).unwrap()
}

/// A device's events of one type, newest first.
fn events_of(gw: &Gateway, device: &str, kind: &str) -> Vec<serde_json::Value> {
    let conn = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    let f = edge_gateway::store::EventFilter {
        device_id: Some(device.into()),
        kind: Some(kind.into()),
        limit: 100,
        ..Default::default()
    };
    edge_gateway::store::query_events(&conn, &gw.config, &f).unwrap()
}

/// SPEC `bus_offline` / `bus_online`: a bus whose link cannot connect, or whose devices all
/// stop answering, raises one alarm with the cause instead of one per device; each device's
/// offline is an `info` event naming the bus; the bus's alarm clears when a device answers.
#[tokio::test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_dead_bus_raises_one_alarm_not_one_per_device() {
    // A link that cannot connect.
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{BOILER_AND_PUMP}", tcp_bus("127.0.0.1:1")),
    ))
    .await
    .unwrap();
    wait_for_async("both offline, as info", || async {
        gw.settle().await;
        !events_of(&gw, "boiler", "device_offline").is_empty()
            && !events_of(&gw, "pump", "device_offline").is_empty()
    })
    .await;
    let listed = alarms(&gw).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(
        (listed[0]["type"].as_str(), listed[0]["deviceId"].as_str()),
        (Some("bus_offline"), Some("b"))
    );
    let m = listed[0]["message"].as_str().unwrap();
    assert!(
        m.starts_with("bus b offline: ") && m.contains("refused") && m.ends_with("(2 devices)"),
        "{m}"
    );
    let off = &events_of(&gw, "boiler", "device_offline")[0];
    assert_eq!(
        (off["state"].as_str(), off["priority"].as_str()),
        (Some("info"), Some("normal")),
        "{off}"
    );
    assert!(
        off["message"].as_str().unwrap().contains("bus b is down"),
        "{off}"
    );
    gw.shutdown().await;
    // Restarted with the line working: the alarm raised before the restart clears.
    let (_live, live_addr, _lc) = start_sim(Profile::Demo).await;
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{BOILER_AND_PUMP}", tcp_bus(&live_addr.to_string())),
    ))
    .await
    .unwrap();
    wait_for_async("cleared after the restart", || async {
        alarms(&gw).await.iter().all(|a| a["state"] == "cleared")
    })
    .await;
    gw.shutdown().await;

    // Every device stops answering, then they come back.
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{BOILER_AND_PUMP}", tcp_bus(&addr.to_string())),
    ))
    .await
    .unwrap();
    wait_for("both online", || {
        online(&gw, "boiler") && online(&gw, "pump")
    })
    .await;
    sim.set_fault(BOILER, Some(Fault::Silent));
    sim.set_fault(PUMP, Some(Fault::Silent));
    wait_for_async("the bus alarm", || async {
        alarms(&gw).await.iter().any(|a| a["type"] == "bus_offline")
    })
    .await;
    wait_for("both offline", || {
        !online(&gw, "boiler") && !online(&gw, "pump")
    })
    .await;
    let listed = alarms(&gw).await;
    assert_eq!(listed.len(), 1, "one alarm for the line: {listed:#?}");
    assert!(listed[0]["message"]
        .as_str()
        .unwrap()
        .contains("no answer from any device"));
    sim.set_fault(BOILER, None);
    sim.set_fault(PUMP, None);
    wait_for("both back", || online(&gw, "boiler") && online(&gw, "pump")).await;
    wait_for_async("the bus alarm cleared", || async {
        alarms(&gw).await.iter().all(|a| a["state"] == "cleared")
    })
    .await;
    gw.settle().await;
    assert_eq!(events_of(&gw, "b", "bus_online").len(), 1);
    // Each device's return names the bus it went down with (#31, item 10).
    let back = events_of(&gw, "boiler", "device_online");
    assert!(
        back.iter()
            .any(|e| e["message"].as_str().unwrap().contains("bus b is back")),
        "{back:#?}"
    );
    assert!(
        alarms(&gw).await.iter().all(|a| a["type"] == "bus_offline"),
        "no device alarms"
    );
    gw.shutdown().await;
}
