//! The SQLite store: one writer thread with group commits, history and outbox as one compact
//! row per device sample, the last state restored at start, retention, the size cap, and a WAL
//! kept bounded.
//!
//! - `schema`: tables, migrations, connection settings.
//! - `packed`: a sample's points as bytes; the integer keys of device and point ids.
//! - `writer`: the writer thread; retention and the size cap (`writer::cap`).
//! - `query`: restore, history, events and alarms, on reader connections.
//! - `readers`: the read connections lent to queries.
//! - `checkpoint`: the thread that keeps the WAL bounded.
//! - `file`: which file the database (and its WAL) is, to notice it removed or replaced.
//! - `seq`: event numbers reserved ahead, so a lost store never reuses an id.
//! - `outbox`: the streams the upstream sinks forward, as typed rows, and their cursors.

mod checkpoint;
mod file;
pub mod notify;
pub mod outbox;
mod packed;
mod query;
mod readers;
mod schema;
pub mod seq;
pub mod tail;
mod writer;

use file::FileId;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Point};
use crate::metrics::Metrics;
use crate::model::{Millis, Quality, Report, Value};

pub use outbox::{OutboxRow, Stream};
pub use query::{
    active_alarms, alarm_counts, audit_page, event_seq, history, history_buckets, query_events,
    values_before, Bucket, EventFilter,
};
pub use readers::{open_reader, Lane, Readers};
pub use writer::GROUP_COMMIT;

pub const DB_FILE: &str = "gateway.db";

/// Commands someone waits for (events, status, audits, acknowledgements) queued for the writer;
/// past it the sender waits (backpressure, nothing dropped).
const URGENT_CAPACITY: usize = 1024;
/// Telemetry reports for the next group commit: a 200 ms group holds up to 20,000 device
/// samples a second before the pipeline waits.
const LAZY_CAPACITY: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot use the store at {path}: {source}{}", advice(.source))]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("store at {path} has schema version {found}, newer than this build knows ({known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    #[error("store query failed: {0}")]
    Query(#[from] rusqlite::Error),
    #[error("the store is stopping")]
    Closed,
    #[error(
        "the database file {path} was removed or replaced while the gateway runs: what it \
         writes now is lost at the next start; put the file back or restart to begin a fresh one"
    )]
    Gone { path: PathBuf },
}

/// What to do about an error opening the store, by its real cause: moving the file aside is
/// advice only for a damaged file (followed for a permission problem, it would lose the
/// history and restart event numbering for nothing).
fn advice(e: &rusqlite::Error) -> &'static str {
    use rusqlite::ErrorCode as C;
    let Some(code) = e.sqlite_error_code() else {
        return "";
    };
    match code {
        C::DatabaseCorrupt | C::NotADatabase => {
            " (the file is damaged: move it aside and restart, and the gateway starts a fresh one)"
        }
        C::ReadOnly => {
            " (the file or its filesystem is read-only: check the mount and the file's \
             permissions; do not move the file)"
        }
        C::PermissionDenied | C::CannotOpen => {
            " (the data directory or the file cannot be opened by this user: check ownership \
             and permissions; do not move the file)"
        }
        C::DiskFull => " (the disk is full: free space; nothing needs to be moved)",
        C::DatabaseBusy | C::DatabaseLocked => {
            " (another process holds the database: stop it; do not move the file)"
        }
        _ => "",
    }
}

/// One write attempt or config apply, for the audit table.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub ts: Millis,
    pub user: String,
    /// Where the write came from: `ws`, `mqtt`, `api`.
    pub source: String,
    /// A point's device and point ids; for a config apply the gateway's id and `config`.
    pub device_id: String,
    pub point_id: String,
    pub old: Option<Value>,
    pub new: Value,
    /// `ok` or the error.
    pub result: String,
}

/// The point id of a config apply's audit row.
pub const AUDIT_CONFIG: &str = "config";
/// The audit row's `point_id` of a shelving or its end.
pub const AUDIT_SHELVE: &str = "shelve";

