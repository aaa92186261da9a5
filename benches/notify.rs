//! The notification backlog benchmark: 10,000 alarm notifications held on disk for a receiver
//! that is down. One gateway process starts on a store whose queue holds them (written by the
//! store's own path: alarm events committed with their notifications), another beside it on
//! the same load with an empty queue; both poll the demo simulator and fail at every attempt.
//! It prints each one's RSS, the growth and the ratio, the backlog still held, and the attempts
//! made. Goal: RSS growth ≤ 5 MB. Run: `cargo bench --bench notify` (`BENCH_SECONDS`, how long
//! both run before the figures are read, default 30; `BENCH_ALARMS`, default 10,000).

mod common;
use common::env_or;
use common::process::{free_port, gateway, metric, pid_status_kb, simulator};

use std::path::Path;
use std::time::Duration;

use edge_gateway::config::Priority;
use edge_gateway::model::event::{AlarmOp, Event, EventState, EventType};
use edge_gateway::model::now_ms;
use edge_gateway::store::StoreCmd;

fn config_text(dir: &Path, http: u16, sim: u16) -> String {
    format!(
        r#"[gateway]
id = "nbench"
data_dir = {data:?}
[http]
listen = "127.0.0.1:{http}"
[[buses]]
name = "b"
kind = "tcp"
address = "127.0.0.1:{sim}"
[[devices]]
id = "boiler"
bus = "b"
unit = 1
points = [{{ id = "temperature", table = "holding", address = 0, type = "f32" }}]
[[notifiers]]
name = "down"
kind = "webhook"
url = "http://127.0.0.1:9/hook"
"#,
        data = dir.join("data").display().to_string()
    )
}

/// `n` alarm events committed through the store writer, each queueing its notification in its
/// own commit as an alarm does: ten alarms raised and cleared over and over, as a long outage
/// of the receiver would pile them up (the alarm table stays ten rows).
async fn fill(text: &str, n: usize) {
    let config = edge_gateway::config::parse(text).unwrap().config;
    let gw = edge_gateway::Gateway::start(config).await.unwrap();
    let base = 1_000_000u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let events = chunk
            .iter()
            .map(|&i| Event {
                seq: base + i as u64,
                device: 0,
                point: Some(0),
                kind: EventType::ThresholdExceeded,
                priority: Priority::High,
                device_seq: i as u64 + 1,
                value: Some(edge_gateway::model::Value::Float(95.5)),
                message: format!("bench alarm {i}"),
                state: if i % 2 == 0 {
                    EventState::Active
                } else {
                    EventState::Cleared
                },
                ts: now_ms(),
                alarm: Some(if i % 2 == 0 {
                    AlarmOp::Raise(format!("bench-{}", i / 2 % 10))
                } else {
                    AlarmOp::Clear(format!("bench-{}", i / 2 % 10))
                }),
                acked_by: None,
                acked_at: None,
                at: tokio::time::Instant::now(),
            })
            .collect();
        let (done, committed) = tokio::sync::oneshot::channel();
        assert!(
            gw.shared
                .store
                .send(StoreCmd::Events { events, done })
                .await
        );
        assert!(committed.await.unwrap());
    }
    gw.shutdown().await;
}

fn main() {
    let alarms = usize::try_from(env_or("BENCH_ALARMS", 10_000)).unwrap();
    let window = Duration::from_secs(env_or("BENCH_SECONDS", 30));
    let (_sim, sim) = simulator("demo");
    let (held, empty) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (http_held, http_empty) = (free_port(), free_port());
    let text_held = config_text(held.path(), http_held, sim);
    let text_empty = config_text(empty.path(), http_empty, sim);
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(fill(&text_held, alarms));
    for (dir, text) in [(&held, &text_held), (&empty, &text_empty)] {
        std::fs::write(dir.path().join("gateway.toml"), text).unwrap();
    }
    let a = gateway(&held.path().join("gateway.toml"), http_held);
    let b = gateway(&empty.path().join("gateway.toml"), http_empty);
    std::thread::sleep(window);
    let rss_held = pid_status_kb(a.0.id(), "VmRSS");
    let rss_empty = pid_status_kb(b.0.id(), "VmRSS");
    let backlog = metric(http_held, "edge_notifier_backlog", "notifier=\"down\"");
    let failed = metric(http_held, "edge_notifications_total", "result=\"failed\"");
    println!(
        "notify: {alarms} alarm notifications queued for a receiver that is down; {}s",
        window.as_secs()
    );
    println!("  backlog held on disk: {backlog} (the device's own alarms included)");
    println!("  attempts made, all failed: {failed}");
    println!(
        "  RSS with the backlog {:.1} MB, with an empty queue {:.1} MB: growth {:.1} MB ({:.2}×); goal ≤ 5 MB",
        rss_held as f64 / 1024.0,
        rss_empty as f64 / 1024.0,
        (rss_held as f64 - rss_empty as f64) / 1024.0,
        rss_held as f64 / rss_empty.max(1) as f64
    );
}
