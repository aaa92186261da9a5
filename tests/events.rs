//! The event pipeline with tokio's paused clock: samples injected as a bus would send them,
//! events read back from SQLite. On-delay, hysteresis, stale, ids across a restart, deviceSeq
//! without gaps, emergency overtaking a flood, and storm suppression with its summary.

mod common;

use std::time::Duration;

use common::*;
use edge_gateway::config::Priority;
use edge_gateway::modbus::bus::BusEvent;
use edge_gateway::model::{now_ms, Quality, Value};
use edge_gateway::store::{self, EventFilter};
use edge_gateway::Gateway;
use serde_json::Value as Json;

const DEVICES: &str = r#"
[[buses]]
name = "b"
kind = "tcp"
address = "127.0.0.1:1"
[[devices]]
id = "boiler"
bus = "b"
unit = 1
poll_interval_ms = 3600000
points = [
  { id = "temperature", table = "holding", address = 0, type = "f32" },
  { id = "counter", table = "holding", address = 2, type = "u32" },
]
[[devices]]
id = "pump"
bus = "b"
unit = 2
poll_interval_ms = 3600000
points = [ { id = "speed", table = "input", address = 0, type = "u16" } ]
[[rules]]
id = "overheat"
device = "boiler"
point = "temperature"
kind = "above"
threshold = 90.0
clear = 85.0
for_ms = 2000
priority = "emergency"
message = "Boiler over temperature"
[[rules]]
id = "frozen-counter"
device = "boiler"
point = "counter"
kind = "stale"
for_ms = 60000
"#;

/// The bus points at a closed port: wait for its first (failed) polls, so they cannot land on
/// top of the samples the test injects. The next polls are an hour away.
async fn start(dir: &std::path::Path, extra: &str) -> Gateway {
    let gw = Gateway::start(config(dir, &format!("{extra}{DEVICES}")))
        .await
        .unwrap();
    wait_for("first polls", || {
        requests(&gw, "boiler", "error") >= 1 && requests(&gw, "pump", "error") >= 1
    })
    .await;
    gw
}

async fn events_now(gw: &Gateway, kind: Option<&str>) -> Vec<Json> {
    gw.store.flush().await;
    let conn = store::open_reader(&gw.config.gateway.data_dir).unwrap();
    let f = EventFilter {
        kind: kind.map(String::from),
        limit: 100_000,
        ..Default::default()
    };
    let mut v = store::query_events(&conn, &gw.config, &f).unwrap();
    v.reverse();
    v
}

async fn sample(gw: &Gateway, device: usize, point: usize, v: Value) {
    gw.inject(BusEvent::Polled {
        device,
        ts: now_ms(),
        at: tokio::time::Instant::now(),
        results: vec![(point, Ok(v))],
    })
    .await;
}

async fn events(gw: &Gateway, kind: Option<&str>) -> Vec<Json> {
    // Everything fed in so far through the pipeline and the processor, and committed.
    gw.settle().await;
    events_now(gw, kind).await
}

async fn alarms(gw: &Gateway) -> Vec<Json> {
    gw.store.flush().await;
    let conn = store::open_reader(&gw.config.gateway.data_dir).unwrap();
    store::active_alarms(&conn, &gw.config).unwrap()
}

