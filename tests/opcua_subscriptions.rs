//! OPC UA data-change filters on the gateway's variables (async-opcua's client): an absolute
//! deadband and a percent deadband (of the point's `min` … `max`, served as `EURange`) each
//! report only the changes past them; a read gives the value last polled (changes are only
//! notified, a read brings its points up to the live state).
#![cfg(feature = "opcua")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::model::Value;
use edge_gateway::Gateway;
use ua::client::{DataChangeCallback, Session};
use ua::types::{
    DataChangeFilter, DataChangeTrigger, DeadbandType, ExtensionObject, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NodeId, ReadValueId, TimestampsToReturn, Variant,
};

/// A subscription (every 100 ms) with one item on `node` filtered by `deadband`; the values it
/// reports.
async fn watch(s: &Session, node: NodeId, deadband: (DeadbandType, f64)) -> Arc<Mutex<Vec<f64>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let into = seen.clone();
    let sub = s
        .create_subscription(
            Duration::from_millis(100),
            30,
            10,
            0,
            0,
            true,
            DataChangeCallback::new(move |dv, _| {
                if let Some(Variant::Double(v)) = dv.value {
                    into.lock().unwrap().push(v);
                }
            }),
        )
        .await
        .unwrap();
    let filter = DataChangeFilter {
        trigger: DataChangeTrigger::StatusValue,
        deadband_type: deadband.0 as u32,
        deadband_value: deadband.1,
    };
    let item = MonitoredItemCreateRequest::new(
        ReadValueId::from(node),
        MonitoringMode::Reporting,
        MonitoringParameters {
            sampling_interval: 0.0,
            filter: ExtensionObject::from_message(filter),
            queue_size: 10,
            discard_oldest: true,
            ..Default::default()
        },
    );
    let made = s
        .create_monitored_items(sub, TimestampsToReturn::Both, vec![item])
        .await
        .unwrap();
    assert!(made[0].result.status_code.is_good(), "{made:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_and_percent_deadbands_report_only_the_changes_past_them() {
    let (sim, sim_addr, _c) = start_sim(Profile::Demo).await;
    sim.with_memory(1, |m| m.holding[2] = 100);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = format!(
        "{}[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nsecurity = [\"none\"]\nanonymous = true\n\
         [[devices]]\nid = \"boiler\"\nbus = \"b\"\nunit = 1\npoll_interval_ms = 100\n\
         points = [{{ id = \"setpoint\", table = \"holding\", address = 2, type = \"u16\", scale = 0.1, min = 0.0, max = 100.0 }}]\n",
        tcp_bus(&sim_addr.to_string()),
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    let setpoint =
        |gw: &Gateway, v: f64| point(gw, "boiler", "setpoint").value == Some(Value::Float(v));
    wait_for("10.0 polled", || setpoint(&gw, 10.0)).await;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let (s, ns) = common::opcua::anonymous(&url, &dir.path().join("pki")).await;
    let node = NodeId::new(ns, "boiler.setpoint");
    // Absolute 5.0; percent 20 of the range 0 … 100, so 20.0.
    let absolute = watch(&s, node.clone(), (DeadbandType::Absolute, 5.0)).await;
    let percent = watch(&s, node.clone(), (DeadbandType::Percent, 20.0)).await;
    let has = |seen: &Arc<Mutex<Vec<f64>>>, v: f64| {
        seen.lock().unwrap().iter().any(|x| (x - v).abs() < 1e-9)
    };
    wait_for("both start with 10.0", || {
        has(&absolute, 10.0) && has(&percent, 10.0)
    })
    .await;
    // +6: past the absolute deadband only.
    sim.with_memory(1, |m| m.holding[2] = 160);
    wait_for("16.0 reported past the absolute deadband", || {
        has(&absolute, 16.0)
    })
    .await;
    // +25 from the last reported to each: past both.
    sim.with_memory(1, |m| m.holding[2] = 350);
    wait_for("35.0 reported to both", || {
        has(&absolute, 35.0) && has(&percent, 35.0)
    })
    .await;
    assert_eq!(*absolute.lock().unwrap(), vec![10.0, 16.0, 35.0]);
    assert_eq!(
        *percent.lock().unwrap(),
        vec![10.0, 35.0],
        "16.0 is within 20 % of the range"
    );
    let read = s
        .read(&[ReadValueId::from(node)], TimestampsToReturn::Both, 0.0)
        .await
        .unwrap();
    assert_eq!(read[0].value, Some(Variant::Double(35.0)), "{read:?}");
    assert!(read[0].status.is_none_or(|s| s.is_good()), "{read:?}");
    gw.shutdown().await;
}
