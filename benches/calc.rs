//! Calculated points and expression rules on the 10 × 50 × 30 load (`common::load`, the
//! simulator's `changing` profile in its own process: all 15,000 values change every second).
//!
//! 1. The gateway twice on the same load: without formulas, then with 1,000 `[[calculated]]`
//!    points (two per device: an efficiency over the device's own registers, and an average,
//!    `BENCH_CROSS` in 100 of them (default 20) reaching into the next device) and 200 `kind = "expr"` rules over several points with an
//!    on-delay. Printed per run: the gateway's CPU (and its ratio to the simulator's, a peer on
//!    the same load), RSS; then CPU with ÷ without (goal ≤ 1.1), the median of `BENCH_PAIRS`
//!    (default 3) alternating pairs, as this machine is shared and noisy.
//! 2. The evaluations themselves, in this process on the same config: a device's poll's
//!    formulas evaluated from a live state as the pipeline does (`Calculator::changed`, the
//!    state's lock held), timed one poll at a time: p50, p99, max per poll and per formula
//!    (goal: p99 under 20 µs).
//!
//! Run: `cargo bench --bench calc` (`BENCH_BUSES`, default 10; `BENCH_SECS`, default 20,
//! measured after 15 s).

mod common;
use common::env_or;
use common::load::{devices, POINTS, UNITS};
use common::process::{cpu_seconds, free_port, gateway, pid_status_kb, simulator};

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use edge_gateway::calc::Calculator;
use edge_gateway::model::{Quality, Value};
use edge_gateway::state::Live;

/// Calculated points per device and expression rules in all.
const PER_DEVICE: usize = 2;
const RULES: usize = 200;

/// The `[[calculated]]` and `[[rules]]` entries of the run with formulas; `cross` in 100 of
/// the averages read a point of the next device.
fn formulas(buses: usize, cross: usize) -> String {
    let mut c = String::new();
    let devices: Vec<String> = (0..buses)
        .flat_map(|b| (1..=UNITS).map(move |u| format!("b{b}u{u}")))
        .collect();
    for (i, d) in devices.iter().enumerate() {
        let next = if i % 100 < cross {
            format!("{}.", devices[(i + 1) % devices.len()])
        } else {
            String::new()
        };
        let _ = write!(
            c,
            "[[calculated]]\ndevice = \"{d}\"\npoint = \"efficiency\"\nexpr = \"r0 / max(r1 * 10.5, 0.001) * 100\"\nunit = \"%\"\n\
             [[calculated]]\ndevice = \"{d}\"\npoint = \"mean\"\nexpr = \"avg(r2, r3, {next}r4) - clamp(r5, 0, 100)\"\n"
        );
    }
    for (i, d) in devices.iter().take(RULES).enumerate() {
        let _ = write!(
            c,
            "[[rules]]\nid = \"x{i}\"\ndevice = \"{d}\"\nkind = \"expr\"\nexpr = \"r6 > 65000 && (r7 < 10 || efficiency > 1e9)\"\non_delay_ms = 5000\n"
        );
    }
    c
}

struct Figures {
    cpu: f64,
    ratio: f64,
    rss_mb: f64,
}

