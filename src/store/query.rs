//! Reads of the store: the state a restart begins with, a point's history, the event log and
//! the alarm list. Each runs on a reader connection, never the writer's.

use rusqlite::{params, Connection, OptionalExtension};

use super::packed::{self, find_key};
use super::{from_sql, Keys, Restored};
use crate::config::{Config, Point};
use crate::model::{Millis, Quality, Value};

/// The last state: device status, each point's latest value (the `latest` table, then every
/// sample written after it was last saved, replayed on top), event numbering and the alarms
/// still active.
pub fn restore(conn: &Connection, config: &Config, keys: &Keys) -> rusqlite::Result<Restored> {
    let mut out = Restored::default();
    let mut dev_q =
        conn.prepare("SELECT online, last_seen FROM device_status WHERE device_id = ?1")?;
    let mut pt_q = conn.prepare("SELECT value, ts FROM latest WHERE point = ?1")?;
    // Which device and point each key stands for, for the replay.
    let mut at = std::collections::HashMap::new();
    for (d, dev) in config.devices.iter().enumerate() {
        let st: Option<(bool, Option<Millis>)> = dev_q
            .query_row([&dev.id], |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?)))
            .optional()?;
        out.devices
            .push(st.map_or((None, None), |(o, l)| (Some(o), l)));
        let mut pts = Vec::with_capacity(dev.points.len());
        for (p, point) in dev.points.iter().enumerate() {
            let key = keys.points[d][p];
            at.insert(key, (d, p));
            let row: Option<(rusqlite::types::Value, Millis)> = pt_q
                .query_row([key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            pts.push(row.map(|(v, ts)| (from_sql(point, v), ts)));
        }
        out.points.push(pts);
    }
    // Each event source numbers on where it stopped: devices, buses (`bus_offline`), the
    // gateway itself (`config_applied`).
    let mut seq_q = conn.prepare("SELECT MAX(device_seq) FROM events WHERE device_id = ?1")?;
    for s in 0..config.sources() {
        let ds: Option<i64> = seq_q.query_row([config.source_id(s)], |r| r.get(0))?;
        out.device_seq.push(ds.unwrap_or(0) as u64);
    }
    let upto = meta_int(conn, "latest_upto")?.unwrap_or(0);
    let mut q = conn.prepare("SELECT ts, points FROM samples WHERE id > ?1 ORDER BY id")?;
    let mut rows = q.query([upto])?;
    while let Some(r) = rows.next()? {
        let ts: Millis = r.get(0)?;
        let Ok(entries) = packed::decode(r.get_ref(1)?.as_blob()?) else {
            continue;
        };
        for (key, value, _) in entries {
            if let Some(&(d, p)) = at.get(&key) {
                out.points[d][p] = Some((value, ts));
            }
        }
    }
    let max_seq: Option<i64> = conn.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
    let stored =
        (max_seq.unwrap_or(0) as u64).max(meta_int(conn, "event_seq")?.unwrap_or(0) as u64);
    // Past what the reservation file says too: this store may be younger than the ids upstream.
    out.last_seq = super::seq::first(&config.gateway.data_dir, stored) - 1;
    let mut q = conn.prepare("SELECT key FROM alarms WHERE state = 'active'")?;
    out.active_alarms = q
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    let config_ms = config.push.interval.as_millis() as i64;
    if meta_int(conn, "push_interval_config_ms")? == Some(config_ms) {
        out.push_interval = meta_int(conn, "push_interval_ms")?
            .and_then(|ms| u64::try_from(ms).ok())
            .map(std::time::Duration::from_millis);
    }
    Ok(out)
}

/// A number kept in `meta`.
pub fn meta_int(conn: &Connection, key: &str) -> rusqlite::Result<Option<i64>> {
    let v: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|s| s.parse().ok()))
}

/// A point's history, oldest first: at most `limit` rows, the newest ones in the range.
pub fn history(
    conn: &Connection,
    device: &crate::config::Device,
    point: &Point,
    since: Millis,
    until: Millis,
    limit: usize,
) -> rusqlite::Result<Vec<(Millis, Option<Value>, Quality)>> {
    let mut rows = Vec::new();
    walk(conn, device, point, since, until, |ts, v, q| {
        rows.push((ts, v, q));
        rows.len() < limit
    })?;
    rows.reverse();
    Ok(rows)
}

/// One time bucket of a downsampled history: the range of numeric values in it (so a spike
/// stays visible at any zoom), its last value, and whether a bad or stale reading fell in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub start: Millis,
    pub min: f64,
    pub max: f64,
    pub last: f64,
    pub last_ts: Millis,
    pub gap: bool,
}

