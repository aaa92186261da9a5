//! The fleet benchmark: N gateway processes (default 50), each polling 10 devices × 30 points
//! every second from one simulator, on one Mosquitto and one MariaDB. It prints how long
//! `fleet ls` takes to list them all, how long `fleet apply --all` takes until every one has
//! applied, MariaDB's telemetry rows a second, that no row is missing or extra after MariaDB is
//! restarted mid-run, and each gateway's CPU and RSS beside one gateway alone on the same load.
//! Run: `EDGE_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test EDGE_TEST_MQTT_ADDR=127.0.0.1:1883
//! cargo bench --bench fleet` (`BENCH_GATEWAYS`, default 50; `BENCH_SECONDS`, the measuring
//! window, default 30). It restarts the local MariaDB (`mariadb-admin shutdown`, then
//! `mariadbd` as the machine starts it).

mod common;
use common::env_or;
use common::process::{bin, cpu_seconds, pid_status_kb, simulator, Proc};

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Devices per gateway, and points per device.
const DEVICES: usize = 10;
const POINTS: usize = 30;

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark run, read top to bottom"
)]
fn main() {
    let (Ok(mysql), Ok(mqtt)) = (
        std::env::var("EDGE_TEST_MYSQL_URL"),
        std::env::var("EDGE_TEST_MQTT_ADDR"),
    ) else {
        println!("SKIPPED: set EDGE_TEST_MYSQL_URL and EDGE_TEST_MQTT_ADDR (./scripts/test shows how the local servers are reached)");
        return;
    };
    let n = usize::try_from(env_or("BENCH_GATEWAYS", 50)).unwrap();
    let window = Duration::from_secs(env_or("BENCH_SECONDS", 30));
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("fbench{}", std::process::id());
    let (_sim, sim) = simulator("changing");
    let key = dir.path().join("ops.key");
    let out = bin()
        .args(["fleet", "keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    let keys = String::from_utf8(out.stdout).unwrap();
    let fleet = Fleet {
        mysql: &mysql,
        mqtt: &mqtt,
        prefix: &prefix,
        keys: keys.trim(),
        sim,
    };
    sql(&format!(
        "DELETE FROM edge_telemetry WHERE gateway_id LIKE '{prefix}-%'"
    ));

    // One gateway alone, under a topic prefix of its own (not one of the fleet): the figure
    // each of the N is held against.
    let solo_prefix = format!("{prefix}solo");
    let solo = Fleet {
        prefix: &solo_prefix,
        ..fleet
    };
    let one = [solo.start(dir.path(), 0)];
    solo.wait_listed(1);
    let (one_cpu, one_rss) = measure(&one, window)[0];
    drop(one);
    println!(
        "single gateway ({DEVICES} devices × {POINTS} points @ 1 s, MySQL + MQTT): CPU {:.2} % of a core, RSS {one_rss} kB",
        one_cpu * 100.0
    );

    let gws: Vec<Proc> = (1..=n).map(|i| fleet.start(dir.path(), i)).collect();
    let started = Instant::now();
    fleet.wait_listed(n);
    println!(
        "{n} gateways started and listed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (took, listed) = fleet.ls();
    println!(
        "fleet ls: {listed} gateways in {:.2} s (goal ≤ 2 s with all {n})",
        took.as_secs_f64(),
    );

    let rows_before = mysql_rows(&prefix, None);
    let t0 = Instant::now();
    let figures = measure(&gws, window);
    let rows = mysql_rows(&prefix, None) - rows_before;
    println!(
        "MariaDB: {:.0} telemetry rows/s from {n} gateways (they produce {} values/s)",
        rows as f64 / t0.elapsed().as_secs_f64(),
        n * DEVICES * POINTS
    );
    report(&figures, one_cpu, one_rss);

    let file = dir.path().join("line.toml");
    std::fs::write(
        &file,
        format!("# the line's text, from the fleet bench\n{}", fleet.body()),
    )
    .unwrap();
    let t = Instant::now();
    let out = bin()
        .args([
            "fleet",
            "apply",
            "--broker",
            &format!("mqtt://{mqtt}"),
            "--prefix",
            &prefix,
        ])
        .args([
            "--key",
            key.to_str().unwrap(),
            "--all",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let took = t.elapsed();
    let lines = String::from_utf8_lossy(&out.stdout).into_owned();
    let applied = lines.lines().filter(|l| l.contains(" applied ")).count();
    for l in lines.lines().filter(|l| !l.contains(" applied ")) {
        println!("  not applied: {l}");
    }
    println!(
        "fleet apply --all: applied by {applied}/{n} in {:.2} s (goal: all, ≤ 10 s){}",
        took.as_secs_f64(),
        if out.status.success() {
            ""
        } else {
            "; exit code not 0"
        }
    );

    restart_mariadb();
    // Everything sampled up to a little after MariaDB is back must reach it, once.
    std::thread::sleep(Duration::from_secs(5));
    let cutoff = edge_gateway::model::now_ms();
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let (missing, extra) = loop {
        let (missing, extra) = compare(dir.path(), &prefix, n, cutoff);
        if (missing == 0 && extra == 0) || t.elapsed() > Duration::from_secs(300) {
            break (missing, extra);
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    println!(
        "after a MariaDB restart: {missing} missing and {extra} extra rows (duplicates) up to the cutoff, all {n} gateways caught up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(gws);
    // The fleet's rows and the solo gateway's.
    sql(&format!(
        "DELETE FROM edge_telemetry WHERE gateway_id LIKE '{prefix}%'"
    ));
}

#[derive(Clone, Copy)]
struct Fleet<'a> {
    mysql: &'a str,
    mqtt: &'a str,
    prefix: &'a str,
    keys: &'a str,
    sim: u16,
}

impl Fleet<'_> {
    /// What every gateway runs but its `[gateway]`: one text for the whole fleet.
    fn body(&self) -> String {
        let mut c = format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nurl = \"mqtt://{}\"\ntopic_prefix = \"{}\"\n[mysql]\nurl = \"{}\"\n[fleet]\n{}\n",
            self.mqtt, self.prefix, self.mysql, self.keys
        );
        let _ = write!(
            c,
            "[[buses]]\nname = \"b\"\nkind = \"tcp\"\naddress = \"127.0.0.1:{}\"\ntimeout_ms = 1000\n",
            self.sim
        );
        let points: Vec<String> = (0..POINTS)
            .map(|i| format!(r#"{{ id = "r{i}", table = "holding", address = {i}, type = "u16", deadband = 0.0 }}"#))
            .collect();
        let _ = write!(
            c,
            "[templates.dev]\npoints = [\n  {}\n]\n",
            points.join(",\n  ")
        );
        for u in 1..=DEVICES {
            let _ = write!(
                c,
                "[[devices]]\nid = \"d{u}\"\nbus = \"b\"\nunit = {u}\npoll_interval_ms = 1000\ntemplate = \"dev\"\n"
            );
        }
        c
    }

    fn start(&self, dir: &Path, i: usize) -> Proc {
        let cfg = dir.join(format!("gw{i}.toml"));
        let data = dir.join(format!("gw{i}"));
        std::fs::write(
            &cfg,
            format!(
                "[gateway]\nid = \"{}-{i:02}\"\ndata_dir = {:?}\n{}",
                self.prefix,
                data.display().to_string(),
                self.body()
            ),
        )
        .unwrap();
        Proc(
            bin()
                .args(["run", "--config", cfg.to_str().unwrap()])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// `fleet ls --json`: how long it took, and how many gateways it listed online.
    fn ls(&self) -> (Duration, usize) {
        let t = Instant::now();
        let out = bin()
            .args(["fleet", "ls", "--broker", &format!("mqtt://{}", self.mqtt)])
            .args(["--prefix", self.prefix, "--json"])
            .output()
            .unwrap();
        let took = t.elapsed();
        let listed: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let online = listed
            .as_object()
            .map_or(0, |m| m.values().filter(|s| s["online"] == true).count());
        (took, online)
    }

    fn wait_listed(&self, n: usize) {
        let t = Instant::now();
        while self.ls().1 < n {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "not all {n} gateways came up"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Each process's CPU (share of a core) over `window`, and its RSS (kB) at the end.
fn measure(procs: &[Proc], window: Duration) -> Vec<(f64, u64)> {
    let before: Vec<f64> = procs.iter().map(|p| cpu_seconds(p.0.id())).collect();
    let t = Instant::now();
    std::thread::sleep(window);
    let secs = t.elapsed().as_secs_f64();
    procs
        .iter()
        .zip(before)
        .map(|(p, b)| {
            (
                (cpu_seconds(p.0.id()) - b) / secs,
                pid_status_kb(p.0.id(), "VmRSS"),
            )
        })
        .collect()
}

fn report(figures: &[(f64, u64)], one_cpu: f64, one_rss: u64) {
    let n = figures.len() as f64;
    let cpu = figures.iter().map(|f| f.0).sum::<f64>() / n;
    let cpu_max = figures.iter().map(|f| f.0).fold(0.0, f64::max);
    let rss = figures.iter().map(|f| f.1).sum::<u64>() as f64 / n;
    let rss_max = figures.iter().map(|f| f.1).max().unwrap_or(0);
    println!(
        "per gateway among {}: CPU {:.2} % mean ({:.2}× the single one), {:.2} % max; RSS {:.0} kB mean ({:.2}× the single one), {rss_max} kB max (goal: each ≤ 1.2×)",
        figures.len(),
        cpu * 100.0,
        cpu / one_cpu,
        cpu_max * 100.0,
        rss,
        rss / one_rss as f64,
    );
}

/// A statement through the `mariadb` client; its output.
fn sql(statement: &str) -> String {
    let out = Command::new("mariadb")
        .args(["-uroot", "-h127.0.0.1", "-N", "-B", "test", "-e", statement])
        .output()
        .expect("the mariadb client");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Telemetry rows in MariaDB for the fleet (up to `before`, ms, when given), by gateway id.
fn mysql_rows_by(prefix: &str, before: Option<i64>) -> std::collections::HashMap<String, i64> {
    let until = before.map_or_else(String::new, |ms| {
        let t = edge_gateway::model::rfc3339(ms)
            .replace('T', " ")
            .replace('Z', "");
        format!(" AND ts < '{t}'")
    });
    sql(&format!(
        "SELECT gateway_id, COUNT(*) FROM edge_telemetry WHERE gateway_id LIKE '{prefix}-%'{until} GROUP BY gateway_id"
    ))
    .lines()
    .filter_map(|l| {
        let (g, c) = l.split_once('\t')?;
        Some((g.to_string(), c.trim().parse().ok()?))
    })
    .collect()
}

fn mysql_rows(prefix: &str, before: Option<i64>) -> i64 {
    mysql_rows_by(prefix, before).values().sum()
}

/// Rows the gateways sampled up to `cutoff` that MariaDB lacks, and rows it has beyond them.
fn compare(dir: &Path, prefix: &str, n: usize, cutoff: i64) -> (i64, i64) {
    let remote = mysql_rows_by(prefix, Some(cutoff));
    let (mut missing, mut extra) = (0, 0);
    for i in 1..=n {
        let local = edge_gateway::store::open_reader(&dir.join(format!("gw{i}")))
            .ok()
            .and_then(|c| edge_gateway::store::values_before(&c, cutoff).ok())
            .unwrap_or(0);
        let there = remote
            .get(&format!("{prefix}-{i:02}"))
            .copied()
            .unwrap_or(0);
        missing += (local - there).max(0);
        extra += (there - local).max(0);
    }
    (missing, extra)
}

/// MariaDB stopped and started again as the machine starts it; back once it answers.
fn restart_mariadb() {
    let t = Instant::now();
    let _ = Command::new("mariadb-admin")
        .args(["-uroot", "-h127.0.0.1", "shutdown"])
        .status();
    std::thread::sleep(Duration::from_secs(3));
    let _ = Command::new("start-stop-daemon")
        .args([
            "--start",
            "--oknodo",
            "--background",
            "--exec",
            "/usr/sbin/mariadbd",
        ])
        .status();
    while sql("SELECT 1").trim() != "1" {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "MariaDB did not come back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "MariaDB restarted (down {:.1} s)",
        t.elapsed().as_secs_f64()
    );
}
