//! Store endurance benchmark: the store's worst case, every register changing every second.
//! BUSES TCP buses × 50 unit ids × 30 u16 points (deadband 0) polled every second from the
//! simulator's `changing` profile (its own process), with the MySQL sink (local MariaDB) and
//! the MQTT sink (local Mosquitto, QoS 1) on, and two rules per device (a band, a stale check)
//! that cost their evaluation but never fire. Measured on the gateway process alone: points/s,
//! CPU % of one core, RSS, bytes the kernel wrote for it per point sample, WAL max, database
//! size, and what that write rate means for an SD card per day.
//!
//! Run: `EDGE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test EDGE_TEST_MQTT_ADDR=127.0.0.1:1883
//! cargo bench --bench store` (`BENCH_BUSES`, default 10; `BENCH_SECS`, default 60;
//! `BENCH_SAMPLE_EVERY` prints one line per that many seconds: the soak; `BENCH_MAX_DB_MB` sets
//! `store.max_db_mb`, so a soak reaches its cap).
//!
//! The ratio printed beside the CPU figure is the gateway's CPU over the simulator's, which
//! answers the same 500 requests/s: a peer on the same load, from the same run. With
//! `BENCH_NODE_RED=1` (and the broker) Node-RED with node-red-contrib-modbus (`benches/peer`,
//! installed by `npm ci` on first use) polls the same simulator and publishes the same telemetry
//! JSON in the same window, and the gateway's CPU and RSS are printed over its: the peer our
//! users compare us with, side by side. `BENCH_NODE_RED=same` gives the peer the gateway's
//! whole job (it also stores every value in SQLite, sends it to MySQL and runs the rules: see
//! `common::peer::Job`).

mod common;
use common::load::{devices, POINTS, UNITS};
use common::peer::Peer;
use common::process::{
    cpu_seconds, free_port, gateway, http_get, metric, pid_status_kb, simulator, write_bytes,
};
use common::{env_or, mysql};
use std::fmt::Write as _;

use std::time::{Duration, Instant};

fn config(dir: &std::path::Path, buses: usize, sim: u16, http: u16, id: &str) -> String {
    let mut c = format!(
        "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n",
        dir.display().to_string()
    );
    if let Ok(mb) = std::env::var("BENCH_MAX_DB_MB") {
        let _ = write!(c, "[store]\nmax_db_mb = {mb}\n");
    }
    if let Ok(url) = std::env::var("EDGE_TEST_MYSQL_URL") {
        let _ = write!(
            c,
            "[mysql]\nurl = \"{}\"\nbatch_size = 500\n",
            bench_db(&url)
        );
    }
    if let Ok(addr) = std::env::var("EDGE_TEST_MQTT_ADDR") {
        let _ = write!(c, "[mqtt]\nurl = \"mqtt://{addr}\"\nclient_id = \"{id}\"\ntopic_prefix = \"edge-bench\"\nqos = 1\n");
    }
    c.push_str(&devices(buses, sim));
    // Rules on, as on a real line: a band and a stale check on every device. The band is wider
    // than a u16, so they cost their evaluation but raise no events.
    for b in 0..buses {
        for u in 1..=UNITS {
            let _ = write!(
                c,
                "[[rules]]\nid = \"b{b}u{u}-band\"\ndevice = \"b{b}u{u}\"\npoint = \"r0\"\nkind = \"outside\"\nlow = -1.0\nhigh = 70000.0\npriority = \"high\"\n\
                 [[rules]]\nid = \"b{b}u{u}-stale\"\ndevice = \"b{b}u{u}\"\npoint = \"r1\"\nkind = \"stale\"\nfor_ms = 60000\n"
            );
        }
    }
    c
}

/// The bench's own database on the server of `url`: made fresh for each run, so the upstream's
/// speed does not depend on what earlier runs left, and dropped after it.
fn bench_db(url: &str) -> String {
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/edge_bench")
}

