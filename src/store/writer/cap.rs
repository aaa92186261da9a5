//! Retention and the size cap: history past `history_retention_days` goes, and past
//! `max_db_mb` the oldest telemetry goes first (confirmed before unsent), with a gap record.

use std::time::Instant;

use rusqlite::Connection;

use super::{set_meta, Writer};
use crate::model::now_ms;
use crate::store::Gap;
use crate::sync::Locked;

impl Writer {
    /// Drops history past its retention, then applies the size cap.
    pub(super) fn prune(&mut self) {
        self.last_prune = Instant::now();
        let cutoff = now_ms() - i64::from(self.config.store.history_retention_days) * 86_400_000;
        // Samples are appended in time order, so the first one inside the retention is found
        // by reading exactly the ones that go.
        let r = self.conn.query_row(
            "SELECT COALESCE((SELECT id FROM samples WHERE ts >= ?1 ORDER BY id LIMIT 1),
                             (SELECT MAX(id) + 1 FROM samples), 0)",
            [cutoff],
            |r| r.get::<_, i64>(0),
        );
        let r = r.and_then(|keep| delete_samples(&mut self.conn, 0, keep - 1));
        match r {
            Ok(n) if n > 0 => {
                tracing::info!("pruned {n} telemetry samples older than the retention");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("pruning telemetry failed: {e}"),
        }
        self.cap();
    }

    /// Keeps database and WAL budget together under `max_db_mb`: first the oldest telemetry that
    /// every upstream sink has confirmed (or all of it, with no sink), then, only if that is not
    /// enough, the oldest unsent telemetry, recorded as gaps. Events are never dropped.
    pub(super) fn cap(&mut self) {
        self.last_cap = Instant::now();
        // A 1/32 margin: the file also holds pages freed and not yet reused, and grows by a
        // second's samples between two checks. The soak at a 128 MiB cap, kept to exactly the
        // cap in pages in use, ended 0.2 % over in file bytes.
        let cap = self.config.store.max_db_mb * 1024 * 1024;
        let max = cap - cap / 32;
        if self.used_bytes().unwrap_or(0) <= max {
            return;
        }
        let sent = self.confirmed_telemetry().unwrap_or(0);
        for unsent in [false, true] {
            for _ in 0..50 {
                match self.drop_oldest(sent, unsent) {
                    Ok(0) => break,
                    // Logged with its range by `drop_oldest`.
                    Ok(_) if unsent => {}
                    Ok(n) => tracing::warn!("store over max_db_mb: dropped the oldest {n} telemetry samples (already upstream)"),
                    Err(e) => {
                        tracing::warn!("keeping the store under max_db_mb failed: {e}");
                        return;
                    }
                }
                if self.used_bytes().unwrap_or(0) <= max {
                    return;
                }
            }
        }
    }

    /// Telemetry samples up to this id are confirmed by every configured sink.
    fn confirmed_telemetry(&self) -> rusqlite::Result<i64> {
        let mut min = i64::MAX;
        for s in &self.sinks {
            min = min.min(crate::store::outbox::cursor(
                &self.conn,
                s,
                crate::store::Stream::Telemetry,
            )?);
        }
        Ok(min)
    }

    /// Drops a tenth of the samples of one kind (confirmed upstream, or not), oldest first;
    /// unsent ones are recorded per device as gaps. Returns how many went.
    fn drop_oldest(&mut self, sent: i64, unsent: bool) -> rusqlite::Result<usize> {
        // Immediate: a deferred transaction that reads and then writes gets SQLITE_BUSY at once,
        // without waiting, when the checkpoint thread holds the lock for a moment.
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let (first, newest): (i64, i64) = tx.query_row(
            "SELECT COALESCE(MIN(id), 0), COALESCE(MAX(id), 0) FROM samples",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let chunk = ((newest - first) / 10).max(1000);
        let (lo, hi) = if unsent {
            (sent, newest)
        } else {
            (0, sent.min(newest))
        };
        let lo = lo.max(first - 1);
        let hi = hi.min(lo + chunk);
        if hi <= lo {
            return Ok(0);
        }
        let mut gaps = Vec::new();
        if unsent {
            let mut q = tx.prepare(
                "SELECT n.device_id, COUNT(*), MIN(s.ts), MAX(s.ts) FROM samples s
                 JOIN names n ON n.id = s.device
                 WHERE s.id > ?1 AND s.id <= ?2 GROUP BY n.device_id ORDER BY n.device_id",
            )?;
            gaps = q
                .query_map([lo, hi], |r| {
                    Ok(Gap {
                        device_id: r.get(0)?,
                        rows: r.get(1)?,
                        from_ts: r.get(2)?,
                        to_ts: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
        let n = delete_in(&tx, lo, hi)?;
        tx.commit()?;
        // One line for the drop; each device's exact range is in its gap event. (A line per
        // device was 500 lines a minute into the journal in the soak.)
        if let (Some(from), Some(to)) = (
            gaps.iter().map(|g| g.from_ts).min(),
            gaps.iter().map(|g| g.to_ts).max(),
        ) {
            tracing::error!(
                "telemetry gap: {n} unsent device samples of {} devices from {} to {} dropped to stay under store.max_db_mb",
                gaps.len(),
                crate::model::rfc3339(from),
                crate::model::rfc3339(to)
            );
        }
        self.gaps.locked().extend(gaps);
        Ok(n)
    }

    /// Bytes in use: the database's pages less its free ones, plus the WAL's budget. The WAL
    /// is kept near its limit by the checkpoints, not by dropping data (deleting rows only
    /// writes more WAL), so the cap reserves the limit for it.
    fn used_bytes(&self) -> rusqlite::Result<u64> {
        let q = |pragma: &str| -> rusqlite::Result<i64> {
            self.conn.pragma_query_value(None, pragma, |r| r.get(0))
        };
        let used = (q("page_count")? - q("freelist_count")?) * q("page_size")?;
        Ok(used.max(0) as u64 + self.wal_limit)
    }
}

/// Deletes the samples with ids in `(after, upto]`, remembering the highest id ever given.
fn delete_in(tx: &Connection, after: i64, upto: i64) -> rusqlite::Result<usize> {
    let newest: Option<i64> = tx.query_row("SELECT MAX(id) FROM samples", [], |r| r.get(0))?;
    if let Some(id) = newest {
        set_meta(tx, "samples_hw", id)?;
    }
    tx.execute(
        "DELETE FROM samples WHERE id > ?1 AND id <= ?2",
        [after, upto],
    )
}

fn delete_samples(conn: &mut Connection, after: i64, upto: i64) -> rusqlite::Result<usize> {
    if upto <= after {
        return Ok(0);
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let n = delete_in(&tx, after, upto)?;
    tx.commit()?;
    Ok(n)
}
