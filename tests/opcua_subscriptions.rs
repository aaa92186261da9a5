//! OPC UA subscriptions to the gateway's variables (async-opcua's client): an absolute
//! deadband and a percent deadband (of the point's `min` … `max`, served as `EURange`) each
//! report only the changes past them; a read gives the value last polled (changes are only
//! notified, a read brings its points up to the live state); a device gone offline turns its
//! points `Bad_NoCommunication` and its `Online` false, and back when it answers again; a
//! server too busy to take the field's reports catches up to the newest value, in order.
#![cfg(feature = "opcua")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use edge_gateway::modbus::bus::BusEvent;
use edge_gateway::modbus::simulator::Fault;
use edge_gateway::modbus::simulator::Profile;
use edge_gateway::model::{now_ms, Value};
use edge_gateway::Gateway;
use ua::client::{DataChangeCallback, Session};
use ua::types::{
    DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, ExtensionObject,
    MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, ReadValueId,
    StatusCode, TimestampsToReturn, Variant,
};

type Seen = Arc<Mutex<Vec<DataValue>>>;

/// A subscription (every 100 ms) with one item on `node`, with `filter` or none: every value
/// it reports, with its status.
async fn watch(s: &Session, node: NodeId, filter: Option<DataChangeFilter>) -> Seen {
    let seen = Seen::default();
    let into = seen.clone();
    let sub = s
        .create_subscription(
            Duration::from_millis(100),
            30,
            10,
            0,
            0,
            true,
            DataChangeCallback::new(move |dv, _| into.lock().unwrap().push(dv)),
        )
        .await
        .unwrap();
    let item = MonitoredItemCreateRequest::new(
        ReadValueId::from(node),
        MonitoringMode::Reporting,
        MonitoringParameters {
            queue_size: 10,
            discard_oldest: true,
            filter: filter.map_or_else(ExtensionObject::null, ExtensionObject::from_message),
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

/// A data-change filter on status and value, with `deadband`.
fn status_value(deadband: DeadbandType, value: f64) -> DataChangeFilter {
    DataChangeFilter {
        trigger: DataChangeTrigger::StatusValue,
        deadband_type: deadband as u32,
        deadband_value: value,
    }
}

/// The Double values `seen`.
fn doubles(seen: &Seen) -> Vec<f64> {
    let seen = seen.lock().unwrap();
    seen.iter()
        .filter_map(|dv| match dv.value {
            Some(Variant::Double(v)) => Some(v),
            _ => None,
        })
        .collect()
}

/// The status of the last value `seen`, and that value (`None` for a null).
fn last(seen: &Seen) -> Option<(StatusCode, Option<Variant>)> {
    let seen = seen.lock().unwrap();
    let dv = seen.last()?;
    let value = dv.value.clone().filter(|v| *v != Variant::Empty);
    Some((dv.status.unwrap_or(StatusCode::Good), value))
}

/// The demo boiler's setpoint (holding 2 of unit 1, 0 … 100, 10.0 to start) polled every
/// 100 ms by a gateway serving OPC UA (no security, anonymous), and an anonymous session.
async fn served() -> Served {
    served_polled_every(100).await
}
struct Served {
    sim: edge_gateway::modbus::simulator::Simulator,
    gw: Gateway,
    s: Arc<Session>,
    ns: u16,
    _stop: tokio_util::sync::CancellationToken,
    _dir: tempfile::TempDir,
}

/// [`served`] with the setpoint polled every `poll_ms`.
async fn served_polled_every(poll_ms: u64) -> Served {
    let (sim, sim_addr, stop) = start_sim(Profile::Demo).await;
    sim.with_memory(1, |m| m.holding[2] = 100);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let body = format!(
        "{}[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nsecurity = [\"none\"]\nanonymous = true\n\
         [[devices]]\nid = \"boiler\"\nbus = \"b\"\nunit = 1\npoll_interval_ms = {poll_ms}\n\
         points = [{{ id = \"setpoint\", table = \"holding\", address = 2, type = \"u16\", scale = 0.1, min = 0.0, max = 100.0 }}]\n",
        tcp_bus(&sim_addr.to_string()),
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("10.0 polled", || {
        point(&gw, "boiler", "setpoint").value == Some(Value::Float(10.0))
    })
    .await;
    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let (s, ns) = common::opcua::anonymous(&url, &dir.path().join("pki")).await;
    Served {
        sim,
        gw,
        s,
        ns,
        _stop: stop,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_and_percent_deadbands_report_only_the_changes_past_them() {
    let t = served().await;
    let (sim, s, ns) = (&t.sim, &*t.s, t.ns);
    let node = NodeId::new(ns, "boiler.setpoint");
    // Absolute 5.0; percent 20 of the range 0 … 100, so 20.0.
    let absolute = watch(
        s,
        node.clone(),
        Some(status_value(DeadbandType::Absolute, 5.0)),
    )
    .await;
    let percent = watch(
        s,
        node.clone(),
        Some(status_value(DeadbandType::Percent, 20.0)),
    )
    .await;
    let has = |seen: &Seen, v: f64| doubles(seen).iter().any(|x| (x - v).abs() < 1e-9);
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
    assert_eq!(doubles(&absolute), vec![10.0, 16.0, 35.0]);
    assert_eq!(
        doubles(&percent),
        vec![10.0, 35.0],
        "16.0 is within 20 % of the range"
    );
    let read = s
        .read(&[ReadValueId::from(node)], TimestampsToReturn::Both, 0.0)
        .await
        .unwrap();
    assert_eq!(read[0].value, Some(Variant::Double(35.0)), "{read:?}");
    assert!(read[0].status.is_none_or(|s| s.is_good()), "{read:?}");
    t.gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_gone_offline_turns_its_points_bad_no_communication_and_back() {
    let t = served().await;
    let (sim, s, ns) = (&t.sim, &*t.s, t.ns);
    let node = NodeId::new(ns, "boiler.setpoint");
    // Most SCADA subscribe without a filter; a StatusValue filter is told of every status.
    let plain = watch(s, node.clone(), None).await;
    let setpoint = watch(s, node, Some(status_value(DeadbandType::None, 0.0))).await;
    let online = watch(s, NodeId::new(ns, "boiler.Online"), None).await;
    let good = Some((StatusCode::Good, Some(Variant::Double(10.0))));
    wait_for("10.0, Good", || {
        last(&setpoint) == good && last(&plain) == good
    })
    .await;
    wait_for("online", || {
        last(&online) == Some((StatusCode::Good, Some(Variant::Boolean(true))))
    })
    .await;

    sim.set_fault(1, Some(Fault::Silent));
    // The failed reads first (`Bad`), then offline.
    wait_for("the setpoint Bad_NoCommunication", || {
        last(&setpoint) == Some((StatusCode::BadNoCommunication, None))
    })
    .await;
    // Without a filter the library tells an item by its value alone: the last good value kept
    // beside a Bad status never reached it (it showed 10.0, Good, all along). A null does, and
    // offline's null (no value) differs from a failed read's (the null Variant), so the item
    // sees `Bad_NoCommunication` too, not only the `Bad` before it.
    wait_for("the unfiltered item Bad_NoCommunication", || {
        last(&plain) == Some((StatusCode::BadNoCommunication, None))
    })
    .await;
    let seen: Vec<StatusCode> = plain
        .lock()
        .unwrap()
        .iter()
        .map(|dv| dv.status.unwrap_or(StatusCode::Good))
        .collect();
    assert!(
        seen.windows(2)
            .all(|w| w[0] != w[1] || w[0] == StatusCode::Good),
        "a status told once per change: {seen:?}"
    );
    wait_for("offline", || {
        last(&online).is_some_and(|(_, v)| v == Some(Variant::Boolean(false)))
    })
    .await;
    let read = s
        .read(
            &[ReadValueId::from(NodeId::new(ns, "boiler.setpoint"))],
            TimestampsToReturn::Both,
            0.0,
        )
        .await
        .unwrap();
    assert_eq!(
        (read[0].status, read[0].value.clone().unwrap_or_default()),
        (Some(StatusCode::BadNoCommunication), Variant::Empty),
        "a read says so too: {read:?}"
    );

    sim.with_memory(1, |m| m.holding[2] = 120);
    sim.set_fault(1, None);
    let good = Some((StatusCode::Good, Some(Variant::Double(12.0))));
    wait_for("12.0, Good again", || {
        last(&setpoint) == good && last(&plain) == good
    })
    .await;
    wait_for("online again", || {
        last(&online).is_some_and(|(_, v)| v == Some(Variant::Boolean(true)))
    })
    .await;
    t.gw.shutdown().await;
}

/// A server too busy to take the field's reports: with its feed held, more reports than
/// `FEED_QUEUE` holds are made, and the ones that do not fit are left out. Once it takes them
/// again a subscriber gets the newest value last (brought from the live state: it was never
/// queued), and never an older value after a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_behind_the_field_catches_up_to_the_newest_value_in_order() {
    // Read once at the start: the values that follow are the test's.
    let t = served_polled_every(3_600_000).await;
    let seen = watch(&t.s, NodeId::new(t.ns, "boiler.setpoint"), None).await;
    wait_for("10.0 seen", || doubles(&seen).contains(&10.0)).await;

    let held = t.gw.hold_opcua_feed().await.expect("the server");
    let n = edge_gateway::opcua::FEED_QUEUE + 50;
    let ts = now_ms();
    for i in 1..=n {
        t.gw.inject(BusEvent::Polled {
            device: 0,
            ts: ts + i as i64,
            at: tokio::time::Instant::now(),
            results: vec![(0, Ok(Value::Float(100.0 + i as f64)))],
        })
        .await;
    }
    // Every report made (the pipeline told the feed of each) while the server stood still.
    t.gw.settle().await;
    let newest = 100.0 + n as f64;
    assert_eq!(
        point(&t.gw, "boiler", "setpoint").value,
        Some(Value::Float(newest))
    );
    drop(held);
    wait_for("the newest value seen", || {
        doubles(&seen).last() == Some(&newest)
    })
    .await;
    let values = doubles(&seen);
    assert!(
        values.windows(2).all(|w| w[0] <= w[1]),
        "never an older value after a newer one: {values:?}"
    );
    t.gw.shutdown().await;
}
