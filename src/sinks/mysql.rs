//! The MySQL sink: creates its tables, then sends the outbox in multi-row idempotent batches
//! (`INSERT … ON DUPLICATE KEY UPDATE`), one transaction each, reconnecting with backoff.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, OptsBuilder, Pool, TxOpts, Value as My};
use tokio_util::sync::CancellationToken;

use super::feed::Feed;
use crate::model::{Millis, Value};
use crate::store::{self, OutboxRow, Stream};
use crate::Shared;

pub const SINK: &str = "mysql";

const SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS edge_events (
        event_id VARCHAR(100) NOT NULL PRIMARY KEY,
        gateway_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(255) NOT NULL,
        point_id VARCHAR(255) NULL,
        type VARCHAR(32) NOT NULL,
        priority VARCHAR(16) NOT NULL,
        device_seq BIGINT NOT NULL,
        value TEXT NULL,
        message TEXT NOT NULL,
        state VARCHAR(16) NOT NULL,
        occurred_at DATETIME(3) NOT NULL,
        KEY edge_events_gateway (gateway_id, occurred_at))",
    "CREATE TABLE IF NOT EXISTS edge_telemetry (
        gateway_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(190) NOT NULL,
        point_id VARCHAR(190) NOT NULL,
        ts DATETIME(3) NOT NULL,
        value TEXT NULL,
        quality VARCHAR(8) NOT NULL,
        PRIMARY KEY (gateway_id, device_id, point_id, ts))",
    "CREATE TABLE IF NOT EXISTS edge_device_status (
        gateway_id VARCHAR(64) NOT NULL,
        device_id VARCHAR(190) NOT NULL,
        device_type VARCHAR(255) NOT NULL,
        online BOOLEAN NOT NULL,
        last_seen DATETIME(3) NULL,
        PRIMARY KEY (gateway_id, device_id))",
];

/// A value as MySQL text (`value` columns keep every type losslessly as text; a bool is `1` or
/// `0`, as it always was).
fn text(v: &Option<Value>) -> My {
    match v {
        None => My::NULL,
        Some(Value::Bool(b)) => My::from(if *b { "1" } else { "0" }),
        Some(v) => My::from(v.to_string()),
    }
}

/// Milliseconds since the epoch as a DATETIME(3) parameter (the session is in UTC).
fn ms(v: Millis) -> My {
    My::from(format!("{}.{:03}", v.div_euclid(1000), v.rem_euclid(1000)))
}

/// The most rows one statement carries. Statements carry a power of two of rows (512, 256, …,
/// 1), so a connection prepares at most ten distinct ones per stream and keeps them in its
/// statement cache: a statement prepared for every odd batch size had its parameters'
/// metadata (thousands per statement) parsed again each time and cached 32 deep, which cost
/// 28 MB of RSS and a third of the sink's CPU at 15,000 values/s (BENCHMARKS.md).
const MAX_ROWS: usize = 512;

/// The statement text for `rows` rows of a stream.
fn sql(stream: Stream, rows: usize) -> String {
    let (head, one, tail) = match stream {
        Stream::Events => (
            "INSERT INTO edge_events (event_id, gateway_id, device_id, point_id, type, priority, device_seq, value, message, state, occurred_at) VALUES ",
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, FROM_UNIXTIME(?))",
            // A retried batch is the same rows again: the state is the only thing that may have
            // been written differently (never, today), so keep the row and refresh it.
            " ON DUPLICATE KEY UPDATE state = VALUES(state)",
        ),
        Stream::Status => (
            "INSERT INTO edge_device_status (gateway_id, device_id, device_type, online, last_seen) VALUES ",
            "(?, ?, ?, ?, FROM_UNIXTIME(?))",
            " ON DUPLICATE KEY UPDATE device_type = VALUES(device_type), online = VALUES(online),
              last_seen = COALESCE(VALUES(last_seen), last_seen)",
        ),
        Stream::Telemetry => (
            "INSERT INTO edge_telemetry (gateway_id, device_id, point_id, ts, value, quality) VALUES ",
            "(?, ?, ?, FROM_UNIXTIME(?), ?, ?)",
            " ON DUPLICATE KEY UPDATE value = VALUES(value), quality = VALUES(quality)",
        ),
    };
    let values = vec![one; rows].join(", ");
    format!("{head}{values}{tail}")
}

