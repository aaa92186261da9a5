//! The SQLite schema, its migrations (`PRAGMA user_version` counts how many ran) and the
//! connection settings every store connection shares.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Transaction};

use super::{from_sql, packed, StoreError};
use crate::config::Config;
use crate::model::{Quality, Value};

/// Page size of a new database. Every commit appends each page it touched to the WAL, and the
/// hot ones (the newest leaf of `samples`, `heads`, `sink_cursors`) are touched by nearly every
/// commit: at 1 KiB instead of SQLite's 4 KiB default a group commit writes about a third of
/// the bytes (measured in BENCHMARKS.md). An existing file keeps the page size it was made with.
const PAGE_SIZE: i64 = 1024;

/// One schema step: plain SQL, or SQL followed by a data conversion in Rust.
enum Step {
    Sql(&'static str),
    Convert(
        &'static str,
        fn(&Transaction<'_>, &Config) -> rusqlite::Result<()>,
    ),
}

const MIGRATIONS: &[Step] = &[
    // 1: state and history.
    Step::Sql(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         CREATE TABLE device_status (
            device_id TEXT PRIMARY KEY,
            device_type TEXT NOT NULL,
            online INTEGER NOT NULL,
            last_seen INTEGER,
            changed_at INTEGER NOT NULL);
         CREATE TABLE point_latest (
            device_id TEXT NOT NULL,
            point_id TEXT NOT NULL,
            value,
            quality TEXT NOT NULL,
            ts INTEGER NOT NULL,
            PRIMARY KEY (device_id, point_id)) WITHOUT ROWID;
         CREATE TABLE telemetry (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            point_id TEXT NOT NULL,
            ts INTEGER NOT NULL,
            value,
            quality TEXT NOT NULL);
         CREATE INDEX telemetry_point_ts ON telemetry (device_id, point_id, ts);
         CREATE INDEX telemetry_ts ON telemetry (ts);",
    ),
    // 2: who wrote what to which device, and how it went.
    Step::Sql(
        "CREATE TABLE write_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts INTEGER NOT NULL,
            user TEXT NOT NULL,
            source TEXT NOT NULL,
            device_id TEXT NOT NULL,
            point_id TEXT NOT NULL,
            old_value,
            new_value,
            result TEXT NOT NULL);",
    ),
    // 3: events (the log) and alarms (their current state, ISA-18.2 style).
    Step::Sql(
        "CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            device_id TEXT NOT NULL,
            point_id TEXT,
            type TEXT NOT NULL,
            priority TEXT NOT NULL,
            priority_rank INTEGER NOT NULL,
            device_seq INTEGER NOT NULL,
            value,
            message TEXT NOT NULL,
            state TEXT NOT NULL,
            ts INTEGER NOT NULL,
            acked_by TEXT,
            acked_at INTEGER);
         CREATE INDEX events_device ON events (device_id, device_seq);
         CREATE INDEX events_ts ON events (ts);
         CREATE TABLE alarms (
            key TEXT PRIMARY KEY,
            event_seq INTEGER NOT NULL,
            state TEXT NOT NULL,
            priority_rank INTEGER NOT NULL,
            raised_at INTEGER NOT NULL,
            cleared_at INTEGER,
            acked_by TEXT,
            acked_at INTEGER);",
    ),
    // 4: the upstream outbox: device status changes as a log, and each sink's cursors.
    Step::Sql(
        "CREATE TABLE status_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            online INTEGER NOT NULL,
            last_seen INTEGER,
            ts INTEGER NOT NULL);
         CREATE TABLE sink_cursors (
            sink TEXT NOT NULL,
            stream TEXT NOT NULL,
            last_id INTEGER NOT NULL,
            PRIMARY KEY (sink, stream)) WITHOUT ROWID;",
    ),
    // 5: history and outbox as one row per device sample with its points packed (see
    // `packed`), integer keys for ids, and no secondary index: a device's samples are chained
    // through `prev` from its row in `heads`, so a commit touches the newest pages only. The
    // latest value of each point is kept in memory and written to `latest` now and then;
    // samples after `meta.latest_upto` replay on top of it at start.
    Step::Convert(
        "CREATE TABLE names (
            id INTEGER PRIMARY KEY,
            device_id TEXT NOT NULL,
            point_id TEXT NOT NULL,
            UNIQUE (device_id, point_id));
         CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            device INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            prev INTEGER NOT NULL,
            points BLOB NOT NULL);
         CREATE TABLE heads (device INTEGER PRIMARY KEY, last INTEGER NOT NULL);
         CREATE TABLE latest (
            point INTEGER PRIMARY KEY,
            value,
            quality TEXT NOT NULL,
            ts INTEGER NOT NULL);",
        rows_to_samples,
    ),
    // 6: an alarm raised again while its earlier occurrence waits for an acknowledgement keeps
    // its row, counted, with the time it was first raised.
    Step::Sql(
        "ALTER TABLE alarms ADD COLUMN occurrences INTEGER NOT NULL DEFAULT 1;
         ALTER TABLE alarms ADD COLUMN first_raised_at INTEGER;",
    ),
    // 7: an acknowledgement's own `info` event names the alarm event it acknowledged, so the
    // upstream copy of that alarm can be marked when the record reaches it.
    Step::Sql("ALTER TABLE events ADD COLUMN acks TEXT;"),
    // 8: alarm notifications waiting for their notifier, queued in the commit of their event:
    // the first message (`alarm`), a reminder, an escalation; `due` moves on with each failed
    // attempt, so retries outlive a restart.
    Step::Sql(
        "CREATE TABLE notify_queue (
            id INTEGER PRIMARY KEY,
            notifier TEXT NOT NULL,
            event_seq INTEGER NOT NULL,
            alarm_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            n INTEGER NOT NULL DEFAULT 0,
            due INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT);
         CREATE INDEX notify_due ON notify_queue (notifier, due);",
    ),
];

