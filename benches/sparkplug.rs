//! Sparkplug B against JSON on the same load: the 10 × 50 × 30 polling load (`common::load`,
//! the simulator's `changing` profile in its own process: every value changes every second),
//! the MQTT sink alone (local Mosquitto, QoS 1), once with `format = "json"` and once with
//! `format = "sparkplug_b"`. A subscriber in this process counts what reaches the broker in the
//! measured window: device-data messages, their payload bytes and the point values in them
//! (JSON: each `"v":`; Sparkplug: each DDATA metric, decoded). Printed per format: values and
//! messages per second delivered, payload bytes per value and per message, the gateway's CPU
//! and its ratio to the simulator's (a peer on the same load in the same run), and RSS; then
//! Sparkplug over JSON.
//!
//! Run: `EDGE_TEST_MQTT_ADDR=127.0.0.1:1883 cargo bench --bench sparkplug` (`BENCH_BUSES`,
//! default 10; `BENCH_SECS`, default 30, measured after 10 s).

mod common;
use common::env_or;
use common::load::{devices, POINTS, UNITS};
use common::process::{cpu_seconds, free_port, gateway, pid_status_kb, simulator};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_gateway::sinks::mqtt::sparkplug::payload::Payload;
use prost::Message as _;

#[derive(Default)]
struct Counts {
    on: AtomicBool,
    messages: AtomicU64,
    bytes: AtomicU64,
    values: AtomicU64,
}

/// Subscribes to the format's topics and counts device-data messages while `on`.
fn subscriber(addr: &str, filter: String, sparkplug: bool, counts: Arc<Counts>) {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut o = rumqttc::MqttOptions::new(
        // Its own id per run: the last run's subscriber is still connected.
        format!("bench-sub-{}-{sparkplug}", std::process::id()),
        host,
        port.parse().unwrap(),
    );
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 100);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            client
                .subscribe(filter, rumqttc::QoS::AtMostOnce)
                .await
                .unwrap();
            loop {
                match el.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Incoming::Publish(p))) => {
                        if !counts.on.load(Relaxed) {
                            continue;
                        }
                        let values = if sparkplug {
                            if !p.topic.contains("/DDATA/") {
                                continue;
                            }
                            Payload::decode(&p.payload[..]).map_or(0, |x| x.metrics.len())
                        } else {
                            if !p.topic.ends_with("/telemetry") {
                                continue;
                            }
                            p.payload.windows(4).filter(|w| w == b"\"v\":").count()
                        };
                        counts.messages.fetch_add(1, Relaxed);
                        counts.bytes.fetch_add(p.payload.len() as u64, Relaxed);
                        counts.values.fetch_add(values as u64, Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("subscribed");
}

struct Figures {
    values_s: f64,
    msgs_s: f64,
    bytes_value: f64,
    bytes_msg: f64,
    cpu: f64,
    ratio: f64,
    rss_mb: f64,
}

fn run(addr: &str, format: &str, buses: usize, secs: u64) -> Figures {
    let sparkplug = format == "sparkplug_b";
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_port) = simulator("changing");
    let http = free_port();
    let id = format!("spb-bench-{}-{format}", std::process::id());
    let group = format!("bench-{}", std::process::id());
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             [mqtt]\nurl = \"mqtt://{addr}\"\ntopic_prefix = \"edge-bench\"\nqos = 1\nformat = \"{format}\"\ngroup_id = \"{group}\"\n{}",
            dir.path().join("data").display().to_string(),
            devices(buses, sim_port)
        ),
    )
    .unwrap();
    let counts = Arc::new(Counts::default());
    let filter = if sparkplug {
        format!("spBv1.0/{group}/#")
    } else {
        format!("edge-bench/{id}/#")
    };
    subscriber(addr, filter, sparkplug, counts.clone());
    let gw = gateway(&cfg, http);
    let (pid, sim_pid) = (gw.0.id(), sim.0.id());
    std::thread::sleep(Duration::from_secs(10));
    let (cpu0, sim0, t0) = (cpu_seconds(pid), cpu_seconds(sim_pid), Instant::now());
    counts.on.store(true, Relaxed);
    let mut rss = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        rss = rss.max(pid_status_kb(pid, "VmRSS"));
    }
    counts.on.store(false, Relaxed);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - cpu0) / wall * 100.0;
    let sim_cpu = (cpu_seconds(sim_pid) - sim0) / wall * 100.0;
    drop(gw);
    drop(sim);
    let (m, b, v) = (
        counts.messages.load(Relaxed) as f64,
        counts.bytes.load(Relaxed) as f64,
        counts.values.load(Relaxed) as f64,
    );
    let f = Figures {
        values_s: v / wall,
        msgs_s: m / wall,
        bytes_value: b / v.max(1.0),
        bytes_msg: b / m.max(1.0),
        cpu,
        ratio: cpu / sim_cpu.max(0.01),
        rss_mb: rss as f64 / 1024.0,
    };
    println!(
        "  {format:<12} {:>9.0} values/s  {:>6.0} msgs/s  {:>6.1} B/value  {:>7.0} B/msg  CPU {:>5.1} % (÷ simulator {:.2})  RSS {:.1} MB",
        f.values_s, f.msgs_s, f.bytes_value, f.bytes_msg, f.cpu, f.ratio, f.rss_mb
    );
    f
}

fn main() {
    edge_gateway::tune_allocator();
    let Ok(addr) = std::env::var("EDGE_TEST_MQTT_ADDR") else {
        println!("SKIPPED: set EDGE_TEST_MQTT_ADDR (./scripts/test shows how the local Mosquitto is reached)");
        return;
    };
    let buses = env_or("BENCH_BUSES", 10) as usize;
    let secs = env_or("BENCH_SECS", 30);
    println!(
        "sparkplug benchmark: {buses} buses x {UNITS} units x {POINTS} u16 points, every value changing every second; MQTT QoS 1 only; {secs} s measured after 10 s"
    );
    let json = run(&addr, "json", buses, secs);
    let spb = run(&addr, "sparkplug_b", buses, secs);
    println!(
        "  sparkplug_b / json: bytes per value {:.2}, values/s {:.2}, CPU (each ÷ its simulator) {:.2}",
        spb.bytes_value / json.bytes_value,
        spb.values_s / json.values_s.max(1.0),
        spb.ratio / json.ratio.max(0.01)
    );
}