/// The parameters of the upstream rows one outbox row makes (a sample: one per point).
fn row_params(gateway: &str, row: &OutboxRow) -> Vec<Vec<My>> {
    match row {
        OutboxRow::Event(e) => vec![vec![
            My::from(&e.event_id),
            My::from(gateway),
            My::from(&e.device_id),
            e.point_id.as_deref().map(My::from).unwrap_or(My::NULL),
            My::from(&e.kind),
            My::from(&e.priority),
            My::from(e.device_seq),
            text(&e.value),
            My::from(&e.message),
            My::from(&e.state),
            ms(e.ts),
        ]],
        OutboxRow::Status(s) => vec![vec![
            My::from(gateway),
            My::from(&s.device_id),
            My::from(&s.device_type),
            My::from(s.online as i64),
            s.last_seen.map(ms).unwrap_or(My::NULL),
        ]],
        OutboxRow::Sample(t) => t
            .points
            .iter()
            .map(|(point, value, quality)| {
                vec![
                    My::from(gateway),
                    My::from(&*t.device_id),
                    My::from(&**point),
                    ms(t.ts),
                    text(value),
                    My::from(quality.as_str()),
                ]
            })
            .collect(),
    }
}

/// How many upstream rows a batch makes.
fn upstream_rows(rows: &[OutboxRow]) -> usize {
    rows.iter()
        .map(|r| match r {
            OutboxRow::Sample(t) => t.points.len(),
            _ => 1,
        })
        .sum()
}

/// The statement sizes for `n` rows: powers of two, largest first, none over [`MAX_ROWS`].
fn chunks(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    while n > 0 {
        let size = (1usize << (usize::BITS - 1 - n.leading_zeros())).min(MAX_ROWS);
        out.push(size);
        n -= size;
    }
    out
}

/// Sends one batch of one stream in a transaction. Each statement's parameters are built just
/// before it is sent: a batch of 500 samples is 15,000 rows, and all their parameters at once
/// were megabytes of short-lived allocations.
async fn send(
    pool: &Pool,
    gateway: &str,
    stream: Stream,
    rows: &[OutboxRow],
) -> Result<(), mysql_async::Error> {
    let sizes = chunks(upstream_rows(rows));
    if sizes.is_empty() {
        return Ok(());
    }
    let mut params = rows.iter().flat_map(|r| row_params(gateway, r));
    let mut conn = pool.get_conn().await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    for size in sizes {
        let p: Vec<My> = params.by_ref().take(size).flatten().collect();
        tx.exec_drop(sql(stream, size), p).await?;
    }
    tx.commit().await
}

async fn create_tables(pool: &Pool) -> Result<(), mysql_async::Error> {
    let mut conn = pool.get_conn().await?;
    for sql in SCHEMA {
        conn.query_drop(sql).await?;
    }
    Ok(())
}

/// How long one batch (connect, insert, commit) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every await on the database has a deadline: a half-open connection must not hang the sink.
async fn deadline<T>(
    f: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer from MySQL within {REQUEST_TIMEOUT:?}")),
    }
}