/// The listed alarms of one point. (Paused time can run far ahead while a test waits on the
/// real store thread, so the `stale` rule on the counter may raise an alarm of its own.)
async fn alarms_of(gw: &Gateway, point: &str) -> Vec<Json> {
    alarms(gw)
        .await
        .into_iter()
        .filter(|a| a["pointId"] == point)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn on_delay_and_hysteresis_raise_once_and_clear_once_with_the_alarm_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "").await;
    // A spike of 1 s under a 2 s on-delay: nothing.
    sample(&gw, 0, 0, Value::Float(95.0)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sample(&gw, 0, 0, Value::Float(80.0)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(events(&gw, Some("threshold_exceeded")).await.is_empty());
    // Held past the on-delay: raised once, even with no new sample (the tick raises it).
    sample(&gw, 0, 0, Value::Float(95.0)).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sample(&gw, 0, 0, Value::Float(97.0)).await;
    let raised = events(&gw, Some("threshold_exceeded")).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    let e = &raised[0];
    assert_eq!(
        (
            e["priority"].as_str(),
            e["state"].as_str(),
            e["pointId"].as_str()
        ),
        (Some("emergency"), Some("active"), Some("temperature"))
    );
    assert_eq!(e["message"], "Boiler over temperature");
    assert!(e["id"].as_str().unwrap().starts_with("test-gw-"));
    let a = alarms_of(&gw, "temperature").await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0]["id"], e["id"]);
    // Between clear and threshold: no clear. Past clear: one clear.
    for x in [89.0, 91.0, 86.0] {
        sample(&gw, 0, 0, Value::Float(x)).await;
    }
    assert!(events(&gw, Some("threshold_cleared")).await.is_empty());
    sample(&gw, 0, 0, Value::Float(84.0)).await;
    sample(&gw, 0, 0, Value::Float(83.0)).await;
    assert_eq!(events(&gw, Some("threshold_cleared")).await.len(), 1);
    // Cleared but not acknowledged: still listed (ISA-18.2), until acked.
    let a = alarms_of(&gw, "temperature").await;
    assert_eq!((a.len(), a[0]["state"].as_str()), (1, Some("cleared")));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let id = e["id"].as_str().unwrap().to_string();
    gw.store
        .send(store::StoreCmd::Ack {
            event_id: id,
            user: "tech".into(),
            ts: now_ms(),
            reply: tx,
        })
        .await;
    rx.await.unwrap().unwrap();
    assert!(alarms_of(&gw, "temperature").await.is_empty());
    let acked = events(&gw, Some("threshold_exceeded")).await;
    assert_eq!(acked[0]["ackedBy"], "tech");
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_frozen_value_goes_stale_in_quality_and_as_an_abnormal_event() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "").await;
    sample(&gw, 0, 1, Value::Int(7)).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    sample(&gw, 0, 1, Value::Int(7)).await;
    assert_eq!(quality(&gw, "boiler", "counter"), Quality::Good);
    tokio::time::sleep(Duration::from_secs(31)).await;
    let ev = events(&gw, Some("device_abnormal")).await;
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0]["message"].as_str().unwrap().contains("stale"));
    assert_eq!(quality(&gw, "boiler", "counter"), Quality::Stale);
    sample(&gw, 0, 1, Value::Int(8)).await;
    let ev = events(&gw, Some("device_abnormal")).await;
    assert_eq!(ev.last().unwrap()["state"], "cleared");
    assert_eq!(quality(&gw, "boiler", "counter"), Quality::Good);
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn ids_survive_a_restart_and_device_seq_has_no_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let status = |online| BusEvent::Status {
        device: 1,
        ts: now_ms(),
        online,
        reason: "test".into(),
        bus_down: false,
    };
    let gw = start(dir.path(), "").await;
    for i in 0..6 {
        gw.inject(status(i % 2 == 0)).await;
    }
    let before = events(&gw, None).await;
    gw.shutdown().await;
    let gw = start(dir.path(), "").await;
    for i in 0..6 {
        gw.inject(status(i % 2 == 1)).await;
    }
    let all = events(&gw, None).await;
    assert!(all.len() > before.len());
    let seqs: Vec<u64> = all
        .iter()
        .map(|e| {
            e["id"]
                .as_str()
                .unwrap()
                .rsplit('-')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq never repeats: {seqs:?}"
    );
    let pump: Vec<u64> = all
        .iter()
        .filter(|e| e["deviceId"] == "pump")
        .map(|e| e["deviceSeq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        pump,
        (1..=pump.len() as u64).collect::<Vec<_>>(),
        "deviceSeq +1 per event, across the restart"
    );
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_emergency_overtakes_a_flood_of_normal_events() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "[events]\nmax_per_device_per_s = 100000\n").await;
    // A store that is slow right now (another connection holds the write lock for a moment):
    // the flood queues up behind the first commit, as it does under real load, instead of
    // racing the injection.
    let lock = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    for _ in 0..1000 {
        gw.inject_draft(info_draft(0, Priority::Normal, "flood", now_ms()))
            .await;
    }
    gw.inject_draft(info_draft(1, Priority::Emergency, "flood", now_ms()))
        .await;
    // The gauge is current while the processor waits on the store: the flood is queued.
    // (Counted in at each send and out at each take, not sampled when the processor loops.)
    let queued = gw.metrics.events.queue[0].load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        queued >= 1000 - 256,
        "edge_event_queue_length{{priority=\"normal\"}} = {queued}"
    );
    tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(200)))
        .await
        .unwrap();
    lock.execute_batch("ROLLBACK").unwrap();
    // (Paused time may run far ahead while the test waits on the real store thread, so the
    // stale rule may add an event of its own: count the flood by its message.)
    let floods = |v: &[Json]| v.iter().filter(|e| e["message"] == "flood").count();
    for _ in 0..3000 {
        if floods(&events_now(&gw, None).await) >= 1001 {
            break;
        }
        tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(10)))
            .await
            .unwrap();
    }
    let all = events(&gw, None).await;
    let flood: Vec<&Json> = all.iter().filter(|e| e["message"] == "flood").collect();
    assert_eq!(flood.len(), 1001);
    let pos = flood
        .iter()
        .position(|e| e["priority"] == "emergency")
        .unwrap();
    assert!(
        pos < 300,
        "the emergency was committed {pos}th, behind the flood"
    );
    // And each device's own order is intact: deviceSeq 1, 2, 3, … in commit order.
    let seqs: Vec<u64> = all
        .iter()
        .filter(|e| e["deviceId"] == "boiler")
        .map(|e| e["deviceSeq"].as_u64().unwrap())
        .collect();
    assert!(seqs.len() >= 1000);
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    gw.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_storm_is_limited_per_device_counted_and_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start(dir.path(), "[events]\nmax_per_device_per_s = 5\n").await;
    // All in one (past) second, so the storm is over as soon as the processor looks again.
    let ts = now_ms() - 10_000;
    for _ in 0..50 {
        gw.inject_draft(info_draft(0, Priority::Normal, "flood", ts))
            .await;
    }
    gw.inject_draft(info_draft(0, Priority::Emergency, "flood", ts))
        .await;
    // An operator acknowledging ten alarms of the device in the same second: records, never
    // suppressed, and outside the budget.
    for k in 0..10 {
        let mut ack = info_draft(0, Priority::Normal, "acknowledged", ts);
        ack.alarm = Some(edge_gateway::model::event::AlarmOp::Acked {
            event: format!("g-{k}"),
            by: "admin".into(),
        });
        gw.inject_draft(ack).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acks = events(&gw, Some("device_abnormal"))
        .await
        .into_iter()
        .filter(|e| e["message"] == "acknowledged" && e["ackedBy"] == "admin")
        .count();
    assert_eq!(acks, 10, "every acknowledgement recorded");
    let all = events(&gw, Some("device_abnormal")).await;
    let flood = all.iter().filter(|e| e["message"] == "flood").count();
    assert_eq!(
        flood, 6,
        "5 per second, plus the emergency, which is never suppressed"
    );
    let summary: Vec<_> = all
        .iter()
        .filter(|e| e["message"].as_str().unwrap().contains("suppressed"))
        .collect();
    assert_eq!(summary.len(), 1, "{all:?}");
    assert!(summary[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("45 events suppressed"));
    assert_eq!(summary[0]["state"], "info");
    assert_eq!(
        gw.metrics.events.suppressed[0].load(std::sync::atomic::Ordering::Relaxed),
        45
    );
    let text = gw.metrics.render();
    assert!(
        text.contains("edge_events_suppressed_total{device=\"boiler\"} 45"),
        "{text}"
    );
    gw.shutdown().await;
}