/// The schema version this build writes.
pub const VERSION: usize = MIGRATIONS.len();

pub fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    // Only takes effect while the file is still empty.
    conn.pragma_update(None, "page_size", PAGE_SIZE)
        .map_err(err)?;
    // WAL: readers never block the writer; NORMAL is crash-safe for the application in WAL.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    Ok(conn)
}

pub fn migrate(conn: &mut Connection, path: &Path, config: &Config) -> Result<(), StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if version as usize > VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: VERSION,
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(err)?;
        match step {
            Step::Sql(sql) => tx.execute_batch(sql).map_err(err)?,
            Step::Convert(sql, convert) => {
                tx.execute_batch(sql).map_err(err)?;
                convert(&tx, config).map_err(err)?;
            }
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!("store schema migrated to version {}", i + 1);
    }
    Ok(())
}

/// A value stored by the row-per-point schema, typed by the point when the config still has it.
fn old_value(
    config: &Config,
    device: &str,
    point: &str,
    v: rusqlite::types::Value,
) -> Option<Value> {
    use rusqlite::types::Value as S;
    match (super::find_point(config, device, point), v) {
        (Some(p), v) => from_sql(p, v),
        (None, S::Integer(i)) => Some(Value::Int(i)),
        (None, S::Real(f)) => Some(Value::Float(f)),
        (None, S::Text(s)) => Some(Value::Text(s)),
        (None, _) => None,
    }
}

