//! What a sink sends next and how far its persisted cursor may move: events and status in
//! order, telemetry live-first while a backlog drains.
//!
//! A stream's cursor means "every row up to here is confirmed upstream". Rows are read ahead of
//! the cursor and confirmed later (at once by a MySQL commit, by PUBACK for MQTT), so the cursor
//! is the lower of "first row not read yet" and "first row read but not confirmed".
//!
//! Live first: when telemetry falls more than [`LIVE_LAG`] batches behind (an outage), the
//! backlog is frozen at the newest row, new rows are read from there on as they come, and the
//! backlog drains one batch per round beside them. Fresh values reach the upstream within a
//! round however long the backlog is; the cursor stays at the backlog's front, so a crash
//! resends the live rows too, which the upstream's idempotence absorbs. Events and status stay
//! strictly in order (`deviceSeq` order for every sink) and are read before telemetry.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::store::outbox::{self, Outbox};
use crate::store::tail::Tail;
use crate::store::{OutboxRow, StoreCmd, StoreHandle, Stream};
use crate::sync::Locked;

/// Telemetry further behind than this many batches drains beside live data.
pub const LIVE_LAG: usize = 10;

const TELEMETRY: usize = Stream::Telemetry as usize;

/// One batch of one stream, oldest first.
pub struct Batch {
    pub stream: Stream,
    pub rows: Vec<OutboxRow>,
}

#[derive(Default)]
struct Cursors {
    /// Persisted cursor.
    persisted: i64,
    /// Every row up to here has been read (the backlog's front while live-first is on).
    back: i64,
    /// Live-first: (newest row of the frozen backlog, newest live row read).
    live: Option<(i64, i64)>,
    /// Read, not yet confirmed.
    unconfirmed: BTreeSet<i64>,
}

impl Cursors {
    fn cursor(&self) -> i64 {
        match self.unconfirmed.first() {
            Some(&first) => self.back.min(first - 1),
            None => self.back,
        }
    }
}

pub struct Feed {
    sink: &'static str,
    reader: Arc<Mutex<Outbox>>,
    streams: [Cursors; 3],
    batch: usize,
    /// Set when the store's file was lost under the gateway: nothing more is read for
    /// upstream, since what would go the next start no longer has (its ids, its rows).
    held: Option<Arc<AtomicBool>>,
    /// The store's just-committed telemetry, when the sink is given it.
    tail: Option<Arc<Tail>>,
    /// The tail's count of commits with events or status changes at the last read of those
    /// streams (`None`: read them next round).
    others_seen: Option<u64>,
    /// The newest telemetry id last seen.
    newest: i64,
    /// Telemetry rows taken from the tail so far (the rest were read from SQLite).
    from_tail: u64,
}

impl Feed {
    /// Sends nothing more once `gone` is set (the store's [`crate::store::StoreHandle::gone`]).
    pub fn held_while(mut self, gone: Arc<AtomicBool>) -> Feed {
        self.held = Some(gone);
        self
    }

    /// Takes telemetry from the store's tail while the sink keeps up.
    pub fn with_tail(mut self, tail: Arc<Tail>) -> Feed {
        self.tail = Some(tail);
        self
    }

    pub fn new(
        sink: &'static str,
        reader: rusqlite::Connection,
        config: Arc<Config>,
        batch: usize,
    ) -> Feed {
        Feed {
            sink,
            reader: Arc::new(Mutex::new(Outbox::new(reader, config))),
            streams: Default::default(),
            batch,
            held: None,
            tail: None,
            others_seen: None,
            newest: 0,
            from_tail: 0,
        }
    }

