//! The SQLite store: state survives a restart (stale until re-polled), history follows the
//! deadband, retention prunes, and a damaged or unwritable store is a clear error.

mod common;

use common::*;
use edge_gateway::modbus::simulator::{Profile, BOILER};
use edge_gateway::model::{now_ms, Quality, Value};
use edge_gateway::store::{OutboxRow, Stream};
use edge_gateway::{Gateway, StartError};

fn body(addr: &str) -> String {
    format!("{}{}", tcp_bus(addr), BOILER_AND_PUMP)
}

#[tokio::test]
async fn after_a_restart_the_last_state_is_there_at_once_marked_stale_until_repolled() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    sim.with_memory(BOILER, |m| m.holding[2] = 777);
    let gw = Gateway::start(config(dir.path(), &body(&addr.to_string())))
        .await
        .unwrap();
    wait_for("read", || point(&gw, "boiler", "setpoint").value.is_some()).await;
    gw.shutdown().await;

    // Restart against a link that answers nothing: only the store can supply the value.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gw = Gateway::start(config(dir.path(), &body(&format!("127.0.0.1:{port}"))))
        .await
        .unwrap();
    let p = point(&gw, "boiler", "setpoint");
    assert_eq!(p.quality, Quality::Stale);
    let v = p.value.and_then(|v| v.as_f64()).unwrap();
    assert!((v - 77.7).abs() < 1e-9, "{v}");
    let status = edge_gateway::state::read(&gw.live).devices[0].last_seen;
    assert!(status.is_some(), "last seen survives the restart");
    gw.shutdown().await;

    // And with the device back, the value is polled fresh.
    let gw = Gateway::start(config(dir.path(), &body(&addr.to_string())))
        .await
        .unwrap();
    wait_for("re-polled", || {
        quality(&gw, "boiler", "setpoint") == Quality::Good
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn history_is_recorded_on_change_beyond_the_deadband_and_queried_oldest_first() {
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = r#"
[[devices]]
id = "boiler"
bus = "b"
unit = 1
poll_interval_ms = 50
points = [ { id = "setpoint", table = "holding", address = 2, type = "u16", deadband = 10.0 } ]
"#;
    let gw = Gateway::start(config(
        dir.path(),
        &format!("{}{devices}", tcp_bus(&addr.to_string())),
    ))
    .await
    .unwrap();
    // 100 -> 105 (inside the deadband) -> 120 (beyond it).
    let set = |v: u16| sim.with_memory(BOILER, |m| m.holding[2] = v);
    set(100);
    wait_for("100", || {
        point(&gw, "boiler", "setpoint").value == Some(Value::Int(100))
    })
    .await;
    set(105);
    wait_for("105", || {
        point(&gw, "boiler", "setpoint").value == Some(Value::Int(105))
    })
    .await;
    set(120);
    wait_for("120", || {
        point(&gw, "boiler", "setpoint").value == Some(Value::Int(120))
    })
    .await;
    gw.store.flush().await;
    let conn = edge_gateway::store::open_reader(dir.path()).unwrap();
    let dev = &gw.config.devices[0];
    let rows = edge_gateway::store::history(&conn, dev, &dev.points[0], 0, now_ms(), 100).unwrap();
    let values: Vec<_> = rows.iter().map(|r| r.1.clone().unwrap()).collect();
    // The first reading (the simulator's initial 800) and the values past the deadband.
    assert_eq!(values.last(), Some(&Value::Int(120)));
    assert!(values.contains(&Value::Int(100)));
    assert!(!values.contains(&Value::Int(105)), "{values:?}");
    assert!(rows.windows(2).all(|w| w[0].0 <= w[1].0), "oldest first");
    gw.shutdown().await;
}

#[tokio::test]
async fn history_older_than_the_retention_is_pruned_at_start() {
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body(&addr.to_string())))
        .await
        .unwrap();
    gw.shutdown().await;
    let db = dir.path().join(edge_gateway::store::DB_FILE);
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let old = now_ms() - 8 * 86_400_000;
        edge_gateway::store::append_sample(
            &conn,
            "boiler",
            old,
            &[("setpoint", Some(Value::Int(1)), Quality::Good)],
        )
        .unwrap();
    }
    let gw = Gateway::start(config(dir.path(), &body(&addr.to_string())))
        .await
        .unwrap();
    gw.store.flush().await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM samples WHERE ts < ?1",
            [now_ms() - 7 * 86_400_000],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0, "rows past the 7-day default retention are gone");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_corrupt_database_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(edge_gateway::store::DB_FILE),
        b"this is not sqlite, just junk bytes ".repeat(200),
    )
    .unwrap();
    let Err(err) = Gateway::start(config(dir.path(), &body("127.0.0.1:1"))).await else {
        panic!("a junk file must not open as a store")
    };
    assert!(matches!(err, StartError::Store(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("gateway.db")
            && msg.contains("not a database")
            && msg.contains("move it aside"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_unwritable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the data directory should be.
    let blocker = dir.path().join("data");
    std::fs::write(&blocker, b"x").unwrap();
    let Err(err) = Gateway::start(config(&blocker.join("sub"), &body("127.0.0.1:1"))).await else {
        panic!("must fail")
    };
    assert!(
        err.to_string().contains("cannot create the data directory"),
        "{err}"
    );
}

/// Live first: a long telemetry backlog drains one batch per round beside the newest rows, and
/// the persisted cursor stays at the backlog's front until it is drained.
#[tokio::test]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn a_sink_sends_new_telemetry_first_while_its_backlog_drains() {
    use edge_gateway::sinks::feed::Feed;
    let dir = tempfile::tempdir().unwrap();
    // The store's schema, then no writer but the test.
    let gw = Gateway::start(config(dir.path(), &body("127.0.0.1:1")))
        .await
        .unwrap();
    gw.shutdown().await;
    let db = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let add = |n: usize| {
        // Immediate: the stopped gateway's last checkpoint may still be running beside it, and
        // a deferred transaction that has read cannot wait its way into writing (SQLITE_BUSY at
        // once rather than after the busy timeout).
        let tx =
            rusqlite::Transaction::new_unchecked(&db, rusqlite::TransactionBehavior::Immediate)
                .unwrap();
        for _ in 0..n {
            edge_gateway::store::append_sample(
                &tx,
                "boiler",
                0,
                &[("setpoint", Some(Value::Int(1)), Quality::Good)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    };
    let newest = |db: &rusqlite::Connection| -> i64 {
        db.query_row("SELECT COALESCE(MAX(id), 0) FROM samples", [], |r| r.get(0))
            .unwrap()
    };
    let first = newest(&db) + 1;
    add(5000);
    let mut feed = Feed::new(
        "test",
        edge_gateway::store::open_reader(dir.path()).unwrap(),
        std::sync::Arc::new(config(dir.path(), &body("127.0.0.1:1"))),
        100,
    );
    feed.reset().await.unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut round = |feed_batches: Vec<edge_gateway::sinks::feed::Batch>, feed: &mut Feed| {
        let mut ids = Vec::new();
        for b in feed_batches
            .into_iter()
            .filter(|b| b.stream == Stream::Telemetry)
        {
            let rows: Vec<i64> = b.rows.iter().map(OutboxRow::id).collect();
            for id in &rows {
                assert!(seen.insert(*id), "row {id} read twice");
            }
            ids.extend(&rows);
            feed.confirm(b.stream, rows);
        }
        ids
    };
    let ids = round(feed.next().await.unwrap(), &mut feed);
    assert_eq!(ids, (first..first + 100).collect::<Vec<_>>());
    // Far behind now: the next rows are read at once, beside one backlog batch.
    add(5);
    let live = newest(&db);
    let ids = round(feed.next().await.unwrap(), &mut feed);
    assert!(
        ids.contains(&live),
        "the newest row goes out in the next round"
    );
    assert_eq!(ids.len(), 105);
    let cursor: Vec<_> = feed.advanced();
    assert!(
        cursor.contains(&(Stream::Telemetry, first + 199)),
        "the cursor is the backlog's front, not the live one: {cursor:?}"
    );
    loop {
        let batches = feed.next().await.unwrap();
        if batches.is_empty() {
            break;
        }
        round(batches, &mut feed);
    }
    let all: std::collections::BTreeSet<i64> = db
        .prepare("SELECT id FROM samples WHERE id >= ?1")
        .unwrap()
        .query_map([first], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(seen, all);
    let end = *all.last().unwrap();
    assert!(end >= live);
    assert!(feed.advanced().contains(&(Stream::Telemetry, end)));
}

/// A sink that keeps up takes telemetry from the store's tail and reads none of it back from
/// SQLite: the same rows of every stream, once each and in the same order, as a sink reading
/// the file gets (one row a batch: events and status longer than a batch are read to the end
/// though no commit writes more of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_keeps_up_gets_from_the_tail_the_rows_the_file_holds() {
    use edge_gateway::sinks::feed::{Batch, Feed};
    let (sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body(&addr.to_string())))
        .await
        .unwrap();
    let feed = |tail: bool| {
        let reader = edge_gateway::store::open_reader(dir.path()).unwrap();
        let f = Feed::new("test", reader, gw.config.clone(), 1);
        if tail {
            f.with_tail(gw.store.tail.clone())
        } else {
            f
        }
    };
    let (mut live, mut file) = (feed(true), feed(false));
    live.reset().await.unwrap();
    file.reset().await.unwrap();
    let take = |batches: Vec<Batch>, f: &mut Feed, out: &mut Vec<(Stream, OutboxRow)>| {
        let n = out.len();
        for b in batches {
            f.confirm(b.stream, b.rows.iter().map(OutboxRow::id));
            out.extend(b.rows.into_iter().map(|r| (b.stream, r)));
        }
        out.len() > n
    };
    let (mut from_live, mut from_file) = (Vec::new(), Vec::new());
    let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < until {
        // A setpoint that moves: a sample at every poll.
        sim.with_memory(BOILER, |m| m.holding[2] = m.holding[2].wrapping_add(1));
        take(live.next().await.unwrap(), &mut live, &mut from_live);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.shutdown().await;
    while take(live.next().await.unwrap(), &mut live, &mut from_live) {}
    while take(file.next().await.unwrap(), &mut file, &mut from_file) {}
    let of = |rows: &[(Stream, OutboxRow)], s: Stream| -> Vec<OutboxRow> {
        rows.iter()
            .filter(|r| r.0 == s)
            .map(|r| r.1.clone())
            .collect()
    };
    let samples = of(&from_file, Stream::Telemetry);
    assert!(samples.len() > 10, "{} samples stored", samples.len());
    assert!(
        of(&from_file, Stream::Events).len() >= 2,
        "both devices online"
    );
    for s in Stream::ALL {
        assert_eq!(of(&from_live, s), of(&from_file, s), "{s:?}");
    }
    assert_eq!(live.from_tail(), samples.len() as u64, "all from the tail");
    assert_eq!(file.from_tail(), 0);
    // Caught up and every row confirmed: no backlog, counted without a query (the file's count
    // goes by the persisted cursors, which these feeds never wrote).
    assert_eq!(live.backlog().await.unwrap(), 0);
    assert!(file.backlog().await.unwrap() > 10);
}

/// `max_db_mb`: history already upstream goes first; only when that is not enough does unsent
/// telemetry go, and then one gap event per device says exactly what was lost. Events stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines, reason = "one scenario, read top to bottom")]
async fn over_the_size_cap_sent_history_goes_first_then_unsent_rows_with_a_gap_event() {
    let dir = tempfile::tempdir().unwrap();
    // An upstream that never answers: nothing is confirmed but what the test says.
    let body = format!(
        "[store]\nmax_db_mb = 8\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n{}",
        body("127.0.0.1:1")
    );
    let gw = Gateway::start(config(dir.path(), &body)).await.unwrap();
    // The writer prunes history past the retention when it starts, and the rows below are from
    // 1970: they must arrive after that prune, or it takes them (unsent ones too) on a slow
    // start. A flush is answered only after it.
    gw.store.flush().await;
    let db = rusqlite::Connection::open(dir.path().join("gateway.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(10)).unwrap();
    // Rows, and with them (in the same transaction, so the cap never sees them all unsent) the
    // sink's cursor at the row of `confirm_ts`.
    let add = |n: i64, from_ts: i64, confirm_ts: Option<i64>| {
        // Immediate: the gateway commits beside it, and a deferred transaction that has read
        // cannot take the write lock after a commit it did not see (SQLITE_BUSY at once).
        let tx =
            rusqlite::Transaction::new_unchecked(&db, rusqlite::TransactionBehavior::Immediate)
                .unwrap();
        // A sample of five values each, as a real device's would be.
        let points: Vec<(&str, Option<Value>, Quality)> =
            ["temperature", "pressure", "a", "b", "c"]
                .into_iter()
                .map(|p| (p, Some(Value::Float(71.123456789)), Quality::Good))
                .collect();
        for i in 0..n {
            edge_gateway::store::append_sample(&tx, "boiler", from_ts + i, &points).unwrap();
        }
        if let Some(ts) = confirm_ts {
            tx.execute(
                "INSERT OR REPLACE INTO sink_cursors (sink, stream, last_id)
                 SELECT 'mqtt', 'telemetry', id FROM samples WHERE ts = ?1",
                [ts],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    };
    let n = |db: &rusqlite::Connection, sql: &str| -> i64 {
        db.query_row(sql, [], |r| r.get(0)).unwrap()
    };
    let events_before = n(&db, "SELECT COUNT(*) FROM events");
    // ~15 MB of history, the older two thirds of it confirmed by the sink.
    add(150_000, 1_000_000, Some(1_099_999));
    let confirmed = n(&db, "SELECT id FROM samples WHERE ts = 1099999");
    let used = |db: &rusqlite::Connection| {
        n(db, "PRAGMA page_count") - n(db, "PRAGMA freelist_count")
    } * n(db, "PRAGMA page_size");
    wait_for_async("the cap applied", || async {
        gw.store.flush().await;
        used(&db) <= 8 << 20
    })
    .await;
    // (The gateway's own dead bus adds a row or two of its own.)
    assert!(
        n(
            &db,
            &format!("SELECT COUNT(*) FROM samples WHERE id > {confirmed}")
        ) >= 50_000,
        "no unsent row dropped while sent ones were left"
    );
    assert_eq!(
        n(
            &db,
            "SELECT COUNT(*) FROM events WHERE message LIKE 'telemetry gap%'"
        ),
        0
    );

    // Now ~20 MB of unsent rows: the oldest of them go, and say so.
    add(150_000, 2_000_000, None);
    wait_for_async("the cap applied again", || async {
        gw.store.flush().await;
        used(&db) <= 8 << 20
    })
    .await;
    wait_for("the gap event", || {
        n(
            &db,
            "SELECT COUNT(*) FROM events WHERE message LIKE 'telemetry gap%'",
        ) > 0
    })
    .await;
    let (msg, kind, state, device): (String, String, String, String) = db
        .query_row(
            "SELECT message, type, state, device_id FROM events WHERE message LIKE 'telemetry gap%' ORDER BY seq LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), state.as_str(), device.as_str()),
        ("device_abnormal", "info", "boiler")
    );
    // The first unsent row lost is the oldest one (ts 1_000_000 + 100_000).
    assert!(msg.contains("1970-01-01T00:18:20.000Z"), "{msg}");
    // Every unsent row is either kept or counted in a gap (the gap events of later drops may
    // still be on their way through the pipeline).
    let accounted = || {
        let left = n(
            &db,
            &format!("SELECT COUNT(*) FROM samples WHERE id > {confirmed}"),
        );
        let lost = n(&db, "SELECT COALESCE(SUM(CAST(substr(message, 16, instr(substr(message, 16), ' ') - 1) AS INTEGER)), 0) FROM events WHERE message LIKE 'telemetry gap%'");
        left + lost
    };
    wait_for("every unsent row kept or counted in a gap", || {
        (200_000..200_010).contains(&accounted())
    })
    .await;
    assert!(
        n(&db, "SELECT COUNT(*) FROM events") >= events_before,
        "events are never dropped"
    );
    gw.shutdown().await;
}

/// The trends' history: a day of readings folded into at most 100 buckets, oldest first, a
/// one-reading spike still the maximum of its bucket, a bad reading marked as a gap.
#[tokio::test]
async fn history_is_downsampled_into_buckets_that_keep_spikes_and_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(config(dir.path(), &body("127.0.0.1:1")))
        .await
        .unwrap();
    let config = gw.config.clone();
    gw.shutdown().await;
    let db = dir.path().join(edge_gateway::store::DB_FILE);
    let t0 = now_ms() - 86_400_000;
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for i in 0..1000i64 {
            let (v, q) = match i {
                500 => (Some(Value::Int(1000)), Quality::Good),
                700 => (None, Quality::Bad),
                _ => (Some(Value::Int(i % 10)), Quality::Good),
            };
            edge_gateway::store::append_sample(
                &conn,
                "boiler",
                t0 + i * 86_400,
                &[("setpoint", v, q)],
            )
            .unwrap();
        }
    }
    let conn = edge_gateway::store::open_reader(dir.path()).unwrap();
    let dev = &config.devices[0];
    let point = dev.points.iter().find(|p| p.id == "setpoint").unwrap();
    let b =
        edge_gateway::store::history_buckets(&conn, dev, point, t0, t0 + 86_400_000, 100).unwrap();
    assert!(b.len() <= 100 && b.len() >= 90, "{} buckets", b.len());
    assert!(
        b.windows(2).all(|w| w[0].start < w[1].start),
        "oldest first"
    );
    let spike = b
        .iter()
        .find(|x| x.max == 1000.0)
        .expect("the spike survives");
    assert!(spike.min < 10.0 && spike.last < 10.0, "{spike:?}");
    assert_eq!(b.iter().filter(|x| x.gap).count(), 1);
}

/// The event ids a database holds, in order.
fn event_seqs(dir: &std::path::Path) -> Vec<i64> {
    let db = edge_gateway::store::open_reader(dir).unwrap();
    let mut q = db.prepare("SELECT seq FROM events ORDER BY seq").unwrap();
    q.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Hostile test #30, item 8: `rm gateway.db*` under a running gateway, or a deleted WAL and a
/// SIGKILL, and the fresh store numbered from 1: ids seen upstream named two events. Now the
/// WAL's loss is noticed as the database's is (unhealthy, nothing more sent upstream), and a
/// store started after the loss numbers past every id reserved before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_store_is_lost_no_event_id_is_used_again() {
    use edge_gateway::config::Priority;
    let (_sim, addr, _c) = start_sim(Profile::Demo).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(dir.path(), &body(&addr.to_string()));
    let gw = Gateway::start(cfg()).await.unwrap();
    for i in 0..5 {
        gw.inject_draft(info_draft(
            0,
            Priority::Normal,
            &format!("before {i}"),
            now_ms(),
        ))
        .await;
    }
    gw.settle().await;
    let before = event_seqs(dir.path());
    let last = *before.last().unwrap();
    // A sink's feed, opened while the store was whole: it has the events to send.
    let mut feed = edge_gateway::sinks::feed::Feed::new(
        "test",
        edge_gateway::store::open_reader(dir.path()).unwrap(),
        std::sync::Arc::new(cfg()),
        100,
    )
    .held_while(gw.store.gone.clone());
    feed.reset().await.unwrap();
    assert!(!feed.next().await.unwrap().is_empty());
    // The WAL alone deleted: noticed within the writer's probe, as the database's loss is,
    // and the feed holds (it would send what the next start no longer has).
    std::fs::remove_file(dir.path().join("gateway.db-wal")).unwrap();
    wait_for("the loss noticed", || {
        gw.store.gone.load(std::sync::atomic::Ordering::Relaxed)
    })
    .await;
    assert!(!gw.store.healthy.load(std::sync::atomic::Ordering::Relaxed));
    feed.reset().await.unwrap();
    assert!(feed.next().await.unwrap().is_empty(), "the feed sends on");
    gw.shutdown().await;
    // The whole database gone: the next start numbers past what was reserved.
    for f in ["gateway.db", "gateway.db-wal", "gateway.db-shm"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let gw = Gateway::start(cfg()).await.unwrap();
    gw.inject_draft(info_draft(0, Priority::Normal, "after", now_ms()))
        .await;
    gw.settle().await;
    let after = event_seqs(dir.path());
    assert!(
        after.iter().all(|s| *s > last),
        "ids before the loss {before:?}, after {after:?}"
    );
    gw.shutdown().await;
}