/// Migration 5's data: the row-per-point history becomes one sample per device and time (in
/// the same order, so sink cursors map onto the new ids), the latest values move to `latest`,
/// and the old tables go.
fn rows_to_samples(tx: &Transaction<'_>, config: &Config) -> rusqlite::Result<()> {
    type Group = (String, i64, Vec<u8>, i64, i64);
    let mut heads = std::collections::HashMap::<i64, i64>::new();
    // (new sample id, the highest old row id it holds), ascending.
    let mut ends: Vec<(i64, i64)> = Vec::new();
    let mut insert = |g: Group| -> rusqlite::Result<()> {
        let (device, ts, points, _, last_old) = g;
        let dev = packed::key(tx, &device, "")?;
        let prev = heads.get(&dev).copied().unwrap_or(0);
        tx.prepare_cached(
            "INSERT INTO samples (device, ts, prev, points) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(rusqlite::params![dev, ts, prev, points])?;
        let id = tx.last_insert_rowid();
        heads.insert(dev, id);
        ends.push((id, last_old));
        Ok(())
    };
    {
        let mut q = tx.prepare(
            "SELECT id, device_id, point_id, ts, value, quality FROM telemetry ORDER BY id",
        )?;
        let mut rows = q.query([])?;
        let mut group: Option<Group> = None;
        while let Some(r) = rows.next()? {
            let (id, device, point, ts): (i64, String, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let value = old_value(config, &device, &point, r.get(4)?);
            let quality = Quality::parse(&r.get::<_, String>(5)?);
            if !matches!(&group, Some((d, t, ..)) if *d == device && *t == ts) {
                if let Some(g) = group.take() {
                    insert(g)?;
                }
                group = Some((device.clone(), ts, Vec::new(), 0, id));
            }
            let key = packed::key(tx, &device, &point)?;
            if let Some((_, _, buf, prev, last)) = &mut group {
                packed::push(buf, prev, key, value.as_ref(), quality);
                *last = id;
            }
        }
        if let Some(g) = group {
            insert(g)?;
        }
    }
    for (dev, last) in &heads {
        tx.execute(
            "INSERT INTO heads (device, last) VALUES (?1, ?2)",
            [dev, last],
        )?;
    }
    map_cursors(tx, &ends)?;
    move_latest(tx, config)?;
    let upto = ends.last().map_or(0, |e| e.0);
    tx.execute(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('latest_upto', ?1)",
        [upto.to_string()],
    )?;
    tx.execute_batch("DROP TABLE telemetry; DROP TABLE point_latest;")
}

/// A telemetry cursor at old row c becomes the newest sample whose rows all lie at or before
/// c: `ends` is (new sample id, the highest old row id it holds), ascending.
fn map_cursors(tx: &Transaction<'_>, ends: &[(i64, i64)]) -> rusqlite::Result<()> {
    let cursors: Vec<(String, i64)> = tx
        .prepare("SELECT sink, last_id FROM sink_cursors WHERE stream = 'telemetry'")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (sink, old) in cursors {
        let new = match ends.partition_point(|(_, last)| *last <= old) {
            0 => 0,
            n => ends[n - 1].0,
        };
        tx.execute(
            "UPDATE sink_cursors SET last_id = ?2 WHERE sink = ?1 AND stream = 'telemetry'",
            rusqlite::params![sink, new],
        )?;
    }
    Ok(())
}

/// `point_latest` (text ids) into `latest` (point keys).
fn move_latest(tx: &Transaction<'_>, config: &Config) -> rusqlite::Result<()> {
    let mut q = tx.prepare("SELECT device_id, point_id, value, quality, ts FROM point_latest")?;
    let mut rows = q.query([])?;
    while let Some(r) = rows.next()? {
        let (device, point): (String, String) = (r.get(0)?, r.get(1)?);
        let key = packed::key(tx, &device, &point)?;
        let value = old_value(config, &device, &point, r.get(2)?);
        tx.execute(
            "INSERT INTO latest (point, value, quality, ts) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![
                key,
                super::sql_value(&value),
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?
            ],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store written by the row-per-point schema (version 4) keeps its history, its latest
    /// values and where each sink stood.
    #[test]
    fn the_row_per_point_history_becomes_samples_with_cursors_that_mean_the_same() {
        let config = crate::config::parse(
            r#"
[gateway]
id = "gw"
[[buses]]
name = "b"
kind = "tcp"
address = "127.0.0.1:502"
[[devices]]
id = "pump"
bus = "b"
unit = 1
points = [
  { id = "on", table = "coil", address = 0, type = "bool" },
  { id = "speed", table = "holding", address = 0, type = "u16" },
]
"#,
        )
        .unwrap()
        .config;
        let mut conn = Connection::open_in_memory().unwrap();
        for step in &MIGRATIONS[..4] {
            if let Step::Sql(sql) = step {
                conn.execute_batch(sql).unwrap();
            }
        }
        conn.pragma_update(None, "user_version", 4).unwrap();
        conn.execute_batch(
            "INSERT INTO telemetry (device_id, point_id, ts, value, quality) VALUES
               ('pump', 'on', 1000, 1, 'good'), ('pump', 'speed', 1000, 1450, 'good'),
               ('pump', 'speed', 2000, 1460, 'bad'),
               ('gone', 'x', 2000, 2.5, 'good'),
               ('pump', 'on', 3000, 0, 'good'), ('pump', 'speed', 3000, 1470, 'good');
             INSERT INTO point_latest (device_id, point_id, value, quality, ts) VALUES
               ('pump', 'on', 0, 'good', 3000), ('pump', 'speed', 1470, 'good', 3000);
             INSERT INTO sink_cursors VALUES ('mysql', 'telemetry', 3), ('mqtt', 'telemetry', 5),
               ('mysql', 'events', 7);",
        )
        .unwrap();
        migrate(&mut conn, Path::new(":memory:"), &config).unwrap();

        let keys = super::super::Keys::resolve(&conn, &config).unwrap();
        let r = super::super::query::restore(&conn, &config, &keys).unwrap();
        assert_eq!(r.points[0][0], Some((Some(Value::Bool(false)), 3000)));
        assert_eq!(r.points[0][1], Some((Some(Value::Int(1470)), 3000)));
        let samples = super::super::sample_values(&conn, 0, i64::MAX).unwrap();
        assert_eq!(samples.len(), 6, "{samples:?}");
        let cursor = |sink: &str, stream: &str| -> i64 {
            conn.query_row(
                "SELECT last_id FROM sink_cursors WHERE sink = ?1 AND stream = ?2",
                [sink, stream],
                |r| r.get(0),
            )
            .unwrap()
        };
        // Old rows 1-3 are samples 1 (pump@1000) and 2 (pump@2000); row 4 is sample 3 and rows
        // 5-6 sample 4, which the mqtt cursor (row 5) had only half sent: it is sent again.
        assert_eq!(cursor("mysql", "telemetry"), 2);
        assert_eq!(cursor("mqtt", "telemetry"), 3);
        assert_eq!(cursor("mysql", "events"), 7);
        let dev = &config.devices[0];
        let h = super::super::history(&conn, dev, &dev.points[1], 0, 10_000, 10).unwrap();
        let values: Vec<_> = h.iter().map(|(ts, v, q)| (*ts, v.clone(), *q)).collect();
        assert_eq!(
            values,
            vec![
                (1000, Some(Value::Int(1450)), Quality::Good),
                (2000, Some(Value::Int(1460)), Quality::Bad),
                (3000, Some(Value::Int(1470)), Quality::Good)
            ]
        );
    }
}
