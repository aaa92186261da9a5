//! The upstream outbox: the three streams a sink forwards (events, device status changes,
//! telemetry samples), decoded into typed rows in this one place, and each sink's cursors.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};

pub use super::packed::DeviceNames;
use super::packed::{self, Names};
use crate::config::Config;
use crate::model::{Millis, Quality, Value};

/// An outbox stream. Ids within a stream only grow, so a cursor is one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Events,
    Status,
    Telemetry,
}

impl Stream {
    /// In the order a sink sends them: events and status before telemetry.
    pub const ALL: [Stream; 3] = [Stream::Events, Stream::Status, Stream::Telemetry];

    /// The name that keys the stream's cursor in `sink_cursors`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Events => "events",
            Stream::Status => "status",
            Stream::Telemetry => "telemetry",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The highest id of the stream (0 when empty).
    fn newest_sql(self) -> &'static str {
        match self {
            Stream::Events => "SELECT COALESCE(MAX(seq), 0) FROM events",
            Stream::Status => "SELECT COALESCE(MAX(id), 0) FROM status_log",
            Stream::Telemetry => "SELECT COALESCE(MAX(id), 0) FROM samples",
        }
    }
}

/// An event as the sinks send it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub seq: i64,
    pub event_id: String,
    pub device_id: String,
    pub point_id: Option<String>,
    pub kind: String,
    pub priority: String,
    pub device_seq: i64,
    pub value: Option<Value>,
    pub message: String,
    pub state: String,
    pub ts: Millis,
    pub acked_by: Option<String>,
    pub acked_at: Option<Millis>,
    /// For an acknowledgement's record: the alarm event it acknowledged.
    pub acks: Option<String>,
}

impl EventRow {
    /// The event in SPEC's wire shape, as it was raised; an acknowledgement follows as its
    /// own `info` event, which carries who and when.
    pub fn spec(&self) -> crate::model::event::SpecEvent<'_> {
        crate::model::event::SpecEvent {
            id: &self.event_id,
            device_id: &self.device_id,
            point_id: self.point_id.as_deref(),
            kind: &self.kind,
            priority: &self.priority,
            device_seq: self.device_seq,
            value: self.value.as_ref(),
            message: &self.message,
            ts: self.ts,
            state: &self.state,
            acked_by: self.acked_by.as_deref(),
            acked_at: self.acked_at,
        }
    }
}

/// A device's status change.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusRow {
    pub id: i64,
    pub device_id: String,
    pub device_type: String,
    pub online: bool,
    pub last_seen: Option<Millis>,
    pub ts: Millis,
}

/// One device sample: the points reported at one poll.
#[derive(Debug, Clone)]
pub struct SampleRow {
    pub id: i64,
    pub names: Arc<DeviceNames>,
    pub ts: Millis,
    /// Each point reported: its index in `names.points`, its value and quality.
    pub points: Vec<(u32, Option<Value>, Quality)>,
}

/// The same sample whichever table names its points (the tail's is the config's, a reader of
/// the file makes its own from the `names` table).
impl PartialEq for SampleRow {
    fn eq(&self, other: &SampleRow) -> bool {
        (self.id, self.ts, self.device_id(), self.points.len())
            == (other.id, other.ts, other.device_id(), other.points.len())
            && self.iter().eq(other.iter())
    }
}

impl SampleRow {
    pub fn device_id(&self) -> &str {
        &self.names.device
    }

    /// The `i`th point reported: its id, value and quality.
    pub fn point(&self, i: usize) -> Option<(&str, Option<&Value>, Quality)> {
        let (p, v, q) = self.points.get(i)?;
        let id = self
            .names
            .points
            .get(*p as usize)
            .map_or("", String::as_str);
        Some((id, v.as_ref(), *q))
    }

