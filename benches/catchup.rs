//! Upstream catch-up benchmark: a backlog of telemetry rows and events (written straight into the
//! store's outbox) drains into the local MariaDB and, separately, the local Mosquitto (QoS 1)
//! while the gateway keeps polling the simulator.
//! Run: `EDGE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test EDGE_TEST_MQTT_ADDR=127.0.0.1:1883
//! cargo bench --bench catchup` (each sink runs when its variable is set; `BENCH_TELEMETRY`,
//! default 1,000,000; `BENCH_EVENTS`, default 100,000).

mod common;
use common::status_kb;

use std::time::{Duration, Instant};

fn main() {
    // As the daemon does, so the figures are the product's.
    edge_gateway::tune_allocator();
    let mut ran = false;
    if let Ok(url) = std::env::var("EDGE_TEST_MYSQL_URL") {
        catch_up(Sink::Mysql(url));
        ran = true;
    }
    if let Ok(addr) = std::env::var("EDGE_TEST_MQTT_ADDR") {
        catch_up(Sink::Mqtt(addr));
        ran = true;
    }
    if !ran {
        println!("SKIPPED: set EDGE_TEST_MYSQL_URL and/or EDGE_TEST_MQTT_ADDR (./scripts/test shows how the local servers are reached)");
    }
}

enum Sink {
    Mysql(String),
    Mqtt(String),
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark run, read top to bottom"
)]
fn catch_up(sink: Sink) {
    let n_tel: i64 = std::env::var("BENCH_TELEMETRY")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let n_ev: i64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sim = edge_gateway::modbus::simulator::Simulator::new(edge_gateway::modbus::simulator::Profile::Demo);
        let cancel = tokio_util::sync::CancellationToken::new();
        let sim_addr = edge_gateway::modbus::simulator::spawn_tcp(sim, "127.0.0.1:0", cancel.clone()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let id = format!("bench-{}", std::process::id());
        let mut config = edge_gateway::cli::demo_config(sim_addr, dir.path().to_path_buf(), "127.0.0.1:0");
        config.gateway.id = id.clone();
        let name = match &sink {
            Sink::Mysql(url) => {
                config.mysql = Some(edge_gateway::config::Mysql {
                    url: edge_gateway::config::Secret(url.clone()),
                    batch_size: 500,
                });
                "mysql"
            }
            Sink::Mqtt(addr) => {
                config.mqtt = Some(edge_gateway::config::Mqtt {
                    url: edge_gateway::config::Secret(format!("mqtt://{addr}")),
                    client_id: id.clone(),
                    topic_prefix: "edge-bench".into(),
                    qos: 1,
                    allow_writes: false,
                    command_max_age: std::time::Duration::from_secs(30),
                    sparkplug: None,
                    client_identity: None,
                });
                "mqtt"
            }
        };
        // Create the store, then fill its outbox directly: the backlog an outage leaves.
        let gw = edge_gateway::Gateway::start(edge_gateway::cli::demo_config(sim_addr, dir.path().to_path_buf(), "127.0.0.1:0"))
            .await
            .unwrap();
        gw.shutdown().await;
        {
            let mut db = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
            db.busy_timeout(Duration::from_secs(5)).unwrap();
            // Immediate: the stopped gateway's last checkpoint may still be running.
            let tx = db
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .unwrap();
            let t0 = edge_gateway::model::now_ms() - 86_400_000;
            {
                // Samples of 50 points each, as a meter's poll writes them.
                for s in 0..n_tel / 50 {
                    let points: Vec<(String, Option<edge_gateway::model::Value>, edge_gateway::model::Quality)> = (0..50)
                        .map(|p| {
                            let i = s * 50 + p;
                            (format!("p{p}"), Some(edge_gateway::model::Value::Float((i % 1000) as f64 * 0.5)), edge_gateway::model::Quality::Good)
                        })
                        .collect();
                    let points: Vec<_> = points.iter().map(|(p, v, q)| (p.as_str(), v.clone(), *q)).collect();
                    edge_gateway::store::append_sample(&tx, "meter-1", t0 + s, &points).unwrap();
                }
                let mut q = tx
                    .prepare(
                        "INSERT INTO events (seq, event_id, device_id, point_id, type, priority, priority_rank, device_seq, value, message, state, ts)
                         VALUES (?1, ?2, 'meter-1', NULL, 'device_abnormal', 'normal', 0, ?1, NULL, 'backlog', 'info', ?3)",
                    )
                    .unwrap();
                for i in 1..=n_ev {
                    q.execute(rusqlite::params![i, format!("{id}-{i}"), t0 + i]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        let gw = edge_gateway::Gateway::start(config).await.unwrap();
        let t0 = Instant::now();
        let mut peak_rss = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            peak_rss = peak_rss.max(status_kb("VmRSS"));
            let status = if name == "mysql" { &gw.shared.sinks.mysql } else { &gw.shared.sinks.mqtt };
            let b = status.backlog.load(std::sync::atomic::Ordering::Relaxed);
            if b == 0 && t0.elapsed() > Duration::from_secs(2) {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(1800), "no catch-up in 30 minutes (backlog {b})");
        }
        let wall = t0.elapsed().as_secs_f64();
        // Rows as MySQL counts them: one per point value, one per event.
        let rows = (n_tel + n_ev) as f64;
        let status = if name == "mysql" { &gw.shared.sinks.mysql } else { &gw.shared.sinks.mqtt };
        let ok = status.rows_ok.load(std::sync::atomic::Ordering::Relaxed);
        println!("{name} catch-up: {n_tel} telemetry rows + {n_ev} events, polling on");
        if name == "mysql" {
            println!("  drained in {wall:.1} s: {:.0} rows/s (target >= 20000); {ok} outbox rows (samples, events) confirmed", rows / wall);
        } else {
            // One message per event, one per device sample (the bench writes 50 points a sample).
            let msgs = (n_ev + n_tel / 50) as f64;
            println!(
                "  drained in {wall:.1} s: {:.0} QoS 1 messages/s (target >= 10000), {:.0} rows/s; {ok} outbox rows confirmed by PUBACK",
                msgs / wall,
                rows / wall
            );
        }
        println!("  gateway RSS during catch-up: peak {:.1} MB (target < 50 MB)", peak_rss as f64 / 1024.0);
        gw.shutdown().await;
        cancel.cancel();
    });
}
