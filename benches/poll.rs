//! Polling benchmark: 500 devices × 30 points (10 TCP buses of 50 unit ids) polled every second
//! from the simulator, measured on the gateway process alone: points/s, CPU % of one core, peak
//! RSS. Then the idle RSS of `demo`. Run: `cargo bench --bench poll` (release profile).
//!
//! The simulator runs as its own process (`edge-gateway simulate --profile bench`) so that its
//! work is not counted against the gateway.

mod common;
use common::load::{devices_with, POINTS, UNITS};
use common::process::{
    bin, cpu_seconds, free_port, gateway, http_get, ok_requests, pid_status_kb, simulator,
    wait_for_line, Proc,
};

use std::process::Stdio;
use std::time::{Duration, Instant};

const BUSES: usize = 10;

fn bench_config(dir: &std::path::Path, sim: u16, http: u16) -> String {
    let mut c = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n",
        dir.display().to_string()
    );
    // 10 f32, 10 u16, 10 i16: 40 registers, one read per device.
    let mut pts = Vec::new();
    for i in 0..10 {
        pts.push(format!(
            r#"{{ id = "f{i}", table = "holding", address = {}, type = "f32", deadband = 0.5 }}"#,
            i * 2
        ));
        pts.push(format!(
            r#"{{ id = "u{i}", table = "holding", address = {}, type = "u16", deadband = 1.0 }}"#,
            20 + i
        ));
        pts.push(format!(
            r#"{{ id = "s{i}", table = "holding", address = {}, type = "i16", scale = 0.1 }}"#,
            30 + i
        ));
    }
    assert_eq!(pts.len(), POINTS);
    c.push_str(&devices_with(BUSES, sim, &pts));
    c
}

fn main() {
    // As the daemon does, so the figures are the product's.
    edge_gateway::tune_allocator();
    // `cargo bench` passes --bench; a filter argument is not used.
    let secs: u64 = std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_port) = simulator("bench");

    let http = free_port();
    let cfg = dir.path().join("bench.toml");
    std::fs::write(&cfg, bench_config(&dir.path().join("data"), sim_port, http)).unwrap();
    let gw = gateway(&cfg, http);
    let pid = gw.0.id();
    // Warm up: every device online and the store past its first writes.
    std::thread::sleep(Duration::from_secs(5));
    let (req0, cpu0, t0) = (ok_requests(http), cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (req1, cpu1, wall) = (
        ok_requests(http),
        cpu_seconds(pid),
        t0.elapsed().as_secs_f64(),
    );
    let health = http_get(http, "/healthz");
    let points_per_s = (req1 - req0) as f64 * POINTS as f64 / wall;
    let cpu_pct = (cpu1 - cpu0) / wall * 100.0;
    let peak_rss = pid_status_kb(pid, "VmHWM");
    let rss = pid_status_kb(pid, "VmRSS");
    // Heap and stacks apart from the binary's own pages (file-backed: shared, given back
    // under pressure), which grow with the code, not with the load.
    let (anon, file) = (pid_status_kb(pid, "RssAnon"), pid_status_kb(pid, "RssFile"));
    drop(gw);
    drop(sim);

    println!(
        "poll benchmark: {BUSES} buses x {UNITS} units x {POINTS} points at 1 s, {secs} s measured"
    );
    println!("  points/s sustained:    {points_per_s:.0} (target 15000)");
    println!(
        "  requests/s:            {:.0}",
        (req1 - req0) as f64 / wall
    );
    println!("  gateway CPU:           {cpu_pct:.1} % of one core (target < 15 %)");
    println!(
        "  gateway RSS:           {:.1} MB now, {:.1} MB peak (target < 30 MB)",
        rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    println!(
        "                         of which now {:.1} MB anonymous (heap, stacks), {:.1} MB file-backed (the binary)",
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
    println!(
        "  healthz:               {}",
        health.lines().last().unwrap_or("")
    );

    // Idle RSS of demo (simulator + gateway in one process).
    let demo_port = free_port();
    let mut demo = Proc(
        bin()
            .args([
                "demo",
                "--listen",
                &format!("127.0.0.1:{demo_port}"),
                "--data",
                dir.path().join("demo").to_str().unwrap(),
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_line(&mut demo.0, "Press Ctrl-C");
    std::thread::sleep(Duration::from_secs(10));
    let demo_rss = pid_status_kb(demo.0.id(), "VmRSS");
    println!(
        "  demo idle RSS:         {:.1} MB after 10 s (target < 15 MB)",
        demo_rss as f64 / 1024.0
    );
}