/// Every reading in the range folded into `buckets` equal time buckets (only those that hold
/// one), oldest first: at most one per pixel column whatever the range, 10 min or 7 days.
pub fn history_buckets(
    conn: &Connection,
    device: &crate::config::Device,
    point: &Point,
    since: Millis,
    until: Millis,
    buckets: usize,
) -> rusqlite::Result<Vec<Bucket>> {
    let width = ((until - since).max(1) as f64 / buckets.max(1) as f64).max(1.0);
    let mut out: Vec<Bucket> = Vec::new();
    walk(conn, device, point, since, until, |ts, v, q| {
        let i = (((ts - since) as f64) / width) as usize;
        let start = since + (i as f64 * width) as Millis;
        let number = v.as_ref().and_then(Value::as_f64);
        let bad = q != Quality::Good || number.is_none();
        // Walked newest first: a new bucket is the next older one.
        if out.last().is_none_or(|b| b.start != start) {
            out.push(Bucket {
                start,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                last: f64::NAN,
                last_ts: ts,
                gap: false,
            });
        }
        let b = out.last_mut().expect("pushed above");
        b.gap |= bad;
        if let (Some(x), false) = (number, bad) {
            b.min = b.min.min(x);
            b.max = b.max.max(x);
            if b.last.is_nan() {
                (b.last, b.last_ts) = (x, ts);
            }
        }
        true
    })?;
    out.retain(|b| b.min.is_finite() || b.gap);
    out.reverse();
    Ok(out)
}

