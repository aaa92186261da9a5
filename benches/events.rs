//! Event engine benchmark. (1) Samples per second through the pipeline (state, 1,000 rules,
//! report-on-change into SQLite) on a one-thread runtime. (2) Latency from sample read to the
//! `push.event` frame handed to the socket, with 100 WebSocket clients subscribed, one event
//! every 10 ms, next to this machine's floor for that fan-out (one task writing a 1 KB frame
//! straight to 100 loopback sockets, no gateway).
//! Run: `cargo bench --bench events`.

mod common;

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use edge_gateway::modbus::bus::BusEvent;
use edge_gateway::model::{now_ms, Value};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

const DEVICES: usize = 100;
const POINTS: usize = 10;

fn config(dir: &std::path::Path, hash: &str) -> edge_gateway::config::Config {
    let mut c = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[users]]\nname = \"b\"\nrole = \"viewer\"\npassword_hash = \"{hash}\"\n\
         [push]\ninterval_ms = 3600000\n[events]\nmax_per_device_per_s = 100000\n\
         [[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\n",
        dir.display().to_string()
    );
    let pts: Vec<String> = (0..POINTS)
        .map(|i| format!(r#"{{ id = "p{i}", table = "holding", address = {i}, type = "u16", deadband = 5.0 }}"#))
        .collect();
    let _ = write!(c, "[templates.t]\npoints = [{}]\n", pts.join(", "));
    for d in 0..DEVICES {
        let _ = write!(c, "[[devices]]\nid = \"d{d}\"\nbus = \"b\"\nunit = 1\npoll_interval_ms = 86400000\ntemplate = \"t\"\n");
        for p in 0..POINTS {
            let _ = write!(
                c,
                "[[rules]]\nid = \"r{d}-{p}\"\ndevice = \"d{d}\"\npoint = \"p{p}\"\nkind = \"above\"\nthreshold = 100.0\nclear = 90.0\n"
            );
        }
    }
    edge_gateway::config::parse(&c).unwrap().config
}

fn poll(device: usize, v: f64) -> BusEvent {
    BusEvent::Polled {
        device,
        ts: now_ms(),
        at: tokio::time::Instant::now(),
        results: (0..POINTS)
            .map(|p| (p, Ok(Value::Float(v + p as f64 * 0.1))))
            .collect(),
    }
}

fn main() {
    // As the daemon does, so the figures are the product's.
    edge_gateway::tune_allocator();
    match std::env::var("BENCH_ROLE").as_deref() {
        Ok("clients") => return clients(),
        Ok("sink") => return sink(),
        _ => {}
    }
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let hash = edge_gateway::cli::hash_password("bench").unwrap();
    throughput(secs, &hash);
    latency(secs, &hash);
}

/// (1) Throughput on one thread: values wander inside the deadband and below the thresholds,
/// the common case of a plant; every 1,000th poll crosses a threshold and back.
fn throughput(secs: u64, hash: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let gw = edge_gateway::Gateway::start(config(dir.path(), hash)).await.unwrap();
        assert_eq!(gw.config.rules.len(), DEVICES * POINTS);
        let start_samples = gw.metrics.samples.load(Relaxed);
        let t0 = Instant::now();
        let mut i = 0usize;
        while t0.elapsed() < Duration::from_secs(secs) {
            for _ in 0..1000 {
                let v = if i % 1000 == 999 { 150.0 } else { 50.0 + (i % 3) as f64 };
                gw.inject(poll(i % DEVICES, v)).await;
                i += 1;
            }
        }
        let target = start_samples + (i * POINTS) as u64;
        while gw.metrics.samples.load(Relaxed) < target {
            tokio::task::yield_now().await;
        }
        let wall = t0.elapsed().as_secs_f64();
        let n = (i * POINTS) as f64;
        let events: u64 = gw.metrics.events.processed.iter().map(|t| t[0].load(Relaxed)).sum();
        println!("events benchmark");
        println!(
            "  (1) {:.0} samples/s through state + {} rules + store on one runtime thread ({} samples in {wall:.1} s, {events} events)",
            n / wall,
            gw.config.rules.len(),
            n as u64
        );
        gw.shutdown().await;
    });
}