fn run(with: bool, buses: usize, cross: usize, secs: u64) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_port) = simulator("changing");
    let http = free_port();
    let cfg = dir.path().join("bench.toml");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"calc-bench\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:{http}\"\n{}{}",
            dir.path().join("data").display().to_string(),
            devices(buses, sim_port),
            if with { formulas(buses, cross) } else { String::new() }
        ),
    )
    .unwrap();
    let gw = gateway(&cfg, http);
    let (pid, sim_pid) = (gw.0.id(), sim.0.id());
    std::thread::sleep(Duration::from_secs(15));
    let (cpu0, sim0, t0) = (cpu_seconds(pid), cpu_seconds(sim_pid), Instant::now());
    let mut rss = 0;
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(250));
        rss = rss.max(pid_status_kb(pid, "VmRSS"));
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - cpu0) / wall * 100.0;
    let sim_cpu = (cpu_seconds(sim_pid) - sim0) / wall * 100.0;
    let f = Figures {
        cpu,
        ratio: cpu / sim_cpu.max(0.01),
        rss_mb: rss as f64 / 1024.0,
    };
    println!(
        "  {:<13}  CPU {:>5.1} % (÷ simulator {:.2})  RSS {:.1} MB",
        if with { "with formulas" } else { "without" },
        f.cpu,
        f.ratio,
        f.rss_mb
    );
    drop(gw);
    drop(sim);
    f
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Every device's poll's formulas, evaluated from a changing live state as the pipeline does,
/// timed poll by poll.
fn evaluations(buses: usize, cross: usize) {
    let text = format!(
        "[gateway]\nid = \"calc-bench\"\n{}{}",
        devices(buses, 502),
        formulas(buses, cross)
    );
    let config = edge_gateway::config::parse(&text).unwrap().config;
    let restored = edge_gateway::store::Restored {
        devices: vec![(None, None); config.devices.len()],
        points: (config.devices.iter())
            .map(|d| vec![None; d.points.len()])
            .collect(),
        ..Default::default()
    };
    let live = std::sync::RwLock::new(Live::restored(&config, &restored));
    let mut calc = Calculator::new(&config);
    let rounds = 40;
    let mut per_poll = Vec::with_capacity(rounds * config.devices.len());
    let mut evaluated = 0usize;
    for round in 0..rounds {
        for d in 0..config.devices.len() {
            {
                // The poll's new values, as `state::apply` leaves them.
                let mut l = live.write().unwrap();
                for (p, pl) in l.devices[d].points.iter_mut().take(POINTS).enumerate() {
                    pl.value = Some(Value::UInt(((round * 7 + p * 13 + d) % 1000) as u64));
                    pl.quality = Quality::Good;
                    pl.ts = (round * 1000 + d) as i64;
                }
            }
            let t = Instant::now();
            let out = {
                let mut l = live.write().unwrap();
                calc.changed(&config, &mut l, d, 0..POINTS)
            };
            let took = t.elapsed().as_secs_f64() * 1e6;
            evaluated += out.rows.len() + out.rules.len();
            if round > 0 {
                per_poll.push(took);
            }
        }
    }
    per_poll.sort_by(f64::total_cmp);
    let formulas = evaluated as f64 / (rounds * config.devices.len()) as f64;
    println!(
        "  evaluation, per device poll ({formulas:.1} results reported each): p50 {:.2} µs  p99 {:.2} µs  max {:.1} µs (goal p99 < 20 µs)",
        percentile(&per_poll, 0.5),
        percentile(&per_poll, 0.99),
        per_poll.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  per formula: mean {:.2} µs",
        per_poll.iter().sum::<f64>() / per_poll.len() as f64 / formulas.max(1.0)
    );
}

fn main() {
    edge_gateway::tune_allocator();
    let buses = env_or("BENCH_BUSES", 10) as usize;
    let secs = env_or("BENCH_SECS", 20);
    let cross = env_or("BENCH_CROSS", 20) as usize;
    let pairs = env_or("BENCH_PAIRS", 3).max(1) as usize;
    let n = buses * UNITS;
    println!(
        "calc benchmark: {buses} buses x {UNITS} units x {POINTS} u16 points, every value changing every second; \
         {} calculated points ({cross} % of the averages reading another device), {RULES} expression rules; \
         {secs} s measured after 15 s",
        n * PER_DEVICE
    );
    evaluations(buses, cross);
    // The machine is shared and noisy: runs alternate, and each pair's ratio counts.
    let mut raw = Vec::new();
    let mut floor = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..pairs {
        let without = run(false, buses, cross, secs);
        let with = run(true, buses, cross, secs);
        raw.push(with.cpu / without.cpu.max(0.01));
        floor.push(with.ratio / without.ratio.max(0.01));
        rss.push(with.rss_mb - without.rss_mb);
    }
    for v in [&mut raw, &mut floor, &mut rss] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "  with / without, median of {pairs} pairs: CPU {:.2} (goal ≤ 1.1; each ÷ its simulator {:.2}; pairs {:.2}..{:.2}), RSS {:+.1} MB",
        percentile(&raw, 0.5),
        percentile(&floor, 0.5),
        raw[0],
        raw[raw.len() - 1],
        percentile(&rss, 0.5)
    );
}
