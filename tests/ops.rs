//! Operations: every SPEC metric in valid Prometheus text, systemd readiness and a watchdog that
//! stops pinging when the store is stuck, and a clean stop on SIGTERM with the store flushed.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use edge_gateway::modbus::simulator::{Profile, Simulator, BOILER};
use edge_gateway::Gateway;
use tokio_util::sync::CancellationToken;

/// Every name SPEC.md lists, with the labels it lists.
const SPEC_METRICS: [(&str, &[&str]); 18] = [
    ("edge_ws_clients", &[]),
    ("edge_push_messages_total", &["kind", "result"]),
    ("edge_push_duration_seconds_bucket", &["le"]),
    ("edge_push_latency_seconds_bucket", &["le"]),
    ("edge_events_processed_total", &["event_type", "status"]),
    ("edge_event_process_duration_seconds_bucket", &["le"]),
    ("edge_event_queue_length", &["priority"]),
    ("edge_events_suppressed_total", &["device"]),
    ("edge_modbus_requests_total", &["device", "result"]),
    (
        "edge_modbus_request_duration_seconds_bucket",
        &["bus", "le"],
    ),
    ("edge_device_online", &["device"]),
    ("edge_sink_backlog", &["sink"]),
    ("edge_sink_rows_total", &["sink", "result"]),
    ("edge_store_bytes", &["file"]),
    ("edge_store_written_bytes_total", &[]),
    ("edge_bus_bytes_total", &["bus", "direction"]),
    ("process_resident_memory_bytes", &[]),
    ("process_open_fds", &[]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_has_every_spec_name_in_valid_prometheus_text() {
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    // A sink configured (unreachable) so the sink metrics exist.
    let body = format!(
        "[mysql]\nurl = \"mysql://root@127.0.0.1:1/test\"\n{}{BOILER_AND_PUMP}",
        tcp_bus(&addr.to_string())
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("polls", || requests(&gw, "boiler", "ok") > 3).await;
    let text = http_get(gw.http_addr, "/metrics").await;
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("text/plain"), "{head}");
    let mut samples = Vec::new();
    for line in body.lines().filter(|l| !l.is_empty()) {
        if let Some(c) = line.strip_prefix('#') {
            assert!(c.starts_with(" TYPE ") || c.starts_with(" HELP "), "{line}");
            continue;
        }
        // name{labels} value
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a number: {line}");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect(line)),
            None => (series, ""),
        };
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        let keys: Vec<&str> = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect(line);
                assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                k
            })
            .collect();
        samples.push((name.to_string(), keys));
    }
    for (name, labels) in SPEC_METRICS {
        let found = samples.iter().find(|(n, _)| n == name);
        let (_, keys) = found.unwrap_or_else(|| panic!("{name} missing from /metrics"));
        assert_eq!(keys, labels, "{name}");
    }
    // The per-bus figures: request durations observed, utilisation a ratio.
    let util = body
        .lines()
        .find(|l| l.starts_with("edge_bus_utilization_ratio{bus=\"b\"}"))
        .unwrap();
    let v: f64 = util.rsplit_once(' ').unwrap().1.parse().unwrap();
    assert!((0.0..=1.0).contains(&v) && v > 0.0, "{util}");
    assert!(body.contains("edge_modbus_request_duration_seconds_count{bus=\"b\"}"));
    // Bytes both ways on the bus: a read is 12 bytes out and at least 11 back on Modbus TCP.
    for direction in ["sent", "received"] {
        let series = format!("edge_bus_bytes_total{{bus=\"b\",direction=\"{direction}\"}} ");
        let line = body
            .lines()
            .find(|l| l.starts_with(&series))
            .expect(&series);
        let n: u64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(n >= 11, "{line}");
    }
    // The store's own count of bytes written, which stands in where the kernel keeps none,
    // moves with its commits.
    wait_for("the store's own count of bytes written", || {
        gw.metrics.store_written.load(Ordering::Relaxed) > 0
    })
    .await;
    gw.shutdown().await;
}

fn write_config(dir: &std::path::Path, sim: u16) -> std::path::PathBuf {
    let cfg = dir.join("g.toml");
    // Polled fast with no deadband: the store always has rows to write.
    let devices = BOILER_AND_PUMP.replace("poll_interval_ms = 100", "poll_interval_ms = 20");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"ops\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n{}{devices}",
            dir.join("data").display().to_string(),
            tcp_bus(&format!("127.0.0.1:{sim}"))
        ),
    )
    .unwrap();
    cfg
}