/// (2) Latency to 100 subscribed clients: one threshold crossing every 10 ms; (3) the machine
/// floor for the same fan-out.
fn latency(secs: u64, hash: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let gw = edge_gateway::Gateway::start(config(dir.path(), hash)).await.unwrap();
        let url = format!("ws://{}/ws", gw.http_addr);
        let (mut first, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        first
            .send(Message::Text(json!({"requestId": "1", "service": "auth.login", "params": {"username": "b", "password": "bench"}}).to_string().into()))
            .await
            .unwrap();
        let token = loop {
            if let Some(Ok(Message::Text(t))) = first.next().await {
                let j: serde_json::Value = serde_json::from_str(&t).unwrap();
                break j["data"]["token"].as_str().unwrap().to_string();
            }
        };
        // The 100 clients live in a child process (this binary, BENCH_ROLE=clients), so their
        // reading does not compete with the gateway inside this one.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("BENCH_ROLE", "clients")
            .env("BENCH_URL", &url)
            .env("BENCH_TOKEN", &token)
            .spawn()
            .unwrap();
        drop(first);
        while gw.shared.hub.len() < 100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let lat = &gw.metrics.push.latency;
        let before = lat.count();
        let t0 = Instant::now();
        let mut k = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while t0.elapsed() < Duration::from_secs(secs) {
            tick.tick().await;
            // Point 0 of one device goes above its threshold, or back below clear: one event
            // per tick.
            let v = if (k / DEVICES).is_multiple_of(2) { 150.0 } else { 50.0 };
            gw.inject(poll_one(k % DEVICES, v)).await;
            k += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let delivered = lat.count() - before;
        println!(
            "  (2) sample read -> push.event handed to the socket, 100 clients: p50 <= {} ms, p99 <= {} ms \
             (histogram bucket bounds; {delivered} frames, {} events)",
            lat.quantile(0.5) * 1000.0,
            lat.quantile(0.99) * 1000.0,
            gw.metrics.events.processed.iter().map(|t| t[0].load(Relaxed)).sum::<u64>()
        );
        let d = &gw.metrics.events.duration;
        println!(
            "      sample read -> event committed to SQLite: p50 <= {} ms, p99 <= {} ms",
            d.quantile(0.5) * 1000.0,
            d.quantile(0.99) * 1000.0
        );
        let _ = child.kill();
        let _ = child.wait();
        gw.shutdown().await;
        let (p50, p99) = floor(secs).await;
        println!(
            "  (3) machine floor, one task writing a 1 KB frame straight to 100 loopback sockets every 10 ms: \
             each write done after p50 {p50:.2} ms, p99 {p99:.2} ms (exact)"
        );
    });
}

/// The fan-out part of (2) without the gateway: a reader process holds 100 TCP connections, and
/// every 10 ms one task writes a 1 KB frame to each; returns the p50 and p99 (ms) of the time
/// from the start of a round to each write's completion.
async fn floor(secs: u64) -> (f64, f64) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .env("BENCH_ROLE", "sink")
        .env("BENCH_ADDR", listener.local_addr().unwrap().to_string())
        .spawn()
        .unwrap();
    let mut sockets = Vec::new();
    for _ in 0..100 {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        sockets.push(tcp);
    }
    let frame = vec![b'x'; 1024];
    let mut lat = Vec::new();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while t0.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let round = Instant::now();
        for s in &mut sockets {
            s.write_all(&frame).await.unwrap();
            lat.push(round.elapsed());
        }
    }
    drop(sockets);
    let _ = child.wait();
    lat.sort_unstable();
    let ms = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    (ms(0.5), ms(0.99))
}

/// The reader side of the floor: 100 connections read until the writer closes them.
fn sink() {
    use tokio::io::AsyncReadExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = std::env::var("BENCH_ADDR").unwrap();
        let mut readers = Vec::new();
        for _ in 0..100 {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            readers.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 8 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }));
        }
        for r in readers {
            let _ = r.await;
        }
    });
}

/// The client side of (2): 100 sessions that resume the token, subscribe without telemetry,
/// and read until killed.
fn clients() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = std::env::var("BENCH_URL").unwrap();
        let token = std::env::var("BENCH_TOKEN").unwrap();
        let mut readers = Vec::new();
        for _ in 0..100 {
            let mut s = common::ws_client(&url, None).await;
            s.send(Message::Text(
                json!({"requestId": "r", "service": "auth.resume", "params": {"token": token}})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
            s.send(Message::Text(
                json!({"requestId": "s", "service": "subscribe", "params": {"telemetry": false}})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
            readers.push(tokio::spawn(async move {
                while let Some(Ok(_)) = s.next().await {}
            }));
        }
        for r in readers {
            let _ = r.await;
        }
    });
}

/// A poll in which only point 0 moves to `v`; the others sit still below their thresholds.
fn poll_one(device: usize, v: f64) -> BusEvent {
    BusEvent::Polled {
        device,
        ts: now_ms(),
        at: tokio::time::Instant::now(),
        results: (0..POINTS)
            .map(|p| (p, Ok(Value::Float(if p == 0 { v } else { 50.0 }))))
            .collect(),
    }
}
