//! The one writer thread: group commits (telemetry waits up to [`GROUP_COMMIT`], anything else
//! commits at once), the latest values saved now and then, acknowledgements; retention and the
//! size cap are `cap`'s.

mod cap;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, Transaction};
use tokio::sync::mpsc;

use super::outbox::SampleInsert;
use super::{packed, sql_value, AckError, Audit, Gap, Keys, StoreCmd};
use crate::config::{Config, Device};
use crate::metrics::Metrics;
use crate::model::{now_ms, Millis, Quality, Report, Value};

/// How long telemetry may wait for company before it is committed. Each commit appends every
/// page it touched to the WAL, and the newest pages are touched by every commit, so fewer
/// commits is what makes a sample cheap on an SD card. A power cut loses at most this window
/// of telemetry (a process crash loses nothing committed); events, status changes, audits and
/// flushes commit at once, taking waiting telemetry with them.
pub const GROUP_COMMIT: Duration = Duration::from_millis(200);
/// How many urgent commands one transaction takes at most (telemetry waiting for the group
/// commit is bounded by its channel's capacity).
const MAX_BATCH: usize = 2048;
/// How often the latest value of each point is saved (and at a clean stop). A crash in between
/// loses nothing: the samples written since are replayed at start.
const LATEST_EVERY: Duration = Duration::from_secs(30);
const PRUNE_EVERY: Duration = Duration::from_secs(10 * 60);
/// The size cap is checked this often (two header reads and a stat: cheap).
const CAP_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub conn: Connection,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub healthy: Arc<AtomicBool>,
    pub gaps: Arc<Mutex<Vec<Gap>>>,
    pub keys: Keys,
    /// The sinks whose cursors say which telemetry is upstream.
    pub sinks: Vec<&'static str>,
    /// The WAL's size past which it is checkpointed at once: the cap's reserve for it.
    pub wal_limit: u64,
    /// The latest value of every point reported since the last save, by device and point
    /// (config order): value, quality, ts.
    pub dirty: Latest,
    pub last_latest: Instant,
    pub last_prune: Instant,
    pub last_cap: Instant,
    /// The checkpoint thread and its stop: dropped and joined when the writer stops, so no
    /// checkpoint of this store runs once `Gateway::shutdown` has joined the writer (one ran
    /// after, and a reload's next store found the database locked).
    pub checkpoints: Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// The database file as opened: checked on each probe, since a file removed or replaced
    /// under a running gateway takes everything written after it away at the next start.
    pub file: super::FileId,
    /// Its write-ahead log, checked likewise: deleting `gateway.db-wal` alone loses every
    /// commit since the last checkpoint at the next start, and went unnoticed. `None` until
    /// SQLite has made it.
    pub wal: Option<super::FileId>,
    /// Set once the file or its log was found removed or replaced: unhealthy until a restart,
    /// and the sinks send nothing more (what they would send, the next start no longer has).
    pub gone: Arc<AtomicBool>,
    /// What was just committed, for the sinks.
    pub tail: Arc<super::tail::Tail>,
}

/// One device sample appended to the history and the outbox, its points' latest values noted
/// in `dirty`; returns its id.
fn write_report(
    inserts: &mut SampleInsert<'_>,
    keys: &Keys,
    dirty: &mut Latest,
    report: &Report,
) -> rusqlite::Result<i64> {
    let Report {
        device,
        ts,
        rows: list,
    } = report;
    let point_keys = &keys.points[*device];
    let blob = packed::encode(
        list.iter()
            .map(|r| (point_keys[r.point], r.value.as_ref(), r.quality)),
    );
    let id = inserts.run(keys.devices[*device], *ts, &blob)?;
    let latest = &mut dirty.points[*device];
    for r in list {
        latest[r.point] = Some((r.value.clone(), r.quality, r.ts));
    }
    dirty.any |= !list.is_empty();
    Ok(id)
}

/// A point's latest report: value, quality, time.
type LatestValue = (Option<Value>, Quality, Millis);