/// `run` under a fake systemd: notifications to `notify`, and a watchdog when `watchdog_usec`.
/// The daemon with systemd's notify socket (and watchdog, when given), and its HTTP address;
/// its log goes to `log` when given.
fn run_notified(
    cfg: &std::path::Path,
    notify: &Notify,
    watchdog_usec: Option<&str>,
    log: Option<&std::path::Path>,
) -> (Child, SocketAddr) {
    let mut cmd = gateway_command(cfg);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec);
    }
    spawn_gateway(cmd, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_start_and_the_watchdog_pings_only_while_the_store_makes_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, sim) = spawn_simulator(&[]);
    let cfg = write_config(dir.path(), sim);
    let notify = Notify::new(dir.path());
    let log = dir.path().join("gateway.log");
    let (_gw, http) = run_notified(&cfg, &notify, Some("1000000"), Some(&log));
    let seen = notify.wait_for("READY=1", Duration::from_secs(20));
    // Ready means the HTTP port answers.
    let h = healthz(http).await;
    assert!(h.starts_with("HTTP/1.0 200"), "{h} after {seen:?}");
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));

    // A store that cannot commit (another process holds the write lock): no more pings.
    let db = rusqlite::Connection::open(dir.path().join("data/gateway.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    // A check that began before the lock may still have pinged: once a check has failed (the
    // log says so), every earlier one is done, and what they sent is dropped.
    wait_for("a watchdog check failed", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("not pinging systemd"))
    })
    .await;
    notify.drain();
    let during = notify.collect(Duration::from_secs(4));
    assert!(
        !during.iter().any(|m| m.contains("WATCHDOG=1")),
        "pinged while the store was stuck: {during:?}"
    );
    // Released: the writer catches up and the pings come back.
    db.execute_batch("ROLLBACK").unwrap();
    notify.wait_for("WATCHDOG=1", Duration::from_secs(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_daemon_cleanly_with_the_store_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let (_sim, sim) = spawn_simulator(&[]);
    let cfg = write_config(dir.path(), sim);
    let notify = Notify::new(dir.path());
    let (mut gw, http) = run_notified(&cfg, &notify, None, None);
    notify.wait_for("READY=1", Duration::from_secs(20));
    wait_for_async("rows stored", || async {
        let h = http_get(http, "/metrics").await;
        h.lines()
            .find(|l| l.starts_with("edge_store_rows_total "))
            .and_then(|l| l.split(' ').nth(1)?.parse::<u64>().ok())
            .is_some_and(|n| n > 20)
    })
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &gw.0.id().to_string()])
        .status();
    notify.wait_for("STOPPING=1", Duration::from_secs(5));
    // A hang guard, not a timing assertion: the stop itself is logged by the gateway.
    let status = (0..200)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            gw.0.try_wait().unwrap()
        })
        .expect("still running 10 s after SIGTERM");
    assert!(status.success(), "{status:?}");
    // Flushed and checkpointed: the WAL is empty and the last state is in the database.
    let wal = dir.path().join("data/gateway.db-wal");
    assert!(
        std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0,
        "WAL left behind"
    );
    let db = rusqlite::Connection::open(dir.path().join("data/gateway.db")).unwrap();
    let n: i64 = db
        .query_row("SELECT COUNT(*) FROM latest", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 5, "every point's last value stored");
}

/// A bus task that stops making progress is named by the watchdog's check (here the task is
/// taken away between two requests, so it never stamps again), while the rest keeps going.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_that_stops_making_progress_stops_the_watchdog() {
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{}{BOILER_AND_PUMP}", tcp_bus(&addr.to_string()));
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("polls", || requests(&gw, "boiler", "ok") > 3).await;
    let limit = Duration::from_secs(2);
    assert_eq!(
        edge_gateway::service::stalled(&gw.config, &gw.metrics, &gw.store, limit).await,
        None
    );
    let (tx, rx) = tokio::sync::oneshot::channel();
    gw.shared.control.buses[0]
        .send(edge_gateway::modbus::bus::BusRequest::Handover(tx))
        .await
        .unwrap();
    let hung = rx.await.unwrap();
    wait_for_async("the stalled bus named", || async {
        edge_gateway::service::stalled(&gw.config, &gw.metrics, &gw.store, limit)
            .await
            .is_some_and(|why| why.contains("bus `b`"))
    })
    .await;
    // It holds a sender into the pipeline, which must go for the pipeline to end.
    drop(hung);
    gw.shutdown().await;
}

/// A gateway on the test simulator with its first polls stored. The test simulator holds its
/// values still, so from here on the gateway has nothing to write unless a test moves a value.
async fn quiet_gateway() -> (Simulator, CancellationToken, tempfile::TempDir, Gateway) {
    let (sim, addr, cancel) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let body = format!("{}{BOILER_AND_PUMP}", tcp_bus(&addr.to_string()));
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    wait_for("first polls stored", || {
        gw.shared.metrics.store_rows.load(Ordering::Relaxed) > 0
    })
    .await;
    gw.shared.store.flush().await;
    (sim, cancel, dir, gw)
}

