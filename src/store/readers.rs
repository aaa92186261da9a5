//! Read connections: opened at start and lent to one query at a time, each with a small page
//! cache, and refused once the database file was removed or replaced.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::{FileId, StoreError, DB_FILE};
use crate::sync::Locked;

/// Read connections opened at start and lent to one query at a time: a query never opens a
/// file, so it still answers when the process is at its descriptor limit. Two lanes: long
/// reads (a week of history) have their own connections, so four viewers asking for trends
/// (16 requests each) no longer hold an admin's alarm list for 16.8 s.
pub struct Readers {
    lanes: [Pool; 2],
    data_dir: PathBuf,
    /// A query on a file removed or replaced would answer from a ghost: an error instead.
    file: FileId,
    /// Each user's turn at the long lane ([`Readers::query_for`]), while they have reads
    /// running or waiting.
    shares: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// Long reads one user runs at once: with two long connections, one always stays for the
/// others however many trends a user asks for (their other reads wait in their own line).
const LONG_PER_USER: usize = 1;

/// Which connections a query runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Bounded reads a person waits on: alarms, an event page, the audit.
    Short = 0,
    /// Reads whose cost grows with the range asked: history and its buckets.
    Long = 1,
}

/// One lane's connections and the permits to use them.
struct Pool {
    idle: std::sync::Mutex<Vec<Connection>>,
    lent: tokio::sync::Semaphore,
}

/// Connections per lane: short, long (each query on a blocking thread).
const READERS: [usize; 2] = [1, 2];

impl Readers {
    pub(super) fn open(data_dir: &Path) -> Result<Readers, StoreError> {
        let pool = |n: usize| -> Result<Pool, StoreError> {
            let idle = (0..n)
                .map(|_| open_reader(data_dir))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Pool {
                idle: std::sync::Mutex::new(idle),
                lent: tokio::sync::Semaphore::new(n),
            })
        };
        let path = data_dir.join(DB_FILE);
        Ok(Readers {
            lanes: [pool(READERS[0])?, pool(READERS[1])?],
            data_dir: data_dir.to_path_buf(),
            file: FileId::of(&path).map_err(|source| StoreError::Dir { path, source })?,
            shares: std::sync::Mutex::default(),
        })
    }

    /// Runs `f` on a lent connection, off the async workers. Each call is its own short read
    /// transaction (the connection holds none between calls), so no reader holds the WAL back.
    pub async fn query<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.query_in(Lane::Short, f).await
    }

    /// [`Readers::query_in`] on behalf of `who` (a user): on the long lane, one user's reads
    /// take their turns among themselves first, so a user asking for 64 trends holds one long
    /// connection, not both, and another user's trend waits for at most one read per user.
    pub async fn query_for<T: Send + 'static>(
        self: &Arc<Self>,
        lane: Lane,
        who: &str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        if lane == Lane::Short {
            return self.query_in(lane, f).await;
        }
        let share = {
            let mut shares = self.shares.locked();
            // Users with nothing running or waiting are forgotten: the map is as small as the
            // users reading right now.
            shares.retain(|_, s| Arc::strong_count(s) > 1);
            let share = shares
                .entry(who.to_string())
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(LONG_PER_USER)));
            Arc::clone(share)
        };
        let _turn = share.acquire().await.map_err(|_| StoreError::Closed)?;
        self.query_in(lane, f).await
    }

    /// [`Readers::query`] on a lane's connections.
    pub async fn query_in<T: Send + 'static>(
        self: &Arc<Self>,
        lane: Lane,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = &self.lanes[lane as usize];
        let _permit = pool.lent.acquire().await.map_err(|_| StoreError::Closed)?;
        let me = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            me.file.check()?;
            let pool = &me.lanes[lane as usize];
            let taken = pool.idle.locked().pop();
            // A connection lost to a panicking query is replaced.
            let conn = match taken {
                Some(c) => c,
                None => open_reader(&me.data_dir)?,
            };
            let out = f(&conn);
            pool.idle.locked().push(conn);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one empty table, and its readers.
    fn empty_store() -> (tempfile::TempDir, Arc<Readers>) {
        let dir = tempfile::tempdir().unwrap();
        rusqlite::Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .unwrap();
        let readers = Arc::new(Readers::open(dir.path()).unwrap());
        (dir, readers)
    }

    type Held = Vec<tokio::task::JoinHandle<Result<(), StoreError>>>;

    /// `n` long reads (on behalf of `who`, if given) that each hold their connection until
    /// one send on the returned sender.
    fn held_reads(
        readers: &Arc<Readers>,
        n: usize,
        who: Option<&'static str>,
    ) -> (std::sync::mpsc::Sender<()>, Held) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(held));
        let reads = (0..n)
            .map(|_| {
                let (r, held) = (readers.clone(), held.clone());
                tokio::spawn(async move {
                    let wait = move |_: &Connection| {
                        let _ = held.locked().recv();
                        Ok(())
                    };
                    match who {
                        Some(who) => r.query_for(Lane::Long, who, wait).await,
                        None => r.query_in(Lane::Long, wait).await,
                    }
                })
            })
            .collect();
        (release, reads)
    }

    /// #31, item 3: four viewers' trend requests held an admin's alarm list for 16.8 s: every
    /// query shared two connections. With both history connections busy, a short query still
    /// runs at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_reads_never_hold_a_short_one() {
        let (_dir, readers) = empty_store();
        let (release, long) = held_reads(&readers, READERS[Lane::Long as usize] + 2, None);
        // Every long connection is taken (and more wait); a short read is not among them.
        let n: i64 = readers
            .query(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(n, 0);
        for _ in 0..long.len() {
            release.send(()).unwrap();
        }
        for l in long {
            l.await.unwrap().unwrap();
        }
    }

    /// #31, item 3, the per-user share: one user with many long reads waiting holds one long
    /// connection; another user's long read runs on the other at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_user_flooding_the_long_lane_leaves_room_for_another() {
        let (_dir, readers) = empty_store();
        let (release, flood) = held_reads(&readers, 16, Some("viewer"));
        // The flood has its connection (and, without the share, would soon have both).
        while readers.lanes[Lane::Long as usize].lent.available_permits() > 1 {
            tokio::task::yield_now().await;
        }
        let n: i64 = readers
            .query_for(Lane::Long, "admin", |c| {
                c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            })
            .await
            .unwrap();
        assert_eq!(n, 0);
        for _ in 0..flood.len() {
            release.send(()).unwrap();
        }
        for f in flood {
            f.await.unwrap().unwrap();
        }
        assert!(readers
            .shares
            .locked()
            .values()
            .all(|s| Arc::strong_count(s) == 1));
    }
}
