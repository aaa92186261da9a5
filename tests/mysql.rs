//! The MySQL sink against a real MariaDB (`EDGE_TEST_MYSQL_URL`, set by `./scripts/test`):
//! rows arrive keyed by gateway id, an outage loses and duplicates nothing, several gateways
//! share one database, and a wrong password is a clear state, not a crash loop.

mod common;

use common::*;
use edge_gateway::modbus::simulator::{Fault, Profile, PUMP};
use edge_gateway::Gateway;
use mysql_async::prelude::Queryable;
use std::fmt::Write as _;

fn url() -> Option<String> {
    match std::env::var("EDGE_TEST_MYSQL_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            skipped("EDGE_TEST_MYSQL_URL is not set (./scripts/test sets it to the local MariaDB)");
            None
        }
    }
}

async fn count(url: &str, table: &str, gw: &str) -> i64 {
    let pool = mysql_async::Pool::new(url);
    let mut c = pool.get_conn().await.unwrap();
    let n: Option<i64> = c
        .exec_first(
            format!("SELECT COUNT(*) FROM {table} WHERE gateway_id = ?"),
            (gw,),
        )
        .await
        .unwrap_or(Some(0));
    drop(c);
    let _ = pool.disconnect().await;
    n.unwrap_or(0)
}

/// Rows of a table in the store; for `telemetry`, the point values its samples hold (one
/// MySQL row each).
fn sqlite_count(gw: &Gateway, table: &str) -> i64 {
    let c = edge_gateway::store::open_reader(&gw.config.gateway.data_dir).unwrap();
    if table == "telemetry" {
        return edge_gateway::store::count_values(&c, 0, i64::MAX).unwrap();
    }
    c.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn body(addr: &str, mysql: &str) -> String {
    format!(
        "[mysql]\nurl = \"{mysql}\"\nbatch_size = 50\n{}{BOILER_AND_PUMP}",
        tcp_bus(addr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_events_and_device_status_arrive_keyed_by_gateway_id() {
    let Some(url) = url() else { return };
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let id = unique_id("rows");
    let gw = Gateway::start(config_id(&id, dir.path(), &body(&addr.to_string(), &url)))
        .await
        .unwrap();
    wait_for("online", || online(&gw, "pump") && online(&gw, "boiler")).await;
    caught_up(&gw, "mysql").await;
    assert_eq!(count(&url, "edge_device_status", &id).await, 2);
    assert!(
        count(&url, "edge_events", &id).await >= 2,
        "device_online events"
    );
    assert_eq!(
        count(&url, "edge_events", &id).await,
        sqlite_count(&gw, "events")
    );
    assert_eq!(
        count(&url, "edge_telemetry", &id).await,
        sqlite_count(&gw, "telemetry")
    );
    // The sink updates its figure after handing the cursor to the store: a moment later.
    wait_for_async("backlog 0 in healthz", || async {
        healthz(gw.http_addr)
            .await
            .contains(r#""mysql":{"backlog":0}"#)
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_database_loses_nothing_and_duplicates_nothing() {
    let Some(url) = url() else { return };
    let target: std::net::SocketAddr = url
        .trim_start_matches("mysql://")
        .split('@')
        .next_back()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let relay = Relay::start(target).await;
    let via_relay = url.replace(&target.to_string(), &relay.addr.to_string());
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let id = unique_id("outage");
    let gw = Gateway::start(config_id(
        &id,
        dir.path(),
        &body(&addr.to_string(), &via_relay),
    ))
    .await
    .unwrap();
    wait_for("online", || online(&gw, "pump")).await;
    caught_up(&gw, "mysql").await;
    relay.cut();
    // Events made while the database is away: the pump dies and comes back, values move.
    sim.set_fault(PUMP, Some(Fault::Silent));
    wait_for("pump offline", || !online(&gw, "pump")).await;
    sim.set_fault(PUMP, None);
    wait_for("pump online", || online(&gw, "pump")).await;
    wait_for_async("outage seen", || async {
        let h = healthz(gw.http_addr).await;
        h.contains(r#""error""#) && !h.contains(r#""backlog":0"#)
    })
    .await;
    relay.restore();
    caught_up(&gw, "mysql").await;
    let events = sqlite_count(&gw, "events");
    assert!(events >= 4, "online, offline, online again: {events}");
    assert_eq!(
        count(&url, "edge_events", &id).await,
        events,
        "every event once"
    );
    assert_eq!(
        count(&url, "edge_telemetry", &id).await,
        sqlite_count(&gw, "telemetry")
    );
    assert!(!healthz(gw.http_addr).await.contains(r#""error""#));
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_sync_into_one_database_concurrently() {
    let Some(url) = url() else { return };
    let mut gws = Vec::new();
    let mut dirs = Vec::new();
    let mut sims = Vec::new();
    for i in 0..3 {
        let (sim, addr, c) = start_sim(Profile::Demo).await;
        sims.push((sim, c));
        let dir = tempfile::tempdir().unwrap();
        let id = unique_id(&format!("three{i}"));
        gws.push((
            id.clone(),
            Gateway::start(config_id(&id, dir.path(), &body(&addr.to_string(), &url)))
                .await
                .unwrap(),
        ));
        dirs.push(dir);
    }
    for (_, gw) in &gws {
        wait_for("online", || online(gw, "pump")).await;
    }
    for (id, gw) in &gws {
        caught_up(gw, "mysql").await;
        assert_eq!(count(&url, "edge_device_status", id).await, 2);
        assert_eq!(
            count(&url, "edge_events", id).await,
            sqlite_count(gw, "events")
        );
    }
    for (_, gw) in gws {
        gw.shutdown().await;
    }
}

/// An acknowledgement reaches the alarm's own row upstream (`acked_by`, `acked_at`), and its
/// record arrives as an `info` event with who and when.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_marks_the_alarm_row_upstream() {
    let Some(url) = url() else { return };
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let id = unique_id("acks");
    let admin = edge_gateway::cli::hash_password("admin").unwrap();
    let extra = format!(
        "[[users]]\nname = \"admin\"\nrole = \"admin\"\npassword_hash = \"{admin}\"\n\
         [[rules]]\nid = \"warm\"\ndevice = \"boiler\"\npoint = \"temperature\"\n\
         kind = \"above\"\nthreshold = -1000.0\n"
    );
    let body = format!("{}{extra}", body(&addr.to_string(), &url));
    let gw = Gateway::start(config_id(&id, dir.path(), &body))
        .await
        .unwrap();
    let mut ws = common::ws::connect(&gw, "admin").await;
    let alarm = loop {
        let r = common::ws::call(&mut ws, "alarms.active", serde_json::json!({})).await;
        if let Some(a) = r["data"]["alarms"].as_array().and_then(|a| a.first()) {
            break a["id"].as_str().unwrap().to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // The alarm is upstream before it is acknowledged: the mark is an update of that row.
    caught_up(&gw, "mysql").await;
    let r = common::ws::call(
        &mut ws,
        "alarms.ack",
        serde_json::json!({"eventId": alarm, "comment": "seen"}),
    )
    .await;
    assert_eq!(r["code"], 0, "{r}");
    gw.settle().await;
    caught_up(&gw, "mysql").await;

    let pool = mysql_async::Pool::new(url.as_str());
    let mut c = pool.get_conn().await.unwrap();
    let row: Option<(Option<String>, bool)> = c
        .exec_first(
            "SELECT acked_by, acked_at IS NOT NULL FROM edge_events WHERE event_id = ?",
            (&alarm,),
        )
        .await
        .unwrap();
    assert_eq!(row, Some((Some("admin".to_string()), true)));
    let record: Option<(String, String)> = c
        .exec_first(
            "SELECT state, message FROM edge_events WHERE gateway_id = ? AND acked_by = 'admin' \
             AND event_id <> ?",
            (&id, &alarm),
        )
        .await
        .unwrap();
    let (state, message) = record.expect("the acknowledgement's own record");
    assert_eq!(state, "info");
    assert!(
        message.starts_with("acknowledged by admin: seen"),
        "{message}"
    );
    drop(c);
    let _ = pool.disconnect().await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_a_clear_error_in_healthz_and_polling_goes_on() {
    let Some(url) = url() else { return };
    // The same server and database as another user: the test's own credentials replaced.
    let (_, at) = url
        .rsplit_once('@')
        .expect("EDGE_TEST_MYSQL_URL names a user: user:pw@host");
    let bad = format!("mysql://nobody:wrong@{at}");
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config_id(
        &unique_id("badpw"),
        dir.path(),
        &body(&addr.to_string(), &bad),
    ))
    .await
    .unwrap();
    wait_for_async("error shown", || async {
        healthz(gw.http_addr).await.contains("Access denied")
    })
    .await;
    let h = healthz(gw.http_addr).await;
    assert!(
        h.lines().next().unwrap().contains(" 200 "),
        "the gateway still serves: {h}"
    );
    let before = requests(&gw, "boiler", "ok");
    wait_for("polling goes on", || {
        requests(&gw, "boiler", "ok") > before + 5
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_with_sigkill_mid_stream_resends_after_restart_without_loss_or_duplicates()
{
    let Some(url) = url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_sim, sim_port) = spawn_simulator(&[]);
    let id = unique_id("sigkill");
    let cfg = dir.path().join("g.toml");
    // Fast polls with no deadband: a steady stream of telemetry rows to be caught mid-batch.
    let devices = BOILER_AND_PUMP.replace("poll_interval_ms = 100", "poll_interval_ms = 20");
    std::fs::write(
        &cfg,
        format!(
            "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n[mysql]\nurl = \"{url}\"\nbatch_size = 20\n{}{devices}",
            dir.path().join("data").display().to_string(),
            tcp_bus(&format!("127.0.0.1:{sim_port}"))
        ),
    )
    .unwrap();
    let run = || spawn_gateway(gateway_command(&cfg), None);
    let (mut gw, _) = run();
    wait_for_async("rows flowing upstream", || async {
        count(&url, "edge_telemetry", &id).await > 50
    })
    .await;
    // SIGKILL: no shutdown, no flush, whatever batch was in flight is cut.
    unsafe_kill(&mut gw);
    // It answers from the start: its address is on the line it logs once serving.
    let (gw2, http) = run();
    let http = http.port();
    // Stop the polls (kill the simulator's answers by stopping the gateway cleanly later), and
    // wait for the sink to catch up with what the store has.
    wait_for_async("caught up", || async {
        backlog_of(http, "mysql").await == Some(0)
    })
    .await;
    // A clean stop now (SIGTERM), then compare the store with the database.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &gw2.0.id().to_string()])
        .status();
    let mut gw2 = gw2;
    let _ = gw2.0.wait();
    let db = rusqlite::Connection::open(dir.path().join("data/gateway.db")).unwrap();
    let n = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    let values = |upto: i64| edge_gateway::store::count_values(&db, 0, upto).unwrap();
    let local_tel = values(i64::MAX);
    let local_ev = n("SELECT COUNT(*) FROM events");
    let confirmed_tel = values(n(
        "SELECT last_id FROM sink_cursors WHERE sink = 'mysql' AND stream = 'telemetry'",
    ));
    let confirmed_ev = n("SELECT COUNT(*) FROM events WHERE seq <= (SELECT last_id FROM sink_cursors WHERE sink = 'mysql' AND stream = 'events')");
    let up_tel = count(&url, "edge_telemetry", &id).await;
    let up_ev = count(&url, "edge_events", &id).await;
    // Nothing lost: all that was confirmed is upstream, including what the killed process had
    // in flight (resent from the cursor). Nothing duplicated: never more rows than the store has.
    assert!(
        confirmed_tel > 50 && confirmed_ev >= 2,
        "{confirmed_tel} {confirmed_ev}"
    );
    assert!(
        (confirmed_tel..=local_tel).contains(&up_tel),
        "telemetry: confirmed {confirmed_tel} upstream {up_tel} local {local_tel}"
    );
    assert!(
        (confirmed_ev..=local_ev).contains(&up_ev),
        "events: confirmed {confirmed_ev} upstream {up_ev} local {local_ev}"
    );
}

/// Five SIGKILLs in a row under a load where every register changes at every poll: after each
/// kill the store is intact, every device's `deviceSeq` has no gap, and once a last run has
/// caught up, MySQL holds every telemetry value SQLite held at any of the kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn five_sigkills_under_an_all_changing_load_lose_nothing_that_was_committed() {
    use std::collections::{BTreeMap, BTreeSet};
    let Some(url) = url() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (_sim, sim_port) = spawn_simulator(&["--profile", "changing"]);
    let id = unique_id("kill5");
    let data = dir.path().join("data");
    let points: Vec<String> = (0..30)
        .map(|i| format!(r#"{{ id = "r{i}", table = "holding", address = {i}, type = "u16" }}"#))
        .collect();
    let mut body = format!(
        "[gateway]\nid = \"{id}\"\ndata_dir = {:?}\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [mysql]\nurl = \"{url}\"\nbatch_size = 200\n{}[templates.dev]\npoints = [{}]\n",
        data.display().to_string(),
        tcp_bus(&format!("127.0.0.1:{sim_port}")),
        points.join(", ")
    );
    for u in 1..=10 {
        let _ = write!(
            body,
            "[[devices]]\nid = \"u{u}\"\nbus = \"b\"\nunit = {u}\npoll_interval_ms = 250\ntemplate = \"dev\"\n"
        );
        // Events too: a threshold crossed and cleared every few seconds.
        let _ = write!(
            body,
            "[[rules]]\nid = \"hi{u}\"\ndevice = \"u{u}\"\npoint = \"r0\"\nkind = \"above\"\nthreshold = 32768.0\nclear = 32000.0\n"
        );
    }
    let cfg = dir.path().join("g.toml");
    std::fs::write(&cfg, body).unwrap();
    let run = || spawn_gateway(gateway_command(&cfg), None);
    let db_path = data.join("gateway.db");
    let samples = || -> i64 {
        rusqlite::Connection::open(&db_path)
            .and_then(|c| c.query_row("SELECT COALESCE(MAX(id), 0) FROM samples", [], |r| r.get(0)))
            .unwrap_or(0)
    };
    let (mut held, mut held_events) = (BTreeSet::new(), BTreeSet::new());
    for kill in 0..5 {
        let before = samples();
        let (mut gw, _) = run();
        wait_for("samples stored", || samples() > before + 100).await;
        // Somewhere inside a group commit, not at a boundary the test chose.
        tokio::time::sleep(std::time::Duration::from_millis(rand::random_range(0..400))).await;
        unsafe_kill(&mut gw);
        let db = rusqlite::Connection::open(&db_path).unwrap();
        let check: String = db
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "after kill {kill}");
        held.extend(edge_gateway::store::sample_values(&db, 0, i64::MAX).unwrap());
        let mut q = db.prepare("SELECT event_id FROM events").unwrap();
        held_events.extend(
            q.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap),
        );
    }
    // A last run catches up, then stops cleanly.
    let (mut gw, http) = run();
    let http = http.port();
    wait_for_async("caught up after the kills", || async {
        backlog_of(http, "mysql").await == Some(0)
    })
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &gw.0.id().to_string()])
        .status();
    let _ = gw.0.wait();

    let db = rusqlite::Connection::open(&db_path).unwrap();
    let mut seqs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut q = db
        .prepare("SELECT device_id, device_seq FROM events ORDER BY device_id, device_seq")
        .unwrap();
    for r in q
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
    {
        let (d, s) = r.unwrap();
        seqs.entry(d).or_default().push(s);
    }
    assert!(!seqs.is_empty(), "the rules raised events");
    for (d, s) in &seqs {
        assert_eq!(
            *s,
            (1..=s.len() as i64).collect::<Vec<_>>(),
            "deviceSeq of {d}"
        );
    }
    let pool = mysql_async::Pool::new(url.as_str());
    let mut c = pool.get_conn().await.unwrap();
    c.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let up: Vec<(String, String, i64)> = c
        .exec(
            "SELECT device_id, point_id, CAST(ROUND(UNIX_TIMESTAMP(ts) * 1000) AS SIGNED)
             FROM edge_telemetry WHERE gateway_id = ?",
            (id.as_str(),),
        )
        .await
        .unwrap();
    let events_up: BTreeSet<String> = c
        .exec(
            "SELECT event_id FROM edge_events WHERE gateway_id = ?",
            (id.as_str(),),
        )
        .await
        .unwrap()
        .into_iter()
        .collect();
    drop(c);
    let _ = pool.disconnect().await;
    let up: BTreeSet<_> = up.into_iter().collect();
    let missing: Vec<_> = held.difference(&up).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} values SQLite held are not in MySQL, e.g. {missing:?}",
        held.difference(&up).count(),
        held.len()
    );
    // (The last run goes on making events after it caught up; those may or may not be sent.)
    assert!(!held_events.is_empty());
    let lost: Vec<_> = held_events.difference(&events_up).collect();
    assert!(
        lost.is_empty(),
        "events held at a kill and not upstream: {lost:?}"
    );
}