/// `/healthz` answers 503 "failing" while the store cannot write, and 200 again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_is_503_while_the_store_cannot_write() {
    // Nothing to write: the store must find out it cannot write all the same.
    let (_sim, _c, dir, gw) = quiet_gateway().await;
    assert!(healthz(gw.http_addr).await.starts_with("HTTP/1.0 200"));
    let db = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    wait_for_async("503", || async {
        let h = healthz(gw.http_addr).await;
        h.starts_with("HTTP/1.0 503") && h.contains(r#""status":"failing""#)
    })
    .await;
    db.execute_batch("ROLLBACK").unwrap();
    wait_for_async("200 again", || async {
        healthz(gw.http_addr).await.starts_with("HTTP/1.0 200")
    })
    .await;
    gw.shutdown().await;
}

/// A store whose writes all fail while its lock is still granted (as on a full disk) stays 503
/// until a write succeeds: the idle probe's lock alone does not count as writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_503_while_every_write_fails_and_recovers_after() {
    let (sim, _c, dir, gw) = quiet_gateway().await;
    // Writes refused by triggers, the way ENOSPC refuses them: telemetry, and the probe's row.
    let db = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
    db.execute_batch(
        "CREATE TRIGGER full_t BEFORE INSERT ON samples BEGIN SELECT RAISE(ABORT, 'full'); END;
         CREATE TRIGGER full_mi BEFORE INSERT ON meta BEGIN SELECT RAISE(ABORT, 'full'); END;
         CREATE TRIGGER full_mu BEFORE UPDATE ON meta BEGIN SELECT RAISE(ABORT, 'full'); END;",
    )
    .unwrap();
    // One move of the boiler's setpoint gives the store one row to fail on. After that only the
    // idle probes try to write.
    sim.with_memory(BOILER, |m| m.holding[2] += 1);
    wait_for_async("503", || async {
        healthz(gw.http_addr).await.starts_with("HTTP/1.0 503")
    })
    .await;
    // Several probes' worth, with nothing else to write: never healthy in between.
    for _ in 0..250 {
        let h = healthz(gw.http_addr).await;
        assert!(
            h.starts_with("HTTP/1.0 503"),
            "healthy while every write fails: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.execute_batch("DROP TRIGGER full_t; DROP TRIGGER full_mi; DROP TRIGGER full_mu;")
        .unwrap();
    wait_for_async("200 again", || async {
        healthz(gw.http_addr).await.starts_with("HTTP/1.0 200")
    })
    .await;
    gw.shutdown().await;
}

/// `/healthz` stays 200 while serving, and `degraded` names each problem a monitor should see:
/// here both devices offline (a bus nobody answers) and a MySQL sink that cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_names_what_is_degraded_while_it_still_serves() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!(
            "[mysql]\nurl = \"mysql://root@127.0.0.1:1/test\"\n{}{BOILER_AND_PUMP}",
            tcp_bus("127.0.0.1:1")
        ),
    ))
    .await
    .unwrap();
    let degraded = |h: &serde_json::Value| -> Vec<String> {
        h["degraded"]
            .as_array()
            .expect("degraded is a list")
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    wait_for_async("both problems named", || async {
        let Some(h) = healthz_json(gw.http_addr).await else {
            return false;
        };
        let d = degraded(&h);
        d.iter()
            .any(|l| l.starts_with("devices offline: 2 of 2 (boiler, pump)"))
            && d.iter().any(|l| l.starts_with("sink mysql failing: "))
    })
    .await;
    let h = healthz(gw.http_addr).await;
    assert!(h.starts_with("HTTP/1.0 200"), "{h}");
    assert!(h.contains(r#""status":"ok""#), "{h}");
    gw.shutdown().await;

    // All well (devices answering, no sinks): nothing degraded but, on a machine whose clock
    // is not synchronised, the clock.
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{BOILER_AND_PUMP}", tcp_bus(&addr.to_string())),
    ))
    .await
    .unwrap();
    wait_for_async("nothing degraded", || async {
        healthz_json(gw.http_addr).await.is_some_and(|h| {
            degraded(&h)
                .iter()
                .all(|l| l.starts_with("clock not synchronised"))
        })
    })
    .await;
    // And the build is named in /metrics as in --version.
    let metrics = http_get(gw.http_addr, "/metrics").await;
    let line = format!(
        "edge_build_info{{version=\"{}\",git=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        edge_gateway::GIT
    );
    assert!(metrics.contains(&line), "{line} not in /metrics");
    gw.shutdown().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")) && version.contains(edge_gateway::GIT),
        "{version}"
    );
}