/// Walks a point's readings in `since..=until`, newest first, while `f` returns true: the
/// device's chain of samples back from its newest, in one read transaction so the chain is
/// seen as of one moment.
fn walk(
    conn: &Connection,
    device: &crate::config::Device,
    point: &Point,
    since: Millis,
    until: Millis,
    mut f: impl FnMut(Millis, Option<Value>, Quality) -> bool,
) -> rusqlite::Result<()> {
    let (Some(dk), Some(pk)) = (
        find_key(conn, &device.id, "")?,
        find_key(conn, &device.id, &point.id)?,
    ) else {
        return Ok(());
    };
    let tx = conn.unchecked_transaction()?;
    let mut next: Option<i64> = tx
        .query_row("SELECT last FROM heads WHERE device = ?1", [dk], |r| {
            r.get(0)
        })
        .optional()?;
    let mut step = tx.prepare_cached("SELECT ts, prev, points FROM samples WHERE id = ?1")?;
    while let Some(id) = next.filter(|&id| id > 0) {
        let Some((ts, prev, blob)) = step
            .query_row([id], |r| {
                Ok((
                    r.get::<_, Millis>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .optional()?
        else {
            break; // pruned: the chain ends here
        };
        if ts < since {
            break;
        }
        // Ids only grow along a chain; anything else is damage, not a reason to loop.
        next = (prev < id).then_some(prev);
        if ts > until {
            continue;
        }
        if let Some((_, v, q)) = packed::decode(&blob)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.0 == pk)
        {
            if !f(ts, v, q) {
                break;
            }
        }
    }
    Ok(())
}

/// An event read back from the store, as the SPEC JSON.
pub(super) fn event_row_json(
    config: &Config,
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<serde_json::Value> {
    let device_id: String = r.get("device_id")?;
    let point_id: Option<String> = r.get("point_id")?;
    let value = super::event_value(config, &device_id, point_id.as_deref(), r.get("value")?);
    let text = |col: &str| r.get::<_, String>(col);
    Ok(crate::model::event::SpecEvent {
        id: &text("event_id")?,
        device_id: &device_id,
        point_id: point_id.as_deref(),
        kind: &text("type")?,
        priority: &text("priority")?,
        device_seq: r.get("device_seq")?,
        value: value.as_ref(),
        message: &text("message")?,
        ts: r.get("ts")?,
        state: &text("state")?,
        acked_by: r.get::<_, Option<String>>("acked_by")?.as_deref(),
        acked_at: r.get("acked_at")?,
    }
    .to_json())
}

/// Filters of `events.query`.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub device_id: Option<String>,
    pub kind: Option<String>,
    pub min_priority_rank: i64,
    pub since: Option<Millis>,
    /// Paging: only events older than this seq.
    pub before_seq: Option<i64>,
    pub limit: usize,
}

/// Point values recorded before `before` (ms): what an upstream holds once it has everything
/// up to then (one MySQL telemetry row each). Each sample is decoded; for checks, not polling.
pub fn values_before(conn: &Connection, before: Millis) -> rusqlite::Result<i64> {
    let mut stmt = conn.prepare("SELECT points FROM samples WHERE ts < ?1")?;
    let mut rows = stmt.query([before])?;
    let mut n = 0i64;
    while let Some(r) = rows.next()? {
        n += packed::decode(r.get_ref(0)?.as_blob()?).map_or(0, |e| e.len() as i64);
    }
    Ok(n)
}

/// Events newest first, by the filter.
pub fn query_events(
    conn: &Connection,
    config: &Config,
    f: &EventFilter,
) -> rusqlite::Result<Vec<serde_json::Value>> {
    let mut q = conn.prepare_cached(
        "SELECT * FROM events WHERE (?1 IS NULL OR device_id = ?1) AND (?2 IS NULL OR type = ?2)
         AND priority_rank >= ?3 AND (?4 IS NULL OR ts >= ?4) AND (?5 IS NULL OR seq < ?5)
         ORDER BY seq DESC LIMIT ?6",
    )?;
    let rows = q.query_map(
        params![
            f.device_id,
            f.kind,
            f.min_priority_rank,
            f.since,
            f.before_seq,
            f.limit as i64
        ],
        |r| event_row_json(config, r),
    )?;
    rows.collect()
}

/// The seq of an event id, for paging.
pub fn event_seq(conn: &Connection, event_id: &str) -> rusqlite::Result<Option<i64>> {
    conn.query_row(
        "SELECT seq FROM events WHERE event_id = ?1",
        [event_id],
        |r| r.get(0),
    )
    .optional()
}

/// Alarms active now, of those the ones not acknowledged, and the active emergencies: what a
/// fleet's `state` counts.
pub fn alarm_counts(conn: &Connection) -> rusqlite::Result<(u64, u64, u64)> {
    conn.prepare_cached(
        "SELECT COUNT(*), COALESCE(SUM(acked_by IS NULL), 0), COALESCE(SUM(priority_rank = ?1), 0)
         FROM alarms WHERE state = 'active'",
    )?
    .query_row([crate::model::event::Priority::Emergency.rank()], |r| {
        let n = |i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
        Ok((n(0)?, n(1)?, n(2)?))
    })
}

/// Alarms still listed (active, or cleared but not acknowledged): highest priority first, then
/// newest first. Each is its raising event with the alarm's current `state` and ack.
pub fn active_alarms(
    conn: &Connection,
    config: &Config,
) -> rusqlite::Result<Vec<serde_json::Value>> {
    let mut q = conn.prepare_cached(
        "SELECT e.seq, e.event_id, e.device_id, e.point_id, e.type, e.priority, e.device_seq, e.value,
                e.message, e.ts, a.state AS state, a.acked_by AS acked_by, a.acked_at AS acked_at,
                a.occurrences AS occurrences, a.key AS alarm_key,
                COALESCE(a.first_raised_at, a.raised_at) AS first_raised_at
         FROM alarms a JOIN events e ON e.seq = a.event_seq
         ORDER BY a.priority_rank DESC, a.raised_at DESC",
    )?;
    let rows = q.query_map([], |r| {
        let mut j = event_row_json(config, r)?;
        j["occurrences"] = r.get::<_, i64>("occurrences")?.into();
        // Stays the same when the alarm is raised again (its event id does not).
        j["alarmKey"] = r.get::<_, String>("alarm_key")?.into();
        j["firstRaisedAt"] = crate::model::rfc3339(r.get("first_raised_at")?).into();
        Ok(j)
    })?;
    rows.collect()
}

/// Audit rows (writes and config applies), newest first: up to `limit` with an id below
/// `before` (all when `None`). Values are typed by their point while the config has it.
pub fn audit_page(
    conn: &Connection,
    config: &Config,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Vec<serde_json::Value>> {
    let mut q = conn.prepare_cached(
        "SELECT id, ts, user, source, device_id, point_id, old_value, new_value, result
         FROM write_audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = q.query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
        let device: String = r.get(4)?;
        let point: String = r.get(5)?;
        let value = |i: usize| -> rusqlite::Result<serde_json::Value> {
            let raw: rusqlite::types::Value = r.get(i)?;
            Ok(
                match super::event_value(config, &device, Some(&point), raw.clone()) {
                    Some(v) => v.to_json(),
                    // A point the config no longer has, or a config apply: as stored.
                    None => match raw {
                        rusqlite::types::Value::Integer(i) => i.into(),
                        rusqlite::types::Value::Real(f) => f.into(),
                        rusqlite::types::Value::Text(s) => s.into(),
                        _ => serde_json::Value::Null,
                    },
                },
            )
        };
        Ok(serde_json::json!({
            "id": r.get::<_, i64>(0)?,
            "ts": crate::model::rfc3339(r.get(1)?),
            "user": r.get::<_, String>(2)?,
            "source": r.get::<_, String>(3)?,
            "deviceId": device,
            "pointId": point,
            "old": value(6)?,
            "value": value(7)?,
            "result": r.get::<_, String>(8)?,
        }))
    })?;
    rows.collect()
}
