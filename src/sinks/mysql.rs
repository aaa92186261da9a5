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
use crate::store::{self, OutboxRow};
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

/// Rows per statement: a sample of many points becomes many rows, and MySQL allows at most
/// 65,535 placeholders in one statement (6 per telemetry row).
const ROWS_PER_STATEMENT: usize = 2000;

/// The statements and parameters for one batch of a stream.
fn statements(gateway: &str, rows: &[OutboxRow]) -> Vec<(String, Vec<My>)> {
    let mut out: Vec<(String, Vec<My>)> = Vec::new();
    let mut params = Vec::new();
    let mut n = 0;
    let mut kind = "";
    let mut flush = |kind: &str, params: &mut Vec<My>, n: &mut usize| {
        if *n == 0 {
            return;
        }
        let (head, one, tail) = match kind {
            "events" => (
                "INSERT INTO edge_events (event_id, gateway_id, device_id, point_id, type, priority, device_seq, value, message, state, occurred_at) VALUES ",
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, FROM_UNIXTIME(?))",
                // A retried batch is the same rows again: the state is the only thing that may
                // have been written differently (never, today), so keep the row and refresh it.
                " ON DUPLICATE KEY UPDATE state = VALUES(state)",
            ),
            "status" => (
                "INSERT INTO edge_device_status (gateway_id, device_id, device_type, online, last_seen) VALUES ",
                "(?, ?, ?, ?, FROM_UNIXTIME(?))",
                " ON DUPLICATE KEY UPDATE device_type = VALUES(device_type), online = VALUES(online),
                  last_seen = COALESCE(VALUES(last_seen), last_seen)",
            ),
            _ => (
                "INSERT INTO edge_telemetry (gateway_id, device_id, point_id, ts, value, quality) VALUES ",
                "(?, ?, ?, FROM_UNIXTIME(?), ?, ?)",
                " ON DUPLICATE KEY UPDATE value = VALUES(value), quality = VALUES(quality)",
            ),
        };
        let values = vec![one; *n].join(", ");
        out.push((format!("{head}{values}{tail}"), std::mem::take(params)));
        *n = 0;
    };
    for row in rows {
        match row {
            OutboxRow::Event(e) => {
                kind = "events";
                params.extend([
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
                ]);
                n += 1;
            }
            OutboxRow::Status(s) => {
                kind = "status";
                params.extend([
                    My::from(gateway),
                    My::from(&s.device_id),
                    My::from(&s.device_type),
                    My::from(s.online as i64),
                    s.last_seen.map(ms).unwrap_or(My::NULL),
                ]);
                n += 1;
            }
            OutboxRow::Sample(t) => {
                kind = "telemetry";
                for (point, value, quality) in &t.points {
                    params.extend([
                        My::from(gateway),
                        My::from(&*t.device_id),
                        My::from(&**point),
                        ms(t.ts),
                        text(value),
                        My::from(quality.as_str()),
                    ]);
                    n += 1;
                    if n >= ROWS_PER_STATEMENT {
                        flush(kind, &mut params, &mut n);
                    }
                }
            }
        }
        if n >= ROWS_PER_STATEMENT {
            flush(kind, &mut params, &mut n);
        }
    }
    flush(kind, &mut params, &mut n);
    out
}

/// Sends one batch of one stream in a transaction.
async fn send(pool: &Pool, gateway: &str, rows: &[OutboxRow]) -> Result<(), mysql_async::Error> {
    let statements = statements(gateway, rows);
    if statements.is_empty() {
        return Ok(());
    }
    let mut conn = pool.get_conn().await?;
    let mut tx = conn.start_transaction(TxOpts::default()).await?;
    for (sql, params) in statements {
        tx.exec_drop(sql, params).await?;
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
                match deadline(send(&pool, &gateway, &b.rows)).await {
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