/// Latest values by device and point, with a flag saying whether any is set.
#[derive(Default)]
pub(super) struct Latest {
    pub points: Vec<Vec<Option<LatestValue>>>,
    pub any: bool,
}

impl Latest {
    pub fn new(keys: &super::Keys) -> Latest {
        Latest {
            points: keys.points.iter().map(|p| vec![None; p.len()]).collect(),
            any: false,
        }
    }

    fn clear(&mut self) {
        for d in &mut self.points {
            d.fill(None);
        }
        self.any = false;
    }
}

/// Whether a command may wait for the group commit: telemetry, cursors, probes. Everything
/// else has someone waiting (an event to push, a flush, an ack) or is rare.
pub(super) fn may_wait(cmd: &StoreCmd) -> bool {
    matches!(
        cmd,
        StoreCmd::Report(_) | StoreCmd::Cursor { .. } | StoreCmd::Probe
    )
}

impl Writer {
    /// `urgent` carries what someone waits for (events, flushes, acks, audits, status);
    /// `lazy` what may wait for the group commit (telemetry, cursors, probes). The writer does
    /// not listen to `lazy` while a group is open: 500 reports a second each waking the thread
    /// only to be put aside cost a context switch apiece. At the deadline, or with anything
    /// urgent, it takes all of `lazy` that is queued.
    pub fn run(mut self, mut urgent: mpsc::Receiver<StoreCmd>, mut lazy: mpsc::Receiver<StoreCmd>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("store writer cannot start its timer: {e}");
                return;
            }
        };
        enum Woke {
            Urgent(Option<StoreCmd>),
            Lazy(Option<StoreCmd>),
            Due,
        }
        self.prune();
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let woke = rt.block_on(async {
                let due = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    c = urgent.recv() => Woke::Urgent(c),
                    c = lazy.recv(), if deadline.is_none() => Woke::Lazy(c),
                    () = due => Woke::Due,
                }
            });
            let open = match woke {
                Woke::Lazy(Some(c)) => {
                    batch.push(c);
                    deadline = Some(tokio::time::Instant::now() + GROUP_COMMIT);
                    continue;
                }
                Woke::Urgent(Some(c)) => {
                    batch.push(c);
                    while batch.len() < MAX_BATCH {
                        match urgent.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    true
                }
                Woke::Due => true,
                // Every handle is gone (both channels close together): the last commit.
                Woke::Urgent(None) | Woke::Lazy(None) => false,
            };
            // Everything sent before an urgent command (a flush) is in `lazy` by now, and all of
            // it goes into this commit, so the flush's answer covers it (`lazy` holds at most
            // its capacity).
            while let Ok(c) = lazy.try_recv() {
                batch.push(c);
            }
            deadline = None;
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if !open && lazy.is_empty() && urgent.is_empty() {
                break;
            }
            if self.last_prune.elapsed() > PRUNE_EVERY {
                self.prune();
            } else if self.last_cap.elapsed() > CAP_EVERY {
                self.cap();
            }
        }
        if let Some((stop, thread)) = self.checkpoints.take() {
            drop(stop);
            let _ = thread.join();
        }
        self.save_latest_now();
        // Everything into the database file and the WAL emptied: a clean stop leaves one file
        // that is complete on its own.
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
        if !self.gone.load(Relaxed) && batch.iter().any(|c| matches!(c, StoreCmd::Probe)) {
            let wal = if let Some(w) = &self.wal {
                w.check()
            } else {
                self.wal = super::FileId::of(&self.file.wal_path()).ok();
                Ok(())
            };
            if let Err(e) = self.file.check().and(wal) {
                self.gone.store(true, Relaxed);
                self.healthy.store(false, Relaxed);
                tracing::error!("{e}; nothing more is sent upstream until a restart");
            }
        }
        let mut attempt = 0;
        let mut committed = false;
        loop {
            // Taking the lock is all a healthy store's empty batch does: no disk write each
            // second on a quiet box. Only a failing store's probe writes, since only a write
            // proves that writing works again (a full disk still grants the lock).
            let prove = !carries_data && !self.healthy.load(Relaxed);
            match self.write(batch, prove) {
                Ok(rows) => {
                    committed = true;
                    self.metrics.store_rows.fetch_add(rows, Relaxed);
                    if !self.gone.load(Relaxed) && !self.healthy.swap(true, Relaxed) {
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
                StoreCmd::Events { done, .. } | StoreCmd::Notified { done, .. } => {
                    let _ = done.send(committed);
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
        // The samples written, for the sinks' tail once committed; and whether events or status
        // changes were.
        let (mut samples, mut others) = (Vec::new(), false);
        let mut inserts = SampleInsert::prepare(&tx)?;
        for cmd in batch {
            match cmd {
                StoreCmd::Audit(a) => {
                    write_audit(&tx, a)?;
                    rows += 1;
                }
                StoreCmd::Report(report) => {
                    samples.push((
                        write_report(&mut inserts, &self.keys, &mut self.dirty, report)?,
                        report,
                    ));
                    rows += report.rows.len() as u64;
                }
                StoreCmd::Status {
                    device,
                    online,
                    last_seen,
                    ts,
                } => {
                    let d = &self.config.devices[*device];
                    write_status(&tx, d, *online, *last_seen, *ts)?;
                    rows += 1;
                    others = true;
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
                    .execute(params![sink, stream.name(), last_id])?;
                }
                StoreCmd::Events { events, .. } => {
                    rows += write_events(&self.config, &tx, events)?;
                    others = true;
                }
                StoreCmd::Notified { update, .. } => super::notify::apply(&tx, update)?,
                StoreCmd::PushInterval { ms, config_ms } => {
                    set_meta(&tx, "push_interval_ms", *ms)?;
                    set_meta(&tx, "push_interval_config_ms", *config_ms)?;
                }
                StoreCmd::Ack { .. } | StoreCmd::Flush(_) | StoreCmd::Probe => {}
            }
        }
        drop(inserts);
        if prove {
            set_meta(&tx, "store_probe", now_ms())?;
        }
        let save = self.last_latest.elapsed() >= LATEST_EVERY && self.dirty.any;
        if save {
            Self::save_latest(&tx, &self.keys, &self.dirty)?;
        }
        tx.commit()?;
        self.tail.committed(&samples);
        if others {
            self.tail.others_committed();
        }
        if save {
            self.dirty.clear();
            self.last_latest = Instant::now();
        }
        Ok(rows)
    }

    /// Writes the latest value of every point reported since the last save, and which sample
    /// they include, so a start replays only the samples after it.
    fn save_latest(
        tx: &Transaction<'_>,
        keys: &super::Keys,
        dirty: &Latest,
    ) -> rusqlite::Result<()> {
        let mut q = tx.prepare_cached(
            "INSERT INTO latest (point, value, quality, ts) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (point) DO UPDATE SET value = ?2, quality = ?3, ts = ?4",
        )?;
        for (d, points) in dirty.points.iter().enumerate() {
            for (p, latest) in points.iter().enumerate() {
                if let Some((value, quality, ts)) = latest {
                    let key = keys.points[d][p];
                    q.execute(params![key, sql_value(value), quality.as_str(), ts])?;
                }
            }
        }
        let upto: i64 =
            tx.query_row("SELECT COALESCE(MAX(id), 0) FROM samples", [], |r| r.get(0))?;
        set_meta(tx, "latest_upto", upto)
    }

    fn save_latest_now(&mut self) {
        if !self.dirty.any {
            return;
        }
        let r = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .and_then(|tx| {
                Self::save_latest(&tx, &self.keys, &self.dirty)?;
                tx.commit()
            });
        match r {
            Ok(()) => self.dirty.clear(),
            Err(e) => {
                tracing::warn!(
                    "saving the latest values failed (the samples replay at start): {e}"
                );
            }
        }
    }

    fn ack(&mut self, event_id: &str, user: &str, ts: Millis) -> Result<(), AckError> {
        let run = |conn: &mut Connection| -> rusqlite::Result<bool> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
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
}

fn set_meta(tx: &Connection, key: &str, value: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
    )?
    .execute(params![key, value.to_string()])?;
    Ok(())
}

/// One write's audit row: who wrote what where, and how it went.
fn write_audit(tx: &Transaction<'_>, a: &Audit) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO write_audit (ts, user, source, device_id, point_id, old_value, new_value, result)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        a.ts,
        a.user,
        a.source,
        a.device_id,
        a.point_id,
        sql_value(&a.old),
        sql_value(&Some(a.new.clone())),
        a.result
    ])?;
    Ok(())
}

/// A device's online state now (`device_status`) and the change in the outbox (`status_log`).
fn write_status(
    tx: &Transaction<'_>,
    d: &Device,
    online: bool,
    last_seen: Option<Millis>,
    ts: Millis,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO device_status (device_id, device_type, online, last_seen, changed_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device_id) DO UPDATE SET device_type = ?2, online = ?3,
            last_seen = COALESCE(?4, last_seen), changed_at = ?5",
    )?
    .execute(params![
        d.id,
        d.device_type,
        i64::from(online),
        last_seen,
        ts
    ])?;
    tx.prepare_cached(
        "INSERT INTO status_log (device_id, online, last_seen, ts) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![d.id, i64::from(online), last_seen, ts])?;
    Ok(())
}

/// Numbered events with their alarm changes, and the highest `seq` so far (kept even when
/// retention has deleted every event). Returns how many were written.
fn write_events(
    config: &Config,
    tx: &Transaction<'_>,
    events: &[crate::model::event::Event],
) -> rusqlite::Result<u64> {
    for e in events {
        write_event(config, tx, e)?;
    }
    if let Some(last) = events.last() {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('event_seq', ?1)
             ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), ?1)",
            [last.seq as i64],
        )?;
    }
    Ok(events.len() as u64)
}

