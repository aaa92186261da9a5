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
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::store::{self, OutboxRow, StoreCmd, StoreHandle, STREAMS};

/// Telemetry further behind than this many batches drains beside live data.
pub const LIVE_LAG: usize = 10;

/// One batch of one stream, oldest first.
pub struct Batch {
    /// Index into [`STREAMS`].
    pub stream: usize,
    pub rows: Vec<OutboxRow>,
}

impl Batch {
    pub fn name(&self) -> &'static str {
        STREAMS[self.stream].0
    }
}

#[derive(Default)]
struct Stream {
    /// Persisted cursor.
    persisted: i64,
    /// Every row up to here has been read (the backlog's front while live-first is on).
    back: i64,
    /// Live-first: (newest row of the frozen backlog, newest live row read).
    live: Option<(i64, i64)>,
    /// Read, not yet confirmed.
    unconfirmed: BTreeSet<i64>,
}

impl Stream {
    fn cursor(&self) -> i64 {
        match self.unconfirmed.first() {
            Some(&first) => self.back.min(first - 1),
            None => self.back,
        }
    }
}

pub struct Feed {
    sink: &'static str,
    reader: Arc<Mutex<Connection>>,
    streams: [Stream; 3],
    batch: usize,
}

impl Feed {
    pub fn new(sink: &'static str, reader: Connection, batch: usize) -> Feed {
        Feed {
            sink,
            reader: Arc::new(Mutex::new(reader)),
            streams: Default::default(),
            batch,
        }
    }

    /// Forgets everything read and not confirmed: the next read starts at the persisted cursors
    /// (after a lost connection, whose unconfirmed rows must be sent again).
    pub async fn reset(&mut self) -> rusqlite::Result<()> {
        let sink = self.sink;
        let cursors = self
            .blocking(move |c| {
                STREAMS
                    .iter()
                    .map(|(s, _)| store::cursor(c, sink, s))
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        for (s, c) in self.streams.iter_mut().zip(cursors) {
            *s = Stream {
                persisted: c,
                back: c,
                ..Stream::default()
            };
        }
        Ok(())
    }

    /// Rows read and not yet confirmed, over all streams.
    pub fn in_flight(&self) -> usize {
        self.streams.iter().map(|s| s.unconfirmed.len()).sum()
    }

    /// The next batches to send, at most one per stream and two of telemetry (live, backlog);
    /// empty when everything has been read. Their rows count as read until confirmed.
    pub async fn next(&mut self) -> rusqlite::Result<Vec<Batch>> {
        const TELEMETRY: usize = 2;
        let limit = self.batch;
        let tele = &self.streams[TELEMETRY];
        let (backs, live) = (
            self.streams.iter().map(|s| s.back).collect::<Vec<_>>(),
            tele.live,
        );
        let (batches, newest) = self
            .blocking(move |c| {
                let mut out = Vec::new();
                for (i, (_, query)) in STREAMS.iter().enumerate() {
                    let upto = match (i, live) {
                        (TELEMETRY, Some((frozen, front))) => {
                            out.push((i, true, store::outbox(c, query, front, i64::MAX, limit)?));
                            frozen
                        }
                        _ => i64::MAX,
                    };
                    out.push((i, false, store::outbox(c, query, backs[i], upto, limit)?));
                }
                let newest = store::newest_id(c, "telemetry")?;
                Ok((out, newest))
            })
            .await?;
        let mut result = Vec::new();
        for (i, is_live, rows) in batches {
            let Some(last) = rows.last().map(|r| r.0) else {
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
            s.unconfirmed.extend(rows.iter().map(|r| r.0));
            match (&mut s.live, is_live) {
                (Some((_, front)), true) => *front = last,
                _ => s.back = last,
            }
            result.push(Batch { stream: i, rows });
        }
        let s = &mut self.streams[TELEMETRY];
        if s.live.is_none() && newest - s.back > (LIVE_LAG * limit) as i64 {
            s.live = Some((newest, newest));
        }
        Ok(result)
    }

    /// Marks rows of a stream as confirmed upstream.
    pub fn confirm(&mut self, stream: usize, ids: impl IntoIterator<Item = i64>) {
        let s = &mut self.streams[stream];
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
    pub fn advanced(&mut self) -> Vec<(&'static str, i64)> {
        let mut out = Vec::new();
        for (i, s) in self.streams.iter_mut().enumerate() {
            let c = s.cursor();
            if c > s.persisted {
                s.persisted = c;
                out.push((STREAMS[i].0, c));
            }
        }
        out
    }

    /// Rows of all streams not yet confirmed by this sink. The cursors just handed to the store
    /// count before their commit, so the figure does not lag a round behind what was sent.
    pub async fn backlog(&self) -> rusqlite::Result<i64> {
        let sink = self.sink;
        let sent: Vec<i64> = self.streams.iter().map(|s| s.persisted).collect();
        self.blocking(move |c| store::backlog(c, sink, &sent)).await
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> rusqlite::Result<T> {
        let r = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&r.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .unwrap_or_else(|e| {
                Err(rusqlite::Error::ToSqlConversionFailure(Box::new(
                    std::io::Error::other(e.to_string()),
                )))
            })
    }
}