#[derive(Debug)]
pub enum StoreCmd {
    /// One poll's reported changes of one device.
    Report(Report),
    Audit(Audit),
    Status {
        device: usize,
        online: bool,
        last_seen: Option<Millis>,
        ts: Millis,
    },
    /// Numbered events with their alarm changes; `done` answers after the commit, so nothing
    /// is pushed that a crash could lose.
    Events {
        events: Vec<crate::model::event::Event>,
        /// Whether they were committed: only then may they be pushed.
        done: oneshot::Sender<bool>,
    },
    /// Acknowledge the alarm raised by an event.
    Ack {
        event_id: String,
        user: String,
        ts: Millis,
        reply: oneshot::Sender<Result<(), AckError>>,
    },
    /// A sink's upstream confirmed everything up to `last_id` of `stream`.
    Cursor {
        sink: &'static str,
        stream: Stream,
        last_id: i64,
    },
    /// `push.setInterval`: the period set, and the config's `push.interval_ms` it was set over
    /// (a config that changes it wins).
    PushInterval {
        ms: i64,
        config_ms: i64,
    },
    /// A notifier's attempt recorded; `done` answers after the commit, so the next look at the
    /// queue does not find what was just sent.
    Notified {
        update: notify::Update,
        done: oneshot::Sender<bool>,
    },
    /// Answers once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
    /// Nothing to write: makes the writer take the write lock, so a store that cannot write is
    /// known (and `/healthz` says so) while nothing else is being written; while it cannot, a
    /// probe writes one row, to learn when it can again.
    Probe,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AckError {
    #[error("no alarm for event `{0}`")]
    NotFound(String),
    #[error("store error: {0}")]
    Store(String),
}

/// A point's last stored value (`None` when the last report had none) and its time.
pub type LastValue = (Option<Value>, Millis);

/// The state a restart begins with.
#[derive(Debug, Default, Clone)]
pub struct Restored {
    /// Per device (config order): last known online flag and last-seen time.
    pub devices: Vec<(Option<bool>, Option<Millis>)>,
    /// Per device, per point: last value, its time.
    pub points: Vec<Vec<Option<LastValue>>>,
    /// The highest event `seq` ever committed (0 for none).
    pub last_seq: u64,
    /// Per device (config order): the highest committed `deviceSeq`.
    pub device_seq: Vec<u64>,
    /// Keys of alarms still active.
    pub active_alarms: std::collections::HashSet<String>,
    /// The snapshot period an admin set (`push.setInterval`), while the config's
    /// `push.interval_ms` is still the one it was set over.
    pub push_interval: Option<std::time::Duration>,
}

/// The sending side of the writer, cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    /// What someone waits for: committed at once.
    tx: mpsc::Sender<StoreCmd>,
    /// What may wait for the group commit (see [`writer::may_wait`]).
    lazy: mpsc::Sender<StoreCmd>,
    /// False while the store cannot write (disk full, file gone): `/healthz` answers 503.
    pub healthy: Arc<AtomicBool>,
    /// True once the database file or its WAL was removed or replaced under the gateway: what
    /// is committed now is lost at the next start, so the sinks hold (see [`writer`]).
    pub gone: Arc<AtomicBool>,
    /// Unsent telemetry the size cap had to drop, for the pipeline to turn into gap events.
    pub gaps: Arc<std::sync::Mutex<Vec<Gap>>>,
    /// Read connections for queries, opened at start.
    pub readers: Arc<Readers>,
    /// Telemetry just committed, for the sinks that keep up.
    pub tail: Arc<tail::Tail>,
}

/// Telemetry of one device that no upstream had confirmed, dropped to keep the store under
/// `max_db_mb`: exactly what was lost.
#[derive(Debug, Clone, PartialEq)]
pub struct Gap {
    pub device_id: String,
    pub rows: i64,
    pub from_ts: Millis,
    pub to_ts: Millis,
}

impl Gap {
    pub fn message(&self) -> String {
        format!(
            "telemetry gap: {} unsent device samples from {} to {} dropped to stay under store.max_db_mb",
            self.rows,
            crate::model::rfc3339(self.from_ts),
            crate::model::rfc3339(self.to_ts)
        )
    }
}

impl StoreHandle {
    pub async fn send(&self, cmd: StoreCmd) -> bool {
        let tx = if writer::may_wait(&cmd) {
            &self.lazy
        } else {
            &self.tx
        };
        tx.send(cmd).await.is_ok()
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(StoreCmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Sends a probe every `every` until cancelled. A quiet gateway (steady values, every
    /// device offline) may write nothing for minutes, and the store learns it cannot write only
    /// by trying. A full queue is skipped: the writes in it will tell.
    pub async fn probe(self, every: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let _ = self.lazy.try_send(StoreCmd::Probe);
                }
            }
        }
    }
}

pub(crate) fn sql_value(v: &Option<Value>) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        None => S::Null,
        Some(Value::Bool(b)) => S::Integer(i64::from(*b)),
        Some(Value::Int(i)) => S::Integer(*i),
        Some(Value::UInt(u)) => {
            i64::try_from(*u).map_or_else(|_| S::Text(u.to_string()), S::Integer)
        }
        Some(Value::Float(f)) => S::Real(*f),
        Some(Value::Text(s)) => S::Text(s.clone()),
    }
}