fn write_event(
    config: &Config,
    tx: &Transaction<'_>,
    e: &crate::model::event::Event,
) -> rusqlite::Result<()> {
    use crate::model::event::AlarmOp;
    let id = e.id(&config.gateway.id);
    let inserted = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (seq, event_id, device_id, point_id, type, priority, priority_rank,
            device_seq, value, message, state, ts, acked_by, acked_at, acks)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        e.seq as i64,
        id,
        config.source_id(e.device),
        config.source_point(e.device, e.point),
        e.kind.as_str(),
        e.priority.as_str(),
        e.priority.rank(),
        e.device_seq as i64,
        sql_value(&e.value),
        e.message,
        e.state.as_str(),
        e.ts,
        e.acked_by,
        e.acked_at,
        match &e.alarm {
            Some(AlarmOp::Acked { event, .. }) => Some(event.as_str()),
            _ => None,
        },
    ])?;
    // Queued with its event, in the same commit; an event written before is queued already.
    if inserted == 1 {
        super::notify::queue_event(config, tx, e)?;
    }
    match &e.alarm {
        Some(AlarmOp::Raise(key)) => {
            // Raised again before the last occurrence was acknowledged: the same row, counted.
            tx.prepare_cached(
                "INSERT INTO alarms (key, event_seq, state, priority_rank, raised_at, first_raised_at)
                 VALUES (?1, ?2, 'active', ?3, ?4, ?4)
                 ON CONFLICT (key) DO UPDATE SET event_seq = excluded.event_seq, state = 'active',
                    priority_rank = excluded.priority_rank, raised_at = excluded.raised_at,
                    occurrences = alarms.occurrences + 1, cleared_at = NULL",
            )?
            .execute(params![key, e.seq as i64, e.priority.rank(), e.ts])?;
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
        // The alarm itself was marked when it was acknowledged (`ack`).
        Some(AlarmOp::Acked { .. }) | None => {}
    }
    Ok(())
}