    /// Forgets everything read and not confirmed: the next read starts at the persisted cursors
    /// (after a lost connection, whose unconfirmed rows must be sent again).
    pub async fn reset(&mut self) -> rusqlite::Result<()> {
        let sink = self.sink;
        let cursors = self
            .blocking(move |o| {
                Stream::ALL
                    .iter()
                    .map(|s| outbox::cursor(o.conn(), sink, *s))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        for (s, c) in self.streams.iter_mut().zip(cursors) {
            *s = Cursors {
                persisted: c,
                back: c,
                ..Cursors::default()
            };
        }
        self.others_seen = None;
        Ok(())
    }

    /// Rows read and not yet confirmed, over all streams.
    pub fn in_flight(&self) -> usize {
        self.streams.iter().map(|s| s.unconfirmed.len()).sum()
    }

    /// The next batches to send, at most one per stream and two of telemetry (live, backlog);
    /// empty when everything has been read. Their rows count as read until confirmed.
    /// Telemetry comes from the store's tail when it holds every row asked for, events and
    /// status from SQLite only when a commit wrote some since the last look: a sink that keeps
    /// up reads nothing back from the file.
    pub async fn next(&mut self) -> rusqlite::Result<Vec<Batch>> {
        if self.held.as_ref().is_some_and(|g| g.load(Relaxed)) {
            return Ok(Vec::new());
        }
        // Read before the streams are: a commit during the read is looked at again next time.
        let others = self.tail.as_ref().map(|t| t.others());
        let others_due = others.is_none() || others != self.others_seen;
        let reads = self.reads(others_due);
        let found = self.fetch(&reads).await?;
        if others_due {
            // Read to the end first: a stream longer than a batch is read again next round,
            // whether or not another commit writes to it.
            let drained = reads
                .iter()
                .zip(&found)
                .filter(|((i, ..), _)| *i != TELEMETRY)
                .all(|(_, rows)| rows.as_ref().is_none_or(Vec::is_empty));
            self.others_seen = if drained { others } else { None };
        }
        Ok(self.take(&reads, found))
    }

    /// This round's reads in the order they are sent: (stream, live, after, upto).
    fn reads(&self, others_due: bool) -> Vec<(usize, bool, i64, i64)> {
        let mut reads = Vec::with_capacity(4);
        for stream in Stream::ALL {
            let i = stream.index();
            let s = &self.streams[i];
            match (i, s.live) {
                (TELEMETRY, Some((frozen, front))) => {
                    reads.push((i, true, front, i64::MAX));
                    reads.push((i, false, s.back, frozen));
                }
                (TELEMETRY, None) => reads.push((i, false, s.back, i64::MAX)),
                _ if others_due => reads.push((i, false, s.back, i64::MAX)),
                _ => {}
            }
        }
        reads
    }

    /// The rows of each read: what the tail answers, the rest from SQLite in one blocking call;
    /// the newest telemetry id noted.
    async fn fetch(
        &mut self,
        reads: &[(usize, bool, i64, i64)],
    ) -> rusqlite::Result<Vec<Option<Vec<OutboxRow>>>> {
        let limit = self.batch;
        let mut found: Vec<Option<Vec<OutboxRow>>> = reads
            .iter()
            .map(|&(i, _, after, upto)| {
                let tail = self.tail.as_ref().filter(|_| i == TELEMETRY)?;
                tail.read(after, upto, limit)
            })
            .collect();
        self.from_tail += found.iter().flatten().map(|r| r.len() as u64).sum::<u64>();
        let missing: Vec<(usize, Stream, i64, i64)> = reads
            .iter()
            .zip(&found)
            .enumerate()
            .filter(|(_, (_, f))| f.is_none())
            .map(|(k, (&(i, _, after, upto), _))| (k, Stream::ALL[i], after, upto))
            .collect();
        let tail_newest = self.tail.as_ref().map(|t| t.newest());
        if missing.is_empty() && tail_newest.is_some() {
            self.newest = tail_newest.unwrap_or(self.newest);
            return Ok(found);
        }
        let (rows, newest) = self
            .blocking(move |o| {
                let mut rows = Vec::with_capacity(missing.len());
                for (k, stream, after, upto) in missing {
                    rows.push((k, o.read(stream, after, upto, limit)?));
                }
                let newest = match tail_newest {
                    Some(n) => n,
                    None => o.newest(Stream::Telemetry)?,
                };
                Ok((rows, newest))
            })
            .await?;
        for (k, r) in rows {
            found[k] = Some(r);
        }
        self.newest = newest;
        Ok(found)
    }

    /// The rows read counted as read, the cursors moved, the batches to send.
    fn take(
        &mut self,
        reads: &[(usize, bool, i64, i64)],
        found: Vec<Option<Vec<OutboxRow>>>,
    ) -> Vec<Batch> {
        let mut result = Vec::new();
        for (&(i, is_live, _, _), rows) in reads.iter().zip(found) {
            let rows = rows.unwrap_or_default();
            let Some(last) = rows.last().map(OutboxRow::id) else {
                if i == TELEMETRY && !is_live {
                    // The backlog is drained: one reader again, from the live front.
                    let s = &mut self.streams[i];
                    if let Some((_, front)) = s.live.take() {
                        s.back = front;
                    }
                }
                continue;
            };
            let s = &mut self.streams[i];
            s.unconfirmed.extend(rows.iter().map(OutboxRow::id));
            match (&mut s.live, is_live) {
                (Some((_, front)), true) => *front = last,
                _ => s.back = last,
            }
            result.push(Batch {
                stream: Stream::ALL[i],
                rows,
            });
        }
        let s = &mut self.streams[TELEMETRY];
        if s.live.is_none() && self.newest - s.back > (LIVE_LAG * self.batch) as i64 {
            s.live = Some((self.newest, self.newest));
        }
        result
    }

    /// Telemetry rows taken from the store's tail so far, not read back from SQLite.
    pub fn from_tail(&self) -> u64 {
        self.from_tail
    }

    /// Marks rows of a stream as confirmed upstream.
    pub fn confirm(&mut self, stream: Stream, ids: impl IntoIterator<Item = i64>) {
        let s = &mut self.streams[stream.index()];
        for id in ids {
            s.unconfirmed.remove(&id);
        }
    }

    /// Writes the cursors that moved since the last call through the store writer.
    pub async fn persist(&mut self, store: &StoreHandle) {
        for (stream, last_id) in self.advanced() {
            store
                .send(StoreCmd::Cursor {
                    sink: self.sink,
                    stream,
                    last_id,
                })
                .await;
        }
    }

    /// Streams whose cursor moved since the last call, with the cursor to persist.
    pub fn advanced(&mut self) -> Vec<(Stream, i64)> {
        let mut out = Vec::new();
        for (i, s) in self.streams.iter_mut().enumerate() {
            let c = s.cursor();
            if c > s.persisted {
                s.persisted = c;
                out.push((Stream::ALL[i], c));
            }
        }
        out
    }

    /// Rows of all streams not yet confirmed by this sink. The cursors just handed to the store
    /// count before their commit, so the figure does not lag a round behind what was sent.
    pub async fn backlog(&self) -> rusqlite::Result<i64> {
        if let Some(b) = self.caught_up_backlog() {
            return Ok(b);
        }
        let sink = self.sink;
        let sent: Vec<i64> = self.streams.iter().map(|s| s.persisted).collect();
        self.blocking(move |o| outbox::backlog(o.conn(), sink, &sent))
            .await
    }

    /// The backlog without a query, when this sink has read every committed row: events and
    /// status to the end as of the last commit that wrote some, telemetry from the tail, not
    /// draining a backlog live-first. Then it is what was read and is not yet confirmed, and the
    /// tail's rows not read yet. (Twice a second per sink, the query was 2 % of the gateway's
    /// CPU on the 10 × 50 × 30 load.)
    fn caught_up_backlog(&self) -> Option<i64> {
        let tail = self.tail.as_ref()?;
        let telemetry = &self.streams[TELEMETRY];
        if self.others_seen != Some(tail.others()) || telemetry.live.is_some() {
            return None;
        }
        let read: i64 = self.streams.iter().map(|s| s.back - s.cursor()).sum();
        Some(read + (tail.newest() - telemetry.back).max(0))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Outbox) -> rusqlite::Result<T> + Send + 'static,
    ) -> rusqlite::Result<T> {
        let r = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&mut r.locked()))
            .await
            .unwrap_or_else(|e| {
                Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
                    std::io::Error::other(e.to_string()),
                )))
            })
    }
}
