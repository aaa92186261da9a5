//! The SQLite store: schema and migrations, one writer thread batching rows per transaction,
//! the last state restored at start, and telemetry retention.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

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
    // 3: events (the log) and alarms (their current state, ISA-18.2 style).
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
    // 4: the upstream outbox: device status changes as a log, and each sink's cursors.
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
    /// Numbered events with their alarm changes; `done` answers after the commit, so nothing
    /// is pushed that a crash could lose.
    Events {
        events: Vec<crate::events::Event>,
        done: oneshot::Sender<()>,
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
        stream: &'static str,
        last_id: i64,
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
}

/// The sending side of the writer, cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::Sender<StoreCmd>,
    /// False while the store cannot write (disk full, file gone): `/healthz` answers 503.
    pub healthy: Arc<AtomicBool>,
    /// Unsent telemetry the size cap had to drop, for the pipeline to turn into gap events.
    pub gaps: Arc<std::sync::Mutex<Vec<Gap>>>,
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
            "telemetry gap: {} unsent rows from {} to {} dropped to stay under store.max_db_mb",
            self.rows,
            crate::model::rfc3339(self.from_ts),
            crate::model::rfc3339(self.to_ts)
        )
    }
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

    /// Sends a probe every `every` until cancelled. A quiet gateway (steady values, every
    /// device offline) may write nothing for minutes, and the store learns it cannot write only
    /// by trying. A full queue is skipped: the writes in it will tell.
    pub async fn probe(self, every: Duration, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let _ = self.tx.try_send(StoreCmd::Probe);
                }
            }
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
    // Checkpoints (the only fsyncs in WAL with synchronous=NORMAL) run on their own thread and
    // connection, so no commit ever waits for one: events are pushed right after their commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
    let checkpointer = open_connection(&path)?;
    let (stop_checkpoints, stopped) = std::sync::mpsc::channel::<()>();
    let spawn_err = |source| StoreError::Dir {
        path: path.clone(),
        source,
    };
    std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || checkpoints(checkpointer, stopped))
        .map_err(spawn_err)?;
    let (tx, rx) = mpsc::channel(1024);
    let healthy = Arc::new(AtomicBool::new(true));
    let gaps = Arc::default();
    let writer = Writer {
        conn,
        config,
        metrics,
        healthy: healthy.clone(),
        gaps: Arc::clone(&gaps),
        last_prune: 0,
        last_cap: 0,
        _stop_checkpoints: stop_checkpoints,
    };
    let thread = std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(spawn_err)?;
    Ok((StoreHandle { tx, healthy, gaps }, restored, thread))
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
        let ds: Option<i64> = conn.query_row(
            "SELECT MAX(device_seq) FROM events WHERE device_id = ?1",
            [&d.id],
            |r| r.get(0),
        )?;
        out.device_seq.push(ds.unwrap_or(0) as u64);
    }
    let max_seq: Option<i64> = conn.query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))?;
    let meta_seq: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'event_seq'", [], |r| {
            r.get(0)
        })
        .optional()?;
    out.last_seq =
        (max_seq.unwrap_or(0) as u64).max(meta_seq.and_then(|s| s.parse().ok()).unwrap_or(0));
    let mut q = conn.prepare("SELECT key FROM alarms WHERE state = 'active'")?;
    out.active_alarms = q
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(out)
}

struct Writer {
    conn: Connection,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    gaps: Arc<std::sync::Mutex<Vec<Gap>>>,
    last_prune: Millis,
    last_cap: Millis,
    /// Dropped with the writer: tells the checkpoint thread to do a last one and stop.
    _stop_checkpoints: std::sync::mpsc::Sender<()>,
}

/// Copies the WAL into the database every 10 s (PASSIVE: never blocks the writer), and once
/// more, truncating the WAL, when the writer has stopped. Rarely, because each checkpoint
/// fsyncs, and on a small board's SD card that stalls every other write for a moment.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

