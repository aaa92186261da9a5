//! The OPC UA server on the 10 × 50 × 30 load (`common::load`, the simulator's `changing`
//! profile in its own process: all 15,000 values change every second): the gateway once with
//! `[opcua]` off and once with it on, two clients (async-opcua's, in this process) each
//! monitoring every point in one subscription over Basic256Sha256 SignAndEncrypt. Printed per
//! run: the gateway's CPU (and its ratio to the simulator's, a peer on the same load), its
//! RSS; for the OPC UA run the values each client received per second and the notification
//! latency (arrival here − the value's SourceTimestamp, the poll's time): p50, p99, max.
//! Then the goals as ratios from the same run: CPU on ÷ off (≤ 1.5), p99 − publishing interval
//! (≤ 50 ms), RSS on − off (≤ 40 MB).
//!
//! Run: `cargo bench --bench opcua` (`BENCH_BUSES`, default 10; `BENCH_SECS`, default 30,
//! measured after 15 s; `BENCH_PUBLISH_MS`, default 1000).

mod common;
use common::env_or;
use common::load::{devices, POINTS, UNITS};
use common::process::{cpu_seconds, free_port, gateway, http_get, pid_status_kb, simulator};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ua::client::{ClientBuilder, DataChangeCallback, IdentityToken, Session};
use ua::crypto::SecurityPolicy;
use ua::types::{MessageSecurityMode, MonitoredItemCreateRequest, NodeId, TimestampsToReturn};

/// What one client saw while `on`.
#[derive(Default)]
struct Seen {
    on: AtomicBool,
    values: AtomicU64,
    /// Arrival − SourceTimestamp of each value, ms.
    latency_ms: Mutex<Vec<f64>>,
}

/// A client session monitoring every point of the load in one subscription.
async fn subscriber(
    url: &str,
    pki: &std::path::Path,
    gateway_id: &str,
    buses: usize,
    publish: Duration,
    seen: Arc<Seen>,
) -> Arc<Session> {
    let mut client = ClientBuilder::new()
        .application_name("edge-gateway bench")
        .application_uri("urn:edge-gateway:bench")
        .pki_dir(pki)
        .create_sample_keypair(true)
        .trust_server_certs(true)
        .session_retry_limit(3)
        .client()
        .expect("client");
    let endpoint = (
        url,
        SecurityPolicy::Basic256Sha256.to_uri(),
        MessageSecurityMode::SignAndEncrypt,
        ua::types::UserTokenPolicy::anonymous(),
    );
    let (session, event_loop) = client
        .connect_to_matching_endpoint(endpoint, IdentityToken::Anonymous)
        .await
        .expect("connect");
    event_loop.spawn();
    assert!(session.wait_for_connection().await, "session");
    let ns = session.read_namespace_array().await.expect("namespaces");
    let ns = ns
        .get_index(&edge_gateway::opcua::namespace_uri(gateway_id))
        .expect("the gateway's namespace");
    let sub = session
        .create_subscription(
            publish,
            30,
            10,
            // One publish response carries at most this many (the library's message limits).
            1000,
            0,
            true,
            DataChangeCallback::new(move |dv, _item| {
                if !seen.on.load(Relaxed) {
                    return;
                }
                seen.values.fetch_add(1, Relaxed);
                if let Some(ts) = dv.source_timestamp {
                    let ms = (chrono::Utc::now() - ts.as_chrono()).num_microseconds();
                    let ms = ms.unwrap_or(0) as f64 / 1000.0;
                    seen.latency_ms.lock().unwrap().push(ms);
                }
            }),
        )
        .await
        .expect("subscription");
    let items: Vec<MonitoredItemCreateRequest> = (0..buses)
        .flat_map(|b| (1..=UNITS).map(move |u| format!("b{b}u{u}")))
        .flat_map(|d| (0..POINTS).map(move |p| NodeId::new(ns, format!("{d}.r{p}")).into()))
        .collect();
    // The library takes at most 1,000 per call.
    for chunk in items.chunks(1000) {
        let made = session
            .create_monitored_items(sub, TimestampsToReturn::Both, chunk.to_vec())
            .await
            .expect("monitored items");
        assert!(made.iter().all(|m| m.result.status_code.is_good()));
    }
    session
}

struct Figures {
    cpu: f64,
    ratio: f64,
    rss_mb: f64,
    rss_growth_mb: f64,
}

/// Bounds (s) of the request-duration buckets looked at: polls stretched by work on the
/// field thread (the OPC UA feed, if it held it up) move up them.
const LE: [&str; 8] = [
    "0.0005", "0.001", "0.0015", "0.002", "0.003", "0.005", "0.01", "+Inf",
];

/// The gateway's Modbus requests so far, all buses, cumulative by `LE`.
fn request_buckets(http: u16) -> [f64; LE.len()] {
    let text = http_get(http, "/metrics");
    let mut out = [0.0; LE.len()];
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("edge_modbus_request_duration_seconds_bucket{") else {
            continue;
        };
        for (i, le) in LE.iter().enumerate() {
            if rest.contains(&format!("le=\"{le}\"}}")) {
                out[i] += line
                    .rsplit(' ')
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0);
            }
        }
    }
    out
}