/// Reads a stored value back as the point's type says it was.
pub fn from_sql(point: &Point, v: rusqlite::types::Value) -> Option<Value> {
    use crate::model::format::DataType as T;
    use rusqlite::types::Value as S;
    Some(match (v, point.format.data_type) {
        (S::Null, _) => return None,
        (S::Integer(i), T::Bool) => Value::Bool(i != 0),
        (S::Integer(i), T::U64) if i >= 0 => Value::UInt(i as u64),
        (S::Text(s), T::U64) => Value::UInt(s.parse().ok()?),
        (S::Integer(i), _) => Value::Int(i),
        (S::Real(f), _) => Value::Float(f),
        (S::Text(s), _) => Value::Text(s),
        (S::Blob(_), _) => return None,
    })
}

/// A stored event value, typed by its point when the config still has it.
pub(crate) fn event_value(
    config: &Config,
    device: &str,
    point: Option<&str>,
    v: rusqlite::types::Value,
) -> Option<Value> {
    from_sql(find_point(config, device, point?)?, v)
}

/// A point of the config by its device and point ids.
pub(crate) fn find_point<'a>(config: &'a Config, device: &str, point: &str) -> Option<&'a Point> {
    config
        .devices
        .iter()
        .find(|d| d.id == device)?
        .points
        .iter()
        .find(|p| p.id == point)
}

/// The integer keys of the configured devices and points (config order), as `samples` and
/// `latest` store them.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    pub devices: Vec<i64>,
    pub points: Vec<Vec<i64>>,
}

impl Keys {
    fn resolve(conn: &Connection, config: &Config) -> rusqlite::Result<Keys> {
        let tx = conn.unchecked_transaction()?;
        let mut keys = Keys::default();
        for d in &config.devices {
            keys.devices.push(packed::key(&tx, &d.id, "")?);
            keys.points.push(
                d.points
                    .iter()
                    .map(|p| packed::key(&tx, &d.id, &p.id))
                    .collect::<rusqlite::Result<_>>()?,
            );
        }
        tx.commit()?;
        Ok(keys)
    }
}

/// The WAL's size past which it is checkpointed and restarted at once (and what
/// `journal_size_limit` trims it back to): an eighth of the cap, between 1 and 8 MiB, so the
/// WAL never holds a large share of `max_db_mb` and stays far under the 32 MiB it may reach.
fn wal_limit(config: &Config) -> u64 {
    (config.store.max_db_mb * 1024 * 1024 / 8).clamp(1 << 20, 8 << 20)
}

/// Counts what each commit appends to the WAL (a frame is a page and its 24-byte header), and
/// the same pages again for the checkpoint that copies them into the database: the store's own
/// count of bytes written, for kernels without per-process I/O accounting.
fn count_writes(conn: &mut Connection, metrics: Arc<Metrics>) -> rusqlite::Result<()> {
    let page = u64::from(conn.pragma_query_value(None, "page_size", |r| r.get::<_, u32>(0))?);
    let mut frames_before = 0u64;
    conn.wal_hook(Some(
        move |_: &mut rusqlite::hooks::Wal, frames: std::ffi::c_int| {
            let frames = frames.max(0) as u64;
            // Fewer frames than after the last commit: a checkpoint restarted the WAL from its start.
            let added = frames.checked_sub(frames_before).unwrap_or(frames);
            frames_before = frames;
            metrics
                .store_written
                .fetch_add(added * (2 * page + 24), Relaxed);
            Ok(())
        },
    ))
}

/// Opens (creating or migrating) the store in `config.gateway.data_dir`, reads the last state
/// back, and starts the writer and checkpoint threads. `sinks` names the upstream sinks whose
/// cursors tell which telemetry the size cap may drop first.
pub fn open(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    sinks: Vec<&'static str>,
) -> Result<(StoreHandle, Restored, std::thread::JoinHandle<()>), StoreError> {
    let dir = &config.gateway.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(DB_FILE);
    let err = |source| StoreError::Open {
        path: path.clone(),
        source,
    };
    let mut conn = schema::open_connection(&path)?;
    schema::migrate(&mut conn, &path, &config)?;
    notify::forget_unconfigured(&conn, &config).map_err(err)?;
    let keys = Keys::resolve(&conn, &config).map_err(err)?;
    let restored = query::restore(&conn, &config, &keys).map_err(err)?;
    let limit = wal_limit(&config);
    conn.pragma_update(None, "journal_size_limit", limit as i64)
        .map_err(err)?;
    // Checkpoints (the only fsyncs in WAL with synchronous=NORMAL) run on their own thread and
    // connection; PASSIVE copies without holding commits, and only the short RESTART after it
    // (every 10 s, or when the WAL is past its limit) makes a commit wait.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(err)?;
    // After the pragma above, which sets a WAL hook of its own.
    count_writes(&mut conn, Arc::clone(&metrics)).map_err(err)?;
    let wal = wal_path(dir);
    let checkpoints = checkpoint::start(&path, &wal, limit)?;
    let spawn_err = |source| StoreError::Dir {
        path: path.clone(),
        source,
    };
    let readers = Readers::open(dir)?;
    let (tx, rx) = mpsc::channel(URGENT_CAPACITY);
    let (lazy, lazy_rx) = mpsc::channel(LAZY_CAPACITY);
    let healthy = Arc::new(AtomicBool::new(true));
    let gone = Arc::new(AtomicBool::new(false));
    let gaps = Arc::default();
    let dirty = writer::Latest::new(&keys);
    let newest = outbox::newest(&conn, Stream::Telemetry).map_err(err)?;
    let tail = Arc::new(tail::Tail::new(&config, newest));
    let writer = writer::Writer {
        conn,
        config,
        metrics,
        healthy: healthy.clone(),
        gaps: Arc::clone(&gaps),
        keys,
        sinks,
        wal_limit: limit,
        dirty,
        last_latest: Instant::now(),
        last_prune: Instant::now(),
        last_cap: Instant::now(),
        checkpoints: Some(checkpoints),
        file: FileId::of(&path).map_err(|source| StoreError::Dir {
            path: path.clone(),
            source,
        })?,
        wal: FileId::of(&wal).ok(),
        gone: gone.clone(),
        tail: Arc::clone(&tail),
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx, lazy_rx))
        .map_err(spawn_err)?;
    Ok((
        StoreHandle {
            tx,
            lazy,
            healthy,
            gone,
            gaps,
            readers: Arc::new(readers),
            tail,
        },
        restored,
        thread,
    ))
}