fn checkpoints(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    use std::sync::mpsc::RecvTimeoutError;
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)") {
                    tracing::debug!("checkpoint: {e}");
                }
            }
            _ => {
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                return;
            }
        }
    }
}

/// How many commands one transaction takes at most: big enough to amortise the commit, small
/// enough that a flush never waits long.
const MAX_BATCH: usize = 512;
const PRUNE_EVERY_MS: Millis = 10 * 60 * 1000;
/// The size cap is checked this often (two header reads: cheap).
const CAP_EVERY_MS: Millis = 1000;

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
            } else if now_ms() - self.last_cap > CAP_EVERY_MS {
                self.cap();
            }
        }
        // Everything into the database file and the WAL emptied: a clean stop leaves one file
        // that is complete on its own (the checkpoint thread is not waited for at exit).
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!("final checkpoint failed: {e}");
        }
        tracing::debug!("store writer stopped");
    }

    /// Writes a batch in one transaction, retrying a few times if the disk refuses; flushes are
    /// answered whatever happens so nobody waits forever.
    fn commit(&mut self, batch: &mut Vec<StoreCmd>) {
        // Flushes, probes and acks alone carry nothing that a retry could save.
        let carries_data = batch.iter().any(|c| {
            !matches!(
                c,
                StoreCmd::Flush(_) | StoreCmd::Probe | StoreCmd::Ack { .. }
            )
        });
        let mut attempt = 0;
        loop {
            // Taking the lock is all a healthy store's empty batch does: no disk write each
            // second on a quiet box. Only a failing store's probe writes, since only a write
            // proves that writing works again (a full disk still grants the lock).
            let prove = !carries_data && !self.healthy.load(Relaxed);
            match self.write(batch, prove) {
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
                    if !carries_data {
                        break;
                    }
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
            match cmd {
                StoreCmd::Flush(reply) => {
                    let _ = reply.send(());
                }
                StoreCmd::Events { done, .. } => {
                    let _ = done.send(());
                }
                StoreCmd::Ack {
                    event_id,
                    user,
                    ts,
                    reply,
                } => {
                    // After the batch it came with, so an ack never overtakes its raise.
                    let _ = reply.send(self.ack(&event_id, &user, ts));
                }
                _ => {}
            }
        }
    }

    fn write(&mut self, batch: &[StoreCmd], prove: bool) -> rusqlite::Result<u64> {
        // Immediate: the write lock is taken even by a batch with nothing to write (a flush, a
        // probe), so a store that cannot write fails every batch. A deferred empty transaction
        // would commit and mark the store healthy while another process holds the lock.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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
                        tx.prepare_cached(
                            "INSERT INTO status_log (device_id, online, last_seen, ts) VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![d.id, *online as i64, last_seen, ts])?;
                        rows += 1;
                    }
                    StoreCmd::Cursor {
                        sink,
                        stream,
                        last_id,
                    } => {
                        tx.prepare_cached(
                            "INSERT INTO sink_cursors (sink, stream, last_id) VALUES (?1, ?2, ?3)
                             ON CONFLICT (sink, stream) DO UPDATE SET last_id = MAX(last_id, ?3)",
                        )?
                        .execute(params![sink, stream, last_id])?;
                    }
                    StoreCmd::Events { events, .. } => {
                        for e in events {
                            Self::write_event(&self.config, &tx, e)?;
                            rows += 1;
                        }
                        if let Some(last) = events.last() {
                            tx.execute(
                                "INSERT INTO meta (key, value) VALUES ('event_seq', ?1)
                                 ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), ?1)",
                                [last.seq as i64],
                            )?;
                        }
                    }
                    StoreCmd::Ack { .. } | StoreCmd::Flush(_) | StoreCmd::Probe => {}
                }
            }
        }
        if prove {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('store_probe', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = ?1",
                [now_ms()],
            )?;
        }
        tx.commit()?;
        Ok(rows)
    }

    fn write_event(
        config: &Config,
        tx: &rusqlite::Transaction<'_>,
        e: &crate::events::Event,
    ) -> rusqlite::Result<()> {
        use crate::events::{priority_rank, priority_str, AlarmOp};
        let d = &config.devices[e.device];
        let id = e.id(&config.gateway.id);
        tx.prepare_cached(
            "INSERT OR IGNORE INTO events (seq, event_id, device_id, point_id, type, priority, priority_rank,
                device_seq, value, message, state, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?
        .execute(params![
            e.seq as i64,
            id,
            d.id,
            e.point.map(|p| d.points[p].id.clone()),
            e.kind.as_str(),
            priority_str(e.priority),
            priority_rank(e.priority),
            e.device_seq as i64,
            sql_value(&e.value),
            e.message,
            e.state.as_str(),
            e.ts
        ])?;
        match &e.alarm {
            Some(AlarmOp::Raise(key)) => {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO alarms (key, event_seq, state, priority_rank, raised_at)
                     VALUES (?1, ?2, 'active', ?3, ?4)",
                )?
                .execute(params![key, e.seq as i64, priority_rank(e.priority), e.ts])?;
            }
            Some(AlarmOp::Clear(key)) => {
                tx.prepare_cached(
                    "UPDATE alarms SET state = 'cleared', cleared_at = ?2 WHERE key = ?1",
                )?
                .execute(params![key, e.ts])?;
                // Cleared and acknowledged: no longer listed.
                tx.prepare_cached("DELETE FROM alarms WHERE key = ?1 AND acked_by IS NOT NULL")?
                    .execute([key])?;
            }
            None => {}
        }
        Ok(())
    }

    fn ack(&mut self, event_id: &str, user: &str, ts: Millis) -> Result<(), AckError> {
        let run = |conn: &mut Connection| -> rusqlite::Result<bool> {
            let tx = conn.transaction()?;
            let n = tx.execute(
                "UPDATE alarms SET acked_by = ?2, acked_at = ?3
                 WHERE event_seq = (SELECT seq FROM events WHERE event_id = ?1)",
                params![event_id, user, ts],
            )?;
            if n > 0 {
                tx.execute(
                    "UPDATE events SET acked_by = ?2, acked_at = ?3 WHERE event_id = ?1",
                    params![event_id, user, ts],
                )?;
                tx.execute(
                    "DELETE FROM alarms WHERE state = 'cleared' AND acked_by IS NOT NULL",
                    [],
                )?;
            }
            tx.commit()?;
            Ok(n > 0)
        };
        match run(&mut self.conn) {
            Ok(true) => Ok(()),
            Ok(false) => Err(AckError::NotFound(event_id.to_string())),
            Err(e) => Err(AckError::Store(e.to_string())),
        }
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
        self.cap();
    }

    /// Keeps the store under `max_db_mb`: first the oldest telemetry history that every
    /// upstream sink has confirmed (or all of it, with no sink), then, only if that is not
    /// enough, the oldest unsent telemetry, recorded as gaps. Events are never dropped.
    fn cap(&mut self) {
        self.last_cap = now_ms();
        let max = self.config.store.max_db_mb * 1024 * 1024;
        if self.used_bytes().unwrap_or(0) <= max {
            return;
        }
        let sent = self.confirmed_telemetry().unwrap_or(0);
        for unsent in [false, true] {
            for _ in 0..50 {
                match self.drop_oldest(sent, unsent) {
                    Ok(0) => break,
                    Ok(n) if unsent => {
                        tracing::error!("store over max_db_mb: dropped the oldest {n} telemetry rows not yet sent upstream")
                    }
                    Ok(n) => tracing::warn!("store over max_db_mb: dropped the oldest {n} telemetry rows (already upstream)"),
                    Err(e) => {
                        tracing::warn!("keeping the store under max_db_mb failed: {e}");
                        return;
                    }
                }
                if self.used_bytes().unwrap_or(0) <= max {
                    let _ = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
                    return;
                }
            }
        }
    }

    /// Telemetry rows up to this id are confirmed by every configured sink.
    fn confirmed_telemetry(&self) -> rusqlite::Result<i64> {
        let mut min = i64::MAX;
        for s in crate::sinks::configured(&self.config) {
            min = min.min(cursor(&self.conn, s, "telemetry")?);
        }
        Ok(min)
    }

    /// Drops a tenth of the telemetry rows of one kind (confirmed upstream, or not), oldest
    /// first; unsent ones are recorded per device as gaps. Returns how many went.
    fn drop_oldest(&mut self, sent: i64, unsent: bool) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction()?;
        let total: i64 = tx.query_row("SELECT COUNT(*) FROM telemetry", [], |r| r.get(0))?;
        let chunk = (total / 10).max(1000);
        let (lo, hi) = if unsent { (sent, i64::MAX) } else { (0, sent) };
        tx.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS doomed (id INTEGER PRIMARY KEY); DELETE FROM doomed;",
        )?;
        tx.execute(
            "INSERT INTO doomed SELECT id FROM telemetry WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
            params![lo, hi, chunk],
        )?;
        let mut gaps = Vec::new();
        if unsent {
            let mut q = tx.prepare(
                "SELECT device_id, COUNT(*), MIN(ts), MAX(ts) FROM telemetry
                 WHERE id IN (SELECT id FROM doomed) GROUP BY device_id ORDER BY device_id",
            )?;
            gaps = q
                .query_map([], |r| {
                    Ok(Gap {
                        device_id: r.get(0)?,
                        rows: r.get(1)?,
                        from_ts: r.get(2)?,
                        to_ts: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
        let n = tx.execute(
            "DELETE FROM telemetry WHERE id IN (SELECT id FROM doomed)",
            [],
        )?;
        tx.execute_batch("DELETE FROM doomed;")?;
        tx.commit()?;
        for g in &gaps {
            tracing::error!(device = %g.device_id, "{}", g.message());
        }
        self.gaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(gaps);
        Ok(n)
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

/// An event read back from the store, as the SPEC JSON.
fn event_row_json(config: &Config, r: &rusqlite::Row<'_>) -> rusqlite::Result<serde_json::Value> {
    let device_id: String = r.get("device_id")?;
    let point_id: Option<String> = r.get("point_id")?;
    let value = match (config.devices.iter().find(|d| d.id == device_id), &point_id) {
        (Some(d), Some(p)) => match d.points.iter().find(|x| &x.id == p) {
            Some(point) => from_sql(point, r.get("value")?).map(|v| v.to_json()),
            None => None,
        },
        _ => None,
    };
    let acked_at: Option<Millis> = r.get("acked_at")?;
    Ok(serde_json::json!({
        "id": r.get::<_, String>("event_id")?,
        "deviceId": device_id,
        "pointId": point_id,
        "type": r.get::<_, String>("type")?,
        "priority": r.get::<_, String>("priority")?,
        "deviceSeq": r.get::<_, i64>("device_seq")?,
        "value": value,
        "message": r.get::<_, String>("message")?,
        "ts": crate::model::rfc3339(r.get("ts")?),
        "state": r.get::<_, String>("state")?,
        "ackedBy": r.get::<_, Option<String>>("acked_by")?,
        "ackedAt": acked_at.map(crate::model::rfc3339),
    }))
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

/// Alarms still listed (active, or cleared but not acknowledged): highest priority first, then
/// newest first. Each is its raising event with the alarm's current `state` and ack.
pub fn active_alarms(
    conn: &Connection,
    config: &Config,
) -> rusqlite::Result<Vec<serde_json::Value>> {
    let mut q = conn.prepare_cached(
        "SELECT e.seq, e.event_id, e.device_id, e.point_id, e.type, e.priority, e.device_seq, e.value,
                e.message, e.ts, a.state AS state, a.acked_by AS acked_by, a.acked_at AS acked_at
         FROM alarms a JOIN events e ON e.seq = a.event_seq
         ORDER BY a.priority_rank DESC, a.raised_at DESC",
    )?;
    let rows = q.query_map([], |r| event_row_json(config, r))?;
    rows.collect()
}

/// One outbox row for an upstream sink: its id in its stream and the column values.
pub type OutboxRow = (i64, Vec<rusqlite::types::Value>);

/// The outbox streams a sink forwards, with the query that reads a batch after a cursor.
pub const STREAMS: [(&str, &str); 3] = [
    (
        "events",
        "SELECT seq, event_id, device_id, point_id, type, priority, device_seq, value, message, state, ts
         FROM events WHERE seq > ?1 AND seq <= ?3 ORDER BY seq LIMIT ?2",
    ),
    (
        "status",
        "SELECT s.id, s.device_id, COALESCE(d.device_type, ''), s.online, s.last_seen, s.ts
         FROM status_log s LEFT JOIN device_status d ON d.device_id = s.device_id
         WHERE s.id > ?1 AND s.id <= ?3 ORDER BY s.id LIMIT ?2",
    ),
    (
        "telemetry",
        "SELECT id, device_id, point_id, ts, value, quality FROM telemetry WHERE id > ?1 AND id <= ?3 ORDER BY id LIMIT ?2",
    ),
];

/// A sink's cursor in a stream (0: nothing sent yet).
pub fn cursor(conn: &Connection, sink: &str, stream: &str) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT last_id FROM sink_cursors WHERE sink = ?1 AND stream = ?2",
        [sink, stream],
        |r| r.get(0),
    )
    .optional()
    .map(|v| v.unwrap_or(0))
}

/// Up to `limit` rows of a stream after `after`, up to and including `upto`.
pub fn outbox(
    conn: &Connection,
    query: &str,
    after: i64,
    upto: i64,
    limit: usize,
) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut q = conn.prepare_cached(query)?;
    let n = q.column_count();
    let rows = q.query_map(params![after, limit as i64, upto], |r| {
        let id: i64 = r.get(0)?;
        let cols = (1..n)
            .map(|i| r.get::<_, rusqlite::types::Value>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((id, cols))
    })?;
    rows.collect()
}

/// The highest id of an outbox table (0 when empty).
pub fn newest_id(conn: &Connection, stream: &str) -> rusqlite::Result<i64> {
    let (table, id) = stream_table(stream);
    conn.query_row(
        &format!("SELECT COALESCE(MAX({id}), 0) FROM {table}"),
        [],
        |r| r.get(0),
    )
}

/// The table and id column behind an outbox stream.
fn stream_table(stream: &str) -> (&'static str, &'static str) {
    match stream {
        "events" => ("events", "seq"),
        "status" => ("status_log", "id"),
        _ => ("telemetry", "id"),
    }
}

/// Rows of all streams not yet confirmed by a sink: the highest id of each stream less the
/// sink's cursor. Ids only grow (AUTOINCREMENT, event seq), so this is exact but for rows pruned
/// past the cursor, and costs one index lookup per stream instead of counting a backlog that
/// may be a million rows long on every batch. `sent` holds cursors the sink has handed to the
/// writer that may not be committed yet (in [`STREAMS`] order, or empty): whichever cursor is
/// further counts.
pub fn backlog(conn: &Connection, sink: &str, sent: &[i64]) -> rusqlite::Result<i64> {
    let mut total = 0;
    for (i, (stream, _)) in STREAMS.iter().enumerate() {
        let cursor = cursor(conn, sink, stream)?.max(sent.get(i).copied().unwrap_or(0));
        total += (newest_id(conn, stream)? - cursor).max(0);
    }
    Ok(total)
}
