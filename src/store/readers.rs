//! Read connections: opened at start and lent to one query at a time, each with a small page
//! cache, and refused once the database file was removed or replaced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::{FileId, StoreError, DB_FILE};
use crate::sync::Locked;

/// Read connections opened at start and lent to one query at a time: a query never opens a
/// file, so it still answers when the process is at its descriptor limit.
pub struct Readers {
    idle: std::sync::Mutex<Vec<Connection>>,
    lent: tokio::sync::Semaphore,
    data_dir: PathBuf,
    /// A query on a file removed or replaced would answer from a ghost: an error instead.
    file: FileId,
}

/// Queries that run at once (each on a blocking thread).
const READERS: usize = 2;

impl Readers {
    pub(super) fn open(data_dir: &Path) -> Result<Readers, StoreError> {
        let idle = (0..READERS)
            .map(|_| open_reader(data_dir))
            .collect::<Result<Vec<_>, _>>()?;
        let path = data_dir.join(DB_FILE);
        Ok(Readers {
            idle: std::sync::Mutex::new(idle),
            lent: tokio::sync::Semaphore::new(READERS),
            data_dir: data_dir.to_path_buf(),
            file: FileId::of(&path).map_err(|source| StoreError::Dir { path, source })?,
        })
    }

    /// Runs `f` on a lent connection, off the async workers. Each call is its own short read
    /// transaction (the connection holds none between calls), so no reader holds the WAL back.
    pub async fn query<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self.lent.acquire().await.map_err(|_| StoreError::Closed)?;
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            me.file.check()?;
            let taken = me.idle.locked().pop();
            // A connection lost to a panicking query is replaced.
            let conn = match taken {
                Some(c) => c,
                None => open_reader(&me.data_dir)?,
            };
            let out = f(&conn);
            me.idle.locked().push(conn);
            Ok(out?)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// A read-only connection for queries (history, CLI inspection), separate from the writer.
/// Each query is its own short read transaction, so no reader holds the WAL back.
pub fn open_reader(data_dir: &Path) -> Result<Connection, StoreError> {
    let path = data_dir.join(DB_FILE);
    let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
    conn.busy_timeout(Duration::from_secs(5))?;
    small_cache(&conn)?;
    Ok(conn)
}

/// Page cache of a connection that reads in passing (KiB; SQLite's default is 2,000 for every
/// connection). Readers and the checkpointer touch each page about once — a sink's feed walks
/// the outbox forward, a query reads a range — so a big cache of theirs only holds memory: five
/// of them at 2 MB each could hold 10 MB, and the one-hour soak's RSS rose in steps while a
/// MySQL backlog drained. The writer keeps the default for the index pages it revisits.
const READER_CACHE_KIB: i64 = 256;

pub(super) fn small_cache(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
}
