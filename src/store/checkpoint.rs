//! The checkpoint thread: keeps the WAL bounded without making commits wait on an fsync.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// The WAL is checkpointed at least this often.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(10);

/// Keeps the WAL bounded without making commits wait on an fsync: once a second it looks at
/// the WAL file, and every [`CHECKPOINT_EVERY`], or at once when the WAL has grown past
/// `limit`, it copies the WAL into the database (PASSIVE: never blocks the writer) and then
/// restarts it (RESTART: waits a moment for readers, so the next commit writes from the start
/// of the file again, which `journal_size_limit` then trims). Readers that never pause would
/// otherwise starve every checkpoint and the WAL would grow without end. At stop, a last
/// TRUNCATE.
pub(super) fn checkpoints(
    conn: Connection,
    wal: PathBuf,
    limit: u64,
    stop: std::sync::mpsc::Receiver<()>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    // RESTART blocks new writers while it waits for readers: never long.
    let _ = conn.busy_timeout(Duration::from_millis(500));
    let mut last = Instant::now();
    loop {
        if let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_secs(1)) {
            let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
            if size <= limit && last.elapsed() < CHECKPOINT_EVERY {
                continue;
            }
            last = Instant::now();
            let r = conn
                .execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
                .and_then(|()| conn.execute_batch("PRAGMA wal_checkpoint(RESTART)"));
            if let Err(e) = r {
                tracing::debug!("checkpoint: {e}");
            }
        } else {
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            return;
        }
    }
}

/// The checkpoint thread on its own connection, and its stop.
pub(super) fn start(
    path: &Path,
    wal: &Path,
    limit: u64,
) -> Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>), super::StoreError> {
    let checkpointer = super::schema::open_connection(path)?;
    super::readers::small_cache(&checkpointer).map_err(|source| super::StoreError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let wal = wal.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || checkpoints(checkpointer, wal, limit, stopped))
        .map_err(|source| super::StoreError::Dir {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((stop, thread))
}