    /// Every point reported, in order: its id, value and quality.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&Value>, Quality)> {
        (0..self.points.len()).filter_map(|i| self.point(i))
    }

    /// A sample of a table made for it (tests).
    #[cfg(test)]
    pub fn named(
        id: i64,
        device: &str,
        ts: Millis,
        points: Vec<(&str, Option<Value>, Quality)>,
    ) -> SampleRow {
        let names = DeviceNames {
            device: device.into(),
            points: points.iter().map(|p| p.0.to_string()).collect(),
        };
        SampleRow {
            id,
            names: Arc::new(names),
            ts,
            points: (0u32..)
                .zip(points)
                .map(|(i, (_, v, q))| (i, v, q))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutboxRow {
    // Boxed: rare beside samples, and ~300 bytes where a sample is a pointer; every batch of
    // samples from the tail was a vector of rows that size.
    Event(Box<EventRow>),
    Status(Box<StatusRow>),
    /// Shared: the same committed sample goes to every sink (see `tail`).
    Sample(Arc<SampleRow>),
}

impl OutboxRow {
    /// The row's id in its stream.
    pub fn id(&self) -> i64 {
        match self {
            OutboxRow::Event(e) => e.seq,
            OutboxRow::Status(s) => s.id,
            OutboxRow::Sample(s) => s.id,
        }
    }
}

/// A reader of the outbox for one sink: its connection and the key names it has decoded.
pub struct Outbox {
    conn: Connection,
    config: Arc<Config>,
    names: Names,
}

impl Outbox {
    pub fn new(conn: Connection, config: Arc<Config>) -> Outbox {
        Outbox {
            conn,
            config,
            names: Names::default(),
        }
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Up to `limit` rows of a stream after `after`, up to and including `upto`, oldest first.
    pub fn read(
        &mut self,
        stream: Stream,
        after: i64,
        upto: i64,
        limit: usize,
    ) -> rusqlite::Result<Vec<OutboxRow>> {
        let args = params![after, upto, limit as i64];
        match stream {
            Stream::Events => {
                let config = &self.config;
                let mut q = self.conn.prepare_cached(
                    "SELECT seq, event_id, device_id, point_id, type, priority, device_seq, value,
                            message, state, ts, acked_by, acked_at, acks
                     FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
                )?;
                let rows = q.query_map(args, |r| {
                    let device_id: String = r.get(2)?;
                    let point_id: Option<String> = r.get(3)?;
                    let value =
                        super::event_value(config, &device_id, point_id.as_deref(), r.get(7)?);
                    Ok(OutboxRow::Event(Box::new(EventRow {
                        seq: r.get(0)?,
                        event_id: r.get(1)?,
                        device_id,
                        point_id,
                        kind: r.get(4)?,
                        priority: r.get(5)?,
                        device_seq: r.get(6)?,
                        value,
                        message: r.get(8)?,
                        state: r.get(9)?,
                        ts: r.get(10)?,
                        acked_by: r.get(11)?,
                        acked_at: r.get(12)?,
                        acks: r.get(13)?,
                    })))
                })?;
                rows.collect()
            }
            Stream::Status => {
                let mut q = self.conn.prepare_cached(
                    "SELECT s.id, s.device_id, COALESCE(d.device_type, ''), s.online, s.last_seen, s.ts
                     FROM status_log s LEFT JOIN device_status d ON d.device_id = s.device_id
                     WHERE s.id > ?1 AND s.id <= ?2 ORDER BY s.id LIMIT ?3",
                )?;
                let rows = q.query_map(args, |r| {
                    Ok(OutboxRow::Status(Box::new(StatusRow {
                        id: r.get(0)?,
                        device_id: r.get(1)?,
                        device_type: r.get(2)?,
                        online: r.get::<_, i64>(3)? != 0,
                        last_seen: r.get(4)?,
                        ts: r.get(5)?,
                    })))
                })?;
                rows.collect()
            }
            Stream::Telemetry => {
                let raw: Vec<(i64, i64, Millis, Vec<u8>)> = {
                    let mut q = self.conn.prepare_cached(
                        "SELECT id, device, ts, points FROM samples
                         WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
                    )?;
                    let rows =
                        q.query_map(args, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let mut out = Vec::with_capacity(raw.len());
                for (id, device, ts, blob) in raw {
                    out.push(OutboxRow::Sample(Arc::new(
                        self.sample(id, device, ts, &blob)?,
                    )));
                }
                Ok(out)
            }
        }
    }

    /// Decodes one sample. A damaged one, or one of a device no name is known for, comes back
    /// without points: logged, and still an id that counts as read, so the cursor moves on.
    fn sample(
        &mut self,
        id: i64,
        device: i64,
        ts: Millis,
        blob: &[u8],
    ) -> rusqlite::Result<SampleRow> {
        let entries = packed::decode(blob).ok();
        if let Some(entries) = &entries {
            let keys = entries.iter().map(|e| e.0);
            self.names
                .cover(&self.conn, std::iter::once(device).chain(keys))?;
        }
        let (Some(entries), Some((names, _))) = (entries, self.names.get(device)) else {
            tracing::warn!("telemetry sample {id} is damaged: skipped");
            return Ok(SampleRow {
                id,
                names: Arc::new(DeviceNames {
                    device: String::new(),
                    points: Vec::new(),
                }),
                ts,
                points: Vec::new(),
            });
        };
        let mut row = SampleRow {
            id,
            names: names.clone(),
            ts,
            points: Vec::with_capacity(entries.len()),
        };
        for (key, value, quality) in entries {
            // A key of another device's would be a damaged row: the point is left out.
            match self.names.get(key) {
                Some((t, p)) if Arc::ptr_eq(t, &row.names) => row.points.push((*p, value, quality)),
                _ => {}
            }
        }
        Ok(row)
    }

    /// The highest id of a stream (0 when empty).
    pub fn newest(&self, stream: Stream) -> rusqlite::Result<i64> {
        newest(&self.conn, stream)
    }
}

pub fn newest(conn: &Connection, stream: Stream) -> rusqlite::Result<i64> {
    conn.prepare_cached(stream.newest_sql())?
        .query_row([], |r| r.get(0))
}

/// A sink's cursor in a stream (0: nothing sent yet).
pub fn cursor(conn: &Connection, sink: &str, stream: Stream) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT last_id FROM sink_cursors WHERE sink = ?1 AND stream = ?2")?
        .query_row([sink, stream.name()], |r| r.get(0))
        .optional()
        .map(|v| v.unwrap_or(0))
}

/// Rows of all streams not yet confirmed by a sink: the highest id of each stream less the
/// sink's cursor. Ids only grow, so this is exact but for rows pruned past the cursor, and
/// costs one index lookup per stream instead of counting a backlog that may be a million rows
/// long on every batch. `sent` holds cursors the sink has handed to the writer that may not be
/// committed yet (in [`Stream::ALL`] order, or empty): whichever cursor is further counts.
pub fn backlog(conn: &Connection, sink: &str, sent: &[i64]) -> rusqlite::Result<i64> {
    let mut total = 0;
    for stream in Stream::ALL {
        let cursor =
            cursor(conn, sink, stream)?.max(sent.get(stream.index()).copied().unwrap_or(0));
        total += (newest(conn, stream)? - cursor).max(0);
    }
    Ok(total)
}

/// The statements that append a sample to its device's chain (the writer's and
/// [`super::append_sample`]'s), prepared once for a batch of samples: looking a statement up in
/// the cache hashes its text, two lookups a sample were ~1 % of the gateway's instructions.
/// Ids continue from `meta.samples_hw` when every sample has been pruned: they are the sinks'
/// cursors and are never handed out twice.
pub(super) struct SampleInsert<'c> {
    insert: rusqlite::CachedStatement<'c>,
    head: rusqlite::CachedStatement<'c>,
}

impl<'c> SampleInsert<'c> {
    pub(super) fn prepare(conn: &'c Connection) -> rusqlite::Result<SampleInsert<'c>> {
        Ok(SampleInsert {
            insert: conn.prepare_cached(
                "INSERT INTO samples (id, device, ts, prev, points)
                 VALUES (COALESCE((SELECT MAX(id) FROM samples),
                                  (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'samples_hw'), 0) + 1,
                         ?1, ?2, COALESCE((SELECT last FROM heads WHERE device = ?1), 0), ?3)",
            )?,
            head: conn.prepare_cached(
                "INSERT INTO heads (device, last) VALUES (?1, ?2)
                 ON CONFLICT (device) DO UPDATE SET last = excluded.last",
            )?,
        })
    }

    /// Appends one sample; returns its id.
    pub(super) fn run(&mut self, device: i64, ts: Millis, blob: &[u8]) -> rusqlite::Result<i64> {
        let id = self.insert.insert(params![device, ts, blob])?;
        self.head.execute([device, id])?;
        Ok(id)
    }
}
