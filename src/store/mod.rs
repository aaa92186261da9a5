//! The SQLite store: schema and migrations, one writer thread batching rows per transaction,
//! the last state restored at start, and telemetry retention.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use crate::config::{Config, Point};
use crate::metrics::Metrics;
use crate::model::{now_ms, Millis, Quality, Value};

pub const DB_FILE: &str = "gateway.db";

/// Schema migrations, applied in order; `PRAGMA user_version` counts how many ran.
const MIGRATIONS: &[&str] = &[
    // 1: state and history.
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
    // 2: who wrote what to which device, and how it went.
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
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot use the store at {path}: {source} (if the file is damaged, move it aside and \
         restart: the gateway starts a fresh one)"
    )]
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
}

/// One telemetry report: goes into the history and replaces the point's latest row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device: usize,
    pub point: usize,
    pub ts: Millis,
    pub value: Option<Value>,
    pub quality: Quality,
}

/// One write attempt, for the audit table.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub ts: Millis,
    pub user: String,
    /// Where the write came from: `ws`, `mqtt`, `api`.
    pub source: String,
    pub device: usize,
    pub point: usize,
    pub old: Option<Value>,
    pub new: Value,
    /// `ok` or the error.
    pub result: String,
}

#[derive(Debug)]
pub enum StoreCmd {
    /// One poll's reported changes of one device.
    Report {
        device: usize,
        ts: Millis,
        rows: Vec<Row>,
    },
    Audit(Audit),
    Status {
        device: usize,
        online: bool,
        last_seen: Option<Millis>,
        ts: Millis,
    },
    /// Answers once everything sent before it is committed.
    Flush(oneshot::Sender<()>),
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
}

/// The sending side of the writer, cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<StoreCmd>,
    /// False while the store cannot write (disk full, file gone): `/healthz` answers 503.
    pub healthy: Arc<AtomicBool>,
}

impl StoreHandle {
    pub async fn send(&self, cmd: StoreCmd) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(StoreCmd::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

fn sql_value(v: &Option<Value>) -> rusqlite::types::Value {
    use rusqlite::types::Value as S;
    match v {
        None => S::Null,
        Some(Value::Bool(b)) => S::Integer(*b as i64),
        Some(Value::Int(i)) => S::Integer(*i),
        Some(Value::UInt(u)) => i64::try_from(*u)
            .map(S::Integer)
            .unwrap_or_else(|_| S::Text(u.to_string())),
        Some(Value::Float(f)) => S::Real(*f),
        Some(Value::Text(s)) => S::Text(s.clone()),
    }
}

/// Reads a stored value back as the point's type says it was.
pub fn from_sql(point: &Point, v: rusqlite::types::Value) -> Option<Value> {
    use crate::modbus::codec::DataType as T;
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

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    // WAL: readers never block the writer; NORMAL is crash-safe for the application in WAL.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(err)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!("store schema migrated to version {}", i + 1);
    }
    Ok(())
}

/// Opens (creating or migrating) the store in `config.gateway.data_dir`, reads the last state
/// back, and starts the writer thread.
pub fn open(
    config: Arc<Config>,
    metrics: Arc<Metrics>,
) -> Result<(StoreHandle, Restored, std::thread::JoinHandle<()>), StoreError> {
    let dir = &config.gateway.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
        path: dir.clone(),
        source,
    })?;
    let path = dir.join(DB_FILE);
    let mut conn = open_connection(&path)?;
    migrate(&mut conn, &path)?;
    let restored = restore(&conn, &config).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    let (tx, rx) = mpsc::channel(1024);
    let healthy = Arc::new(AtomicBool::new(true));
    let writer = Writer {
        conn,
        config,
        metrics,
        healthy: healthy.clone(),
        last_prune: 0,
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(|source| StoreError::Dir {
            path: path.clone(),
            source,
        })?;
    Ok((StoreHandle { tx, healthy }, restored, thread))
}