/// The share of the window's requests over 1 ms, and the bound under which 99 % fell.
fn request_figures(before: &[f64; LE.len()], after: &[f64; LE.len()]) -> (f64, &'static str) {
    let d: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let total = d[LE.len() - 1].max(1.0);
    let over_1ms = (total - d[1]) / total;
    let p99 = LE
        .iter()
        .zip(&d)
        .find(|(_, n)| **n >= 0.99 * total)
        .map_or("+Inf", |(le, _)| *le);
    (over_1ms, p99)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[allow(
    clippy::too_many_lines,
    reason = "one run, set up, measured and printed in order"
)]
fn run(opcua: bool, buses: usize, secs: u64, publish: Duration) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_port) = simulator("changing");
    let (http, ua_port) = (free_port(), free_port());
    let id = format!("opcua-bench-{}", std::process::id());
    let section = if opcua {
        format!(
            "[opcua]\nenabled = true\nlisten = \"127.0.0.1:{ua_port}\"\nsecurity = [\"basic256sha256\"]\n\
             anonymous = true\ntrust_client_certs = true\n"
        )
    } else {
        String::new()
    };
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n{section}{}",
            dir.path().join("data").display().to_string(),
            devices(buses, sim_port)
        ),
    )
    .unwrap();
    let gw = gateway(&cfg, http);
    let (pid, sim_pid) = (gw.0.id(), sim.0.id());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let seen: Vec<Arc<Seen>> = (0..2).map(|_| Arc::default()).collect();
    let _sessions: Vec<Arc<Session>> = if opcua {
        let url = format!("opc.tcp://127.0.0.1:{ua_port}/");
        seen.iter()
            .enumerate()
            .map(|(i, s)| {
                let pki = dir.path().join(format!("client-{i}"));
                rt.block_on(subscriber(&url, &pki, &id, buses, publish, s.clone()))
            })
            .collect()
    } else {
        Vec::new()
    };
    std::thread::sleep(Duration::from_secs(15));
    let rss0 = pid_status_kb(pid, "VmRSS");
    let requests0 = request_buckets(http);
    let (cpu0, sim0, t0) = (cpu_seconds(pid), cpu_seconds(sim_pid), Instant::now());
    for s in &seen {
        s.on.store(true, Relaxed);
    }
    let mut rss = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        rss = rss.max(pid_status_kb(pid, "VmRSS"));
    }
    for s in &seen {
        s.on.store(false, Relaxed);
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - cpu0) / wall * 100.0;
    let sim_cpu = (cpu_seconds(sim_pid) - sim0) / wall * 100.0;
    let rss_end = pid_status_kb(pid, "VmRSS");
    let (over_1ms, p99) = request_figures(&requests0, &request_buckets(http));
    let f = Figures {
        cpu,
        ratio: cpu / sim_cpu.max(0.01),
        rss_mb: rss as f64 / 1024.0,
        rss_growth_mb: (rss_end as f64 - rss0 as f64) / 1024.0,
    };
    println!(
        "  opcua {:<3}  CPU {:>5.1} % (÷ simulator {:.2})  RSS {:.1} MB (over the window {:+.1} MB)",
        if opcua { "on" } else { "off" },
        f.cpu,
        f.ratio,
        f.rss_mb,
        f.rss_growth_mb
    );
    println!(
        "    field: Modbus requests over 1 ms {:.2} %, p99 ≤ {p99} s",
        over_1ms * 100.0
    );
    for (i, s) in seen.iter().enumerate().filter(|_| opcua) {
        let mut l = s.latency_ms.lock().unwrap().clone();
        l.sort_by(f64::total_cmp);
        println!(
            "    client {}: {:>7.0} values/s  latency p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms",
            i + 1,
            s.values.load(Relaxed) as f64 / wall,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            l.last().copied().unwrap_or(f64::NAN)
        );
    }
    if opcua {
        let mut all: Vec<f64> = seen
            .iter()
            .flat_map(|s| s.latency_ms.lock().unwrap().clone())
            .collect();
        all.sort_by(f64::total_cmp);
        println!(
            "    both: notification p99 {:.0} ms = publishing interval {} ms {:+.0} ms (goal ≤ +50)",
            percentile(&all, 0.99),
            publish.as_millis(),
            percentile(&all, 0.99) - publish.as_millis() as f64
        );
    }
    drop(gw);
    drop(sim);
    rt.shutdown_timeout(Duration::from_secs(1));
    f
}

fn main() {
    edge_gateway::tune_allocator();
    let buses = env_or("BENCH_BUSES", 10) as usize;
    let secs = env_or("BENCH_SECS", 30);
    let publish = Duration::from_millis(env_or("BENCH_PUBLISH_MS", 1000));
    println!(
        "opcua benchmark: {buses} buses x {UNITS} units x {POINTS} u16 points, every value changing every second; \
         2 clients x {} monitored items, Basic256Sha256 SignAndEncrypt, publishing every {} ms; {secs} s measured after 15 s",
        buses * UNITS * POINTS,
        publish.as_millis()
    );
    let off = run(false, buses, secs, publish);
    let on = run(true, buses, secs, publish);
    println!(
        "  on / off: CPU {:.2} (goal ≤ 1.5; each ÷ its simulator {:.2}), RSS {:+.1} MB (goal ≤ +40)",
        on.cpu / off.cpu.max(0.01),
        on.ratio / off.ratio.max(0.01),
        on.rss_mb - off.rss_mb
    );
}