/// One reading of everything the bench reports.
struct Reading {
    at: Instant,
    cpu: f64,
    sim_cpu: f64,
    written: u64,
    samples: f64,
    /// The peer's CPU seconds and messages delivered, when it runs; the rows its `same` job
    /// stored in SQLite and MySQL.
    peer: (f64, u64, Option<(u64, u64)>),
}

fn read(pid: u32, sim: u32, http: u16, peer: Option<&Peer>) -> Reading {
    Reading {
        at: Instant::now(),
        cpu: cpu_seconds(pid),
        sim_cpu: cpu_seconds(sim),
        written: write_bytes(pid),
        samples: metric(http, "edge_store_rows_total", ""),
        peer: peer.map_or((0.0, 0, None), |p| {
            (
                cpu_seconds(p.pid()),
                p.messages.load(std::sync::atomic::Ordering::Relaxed),
                p.stored(),
            )
        }),
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark run, read top to bottom"
)]
fn main() {
    edge_gateway::tune_allocator();
    let buses = env_or("BENCH_BUSES", 10) as usize;
    let secs = env_or("BENCH_SECS", 60);
    let every = env_or("BENCH_SAMPLE_EVERY", 0);
    let sinks: Vec<&str> = [
        ("mysql", "EDGE_TEST_MYSQL_URL"),
        ("mqtt", "EDGE_TEST_MQTT_ADDR"),
    ]
    .into_iter()
    .filter(|(_, v)| std::env::var(v).is_ok())
    .map(|(n, _)| n)
    .collect();
    let mysql_url = std::env::var("EDGE_TEST_MYSQL_URL").ok();
    if let Some(url) = &mysql_url {
        mysql(url, "DROP DATABASE IF EXISTS edge_bench");
        mysql(url, "CREATE DATABASE edge_bench");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (sim, sim_port) = simulator("changing");
    let http = free_port();
    let cfg = dir.path().join("bench.toml");
    let id = format!("store-bench-{}", std::process::id());
    std::fs::write(&cfg, config(&data, buses, sim_port, http, &id)).unwrap();
    let start = Instant::now();
    let gw = gateway(&cfg, http);
    let (pid, sim_pid) = (gw.0.id(), sim.0.id());
    let peer = Peer::start(&dir.path().join("node-red"), buses, sim_port);
    println!(
        "store benchmark: {buses} buses x {UNITS} units x {POINTS} u16 points, every one changing every second, deadband 0; sinks: {}; {secs} s measured after 10 s",
        if sinks.is_empty() { "none (set EDGE_TEST_MYSQL_URL / EDGE_TEST_MQTT_ADDR)".to_string() } else { sinks.join(" + ") }
    );
    std::thread::sleep(Duration::from_secs(10));
    let first = read(pid, sim_pid, http, peer.as_ref());
    let (mut wal_max, mut rss_max, mut last) = (0u64, 0u64, read(pid, sim_pid, http, None));
    let mut peer_rss_max = 0u64;
    if every > 0 {
        println!("  minute  CPU%   RSS MB  db MB   WAL MB  written KB/s  B/sample  backlog");
    }
    while first.at.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        let (db, wal) = edge_gateway::store::file_sizes(&data);
        wal_max = wal_max.max(wal);
        rss_max = rss_max.max(pid_status_kb(pid, "VmRSS"));
        if let Some(p) = &peer {
            peer_rss_max = peer_rss_max.max(pid_status_kb(p.pid(), "VmRSS"));
        }
        if every > 0 && last.at.elapsed() >= Duration::from_secs(every) {
            let now = read(pid, sim_pid, http, None);
            let dt = now.at.duration_since(last.at).as_secs_f64();
            let backlog = metric(http, "edge_sink_backlog", "");
            println!(
                "  {:6.1}  {:5.1}  {:6.1}  {:6.1}  {:6.2}  {:12.0}  {:8.1}  {backlog:.0}",
                first.at.elapsed().as_secs_f64() / 60.0,
                (now.cpu - last.cpu) / dt * 100.0,
                pid_status_kb(pid, "VmRSS") as f64 / 1024.0,
                db as f64 / 1048576.0,
                wal as f64 / 1048576.0,
                (now.written - last.written) as f64 / dt / 1024.0,
                (now.written - last.written) as f64 / (now.samples - last.samples).max(1.0),
            );
            last = now;
        }
    }
    let end = read(pid, sim_pid, http, peer.as_ref());
    let wall = end.at.duration_since(first.at).as_secs_f64();
    let (db, _) = edge_gateway::store::file_sizes(&data);
    let health = http_get(http, "/healthz");
    let peer_doing = peer.as_ref().map_or("", Peer::doing);
    drop(gw);
    drop(peer);
    drop(sim);
    if let Some(url) = &mysql_url {
        mysql(url, "DROP DATABASE IF EXISTS edge_bench");
    }

    let samples = end.samples - first.samples;
    let per_s = samples / wall;
    let cpu = (end.cpu - first.cpu) / wall * 100.0;
    let sim_cpu = (end.sim_cpu - first.sim_cpu) / wall * 100.0;
    let written = (end.written - first.written) as f64;
    let per_sample = written / samples.max(1.0);
    let gb_day = |rate: f64| per_sample * rate * 86_400.0 / 1e9;
    println!("  points/s stored:       {per_s:.0}");
    println!(
        "  gateway CPU:           {cpu:.1} % of one core (target <= 5 %); simulator on the same load {sim_cpu:.1} %: ratio {:.2}",
        cpu / sim_cpu.max(0.01)
    );
    println!(
        "  gateway CPU per value: {:.2} us (goal <= 1.5)",
        (end.cpu - first.cpu) / samples.max(1.0) * 1e6
    );
    println!(
        "  gateway RSS:           max {:.1} MB over the window",
        rss_max as f64 / 1024.0
    );
    if end.peer.1 > 0 {
        let peer_cpu = (end.peer.0 - first.peer.0) / wall * 100.0;
        let peer_values = (end.peer.1 - first.peer.1) as f64 * POINTS as f64 / wall;
        println!(
            "  Node-RED, same load:   {peer_values:.0} values/s {peer_doing}, CPU {peer_cpu:.1} %, RSS max {:.1} MB; gateway / Node-RED: CPU {:.2}, RSS {:.2}",
            peer_rss_max as f64 / 1024.0,
            cpu / peer_cpu.max(0.01),
            rss_max as f64 / peer_rss_max.max(1) as f64
        );
        if let (Some((lite0, my0)), Some((lite1, my1))) = (first.peer.2, end.peer.2) {
            // What it kept up with: the rows it stored in the window.
            println!(
                "  Node-RED stored:       {:.0} values/s in SQLite, {:.0} in MySQL",
                lite1.saturating_sub(lite0) as f64 / wall,
                my1.saturating_sub(my0) as f64 / wall
            );
        }
    }
    println!(
        "  written to storage:    {:.0} KB/s, {per_sample:.1} bytes per point sample (target <= 64, stretch <= 32)",
        written / wall / 1024.0
    );
    println!(
        "  at this rate:          {:.0} MB/day; SD card: {:.2} GB/day at 1,500 points/s, {:.2} GB/day at 15,000",
        written / wall * 86_400.0 / 1e6,
        gb_day(1_500.0),
        gb_day(15_000.0)
    );
    println!(
        "  WAL:                   max {:.2} MB (target < 32 MB); database {:.1} MB after {:.0} s",
        wal_max as f64 / 1048576.0,
        db as f64 / 1048576.0,
        start.elapsed().as_secs_f64()
    );
    println!(
        "  healthz:               {}",
        health.lines().last().unwrap_or("")
    );
}