fn restore(conn: &Connection, config: &Config) -> rusqlite::Result<Restored> {
    let mut out = Restored::default();
    let mut dev_q =
        conn.prepare("SELECT online, last_seen FROM device_status WHERE device_id = ?1")?;
    let mut pt_q =
        conn.prepare("SELECT value, ts FROM point_latest WHERE device_id = ?1 AND point_id = ?2")?;
    for d in &config.devices {
        let st: Option<(bool, Option<Millis>)> = dev_q
            .query_row([&d.id], |r| Ok((r.get::<_, i64>(0)? != 0, r.get(1)?)))
            .optional()?;
        out.devices
            .push(st.map(|(o, l)| (Some(o), l)).unwrap_or((None, None)));
        let mut pts = Vec::with_capacity(d.points.len());
        for p in &d.points {
            let row: Option<(rusqlite::types::Value, Millis)> = pt_q
                .query_row(params![d.id, p.id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            pts.push(row.map(|(v, ts)| (from_sql(p, v), ts)));
        }
        out.points.push(pts);
    }
    Ok(out)
}

struct Writer {
    conn: Connection,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    last_prune: Millis,
}

/// How many commands one transaction takes at most: big enough to amortise the commit, small
/// enough that a flush never waits long.
const MAX_BATCH: usize = 512;
const PRUNE_EVERY_MS: Millis = 10 * 60 * 1000;

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<StoreCmd>) {
        self.prune();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(cmd) = rx.blocking_recv() {
            batch.push(cmd);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
            if now_ms() - self.last_prune > PRUNE_EVERY_MS {
                self.prune();
            }
        }
        tracing::debug!("store writer stopped");
    }

    /// Writes a batch in one transaction, retrying a few times if the disk refuses; flushes are
    /// answered whatever happens so nobody waits forever.
    fn commit(&mut self, batch: &mut Vec<StoreCmd>) {
        let mut attempt = 0;
        loop {
            match self.write(batch) {
                Ok(rows) => {
                    self.metrics.store_rows.fetch_add(rows, Relaxed);
                    if !self.healthy.swap(true, Relaxed) {
                        tracing::info!("store writes again");
                    }
                    break;
                }
                Err(e) => {
                    self.metrics.store_errors.fetch_add(1, Relaxed);
                    if self.healthy.swap(false, Relaxed) {
                        tracing::error!("store cannot write: {e}");
                    }
                    attempt += 1;
                    if attempt >= 3 {
                        tracing::error!(
                            "dropping {} store commands after {attempt} failed attempts",
                            batch.len()
                        );
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200 * attempt));
                }
            }
        }
        for cmd in batch.drain(..) {
            if let StoreCmd::Flush(reply) = cmd {
                let _ = reply.send(());
            }
        }
    }

    fn write(&mut self, batch: &[StoreCmd]) -> rusqlite::Result<u64> {
        let tx = self.conn.transaction()?;
        let mut rows = 0;
        {
            let mut hist = tx.prepare_cached(
                "INSERT INTO telemetry (device_id, point_id, ts, value, quality) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut latest = tx.prepare_cached(
                "INSERT INTO point_latest (device_id, point_id, value, quality, ts) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device_id, point_id) DO UPDATE SET value = ?3, quality = ?4, ts = ?5",
            )?;
            let mut status = tx.prepare_cached(
                "INSERT INTO device_status (device_id, device_type, online, last_seen, changed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device_id) DO UPDATE SET device_type = ?2, online = ?3,
                    last_seen = COALESCE(?4, last_seen), changed_at = ?5",
            )?;
            let mut audit = tx.prepare_cached(
                "INSERT INTO write_audit (ts, user, source, device_id, point_id, old_value, new_value, result)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for cmd in batch {
                match cmd {
                    StoreCmd::Audit(a) => {
                        let d = &self.config.devices[a.device];
                        audit.execute(params![
                            a.ts,
                            a.user,
                            a.source,
                            d.id,
                            d.points[a.point].id,
                            sql_value(&a.old),
                            sql_value(&Some(a.new.clone())),
                            a.result
                        ])?;
                        rows += 1;
                    }
                    StoreCmd::Report { rows: list, .. } => {
                        for r in list {
                            let d = &self.config.devices[r.device];
                            let p = &d.points[r.point];
                            let v = sql_value(&r.value);
                            hist.execute(params![d.id, p.id, r.ts, v, r.quality.as_str()])?;
                            latest.execute(params![d.id, p.id, v, r.quality.as_str(), r.ts])?;
                            rows += 1;
                        }
                    }
                    StoreCmd::Status {
                        device,
                        online,
                        last_seen,
                        ts,
                    } => {
                        let d = &self.config.devices[*device];
                        status.execute(params![
                            d.id,
                            d.device_type,
                            *online as i64,
                            last_seen,
                            ts
                        ])?;
                        rows += 1;
                    }
                    StoreCmd::Flush(_) => {}
                }
            }
        }
        tx.commit()?;
        Ok(rows)
    }

    /// Drops history past its retention, then the oldest history while the file is over
    /// `max_db_mb`.
    fn prune(&mut self) {
        self.last_prune = now_ms();
        let cutoff = now_ms() - self.config.store.history_retention_days as i64 * 86_400_000;
        match self
            .conn
            .execute("DELETE FROM telemetry WHERE ts < ?1", [cutoff])
        {
            Ok(n) if n > 0 => tracing::info!("pruned {n} telemetry rows older than the retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!("pruning telemetry failed: {e}"),
        }
        let max = self.config.store.max_db_mb * 1024 * 1024;
        for _ in 0..20 {
            let size = self.size_bytes().unwrap_or(0);
            if size <= max {
                break;
            }
            // A tenth of the history at a time, oldest first; the freed pages are reused.
            let r = self.conn.execute(
                "DELETE FROM telemetry WHERE id IN (SELECT id FROM telemetry ORDER BY id
                 LIMIT MAX(1000, (SELECT COUNT(*) FROM telemetry) / 10))",
                [],
            );
            match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tracing::warn!("store over max_db_mb: dropped the oldest {n} telemetry rows")
                }
            }
            let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            if self.used_bytes().unwrap_or(0) <= max {
                break;
            }
        }
    }

    fn size_bytes(&self) -> rusqlite::Result<u64> {
        let pages: i64 = self
            .conn
            .pragma_query_value(None, "page_count", |r| r.get(0))?;
        let size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok((pages * size) as u64)
    }

    /// Bytes in use: the file size less its free pages.
    fn used_bytes(&self) -> rusqlite::Result<u64> {
        let free: i64 = self
            .conn
            .pragma_query_value(None, "freelist_count", |r| r.get(0))?;
        let size: i64 = self
            .conn
            .pragma_query_value(None, "page_size", |r| r.get(0))?;
        Ok(self.size_bytes()?.saturating_sub((free * size) as u64))
    }
}

/// A read-only connection for queries (history, CLI inspection), separate from the writer.
pub fn open_reader(data_dir: &Path) -> Result<Connection, StoreError> {
    let path = data_dir.join(DB_FILE);
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// History of one point, oldest first: `(ts, value, quality)`.
pub fn history(
    conn: &Connection,
    device: &crate::config::Device,
    point: &Point,
    since: Millis,
    until: Millis,
    limit: usize,
) -> rusqlite::Result<Vec<(Millis, Option<Value>, Quality)>> {
    let mut q = conn.prepare_cached(
        "SELECT ts, value, quality FROM telemetry WHERE device_id = ?1 AND point_id = ?2
         AND ts >= ?3 AND ts <= ?4 ORDER BY ts DESC LIMIT ?5",
    )?;
    let mut rows: Vec<_> = q
        .query_map(
            params![device.id, point.id, since, until, limit as i64],
            |r| {
                Ok((
                    r.get::<_, Millis>(0)?,
                    from_sql(point, r.get(1)?),
                    Quality::parse(&r.get::<_, String>(2)?),
                ))
            },
        )?
        .collect::<rusqlite::Result<_>>()?;
    rows.reverse();
    Ok(rows)
}