/// Runs the sink until cancelled: tables first, then the outbox in batches of `batch_size`
/// (events, status, then telemetry live-first: see [`Feed`]); on any error, backs off (0.5 s doubling to 30 s, with jitter) and resumes
/// from the cursor.
pub async fn run(shared: Arc<Shared>, cancel: CancellationToken) {
    let Some(cfg) = shared.config.mysql.clone() else {
        return;
    };
    let status = shared.sinks.mysql.clone();
    let opts = match Opts::from_url(&cfg.url.0) {
        // UTC for FROM_UNIXTIME; and the configured address only (mysql_async would otherwise
        // switch a loopback TCP connection to the server's Unix socket behind our back).
        Ok(o) => OptsBuilder::from_opts(o)
            .init(vec!["SET time_zone = '+00:00'"])
            .prefer_socket(false),
        Err(e) => {
            status.set_error(SINK, Some(format!("bad [mysql] url: {e}")));
            return;
        }
    };
    let pool = Pool::new(opts);
    let mut feed = match store::open_reader(&shared.config.gateway.data_dir) {
        Ok(c) => Feed::new(SINK, c, shared.config.clone(), cfg.batch_size),
        Err(e) => {
            status.set_error(SINK, Some(e.to_string()));
            return;
        }
    };
    let gateway = shared.config.gateway.id.clone();
    let mut backoff = Duration::from_millis(500);
    let mut tables = false;
    // False after a failure: what was read and not committed is read again from the cursors.
    let mut ready = false;
    while !cancel.is_cancelled() {
        let result: Result<bool, String> = async {
            if !tables {
                deadline(create_tables(&pool)).await?;
                tables = true;
            }
            if !ready {
                shared.store.flush().await;
                feed.reset()
                    .await
                    .map_err(|e| format!("reading the outbox: {e}"))?;
                ready = true;
            }
            let batches = feed
                .next()
                .await
                .map_err(|e| format!("reading the outbox: {e}"))?;
            let sent_any = !batches.is_empty();
            for b in batches {
                let n = b.rows.len() as u64;
                match deadline(send(&pool, &gateway, b.stream, &b.rows)).await {
                    Ok(()) => {
                        status.rows_ok.fetch_add(n, Relaxed);
                        feed.confirm(b.stream, b.rows.iter().map(OutboxRow::id));
                    }
                    Err(e) => {
                        status.rows_failed.fetch_add(n, Relaxed);
                        return Err(e);
                    }
                }
            }
            Ok(sent_any)
        }
        .await;
        // Whatever was committed before a failure keeps its place.
        feed.persist(&shared.store).await;
        if let Ok(b) = feed.backlog().await {
            status.backlog.store(b, Relaxed);
        }
        let pause = match result {
            Ok(true) => {
                status.set_error(SINK, None);
                backoff = Duration::from_millis(500);
                continue;
            }
            Ok(false) => {
                status.set_error(SINK, None);
                backoff = Duration::from_millis(500);
                Duration::from_millis(200)
            }
            Err(e) => {
                ready = false;
                status.set_error(SINK, Some(e));
                let p = backoff.mul_f64(rand::random_range(0.8..1.2));
                backoff = (backoff * 2).min(Duration::from_secs(30));
                p
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(pause) => {}
        }
    }
    let _ = pool.disconnect().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Quality;
    use crate::store::outbox::SampleRow;

    #[test]
    fn a_batch_goes_out_in_power_of_two_statements_with_every_row_once() {
        let points: Vec<_> = (0..30)
            .map(|i| {
                (
                    Arc::from(format!("r{i}")),
                    Some(Value::Int(i)),
                    Quality::Good,
                )
            })
            .collect();
        let rows: Vec<OutboxRow> = (0..40)
            .map(|id| {
                OutboxRow::Sample(SampleRow {
                    id,
                    device_id: Arc::from("d"),
                    ts: 1000 + id,
                    points: points.clone(),
                })
            })
            .collect();
        assert_eq!(upstream_rows(&rows), 1200);
        assert_eq!(chunks(1200), vec![512, 512, 128, 32, 16]);
        assert!(chunks(0).is_empty());
        let params: Vec<Vec<My>> = rows.iter().flat_map(|r| row_params("gw", r)).collect();
        assert_eq!(params.len(), 1200);
        assert!(params
            .iter()
            .all(|p| p.len() == sql(Stream::Telemetry, 1).matches('?').count()));
        assert_eq!(sql(Stream::Telemetry, 512).matches('?').count(), 512 * 6);
    }
}