fn wal_path(data_dir: &Path) -> PathBuf {
    data_dir.join(format!("{DB_FILE}-wal"))
}

/// The database and WAL files' sizes in bytes (0 for a file that is not there).
pub fn file_sizes(data_dir: &Path) -> (u64, u64) {
    let len = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    (len(data_dir.join(DB_FILE)), len(wal_path(data_dir)))
}

/// Appends one device sample as the writer would, resolving the ids to keys: for tools and
/// tests that fill a store without a gateway. Returns the sample's outbox id.
pub fn append_sample(
    conn: &Connection,
    device: &str,
    ts: Millis,
    points: &[(&str, Option<Value>, Quality)],
) -> rusqlite::Result<i64> {
    let dev = packed::key(conn, device, "")?;
    let keys = points
        .iter()
        .map(|(p, _, _)| packed::key(conn, device, p))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let blob = packed::encode(
        keys.iter()
            .zip(points)
            .map(|(k, (_, v, q))| (*k, v.as_ref(), *q)),
    );
    outbox::SampleInsert::prepare(conn)?.run(dev, ts, &blob)
}

/// How many point values the samples in an id range hold (what the MySQL sink turns into
/// rows): for tests and tools that compare the store with an upstream.
pub fn count_values(conn: &Connection, after: i64, upto: i64) -> rusqlite::Result<i64> {
    let mut q = conn.prepare("SELECT points FROM samples WHERE id > ?1 AND id <= ?2")?;
    let mut rows = q.query([after, upto])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        n += packed::decode(r.get_ref(0)?.as_blob()?).map_or(0, |e| e.len()) as i64;
    }
    Ok(n)
}

/// Every point value the samples in an id range hold, as (device, point, ts), for tests that
/// check an upstream holds each one.
pub fn sample_values(
    conn: &Connection,
    after: i64,
    upto: i64,
) -> rusqlite::Result<Vec<(String, String, Millis)>> {
    let mut names = packed::Names::default();
    let raw: Vec<(i64, Millis, Vec<u8>)> = conn
        .prepare("SELECT device, ts, points FROM samples WHERE id > ?1 AND id <= ?2 ORDER BY id")?
        .query_map([after, upto], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::new();
    for (dev, ts, blob) in raw {
        let entries = packed::decode(&blob).unwrap_or_default();
        names.cover(
            conn,
            std::iter::once(dev).chain(entries.iter().map(|e| e.0)),
        )?;
        if names.get(dev).is_none() {
            continue;
        }
        for (key, _, _) in entries {
            if let Some((t, p)) = names.get(key) {
                out.push((t.device.clone(), t.points[*p as usize].clone(), ts));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    /// Moving the file aside is advice for a damaged file only: followed for a read-only
    /// filesystem or a permission problem, it loses the history and restarts event numbering.
    #[test]
    fn the_advice_names_the_real_cause() {
        use rusqlite::ffi;
        let damaged = advice(&failure(ffi::SQLITE_CORRUPT));
        assert!(damaged.contains("move it aside"), "{damaged}");
        for code in [
            ffi::SQLITE_READONLY,
            ffi::SQLITE_PERM,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_FULL,
        ] {
            let a = advice(&failure(code));
            assert!(!a.is_empty() && !a.contains("move it aside"), "{code}: {a}");
        }
        assert!(advice(&failure(ffi::SQLITE_READONLY)).contains("read-only"));
    }
}
